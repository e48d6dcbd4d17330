"""The docker executor against a real Docker engine (see conftest.py for how it is had)."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from workplex import Registry, Task
from workplex.config import Config
from workplex.executor import Result
from workplex.executors.docker import LABEL_TASK

# Prints the CPU quota and memory limit of the container's cgroup, v1 or v2.
CGROUP_LIMITS = (
    "if [ -f /sys/fs/cgroup/cpu.max ]; then "
    "cat /sys/fs/cgroup/cpu.max /sys/fs/cgroup/memory.max; "
    "else cat /sys/fs/cgroup/cpu/cpu.cfs_quota_us /sys/fs/cgroup/cpu/cpu.cfs_period_us "
    "/sys/fs/cgroup/memory/memory.limit_in_bytes; fi"
)


def make_registry(docker_url: str | None, **settings: Any) -> Registry:
    docker: dict[str, Any] = {"enabled": True, "pull": "never", **settings}
    if docker_url is not None:
        docker["base_url"] = docker_url
    return Registry(Config.model_validate({"executors": {"docker": docker}}))


@pytest.fixture
async def registry(docker_url: str) -> AsyncIterator[Registry]:
    async with make_registry(docker_url) as reg:
        yield reg


async def run(registry: Registry, payload: dict[str, Any], task_id: str | None = None) -> Result:
    return await registry.execute(Task("docker", payload, id=task_id))


def containers_of(client: Any, task_id: str) -> list[Any]:
    return list(client.containers.list(all=True, filters={"label": f"{LABEL_TASK}={task_id}"}))


def ok_output(result: Result) -> dict[str, Any]:
    assert result.success, result.error
    assert isinstance(result.output, dict)
    return result.output


def sh(script: str) -> list[str]:
    return ["sh", "-c", script]


# ---- running ---------------------------------------------------------------------


async def test_stdout_stderr_and_exit_code_are_the_outcome(
    registry: Registry, test_image: str, docker_client: Any
) -> None:
    task_id = f"exit-{uuid.uuid4().hex[:8]}"
    result = await run(
        registry,
        {"image": test_image, "command": sh("echo out; echo err >&2; exit 3")},
        task_id,
    )
    out = ok_output(result)  # a non-zero exit is an outcome, not an error
    assert result.exit_code == 3
    assert out["exit_code"] == 3
    assert out["stdout"] == "out\n"
    assert out["stderr"] == "err\n"
    assert out["image"] == test_image
    assert out["image_id"] == docker_client.images.get(test_image).id
    assert out["built"] is False
    assert containers_of(docker_client, task_id) == []  # removed after a normal exit


async def test_command_as_string_and_working_dir(registry: Registry, test_image: str) -> None:
    result = await run(
        registry, {"image": test_image, "command": "pwd", "working_dir": "/work/here"}
    )
    assert ok_output(result)["stdout"] == "/work/here\n"
    assert result.exit_code == 0


async def test_environment(registry: Registry, test_image: str) -> None:
    value = uuid.uuid4().hex
    result = await run(
        registry,
        {
            "image": test_image,
            "command": sh('echo "$ONE|$TWO"'),
            "environment": {"ONE": value, "TWO": "two words"},
        },
    )
    assert ok_output(result)["stdout"] == f"{value}|two words\n"


async def test_output_is_capped(docker_url: str, test_image: str) -> None:
    async with make_registry(docker_url, max_output_bytes=100) as reg:
        result = await run(
            reg, {"image": test_image, "command": sh("yes abcd | head -c 5000; echo e >&2")}
        )
    out = ok_output(result)
    assert out["stdout"] == "abcd\n" * 20
    assert out["stdout_truncated"] is True
    assert out["stderr"] == "e\n"
    assert out["stderr_truncated"] is False


@pytest.mark.parametrize(
    ("fields", "expected"),
    [({"entrypoint": ["/nope"]}, "/nope"), ({"user": "nosuchuser"}, "nosuchuser")],
)
async def test_container_that_cannot_start_is_a_permanent_error(
    registry: Registry,
    test_image: str,
    docker_client: Any,
    fields: dict[str, Any],
    expected: str,
) -> None:
    task_id = f"nostart-{uuid.uuid4().hex[:8]}"
    result = await run(registry, {"image": test_image, "command": ["true"], **fields}, task_id)
    assert result.error is not None
    assert result.error.type == "PermanentError"
    assert "start container" in result.error.message
    assert expected in result.error.message
    assert containers_of(docker_client, task_id) == []


# ---- volumes ---------------------------------------------------------------------


async def test_volume_read_write(registry: Registry, test_image: str, tmp_path: Path) -> None:
    (tmp_path / "in.txt").write_text("from host\n")
    result = await run(
        registry,
        {
            "image": test_image,
            "command": sh("cat /data/in.txt && echo from container > /data/out.txt"),
            "volumes": [{"source": str(tmp_path), "target": "/data"}],
        },
    )
    assert ok_output(result)["stdout"] == "from host\n"
    assert result.exit_code == 0
    assert (tmp_path / "out.txt").read_text() == "from container\n"


async def test_volume_read_only(registry: Registry, test_image: str, tmp_path: Path) -> None:
    (tmp_path / "in.txt").write_text("readable\n")
    result = await run(
        registry,
        {
            "image": test_image,
            "command": sh("cat /data/in.txt; echo x > /data/out.txt"),
            "volumes": [{"source": str(tmp_path), "target": "/data", "read_only": True}],
        },
    )
    out = ok_output(result)
    assert out["stdout"] == "readable\n"
    assert result.exit_code != 0
    assert "Read-only file system" in out["stderr"]
    assert not (tmp_path / "out.txt").exists()


async def test_missing_bind_source_is_an_error_not_a_new_directory(
    registry: Registry, test_image: str, tmp_path: Path
) -> None:
    missing = tmp_path / "nope"
    result = await run(
        registry,
        {
            "image": test_image,
            "command": ["true"],
            "volumes": [{"source": str(missing), "target": "/d"}],
        },
    )
    assert not result.success
    assert result.error is not None and result.error.type == "PermanentError"
    assert str(missing) in result.error.message
    assert not missing.exists()


# ---- limits and network ----------------------------------------------------------


async def test_cpu_and_memory_limits_are_applied(registry: Registry, test_image: str) -> None:
    result = await run(
        registry,
        {
            "image": test_image,
            "command": sh(CGROUP_LIMITS),
            "resources": {"cpu_limit": 0.5, "memory_limit": "64m"},
        },
    )
    lines = ok_output(result)["stdout"].split()
    if len(lines) == 3:  # cgroup v2: "quota period" then memory.max
        quota, period, memory = (int(x) for x in lines)
    else:  # cgroup v1: quota, period, limit_in_bytes
        quota, period, memory = (int(x) for x in lines[:3])
    assert quota / period == pytest.approx(0.5)
    assert memory == 64 * 1024 * 1024


async def test_no_limits_by_default(registry: Registry, test_image: str) -> None:
    result = await run(registry, {"image": test_image, "command": sh(CGROUP_LIMITS)})
    first = ok_output(result)["stdout"].split()[0]
    assert first in {"-1", "max"}  # no CPU quota


async def test_network_is_none_by_default(registry: Registry, test_image: str) -> None:
    result = await run(registry, {"image": test_image, "command": sh("ls /sys/class/net")})
    assert ok_output(result)["stdout"].split() == ["lo"]


async def test_host_network_when_asked(
    registry: Registry, test_image: str, docker_url: str
) -> None:
    if os.environ.get("DOCKER_HOST"):
        pytest.skip("compares with this machine's interfaces; the engine is elsewhere")
    result = await run(
        registry, {"image": test_image, "command": sh("ls /sys/class/net"), "network": "host"}
    )
    assert sorted(ok_output(result)["stdout"].split()) == sorted(os.listdir("/sys/class/net"))


async def test_allowed_networks_refuses_others(docker_url: str, test_image: str) -> None:
    async with make_registry(docker_url, allowed_networks=["none"]) as reg:
        result = await run(reg, {"image": test_image, "command": ["true"], "network": "host"})
    assert result.error is not None and result.error.type == "PermanentError"
    assert "network" in result.error.message and "allowed_networks" in result.error.message


# ---- timeout and cancellation ----------------------------------------------------


async def test_timeout_kills_and_removes_the_container(
    registry: Registry, test_image: str, docker_client: Any
) -> None:
    task_id = f"timeout-{uuid.uuid4().hex[:8]}"
    result = await run(
        registry, {"image": test_image, "command": ["sleep", "30"], "timeout": 1}, task_id
    )
    assert not result.success
    assert result.error is not None
    assert result.error.type == "TaskTimeoutError"
    assert result.error.retryable is True
    assert containers_of(docker_client, task_id) == []


async def test_cancellation_removes_the_container(
    registry: Registry, test_image: str, docker_client: Any
) -> None:
    task_id = f"cancel-{uuid.uuid4().hex[:8]}"
    job = asyncio.create_task(
        run(registry, {"image": test_image, "command": ["sleep", "30"]}, task_id)
    )
    # Poll until the container runs, then cancel the task.
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 20
    while True:
        found = await asyncio.to_thread(containers_of, docker_client, task_id)
        if found and found[0].status == "running":
            break
        assert loop.time() < deadline, "the container never started"
        assert not job.done(), job
        await asyncio.sleep(0.05)
    job.cancel()
    with pytest.raises(asyncio.CancelledError):
        await job
    assert containers_of(docker_client, task_id) == []


# ---- images: pull policy, allow-list ---------------------------------------------


async def test_missing_image_with_pull_never_is_a_clear_error(registry: Registry) -> None:
    image = f"workplex-test/absent-{uuid.uuid4().hex[:8]}:1"
    result = await run(registry, {"image": image, "command": ["true"]})
    assert not result.success
    assert result.error is not None
    assert result.error.type == "PermanentError"
    assert result.error.retryable is False
    assert image in result.error.message
    assert "'never'" in result.error.message


async def test_allowed_images(docker_url: str, test_image: str) -> None:
    async with make_registry(docker_url, allowed_images=["workplex-test/*"]) as reg:
        good = await run(reg, {"image": test_image, "command": ["true"]})
        bad = await run(reg, {"image": "other/image:1", "command": ["true"]})
    assert good.success and good.exit_code == 0
    assert bad.error is not None and bad.error.type == "PermanentError"
    assert "allowed_images" in bad.error.message


# ---- builds ----------------------------------------------------------------------


async def test_build_with_args_then_cache_hit(
    registry: Registry, busybox_context: Path, docker_client: Any, docker_url: str
) -> None:
    greeting = f"hello-{uuid.uuid4().hex[:8]}"  # a fresh build arg: a build nobody made yet
    payload = {
        "dockerfile_path": str(busybox_context / "Dockerfile"),
        "build_context": str(busybox_context),
        "build_args": {"GREETING": greeting},
        "command": sh('echo "$GREETING"'),
    }
    first = ok_output(await run(registry, payload))
    assert first["built"] is True
    assert first["stdout"] == f"{greeting}\n"
    assert first["image"].startswith("workplex-build:")
    assert docker_client.images.get(first["image"]).id == first["image_id"]

    second = ok_output(await run(registry, payload))
    assert second["built"] is False
    assert second["image"] == first["image"]
    assert second["image_id"] == first["image_id"]
    assert second["stdout"] == f"{greeting}\n"

    # A fresh executor finds the tagged image on the engine without building.
    async with make_registry(docker_url) as reg:
        third = ok_output(await run(reg, payload))
    assert third["built"] is False
    assert third["image_id"] == first["image_id"]


async def test_changed_context_or_args_rebuild(
    registry: Registry, busybox_context: Path, tmp_path: Path
) -> None:
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "busybox").hardlink_to(busybox_context / "busybox")
    (ctx / "Dockerfile").write_text(
        (busybox_context / "Dockerfile").read_text() + "COPY note.txt /note.txt\n"
    )
    (ctx / "note.txt").write_text(f"v1 {uuid.uuid4().hex}\n")
    payload = {"dockerfile_path": str(ctx / "Dockerfile"), "command": ["cat", "/note.txt"]}
    first = ok_output(await run(registry, payload))
    assert first["built"] is True

    (ctx / "note.txt").write_text("v2\n")
    second = ok_output(await run(registry, payload))
    assert second["built"] is True
    assert second["stdout"] == "v2\n"
    assert second["image"] != first["image"]

    # A file excluded by .dockerignore does not change the build.
    (ctx / ".dockerignore").write_text("scratch/\n")
    third = ok_output(await run(registry, payload))
    (ctx / "scratch").mkdir()
    (ctx / "scratch" / "junk").write_text("ignored")
    fourth = ok_output(await run(registry, payload))
    assert fourth["built"] is False
    assert fourth["image"] == third["image"]


async def test_build_failure_names_the_dockerfile(registry: Registry, tmp_path: Path) -> None:
    (tmp_path / "Dockerfile").write_text("FROM scratch\nCOPY missing-file /x\n")
    result = await run(
        registry, {"dockerfile_path": str(tmp_path / "Dockerfile"), "command": ["true"]}
    )
    assert result.error is not None and result.error.type == "PermanentError"
    assert "dockerfile_path" in result.error.message
    assert "missing-file" in result.error.message


async def test_deleted_build_is_rebuilt(
    registry: Registry, busybox_context: Path, docker_client: Any
) -> None:
    payload = {
        "dockerfile_path": str(busybox_context / "Dockerfile"),
        "build_args": {"GREETING": f"again-{uuid.uuid4().hex[:8]}"},
        "command": ["true"],
    }
    first = ok_output(await run(registry, payload))
    assert first["built"] is True
    docker_client.images.remove(first["image"], force=True)
    second = ok_output(await run(registry, payload))
    assert second["built"] is True
    assert second["image"] == first["image"]


# ---- engine, config, validation ---------------------------------------------------


async def test_docker_host_is_respected(
    docker_url: str, test_image: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DOCKER_HOST", docker_url)
    async with make_registry(None) as reg:
        result = await run(reg, {"image": test_image, "command": ["echo", "via env"]})
        health = await reg.health()
    assert ok_output(result)["stdout"] == "via env\n"
    assert health["docker"]["ok"] is True


async def test_health_reports_an_unreachable_engine(tmp_path: Path) -> None:
    async with make_registry(f"unix://{tmp_path}/no.sock") as reg:
        health = await reg.health()
        result = await run(reg, {"image": "x:1", "command": ["true"]})
    assert health["docker"]["ok"] is False
    assert "no.sock" in health["docker"]["detail"]
    assert result.error is not None and result.error.type == "RetryableError"


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"command": ["true"]}, "give exactly one of"),
        ({"image": "a", "dockerfile_path": "b"}, "give exactly one of"),
        ({"image": "a", "resources": {"memory_limit": "lots"}}, "resources.memory_limit"),
        ({"image": "a", "resources": {"cpu_limit": 0}}, "resources.cpu_limit"),
        ({"image": "a", "volumes": [{"source": "rel/dir", "target": "/x"}]}, "volumes.0.source"),
        ({"image": "a", "volumes": [{"source": "/x", "target": "rel"}]}, "volumes.0.target"),
        ({"image": "a", "pull": "sometimes"}, "pull"),
        ({"image": "a", "build_args": {"A": "1"}}, "need `dockerfile_path`"),
    ],
)
async def test_bad_input_names_the_field(payload: dict[str, Any], field: str) -> None:
    async with make_registry(None) as reg:
        result = await run(reg, payload)
    assert result.error is not None and result.error.type == "ValidationError"
    assert field in result.error.message
