"""Delivery details of the nats backend and ``workplex worker`` against a real nats-server:
dispatching withdrawn tasks again, stream settings kept, what lands in the streams and the
object store, terminated failures, in-progress acks and ``workplex workers``."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import nats
import pytest

from workplex.backends.jetstream import (
    DEAD_STREAM,
    MSG_ID,
    PAYLOAD_BUCKET,
    RESULTS_STREAM,
    TASKS_STREAM,
    dead_subject,
    dumps,
    durable_name,
    results_subject,
    task_subject,
)
from workplex.backends.nats import NatsBackend
from workplex.executor import Result, Task
from workplex.registry import Registry

from .conftest import WorkerProcess, nats_server
from .test_nats_distribution import py_task, run_id, run_tasks, wait_for_workers

StartWorker = Callable[..., WorkerProcess]
HERE = Path(__file__).parent
CLI = [sys.executable, "-m", "workplex.cli"]


def cli_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(HERE), env.get("PYTHONPATH", "")])
    return env


def executions(record: Path) -> Counter[int]:
    return Counter(int(x) for x in record.read_text().split()) if record.exists() else Counter()


async def consumer_info(backend: NatsBackend, executor: str) -> Any:
    return await backend.layout.js.consumer_info(TASKS_STREAM, durable_name(executor))


async def until(predicate: Callable[[], Any], timeout: float, what: str) -> None:
    """Poll an async ``predicate`` until it returns true; fail naming ``what``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        if await predicate():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


# ---- 1. a withdrawn task dispatched again runs ---------------------------------------------
@pytest.mark.parametrize("again_by", ["same-controller", "new-controller"])
async def test_tasks_withdrawn_by_a_cancel_run_when_dispatched_again(
    nats_url: str, workers: StartWorker, tmp_path: Path, again_by: str
) -> None:
    w = workers(f"withdraw-{again_by}", "--executors", "python", "--concurrency", "1")
    record = tmp_path / "executions.txt"
    rid = run_id("withdraw")
    tasks = [py_task(rid, i, "slow", i=i, seconds=0.3, record=str(record)) for i in range(4)]
    first_result = asyncio.Event()
    got: dict[int, list[Result]] = {}

    def on_result(index: int, result: Result) -> None:
        got.setdefault(index, []).append(result)
        first_result.set()

    first = NatsBackend(Registry(), nats_url)
    second = first if again_by == "same-controller" else NatsBackend(Registry(), nats_url)
    try:
        await first.open()
        await wait_for_workers(first, {w.id})
        call = asyncio.ensure_future(
            first.execute(tasks, run_id=rid, stage="s", limit=10, on_result=on_result)
        )
        # One task done, the worker busy with the next, the others queued: cancel.
        await asyncio.wait_for(first_result.wait(), 30)
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        assert len(got) < 4, "every task finished before the cancel"
        if second is not first:
            await first.close()  # waits for the withdrawal it started
            await second.open()
        # The same task ids again (as `workplex resume` of a cancelled run does).
        again = await asyncio.wait_for(run_tasks(second, tasks, rid), 30)
    finally:
        await first.close()
        await second.close()
    assert sorted(again) == [0, 1, 2, 3]
    assert all(len(r) == 1 and r[0].success for r in again.values())
    assert [again[i][0].output for i in range(4)] == [0, 1, 2, 3]
    assert set(executions(record)) == {0, 1, 2, 3}


async def test_a_task_still_queued_is_not_dispatched_twice(
    nats_url: str, workers: StartWorker, tmp_path: Path
) -> None:
    """A controller that died left a task queued: dispatching it again under the same id
    is dropped as a duplicate, and the queued copy's result is the one reported."""
    record = tmp_path / "executions.txt"
    rid = run_id("orphan")
    task = py_task(rid, 0, "slow", i=5, seconds=0.1, record=str(record))
    message = {
        "id": task.id, "type": "python", "payload": task.payload, "run_id": rid, "stage": "s",
        "index": 0, "settings": None, "reply": results_subject(rid, "s"), "dispatch": task.id,
    }
    async with NatsBackend(Registry(), nats_url) as backend:
        ack = await backend.layout.js.publish(
            task_subject("python"), dumps(message), headers={MSG_ID: task.id}
        )
        running = asyncio.ensure_future(run_tasks(backend, [task], rid))
        # No worker yet: the queued copy is there when the dispatch is dropped.
        await until(
            lambda: _dropped(backend), 10, "the dispatch to be acknowledged as a duplicate"
        )
        w = workers("orphan", "--executors", "python")
        got = await asyncio.wait_for(running, 30)
        await until(lambda: _idle(backend, "python"), 10, "the python consumer to be idle")
        stored = await _present(backend, ack.seq)
    assert w.proc.poll() is None
    [result] = got[0]
    assert result.success and result.output == 5
    assert executions(record) == Counter({5: 1})  # ran once: the queued copy
    assert not stored


