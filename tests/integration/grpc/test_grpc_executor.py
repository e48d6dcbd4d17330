"""The grpc executor against real grpcio servers on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import grpc
import pytest

from tests.support import free_port
from workplex.executor import Task
from workplex.registry import Registry

from .conftest import Pki, Protos, ServerState, grpc_registry, start_server

SAY = "workplex.test.Echo/Say"


async def run(registry: Registry, payload: dict[str, Any]) -> Any:
    return await registry.execute(Task("grpc", payload))


async def test_unary_call_through_reflection(registry: Registry, echo_server: ServerState) -> None:
    result = await run(
        registry,
        {
            "endpoint": echo_server.endpoint,
            "method": SAY,
            "request": {"text": "ab", "repeat": 3, "sent_at": "2024-05-01T12:00:00Z"},
        },
    )
    assert result.success, result.error
    out = result.output
    assert out["code"] == "OK"
    assert out["response"]["text"] == "ababab"
    # An imported well-known type (Timestamp) round-trips: reflection sent the dependency.
    assert out["response"]["sent_at"] == "2024-05-01T12:00:00Z"
    assert out["responses"] is None
    assert out["metadata"]["initial"]["x-initial"] == "hello"
    assert out["metadata"]["trailing"]["x-served-by"] == "echo-test"


async def test_descriptors_and_channel_are_reused(
    registry: Registry, echo_server: ServerState
) -> None:
    payloads = [
        {"endpoint": echo_server.endpoint, "method": SAY, "request": {"text": str(i)}}
        for i in range(20)
    ]
    results = await asyncio.gather(*(run(registry, p) for p in payloads))
    assert [r.output["response"]["text"] for r in results] == [str(i) for i in range(20)]
    # Concurrent first calls share one reflection round trip and one channel.
    assert echo_server.reflection_calls == 1
    assert len(registry.get("grpc")._channels) == 1  # type: ignore[attr-defined]


async def test_standard_health_service_through_reflection(
    registry: Registry, echo_server: ServerState
) -> None:
    result = await run(
        registry,
        {"endpoint": echo_server.endpoint, "method": "grpc.health.v1.Health/Check"},
    )
    assert result.success, result.error
    assert result.output["response"] == {"status": "SERVING"}


async def test_server_streaming_collects_every_message(
    registry: Registry, echo_server: ServerState
) -> None:
    result = await run(
        registry,
        {
            "endpoint": echo_server.endpoint,
            "method": "workplex.test.Echo/Count",
            "request": {"upto": 5},
        },
    )
    assert result.success, result.error
    assert result.output["response"] is None
    assert result.output["responses"] == [{"n": n} for n in range(1, 6)]


async def test_metadata_reaches_the_server(registry: Registry, echo_server: ServerState) -> None:
    result = await run(
        registry,
        {
            "endpoint": echo_server.endpoint,
            "method": SAY,
            "request": {"text": "x"},
            "metadata": {"X-Request-Id": "req-42", "tenant": "blue"},
        },
    )
    assert result.success, result.error
    seen = result.output["response"]["metadata"]
    assert seen["x-request-id"] == "req-42"
    assert seen["tenant"] == "blue"


async def test_descriptor_set_drives_a_server_without_reflection(
    protos: Protos, bare_server: ServerState
) -> None:
    payload = {"endpoint": bare_server.endpoint, "method": SAY, "request": {"text": "hi"}}
    reg = grpc_registry()
    try:
        refused = await run(reg, payload)
        assert not refused.success
        assert refused.error.type == "PermanentError"
        assert "no server reflection" in refused.error.message
        assert "descriptor_set" in refused.error.message

        given = await run(reg, {**payload, "descriptor_set": str(protos.descriptor_set)})
        assert given.success, given.error
        assert given.output["response"]["text"] == "hi"
    finally:
        await reg.shutdown()
    # The same file given once in the config serves every task.
    reg = grpc_registry({"descriptor_set": str(protos.descriptor_set)})
    try:
        streamed = await run(
            reg,
            {
                "endpoint": bare_server.endpoint,
                "method": "workplex.test.Echo/Count",
                "request": {"upto": 2},
            },
        )
        assert streamed.success, streamed.error
        assert streamed.output["responses"] == [{"n": 1}, {"n": 2}]
    finally:
        await reg.shutdown()
    assert bare_server.reflection_calls == 1  # only the refused attempt asked


async def test_deadline_exceeded_is_a_timeout_and_cancels_the_server_call(
    registry: Registry, echo_server: ServerState
) -> None:
    result = await run(
        registry,
        {
            "endpoint": echo_server.endpoint,
            "method": "workplex.test.Echo/Slow",
            "request": {"text": "zzz"},
            "timeout": 0.3,
        },
    )
    assert not result.success
    assert result.error.type == "TaskTimeoutError"
    assert result.error.retryable
    assert "DEADLINE_EXCEEDED" in result.error.message
    assert result.error.details["code"] == "DEADLINE_EXCEEDED"
    await asyncio.wait_for(echo_server.slow_cancelled.wait(), 10)


@pytest.mark.parametrize(
    ("code", "error_type", "retryable"),
    [
        ("INVALID_ARGUMENT", "PermanentError", False),
        ("NOT_FOUND", "PermanentError", False),
        ("RESOURCE_EXHAUSTED", "RetryableError", True),
        ("UNAVAILABLE", "RetryableError", True),
    ],
)
async def test_error_status_is_classified(
    registry: Registry, echo_server: ServerState, code: str, error_type: str, retryable: bool
) -> None:
    result = await run(
        registry,
        {
            "endpoint": echo_server.endpoint,
            "method": "workplex.test.Echo/Fail",
            "request": {"code": code, "message": f"told to fail with {code}"},
        },
    )
    assert not result.success
    assert result.error.type == error_type
    assert result.error.retryable is retryable
    assert code in result.error.message
    assert f"told to fail with {code}" in result.error.message
    assert result.error.details == {
        "code": code,
        "details": f"told to fail with {code}",
        "endpoint": echo_server.endpoint,
    }


async def test_no_server_is_unavailable_and_retryable(registry: Registry, protos: Protos) -> None:
    endpoint = f"127.0.0.1:{free_port()}"
    for extra in ({}, {"descriptor_set": str(protos.descriptor_set)}):
        result = await run(registry, {"endpoint": endpoint, "method": SAY, "timeout": 5, **extra})
        assert not result.success
        assert result.error.type == "RetryableError", result.error
        assert "UNAVAILABLE" in result.error.message


async def test_bad_inputs_name_the_field(registry: Registry, echo_server: ServerState) -> None:
    bad_shape = await run(registry, {"endpoint": echo_server.endpoint, "method": "NoSlash"})
    assert not bad_shape.success
    assert bad_shape.error.type == "ValidationError"
    assert "method" in bad_shape.error.message

    unknown = await run(
        registry, {"endpoint": echo_server.endpoint, "method": "workplex.test.Echo/Nope"}
    )
    assert unknown.error.type == "PermanentError"
    assert "Nope" in unknown.error.message and "Say" in unknown.error.message

    no_service = await run(
        registry, {"endpoint": echo_server.endpoint, "method": "workplex.test.Missing/Say"}
    )
    assert no_service.error.type == "PermanentError"
    assert "workplex.test.Missing" in no_service.error.message

    wrong_request = await run(
        registry,
        {"endpoint": echo_server.endpoint, "method": SAY, "request": {"txet": "typo"}},
    )
    assert wrong_request.error.type == "PermanentError"
    assert wrong_request.error.message.startswith("request:")
    assert "txet" in wrong_request.error.message


# ---- TLS -------------------------------------------------------------------------------
def _write(tmp_path: Path, name: str, data: bytes) -> str:
    path = tmp_path / name
    path.write_bytes(data)
    return str(path)


async def test_tls_with_a_self_signed_ca(
    registry: Registry, protos: Protos, pki: Pki, tmp_path: Path
) -> None:
    creds = grpc.ssl_server_credentials([(pki.server_key, pki.server_cert)])
    server, state = await start_server(protos, credentials=creds)
    try:
        payload = {"method": SAY, "request": {"text": "secure"}}
        ok = await run(
            registry,
            {
                **payload,
                "endpoint": f"localhost:{state.port}",
                "tls": {"ca_cert": _write(tmp_path, "ca.pem", pki.ca_pem)},
            },
        )
        assert ok.success, ok.error
        assert ok.output["response"]["text"] == "secure"

        # By IP address, checked against the certificate's IP SAN; the CA as PEM text.
        by_ip = await run(
            registry,
            {**payload, "endpoint": state.endpoint, "tls": {"ca_cert": pki.ca_pem.decode()}},
        )
        assert by_ip.success, by_ip.error

        untrusted = await run(
            registry,
            {
                **payload,
                "endpoint": state.endpoint,
                "tls": {"ca_cert": pki.other_ca_pem.decode()},
                "timeout": 5,
            },
        )
        assert not untrusted.success
        assert untrusted.error.details["code"] == "UNAVAILABLE"

        plaintext = await run(registry, {**payload, "endpoint": state.endpoint, "timeout": 5})
        assert not plaintext.success
    finally:
        await server.stop(None)


async def test_mutual_tls_needs_the_client_certificate(
    registry: Registry, protos: Protos, pki: Pki, tmp_path: Path
) -> None:
    creds = grpc.ssl_server_credentials(
        [(pki.server_key, pki.server_cert)], root_certificates=pki.ca_pem, require_client_auth=True
    )
    server, state = await start_server(protos, credentials=creds)
    try:
        tls = {
            "ca_cert": pki.ca_pem.decode(),
            "client_cert": _write(tmp_path, "client.pem", pki.client_cert),
            "client_key": _write(tmp_path, "client.key", pki.client_key),
            "server_name": "localhost",
        }
        payload = {"endpoint": state.endpoint, "method": SAY, "request": {"text": "m"}}
        ok = await run(registry, {**payload, "tls": tls})
        assert ok.success, ok.error
        assert ok.output["response"]["text"] == "m"

        no_client_cert = await run(
            registry, {**payload, "tls": {"ca_cert": pki.ca_pem.decode()}, "timeout": 5}
        )
        assert not no_client_cert.success
        assert no_client_cert.error.retryable  # the handshake failure surfaces as UNAVAILABLE

        half = await run(
            registry,
            {**payload, "tls": {"ca_cert": pki.ca_pem.decode(), "client_cert": tls["client_cert"]}},
        )
        assert half.error.type == "PermanentError"
        assert "client_key" in half.error.message
    finally:
        await server.stop(None)


async def test_result_is_plain_json(registry: Registry, echo_server: ServerState) -> None:
    result = await run(
        registry, {"endpoint": echo_server.endpoint, "method": SAY, "request": {"text": "j"}}
    )
    assert json.loads(json.dumps(result.to_dict()))["output"]["response"]["text"] == "j"
