"""The run store's cost: a 100,000-item ``echo`` scatter with the SQLite store vs without.

    python benchmarks/store.py [--items N] [--repeat R]

Both runs go through the same Engine and local backend in this process; the only
difference is ``store=``. Also shows the store alone (``task_done`` + ``flush``), to
separate the write path from the engine. Target: at least 20,000 tasks/s with the store.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path
from typing import Any

from workplex import Registry
from workplex.engine import Engine
from workplex.executor import Metrics, Result
from workplex.pipeline import Pipeline
from workplex.store import Store


def scatter_pipeline() -> Pipeline:
    return Pipeline.model_validate(
        {
            "name": "bench-store",
            "inputs": {"items": {"type": "array"}},
            "stages": [
                {
                    "name": "fan",
                    "mode": "scatter",
                    "executor": "echo",
                    "scatter": {"input": "$.trigger.items", "as": "item"},
                    "input": {"i": "$.item"},
                    "config": {"max_parallel": 64},
                }
            ],
        }
    )


async def run_once(items: list[int], store: Store | None) -> float:
    async with Registry() as registry, Engine(registry, store=store) as engine:
        pipeline = scatter_pipeline()
        engine.plan(pipeline)
        t0 = time.perf_counter()
        result = await engine.run(pipeline, {"items": items})
        if store is not None:
            await store.flush()
        elapsed = time.perf_counter() - t0
    if result.status != "succeeded" or result.stages["fan"].succeeded != len(items):
        raise SystemExit(f"run did not succeed: {result.to_dict()['stages']['fan']}")
    return elapsed


async def store_alone(store: Store, n: int) -> float:
    await store.create_run("raw", "raw", None, None, {})
    results = [Result(True, {"i": i}, metrics=Metrics(0.0, 0.0, 0.0, 1)) for i in range(n)]
    t0 = time.perf_counter()
    for i, r in enumerate(results):
        store.task_done("raw", "fan", i, f"raw:fan:{i}", "echo", None, r)
    await store.flush()
    return time.perf_counter() - t0


async def main(n: int, repeat: int) -> None:
    items = list(range(n))
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{Path(tmp) / 'bench.db'}"
        store = await Store.open(url)
        try:
            await run_once(items[:1000], None)  # warm-up: imports, executor start-up
            await run_once(items[:1000], store)
            bare: list[float] = []
            stored: list[float] = []
            for _ in range(repeat):
                bare.append(await run_once(items, None))
                stored.append(await run_once(items, store))
            alone = await store_alone(store, n)
        finally:
            await store.close()
    best_bare, best_stored = min(bare), min(stored)
    rows: list[tuple[str, Any, Any]] = [
        ("engine, no store", n / best_bare, best_bare),
        ("engine + SQLite store", n / best_stored, best_stored),
        ("store alone (task_done + flush)", n / alone, alone),
    ]
    print(f"{n:,}-item echo scatter (best of {repeat})")
    for label, rate, secs in rows:
        print(f"  {label:<34} {rate:>12,.0f} tasks/s  ({secs:.3f} s)")
    cost_us = (best_stored - best_bare) / n * 1e6
    print(
        f"  ratio with store / without          {best_bare / best_stored:.2f}"
        f"  (the store adds {cost_us:.1f} us per task)"
    )
    print(
        f"  target >= 20,000 tasks/s with the store: {'met' if n / best_stored >= 20000 else 'NOT met'}"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    asyncio.run(main(args.items, args.repeat))
