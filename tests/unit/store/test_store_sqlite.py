"""The run store on SQLite: runs, tasks, batching, truncation, leases, approvals, gc, events."""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import update

from workplex.errors import StoreError
from workplex.executor import ErrorInfo, Metrics, Result
from workplex.store import RunNotFoundError, Store
from workplex.store import schema as t

DOC = {"name": "demo", "stages": [{"name": "first"}, {"name": "second"}, {"name": "third"}]}


def ok(i: int, attempts: int = 1) -> Result:
    return Result(True, {"i": i}, metrics=Metrics(10.0, 10.5, 0.5, attempts), task_id=f"t{i}")


async def drained(store: Store) -> None:
    """Poll until the background flusher has written the buffer (at most 10 s)."""
    for _ in range(2000):
        if not store.pending_writes:
            return
        await asyncio.sleep(0.005)


async def count_tasks(url: str, run_id: str) -> int:
    """Rows visible to another connection (what a new process would see)."""
    other = await Store.open(url)
    try:
        return sum(s.total for s in (await other.task_stats(run_id)).values())
    finally:
        await other.close()


async def test_create_and_read_back_a_run_with_its_stages(store: Store) -> None:
    await store.create_run("r1", "demo", DOC, "/p/demo.yaml", {"n": 3}, parent_run_id="r0")
    run = await store.get_run("r1")
    assert run is not None
    assert (run.pipeline, run.status, run.path, run.inputs) == (
        "demo",
        "pending",
        "/p/demo.yaml",
        {"n": 3},
    )
    assert run.parent_run_id == "r0"
    assert run.document == DOC
    assert list(run.stages) == ["first", "second", "third"]
    assert {s.status for s in run.stages.values()} == {"pending"}
    assert await store.get_run("nope") is None
    with pytest.raises(StoreError, match="already exists"):
        await store.create_run("r1", "demo", DOC, None, {})


async def test_run_and_stage_updates(store: Store) -> None:
    await store.create_run("r1", "demo", DOC, None, {})
    await store.run_update("r1", "running")
    await store.stage_update("r1", "first", "running", started=100.0)
    await store.stage_update("r1", "first", "succeeded", output={"x": [1, 2]}, total=2, ended=101.0)
    await store.stage_update("r1", "extra", "failed", error="boom")
    await store.run_update("r1", "failed", error="stage extra failed")
    run = await store.get_run("r1")
    assert run is not None
    assert run.status == "failed" and run.error == "stage extra failed"
    assert run.started is not None and run.ended is not None and run.ended >= run.started
    first = run.stages["first"]
    assert (first.status, first.output, first.total, first.started, first.ended) == (
        "succeeded",
        {"x": [1, 2]},
        2,
        100.0,
        101.0,
    )
    assert list(run.stages)[-1] == "extra" and run.stages["extra"].error == "boom"
    # Going back to running (a resume) drops the old error and end.
    await store.stage_update("r1", "extra", "running")
    again = await store.get_run("r1")
    assert again is not None and again.stages["extra"].error is None
    with pytest.raises(RunNotFoundError):
        await store.run_update("missing", "running")


async def test_task_results_round_trip(store: Store) -> None:
    await store.create_run("r1", "demo", DOC, None, {})
    store.task_done("r1", "first", 0, "r1:first:0", "echo", {"p": 1}, ok(0, attempts=3))
    failed = Result(
        False,
        None,
        ErrorInfo("PermanentError", "no such file", False, {"path": "/x"}),
        exit_code=2,
        logs=["line one", "line two"],
        metrics=Metrics(1.0, 3.0, 2.0, 2),
        task_id="r1:first:1",
    )
    store.task_done("r1", "first", 1, "r1:first:1", "command", {}, failed)
    done = await store.finished_tasks("r1", "first")
    assert sorted(done) == [0, 1]
    assert done[0].success and done[0].output == {"i": 0}
    assert done[0].metrics is not None and done[0].metrics.attempts == 3
    bad = done[1]
    assert not bad.success and bad.exit_code == 2 and bad.logs == ["line one", "line two"]
    assert bad.error is not None and (bad.error.type, bad.error.message) == (
        "PermanentError",
        "no such file",
    )
    assert bad.error.details == {"path": "/x"}
    assert await store.finished_tasks("r1", "second") == {}
    stats = await store.task_stats("r1")
    assert (
        stats["first"].total == 2 and stats["first"].succeeded == 1 and stats["first"].failed == 1
    )
    assert stats["first"].retried == 2 and stats["first"].max_attempts == 3
    failures = await store.failed_tasks("r1")
    assert [(f["index"], f["executor"], f["exit_code"]) for f in failures] == [(1, "command", 2)]


