"""``timeout``: a time limit per attempt; the attempt is cancelled when it runs out.

Cancellation is asyncio cancellation of the task running the attempt, so the executor's
own cleanup runs (the command executor kills its process group, the HTTP executor closes
its request) before ``TaskTimeoutError`` is raised. The limit is also cut to the time left
before ``ctx.deadline`` (set by ``retry``'s ``deadline`` or by the engine).

One timer handle per attempt (``loop.call_later`` + ``task.cancel``) keeps it cheaper than a
context manager; the semantics are those of ``asyncio.timeout``.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from pydantic import Field

from workplex.errors import TaskTimeoutError
from workplex.executor import Context
from workplex.overlays.chain import Duration, Overlay, OverlayConfig
from workplex.registry import Call


class TimeoutConfig(OverlayConfig):
    seconds: Duration = Field(description="Time limit of one attempt (e.g. 30, 500ms, 2m).")


def _fire(task: asyncio.Task[Any], fired: list[bool]) -> None:
    fired[0] = True
    task.cancel()


class Timeout(Overlay):
    name = "timeout"
    description = "Cancels an attempt that runs past its time limit (TaskTimeoutError)."
    Config = TimeoutConfig

    def coerce(self, value: Any) -> Any:
        # `timeout: 30s` / `timeout: 30` is short for `timeout: {seconds: ...}`.
        if isinstance(value, str | int | float) and not isinstance(value, bool):
            return {"seconds": value}
        return super().coerce(value)

    def wrap(self, next: Call, executor: str, config: TimeoutConfig) -> Call:
        seconds = config.seconds

        async def timeout(input: Any, ctx: Context) -> Any:
            limit = seconds
            if ctx.deadline is not None:
                left = ctx.deadline - time.monotonic()
                if left < limit:
                    limit = left
            if limit <= 0:
                raise TaskTimeoutError(
                    f"{executor}: no time left before the task's deadline (attempt {ctx.attempt})",
                    details={"timeout": 0.0},
                )
            task = asyncio.current_task()
            assert task is not None
            base = task.cancelling()
            fired = [False]
            handle = asyncio.get_running_loop().call_later(limit, _fire, task, fired)
            try:
                return await next(input, ctx)
            except asyncio.CancelledError:
                if fired[0]:
                    fired[0] = False
                    if task.uncancel() > base:
                        raise  # also cancelled from outside: that cancellation wins
                    raise TaskTimeoutError(
                        f"{executor}: attempt {ctx.attempt} timed out after {limit:g}s",
                        details={"timeout": limit},
                    ) from None
                raise
            finally:
                handle.cancel()
                if fired[0]:
                    # The timer fired but the work finished anyway: drop our cancel request.
                    task.uncancel()

        return timeout
