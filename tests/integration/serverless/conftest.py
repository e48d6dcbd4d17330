"""Peers for the serverless executor's tests, all on 127.0.0.1.

- ``moto_url``: moto's server mode in a subprocess, with Lambda switched to its Docker-free
  backend before any function exists (Docker mode would pull an image from the internet).
- ``fake_cloud``: a small HTTP server that speaks the Lambda Invoke REST API for the paths
  moto cannot produce (a handled ``FunctionError``, throttling, 5xx), and plays the HTTPS
  triggers of Google Cloud Functions and Azure Functions, checking their auth headers.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import subprocess
import sys
import threading
import time
import zipfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote, urlsplit

import pytest

from tests.support import free_port, require, unavailable

require("boto3")
httpx = require("httpx")

from workplex.config import parse_config  # noqa: E402
from workplex.executor import Secrets  # noqa: E402
from workplex.executors.serverless import Serverless  # noqa: E402
from workplex.registry import Registry  # noqa: E402

REGION = "us-east-1"
GCP_TOKEN = "gcp-identity-token-9f2c41"
AZURE_KEY = "azure-function-key-7d1e08"
ACCESS_KEY = "AKIDWORKPLEXTEST"
SECRET_KEY = "aws-secret-key-5b8e77c3"


# ---- moto ------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def moto_url() -> Iterator[str]:
    """A moto server (``WORKPLEX_TEST_MOTO_URL``, or one started here) with Lambda off Docker."""
    given = os.environ.get("WORKPLEX_TEST_MOTO_URL")
    proc: subprocess.Popen[bytes] | None = None
    if given:
        url = given.rstrip("/")
    else:
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        try:
            proc = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
        except OSError as exc:
            unavailable(f"cannot start moto server: {exc}")
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc is not None and proc.poll() is not None:
                err = proc.stderr.read().decode() if proc.stderr else ""
                unavailable(f"moto server exited: {err[-500:]}")
            try:
                if httpx.get(f"{url}/moto-api/", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                unavailable(f"moto server at {url} did not answer within 30s")
            time.sleep(0.05)  # polling interval while waiting for the server to answer
        # Before any function is created: never let moto run Lambda in Docker.
        reply = httpx.post(f"{url}/moto-api/config", json={"lambda": {"use_docker": False}})
        assert reply.status_code in (200, 201), reply.text
        assert httpx.get(f"{url}/moto-api/config").json()["lambda"]["use_docker"] is False
        yield url
    finally:
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            if proc.stderr:
                proc.stderr.close()


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    """Dummy credentials for the standard chain; no real ~/.aws files are read."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "aws-credentials"))
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)


def _handler_zip() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("handler.py", "def handler(event, context):\n    return event\n")
    return buf.getvalue()


@pytest.fixture(scope="session")
def lambda_function(moto_url: str) -> str:
    """A function created in moto through boto3 (its IAM role first)."""
    import boto3

    kw: dict[str, Any] = {
        "region_name": REGION,
        "endpoint_url": moto_url,
        "aws_access_key_id": "testing",
        "aws_secret_access_key": "testing",
    }
    iam = boto3.client("iam", **kw)
    role = iam.create_role(
        RoleName="workplex-test-role",
        AssumeRolePolicyDocument=json.dumps(
            {
                "Version": "2012-10-17",
                "Statement": [
                    {
                        "Effect": "Allow",
                        "Principal": {"Service": "lambda.amazonaws.com"},
                        "Action": "sts:AssumeRole",
                    }
                ],
            }
        ),
    )["Role"]["Arn"]
    client = boto3.client("lambda", **kw)
    created = client.create_function(
        FunctionName="workplex-echo",
        Runtime="python3.12",
        Role=role,
        Handler="handler.handler",
        Code={"ZipFile": _handler_zip()},
        Publish=True,
    )
    iam.close()
    client.close()
    return str(created["FunctionArn"])


def queue_moto_results(moto_url: str, results: list[str]) -> None:
    reply = httpx.post(
        f"{moto_url}/moto-api/static/lambda-simple/response",
        json={"results": results, "region": REGION},
    )
    assert reply.status_code == 201, reply.text


# ---- the fake cloud --------------------------------------------------------------------
@dataclass
class FakeCloud:
    url: str
    requests: list[dict[str, Any]] = field(default_factory=list)