async def _dropped(backend: NatsBackend) -> bool:
    # The task was published and JetStream's ack for it came back.
    publisher = backend._publisher
    return publisher is not None and publisher.counter >= 1 and not publisher.waiting


async def _idle(backend: NatsBackend, executor: str) -> bool:
    info = await consumer_info(backend, executor)
    return bool(info.num_ack_pending == 0 and info.num_pending == 0)


async def _present(backend: NatsBackend, seq: int) -> bool:
    try:
        await backend.layout.js.get_msg(TASKS_STREAM, seq)
    except nats.js.errors.NotFoundError:
        return False
    return True


# ---- 2. stream settings belong to whoever created them ---------------------------------------
@pytest.fixture
def private_nats(tmp_path: Path) -> Iterator[str]:
    """A nats-server of this test's own (stream settings of the shared one stay as they are)."""
    folder = tmp_path / "js"
    folder.mkdir()
    with nats_server(folder) as url:
        yield url


def workers_cli(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, "workers", "--nats", url, *args],
        env=cli_env(), capture_output=True, text=True, timeout=60,
    )


async def test_workers_cli_on_a_fresh_server_lists_none_and_creates_nothing(
    private_nats: str,
) -> None:
    listed = await asyncio.to_thread(workers_cli, private_nats, "--json")
    assert listed.returncode == 0, listed.stdout + listed.stderr
    assert json.loads(listed.stdout) == []
    nc = await nats.connect(private_nats)
    try:
        names = [info.config.name for info in await nc.jetstream().streams_info()]
    finally:
        await nc.close()
    assert names == []  # listing is read only: no stream or bucket was set up


async def test_streams_created_with_memory_storage_are_kept_by_later_parties(
    private_nats: str, workers: StartWorker
) -> None:
    memory = workers("mem", "--executors", "echo", "--storage", "memory", url=private_nats)
    # Watch (creating nothing) until the worker has set up the streams and is live.
    nc = await nats.connect(private_nats)
    try:
        js = nc.jetstream()

        async def worker_live() -> bool:
            try:
                kv = await js.key_value("workplex-workers")
                await kv.get(memory.id)
            except nats.js.errors.NotFoundError:
                return False
            return True

        await until(worker_live, 30, "the memory-storage worker to be live")
    finally:
        await nc.close()
    listed = await asyncio.to_thread(workers_cli, private_nats, "--json")
    assert listed.returncode == 0, listed.stdout + listed.stderr
    assert memory.id in {w["id"] for w in json.loads(listed.stdout)}
    # A worker without stream options joins, as does one giving only --replicas (the
    # storage it did not mention stays memory); one asking for file storage is refused.
    plain = workers("plain-on-mem", "--executors", "echo", url=private_nats)
    replicas = workers("r1-on-mem", "--executors", "echo", "--replicas", "1", url=private_nats)
    wrong = workers("file-on-mem", "--executors", "echo", "--storage", "file", url=private_nats)
    code = await asyncio.to_thread(wrong.proc.wait, 30)
    log = wrong.log_path.read_text()
    assert code != 0
    assert "WORKPLEX_TASKS" in log and "storage=file" in log, log
    rid = run_id("memory")
    async with NatsBackend(Registry(), private_nats) as backend:  # default settings: file
        await wait_for_workers(backend, {memory.id, plain.id, replicas.id})
        got = await run_tasks(backend, [Task("echo", {"n": i}, id=f"{rid}:s:{i}") for i in range(20)], rid)
        js = backend.layout.js
        kinds = {
            name: (await js.stream_info(name)).config.storage
            for name in (TASKS_STREAM, RESULTS_STREAM, DEAD_STREAM)
        }
    assert [got[i][0].output for i in range(20)] == [{"n": i} for i in range(20)]
    assert {str(getattr(k, "value", k)) for k in kinds.values()} == {"memory"}
    assert memory.proc.poll() is None and plain.proc.poll() is None
    assert replicas.proc.poll() is None


