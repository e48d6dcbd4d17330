"""Every http error names the request (method, URL), the status and final URL when a
response had arrived, and a reason in words, against the real test server."""

from __future__ import annotations

import uuid

from tests.support import free_port

from .conftest import HttpServer, MakeRegistry, run


async def test_declared_body_over_the_cap(http_server: HttpServer, make_registry: MakeRegistry) -> None:
    reg = make_registry()
    url = http_server.url("/big?size=5000000&declared=1")
    result = await run(reg, {"url": url})
    err = result.error
    assert err is not None and err.type == "PermanentError"
    assert err.message.startswith(f"GET {url}: "), err.message
    assert "5000000 bytes is over max_body_size (1048576 bytes)" in err.message
    assert "HTTP 200" in err.message
    assert err.details == {"method": "GET", "url": url, "status": 200}


async def test_streamed_body_over_the_cap(http_server: HttpServer, make_registry: MakeRegistry) -> None:
    reg = make_registry(max_body_size=10_000)
    url = http_server.url("/big?size=50000")
    result = await run(reg, {"method": "post", "url": url})
    err = result.error
    assert err is not None and err.type == "PermanentError"
    assert err.message.startswith(f"POST {url}: "), err.message
    assert "over max_body_size (10000 bytes); reading stopped" in err.message
    assert err.details == {"method": "POST", "url": url, "status": 200}


async def test_read_timeout_before_the_headers(http_server: HttpServer, make_registry: MakeRegistry) -> None:
    reg = make_registry()
    url = http_server.url(f"/slow?delay=5&key={uuid.uuid4().hex}")
    result = await run(reg, {"url": url, "read_timeout": 0.3, "timeout": 10})
    err = result.error
    assert err is not None and err.type == "TaskTimeoutError"
    assert err.message == f"GET {url}: ReadTimeout: no data within the read timeout (0.3s)"
    # No response arrived: no status to report.
    assert err.details == {"method": "GET", "url": url}


async def test_read_timeout_in_the_body(http_server: HttpServer, make_registry: MakeRegistry) -> None:
    reg = make_registry()
    url = http_server.url("/drip?chunks=3&interval=1")
    result = await run(reg, {"url": url, "read_timeout": 0.3, "timeout": 10})
    err = result.error
    assert err is not None and err.type == "TaskTimeoutError"
    assert err.message.startswith(f"GET {url}: ReadTimeout: no data within the read timeout (0.3s)")
    assert "HTTP 200" in err.message
    assert err.details == {"method": "GET", "url": url, "status": 200}


async def test_too_many_redirects(http_server: HttpServer, make_registry: MakeRegistry) -> None:
    reg = make_registry(max_redirects=2)
    url = http_server.url("/redirect/10")
    result = await run(reg, {"url": url})
    err = result.error
    assert err is not None and err.type == "PermanentError"
    # /redirect/10 → 9 → 8 were followed; 8 points on to 7, one hop too many.
    last = http_server.url("/redirect/8")
    assert err.message.startswith(f"GET {url}: more than 2 redirects"), err.message
    assert http_server.url("/redirect/7") in err.message
    assert f"HTTP 302 from {last}" in err.message
    assert err.details == {"method": "GET", "url": last, "status": 302}


async def test_refused_connection_names_the_request(make_registry: MakeRegistry) -> None:
    reg = make_registry()
    url = f"http://127.0.0.1:{free_port()}/nothing"
    result = await run(reg, {"method": "DELETE", "url": url, "timeout": 5})
    err = result.error
    assert err is not None and err.type == "RetryableError"
    assert err.message.startswith(f"DELETE {url}: ConnectError"), err.message
    assert err.details == {"method": "DELETE", "url": url}


async def test_status_errors_carry_the_method_too(http_server: HttpServer, make_registry: MakeRegistry) -> None:
    reg = make_registry()
    url = http_server.url("/status/418")
    result = await run(reg, {"method": "PUT", "url": url, "expect_status": [200]})
    err = result.error
    assert err is not None and err.type == "PermanentError"
    assert err.message.startswith(f"PUT {url}: HTTP 418"), err.message
    assert err.details == {"method": "PUT", "url": url, "status": 418}