def _make_handler(cloud: FakeCloud) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:  # keep test output quiet
            pass

        def _reply(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(data)

        def _body(self) -> bytes:
            n = int(self.headers.get("Content-Length") or 0)
            return self.rfile.read(n) if n else b""

        def do_GET(self) -> None:
            self._route()

        def do_POST(self) -> None:
            self._route()

        def _route(self) -> None:
            parts = urlsplit(self.path)
            body = self._body()
            record = {
                "method": self.command,
                "path": parts.path,
                "query": parts.query,
                "headers": {k.lower(): v for k, v in self.headers.items()},
                "body": body,
            }
            cloud.requests.append(record)
            if parts.path.startswith("/2015-03-31/functions/"):
                self._lambda(unquote(parts.path.split("/")[3]), body, record)
            elif parts.path.startswith("/gcp/"):
                self._gcp(parts.path, body, record)
            elif parts.path.startswith("/azure/"):
                self._azure(parts.path, body, record)
            else:
                self._reply(404, {"error": "no such path"})

        # The Lambda Invoke REST API, as boto3 speaks it.
        def _lambda(self, name: str, body: bytes, record: dict[str, Any]) -> None:
            if name == "fails":
                self._reply(
                    200,
                    {"errorType": "ValueError", "errorMessage": "order 17 has no lines"},
                    {"X-Amz-Function-Error": "Unhandled", "X-Amz-Executed-Version": "$LATEST"},
                )
            elif name == "throttled":
                self._reply(
                    429,
                    {"Type": "User", "message": "Rate exceeded"},
                    {"x-amzn-ErrorType": "TooManyRequestsException"},
                )
            elif name == "broken":
                self._reply(
                    500,
                    {"Type": "Service", "message": "internal failure"},
                    {"x-amzn-ErrorType": "ServiceException"},
                )
            elif name == "missing":
                self._reply(
                    404,
                    {"Type": "User", "message": f"Function not found: {name}"},
                    {"x-amzn-ErrorType": "ResourceNotFoundException"},
                )
            elif name == "leaky":
                # A server that echoes the request's signature back in its error.
                auth = record["headers"].get("authorization", "")
                self._reply(
                    400,
                    {"Type": "User", "message": f"bad request signed {auth} {SECRET_KEY}"},
                    {"x-amzn-ErrorType": "InvalidParameterValueException"},
                )
            else:
                log = base64.b64encode(b"START\nline 1\nEND\n").decode()
                self._reply(
                    200,
                    body or b"null",
                    {"X-Amz-Executed-Version": "7", "X-Amz-Log-Result": log},
                )

        def _gcp(self, path: str, body: bytes, record: dict[str, Any]) -> None:
            auth = record["headers"].get("authorization")
            if auth != f"Bearer {GCP_TOKEN}":
                self._reply(401, {"error": f"unauthenticated, got {auth}"})
            elif path == "/gcp/busy":
                self._reply(503, {"error": "busy"}, {"Retry-After": "2"})
            elif path == "/gcp/crash":
                self._reply(500, {"error": f"crashed while holding {auth}"})
            elif path == "/gcp/text":
                self._reply(200, b"plain words")
            else:
                self._reply(200, {"echo": json.loads(body) if body else None, "via": "gcp"})

        def _azure(self, path: str, body: bytes, record: dict[str, Any]) -> None:
            key = record["headers"].get("x-functions-key")
            if key != AZURE_KEY:
                self._reply(403, {"error": "forbidden"})
            else:
                self._reply(200, {"echo": json.loads(body) if body else None, "via": "azure"})

    return Handler


@pytest.fixture
def fake_cloud() -> Iterator[FakeCloud]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(FakeCloud("")))
    cloud = FakeCloud(f"http://127.0.0.1:{server.server_address[1]}")
    server.RequestHandlerClass = _make_handler(cloud)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield cloud
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


# ---- the registry ----------------------------------------------------------------------
def serverless_registry(
    settings: dict[str, Any] | None = None, secrets: dict[str, str] | None = None
) -> Registry:
    config = parse_config({"executors": {"serverless": settings or {}}})
    registry = Registry(config, discover=False, secrets=Secrets(secrets or {}))
    registry.register(Serverless)
    return registry


@contextlib.asynccontextmanager
async def opened(
    settings: dict[str, Any] | None = None, secrets: dict[str, str] | None = None
) -> AsyncIterator[Registry]:
    registry = serverless_registry(settings, secrets)
    try:
        yield registry
    finally:
        await registry.shutdown()
