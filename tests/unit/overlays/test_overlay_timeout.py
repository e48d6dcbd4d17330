"""timeout: per attempt, and cancellation really stops the work (no process left behind)."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from tests.unit.overlays import flaky
from tests.unit.overlays.conftest import MakeRegistry
from workplex.executor import Task


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"  # a zombie has stopped running
    except FileNotFoundError:
        return False


def _wait_gone(pid: int, within: float = 10.0) -> bool:
    end = time.monotonic() + within
    while time.monotonic() < end:
        if not _alive(pid):
            return True
        time.sleep(0.02)
    return False


async def test_given_a_command_with_a_grandchild_when_it_times_out_then_no_process_is_left(
    make_registry: MakeRegistry, tmp_path: Path
) -> None:
    registry, _ = make_registry({"command": {"timeout": "1s"}})
    pidfile = tmp_path / "grandchild.pid"
    task = Task(
        "command", {"command": sys.executable, "args": ["-c", flaky.GRANDCHILD_SCRIPT, str(pidfile)]}
    )
    async with registry:
        result = await registry.execute(task)
    assert not result.success and result.error is not None
    assert result.error.type == "TaskTimeoutError"
    assert "timed out after 1s" in result.error.message
    pid = int(pidfile.read_text())
    assert pid != os.getpid()
    assert _wait_gone(pid), f"grandchild {pid} still running after the timeout"


async def test_given_retry_and_timeout_when_every_attempt_is_slow_then_each_attempt_times_out(
    make_registry: MakeRegistry,
) -> None:
    registry, _ = make_registry(
        {"python": {"retry": {"max_attempts": 3, "initial_delay": 0}, "timeout": "50ms"}}
    )
    task = Task("python", {"function": "tests.unit.overlays.flaky:slow", "kwargs": {"seconds": 30}})
    async with registry:
        result = await registry.execute(task)
    assert not result.success and result.error is not None
    assert result.error.type == "TaskTimeoutError"
    assert "attempt 3 timed out" in result.error.message
    assert result.metrics is not None and result.metrics.attempts == 3


async def test_given_a_timeout_when_the_work_is_fast_then_the_output_comes_back(
    make_registry: MakeRegistry,
) -> None:
    registry, _ = make_registry({"python": {"timeout": 30}})
    task = Task("python", {"function": "tests.unit.overlays.flaky:slow", "kwargs": {"seconds": 0}})
    async with registry:
        result = await registry.execute(task)
    assert result.success and result.output == "finished"


async def test_given_many_attempts_under_one_timeout_when_some_are_slow_then_only_those_time_out(
    make_registry: MakeRegistry,
) -> None:
    import asyncio

    registry, _ = make_registry({"python": {"timeout": "100ms"}})

    def task(seconds: float) -> Task:
        return Task(
            "python", {"function": "tests.unit.overlays.flaky:slow", "kwargs": {"seconds": seconds}}
        )

    async with registry:
        results = await asyncio.gather(*(registry.execute(task(s)) for s in [0, 30, 0, 30, 0.01]))
    outcomes = [r.error.type if r.error else r.output for r in results]
    assert outcomes == ["finished", "TaskTimeoutError", "finished", "TaskTimeoutError", "finished"]


async def test_given_a_retry_deadline_shorter_than_the_timeout_when_slow_then_the_deadline_cuts_it(
    make_registry: MakeRegistry,
) -> None:
    registry, _ = make_registry(
        {"python": {"retry": {"max_attempts": 5, "deadline": "200ms"}, "timeout": "30s"}}
    )
    task = Task("python", {"function": "tests.unit.overlays.flaky:slow", "kwargs": {"seconds": 30}})
    async with registry:
        result = await registry.execute(task)
    assert result.error is not None and result.error.type == "TaskTimeoutError"
    assert result.metrics is not None and result.metrics.attempts == 1
