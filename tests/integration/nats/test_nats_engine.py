"""The Engine driving the nats backend: routing by capability, shared results feeds, and a
controller killed mid-run then resumed with ``workplex resume --backend``."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import subprocess
import sys
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pytest

from workplex.backends import OnResult
from workplex.backends.nats import NatsBackend
from workplex.engine import Engine
from workplex.executor import Result, Task
from workplex.registry import Registry
from workplex.store import Store

from .conftest import WorkerProcess, wait_until
from .test_nats_distribution import py_task, run_id, run_tasks, wait_for_workers

StartWorker = Callable[..., WorkerProcess]
HERE = Path(__file__).parent


def slow_scatter(path: Path, name: str, seconds: float, record: Path) -> Path:
    """A pipeline file: a scatter of ``nats_tasks:slow`` over ``$.trigger.items``."""
    path.write_text(
        f"""
name: {name}
inputs:
  items: {{type: array}}
stages:
  - name: work
    mode: scatter
    executor: python
    scatter: {{input: $.trigger.items, as: i}}
    input:
      function: nats_tasks:slow
      kwargs: {{i: $.i, seconds: {seconds}, record: {json.dumps(str(record))}}}
    config: {{max_parallel: 40}}
"""
    )
    return path


class SpyingBackend(NatsBackend):
    """The real nats backend, keeping which worker produced each task's result."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.ran_on: dict[str, str] = {}

    async def execute(
        self, tasks: Iterable[Task], *, on_result: OnResult, **kwargs: Any
    ) -> None:
        def spy(index: int, result: Result) -> None:
            self.ran_on[result.task_id] = str((result.metadata or {}).get("worker"))
            on_result(index, result)

        await super().execute(tasks, on_result=spy, **kwargs)


async def test_engine_pipeline_with_command_and_http_stages_routes_http_to_its_worker(
    nats_url: str, workers: StartWorker, tmp_path: Path, http_server: str
) -> None:
    cfg = tmp_path / "http-worker.yaml"
    cfg.write_text("executors:\n  http:\n    allow_private_networks: true\n")
    plain = workers("engine-plain", "--executors", "command")
    with_http = workers("engine-http", "--executors", "command,http", config=cfg)
    pipeline = tmp_path / "mixed.yaml"
    pipeline.write_text(
        """
name: nats-mixed
inputs:
  urls: {type: array}
  words: {type: array}
stages:
  - name: fetch
    mode: scatter
    executor: http
    scatter: {input: $.trigger.urls, as: u}
    input: {method: GET, url: $.u}
  - name: shout
    mode: scatter
    executor: command
    scatter: {input: $.trigger.words, as: w}
    input: {command: tr, args: [a-z, A-Z], stdin: $.w}
"""
    )
    urls = [f"{http_server}/item/{i}" for i in range(10)]
    words = [f"word{i}" for i in range(10)]
    registry = Registry()
    backend = SpyingBackend(registry, nats_url)
    async with registry, Engine(registry, backend=backend) as engine:
        await wait_for_workers(backend, {plain.id, with_http.id})
        result = await engine.run(engine.load(pipeline), {"urls": urls, "words": words})
    data = result.to_dict()
    assert data["status"] == "succeeded", data
    fetched = data["stages"]["fetch"]["output"]
    assert [item["body"] for item in fetched] == [{"path": f"/item/{i}"} for i in range(10)]
    shouted = data["stages"]["shout"]["output"]
    assert [item["stdout"].strip() for item in shouted] == [w.upper() for w in words]
    rid = data["run_id"]
    http_ran = {backend.ran_on[f"{rid}:fetch:{i}"] for i in range(10)}
    assert http_ran == {with_http.id}
    command_ran = {backend.ran_on[f"{rid}:shout:{i}"] for i in range(10)}
    assert command_ran <= {plain.id, with_http.id}


async def test_many_single_task_executes_share_one_results_feed(
    nats_url: str, workers: StartWorker
) -> None:
    w = workers("single", "--executors", "echo", "--concurrency", "4")
    rid = run_id("single")
    async with NatsBackend(Registry(), nats_url) as backend:
        await wait_for_workers(backend, {w.id})
        for i in range(40):
            got = await run_tasks(backend, [Task("echo", {"i": i}, id=f"{rid}:s:{i}")], rid)
            assert [r.output for r in got[0]] == [{"i": i}]
            # One subscription for the stage, kept between calls (not one replay per call).
            assert len(backend._feeds) == 1
        feed = next(iter(backend._feeds.values()))
        assert feed.users == 0 and not feed.owner
        assert not feed.early  # every result went to the call that waited for it


async def test_a_failed_task_runs_again_when_dispatched_again(
    nats_url: str, workers: StartWorker, tmp_path: Path
) -> None:
    w = workers("again", "--executors", "python")
    rid = run_id("again")
    task = py_task(rid, 0, "fail_once", marker=str(tmp_path / "marker"))
    async with NatsBackend(Registry(), nats_url) as first:
        await wait_for_workers(first, {w.id})
        (failed,) = (await run_tasks(first, [task], rid))[0]
    assert not failed.success and failed.error is not None
    assert "first attempt fails" in failed.error.message
    # A new controller (as after `workplex resume`) replays the stage's results: the old
    # failure is not reused, and the task is not dropped as a duplicate of the first dispatch.
    async with NatsBackend(Registry(), nats_url) as second:
        (ok,) = (await run_tasks(second, [task], rid))[0]
    assert ok.success, ok.error
    assert ok.output == "ok"


