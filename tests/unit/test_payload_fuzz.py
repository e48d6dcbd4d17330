"""Random JSON payloads against every built-in executor's validation and the CLI: only
workplex's own errors (and exit codes 0, 1, 2) may come out."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from workplex import Registry, Task
from workplex.cli import app
from workplex.config import parse_config
from workplex.errors import ValidationError, WorkplexError
from workplex.executors.command import Command
from workplex.executors.echo import Echo
from workplex.executors.file import File
from workplex.executors.python import Python

BUILTINS = (Echo, Python, Command, File)
FIELDS = ["command", "args", "env", "stdin", "timeout", "shell", "operation", "path",
          "content", "encoding", "function", "kwargs", "working_dir", "clear_env"]  # fmt: skip

scalars = (
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=20)
)
json_values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=8), inner, max_size=5)
    ),
    max_leaves=12,
)
# Objects keyed by the real field names reach deeper into each model than random keys.
payloads = json_values | st.dictionaries(st.sampled_from(FIELDS), json_values, max_size=6)


def make_registry() -> Registry:
    registry = Registry(parse_config({}), discover=False)
    for cls in BUILTINS:
        registry.register(cls)
    return registry


REGISTRY = make_registry()


@pytest.mark.parametrize("name", [cls.name for cls in BUILTINS])
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(payload=payloads)
def test_validate_raises_only_workplex_errors(name: str, payload: Any) -> None:
    try:
        model = REGISTRY.validate(Task(name, payload))
    except ValidationError as exc:
        assert str(exc)
        assert all(isinstance(p, str) and isinstance(r, str) for p, r in exc.errors)
    else:
        # Whatever passes validation must serialise back to JSON for queues and the store.
        json.dumps(model.model_dump(mode="json"))


runner = CliRunner()


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(name=st.sampled_from(["echo", "file", "python", "nope"]), payload=payloads)
def test_cli_exec_exit_codes(
    name: str, payload: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # `command` is left out: random payloads must not run random programs, and `python` may
    # only import a module that does not exist.
    (tmp_path / "workplex.yaml").write_text(
        "executors:\n  python:\n    allowed_modules: [wpx_fuzz_nothing]\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("WORKPLEX_CONFIG", raising=False)
    result = runner.invoke(app, ["exec", name, "--input", json.dumps(payload), "--json"])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        assert isinstance(result.exception, WorkplexError), repr(result.exception)
    assert result.exit_code in (0, 1, 2), result.output
    if result.exit_code == 2:
        assert result.stderr.startswith("error: ")
