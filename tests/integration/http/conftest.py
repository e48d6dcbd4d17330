"""A real HTTP server for the http executor's tests: a small raw ASGI app under uvicorn.

It listens on two loopback addresses (127.0.0.1 and 127.0.0.2, same port) so redirects
between an allowed and a refused address can be tested. The server runs on its own event
loop in a thread, started once per session and always stopped at the end.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

import pytest

from tests.support import require
from workplex.config import parse_config
from workplex.executor import Result, Task
from workplex.executors.http import Http
from workplex.registry import Registry

uvicorn = require("uvicorn")

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


@dataclass
class ServerState:
    """What the server saw (read by the tests from the main thread)."""

    hits: Counter[str] = field(default_factory=Counter)
    client_ports: list[int] = field(default_factory=list)
    started: set[str] = field(default_factory=set)
    disconnected: set[str] = field(default_factory=set)


class App:
    def __init__(self, state: ServerState) -> None:
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        path: str = scope["path"]
        query = parse_qs(scope["query_string"].decode(), keep_blank_values=True)
        q = {k: v[-1] for k, v in query.items()}
        self.state.hits[path] += 1
        if query:
            self.state.hits[path + "?" + scope["query_string"].decode()] += 1
        if scope.get("client"):
            self.state.client_ports.append(scope["client"][1])
        body = b""
        more = True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}

        if path == "/echo":
            data: dict[str, Any] = {
                "method": scope["method"],
                "query": query,
                "headers": headers,
                "body": body.decode(errors="replace"),
            }
            await self.respond(send, 200, json.dumps(data).encode(), "application/json")
        elif path.startswith("/status/"):
            extra = []
            if "retry_after" in q:
                extra.append((b"retry-after", q["retry_after"].encode()))
            await self.respond(send, int(path.rsplit("/", 1)[1]), b"status", "text/plain", extra)
        elif path.startswith("/flaky/"):
            # The first `fail` calls of a key answer 503 with Retry-After, then 200.
            seen = self.state.hits[path]
            if seen <= int(q.get("fail", "2")):
                await self.respond(
                    send, 503, b"busy", "text/plain", [(b"retry-after", q.get("ra", "0").encode())]
                )
            else:
                await self.respond(send, 200, json.dumps({"calls": seen}).encode(), "application/json")
        elif path.startswith("/redirect/"):
            n = int(path.rsplit("/", 1)[1])
            target = f"/redirect/{n - 1}" if n > 1 else "/echo"
            await self.respond(send, 302, b"", "text/plain", [(b"location", target.encode())])
        elif path == "/redirect-to":
            await self.respond(send, 302, b"", "text/plain", [(b"location", q["url"].encode())])
        elif path == "/slow":
            key = q.get("key", "")
            self.state.started.add(key)
            sleeper = asyncio.ensure_future(asyncio.sleep(float(q.get("delay", "5"))))
            watcher = asyncio.ensure_future(receive())
            done, _ = await asyncio.wait({sleeper, watcher}, return_when=asyncio.FIRST_COMPLETED)
            if watcher in done:  # the client went away
                sleeper.cancel()
                self.state.disconnected.add(key)
                return
            watcher.cancel()
            await self.respond(send, 200, b"slow done", "text/plain")
        elif path == "/drip":
            await send(
                {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]}
            )
            for _ in range(int(q.get("chunks", "5"))):
                await send({"type": "http.response.body", "body": b"x", "more_body": True})
                await asyncio.sleep(float(q.get("interval", "1")))
            await send({"type": "http.response.body", "body": b""})
        elif path == "/big":
            size = int(q.get("size", "0"))
            hdrs = [(b"content-type", b"application/octet-stream")]
            if q.get("declared"):
                hdrs.append((b"content-length", str(size).encode()))
            await send({"type": "http.response.start", "status": 200, "headers": hdrs})
            chunk = b"a" * 1024
            sent = 0
            while sent < size:
                part = chunk[: min(1024, size - sent)]
                sent += len(part)
                await send({"type": "http.response.body", "body": part, "more_body": True})
            await send({"type": "http.response.body", "body": b""})
        elif path == "/text":
            await self.respond(send, 200, "héllo".encode(), "text/plain; charset=utf-8")
        elif path == "/binary":
            await self.respond(send, 200, bytes(range(256)), "image/png")
        else:
            await self.respond(send, 404, b"not found", "text/plain")

    @staticmethod
    async def respond(
        send: Send,
        status: int,
        body: bytes,
        content_type: str,
        extra: list[tuple[bytes, bytes]] | None = None,
    ) -> None:
        headers = [(b"content-type", content_type.encode()), *(extra or [])]
        headers.append((b"content-length", str(len(body)).encode()))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


@dataclass
class HttpServer:
    port: int
    state: ServerState

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"


def _bind(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    return sock


@pytest.fixture(scope="session")
def http_server() -> Iterator[HttpServer]:
    state = ServerState()
    first = _bind("127.0.0.1", 0)
    port = first.getsockname()[1]
    sockets = [first, _bind("127.0.0.2", port)]
    config = uvicorn.Config(
        App(state), log_level="warning", lifespan="off", access_log=False,
        timeout_graceful_shutdown=1,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(
        target=lambda: asyncio.run(server.serve(sockets=sockets)), daemon=True
    )
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the test HTTP server did not start")
            time.sleep(0.01)  # polling interval, not synchronisation
        yield HttpServer(port, state)
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        for sock in sockets:
            sock.close()


MakeRegistry = Callable[..., Registry]
LOOPBACK = ["127.0.0.1"]


@pytest.fixture
async def make_registry() -> AsyncIterator[MakeRegistry]:
    """Registries holding only the http executor; settings default to allowing 127.0.0.1."""
    made: list[Registry] = []

    def make(overlays: dict[str, Any] | None = None, **settings: Any) -> Registry:
        settings.setdefault("allow_private_networks", LOOPBACK)
        data: dict[str, Any] = {"executors": {"http": settings}}
        builder = None
        if overlays is not None:
            from workplex.overlays import default_overlays

            data["overlays"] = {"http": overlays}
            config = parse_config(data)
            builder = default_overlays(config)
        else:
            config = parse_config(data)
        registry = Registry(config, discover=False, overlays=builder)
        registry.register(Http)
        made.append(registry)
        return registry

    try:
        yield make
    finally:
        for registry in made:
            await registry.shutdown()


async def run(registry: Registry, payload: dict[str, Any]) -> Result:
    return await registry.execute(Task("http", payload))


async def ok(registry: Registry, payload: dict[str, Any]) -> dict[str, Any]:
    result = await run(registry, payload)
    assert result.success, result.error
    assert isinstance(result.output, dict)
    return result.output


async def wait_until(predicate: Callable[[], bool], what: str, limit: float = 10.0) -> None:
    """Poll ``predicate`` until it holds (bounded)."""
    deadline = time.monotonic() + limit
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)
