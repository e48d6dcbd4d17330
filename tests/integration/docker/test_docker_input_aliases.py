"""Both spellings of the docker executor's inputs: `environment` / `env` and
`working_dir` / `workdir` (validation and schema without an engine; a real run with one)."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from workplex import Registry, Task
from workplex.executors.docker import DockerInput

from .test_docker_executor import make_registry, ok_output, sh


@pytest.mark.parametrize(
    ("env_key", "dir_key"), [("environment", "working_dir"), ("env", "workdir")]
)
def test_both_spellings_validate_to_the_same_fields(env_key: str, dir_key: str) -> None:
    parsed = DockerInput.model_validate({"image": "x:1", env_key: {"A": "1"}, dir_key: "/srv/app"})
    assert parsed.environment == {"A": "1"}
    assert parsed.working_dir == "/srv/app"
    # Dumped (and stored) under the canonical names only.
    dumped = parsed.model_dump()
    assert dumped["environment"] == {"A": "1"} and "env" not in dumped
    assert dumped["working_dir"] == "/srv/app" and "workdir" not in dumped


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ({"env": {"A": "1"}, "environment": {"B": "2"}}, "`environment` or its alias `env`"),
        ({"workdir": "/a", "working_dir": "/b"}, "`working_dir` or its alias `workdir`"),
        ({"env": ["A=1"]}, "env"),
    ],
)
async def test_bad_alias_use_is_refused_with_the_field(
    payload: dict[str, Any], message: str
) -> None:
    async with make_registry(None) as reg:
        result = await reg.execute(Task("docker", {"image": "x:1", **payload}))
    assert result.error is not None and result.error.type == "ValidationError"
    assert message in result.error.message


def test_schema_names_each_meaning_once_and_accepts_the_aliases() -> None:
    schema = DockerInput.model_json_schema()
    props = schema["properties"]
    assert props["environment"]["type"] == "object"
    assert "alias: `env`" in props["environment"]["description"]
    assert "alias: `workdir`" in props["working_dir"]["description"]
    # The aliases are listed (an editor accepts them) and point back to their field.
    assert props["env"]["description"] == "The same as `environment` (give one of the two)."
    assert props["env"]["additionalProperties"] == props["environment"]["additionalProperties"]
    assert props["workdir"]["anyOf"] == props["working_dir"]["anyOf"]
    assert schema.get("additionalProperties") is False


async def test_env_and_workdir_reach_the_container(docker_url: str, test_image: str) -> None:
    value = uuid.uuid4().hex
    registry: Registry
    async with make_registry(docker_url) as registry:
        result = await registry.execute(
            Task(
                "docker",
                {
                    "image": test_image,
                    "command": sh('echo "$ONE|$(pwd)"'),
                    "env": {"ONE": value},
                    "workdir": "/tmp/alias",
                },
            )
        )
    assert ok_output(result)["stdout"] == f"{value}|/tmp/alias\n"
