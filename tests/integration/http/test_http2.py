"""The http executor's optional HTTP/2, against a real HTTP/2 server over TLS.

hypercorn serves a tiny ASGI app on 127.0.0.1 with a certificate signed by a CA made in
the test; h2 is negotiated through ALPN. The same server answers HTTP/1.1 when the
executor does not offer h2, so the version assertion can fail.
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support import require

from .conftest import MakeRegistry, Receive, Scope, Send, ok

hypercorn_asyncio = require("hypercorn.asyncio")
hypercorn_config = require("hypercorn.config")
require("cryptography")


@dataclass
class TlsFiles:
    ca: Path
    cert: Path
    key: Path


def _make_tls(directory: Path) -> TlsFiles:
    """A self-signed CA and a server certificate for 127.0.0.1 signed by it."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.UTC)

    def build(cn: str, key: Any, issuer: Any, issuer_key: Any, *, ca: bool) -> Any:
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
        builder = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(issuer.subject if issuer is not None else name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if ca:
            builder = builder.add_extension(
                x509.KeyUsage(
                    digital_signature=True, content_commitment=False, key_encipherment=False,
                    data_encipherment=False, key_agreement=False, key_cert_sign=True,
                    crl_sign=True, encipher_only=False, decipher_only=False,
                ),
                critical=True,
            )
        else:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False,
            ).add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
            )
        return builder.sign(issuer_key if issuer_key is not None else key, hashes.SHA256())

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = build("workplex http2 test CA", ca_key, None, None, ca=True)
    server_key = ec.generate_private_key(ec.SECP256R1())
    server = build("127.0.0.1", server_key, ca, ca_key, ca=False)
    files = TlsFiles(directory / "ca.pem", directory / "server.pem", directory / "server.key")
    files.ca.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    files.cert.write_bytes(server.public_bytes(serialization.Encoding.PEM))
    files.key.write_bytes(
        server_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return files


async def _app(scope: Scope, receive: Receive, send: Send) -> None:
    """Answers with the protocol version the server saw (``2`` or ``1.1``)."""
    if scope["type"] != "http":
        return
    body = f'{{"server_saw": "{scope["http_version"]}"}}'.encode()
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


@dataclass
class H2Server:
    url: str
    ca: Path


@pytest.fixture(scope="module")
def h2_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[H2Server]:
    tls = _make_tls(tmp_path_factory.mktemp("h2-tls"))
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = hypercorn_config.Config()
    # Hand hypercorn the bound socket (it owns and closes it): no window in which another
    # process could take the port.
    config.bind = [f"fd://{sock.detach()}"]
    config.certfile = str(tls.cert)
    config.keyfile = str(tls.key)
    config.alpn_protocols = ["h2", "http/1.1"]
    config.accesslog = None
    config.errorlog = None
    config.graceful_timeout = 1

    loop = asyncio.new_event_loop()
    stop = asyncio.Event()
    failure: list[BaseException] = []

    def serve() -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(
                hypercorn_asyncio.serve(_app, config, shutdown_trigger=stop.wait)  # type: ignore[arg-type]
            )
        except BaseException as exc:  # reported by the fixture, not lost in the thread
            failure.append(exc)
        finally:
            loop.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while True:  # poll until the TLS port answers
            if failure or not thread.is_alive():
                raise RuntimeError(f"the HTTP/2 test server did not start: {failure}")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError("the HTTP/2 test server did not answer") from None
                time.sleep(0.02)  # polling interval, not synchronisation
        yield H2Server(f"https://127.0.0.1:{port}/version", tls.ca)
    finally:
        if thread.is_alive():
            loop.call_soon_threadsafe(stop.set)
        thread.join(timeout=10)


async def test_http2_is_negotiated_over_tls(
    make_registry: MakeRegistry, h2_server: H2Server
) -> None:
    reg = make_registry(http2=True, verify=str(h2_server.ca), allow_private_networks=["127.0.0.1"])
    out = await ok(reg, {"url": h2_server.url})
    assert out["http_version"] == "HTTP/2"
    assert out["body"] == {"server_saw": "2"}
    # A second call goes over the same multiplexed connection and stays HTTP/2.
    again = await ok(reg, {"url": h2_server.url})
    assert again["http_version"] == "HTTP/2"


async def test_without_http2_the_same_server_speaks_http1(
    make_registry: MakeRegistry, h2_server: H2Server
) -> None:
    reg = make_registry(verify=str(h2_server.ca), allow_private_networks=["127.0.0.1"])
    out = await ok(reg, {"url": h2_server.url})
    assert out["http_version"] == "HTTP/1.1"
    assert out["body"] == {"server_saw": "1.1"}


async def test_an_unknown_ca_is_refused(make_registry: MakeRegistry, h2_server: H2Server) -> None:
    from .conftest import run

    result = await run(make_registry(http2=True), {"url": h2_server.url})
    assert result.error is not None
    assert "CERTIFICATE_VERIFY_FAILED" in result.error.message
