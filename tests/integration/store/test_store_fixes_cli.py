"""The run commands as real subprocesses on a real SQLite store: approve only what waits
(forwarded into a paused sub-run), resume from another directory, bad input exits 2 before a
run is recorded, and messages that say what really happened."""

from __future__ import annotations

import importlib.util
import json
import socket
from pathlib import Path

import pytest

from workplex.store import Store

from .conftest import run_cli

GATED = """\
name: gated
stages:
  - name: build
    executor: echo
    input: {version: "1.4"}
  - name: gate
    executor: approval
    input: {message: "ship 1.4?", timeout: 1h}
  - name: deploy
    executor: echo
    input: {approved: $.gate.approved}
"""

PARENT = """\
name: parent
stages:
  - name: sub
    executor: workflow
    input: {pipeline: child/gated.yaml}
"""


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'runs.db'}"


async def runs_in(url: str) -> list[str]:
    store = await Store.open(url)
    try:
        return [r.run_id for r in await store.list_runs(limit=100)]
    finally:
        await store.close()


async def stored(url: str, run_id: str) -> dict:  # type: ignore[type-arg]
    store = await Store.open(url)
    try:
        run = await store.get_run(run_id)
    finally:
        await store.close()
    assert run is not None
    return run.to_dict()


async def paused_run(path: Path, url: str, env: dict[str, str], cwd: Path | None = None) -> tuple[str, str]:
    code, out, err = await run_cli("run", str(path), "--store", url, "--json", env=env, cwd=cwd)
    assert code == 0, err
    data = json.loads(out)
    assert data["status"] == "paused", data
    return data["run_id"], out


async def test_approving_a_stage_that_waits_for_nothing_is_refused_and_changes_nothing(
    tmp_path: Path, url: str, cli_env: dict[str, str]
) -> None:
    (tmp_path / "gated.yaml").write_text(GATED)
    run_id, out = await paused_run(tmp_path / "gated.yaml", url, cli_env)
    assert "timeout at" in out  # the pause names the approval's deadline

    code, _, err = await run_cli("approve", run_id, "build", "--reject", "--store", url, env=cli_env)
    assert code == 2
    assert "stage 'build'" in err and "not waiting for approval" in err and "'gate'" in err
    data = await stored(url, run_id)
    assert data["status"] == "paused"
    assert data["stages"]["build"]["status"] == "succeeded"
    assert data["stages"]["gate"]["status"] == "paused"

    code, out, err = await run_cli("approve", run_id, "gate", "--store", url, env=cli_env)
    assert code == 0, err
    code, out, err = await run_cli("resume", run_id, "--store", url, "--json", env=cli_env)
    assert code == 0, err
    assert json.loads(out)["stages"]["deploy"]["output"] == {"approved": True}


async def test_a_paused_sub_run_is_named_and_approve_on_the_parent_stage_reaches_it(
    tmp_path: Path, url: str, cli_env: dict[str, str]
) -> None:
    (tmp_path / "child").mkdir()
    (tmp_path / "child" / "gated.yaml").write_text(GATED)
    (tmp_path / "parent.yaml").write_text(PARENT)
    # Started from tmp_path with a relative path; everything else runs from "/".
    code, out, err = await run_cli("run", "parent.yaml", "--store", url, env=cli_env, cwd=tmp_path)
    assert code == 0, err
    [parent] = [r for r in await runs_in(url) if not r.endswith(":sub")]
    child = f"{parent}:sub:0:sub"
    assert f"workplex approve {child} gate" in out and "sub-run" in out
    assert Path((await stored(url, parent))["path"]).is_absolute()

    code, out, err = await run_cli(
        "approve", parent, "sub", "--by", "alice", "--store", url, env=cli_env, cwd=Path("/")
    )
    assert code == 0, err
    assert f"stage 'gate' of sub-run {child}" in out and "approved by alice" in out
    code, out, err = await run_cli("resume", parent, "--store", url, "--json", env=cli_env, cwd=Path("/"))
    assert code == 0, err
    result = json.loads(out)
    assert result["status"] == "succeeded", result
    assert result["stages"]["sub"]["output"]["output"] == {"approved": True}
    kinds = [k for k in (await stored(url, child))["stages"]]
    assert kinds == ["build", "gate", "deploy"]


