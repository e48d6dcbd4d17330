"""Cost of the overlay chain around the ``echo`` executor, against the bare call, in one run.

Run: ``python benchmarks/overlays.py [N]``. Each line is the mean time per task over N
sequential calls (best of 5 rounds), and what the overlays add on top of the bare call.
The target: retry, timeout, concurrency and rate_limit configured but not triggered add
under 10 microseconds per task.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path
from typing import Any

# Running a file puts its folder first on sys.path, where sibling benchmarks (http.py, ...)
# would shadow standard modules of the same name.
if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    sys.path.pop(0)

from workplex.config import parse_config
from workplex.executor import Context, Task
from workplex.overlays import OverlayChain
from workplex.overlays.logging import configure_logging
from workplex.registry import Call, Registry

LIMITS: dict[str, Any] = {
    "retry": {"max_attempts": 3, "backoff": "exponential", "initial_delay": "1s"},
    "timeout": "30s",
    "concurrency": {"limit": 64},
    "rate_limit": {"rate": 1e9, "burst": 1_000_000_000},
}

CASES: list[tuple[str, dict[str, Any]]] = [
    ("bare call (no overlay configured)", {}),
    ("timeout only", {"timeout": "30s"}),
    ("retry only", {"retry": LIMITS["retry"]}),
    ("retry + timeout + concurrency + rate_limit", LIMITS),
    ("  + circuit_breaker", {**LIMITS, "circuit_breaker": {"failure_threshold": 5}}),
    ("  + metrics", {**LIMITS, "metrics": True}),
    ("  + metrics + logging (JSON to /dev/null)", {**LIMITS, "metrics": True, "logging": True}),
    ("  + tracing (API only, no SDK)", {**LIMITS, "tracing": True}),
]


async def per_call(call: Call, model: Any, ctx: Context, n: int) -> float:
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(n):
            await call(model, ctx)
        best = min(best, (time.perf_counter() - t0) / n)
    return best


async def main(n: int) -> None:
    config = parse_config({})
    chain = OverlayChain.from_config(config)
    registry = Registry(config, overlays=chain)
    task = Task("echo", {"hello": "world"})
    model = registry.validate(task)
    await registry.start("echo")
    print(f"overlay chain around echo, {n} sequential calls, best of 5 rounds")
    print(f"{'configuration':48} {'us/task':>9} {'added us':>9} {'ratio':>7}")
    bare = 0.0
    for i, (label, settings) in enumerate(CASES):
        call = registry.call_for("echo", settings, key=i)
        ctx = Context(task.id, "run", "stage")
        seconds = await per_call(call, model, ctx, n)
        if i == 0:
            bare = seconds
        added = (seconds - bare) * 1e6
        print(f"{label:48} {seconds * 1e6:9.2f} {added:9.2f} {seconds / bare:7.1f}x")
    await registry.shutdown()


if __name__ == "__main__":
    with open(os.devnull, "w") as devnull:
        configure_logging(json=True, stream=devnull)
        asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 100_000))
