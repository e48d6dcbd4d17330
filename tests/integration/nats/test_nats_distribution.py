"""The nats backend and ``workplex worker`` against a real nats-server with JetStream."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from workplex.backends.jetstream import DEAD_STREAM, dead_subject
from workplex.backends.nats import NatsBackend
from workplex.config import parse_config
from workplex.errors import BackendError, ValidationError
from workplex.executor import Result, Task
from workplex.registry import Registry

from .conftest import WorkerProcess

StartWorker = Callable[..., WorkerProcess]
_runs = iter(range(1_000_000))


def run_id(name: str) -> str:
    return f"{name}-{next(_runs)}-{id(object()):x}"


async def wait_for_workers(backend: NatsBackend, ids: set[str], timeout: float = 20) -> None:
    """Poll the KV bucket until every worker in ``ids`` is live."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        live = {w["id"] for w in await backend.workers()}
        if ids <= live:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"workers {ids - live} did not appear in the KV bucket")


async def run_tasks(
    backend: NatsBackend,
    tasks: list[Task],
    rid: str,
    *,
    limit: int = 1000,
    on_each: Callable[[int, Result], None] | None = None,
) -> dict[int, list[Result]]:
    got: dict[int, list[Result]] = {}

    def on_result(index: int, result: Result) -> None:
        got.setdefault(index, []).append(result)
        if on_each is not None:
            on_each(index, result)

    await asyncio.wait_for(
        backend.execute(tasks, run_id=rid, stage="s", limit=limit, on_result=on_result), 90
    )
    return got


def py_task(rid: str, index: int, function: str, **kwargs: Any) -> Task:
    payload = {"function": f"nats_tasks:{function}", "kwargs": kwargs}
    return Task("python", payload, id=f"{rid}:s:{index}")


async def test_http_tasks_land_on_the_only_worker_with_http(
    nats_url: str, workers: StartWorker, tmp_path: Path, http_server: str
) -> None:
    cfg = tmp_path / "http-worker.yaml"
    cfg.write_text("executors:\n  http:\n    allow_private_networks: true\n")
    plain = workers("plain", "--executors", "command,echo")
    with_http = workers("with-http", "--executors", "command,http", config=cfg)
    rid = run_id("route")
    tasks = [Task("http", {"method": "GET", "url": f"{http_server}/{i}"}, id=f"{rid}:s:{i}") for i in range(12)]
    tasks += [
        Task("command", {"command": "echo", "args": [str(i)]}, id=f"{rid}:s:{12 + i}")
        for i in range(12)
    ]
    async with NatsBackend(Registry(), nats_url) as backend:
        await wait_for_workers(backend, {plain.id, with_http.id})
        await backend.check_executors(["http", "command"])
        got = await run_tasks(backend, tasks, rid)
    assert sorted(got) == list(range(24))
    for i in range(12):
        (result,) = got[i]
        assert result.success, result.error
        assert result.output["body"] == {"path": f"/{i}"}
        assert result.metadata is not None and result.metadata["worker"] == "with-http"
    for i in range(12, 24):
        (result,) = got[i]
        assert result.success and result.exit_code == 0, result.error
        assert result.output["stdout"].strip() == str(i - 12)


async def test_sigkill_mid_scatter_redelivers_and_completes_each_task_once(
    nats_url: str, workers: StartWorker
) -> None:
    args = ("--executors", "python", "--concurrency", "4", "--ack-wait", "2")
    victim = workers("victim", *args)
    survivor = workers("survivor", *args)
    rid = run_id("kill")
    tasks = [py_task(rid, i, "slow", i=i, seconds=0.3) for i in range(40)]
    killed = asyncio.Event()

    def on_each(index: int, result: Result) -> None:
        # Kill the victim right after its first result: it holds other tasks by then.
        if result.metadata and result.metadata.get("worker") == "victim" and not killed.is_set():
            victim.proc.send_signal(signal.SIGKILL)
            killed.set()

    async with NatsBackend(Registry(), nats_url) as backend:
        await wait_for_workers(backend, {victim.id, survivor.id})
        got = await run_tasks(backend, tasks, rid, on_each=on_each)
    assert killed.is_set()
    assert victim.proc.wait(10) == -signal.SIGKILL
    assert sorted(got) == list(range(40))
    assert all(len(results) == 1 for results in got.values())  # recorded exactly once
    assert [r[0].output for r in (got[i] for i in range(40))] == list(range(40))
    redelivered = [r[0] for r in got.values() if r[0].metadata and r[0].metadata["deliveries"] > 1]
    assert redelivered, "no task was redelivered after the kill"
    assert all(r.metadata and r.metadata["worker"] == "survivor" for r in redelivered)


