"""``rate_limited``: one task per item (like scatter), at most ``per_second`` starts per second.

Built only on the public ``StageRun`` API: ``scatter_items``, ``template``, ``render``,
``task`` and ``execute_one``; each task is scheduled with asyncio by the pattern itself.
The clock is a module-level hook (``CLOCK``/``SLEEP``) so tests can drive it.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from pydantic import Field

from workplex.patterns import Pattern, PatternConfig

if TYPE_CHECKING:
    from workplex.engine import StageRun
    from workplex.pipeline import Stage

CLOCK: Callable[[], float] = time.monotonic
"""Seconds, monotonic. Replace in tests (together with ``SLEEP``)."""
SLEEP: Callable[[float], Awaitable[Any]] = asyncio.sleep


class RateLimitedConfig(PatternConfig):
    per_second: int = Field(ge=1, description="At most this many task starts in any second.")
    max_parallel: int = Field(default=8, ge=1, description="Tasks in flight at once.")


class _Window:
    """A sliding one-second window of start times."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.starts: deque[float] = deque()

    async def admit(self) -> None:
        while True:
            now = CLOCK()
            while self.starts and now - self.starts[0] >= 1.0:
                self.starts.popleft()
            if len(self.starts) < self.limit:
                # No await between the check and the append: admission is atomic.
                self.starts.append(now)
                return
            await SLEEP(1.0 - (now - self.starts[0]))


class RateLimited(Pattern):
    name = "rate_limited"
    description = "One task per item (scatter: {input, as}), at most per_second starts per second."
    Config = RateLimitedConfig

    def locals(self, stage: Stage, config: Any) -> set[str]:
        return {stage.scatter.as_} if stage.scatter else set()

    def check(self, stage: Stage, config: Any) -> list[str]:
        if stage.scatter is None:
            return ["mode rate_limited needs a `scatter: {input: $.list, as: item}` section"]
        return []

    async def run(self, run: StageRun) -> Any:
        config: RateLimitedConfig = run.config
        assert run.stage.scatter is not None
        var = run.stage.scatter.as_
        items = run.scatter_items()
        template = run.template("input")
        window = _Window(config.per_second)
        slots = asyncio.Semaphore(config.max_parallel)

        async def one(index: int, item: Any) -> Any:
            async with slots:
                await window.admit()
                payload = run.render(template, {var: item})
                result = await run.execute_one(run.task(run.executor, payload, index), index)
                return result.output

        tasks = [asyncio.ensure_future(one(i, item)) for i, item in enumerate(items)]
        try:
            return await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)


__all__ = ["CLOCK", "SLEEP", "RateLimited", "RateLimitedConfig"]
