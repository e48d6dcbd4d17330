"""The run commands as real subprocesses: approvals, resume, two resumes at once, sub-runs,
runs/show/logs/cancel/gc and unknown run ids."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
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
    input: {message: "ship 1.4?"}
  - name: deploy
    executor: echo
    input: {approved: $.gate.approved, by: $.gate.by, version: $.build.version}
"""


async def newest_run(url: str, pipeline: str) -> str:
    store = await Store.open(url)
    try:
        runs = await store.list_runs(pipeline=pipeline, limit=1)
    finally:
        await store.close()
    assert runs, f"no run of {pipeline}"
    return runs[0].run_id


async def show(url: str, run_id: str, env: dict[str, str]) -> dict:  # type: ignore[type-arg]
    code, out, err = await run_cli("show", run_id, "--store", url, "--json", env=env)
    assert code == 0, err
    data: dict = json.loads(out)  # type: ignore[type-arg]
    return data


@pytest.fixture
def gated(tmp_path: Path) -> Path:
    path = tmp_path / "gated.yaml"
    path.write_text(GATED)
    return path


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'runs.db'}"


async def test_a_paused_run_exits_then_approve_and_resume_continue_it(
    gated: Path, url: str, cli_env: dict[str, str]
) -> None:
    code, out, err = await run_cli("run", str(gated), "--store", url, env=cli_env)
    assert code == 0, err
    assert "paused" in out and "workplex approve" in out and "workplex resume" in out
    run_id = await newest_run(url, "gated")
    assert run_id in out
    paused = await show(url, run_id, cli_env)
    assert paused["status"] == "paused"
    assert paused["stages"]["gate"]["status"] == "paused"
    assert paused["stages"]["deploy"]["status"] == "pending"
    assert paused["lease_owner"] is None  # the process let go of the run

    code, out, err = await run_cli(
        "approve",
        run_id,
        "gate",
        "--comment",
        "looks good",
        "--by",
        "alice",
        "--store",
        url,
        env=cli_env,
    )
    assert code == 0, err
    assert f"workplex resume {run_id}" in out
    code, out, err = await run_cli("resume", run_id, "--store", url, "--json", env=cli_env)
    assert code == 0, err
    result = json.loads(out)
    assert result["status"] == "succeeded"
    gate = result["stages"]["gate"]["output"]
    assert (gate["approved"], gate["comment"], gate["by"]) == (True, "looks good", "alice")
    assert result["stages"]["deploy"]["output"] == {
        "approved": True,
        "by": "alice",
        "version": "1.4",
    }
    code, out, _ = await run_cli("logs", run_id, "--stage", "gate", "--store", url, env=cli_env)
    assert code == 0
    assert "approval.requested" in out and "looks good" in out


async def test_reject_fails_the_run_with_the_comment(
    gated: Path, url: str, cli_env: dict[str, str]
) -> None:
    await run_cli("run", str(gated), "--store", url, "--json", env=cli_env)
    run_id = await newest_run(url, "gated")
    code, out, err = await run_cli(
        "approve",
        run_id,
        "gate",
        "--reject",
        "--comment",
        "not this week",
        "--store",
        url,
        env=cli_env,
    )
    assert code == 0, err
    data = await show(url, run_id, cli_env)
    assert data["status"] == "failed" and "not this week" in data["error"]
    assert data["stages"]["gate"]["status"] == "failed"
    assert "not this week" in data["stages"]["gate"]["error"]
    # Resuming a rejected run runs the gate again: it finds the rejection and fails again.
    code, out, err = await run_cli("resume", run_id, "--store", url, "--json", env=cli_env)
    assert code == 1, err
    assert "not this week" in json.loads(out)["error"]


async def test_approve_or_reject_with_resume(
    tmp_path: Path, url: str, cli_env: dict[str, str]
) -> None:
    for name in ("take", "drop"):
        (tmp_path / f"{name}.yaml").write_text(GATED.replace("name: gated", f"name: {name}"))
    started = await asyncio.gather(
        *(
            run_cli("run", str(tmp_path / f"{n}.yaml"), "--store", url, "--json", env=cli_env)
            for n in ("take", "drop")
        )
    )
    assert [code for code, _, _ in started] == [0, 0], started
    yes, no = await newest_run(url, "take"), await newest_run(url, "drop")
    (code_yes, out_yes, err_yes), (code_no, out_no, _) = await asyncio.gather(
        run_cli("approve", yes, "gate", "--resume", "--json", "--store", url, env=cli_env),
        run_cli(
            "approve",
            no,
            "gate",
            "--reject",
            "-m",
            "nope",
            "--resume",
            "--json",
            "--store",
            url,
            env=cli_env,
        ),
    )
    assert code_yes == 0, err_yes
    assert json.loads(out_yes)["status"] == "succeeded"
    assert code_no == 1
    result = json.loads(out_no)
    assert result["status"] == "failed" and "nope" in result["stages"]["gate"]["error"]


SLOW = """\
name: slow
inputs:
  items: {{type: array}}
stages:
  - name: work
    mode: scatter
    executor: python
    scatter: {{input: $.trigger.items, as: item}}
    input:
      function: store_crash_work:mark
      kwargs: {{index: $.item, path: {lines}, pause: 0.05}}
    config: {{max_parallel: 2}}
"""


