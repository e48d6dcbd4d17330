"""Flaky work for the overlay tests, called by name through the ``python`` executor.

State that must survive between attempts lives in a counter file (sync functions) or in
``STATE`` under a name unique to the test (async functions, which run on the event loop).
"""

from __future__ import annotations

import asyncio
import builtins
from pathlib import Path
from typing import Any

from workplex import errors

STATE: dict[str, dict[str, Any]] = {}

EXIT_75_SCRIPT = """
import sys
from pathlib import Path
counter, failures = Path(sys.argv[1]), int(sys.argv[2])
n = int(counter.read_text()) + 1 if counter.exists() else 1
counter.write_text(str(n))
print(f"run {n}")
sys.exit(75 if n <= failures else 0)
"""

GRANDCHILD_SCRIPT = """
import subprocess, sys
child = subprocess.Popen(["sleep", "30"])
with open(sys.argv[1], "w") as f:
    f.write(str(child.pid))
child.wait()
"""


def bump(counter: str) -> int:
    path = Path(counter)
    n = int(path.read_text()) + 1 if path.exists() else 1
    path.write_text(str(n))
    return n


def calls(counter: str) -> int:
    path = Path(counter)
    return int(path.read_text()) if path.exists() else 0


def fail_times(
    counter: str,
    failures: int,
    error: str = "RetryableError",
    retry_after: float | None = None,
    status: int | None = None,
    message: str = "flaky failure",
    ctx: Any = None,
) -> dict[str, int]:
    """Fail the first ``failures`` calls with ``error`` (a workplex or builtin class name)."""
    n = bump(counter)
    if n <= failures:
        cls = getattr(errors, error, None) or getattr(builtins, error)
        if issubclass(cls, errors.ExecutorError):
            details = {"status": status} if status is not None else None
            raise cls(f"{message} {n}", retry_after=retry_after, details=details)
        raise cls(f"{message} {n}")
    return {"calls": n}


async def track(name: str, group: str = "", hold: int = 20) -> int:
    """Count how many calls of ``name`` (and of ``group``) run at once (yields ``hold`` times
    while inside)."""
    states = [STATE.setdefault(n, {"active": 0, "peak": 0, "calls": 0}) for n in {name, group} if n]
    for state in states:
        state["active"] += 1
        state["calls"] += 1
        state["peak"] = max(state["peak"], state["active"])
    try:
        for _ in range(hold):
            await asyncio.sleep(0)
    finally:
        for state in states:
            state["active"] -= 1
    return int(states[0]["peak"])


async def stamp(name: str) -> float:
    """Record when the call started, on the clock stored in ``STATE[name]["clock"]``."""
    state = STATE[name]
    now = float(state["clock"].monotonic())
    state["starts"].append(now)
    return now


async def afail_times(name: str, failures: int) -> int:
    """Async variant of ``fail_times`` with its count in ``STATE``."""
    state = STATE.setdefault(name, {"calls": 0})
    state["calls"] += 1
    if state["calls"] <= failures:
        raise errors.RetryableError(f"flaky failure {state['calls']}")
    return int(state["calls"])


async def slow(seconds: float) -> str:
    await asyncio.sleep(seconds)
    return "finished"


def log_with_secret(ctx: Any, secret: str, fail: bool = False) -> str:
    ctx.logger.info("calling", url=f"https://example.invalid/?key={secret}", password="hunter2")
    if fail:
        raise errors.PermanentError(f"refused with key {secret}")
    return "done"


def log_then_fail(counter: str, failures: int, ctx: Any) -> int:
    """Log through ``ctx.logger`` (with the attempt the Context holds), then fail the first
    ``failures`` calls with a RetryableError."""
    n = bump(counter)
    ctx.logger.info("working", ctx_attempt=ctx.attempt)
    if n <= failures:
        raise errors.RetryableError(f"flaky failure {n}")
    return n


async def time_left(ctx: Any) -> float | None:
    """The seconds left before ``ctx.deadline`` as the executor sees it."""
    left = ctx.remaining()
    return None if left is None else float(left)