async def test_rejecting_a_sub_run_approval_through_the_parent_fails_both(
    tmp_path: Path, url: str, cli_env: dict[str, str]
) -> None:
    (tmp_path / "child").mkdir()
    (tmp_path / "child" / "gated.yaml").write_text(GATED)
    (tmp_path / "parent.yaml").write_text(PARENT)
    parent, _ = await paused_run(tmp_path / "parent.yaml", url, cli_env)
    code, out, err = await run_cli(
        "approve", parent, "sub", "--reject", "-m", "not today", "--store", url, env=cli_env
    )
    assert code == 0, err
    assert f"run {parent} failed" in out and "not today" in out
    child = await stored(url, f"{parent}:sub:0:sub")
    top = await stored(url, parent)
    assert (child["status"], child["stages"]["gate"]["status"]) == ("failed", "failed")
    assert (top["status"], top["stages"]["sub"]["status"]) == ("failed", "failed")
    assert "not today" in top["error"]


async def test_rejecting_while_another_process_drives_the_run_says_so(
    tmp_path: Path, url: str, cli_env: dict[str, str]
) -> None:
    (tmp_path / "gated.yaml").write_text(GATED)
    run_id, _ = await paused_run(tmp_path / "gated.yaml", url, cli_env)
    store = await Store.open(url)
    try:  # another process has resumed it and drives it now
        await store.acquire_lease(run_id, "host:1:other", 60)
        await store.run_update(run_id, "running")
    finally:
        await store.close()
    code, out, err = await run_cli("approve", run_id, "gate", "--reject", "--store", url, env=cli_env)
    assert code == 0, err
    assert "failed" not in out
    assert f"run {run_id} is running (driven by host:1:other)" in out
    assert (await stored(url, run_id))["status"] == "running"


async def test_a_self_running_pipeline_is_bad_input(tmp_path: Path, url: str, cli_env: dict[str, str]) -> None:
    path = tmp_path / "loop.yaml"
    path.write_text("name: loop\nstages:\n  - name: again\n    executor: workflow\n    input: {pipeline: loop.yaml}\n")
    code, _, err = await run_cli("validate", str(path), env=cli_env)
    assert code == 2 and "stage 'again'" in err and "itself" in err
    code, _, err = await run_cli("run", str(path), "--store", url, env=cli_env)
    assert code == 2 and "itself" in err
    assert await runs_in(url) == []


async def test_bad_metrics_ports_and_limits_exit_2_before_any_run(
    tmp_path: Path, url: str, cli_env: dict[str, str]
) -> None:
    (tmp_path / "gated.yaml").write_text(GATED)
    code, _, err = await run_cli("run", str(tmp_path / "gated.yaml"), "--store", url,
                                 "--metrics-port", "99999", env=cli_env)
    assert code == 2 and "--metrics-port 99999" in err and "Traceback" not in err
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        code, _, err = await run_cli("run", str(tmp_path / "gated.yaml"), "--store", url,
                                     "--metrics-port", str(port), env=cli_env)
    assert code == 2 and f"metrics port {port}" in err and "Traceback" not in err
    assert await runs_in(url) == []
    code, _, err = await run_cli("runs", "--limit", "-1", "--store", url, env=cli_env)
    assert code == 2 and "--limit -1" in err


async def test_otlp_tracing_without_its_exporter_is_bad_input(
    tmp_path: Path, url: str, cli_env: dict[str, str]
) -> None:
    try:
        installed = importlib.util.find_spec("opentelemetry.exporter.otlp") is not None
    except ModuleNotFoundError:
        installed = False
    if installed:
        pytest.skip("the OTLP exporter is installed here; this checks its absence")
    path = tmp_path / "traced.yaml"
    path.write_text("name: traced\nstages:\n  - name: a\n    executor: echo\n    input: {}\n"
                    "    overlays: {tracing: {exporter: otlp}}\n")
    code, _, err = await run_cli("run", str(path), "--store", url, env=cli_env)
    assert code == 2, err
    assert "opentelemetry-exporter-otlp" in err and "workplex[otlp]" in err and "Traceback" not in err
    assert await runs_in(url) == []
