"""Real grpcio (grpc.aio) servers for the grpc executor's tests.

The protobuf modules are generated from ``protos/echo.proto`` with grpc_tools.protoc into a
temporary directory when the session starts; nothing generated is committed.
"""

from __future__ import annotations

import asyncio
import datetime
import importlib
import ipaddress
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from tests.support import require

grpc = require("grpc")
require("grpc_tools")
require("grpc_reflection")
require("grpc_health")

from grpc_health.v1 import health_pb2, health_pb2_grpc  # noqa: E402
from grpc_health.v1._async import HealthServicer  # noqa: E402
from grpc_reflection.v1alpha import reflection  # noqa: E402

from workplex.config import parse_config  # noqa: E402
from workplex.executors.grpc import Grpc  # noqa: E402
from workplex.registry import Registry  # noqa: E402

PROTOS = Path(__file__).parent / "protos"


@dataclass
class Protos:
    pb2: ModuleType
    pb2_grpc: ModuleType
    descriptor_set: Path


@pytest.fixture(scope="session")
def protos(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Protos]:
    import grpc_tools
    from grpc_tools import protoc

    out = tmp_path_factory.mktemp("grpc_gen")
    well_known = Path(grpc_tools.__file__).parent / "_proto"
    descriptor_set = out / "echo.pb"
    args = [
        "protoc",
        f"-I{PROTOS}",
        f"-I{well_known}",
        f"--python_out={out}",
        f"--grpc_python_out={out}",
        f"--descriptor_set_out={descriptor_set}",
        "--include_imports",
        str(PROTOS / "echo.proto"),
    ]
    assert protoc.main(args) == 0, "protoc failed on echo.proto"
    sys.path.insert(0, str(out))
    try:
        pb2 = importlib.import_module("echo_pb2")
        pb2_grpc = importlib.import_module("echo_pb2_grpc")
        yield Protos(pb2, pb2_grpc, descriptor_set)
    finally:
        sys.path.remove(str(out))


@dataclass
class ServerState:
    port: int
    reflection_calls: int = 0
    slow_cancelled: asyncio.Event = field(default_factory=asyncio.Event)
    calls: list[str] = field(default_factory=list)

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"


def make_servicer(protos: Protos, state: ServerState) -> Any:
    pb2 = protos.pb2

    class EchoServicer(protos.pb2_grpc.EchoServicer):  # type: ignore[name-defined,misc]
        async def Say(self, request: Any, context: Any) -> Any:
            state.calls.append("Say")
            md = {k: v for k, v in context.invocation_metadata() if not k.endswith("-bin")}
            await context.send_initial_metadata((("x-initial", "hello"),))
            context.set_trailing_metadata((("x-served-by", "echo-test"),))
            reply = pb2.SayReply(text=request.text * max(request.repeat, 1), metadata=md)
            if request.HasField("sent_at"):
                reply.sent_at.CopyFrom(request.sent_at)
            return reply

        async def Count(self, request: Any, context: Any) -> Any:
            for n in range(1, request.upto + 1):
                yield pb2.CountReply(n=n)

        async def Slow(self, request: Any, context: Any) -> Any:
            try:
                await asyncio.Event().wait()  # until the caller gives up
            except asyncio.CancelledError:
                state.slow_cancelled.set()
                raise
            return pb2.SayReply()  # pragma: no cover

        async def Fail(self, request: Any, context: Any) -> Any:
            await context.abort(grpc.StatusCode[request.code], request.message)

    return EchoServicer()


class _CountReflection(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    def __init__(self, state: ServerState) -> None:
        self.state = state

    async def intercept_service(self, continuation: Any, details: Any) -> Any:
        if details.method.endswith("ServerReflectionInfo"):
            self.state.reflection_calls += 1
        return await continuation(details)


async def start_server(
    protos: Protos,
    *,
    reflection_on: bool = True,
    credentials: Any = None,
) -> tuple[Any, ServerState]:
    state = ServerState(port=0)
    server = grpc.aio.server(interceptors=[_CountReflection(state)])
    protos.pb2_grpc.add_EchoServicer_to_server(make_servicer(protos, state), server)
    health = HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    if reflection_on:
        names = (
            protos.pb2.DESCRIPTOR.services_by_name["Echo"].full_name,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        )
        reflection.enable_server_reflection(names, server)
    if credentials is None:
        state.port = server.add_insecure_port("127.0.0.1:0")
    else:
        state.port = server.add_secure_port("127.0.0.1:0", credentials)
    assert state.port > 0
    await server.start()
    return server, state


@pytest.fixture
async def echo_server(protos: Protos) -> AsyncIterator[ServerState]:
    server, state = await start_server(protos)
    try:
        yield state
    finally:
        await server.stop(None)


@pytest.fixture
async def bare_server(protos: Protos) -> AsyncIterator[ServerState]:
    """The same service without reflection: only a descriptor set can drive it."""
    server, state = await start_server(protos, reflection_on=False)
    try:
        yield state
    finally:
        await server.stop(None)


def grpc_registry(settings: dict[str, Any] | None = None) -> Registry:
    config = parse_config({"executors": {"grpc": settings or {}}})
    registry = Registry(config, discover=False)
    registry.register(Grpc)
    return registry


@pytest.fixture
async def registry() -> AsyncIterator[Registry]:
    reg = grpc_registry()
    try:
        yield reg
    finally:
        await reg.shutdown()


# ---- TLS material ----------------------------------------------------------------------
@dataclass
class Pki:
    ca_pem: bytes
    server_cert: bytes
    server_key: bytes
    client_cert: bytes
    client_key: bytes
    other_ca_pem: bytes


def _key() -> Any:
    from cryptography.hazmat.primitives.asymmetric import ec

    return ec.generate_private_key(ec.SECP256R1())


def _pem_key(key: Any) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )


def _cert(
    subject_cn: str,
    key: Any,
    issuer: tuple[Any, Any] | None,
    *,
    ca: bool,
    sans: list[Any] | None = None,
    client: bool = False,
) -> Any:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject_cn)])
    issuer_name, issuer_key = (issuer[0].subject, issuer[1]) if issuer else (name, key)
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    if not ca:
        usage = ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


@pytest.fixture(scope="session")
def pki() -> Pki:
    """A self-signed CA, a server certificate for 127.0.0.1/localhost, a client certificate."""
    require("cryptography")
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    pem = serialization.Encoding.PEM
    ca_key = _key()
    ca = _cert("workplex test CA", ca_key, None, ca=True)
    server_key = _key()
    server = _cert(
        "localhost",
        server_key,
        (ca, ca_key),
        ca=False,
        sans=[x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))],
    )
    client_key = _key()
    client = _cert("workplex client", client_key, (ca, ca_key), ca=False, client=True)
    other_key = _key()
    other_ca = _cert("some other CA", other_key, None, ca=True)
    return Pki(
        ca_pem=ca.public_bytes(pem),
        server_cert=server.public_bytes(pem),
        server_key=_pem_key(server_key),
        client_cert=client.public_bytes(pem),
        client_key=_pem_key(client_key),
        other_ca_pem=other_ca.public_bytes(pem),
    )
