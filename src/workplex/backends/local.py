"""The embedded backend: tasks run on this process's event loop.

A bounded pool of worker coroutines pulls (index, task) pairs from one shared iterator, so
a 100,000-item scatter creates ``limit`` coroutines, not 100,000 asyncio Tasks.

With ``batch_size`` > 1 and an executor that supports batches, each worker hands the
executor a batch at a time, as one call through the executor's overlays (timeout, retry,
...) with the stage's settings; an executor without batch support ignores ``batch_size``.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError as PydanticValidationError

from workplex.backends import Backend, OnResult
from workplex.errors import PermanentError, ValidationError, WorkplexError
from workplex.executor import Context, Result, Task
from workplex.registry import Call, Prepared, failed_result, ok_result

if TYPE_CHECKING:
    from workplex.engine import Engine
    from workplex.registry import Registry


class LocalBackend(Backend):
    name = "local"

    def __init__(self, registry: Registry, engine: Engine | None = None) -> None:
        super().__init__(registry)
        self.engine = engine
        """The Engine whose runs this backend executes (given to tasks as ``ctx.engine``)."""
        self._batch_calls: dict[tuple[str, Any], Call] = {}

    async def execute(
        self,
        tasks: Iterable[Task],
        *,
        run_id: str,
        stage: str,
        limit: int,
        on_result: OnResult,
        settings: Mapping[str, Any] | None = None,
        batch_size: int = 1,
    ) -> None:
        registry = self.registry
        secrets = registry.secrets
        engine = self.engine
        # Chains are cached per (executor, key): the key must be stable across runs.
        key = (stage, json.dumps(settings, sort_keys=True, default=str)) if settings else None
        prepared: dict[str, Prepared | BaseException] = {}

        def prepare(type_: str) -> Prepared | BaseException:
            found = prepared.get(type_)
            if found is None:
                try:
                    found = registry.prepare(type_, settings, key)
                except ValidationError as exc:
                    found = exc  # unknown or refused: every task of that type fails with it
                prepared[type_] = found
            return found

        items: Iterator[tuple[int, Task]] = enumerate(tasks)
        time_ = time.time
        perf = time.perf_counter

        async def run_one(index: int, task: Task) -> None:
            p = prepare(task.type)
            if isinstance(p, BaseException):
                on_result(index, Result.failure(p, task_id=task.id))
                return
            try:
                model = p.validate(task.payload)
            except PydanticValidationError as exc:
                on_result(index, p.invalid(exc, task.id))
                return
            if not p.started:
                try:
                    await p.start()
                except WorkplexError as exc:
                    on_result(index, Result.failure(exc, task_id=task.id))
                    return
            ctx = Context(task.id, run_id, stage, 1, None, p.config, secrets, task.metadata, engine)
            start = time_()
            t0 = perf()
            try:
                out = await p.call(model, ctx)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                on_result(index, failed_result(exc, start, t0, ctx, task.id))
                return
            on_result(index, ok_result(p.executor, out, start, t0, ctx, task.id))

        async def worker() -> None:
            for done, (index, task) in enumerate(items, 1):
                await run_one(index, task)
                if not done & 255:
                    # Work that never suspends (echo) would otherwise starve the loop:
                    # progress, lease renewal, store flushes and Ctrl-C all need a turn.
                    await asyncio.sleep(0)

        async def batch_worker() -> None:
            while True:
                chunk = [pair for _, pair in zip(range(batch_size), items, strict=False)]
                if not chunk:
                    return
                await self._run_batch(chunk, run_id, stage, settings, key, prepare, on_result, run_one)

        if batch_size > 1:
            # Batches only mean something to an executor that supports them: for any other,
            # the items go through the plain pool, all of them concurrently within `limit`.
            first = next(items, None)
            if first is None:
                return
            items = itertools.chain((first,), items)
            p = prepare(first[1].type)
            if isinstance(p, BaseException) or not p.executor.capabilities.batch:
                batch_size = 1
        if limit <= 1:
            await (batch_worker() if batch_size > 1 else worker())
            return
        make = batch_worker if batch_size > 1 else worker
        workers = [asyncio.ensure_future(make()) for _ in range(limit)]
        try:
            await asyncio.gather(*workers)
        finally:
            for w in workers:
                if not w.done():
                    w.cancel()
            # Wait for cancelled workers so their cleanup (killing processes) has run.
            await asyncio.gather(*workers, return_exceptions=True)

    def _batch_call(
        self, p: Prepared, settings: Mapping[str, Any] | None, key: Any
    ) -> Call:
        """The batch call of ``p``'s executor wrapped in its overlays (built once per key)."""
        found = self._batch_calls.get((p.name, key))
        if found is not None:
            return found
        executor = p.executor

        async def execute_batch(batch: _Batch, ctx: Context) -> Any:
            # Each item's ctx follows the batch's attempt and deadline (set by retry).
            for item_ctx in batch.ctxs:
                item_ctx.attempt = ctx.attempt
                item_ctx.deadline = ctx.deadline
            return await executor.execute_batch(batch.models, batch.ctxs)

        call: Call = execute_batch
        registry = self.registry
        if registry.overlays is not None:
            merged = dict(registry.config.overlays.get(p.name) or {})
            merged.update(settings or {})
            call = registry.overlays.build(p.name, call, merged)
        self._batch_calls[(p.name, key)] = call
        return call

    async def _run_batch(
        self,
        chunk: list[tuple[int, Task]],
        run_id: str,
        stage: str,
        settings: Mapping[str, Any] | None,
        key: Any,
        prepare: Callable[[str], Prepared | BaseException],
        on_result: OnResult,
        one: Callable[[int, Task], Awaitable[None]],
    ) -> None:
        """Hand a batch to the executor as one call through its overlays.

        The whole batch is one call to the chain: one timeout per attempt, retried as a
        whole. Items of another executor (or one without batches) run one by one, concurrently.
        """
        type_ = chunk[0][1].type
        p = prepare(type_)
        if isinstance(p, BaseException) or not p.executor.capabilities.batch:
            await asyncio.gather(*(one(index, task) for index, task in chunk))
            return
        others = [(index, task) for index, task in chunk if task.type != type_]
        if others:
            await asyncio.gather(*(one(index, task) for index, task in others))
        secrets = self.registry.secrets
        engine = self.engine
        models: list[Any] = []
        ctxs: list[Context] = []
        good: list[tuple[int, Task]] = []
        for index, task in chunk:
            if task.type != type_:
                continue
            try:
                models.append(p.validate(task.payload))
            except PydanticValidationError as exc:
                on_result(index, p.invalid(exc, task.id))
                continue
            good.append((index, task))
            ctxs.append(
                Context(task.id, run_id, stage, 1, None, p.config, secrets, task.metadata, engine)
            )
        if not good:
            return
        if not p.started:
            try:
                await p.start()
            except WorkplexError as exc:
                for index, task in good:
                    on_result(index, Result.failure(exc, task_id=task.id))
                return
        ids = [task.id for _, task in good]
        batch_id = ids[0] if len(ids) == 1 else f"{ids[0]}..{ids[-1]}"
        ctx = Context(
            batch_id, run_id, stage, 1, None, p.config, secrets, {"batch": ids}, engine
        )
        call = self._batch_call(p, settings, key)
        start = time.time()
        t0 = time.perf_counter()
        try:
            outputs = await call(_Batch(models, ctxs), ctx)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            for (index, task), item_ctx in zip(good, ctxs, strict=True):
                on_result(index, failed_result(exc, start, t0, item_ctx, task.id))
            return
        expected = len(good)
        if not isinstance(outputs, list):
            problem: Exception | None = PermanentError(
                f"executor {p.name!r} returned {type(outputs).__name__} from execute_batch, "
                f"not a list of {expected} outputs"
            )
            outputs = []
        elif len(outputs) != expected:
            problem = PermanentError(
                f"executor {p.name!r} returned {len(outputs)} outputs for {expected} items"
            )
            if len(outputs) > expected:
                outputs = []  # which output belongs to which item is unknown: none is used
        else:
            problem = None
        executor = p.executor
        for n, ((index, task), item_ctx) in enumerate(zip(good, ctxs, strict=True)):
            if n < len(outputs):
                on_result(index, ok_result(executor, outputs[n], start, t0, item_ctx, task.id))
            else:
                assert problem is not None
                on_result(index, failed_result(problem, start, t0, item_ctx, task.id))


class _Batch:
    """The input of a batch call: the items' validated inputs and their contexts."""

    __slots__ = ("ctxs", "models")

    def __init__(self, models: list[Any], ctxs: list[Context]) -> None:
        self.models = models
        self.ctxs = ctxs