async def test_task_done_is_buffered_then_written_in_batches(store_url: str) -> None:
    store = await Store.open(store_url, batch_rows=100_000, flush_interval=3600)
    try:
        await store.create_run("r1", "demo", DOC, None, {})
        for i in range(250):
            store.task_done("r1", "first", i, f"r1:first:{i}", "echo", None, ok(i))
        assert store.pending_writes == 250
        assert await count_tasks(store_url, "r1") == 0  # nothing written yet
        await store.flush()
        assert store.pending_writes == 0
        assert await count_tasks(store_url, "r1") == 250
    finally:
        await store.close()


async def test_the_flusher_writes_when_the_batch_is_full(store_url: str) -> None:
    store = await Store.open(store_url, batch_rows=50, flush_interval=3600)
    try:
        await store.create_run("r1", "demo", DOC, None, {})
        for i in range(50):
            store.task_done("r1", "first", i, f"r1:first:{i}", "echo", None, ok(i))
        await drained(store)
        assert store.pending_writes == 0
        assert await count_tasks(store_url, "r1") == 50
    finally:
        await store.close()


async def test_the_flusher_writes_on_its_interval(store_url: str) -> None:
    store = await Store.open(store_url, batch_rows=100_000, flush_interval=0.02)
    try:
        await store.create_run("r1", "demo", DOC, None, {})
        store.task_done("r1", "first", 0, "r1:first:0", "echo", None, ok(0))
        await drained(store)
        assert await count_tasks(store_url, "r1") == 1
    finally:
        await store.close()


async def test_close_writes_what_is_buffered(store_url: str) -> None:
    store = await Store.open(store_url, batch_rows=100_000, flush_interval=3600)
    await store.create_run("r1", "demo", DOC, None, {})
    for i in range(10):
        store.task_done("r1", "first", i, f"r1:first:{i}", "echo", None, ok(i))
    await store.close()
    assert await count_tasks(store_url, "r1") == 10


async def test_a_task_recorded_twice_keeps_the_last_result(store: Store) -> None:
    await store.create_run("r1", "demo", DOC, None, {})
    store.task_done(
        "r1", "first", 0, "r1:first:0", "x", None, Result.failure(ErrorInfo("E", "first"))
    )
    await store.flush()
    store.task_done("r1", "first", 0, "r1:first:0", "x", None, ok(7))
    done = await store.finished_tasks("r1", "first")
    assert len(done) == 1 and done[0].success and done[0].output == {"i": 7}


async def test_large_outputs_are_truncated_with_a_marker(store_url: str) -> None:
    store = await Store.open(store_url, max_output_bytes=1000)
    try:
        await store.create_run("r1", "demo", DOC, None, {})
        big = {"text": "x" * 5000}
        small = {"text": "y" * 100}
        store.task_done("r1", "first", 0, "a", "echo", None, Result(True, big))
        store.task_done("r1", "first", 1, "b", "echo", None, Result(True, small))
        done = await store.finished_tasks("r1", "first")
        marker = done[0].output
        assert marker["truncated"] is True
        assert marker["size"] == len('{"text":""}') + 5000
        assert marker["preview"].startswith('{"text":"xxx') and len(marker["preview"]) <= 500
        assert done[1].output == small
        await store.stage_update("r1", "first", "succeeded", output=[big, big])
        run = await store.get_run("r1")
        assert run is not None and run.stages["first"].output["truncated"] is True
    finally:
        await store.close()


