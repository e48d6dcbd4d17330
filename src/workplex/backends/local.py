"""The embedded backend: tasks run on this process's event loop.

A bounded pool of worker coroutines pulls (index, task) pairs from one shared iterator, so
a 100,000-item scatter creates ``limit`` coroutines, not 100,000 asyncio Tasks.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from workplex.backends import Backend, OnResult
from workplex.executor import Context, Result, Task
from workplex.registry import Call, run_call


class LocalBackend(Backend):
    name = "local"

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
        calls: dict[str, Call] = {}
        # Chains are cached per (executor, key): the key must be stable across runs.
        key = (stage, json.dumps(settings, sort_keys=True, default=str)) if settings else None

        def call_for(type_: str) -> Call:
            call = calls.get(type_)
            if call is None:
                call = calls[type_] = registry.call_for(type_, settings, key=key)
            return call

        items: Iterator[tuple[int, Task]] = enumerate(tasks)

        async def one(index: int, task: Task) -> None:
            try:
                entry = registry._entry(task.type)
                model = entry.cls.Input.model_validate(task.payload)
            except Exception:
                # Let the registry build the failure Result with the field path.
                on_result(index, await registry.execute(task))
                return
            if not entry.started:
                await registry.start(task.type)
            ctx = Context(task.id, run_id, stage, 1, None, entry.config, secrets, task.metadata)
            on_result(index, await run_call(entry.executor, call_for(task.type), model, ctx, task.id))

        async def worker() -> None:
            for index, task in items:
                await one(index, task)

        async def batch_worker() -> None:
            while True:
                chunk = [pair for _, pair in zip(range(batch_size), items, strict=False)]
                if not chunk:
                    return
                await self._run_batch(chunk, run_id, stage, on_result, one)

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
        entry = registry._entries.get(type_)
        same_type = all(t.type == type_ for _, t in chunk)
        if entry is None or not entry.cls.capabilities.batch or not same_type:
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
            ctxs.append(registry.context(task, run_id=run_id, stage=stage))
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