# ---- 3. no payloads kept beyond their task -------------------------------------------------
async def test_a_dead_letter_keeps_the_task_metadata_not_its_payload(
    nats_url: str, workers: StartWorker
) -> None:
    workers(
        "poisoned", "--executors", "python", "--ack-wait", "1", "--max-deliver", "1",
    )
    rid = run_id("dead-meta")
    secret = f"s3cr3t-{rid}"
    async with NatsBackend(Registry(), nats_url) as backend:
        await wait_for_workers(backend, {"poisoned"})
        got = await run_tasks(backend, [py_task(rid, 0, "die_holding", secret=secret)], rid)
        dead = await backend.layout.js.get_last_msg(DEAD_STREAM, dead_subject("python"))
    [result] = got[0]
    assert not result.success and result.error is not None
    assert result.error.type == "DeadLetterError"
    assert secret.encode() not in dead.data
    record = json.loads(dead.data)
    assert "payload" not in record and "payload_ref" not in record and "settings" not in record
    assert record["id"] == f"{rid}:s:0"
    assert (record["run_id"], record["stage"], record["index"]) == (rid, "s", 0)
    assert record["type"] == "python" and record["deliveries"] == 1
    assert dead.headers is not None and dead.headers["Workplex-Deliveries"] == "1"


async def test_payload_and_result_objects_are_deleted_once_the_result_arrived(
    nats_url: str, workers: StartWorker
) -> None:
    workers("blobs", "--executors", "echo")
    rid = run_id("blobs")
    async with NatsBackend(Registry(), nats_url) as backend:
        big = "x" * (backend.layout.max_payload + 10_000)
        tid = f"{rid}:s:0"
        await wait_for_workers(backend, {"blobs"})
        got = await run_tasks(backend, [Task("echo", {"data": big}, id=tid)], rid)
        store = backend.layout.payloads
        js = backend.layout.js
        leftovers = {}
        for name in (f"payload/{tid}", f"result/{tid}"):
            # Each was written (a tombstone records it) and its chunks are purged.
            info = await store.get_info(name, show_deleted=True)
            chunk_subject = f"$O.{PAYLOAD_BUCKET}.C.{info.nuid}"
            chunks = await js.stream_info(f"OBJ_{PAYLOAD_BUCKET}", subjects_filter=chunk_subject)
            leftovers[name] = (info.deleted, (chunks.state.subjects or {}).get(chunk_subject, 0))
            with pytest.raises(nats.js.errors.ObjectNotFoundError):
                await store.get(name)
    [result] = got[0]
    assert result.success and result.output == {"data": big}
    assert leftovers == {f"payload/{tid}": (True, 0), f"result/{tid}": (True, 0)}


# ---- 4. final failures are terminated ------------------------------------------------------
async def test_a_permanent_failure_is_terminated_and_successes_acked(
    nats_url: str, workers: StartWorker, tmp_path: Path
) -> None:
    workers("terminator", "--executors", "python")
    rid = run_id("term")
    subject = f"$JS.EVENT.ADVISORY.CONSUMER.MSG_TERMINATED.{TASKS_STREAM}.{durable_name('python')}"
    advisories: list[dict[str, Any]] = []
    nc = await nats.connect(nats_url)
    try:

        async def on_advisory(msg: Any) -> None:
            advisories.append(json.loads(msg.data))

        await nc.subscribe(subject, cb=on_advisory)
        await nc.flush()
        tasks = [
            py_task(rid, 0, "fail_once", marker=str(tmp_path / "marker")),
            py_task(rid, 1, "slow", i=1, seconds=0),
            py_task(rid, 2, "slow", i=2, seconds=0),
        ]
        async with NatsBackend(Registry(), nats_url) as backend:
            await wait_for_workers(backend, {"terminator"})
            got = await run_tasks(backend, tasks, rid)

            async def settled() -> bool:
                return bool(advisories) and await _idle(backend, "python")

            await until(settled, 10, "a terminated advisory and no task awaiting its ack")
            await nc.flush()
    finally:
        await nc.close()
    [failed] = got[0]
    assert not failed.success and failed.error is not None and not failed.error.retryable
    assert all(got[i][0].success for i in (1, 2))
    assert len(advisories) == 1, advisories  # the failure only
    assert advisories[0]["deliveries"] == 1


