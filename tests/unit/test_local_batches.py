"""Batched scatter on the local backend: overlays around batch calls, output counts, and
concurrency of items when the executor has no batch support."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, ClassVar

import pytest
from pydantic import BaseModel, RootModel

from workplex.backends.local import LocalBackend
from workplex.config import parse_config
from workplex.errors import RetryableError
from workplex.executor import Capabilities, Context, Executor, Result, SecurityLevel, Task
from workplex.registry import Registry


class Num(BaseModel):
    n: int


class BatchBase(Executor):
    security = SecurityLevel.SAFE
    capabilities = Capabilities(batch=True)
    Input = Num
    Output = RootModel[int]

    async def execute(self, input: Num, ctx: Context) -> Any:
        raise AssertionError("a batch-capable executor is called per batch, not per item")


class Hanging(BatchBase):
    """A batch that never finishes on its own."""

    name = "hanging_batch"
    started: ClassVar[asyncio.Event | None] = None

    async def execute_batch(self, inputs: list[Any], ctxs: list[Context]) -> list[Any]:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")


class FlakyBatch(BatchBase):
    """Fails its first batch call with a retryable error; records each call's attempts."""

    name = "flaky_batch"
    seen: ClassVar[list[list[int]]] = []

    async def execute_batch(self, inputs: list[Any], ctxs: list[Context]) -> list[Any]:
        FlakyBatch.seen.append([c.attempt for c in ctxs])
        if len(FlakyBatch.seen) == 1:
            raise RetryableError("batch service busy")
        return [i.n * 10 for i in inputs]


class ShortBatch(BatchBase):
    """Returns one output fewer than it was given items."""

    name = "short_batch"

    async def execute_batch(self, inputs: list[Any], ctxs: list[Context]) -> list[Any]:
        return [i.n for i in inputs][:-1]


class LongBatch(BatchBase):
    """Returns one output more than it was given items."""

    name = "long_batch"

    async def execute_batch(self, inputs: list[Any], ctxs: list[Context]) -> list[Any]:
        return [i.n for i in inputs] + [-1]


class Gate(Executor):
    """No batch support. Each call waits until ``target`` calls are in flight at once (or a
    safety limit passes), and the highest number in flight is recorded."""

    name = "gate"
    security = SecurityLevel.SAFE
    Input = Num
    Output = RootModel[int]
    target: ClassVar[int] = 2
    active: ClassVar[int] = 0
    peak: ClassVar[int] = 0
    opened: ClassVar[asyncio.Event | None] = None

    async def execute(self, input: Num, ctx: Context) -> Any:
        assert Gate.opened is not None
        Gate.active += 1
        Gate.peak = max(Gate.peak, Gate.active)
        try:
            if Gate.active >= Gate.target:
                Gate.opened.set()
            # The safety limit only bounds a failing run (items dispatched one by one
            # would otherwise wait forever); success never depends on it.
            try:
                await asyncio.wait_for(Gate.opened.wait(), 3)
            except TimeoutError:
                pass
        finally:
            Gate.active -= 1
        return input.n


def make_registry(*classes: type[Executor]) -> Registry:
    registry = Registry(parse_config({}, source="test.yaml"))
    for cls in classes:
        registry.register(cls)
    return registry


async def run(
    registry: Registry,
    executor: str,
    items: list[int],
    *,
    batch_size: int,
    limit: int = 32,
    settings: dict[str, Any] | None = None,
) -> list[Result]:
    results: dict[int, Result] = {}
    on_result: Callable[[int, Result], None] = results.__setitem__
    await LocalBackend(registry).execute(
        [Task(executor, {"n": n}) for n in items],
        run_id="r-1",
        stage="each",
        limit=limit,
        on_result=on_result,
        settings=settings,
        batch_size=batch_size,
    )
    assert sorted(results) == list(range(len(items))), "every item gets exactly one result"
    return [results[i] for i in range(len(items))]


async def test_given_a_stage_timeout_when_a_batch_runs_past_it_then_its_items_fail_with_a_timeout() -> None:
    async with make_registry(Hanging) as registry:
        results = await run(
            registry, "hanging_batch", [1, 2, 3], batch_size=3, settings={"timeout": "100ms"}
        )
    for result in results:
        assert not result.success and result.error is not None
        assert result.error.type == "TaskTimeoutError", result.error
        assert "timed out" in result.error.message


async def test_given_retry_when_a_batch_fails_once_then_it_is_retried_and_every_item_succeeds() -> None:
    FlakyBatch.seen = []
    async with make_registry(FlakyBatch) as registry:
        results = await run(
            registry,
            "flaky_batch",
            [1, 2, 3],
            batch_size=3,
            settings={"retry": {"max_attempts": 3, "initial_delay": 0}},
        )
    assert [r.output for r in results] == [10, 20, 30]
    assert FlakyBatch.seen == [[1, 1, 1], [2, 2, 2]]  # each item's ctx follows the attempt
    assert all(r.metrics is not None and r.metrics.attempts == 2 for r in results)


async def test_given_an_executor_returning_too_few_outputs_then_the_items_without_one_fail() -> None:
    async with make_registry(ShortBatch) as registry:
        results = await run(registry, "short_batch", [4, 5, 6], batch_size=3)
    assert [r.output for r in results[:2]] == [4, 5]
    assert results[0].success and results[1].success
    last = results[2]
    assert not last.success and last.error is not None
    assert last.error.message == "executor 'short_batch' returned 2 outputs for 3 items"


async def test_given_an_executor_returning_too_many_outputs_then_every_item_fails() -> None:
    async with make_registry(LongBatch) as registry:
        results = await run(registry, "long_batch", [4, 5], batch_size=2)
    for result in results:
        assert not result.success and result.error is not None
        assert result.error.message == "executor 'long_batch' returned 3 outputs for 2 items"


async def test_given_an_invalid_item_in_a_batch_then_only_that_item_fails() -> None:
    FlakyBatch.seen = [[0]]  # past the failing first call
    async with make_registry(FlakyBatch) as registry:
        results: dict[int, Result] = {}
        tasks = [Task("flaky_batch", {"n": 1}), Task("flaky_batch", {"n": "x"})]
        await LocalBackend(registry).execute(
            tasks, run_id="r", stage="s", limit=1, on_result=results.__setitem__, batch_size=2
        )
    assert results[0].output == 10
    assert results[1].error is not None and results[1].error.type == "ValidationError"
    assert FlakyBatch.seen[1:] == [[1]]  # the batch call got the valid item only


@pytest.mark.parametrize(("items", "batch_size", "limit"), [(2, 2, 32), (6, 3, 2)])
async def test_given_batch_size_on_an_executor_without_batches_then_items_run_concurrently(
    items: int, batch_size: int, limit: int
) -> None:
    Gate.target, Gate.active, Gate.peak = min(items, limit), 0, 0
    Gate.opened = asyncio.Event()
    async with make_registry(Gate) as registry:
        results = await run(registry, "gate", list(range(items)), batch_size=batch_size, limit=limit)
    assert [r.output for r in results] == list(range(items))
    assert Gate.peak == min(items, limit)  # all of a batch at once, never past the limit
