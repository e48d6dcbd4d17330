"""The run commands as real subprocesses on a real SQLite store: approvers are enforced by
`approve`, a run whose process was killed is cancelled at once and not resumed, fail-fast
leaves no stage running, a lost lease takeover names the winner, commands on recorded runs
never create a store, and `runs` prints whole run ids."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import sys
import time
from pathlib import Path

import pytest

from workplex.errors import StoreError
from workplex.store import Store

from .conftest import run_cli

APPROVERS = """\
name: guarded
stages:
  - name: gate
    executor: approval
    input: {message: "ship?", approvers: [alice, bob]}
  - name: after
    executor: echo
    input: {by: $.gate.by}
"""

SLEEPER = """\
name: sleeper
stages:
  - name: nap
    executor: command
    input: {command: sleep, args: ["60"]}
  - name: after
    executor: echo
    input: {done: true}
"""

# `a` fails at once (no process to start), while `b` and `c` are still recording their start.
FAIL_FAST = """\
name: failfast
stages:
  - name: a
    executor: command
    input: {command: no-such-program-here}
  - name: b
    executor: command
    needs: []
    input: {command: sleep, args: ["5"]}
  - name: c
    executor: command
    needs: []
    input: {command: sleep, args: ["5"]}
"""


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'runs.db'}"


async def stored(url: str, run_id: str) -> dict:  # type: ignore[type-arg]
    store = await Store.open(url)
    try:
        run = await store.get_run(run_id)
    finally:
        await store.close()
    assert run is not None
    return run.to_dict()


async def test_approve_by_someone_not_among_the_approvers_is_refused(
    tmp_path: Path, url: str, cli_env: dict[str, str]
) -> None:
    (tmp_path / "guarded.yaml").write_text(APPROVERS)
    code, out, err = await run_cli("run", str(tmp_path / "guarded.yaml"), "--store", url, "--json", env=cli_env)
    assert code == 0, err
    run_id = json.loads(out)["run_id"]

    code, out, err = await run_cli("approve", run_id, "gate", "--by", "mallory", "--store", url, env=cli_env)
    assert code == 2, (out, err)
    assert "alice" in err and "bob" in err and "mallory" in err
    assert "approved" not in out
    store = await Store.open(url)
    try:
        assert await store.get_approval(run_id, "gate") is None  # nothing recorded
    finally:
        await store.close()

    code, out, err = await run_cli("approve", run_id, "gate", "--by", "bob", "--store", url, env=cli_env)
    assert code == 0, err
    code, out, err = await run_cli("resume", run_id, "--store", url, "--json", env=cli_env)
    assert code == 0, err
    data = json.loads(out)
    assert data["status"] == "succeeded"
    assert data["stages"]["after"]["output"] == {"by": "bob"}


async def start_and_kill(path: Path, url: str, env: dict[str, str]) -> str:
    """Start ``path`` in a real process, wait until it drives its run, kill it (-9, with its
    children) and return the run id."""
    errors = path.parent / "run.stderr"
    with errors.open("wb") as stderr:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "workplex.cli", "run", str(path), "--store", url,
            env=env, stdout=asyncio.subprocess.DEVNULL, stderr=stderr, start_new_session=True,
        )
    store: Store | None = None
    try:
        run_id = None
        deadline = time.monotonic() + 60
        while run_id is None and proc.returncode is None and time.monotonic() < deadline:
            # Until the run is recorded and its first stage started.
            if store is None and (path.parent / "runs.db").exists():
                store = await Store.open(url)
            if store is not None:
                runs = await store.list_runs(limit=1)
                run = await store.get_run(runs[0].run_id) if runs else None
                if run is not None and run.lease_owner and run.stages["nap"].status == "running":
                    run_id = run.run_id
            if run_id is None:
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(proc.wait(), 0.01)
        assert run_id is not None, f"the run never started: {errors.read_text()}"
    finally:
        # The driver first, so it cannot record its `sleep` child's death; then that child.
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        if store is not None:
            await store.close()
    return run_id


async def test_cancel_of_a_run_whose_process_was_killed_cancels_it_at_once(
    tmp_path: Path, url: str, cli_env: dict[str, str]
) -> None:
    (tmp_path / "sleeper.yaml").write_text(SLEEPER)
    run_id = await start_and_kill(tmp_path / "sleeper.yaml", url, cli_env)
    assert (await stored(url, run_id))["status"] == "running"  # its lease has not expired

    code, out, err = await run_cli("cancel", run_id, "--store", url, env=cli_env)
    assert code == 0, err
    assert out.strip() == f"run {run_id} cancelled"
    run = await stored(url, run_id)
    assert run["status"] == "cancelled"
    assert {s["status"] for s in run["stages"].values()} == {"cancelled"}, run

    code, out, err = await run_cli("resume", run_id, "--store", url, env=cli_env)
    assert code == 2, (out, err)
    assert "cancelled" in err
    assert (await stored(url, run_id))["status"] == "cancelled"


async def test_resume_of_a_run_with_a_pending_cancel_request_is_refused(
    url: str, cli_env: dict[str, str]
) -> None:
    document = {"name": "later", "stages": [{"name": "one", "executor": "echo", "input": {"x": 1}}]}
    store = await Store.open(url)
    try:
        await store.create_run("r-later", "later", document, None, {})
        await store.run_update("r-later", "running")
        # Driven by a process of another host: the cancel can only be requested.
        await store.acquire_lease("r-later", "elsewhere:1:x", 0.3)
        assert await store.request_cancel("r-later") == "running"
        run = await store.get_run("r-later")
        assert run is not None and run.cancel_requested and run.lease_until is not None
        # That driver died without seeing the request: its lease expires, nobody cancelled.
        expires = run.lease_until
        while time.time() <= expires:  # noqa: ASYNC110 - waiting for the clock, not an event
            await asyncio.sleep(0.02)
    finally:
        await store.close()

    code, out, err = await run_cli("resume", "r-later", "--store", url, env=cli_env)
    assert code == 2, (out, err)
    assert "r-later was cancelled" in err
    after = await stored(url, "r-later")
    assert after["status"] == "running" and after["stages"]["one"]["status"] == "pending"


async def test_fail_fast_leaves_no_stage_running(
    tmp_path: Path, url: str, cli_env: dict[str, str]
) -> None:
    (tmp_path / "ff.yaml").write_text(FAIL_FAST)
    code, out, err = await run_cli("run", str(tmp_path / "ff.yaml"), "--store", url, "--json", env=cli_env)
    assert code == 1, err
    result = json.loads(out)
    run_id = result["run_id"]
    assert result["status"] == "failed"
    assert result["stages"]["a"]["status"] == "failed"
    for name in ("b", "c"):
        assert result["stages"][name]["status"] == "cancelled", result["stages"][name]

    code, out, err = await run_cli("show", run_id, "--store", url, "--json", env=cli_env)
    assert code == 0, err
    shown = json.loads(out)
    assert {n: s["status"] for n, s in shown["stages"].items()} == {
        "a": "failed", "b": "cancelled", "c": "cancelled",
    }
    code, out, err = await run_cli("logs", run_id, "--store", url, "--json", env=cli_env)
    assert code == 0, err
    finished = {
        e["stage"]: e["data"]["status"]
        for e in map(json.loads, out.splitlines())
        if e["kind"] == "stage.finished"
    }
    assert finished == {"a": "failed", "b": "cancelled", "c": "cancelled"}


async def test_a_lost_takeover_names_the_process_that_won(url: str) -> None:
    from sqlalchemy import event

    dead = await asyncio.create_subprocess_exec("true")
    await dead.wait()
    host = socket.gethostname()
    dead_owner, winner, loser = f"{host}:{dead.pid}:x", f"{host}:{os.getpid()}:won", f"{host}:{os.getpid()}:lost"
    store = await Store.open(url)
    try:
        await store.create_run("r-race", "race", {"name": "race", "stages": []}, None, {})
        # The dead process holds a lease far from expiring: only the takeover can free it.
        await store.acquire_lease("r-race", dead_owner, 3600)

        def other_process_wins(conn, cursor, statement, parameters, context, executemany):  # type: ignore[no-untyped-def]
            # Right before this store's takeover: another process takes the run over first,
            # in the same database (the window between reading the owner and the update).
            if statement.startswith("UPDATE runs") and dead_owner in tuple(parameters or ()):
                cur = conn.connection.cursor()
                cur.execute("UPDATE runs SET lease_owner = ? WHERE run_id = 'r-race'", (winner,))
                cur.close()

        event.listen(store._engine.sync_engine, "before_cursor_execute", other_process_wins)
        with pytest.raises(StoreError) as caught:
            await store.acquire_lease("r-race", loser, 60)
        event.remove(store._engine.sync_engine, "before_cursor_execute", other_process_wins)
        assert f"driven by {winner}" in str(caught.value)
        assert dead_owner not in str(caught.value)
        run = await store.get_run("r-race")
        assert run is not None and run.lease_owner == winner
    finally:
        await store.close()


@pytest.mark.parametrize("command", ["runs", "show", "logs", "gc", "cancel", "approve"])
async def test_commands_on_recorded_runs_never_create_a_store(
    tmp_path: Path, cli_env: dict[str, str], command: str
) -> None:
    missing = tmp_path / "no" / "such" / "runs.db"
    args = {
        "runs": [], "show": ["r-1"], "logs": ["r-1"], "gc": ["--older-than", "1d"],
        "cancel": ["r-1"], "approve": ["r-1", "gate"],
    }[command]
    code, out, err = await run_cli(command, *args, "--store", f"sqlite:///{missing}", env=cli_env, cwd=tmp_path)
    assert code == 2, (out, err)
    assert f"no run store at {missing}" in err
    assert not (tmp_path / "no").exists()

    code, out, err = await run_cli(command, *args, "--store", "foo bar", env=cli_env, cwd=tmp_path)
    assert code == 2, (out, err)
    assert "--store 'foo bar'" in err and "not a store URL" in err
    assert not (tmp_path / "foo bar").exists()


async def test_run_still_creates_its_store_and_a_db_path_is_accepted(
    tmp_path: Path, cli_env: dict[str, str]
) -> None:
    (tmp_path / "sleeper.yaml").write_text(SLEEPER.replace('sleep, args: ["60"]', '"true"'))
    target = tmp_path / "new" / "runs.db"
    code, out, err = await run_cli("run", str(tmp_path / "sleeper.yaml"), "--store", str(target), "--json", env=cli_env)
    assert code == 0, err
    run_id = json.loads(out)["run_id"]
    assert target.is_file()
    code, out, err = await run_cli("runs", "--store", str(target), "--json", env=cli_env)
    assert code == 0, err
    assert [r["run_id"] for r in json.loads(out)] == [run_id]


async def test_runs_prints_whole_run_ids_when_piped_at_80_columns(
    tmp_path: Path, url: str, cli_env: dict[str, str]
) -> None:
    (tmp_path / "guarded.yaml").write_text(APPROVERS)
    ids = []
    for _ in range(2):
        code, out, err = await run_cli("run", str(tmp_path / "guarded.yaml"), "--store", url, "--json", env=cli_env)
        assert code == 0, err
        ids.append(json.loads(out)["run_id"])
    env = dict(cli_env, COLUMNS="64")
    code, out, err = await run_cli("runs", "--store", url, env=env)
    assert code == 0, err
    for run_id in ids:
        assert run_id in out, out  # whole, on one line
