"""The embedded backend: tasks run on this process's event loop.

A bounded pool of worker coroutines pulls (index, task) pairs from one shared iterator, so
a 100,000-item scatter creates ``limit`` coroutines, not 100,000 asyncio Tasks.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError as PydanticValidationError

from workplex.backends import Backend, OnResult
from workplex.errors import ValidationError, WorkplexError
from workplex.executor import Context, Result, Task
from workplex.registry import Prepared, failed_result, ok_result, run_call

if TYPE_CHECKING:
    from workplex.engine import Engine
    from workplex.registry import Registry


class LocalBackend(Backend):
    name = "local"

    def __init__(self, registry: Registry, engine: Engine | None = None) -> None:
        super().__init__(registry)
        self.engine = engine
        """The Engine whose runs this backend executes (given to tasks as ``ctx.engine``)."""

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
                await self._run_batch(chunk, run_id, stage, on_result, run_one)

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

    async def _run_batch(
        self,
        chunk: list[tuple[int, Task]],
        run_id: str,
        stage: str,
        on_result: OnResult,
        one: Any,
    ) -> None:
        """Hand a batch to an executor that supports batches, else run it item by item."""
        registry = self.registry
        type_ = chunk[0][1].type
        batches = type_ in registry and registry.executor_class(type_).capabilities.batch
        if not batches or not all(t.type == type_ for _, t in chunk):
            for index, task in chunk:
                await one(index, task)
            return
        executor = await registry.start(type_)
        models: list[Any] = []
        ctxs: list[Context] = []
        good: list[tuple[int, Task]] = []
        for index, task in chunk:
            try:
                models.append(registry.validate(task))
            except Exception:
                await one(index, task)  # reports the validation failure
                continue
            good.append((index, task))
            ctx = registry.context(task, run_id=run_id, stage=stage)
            ctx.engine = self.engine
            ctxs.append(ctx)
        if not good:
            return
        batch_task = Task(type_, {}, id=good[0][1].id)

        async def call(_: Any, __: Context) -> Any:
            return await executor.execute_batch(models, ctxs)

        batch = await run_call(executor, call, None, ctxs[0], batch_task.id)
        if not batch.success or not isinstance(batch.output, list):
            for index, task in good:
                on_result(index, Result(False, None, batch.error, task_id=task.id, metrics=batch.metrics))
            return
        for (index, task), out in zip(good, batch.output, strict=False):
            if hasattr(out, "model_dump"):
                out = out.model_dump(mode="json")
            on_result(index, Result(True, out, None, metrics=batch.metrics, task_id=task.id))
