"""`workplex run`: inputs, --json shape, exit codes, store options (in-process CLI)."""

from __future__ import annotations

import asyncio
import json
import textwrap
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from workplex.cli import app

PIPELINE = """
name: cli
inputs:
  count: {type: integer}
  tags: {type: array, default: []}
  who: {type: string, default: world}
stages:
  - name: show
    executor: echo
    input: {count: $.trigger.count, tags: $.trigger.tags, who: $.trigger.who}
"""


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    for var in ("WORKPLEX_CONFIG", "WORKPLEX_STORE", "WORKPLEX_BACKEND"):
        monkeypatch.delenv(var, raising=False)


def pipeline_file(tmp_path: Path, text: str = PIPELINE) -> Path:
    path = tmp_path / "p.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def run(*args: str) -> tuple[int, dict[str, Any] | None, str]:
    result = CliRunner().invoke(app, ["run", *args])
    data = json.loads(result.stdout) if result.stdout.startswith("{") else None
    return result.exit_code, data, result.stderr


def test_text_given_for_a_string_input_stays_text(tmp_path: Path) -> None:
    path = pipeline_file(
        tmp_path,
        """
        name: typed
        inputs:
          tag: {type: string}
          n: {type: integer}
        stages:
          - name: e
            executor: echo
            input: {tag: $.trigger.tag, n: $.trigger.n}
        """,
    )
    code, data, err = run(str(path), "-i", "tag=3", "-i", "n=4", "--json", "--no-store")
    assert code == 0, err
    assert data is not None and data["stages"]["e"]["output"] == {"tag": "3", "n": 4}
    code, data, err = run(str(path), "-i", "tag=true", "-i", "n=x", "--no-store")
    assert code == 2 and "input 'n' must be of type integer" in err


def test_run_json_with_inputs_parsed_as_json(tmp_path: Path) -> None:
    code, data, _ = run(
        str(pipeline_file(tmp_path)),
        "--input",
        "count=3",
        "--input",
        'tags=["a", "b"]',
        "--input",
        "who=plain text",
        "--json",
        "--no-store",
    )
    assert code == 0
    assert data is not None
    assert data["status"] == "succeeded" and data["error"] is None
    assert data["run_id"].startswith("r-")
    show = data["stages"]["show"]
    assert show["status"] == "succeeded" and show["error"] is None
    assert show["output"] == {"count": 3, "tags": ["a", "b"], "who": "plain text"}


def test_run_inputs_file_with_input_overriding_it(tmp_path: Path) -> None:
    inputs = tmp_path / "inputs.yaml"
    inputs.write_text("count: 5\nwho: file\n")
    code, data, _ = run(
        str(pipeline_file(tmp_path)),
        "--inputs-file",
        str(inputs),
        "--input",
        "who=flag",
        "--json",
        "--no-store",
    )
    assert code == 0 and data is not None
    assert data["stages"]["show"]["output"] == {"count": 5, "tags": [], "who": "flag"}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--input", "count=many"], "input 'count' must be of type integer"),
        ([], "input 'count' is required"),
        (["--input", "nonsense"], "expected NAME=VALUE"),
        (["--inputs-file", "missing.yaml"], "cannot read missing.yaml"),
    ],
)
def test_run_bad_inputs_exit_2(tmp_path: Path, args: list[str], message: str) -> None:
    code, data, err = run(str(pipeline_file(tmp_path)), *args, "--json", "--no-store")
    assert code == 2
    assert data is None
    assert message in err


def test_run_bad_file_exits_2(tmp_path: Path) -> None:
    path = pipeline_file(
        tmp_path, "name: x\nstages:\n  - name: a\n    executor: echo\n    bogus: 1\n"
    )
    code, _, err = run(str(path), "--no-store")
    assert code == 2
    assert f"{path}:5: stage 'a': field 'bogus': unknown key" in err


def test_run_missing_file_exits_2(tmp_path: Path) -> None:
    code, _, err = run(str(tmp_path / "nope.yaml"), "--no-store")
    assert code == 2
    assert "cannot read pipeline file" in err


def test_run_unknown_executor_exits_2(tmp_path: Path) -> None:
    path = pipeline_file(tmp_path, "name: x\nstages:\n  - name: a\n    executor: nope\n")
    code, _, err = run(str(path), "--no-store")
    assert code == 2
    assert "unknown executor 'nope'" in err and f"{path}:4: stage 'a'" in err


def test_a_failed_run_exits_1_with_the_error_in_the_json(tmp_path: Path) -> None:
    path = pipeline_file(
        tmp_path,
        """
        name: x
        stages:
          - name: a
            executor: python
            input: {function: "os:no_such_function"}
          - name: b
            executor: echo
        """,
    )
    code, data, _ = run(str(path), "--json", "--no-store")
    assert code == 1
    assert data is not None
    assert data["status"] == "failed"
    assert data["stages"]["a"]["status"] == "failed"
    assert "no_such_function" in data["stages"]["a"]["error"]
    assert data["stages"]["b"]["status"] in ("pending", "cancelled")


def test_run_prints_a_readable_summary_without_json(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app, ["run", str(pipeline_file(tmp_path)), "--input", "count=1", "--no-store"]
    )
    assert result.exit_code == 0
    assert "show" in result.stdout and "succeeded" in result.stdout
    assert not result.stdout.lstrip().startswith("{")


def test_run_records_the_run_in_the_given_store(tmp_path: Path) -> None:
    db = tmp_path / "runs.db"
    code, data, err = run(
        str(pipeline_file(tmp_path)), "--input", "count=2", "--json", "--store", f"sqlite:///{db}"
    )
    assert code == 0, err
    assert data is not None
    assert db.exists()

    async def stored() -> Any:
        from workplex.store import Store

        store = await Store.open(f"sqlite:///{db}")
        try:
            return await store.get_run(data["run_id"])
        finally:
            await store.close()

    run_row = asyncio.run(stored())
    assert run_row is not None
    assert run_row.status == "succeeded"
    assert run_row.inputs == {"count": 2, "tags": [], "who": "world"}
    assert run_row.stages["show"].status == "succeeded"
    assert run_row.stages["show"].output == {"count": 2, "tags": [], "who": "world"}


def test_run_with_no_store_writes_no_store_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    code, _, _ = run(str(pipeline_file(tmp_path)), "--input", "count=1", "--json", "--no-store")
    assert code == 0
    assert not (tmp_path / "data").exists() and not (tmp_path / "home").exists()
    # Without --no-store the same run lands in the per-user default store.
    code, _, _ = run(str(pipeline_file(tmp_path)), "--input", "count=1", "--json")
    assert code == 0
    assert (tmp_path / "data" / "workplex" / "runs.db").exists()
