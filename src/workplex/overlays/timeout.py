"""``timeout``: a time limit per attempt; the attempt is cancelled when it runs out.

Cancellation is asyncio cancellation of the task running the attempt, so the executor's
own cleanup runs (the command executor kills its process group, the HTTP executor closes
its request) before ``TaskTimeoutError`` is raised. The limit is also cut to the time left
before ``ctx.deadline`` (set by ``retry``'s ``deadline`` or by the engine).

All attempts under one timeout share a FIFO of deadlines and a single loop timer (they
all have the same length, so they expire in order), which costs far less per attempt than
``asyncio.timeout``; the semantics are the same (``task.cancel`` / ``uncancel``).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
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


_RUNNING, _DONE, _FIRED = 0, 1, 2


class _Entry:
    __slots__ = ("at", "state", "task")

    def __init__(self, at: float, task: asyncio.Task[Any]) -> None:
        self.at = at
        self.task = task
        self.state = _RUNNING


class _Timers:
    """Deadlines of one timeout overlay. They all have the same length, so they expire in
    the order they were set: a FIFO with a single loop timer for the earliest one replaces
    a timer handle per attempt (cheaper than ``call_later`` + ``cancel`` each time)."""

    __slots__ = ("entries", "handle", "loop", "seconds")

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.entries: deque[_Entry] = deque()
        self.handle: asyncio.TimerHandle | None = None
        self.loop: asyncio.AbstractEventLoop | None = None

    def add(self, task: asyncio.Task[Any]) -> _Entry:
        loop = task.get_loop()
        entries = self.entries
        if loop is not self.loop:  # a new event loop: the old one's timers are moot
            self.loop, self.handle = loop, None
            entries.clear()
        while entries and entries[0].state != _RUNNING:
            entries.popleft()
        entry = _Entry(loop.time() + self.seconds, task)
        entries.append(entry)
        if self.handle is None:
            self.handle = loop.call_at(entry.at, self._tick)
        return entry

    def _tick(self) -> None:
        self.handle = None
        loop = self.loop
        assert loop is not None
        now = loop.time()
        entries = self.entries
        while entries:
            entry = entries[0]
            if entry.state == _RUNNING:
                if entry.at > now:
                    self.handle = loop.call_at(entry.at, self._tick)
                    return
                entry.state = _FIRED
                entry.task.cancel()
            entries.popleft()


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

        timers = _Timers(seconds)

        def timed_out(ctx: Context, limit: float) -> TaskTimeoutError:
            return TaskTimeoutError(
                f"{executor}: attempt {ctx.attempt} timed out after {limit:g}s",
                details={"timeout": limit},
            )

        async def timeout(input: Any, ctx: Context) -> Any:
            if ctx.deadline is not None and ctx.deadline - time.monotonic() < seconds:
                return await short_timeout(input, ctx, ctx.deadline - time.monotonic())
            task = asyncio.current_task()
            assert task is not None
            base = task.cancelling()
            entry = timers.add(task)
            try:
                return await next(input, ctx)
            except asyncio.CancelledError:
                if entry.state == _FIRED:
                    entry.state = _DONE
                    if task.uncancel() > base:
                        raise  # also cancelled from outside: that cancellation wins
                    raise timed_out(ctx, seconds) from None
                raise
            finally:
                if entry.state == _FIRED:
                    task.uncancel()  # fired, but the work finished anyway
                entry.state = _DONE

        async def short_timeout(input: Any, ctx: Context, limit: float) -> Any:
            # Cut short by ctx.deadline: a timer of its own (it breaks the FIFO order).
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
                        raise
                    raise timed_out(ctx, limit) from None
                raise
            finally:
                handle.cancel()
                if fired[0]:
                    task.uncancel()

        return timeout
