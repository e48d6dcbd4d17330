"""Work for the pipeline tests, called by name through the ``python`` executor.

Async functions run on the test's event loop, so module-level state is shared with the
test that reads it; each test resets what it uses through ``reset()``.
"""

from __future__ import annotations

import asyncio
import random
import time
from pathlib import Path
from typing import Any

ACTIVE = 0
PEAK = 0
CALLS: list[Any] = []
SPANS: dict[str, tuple[float, float]] = {}
CANCELLED: list[str] = []


def reset() -> None:
    global ACTIVE, PEAK
    ACTIVE = PEAK = 0
    CALLS.clear()
    SPANS.clear()
    CANCELLED.clear()


async def jitter(item: Any, seed: int) -> dict[str, Any]:
    """Sleep a pseudo-random few milliseconds (so tasks finish out of order)."""
    rnd = random.Random(f"{seed}:{item}")
    await asyncio.sleep(rnd.uniform(0.0, 0.02))
    CALLS.append(item)
    return {"item": item}


async def tracked(item: Any) -> Any:
    """Count how many calls are in flight at once (``PEAK``)."""
    global ACTIVE, PEAK
    ACTIVE += 1
    PEAK = max(PEAK, ACTIVE)
    try:
        # A few event-loop turns so other tasks get to start if they are allowed to.
        for _ in range(5):
            await asyncio.sleep(0)
        return item
    finally:
        ACTIVE -= 1


async def overlap(name: str, peers: int) -> dict[str, Any]:
    """Wait until ``peers`` calls are running at the same time, then return.

    Only possible when the calls really run in parallel; otherwise the test times out.
    """
    global ACTIVE, PEAK
    ACTIVE += 1
    PEAK = max(PEAK, ACTIVE)
    start = time.monotonic()
    try:
        while peers > PEAK:  # noqa: ASYNC110 (polls a counter the other calls update)
            await asyncio.sleep(0.001)
        return {"name": name}
    finally:
        ACTIVE -= 1
        SPANS[name] = (start, time.monotonic())


async def boom(message: str = "boom") -> None:
    raise RuntimeError(message)


async def slow_until_cancelled(name: str) -> str:
    """Sleep (far longer than any test), recording a cancellation."""
    try:
        await asyncio.sleep(60)
    except asyncio.CancelledError:
        CANCELLED.append(name)
        raise
    return name


async def sleep_for(item: int, seconds: float) -> dict[str, int]:
    await asyncio.sleep(seconds)
    return {"item": item}


def fail_on(item: Any, bad: list[Any]) -> dict[str, Any]:
    if item in bad:
        raise RuntimeError(f"item {item} is bad")
    return {"item": item}


async def fail_when_files(directory: str, count: int) -> None:
    """Fail once ``count`` files exist in ``directory`` (the other stage's tasks started)."""
    path = Path(directory)
    while len(await asyncio.to_thread(lambda: list(path.glob("*.pid")))) < count:  # noqa: ASYNC110
        await asyncio.sleep(0.01)
    raise RuntimeError("the failing stage failed")


def label(**kwargs: Any) -> dict[str, Any]:
    return kwargs