async def test_leases_are_exclusive_between_stores(store_url: str) -> None:
    a = await Store.open(store_url)
    b = await Store.open(store_url)
    try:
        await a.create_run("r1", "demo", DOC, None, {})
        await a.acquire_lease("r1", "owner-a", 30)
        with pytest.raises(StoreError, match="being driven by owner-a"):
            await b.acquire_lease("r1", "owner-b", 30)
        assert await a.renew_lease("r1", "owner-a", 30)
        assert not await b.renew_lease("r1", "owner-b", 30)
        await b.release_lease("r1", "owner-b")  # not the holder: no effect
        with pytest.raises(StoreError, match="being driven"):
            await b.acquire_lease("r1", "owner-b", 30)
        await a.release_lease("r1", "owner-a")
        await b.acquire_lease("r1", "owner-b", 30)
        with pytest.raises(RunNotFoundError):
            await b.acquire_lease("missing", "owner-b", 30)
    finally:
        await a.close()
        await b.close()


async def test_an_expired_lease_can_be_taken_over(store: Store) -> None:
    await store.create_run("r1", "demo", DOC, None, {})
    await store.acquire_lease("r1", "dead-process", 0.0)
    # ttl 0: expired as soon as the clock moves on.
    deadline = time.time() + 5
    while time.time() <= deadline:
        try:
            await store.acquire_lease("r1", "new-owner", 30)
            break
        except StoreError:
            await asyncio.sleep(0.001)
    run = await store.get_run("r1")
    assert run is not None and run.lease_owner == "new-owner"
    assert not await store.renew_lease("r1", "dead-process", 30)


LEASE_SCRIPT = """
import asyncio, sys
from workplex.errors import StoreError
from workplex.store import Store
async def main():
    store = await Store.open(sys.argv[1])
    try:
        sys.stdin.readline()  # start together
        await store.acquire_lease("r1", sys.argv[2], 60)
        print("won")
    except StoreError:
        print("refused")
    finally:
        await store.close()
asyncio.run(main())
"""


async def test_exactly_one_of_several_processes_takes_the_lease(
    store: Store, store_url: str
) -> None:
    await store.create_run("r1", "demo", DOC, None, {})
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            LEASE_SCRIPT,
            store_url,
            f"p{i}",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        for i in range(4)
    ]
    try:
        outs = [
            out.decode().strip()
            for out, _ in await asyncio.gather(*(p.communicate(b"go\n") for p in procs))
        ]
    finally:
        for p in procs:
            if p.returncode is None:
                p.kill()
                await p.wait()
    assert sorted(outs) == ["refused", "refused", "refused", "won"]
    run = await store.get_run("r1")
    assert run is not None and run.lease_owner == f"p{outs.index('won')}"


async def test_cancel_of_an_undriven_run_is_immediate(store: Store) -> None:
    await store.create_run("r1", "demo", DOC, None, {})
    await store.stage_update("r1", "first", "succeeded")
    await store.stage_update("r1", "second", "paused")
    await store.run_update("r1", "paused")
    assert await store.request_cancel("r1") == "cancelled"
    run = await store.get_run("r1")
    assert run is not None and run.cancel_requested and run.ended is not None
    assert [s.status for s in run.stages.values()] == ["succeeded", "cancelled", "cancelled"]
    with pytest.raises(RunNotFoundError):
        await store.request_cancel("missing")


async def test_cancel_of_a_driven_run_reaches_the_driver_through_renew(store: Store) -> None:
    await store.create_run("r1", "demo", DOC, None, {})
    await store.acquire_lease("r1", "driver", 30)
    await store.run_update("r1", "running")
    assert await store.renew_lease("r1", "driver", 30)
    assert await store.request_cancel("r1") == "running"
    assert not await store.renew_lease("r1", "driver", 30)


async def test_approvals(store: Store) -> None:
    await store.create_run("r1", "demo", DOC, None, {})
    assert await store.get_approval("r1", "second") is None
    first = await store.request_approval("r1", "second", "ship it?")
    assert await store.request_approval("r1", "second", "ship it?") == first
    assert await store.get_approval("r1", "second") is None
    await store.set_approval("r1", "second", False, "not yet", by="alice")
    got = await store.get_approval("r1", "second")
    assert got is not None and (got.approved, got.comment, got.by) == (False, "not yet", "alice")
    await store.set_approval("r1", "second", True, "ok now", by="bob")
    got = await store.get_approval("r1", "second")
    assert got is not None and got.approved and got.comment == "ok now" and got.at >= first
    await store.set_approval("r1", "third", True)  # a decision before the request is kept
    assert (await store.get_approval("r1", "third")) is not None
    with pytest.raises(RunNotFoundError):
        await store.set_approval("missing", "x", True)
    kinds = [e.kind for e in await store.events("r1", stage="second")]
    assert kinds == ["approval.requested", "approval.decided", "approval.decided"]