# ---- 5. in-progress acks and `workplex workers` --------------------------------------------
async def test_a_task_longer_than_the_ack_wait_is_delivered_and_run_once(
    nats_url: str, workers: StartWorker, tmp_path: Path
) -> None:
    w = workers("patient", "--executors", "python", "--ack-wait", "1", "--concurrency", "2")
    record = tmp_path / "executions.txt"
    rid = run_id("long")
    async with NatsBackend(Registry(), nats_url) as backend:
        await wait_for_workers(backend, {w.id})
        await until(lambda: _idle(backend, "python"), 10, "the python consumer to be idle")
        before = (await consumer_info(backend, "python")).delivered.consumer_seq
        got = await run_tasks(
            backend, [py_task(rid, 0, "slow", i=3, seconds=3.0, record=str(record))], rid
        )
        await until(lambda: _idle(backend, "python"), 10, "the python consumer to be idle")
        after = (await consumer_info(backend, "python")).delivered.consumer_seq
    [result] = got[0]
    assert result.success and result.output == 3
    assert (result.metadata or {}).get("deliveries") == 1
    assert after - before == 1  # one delivery in three ack waits: never redelivered
    assert executions(record) == Counter({3: 1})


async def test_workers_cli_lists_live_workers_with_their_executors_and_schemas(
    nats_url: str, workers: StartWorker
) -> None:
    a = workers("cli-a", "--executors", "echo", "--concurrency", "3")
    b = workers("cli-b", "--executors", "python,echo", "--concurrency", "5")
    async with NatsBackend(Registry(), nats_url) as backend:
        await wait_for_workers(backend, {a.id, b.id})
    listed, table = await asyncio.gather(
        asyncio.to_thread(workers_cli, nats_url, "--json"), asyncio.to_thread(workers_cli, nats_url)
    )
    assert listed.returncode == 0, listed.stdout + listed.stderr
    found = {w["id"]: w for w in json.loads(listed.stdout)}
    registry = Registry()
    assert set(found[a.id]["executors"]) == {"echo"}
    assert set(found[b.id]["executors"]) == {"python", "echo"}
    assert (found[a.id]["concurrency"], found[b.id]["concurrency"]) == (3, 5)
    for w in (found[a.id], found[b.id]):
        assert w["host"] == socket.gethostname()
        for name, ad in w["executors"].items():
            info = registry.info(name)
            assert ad["input_schema"] == info.input_schema
            assert ad["security"] == info.security.value
    assert table.returncode == 0, table.stderr
    assert "cli-a" in table.stdout and "cli-b" in table.stdout
    assert "python (" in table.stdout


async def test_a_worker_offering_many_executors_still_runs_concurrency_tasks_at_once(
    nats_url: str, workers: StartWorker, tmp_path: Path
) -> None:
    # Idle consumers of the other types probe for work without holding slots, so all four
    # slots serve the busy type.
    worker = workers("many", "--executors", "python,echo,file,command", "--concurrency", "4")
    rid = run_id("many")
    folder = tmp_path / "gate"
    folder.mkdir()
    async with NatsBackend(Registry(), nats_url) as backend:
        await wait_for_workers(backend, {worker.id})
        tasks = [py_task(rid, i, "gate", i=i, folder=str(folder), want=4) for i in range(8)]
        got = await run_tasks(backend, tasks, rid)
    most = [got[i][0].output for i in range(8)]
    assert all(r[0].success for r in got.values())
    assert max(most) == 4  # reached the limit, never beyond it
