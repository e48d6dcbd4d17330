"""The executor core's own cost, against raw baselines measured in the same run.

1. ``Registry.execute`` for ``echo`` against calling the executor's coroutine directly
   (per-task overhead in microseconds, and the ratio).
2. 500 ``/bin/true`` through the ``command`` executor, 2 at a time, against raw
   ``asyncio.create_subprocess_exec`` with the same limit and against a 2-thread pool running
   ``subprocess.run``. Every variant captures stdout and stderr, as the executor does.

Run: ``python benchmarks/core.py`` (``--rounds N`` to repeat; the best round of each counts,
which is the least disturbed by other load on the machine).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

from workplex import Context, Registry, Task
from workplex.config import Config

ECHO_TASKS = 20_000
SPAWNS = 500
PARALLEL = 2
PROGRAM = "/bin/true"


# ---- 1. echo ------------------------------------------------------------------------------
async def echo_round(registry: Registry) -> tuple[float, float]:
    """Seconds per task: (direct coroutine call, Registry.execute)."""
    executor = registry.get("echo")
    payload = {"hello": "world", "n": 1}
    model = executor.Input.model_validate(payload)
    ctx = Context("t")
    tasks = [Task("echo", payload) for _ in range(ECHO_TASKS)]

    t0 = time.perf_counter()
    for _ in range(ECHO_TASKS):
        await executor.execute(model, ctx)
    direct = (time.perf_counter() - t0) / ECHO_TASKS

    t0 = time.perf_counter()
    for task in tasks:
        result = await registry.execute(task)
    via = (time.perf_counter() - t0) / ECHO_TASKS
    assert result.success and result.output == payload
    return direct, via


# ---- 2. command ---------------------------------------------------------------------------
async def two_at_a_time(n: int, one: Callable[[], Awaitable[object]]) -> float:
    """Rate (per second) of ``n`` calls of ``one`` with ``PARALLEL`` worker coroutines."""
    work: Iterator[int] = iter(range(n))

    async def worker() -> None:
        for _ in work:
            await one()

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(PARALLEL)))
    return n / (time.perf_counter() - t0)


async def command_rate(registry: Registry) -> float:
    task = Task("command", {"command": PROGRAM})

    async def one() -> None:
        result = await registry.execute(task)
        if not result.success or result.exit_code != 0:
            raise SystemExit(f"command failed: {result.to_dict()}")

    return await two_at_a_time(SPAWNS, one)


async def asyncio_rate() -> float:
    async def one() -> None:
        proc = await asyncio.create_subprocess_exec(
            PROGRAM, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
        )
        await proc.communicate()

    return await two_at_a_time(SPAWNS, one)


def thread_pool_rate() -> float:
    def one(_: int) -> None:
        subprocess.run([PROGRAM], capture_output=True, check=True)

    with ThreadPoolExecutor(PARALLEL) as pool:
        t0 = time.perf_counter()
        list(pool.map(one, range(SPAWNS)))
        return SPAWNS / (time.perf_counter() - t0)


def spawner_only_rate(loop: asyncio.AbstractEventLoop) -> float:
    """The command executor's thread side alone (check, spawn, read, reap: ``_run``) on a
    plain 2-thread pool, no event loop in between: shows where the executor's time goes."""
    from workplex.executors import command as cm

    jobs = [
        cm._Job([PROGRAM], PROGRAM, None, None, None, None, 1 << 20, 1.0, False, loop)
        for _ in range(SPAWNS)
    ]
    local = threading.local()

    def one(job: cm._Job) -> None:
        if not hasattr(local, "wake"):
            r, w = os.pipe()
            os.set_blocking(r, False)
            os.set_blocking(w, False)
            local.wake = (r, w)
        outcome = cm._run(job, *local.wake)
        if outcome[0] != "ok":
            raise SystemExit(f"spawn failed: {outcome}")

    with ThreadPoolExecutor(PARALLEL) as pool:
        t0 = time.perf_counter()
        list(pool.map(one, jobs))
        return SPAWNS / (time.perf_counter() - t0)


def cpu_seconds() -> float:
    """CPU time of this process (all threads, user + system; not the spawned programs)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def measured(coro: Awaitable[float], cpu: list[float]) -> float:
    c0 = cpu_seconds()
    rate = await coro
    cpu.append((cpu_seconds() - c0) / SPAWNS)
    return rate


async def main(rounds: int) -> None:
    registry = Registry(Config())
    async with registry:
        await registry.startup(["echo", "command"])
        directs, vias = [], []
        for _ in range(rounds):
            direct, via = await echo_round(registry)
            directs.append(direct)
            vias.append(via)
        direct, via = min(directs), min(vias)
        overhead = (via - direct) * 1e6
        print(f"echo, {ECHO_TASKS} tasks one after another (best of {rounds}):")
        print(f"  direct coroutine call   {direct * 1e6:8.2f} us/task")
        print(f"  Registry.execute        {via * 1e6:8.2f} us/task")
        print(f"  overhead                {overhead:8.2f} us/task  (ratio {via / direct:.1f}x)")
        print(f"  target: under 15 us/task -> {'met' if overhead < 15 else 'NOT met'}")

        await command_rate(registry)  # warm up the spawning threads
        cmd: list[float] = []
        aio: list[float] = []
        pool: list[float] = []
        alone: list[float] = []
        cpu: dict[str, list[float]] = {"cmd": [], "aio": [], "pool": [], "alone": []}
        for _ in range(rounds):  # interleaved, so load changes hit every variant alike
            cmd.append(await measured(command_rate(registry), cpu["cmd"]))
            aio.append(await measured(asyncio_rate(), cpu["aio"]))
            c0 = cpu_seconds()
            pool.append(thread_pool_rate())
            cpu["pool"].append((cpu_seconds() - c0) / SPAWNS)
            c0 = cpu_seconds()
            alone.append(spawner_only_rate(asyncio.get_running_loop()))
            cpu["alone"].append((cpu_seconds() - c0) / SPAWNS)
    best_cmd, best_aio, best_pool = max(cmd), max(aio), max(pool)
    faster = max(best_aio, best_pool)
    print(f"\n{SPAWNS} x {PROGRAM}, {PARALLEL} at a time, best of {rounds}:")
    print("                              spawns/s (best, median)   CPU us/spawn (this process)")
    for label, rates, key in (
        ("command executor", cmd, "cmd"),
        ("asyncio.create_subprocess", aio, "aio"),
        ("2-thread subprocess.run", pool, "pool"),
        ("command, thread side only", alone, "alone"),
    ):
        print(
            f"  {label:26s}  {max(rates):8.0f} {statistics.median(rates):8.0f}"
            f"          {min(cpu[key]) * 1e6:6.0f}"
        )
    print(f"  command / asyncio      {best_cmd / best_aio:5.2f}")
    print(f"  command / thread pool  {best_cmd / best_pool:5.2f}")
    print(f"  thread side alone / thread pool  {max(alone) / best_pool:5.2f}  (the rest is the loop's share)")
    ratio = best_cmd / faster
    # Each round's variants ran back to back, so a per-round ratio cancels slow load drift.
    paired = statistics.median(c / max(a, p) for c, a, p in zip(cmd, aio, pool, strict=True))
    print(f"  command / faster baseline, median of per-round ratios  {paired:.2f}")
    verdict = "met" if ratio >= 0.9 else "NOT met"
    print(f"  target: >= 0.9 of the faster baseline (best rounds) -> {ratio:.2f} {verdict}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    if sys.platform == "win32":
        raise SystemExit("this benchmark needs a POSIX system")
    asyncio.run(main(args.rounds))
