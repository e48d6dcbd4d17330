"""retry against a real HTTP server on 127.0.0.1 that answers 503 (with Retry-After) twice."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.support import require
from tests.unit.overlays.conftest import StepClock
from workplex.config import parse_config
from workplex.executor import Task
from workplex.overlays import OverlayChain
from workplex.registry import Registry


class Flaky503(BaseHTTPRequestHandler):
    hits = 0

    def do_GET(self) -> None:
        type(self).hits += 1
        if type(self).hits <= 2:
            self.send_response(503)
            self.send_header("Retry-After", "7")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        body = b'{"ok": true}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[str]:
    Flaky503.hits = 0
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Flaky503)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


async def test_given_a_server_answering_503_twice_when_retried_then_retry_after_is_honoured(
    server: str,
) -> None:
    require("httpx")
    clock = StepClock()
    config = parse_config(
        {
            "executors": {"http": {"allow_private_networks": True}},
            "overlays": {"http": {"retry": {"max_attempts": 3, "initial_delay": 1, "max_delay": 5}}},
        }
    )
    registry = Registry(config, overlays=OverlayChain.from_config(config, clock=clock))
    async with registry:
        result = await registry.execute(Task("http", {"method": "GET", "url": server}))
    assert result.success, result.error
    assert result.metrics is not None and result.metrics.attempts == 3
    assert Flaky503.hits == 3
    assert clock.sleeps == [5.0, 5.0]  # Retry-After 7 capped by max_delay