def _finished(db: Path) -> set[int]:
    with sqlite3.connect(db) as conn:
        try:
            rows = conn.execute("SELECT idx FROM tasks WHERE stage = 'work'").fetchall()
        except sqlite3.OperationalError:  # tables not created yet
            return set()
    return {int(r[0]) for r in rows}


def test_controller_sigkill_then_resume_on_the_nats_backend(
    nats_url: str, workers: StartWorker, tmp_path: Path
) -> None:
    for k in range(2):
        workers(f"resume-{k}", "--executors", "python", "--concurrency", "4")
    record = tmp_path / "executions.txt"
    record.touch()
    n = 300
    pipeline = slow_scatter(tmp_path / "scatter.yaml", "nats-resume", 0.02, record)
    db = tmp_path / "runs.db"
    store = f"sqlite:///{db}"
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(HERE), env.get("PYTHONPATH", "")])
    cli = [sys.executable, "-m", "workplex.cli"]
    items = json.dumps(list(range(n)))
    log = (tmp_path / "controller.log").open("wb")
    controller = subprocess.Popen(
        [*cli, "run", str(pipeline), "--input", f"items={items}", "--backend", nats_url,
         "--store", store, "--wait-for-workers", "20", "--json"],
        env=env, stdout=log, stderr=subprocess.STDOUT,
    )
    try:
        wait_until(
            lambda: controller.poll() is not None or len(_finished(db)) >= 30,
            60,
            "the controller to record some finished tasks",
        )
        assert controller.poll() is None, "the run ended before it could be killed"
        controller.send_signal(signal.SIGKILL)
        controller.wait(10)
    finally:
        if controller.poll() is None:
            controller.kill()
            controller.wait()
        log.close()
    before = _finished(db)
    assert 30 <= len(before) < n
    with sqlite3.connect(db) as conn:
        (rid,) = conn.execute("SELECT run_id FROM runs").fetchone()
    # No --backend: resume finds the backend the run was started with.
    resumed = subprocess.run(
        [*cli, "resume", rid, "--store", store, "--json"],
        env=env, capture_output=True, text=True, timeout=90,
    )
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    data = json.loads(resumed.stdout)
    assert data["status"] == "succeeded"
    assert data["stages"]["work"]["output"] == list(range(n))
    executed = Counter(int(line) for line in record.read_text().split())
    assert set(executed) == set(range(n))
    again = sorted(i for i in before if executed[i] != 1)
    assert not again, f"tasks finished before the kill ran again: {again}"
    assert _finished(db) == set(range(n))


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["sigkill", "sigterm"])
async def test_engine_scatter_survives_a_worker_stopped_mid_run(
    nats_url: str, workers: StartWorker, tmp_path: Path, sig: signal.Signals
) -> None:
    """A worker killed (SIGKILL) or stopped (SIGTERM) while the Engine drives a scatter:
    the run succeeds, every task is recorded exactly once in the store; after SIGKILL the
    killed worker's tasks are redelivered to the other one, after SIGTERM nothing runs
    twice."""
    args = ("--executors", "python", "--concurrency", "4", "--ack-wait", "2", "--grace", "20")
    victim = workers(f"engine-victim-{sig.name}", *args)
    survivor = workers(f"engine-survivor-{sig.name}", *args)
    record = tmp_path / "executions.txt"
    record.touch()
    n = 40
    pipeline = slow_scatter(tmp_path / "scatter.yaml", "nats-worker-stopped", 0.3, record)
    registry = Registry()
    backend = SpyingBackend(registry, nats_url)
    stopped: list[str] = []
    results_per_task: Counter[str] = Counter()
    deliveries: dict[str, int] = {}
    original = backend.execute

    async def execute(tasks: Iterable[Task], *, on_result: OnResult, **kwargs: Any) -> None:
        def watch(index: int, result: Result) -> None:
            meta = result.metadata or {}
            results_per_task[result.task_id] += 1
            deliveries[result.task_id] = int(meta.get("deliveries", 1))
            # Stop the victim right after its first result: it holds other tasks by then.
            if meta.get("worker") == victim.id and not stopped:
                stopped.append(result.task_id)
                victim.proc.send_signal(sig)
            on_result(index, result)

        await original(tasks, on_result=watch, **kwargs)

    backend.execute = execute  # type: ignore[method-assign]
    store = await Store.open(f"sqlite:///{tmp_path / 'runs.db'}")
    try:
        async with registry, Engine(registry, backend=backend, store=store) as engine:
            await wait_for_workers(backend, {victim.id, survivor.id})
            result = await asyncio.wait_for(
                engine.run(engine.load(pipeline), {"items": list(range(n))}), 90
            )
        data = result.to_dict()
        assert data["status"] == "succeeded", data
        assert data["stages"]["work"]["output"] == list(range(n))
        recorded = await store.finished_tasks(data["run_id"], "work")
    finally:
        await store.close()
    assert stopped, "the victim never produced a result, so it was never stopped"
    code = await asyncio.to_thread(victim.proc.wait, 30)
    assert sorted(recorded) == list(range(n))
    assert all(r.success and r.output == i for i, r in recorded.items())
    assert set(results_per_task.values()) == {1}  # each task reported to the engine once
    executed = Counter(int(x) for x in record.read_text().split())
    assert set(executed) == set(range(n))
    if sig == signal.SIGKILL:
        assert code == -signal.SIGKILL
        redelivered = [tid for tid, d in deliveries.items() if d > 1]
        assert redelivered, "no task was redelivered after the kill"
        assert {backend.ran_on[tid] for tid in redelivered} == {survivor.id}
    else:
        assert code == 0
        assert max(executed.values()) == 1  # a graceful stop runs nothing twice