async def test_two_resumes_at_once_one_drives_one_is_refused(
    any_store_url: str, tmp_path: Path, cli_env: dict[str, str]
) -> None:
    file = tmp_path / "slow.yaml"
    file.write_text(SLOW.format(lines=tmp_path / "lines.txt"))
    store = await Store.open(any_store_url)
    try:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "workplex.cli",
            "run",
            str(file),
            "--store",
            any_store_url,
            "--input",
            f"items={json.dumps(list(range(120)))}",
            "--json",
            env=cli_env,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        try:
            run_id = None
            for _ in range(5000):  # until the run is recorded and its lease taken
                runs = await store.list_runs(pipeline="slow", limit=1)
                if runs and runs[0].lease_owner:
                    run_id = runs[0].run_id
                    break
                await asyncio.sleep(0.005)
            assert run_id is not None
        finally:
            proc.send_signal(signal.SIGKILL)
            await proc.wait()
    finally:
        await store.close()
    # 120 tasks of 50 ms, two at a time: about 3 s of work, so the two resumes overlap.
    a, b = await asyncio.gather(
        run_cli("resume", run_id, "--store", any_store_url, "--json", env=cli_env),
        run_cli("resume", run_id, "--store", any_store_url, "--json", env=cli_env),
    )
    codes = sorted([a[0], b[0]])
    assert codes == [0, 2], (a, b)
    winner, loser = (a, b) if a[0] == 0 else (b, a)
    assert json.loads(winner[1])["status"] == "succeeded"
    assert f"run {run_id} is being driven by" in loser[2]


PARENT = """\
name: parent
stages:
  - name: prepare
    executor: echo
    input: {region: eu}
  - name: child
    executor: workflow
    input:
      pipeline: child.yaml
      inputs: {region: $.prepare.region}
  - name: report
    executor: echo
    input: {child_output: $.child.output}
"""

CHILD = """\
name: child
inputs:
  region: {type: string}
stages:
  - name: greet
    executor: echo
    input: {hello: $.trigger.region}
"""


async def test_a_workflow_sub_run_is_linked_to_its_parent(
    tmp_path: Path, url: str, cli_env: dict[str, str]
) -> None:
    (tmp_path / "child.yaml").write_text(CHILD)
    (tmp_path / "parent.yaml").write_text(PARENT)
    code, out, err = await run_cli(
        "run", str(tmp_path / "parent.yaml"), "--store", url, "--json", env=cli_env, cwd=Path("/")
    )
    assert code == 0, err
    result = json.loads(out)
    assert result["status"] == "succeeded"
    child_out = result["stages"]["child"]["output"]
    assert child_out["status"] == "succeeded" and child_out["output"] == {"hello": "eu"}
    assert result["stages"]["report"]["output"] == {"child_output": {"hello": "eu"}}
    parent = await show(url, result["run_id"], cli_env)
    assert parent["children"] == [{"run_id": child_out["run_id"], "status": "succeeded"}]
    child = await show(url, child_out["run_id"], cli_env)
    assert child["parent_run_id"] == result["run_id"] and child["pipeline"] == "child"


DOC = {"name": "gated", "stages": [{"name": "build"}, {"name": "gate"}, {"name": "deploy"}]}


async def make_paused_runs(url: str, *run_ids: str) -> None:
    store = await Store.open(url)
    try:
        for run_id in run_ids:
            await store.create_run(run_id, "gated", DOC, None, {})
            await store.stage_update(run_id, "gate", "paused")
            await store.run_update(run_id, "paused")
    finally:
        await store.close()


async def test_runs_cancel_and_gc(url: str, cli_env: dict[str, str]) -> None:
    await make_paused_runs(url, "r-old", "r-new")
    (code, out, _), (bad, _, bad_err) = await asyncio.gather(
        run_cli("runs", "--store", url, "--json", env=cli_env),
        run_cli("gc", "--older-than", "soon", "--store", url, env=cli_env),
    )
    assert code == 0
    assert [(r["run_id"], r["status"]) for r in json.loads(out)] == [
        ("r-new", "paused"),
        ("r-old", "paused"),
    ]
    assert bad == 2 and "--older-than" in bad_err
    code, out, err = await run_cli("cancel", "r-old", "--store", url, env=cli_env)
    assert code == 0, err
    assert "run r-old cancelled" in out
    (code, out, _), (again, _, again_err) = await asyncio.gather(
        run_cli("gc", "--older-than", "1d", "--store", url, env=cli_env),
        run_cli("cancel", "r-old", "--store", url, env=cli_env),
    )
    assert code == 0 and "deleted 0 run(s)" in out
    assert again == 2 and "already cancelled" in again_err
    code, out, _ = await run_cli("gc", "--older-than", "0s", "--store", url, env=cli_env)
    assert code == 0 and "deleted 1 run(s)" in out
    store = await Store.open(url)
    try:
        assert [r.run_id for r in await store.list_runs()] == ["r-new"]
    finally:
        await store.close()


async def test_an_unknown_run_id_exits_2(url: str, cli_env: dict[str, str]) -> None:
    await make_paused_runs(url, "r-1")
    commands = [
        ["show", "nope"],
        ["logs", "nope"],
        ["cancel", "nope"],
        ["resume", "nope"],
        ["approve", "nope", "gate"],
    ]
    outcomes = await asyncio.gather(
        *(run_cli(*args, "--store", url, env=cli_env) for args in commands)
    )
    for args, (code, _, err) in zip(commands, outcomes, strict=True):
        assert code == 2, args
        assert "no run 'nope'" in err, args
    code, _, err = await run_cli("approve", "r-1", "gaet", "--store", url, env=cli_env)
    assert code == 2 and "no stage 'gaet'" in err and "build, gate, deploy" in err
