"""10,000 GETs through the http executor against raw ``httpx.AsyncClient``, 64 in flight.

    python benchmarks/http.py [--requests 10000] [--concurrency 64] [--rounds 3]

The server is a minimal keep-alive HTTP/1.1 server in a separate process (so client and
server do not share a GIL), the same for both sides. Each side gets a warm-up, then the
rounds alternate; the best round of each is compared. Client CPU time per request is
printed too: it is steadier than throughput on a busy machine.
"""

from __future__ import annotations

import sys
from pathlib import Path

# This file is called http.py: keep its folder off sys.path so `import http` finds the stdlib.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]

import argparse  # noqa: E402
import asyncio  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402
from typing import Any  # noqa: E402

import httpx  # noqa: E402

from workplex.backends.local import LocalBackend  # noqa: E402
from workplex.config import parse_config  # noqa: E402
from workplex.executor import Result, Task  # noqa: E402
from workplex.executors.http import Http  # noqa: E402
from workplex.registry import Registry  # noqa: E402

RESPONSE = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 11\r\n"
    b'Connection: keep-alive\r\n\r\n{"ok":true}'
)
Sample = tuple[float, float]  # (requests per second, client CPU microseconds per request)


class _Server(asyncio.Protocol):
    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.buffer = b""

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        # GETs without bodies: one response per header block.
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            self.buffer = self.buffer[end + 4 :]
            self.transport.write(RESPONSE)


def serve(port: int) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(_Server, "127.0.0.1", port, backlog=1024)
        async with server:
            await server.serve_forever()

    asyncio.run(main())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_for(port: int, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 10
    while True:
        if proc.poll() is not None:
            raise RuntimeError("benchmark server exited")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError("benchmark server did not start") from None
            time.sleep(0.02)


async def run_raw(url: str, n: int, concurrency: int) -> Sample:
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, trust_env=False) as client:
        remaining = iter(range(n))
        failures = 0

        async def worker() -> None:
            nonlocal failures
            for _ in remaining:
                response = await client.get(url)
                if response.status_code != 200 or response.json() != {"ok": True}:
                    failures += 1

        t0, c0 = time.perf_counter(), time.process_time()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
    if failures:
        raise RuntimeError(f"raw httpx: {failures} failed requests")
    return n / elapsed, cpu / n * 1e6


async def run_executor(registry: Registry, url: str, n: int, concurrency: int) -> Sample:
    tasks = [Task("http", {"url": url}) for _ in range(n)]
    failures: list[Result] = []

    def on_result(index: int, result: Result) -> None:
        if not result.success or result.output["body"] != {"ok": True}:
            failures.append(result)

    backend = LocalBackend(registry)
    t0, c0 = time.perf_counter(), time.process_time()
    await backend.execute(tasks, run_id="bench", stage="get", limit=concurrency, on_result=on_result)
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
    if failures:
        raise RuntimeError(f"http executor: {len(failures)} failed, first: {failures[0]!r}")
    return n / elapsed, cpu / n * 1e6


async def bench(url: str, n: int, concurrency: int, rounds: int) -> None:
    settings = {
        "allow_private_networks": ["127.0.0.1"],
        "max_connections": concurrency,
        "max_keepalive": concurrency,
    }
    config = parse_config({"executors": {"http": settings}})
    async with Registry(config, discover=False) as registry:
        registry.register(Http)
        await registry.start("http")
        await run_raw(url, 500, concurrency)  # warm-up
        await run_executor(registry, url, 500, concurrency)
        raw: list[Sample] = []
        exe: list[Sample] = []
        for i in range(rounds):
            raw.append(await run_raw(url, n, concurrency))
            exe.append(await run_executor(registry, url, n, concurrency))
            print(
                f"round {i + 1}: raw {raw[-1][0]:6.0f} req/s ({raw[-1][1]:4.0f} us CPU/req)  "
                f"executor {exe[-1][0]:6.0f} req/s ({exe[-1][1]:4.0f} us CPU/req)  "
                f"ratio {exe[-1][0] / raw[-1][0]:.3f}"
            )
    raw_rate, exe_rate = max(r for r, _ in raw), max(r for r, _ in exe)
    raw_cpu, exe_cpu = min(c for _, c in raw), min(c for _, c in exe)
    print(f"{n} GETs, {concurrency} in flight, best of {rounds} rounds:")
    print(f"  raw httpx.AsyncClient : {raw_rate:7.0f} req/s  {raw_cpu:5.0f} us client CPU/req")
    print(f"  http executor         : {exe_rate:7.0f} req/s  {exe_cpu:5.0f} us client CPU/req")
    print(f"  throughput ratio      : {exe_rate / raw_rate:.3f}  (target >= 0.85)")
    print(f"  CPU cost ratio        : {raw_cpu / exe_cpu:.3f}  (raw / executor CPU per request)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve)
        return
    port = _free_port()
    proc = subprocess.Popen([sys.executable, __file__, "--serve", str(port)])
    try:
        _wait_for(port, proc)
        asyncio.run(bench(f"http://127.0.0.1:{port}/", args.requests, args.concurrency, args.rounds))
    finally:
        proc.terminate()
        proc.wait(timeout=10)


if __name__ == "__main__":
    main()