async def test_events_and_logs_in_order(store: Store) -> None:
    await store.create_run("r1", "demo", DOC, None, {})
    await store.event("r1", "stage.started", {"stage": "first"})
    await store.log("r1", "hello", stage="first", n=1)
    await store.log("r1", "run-level line")
    events = await store.events("r1")
    assert [(e.kind, e.stage) for e in events] == [
        ("stage.started", "first"),
        ("log", "first"),
        ("log", None),
    ]
    assert events[1].data == {"message": "hello", "stage": "first", "n": 1}
    assert [e.data["message"] for e in await store.events("r1", kinds=["log"])] == [
        "hello",
        "run-level line",
    ]


async def test_gc_deletes_old_finished_runs_and_their_rows(store: Store) -> None:
    for rid, status in [
        ("old-done", "succeeded"),
        ("old-failed", "failed"),
        ("new-done", "succeeded"),
        ("old-running", "running"),
    ]:
        await store.create_run(rid, "demo", DOC, None, {})
        store.task_done(rid, "first", 0, f"{rid}:first:0", "echo", None, ok(0))
        await store.event(rid, "log", {"message": "x"})
        await store.request_approval(rid, "second")
        await store.run_update(rid, status)
    async with store._begin_write() as conn:  # age three of them by 40 days
        await conn.execute(
            update(t.runs)
            .where(t.runs.c.run_id.in_(["old-done", "old-failed", "old-running"]))
            .values(ended=time.time() - 40 * 86400)
        )
    deleted = await store.gc(30 * 86400)
    assert sorted(deleted) == ["old-done", "old-failed"]
    assert await store.get_run("old-done") is None
    assert await store.finished_tasks("old-done", "first") == {}
    assert await store.events("old-failed") == []
    assert await store.get_run("old-running") is not None
    assert len(await store.finished_tasks("new-done", "first")) == 1
    assert await store.gc(30 * 86400) == []


async def test_list_runs_newest_first_with_filters(store: Store) -> None:
    for i, (pipeline, status) in enumerate([("a", "succeeded"), ("b", "failed"), ("a", "failed")]):
        await store.create_run(f"r{i}", pipeline, {"name": pipeline, "stages": []}, None, {})
        await store.run_update(f"r{i}", status)
    assert [r.run_id for r in await store.list_runs()] == ["r2", "r1", "r0"]
    assert [r.run_id for r in await store.list_runs(status="failed")] == ["r2", "r1"]
    assert [r.run_id for r in await store.list_runs(pipeline="a", limit=1)] == ["r2"]
    assert [r.run_id for r in await store.list_runs(pipeline="a", status="succeeded")] == ["r0"]


def test_sqlite_is_in_wal_mode(tmp_path: Path) -> None:
    import sqlite3

    async def make() -> None:
        s = await Store.open(f"sqlite:///{tmp_path / 'w.db'}")
        await s.close()

    asyncio.run(make())
    with sqlite3.connect(tmp_path / "w.db") as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


async def test_the_lease_of_a_dead_local_process_is_taken_over(store: Store) -> None:
    import socket

    proc = await asyncio.create_subprocess_exec(sys.executable, "-c", "pass")
    await proc.wait()  # its pid is now free: the holder is gone
    await store.create_run("r1", "demo", DOC, None, {})
    await store.acquire_lease("r1", f"{socket.gethostname()}:{proc.pid}:abc", 3600)
    await store.acquire_lease("r1", "successor", 30)
    run = await store.get_run("r1")
    assert run is not None and run.lease_owner == "successor"
    # A live process keeps its lease.
    await store.release_lease("r1", "successor")
    live = await asyncio.create_subprocess_exec(sys.executable, "-c", "import time; time.sleep(60)")
    try:
        await store.acquire_lease("r1", f"{socket.gethostname()}:{live.pid}:abc", 3600)
        with pytest.raises(StoreError, match="being driven"):
            await store.acquire_lease("r1", "successor", 30)
    finally:
        live.kill()
        await live.wait()
