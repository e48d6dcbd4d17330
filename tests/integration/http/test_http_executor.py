"""The http executor against a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import asyncio
import base64
import email.utils
import time
import uuid

import pytest

from workplex.errors import RetryableError
from workplex.executor import Context
from workplex.executors.http import HttpInput

from .conftest import HttpServer, MakeRegistry, ok, run, wait_until


@pytest.mark.parametrize("method", ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"])
async def test_methods(make_registry: MakeRegistry, http_server: HttpServer, method: str) -> None:
    out = await ok(make_registry(), {"method": method.lower(), "url": http_server.url("/echo")})
    assert out["status"] == 200
    assert out["body"]["method"] == method


async def test_params_headers_and_bodies(make_registry: MakeRegistry, http_server: HttpServer) -> None:
    reg = make_registry()
    out = await ok(
        reg,
        {
            "url": http_server.url("/echo"),
            "params": {"a": "1", "tag": ["x", "y"]},
            "headers": {"X-Token": "abc"},
        },
    )
    echoed = out["body"]
    assert echoed["query"] == {"a": ["1"], "tag": ["x", "y"]}
    assert echoed["headers"]["x-token"] == "abc"
    assert out["body_encoding"] == "json"
    assert out["headers"]["content-type"] == "application/json"
    assert out["url"] == http_server.url("/echo?a=1&tag=x&tag=y")
    assert out["elapsed"] > 0

    sent = await ok(reg, {"method": "POST", "url": http_server.url("/echo"), "json": {"k": [1, None]}})
    assert sent["body"]["headers"]["content-type"] == "application/json"
    assert sent["body"]["body"].replace(" ", "") == '{"k":[1,null]}'

    raw = await ok(
        reg,
        {
            "method": "POST",
            "url": http_server.url("/echo"),
            "body": "plain text",
            "headers": {"content-type": "text/plain"},
        },
    )
    assert raw["body"]["body"] == "plain text"

    form = await ok(reg, {"method": "POST", "url": http_server.url("/echo"), "form": {"a": "1", "b": "x y"}})
    assert form["body"]["headers"]["content-type"] == "application/x-www-form-urlencoded"
    assert form["body"]["body"] == "a=1&b=x+y"


async def test_body_kinds(make_registry: MakeRegistry, http_server: HttpServer) -> None:
    reg = make_registry()
    text = await ok(reg, {"url": http_server.url("/text")})
    assert (text["body"], text["body_encoding"]) == ("héllo", "text")
    binary = await ok(reg, {"url": http_server.url("/binary")})
    assert binary["body_encoding"] == "base64"
    assert base64.b64decode(binary["body"]) == bytes(range(256))


async def test_two_body_kinds_are_refused(make_registry: MakeRegistry, http_server: HttpServer) -> None:
    result = await run(make_registry(), {"url": http_server.url("/echo"), "json": {}, "body": "x"})
    assert result.error is not None and result.error.type == "ValidationError"
    assert "json, body" in result.error.message


async def test_statuses(make_registry: MakeRegistry, http_server: HttpServer) -> None:
    reg = make_registry()
    missing = await ok(reg, {"url": http_server.url("/status/404")})
    assert missing["status"] == 404 and missing["body"] == "status"

    strict = await run(reg, {"url": http_server.url("/status/404"), "raise_for_status": True})
    assert strict.error is not None and strict.error.type == "PermanentError"
    assert "HTTP 404" in strict.error.message

    expected = await run(reg, {"url": http_server.url("/status/200"), "expect_status": [201]})
    assert expected.error is not None and expected.error.type == "PermanentError"

    strict_reg = make_registry(raise_for_status=True)
    server_error = await run(strict_reg, {"url": http_server.url("/status/500")})
    assert server_error.error is not None and server_error.error.type == "PermanentError"
    lenient = await ok(strict_reg, {"url": http_server.url("/status/500"), "raise_for_status": False})
    assert lenient["status"] == 500


@pytest.mark.parametrize("status", [429, 502, 503, 504])
async def test_retryable_statuses_carry_retry_after(
    make_registry: MakeRegistry, http_server: HttpServer, status: int
) -> None:
    executor = await make_registry().start("http")
    model = HttpInput.model_validate({"url": http_server.url(f"/status/{status}?retry_after=7")})
    with pytest.raises(RetryableError) as caught:
        await executor.execute(model, Context())
    assert caught.value.retry_after == 7.0
    assert caught.value.details["status"] == status


async def test_retry_after_as_http_date(make_registry: MakeRegistry, http_server: HttpServer) -> None:
    executor = await make_registry().start("http")
    when = email.utils.formatdate(time.time() + 30, usegmt=True)
    model = HttpInput.model_validate({"url": http_server.url("/status/503"), "params": {"retry_after": when}})
    with pytest.raises(RetryableError) as caught:
        await executor.execute(model, Context())
    assert caught.value.retry_after is not None
    assert 20.0 < caught.value.retry_after <= 31.0


async def test_503_then_success_through_the_retry_overlay(
    make_registry: MakeRegistry, http_server: HttpServer
) -> None:
    reg = make_registry(overlays={"retry": {"max_attempts": 4, "initial_delay": 0.01, "max_delay": 1}})
    key = uuid.uuid4().hex
    result = await run(reg, {"url": http_server.url(f"/flaky/{key}?fail=2&ra=0")})
    assert result.success, result.error
    assert result.output["body"] == {"calls": 3}
    assert result.metrics is not None and result.metrics.attempts == 3
    assert http_server.state.hits[f"/flaky/{key}"] == 3


async def test_redirects(make_registry: MakeRegistry, http_server: HttpServer) -> None:
    reg = make_registry(max_redirects=3)
    followed = await ok(reg, {"url": http_server.url("/redirect/3")})
    assert followed["status"] == 200 and followed["url"] == http_server.url("/echo")

    unfollowed = await ok(reg, {"url": http_server.url("/redirect/3"), "follow_redirects": False})
    assert unfollowed["status"] == 302 and unfollowed["headers"]["location"] == "/redirect/2"

    too_many = await run(reg, {"url": http_server.url("/redirect/4")})
    assert too_many.error is not None and too_many.error.type == "PermanentError"
    assert "more than 3 redirects" in too_many.error.message


async def test_guard_checks_each_redirect_hop(make_registry: MakeRegistry, http_server: HttpServer) -> None:
    probe = f"/echo?probe={uuid.uuid4().hex}"
    hop = http_server.url(probe, host="127.0.0.2")
    payload = {"url": http_server.url("/redirect-to"), "params": {"url": hop}}

    refused = await run(make_registry(), payload)
    assert refused.error is not None and refused.error.type == "PermanentError"
    assert "127.0.0.2" in refused.error.message
    assert http_server.state.hits[probe] == 0  # the refused hop never reached the server

    allowed = await ok(make_registry(allow_private_networks=["127.0.0.0/8"]), payload)
    assert allowed["url"] == hop
    assert http_server.state.hits[probe] == 1


async def test_guard_refuses_loopback_literal_and_through_dns(
    make_registry: MakeRegistry, http_server: HttpServer
) -> None:
    reg = make_registry(allow_private_networks=False)
    probe = f"/echo?probe={uuid.uuid4().hex}"
    literal = await run(reg, {"url": http_server.url(probe)})
    assert literal.error is not None and literal.error.type == "PermanentError"
    assert "refused 127.0.0.1" in literal.error.message

    by_name = await run(reg, {"url": http_server.url(probe, host="localhost")})
    assert by_name.error is not None and by_name.error.type == "PermanentError"
    assert "localhost: it resolves to" in by_name.error.message
    assert http_server.state.hits[probe] == 0

    by_cidr = make_registry(allow_private_networks=["127.0.0.0/8", "::1"])
    out = await ok(by_cidr, {"url": http_server.url(probe, host="localhost")})
    assert out["status"] == 200
    by_host = make_registry(allow_private_networks=["localhost"])
    out = await ok(by_host, {"url": http_server.url(probe, host="localhost")})
    assert out["status"] == 200
    assert http_server.state.hits[probe] == 2


async def test_timeouts(make_registry: MakeRegistry, http_server: HttpServer) -> None:
    reg = make_registry()
    total = await run(reg, {"url": http_server.url("/slow?delay=10&key=t1"), "timeout": 0.3})
    assert total.error is not None and total.error.type == "TaskTimeoutError"

    read = await run(
        reg, {"url": http_server.url("/drip?chunks=3&interval=1"), "read_timeout": 0.3}
    )
    assert read.error is not None and read.error.type == "TaskTimeoutError"

    quick = await ok(reg, {"url": http_server.url("/slow?delay=0&key=t2"), "timeout": 5})
    assert quick["body"] == "slow done"


async def test_body_cap(make_registry: MakeRegistry, http_server: HttpServer) -> None:
    reg = make_registry(max_body_size=10_000)
    streamed = await run(reg, {"url": http_server.url("/big?size=2000000")})
    assert streamed.error is not None and streamed.error.type == "PermanentError"
    assert "max_body_size" in streamed.error.message
    declared = await run(reg, {"url": http_server.url("/big?size=20000&declared=1")})
    assert declared.error is not None and "20000 bytes" in declared.error.message
    fits = await ok(reg, {"url": http_server.url("/big?size=10000")})
    assert len(base64.b64decode(fits["body"])) == 10_000


async def test_cancellation_closes_the_request(
    make_registry: MakeRegistry, http_server: HttpServer
) -> None:
    reg = make_registry()
    await reg.start("http")
    key = uuid.uuid4().hex
    task = asyncio.ensure_future(run(reg, {"url": http_server.url(f"/slow?delay=30&key={key}")}))
    await wait_until(lambda: key in http_server.state.started, "the request to arrive")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await wait_until(lambda: key in http_server.state.disconnected, "the server to see the close")


async def test_keepalive_pool_reuses_one_connection(
    make_registry: MakeRegistry, http_server: HttpServer
) -> None:
    reg = make_registry()
    before = len(http_server.state.client_ports)
    for _ in range(20):
        await ok(reg, {"url": http_server.url("/status/200")})
    ports = set(http_server.state.client_ports[before:])
    assert len(http_server.state.client_ports) - before == 20
    assert len(ports) == 1


async def test_health_follows_the_client(make_registry: MakeRegistry) -> None:
    reg = make_registry()
    executor = await reg.start("http")
    assert await executor.health_check() is True
    await reg.shutdown()
    assert await executor.health_check() is False
