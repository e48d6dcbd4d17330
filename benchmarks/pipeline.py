"""A 100,000-item ``echo`` scatter through the engine against ``asyncio.gather``.

Run: ``python benchmarks/pipeline.py [N]``. Prints tasks per second for both, the ratio,
and the engine's peak memory per task beyond the results themselves.
"""

from __future__ import annotations

import asyncio
import gc
import sys
import time
import tracemalloc
from typing import Any

from workplex import Engine, Pipeline, Registry, Stage


def make_pipeline(n: int, parallel: int) -> Pipeline:
    return Pipeline(
        name="bench",
        inputs={"items": {"type": "array"}},
        stages=[
            Stage(
                name="fan",
                mode="scatter",
                executor="echo",
                scatter={"input": "$.trigger.items", "as": "item"},
                input={"value": "$.item"},
                config={"max_parallel": parallel},
            )
        ],
    )


async def engine_run(n: int, parallel: int) -> tuple[float, Any]:
    items = list(range(n))
    async with Registry() as registry, Engine(registry) as engine:
        pipeline = make_pipeline(n, parallel)
        engine.plan(pipeline)
        await engine.run(make_pipeline(10, parallel), {"items": [1]})  # warm up
        t0 = time.perf_counter()
        result = await engine.run(pipeline, {"items": items})
        elapsed = time.perf_counter() - t0
    assert result.status == "succeeded", result.error
    assert len(result.stages["fan"].output) == n
    return elapsed, result


async def gather_run(n: int) -> float:
    async def work(value: int) -> dict[str, int]:
        return {"value": value}

    t0 = time.perf_counter()
    out = await asyncio.gather(*(work(i) for i in range(n)))
    elapsed = time.perf_counter() - t0
    assert len(out) == n
    return elapsed


def peak_per_task(n: int, parallel: int) -> tuple[float, float]:
    """Peak traced memory of a run minus the memory its results keep, per task."""

    async def go() -> tuple[int, int]:
        items = list(range(n))
        async with Registry() as registry, Engine(registry) as engine:
            pipeline = make_pipeline(n, parallel)
            engine.plan(pipeline)
            gc.collect()
            tracemalloc.start()
            base = tracemalloc.get_traced_memory()[0]
            tracemalloc.reset_peak()
            result = await engine.run(pipeline, {"items": items})
            kept = tracemalloc.get_traced_memory()[0] - base
            peak = tracemalloc.get_traced_memory()[1] - base
            tracemalloc.stop()
            del result
            return peak, kept

    peak, kept = asyncio.run(go())
    return peak / n, (peak - kept) / n


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    parallel = 64
    raw = asyncio.run(gather_run(n))
    eng, _ = asyncio.run(engine_run(n, parallel))
    total, extra = peak_per_task(n, parallel)
    print(f"{n:,} echo tasks, scatter max_parallel={parallel}")
    print(f"  asyncio.gather of bare coroutines : {n / raw:>10,.0f} tasks/s")
    print(f"  workplex engine (local backend)   : {n / eng:>10,.0f} tasks/s")
    print(f"  ratio engine / gather (throughput): {raw / eng:>10.2f}")
    print(f"  engine peak memory, with results  : {total:>10,.0f} bytes per task")
    print(f"  engine peak memory beyond results : {extra:>10,.0f} bytes per task")


if __name__ == "__main__":
    main()