async def test_poison_task_goes_to_the_dead_letter_subject(
    nats_url: str, workers: StartWorker
) -> None:
    args = ("--executors", "python", "--concurrency", "2", "--ack-wait", "1", "--max-deliver", "2")
    done = threading.Event()
    spawned: list[WorkerProcess] = []

    def supervise() -> None:
        # Like a process supervisor: restart the worker each time the poison kills it.
        while not done.is_set():
            if not spawned or spawned[-1].proc.poll() is not None:
                spawned.append(workers(f"phoenix-{len(spawned)}", *args))
            done.wait(0.1)

    supervisor = threading.Thread(target=supervise)
    supervisor.start()
    rid = run_id("poison")
    try:
        async with NatsBackend(Registry(), nats_url) as backend:
            got = await run_tasks(
                backend, [py_task(rid, 0, "die"), py_task(rid, 1, "slow", i=1, seconds=0)], rid
            )
            dead = await backend.layout.js.get_last_msg(DEAD_STREAM, dead_subject("python"))
    finally:
        done.set()
        supervisor.join()
    (poison,) = got[0]
    assert not poison.success and poison.error is not None
    assert poison.error.type == "DeadLetterError"
    assert poison.error.message == "delivered 2 times without an acknowledgement (worker died?)"
    (fine,) = got[1]
    assert fine.success and fine.output == 1
    assert json.loads(dead.data)["id"] == f"{rid}:s:0"
    assert len(spawned) >= 3  # the poison killed two workers


async def test_schema_of_an_executor_only_workers_have(
    nats_url: str, workers: StartWorker
) -> None:
    controller = Registry(parse_config({"executors": {"python": {"enabled": False}}}))
    assert "python" not in controller
    worker = workers("schemas", "--executors", "python,echo")
    rid = run_id("schema")
    async with NatsBackend(controller, nats_url) as backend:
        await wait_for_workers(backend, {worker.id})
        check = backend.validator("python")
        assert check is not None
        with pytest.raises(ValidationError) as info:
            check({"args": "not-a-list"})
        paths = {path for path, _ in info.value.errors}
        assert paths == {"(payload)", "args"}  # missing `function`, wrong `args`
        assert "function" in str(info.value)
        check({"function": "nats_tasks:slow", "args": [1]})
        # A bad task is refused before it is queued; a good one runs on the worker.
        got = await run_tasks(
            backend,
            [Task("python", {"args": 3}, id=f"{rid}:s:0"), py_task(rid, 1, "slow", i=7, seconds=0)],
            rid,
        )
        (bad,) = got[0]
        assert not bad.success and bad.error is not None and bad.error.type == "ValidationError"
        assert bad.metadata is None  # never reached a worker
        (good,) = got[1]
        assert good.success and good.output == 7
        with pytest.raises(BackendError) as refused:
            await backend.check_executors(["sql", "python"])
        message = str(refused.value)
        assert "'sql'" in message and re.search(r"python \([^)]*\bschemas\b", message)


async def test_graceful_shutdown_loses_nothing(
    nats_url: str, workers: StartWorker, tmp_path: Path
) -> None:
    record = tmp_path / "executions.txt"
    leaving = workers("leaving", "--executors", "python", "--concurrency", "3", "--grace", "20")
    rid = run_id("graceful")
    tasks = [py_task(rid, i, "slow", i=i, seconds=0.3, record=str(record)) for i in range(30)]
    stopped = asyncio.Event()
    staying: list[WorkerProcess] = []

    def on_each(index: int, result: Result) -> None:
        if not stopped.is_set():
            stopped.set()
            leaving.proc.send_signal(signal.SIGTERM)
            staying.append(workers("staying", "--executors", "python", "--concurrency", "3"))

    async with NatsBackend(Registry(), nats_url) as backend:
        await wait_for_workers(backend, {leaving.id})
        got = await run_tasks(backend, tasks, rid, on_each=on_each)
        assert await asyncio.to_thread(leaving.proc.wait, 30) == 0
        live = {w["id"] for w in await backend.workers()}
    assert "leaving" not in live  # removed itself from the bucket
    assert sorted(got) == list(range(30))
    assert all(len(r) == 1 and r[0].success for r in got.values())
    executed = sorted(int(x) for x in record.read_text().split())
    assert executed == list(range(30))  # nothing lost, nothing run twice
    by_worker = {r[0].metadata["worker"] for r in got.values() if r[0].metadata}
    assert by_worker == {"leaving", "staying"}


async def test_a_retryable_failure_is_handed_back_and_redelivered(
    nats_url: str, workers: StartWorker, tmp_path: Path
) -> None:
    workers("redeliver", "--executors", "python", "--nak-delay", "0.2")
    rid = run_id("redeliver")
    marker = tmp_path / "busy-once"
    task = py_task(rid, 0, "fail_once_retryable", marker=str(marker))
    registry = Registry()
    async with NatsBackend(registry, nats_url) as backend:
        await wait_for_workers(backend, {"redeliver"})
        got = await run_tasks(backend, [task], rid)
    [result] = got[0]
    assert result.success, result.error
    assert result.output == "ok"
    assert marker.exists()
    assert (result.metadata or {}).get("deliveries") == 2


async def test_payloads_and_results_above_the_message_limit_travel_through_the_object_store(
    nats_url: str, workers: StartWorker
) -> None:
    workers("big", "--executors", "echo")
    rid = run_id("big")
    registry = Registry()
    async with NatsBackend(registry, nats_url) as backend:
        limit = backend.layout.max_payload
        big = "x" * (limit + 100_000)  # cannot fit in one message, either way
        task = Task("echo", {"data": big, "n": 7}, id=f"{rid}:s:0")
        await wait_for_workers(backend, {"big"})
        got = await run_tasks(backend, [task], rid)
    [result] = got[0]
    assert result.success, result.error
    assert result.output == {"data": big, "n": 7}
