"""The attempt in ``ctx.logger`` lines, and deadlines under an injected clock."""

from __future__ import annotations

import io
import json
import time
from pathlib import Path

import pytest

from tests.unit.overlays.conftest import MakeRegistry, StepClock
from workplex.executor import Task
from workplex.overlays.logging import configure_logging


@pytest.mark.usefixtures("reset_structlog")
async def test_given_retry_when_the_executor_logs_through_ctx_logger_then_each_line_names_its_attempt(
    make_registry: MakeRegistry, step_clock: StepClock, tmp_path: Path
) -> None:
    stream = io.StringIO()
    configure_logging(json=True, stream=stream)
    registry, _ = make_registry(
        {"python": {"retry": {"max_attempts": 3, "initial_delay": 0}}},
        executors={"python": {"pass_context": True}},
        clock=step_clock,
    )
    counter = tmp_path / "n"
    task = Task(
        "python",
        {
            "function": "tests.unit.overlays.flaky:log_then_fail",
            "kwargs": {"counter": str(counter), "failures": 2},
        },
    )
    async with registry:
        result = await registry.execute(task)
    assert result.success, result.error
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    working = [line for line in lines if line["event"] == "working"]
    assert [line["ctx_attempt"] for line in working] == [1, 2, 3]
    assert [line["attempt"] for line in working] == [1, 2, 3]
    assert {line["task_id"] for line in working} == {task.id}


async def test_given_an_injected_clock_with_a_deadline_and_a_timeout_when_echo_runs_then_it_succeeds(
    make_registry: MakeRegistry,
) -> None:
    # The injected clock reads 0, far from time.monotonic(): a ctx.deadline taken from it
    # would already be past for timeout, which compares with time.monotonic().
    clock = StepClock(now=0.0)
    registry, _ = make_registry(
        {"*": {"retry": {"max_attempts": 2, "deadline": "5s"}, "timeout": "1s"}}, clock=clock
    )
    async with registry:
        result = await registry.execute(Task("echo", {"hello": "world"}))
    assert result.success, result.error
    assert result.output == {"hello": "world"}


async def test_given_an_injected_clock_when_retry_sets_ctx_deadline_then_it_is_in_monotonic_time(
    make_registry: MakeRegistry,
) -> None:
    clock = StepClock(now=0.0)
    registry, _ = make_registry(
        {"python": {"retry": {"max_attempts": 2, "deadline": "5s"}}},
        executors={"python": {"pass_context": True}},
        clock=clock,
    )
    task = Task("python", {"function": "tests.unit.overlays.flaky:time_left"})
    async with registry:
        before = time.monotonic()
        result = await registry.execute(task)
        elapsed = time.monotonic() - before
    assert result.success, result.error
    left = result.output
    assert isinstance(left, float)
    assert 5.0 - elapsed <= left <= 5.0
    assert clock.sleeps == []  # the injected clock was read, never slept on
