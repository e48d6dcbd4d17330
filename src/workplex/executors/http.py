"""``http``: one HTTP request through a pooled ``httpx.AsyncClient``.

The executor holds one client (one keep-alive pool, optionally HTTP/2) for all tasks; it
is created at ``startup`` and closed at ``shutdown``.

Status handling: 429, 502, 503 and 504 (config ``retry_statuses``) raise
``RetryableError`` with ``retry_after`` taken from the ``Retry-After`` header, so the retry
overlay can wait as the server asks. Any other status is an outcome returned as output,
unless ``raise_for_status`` (config or input) is set, which turns 4xx/5xx into
``PermanentError``, or ``expect_status`` lists the statuses that count as success.

The private-address guard lives in the client's network layer: every new connection
resolves its host with the event loop's resolver, checks every answer, and connects to an
address it checked (never resolving again), so a DNS answer that changes between check and
connect cannot slip a private address in. Redirect hops open their own connections and
are checked the same way.
"""

from __future__ import annotations

import asyncio
import base64
import email.utils
import ipaddress
import json
import socket
import ssl
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from workplex.errors import MissingExtraError, PermanentError, RetryableError, TaskTimeoutError
from workplex.executor import Capabilities, Context, Executor, ExecutorConfig, SecurityLevel

if TYPE_CHECKING:
    import httpx
    from httpx import Response as _Response  # `httpx` is a local name inside execute()

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_TOKEN_CHARS = frozenset(
    "!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
)


class HttpInput(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    method: str = Field(default="GET", description="HTTP method (upper-cased).")
    url: str = Field(description="Absolute http:// or https:// URL.")
    params: dict[str, Any] | None = Field(
        default=None, description="Query parameters; a list value repeats the parameter."
    )
    headers: dict[str, str] | None = None
    json_body: Any = Field(
        default=None, alias="json", description="A JSON request body (sets Content-Type)."
    )
    body: str | None = Field(default=None, description="A raw text request body.")
    form: dict[str, Any] | None = Field(
        default=None, description="A form body (application/x-www-form-urlencoded)."
    )
    timeout: float | None = Field(
        default=None, gt=0, description="Total seconds for the whole call (config default)."
    )
    connect_timeout: float | None = Field(default=None, gt=0)
    read_timeout: float | None = Field(
        default=None, gt=0, description="Longest wait for the next chunk of the response."
    )
    follow_redirects: bool = Field(
        default=True, description="Follow redirects (at most config `max_redirects`)."
    )
    raise_for_status: bool | None = Field(
        default=None, description="4xx/5xx fail the task (PermanentError); config default."
    )
    expect_status: list[int] | None = Field(
        default=None, description="Statuses that count as success; any other fails the task."
    )

    @field_validator("method")
    @classmethod
    def _method(cls, v: str) -> str:
        if not v or not set(v) <= _TOKEN_CHARS:
            raise ValueError("must be an HTTP method token such as GET or POST")
        return v.upper()

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        scheme, sep, rest = v.partition("://")
        if not sep or scheme.lower() not in ("http", "https") or not rest:
            raise ValueError("must be an absolute http:// or https:// URL")
        return v

    @model_validator(mode="after")
    def _one_body(self) -> HttpInput:
        given = [n for n in ("json_body", "body", "form") if n in self.model_fields_set]
        if len(given) > 1:
            names = ", ".join("json" if n == "json_body" else n for n in given)
            raise ValueError(f"give at most one of json, body, form (got {names})")
        return self


class HttpOutput(BaseModel):
    status: int
    headers: dict[str, str]
    body: Any = Field(description="Parsed JSON, text, or base64 (see body_encoding).")
    body_encoding: Literal["json", "text", "base64"]
    url: str = Field(description="The final URL, after redirects.")
    http_version: str = Field(description="The protocol spoken: HTTP/1.1 or HTTP/2.")
    elapsed: float = Field(description="Seconds from sending to the last byte.")


class HttpConfig(ExecutorConfig):
    timeout_seconds: float = Field(default=30.0, gt=0)
    max_body_size: int = Field(default=1024 * 1024, gt=0, description="Response body cap (bytes).")
    allow_private_networks: bool | list[str] = Field(
        default=False,
        description="true, or a list of CIDRs / IP addresses / host names that may be private.",
    )
    max_connections: int = Field(default=100, gt=0)
    max_keepalive: int = Field(default=20, ge=0)
    keepalive_expiry: float = Field(default=5.0, ge=0)
    http2: bool = False
    max_redirects: int = Field(default=5, ge=0)
    verify: bool | str = Field(default=True, description="Verify TLS; or a CA bundle path.")
    raise_for_status: bool = False
    retry_statuses: list[int] = Field(default_factory=lambda: [429, 502, 503, 504])

    @field_validator("allow_private_networks")
    @classmethod
    def _allow(cls, v: bool | list[str]) -> bool | list[str]:
        if isinstance(v, list):
            _parse_allow_list(v)  # raises ValueError naming the bad entry
        return v


class GuardRefused(Exception):
    """A connection target that the private-address guard refuses."""


def _parse_allow_list(entries: Iterable[str]) -> tuple[list[IPNetwork], set[str]]:
    networks: list[IPNetwork] = []
    hosts: set[str] = set()
    for entry in entries:
        text = entry.strip()
        try:
            networks.append(ipaddress.ip_network(text, strict=False))
            continue
        except ValueError:
            pass
        if not text or "/" in text or " " in text:
            raise ValueError(f"{entry!r} is neither a CIDR, an IP address nor a host name")
        hosts.add(text.lower().rstrip("."))
    return networks, hosts


def _is_public(addr: IPAddress) -> bool:
    if isinstance(addr, ipaddress.IPv6Address):
        mapped = addr.ipv4_mapped or addr.sixtofour
        if mapped is not None:
            return _is_public(mapped)
    return addr.is_global and not addr.is_multicast


class AddressGuard:
    """Decides which resolved addresses a connection may use."""

    def __init__(self, allow: bool | list[str]) -> None:
        self.allow_all = allow is True
        self.networks, self.hosts = _parse_allow_list(allow if isinstance(allow, list) else [])

    def permitted(self, addr: IPAddress) -> bool:
        if _is_public(addr):
            return True
        return any(addr in net for net in self.networks if net.version == addr.version)

    async def resolve(self, host: str, port: int) -> list[str] | None:
        """The checked addresses to connect to, or None to let the host resolve normally
        (an allow-listed host name). Raises ``GuardRefused`` when any answer is refused."""
        name = host.strip("[]").lower().rstrip(".")
        if name in self.hosts:
            return None
        try:
            literal: IPAddress | None = ipaddress.ip_address(name)
        except ValueError:
            literal = None
        if literal is not None:
            if not self.permitted(literal):
                raise GuardRefused(
                    f"refused {host}: {literal} is a private, loopback, link-local or reserved "
                    f"address (allow it in executors.http.allow_private_networks)"
                )
            return [str(literal)]
        loop = asyncio.get_running_loop()
        infos = await loop.getaddrinfo(name, port, type=socket.SOCK_STREAM)
        addresses: list[str] = []
        for _family, _type, _proto, _canon, sockaddr in infos:
            ip = str(sockaddr[0]).split("%", 1)[0]
            addr = ipaddress.ip_address(ip)
            if not self.permitted(addr):
                raise GuardRefused(
                    f"refused {host}: it resolves to {addr}, a private, loopback, link-local or "
                    f"reserved address (allow it in executors.http.allow_private_networks)"
                )
            if ip not in addresses:
                addresses.append(ip)
        if not addresses:
            raise GuardRefused(f"refused {host}: no address found")
        return addresses


def _guarded_backend(guard: AddressGuard) -> Any:
    """An httpcore network backend that checks every new connection's addresses."""
    import httpcore

    # AnyIOBackend is what httpx uses under asyncio, and it is httpcore's public class.
    class GuardedBackend(httpcore.AnyIOBackend):
        async def connect_tcp(
            self,
            host: str,
            port: int,
            timeout: float | None = None,
            local_address: str | None = None,
            socket_options: Iterable[Any] | None = None,
        ) -> Any:
            try:
                async with asyncio.timeout(timeout):
                    addresses = await guard.resolve(host, port)
            except TimeoutError as exc:
                raise httpcore.ConnectTimeout(f"resolving {host} timed out") from exc
            except OSError as exc:
                raise httpcore.ConnectError(f"cannot resolve {host}: {exc}") from exc
            if addresses is None:
                return await super().connect_tcp(
                    host, port, timeout, local_address, socket_options
                )
            last: Exception | None = None
            # Connect to the checked address itself: no second lookup that could differ.
            for ip in addresses:
                try:
                    return await super().connect_tcp(
                        ip, port, timeout, local_address, socket_options
                    )
                except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                    last = exc
            assert last is not None
            raise last

    return GuardedBackend()


def parse_retry_after(value: str | None) -> float | None:
    """Seconds to wait from a Retry-After header (delta seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - time.time())


def _body_kind(content_type: str) -> Literal["json", "text", "base64"]:
    ctype = content_type.split(";", 1)[0].strip().lower()
    if ctype == "application/json" or ctype.endswith("+json"):
        return "json"
    if (
        not ctype
        or ctype.startswith("text/")
        or ctype.endswith(("+xml", "/xml", "/javascript", "/x-www-form-urlencoded"))
        or "charset=" in content_type.lower()
    ):
        return "text"
    return "base64"


class _BodyTooLarge(Exception):
    """The response body is over ``max_body_size`` (turned into a PermanentError)."""


_HOPS = "workplex.hops"
_ExecutorErrorT = type[PermanentError] | type[RetryableError] | type[TaskTimeoutError]


async def _note_hop(response: httpx.Response) -> None:
    hops = response.request.extensions.get(_HOPS)
    if hops is not None:
        hops.append(response)


def _error(
    kind: _ExecutorErrorT,
    input: HttpInput,
    reason: str,
    response: httpx.Response | None = None,
) -> PermanentError | RetryableError | TaskTimeoutError:
    """One shape for every failure: ``METHOD URL: reason``, plus ``HTTP status at URL``
    when a response had arrived; ``details`` always carry method and url, and status
    when there is a response (its URL is then the one that answered)."""
    details: dict[str, Any] = {"method": input.method, "url": input.url}
    message = f"{input.method} {input.url}: {reason}"
    if response is not None:
        final = str(response.url)
        details.update(status=response.status_code, url=final)
        where = "" if final == input.url else f" from {final}"
        message += f" (after HTTP {response.status_code}{where})"
    return kind(message, details=details)


def _reason(exc: Exception) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _timeout_reason(exc: Exception, request: httpx.Request, total: float) -> str:
    """httpx timeouts often carry no text; say which wait ran out and for how long."""
    text = str(exc).strip()
    limits = request.extensions.get("timeout") or {}
    name = type(exc).__name__
    what = {
        "ConnectTimeout": ("connect", "no connection within the connect timeout"),
        "ReadTimeout": ("read", "no data within the read timeout"),
        "WriteTimeout": ("write", "could not send within the write timeout"),
        "PoolTimeout": ("pool", "no free connection in the pool within the pool timeout"),
    }.get(name)
    if what is None:
        return f"{name}: {text}" if text else f"{name}: timed out"
    key, phrase = what
    limit = limits.get(key, total)
    reason = f"{name}: {phrase}" + (f" ({limit:g}s)" if isinstance(limit, int | float) else "")
    return f"{reason}: {text}" if text else reason


class Http(Executor):
    name = "http"
    description = "Sends one HTTP request (pooled client, body cap, private-address guard)."
    security = SecurityLevel.PRIVILEGED
    capabilities = Capabilities(network=True)

    Input = HttpInput
    Output = HttpOutput
    Config = HttpConfig

    def __init__(self) -> None:
        super().__init__()
        self._client: httpx.AsyncClient | None = None
        self._httpx: Any = None
        self._retry_statuses: frozenset[int] = frozenset()

    async def startup(self, config: HttpConfig) -> None:
        await super().startup(config)
        try:
            import httpcore
            import httpx
        except ImportError as exc:
            raise MissingExtraError("http", exc.name or "httpx", "the http executor") from exc
        if config.http2:
            try:
                import h2  # noqa: F401
            except ImportError as exc:
                raise MissingExtraError("http", "h2", "http2 in the http executor") from exc
        self._httpx = httpx
        verify: ssl.SSLContext | bool
        if isinstance(config.verify, str):
            verify = ssl.create_default_context(cafile=config.verify)
        else:
            verify = config.verify
        ssl_context = httpx.create_ssl_context(verify=verify, trust_env=False)
        backend = (
            None
            if config.allow_private_networks is True
            else _guarded_backend(AddressGuard(config.allow_private_networks))
        )
        pool = httpcore.AsyncConnectionPool(
            ssl_context=ssl_context,
            max_connections=config.max_connections,
            max_keepalive_connections=config.max_keepalive,
            keepalive_expiry=config.keepalive_expiry,
            http1=True,
            http2=config.http2,
            network_backend=backend,
        )
        transport = httpx.AsyncHTTPTransport(trust_env=False)
        # httpx does not take a network backend, so the transport gets a pool built with ours.
        # Checked, not assumed: a future httpx without ``_pool`` must fail here, never run
        # unguarded.
        if not isinstance(getattr(transport, "_pool", None), httpcore.AsyncConnectionPool):
            raise PermanentError(
                f"httpx {httpx.__version__} changed its transport; the http executor's "
                "address guard cannot be installed"
            )
        await transport._pool.aclose()
        transport._pool = pool
        t = config.timeout_seconds
        self._client = httpx.AsyncClient(
            transport=transport,
            timeout=httpx.Timeout(t),
            max_redirects=config.max_redirects,
            event_hooks={"response": [_note_hop]},
            trust_env=False,  # proxies from the environment would bypass the guard
        )
        self._retry_statuses = frozenset(config.retry_statuses)

    async def shutdown(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    async def health_check(self) -> bool:
        return self._client is not None and not self._client.is_closed

    async def execute(self, input: HttpInput, ctx: Context) -> dict[str, Any]:
        client = self._client
        if client is None:
            raise PermanentError("the http executor is not started (or was shut down)")
        httpx = self._httpx
        config: HttpConfig = self.config
        total = input.timeout or config.timeout_seconds
        remaining = ctx.remaining()
        if remaining is not None:
            total = min(total, remaining)
        timeout: Any = httpx.USE_CLIENT_DEFAULT
        if input.connect_timeout or input.read_timeout or input.timeout:
            timeout = httpx.Timeout(
                total,
                connect=input.connect_timeout or total,
                read=input.read_timeout or total,
            )
        try:
            request = client.build_request(
                input.method,
                input.url,
                params=input.params,
                headers=input.headers,
                json=input.json_body,
                content=input.body,
                data=input.form,
                timeout=timeout,
            )
        except (httpx.InvalidURL, TypeError, ValueError) as exc:
            raise PermanentError(f"url/params/headers: cannot build the request: {exc}") from exc
        # Redirect hops share the first request's extensions; the response hook notes
        # each hop there, so an error after a redirect can name the last status and URL.
        hops: list[_Response] = []
        request.extensions[_HOPS] = hops
        response: _Response | None = None
        started = time.perf_counter()
        try:
            async with asyncio.timeout(total):
                response = await client.send(
                    request, stream=True, follow_redirects=input.follow_redirects
                )
                try:
                    content = await self._read(response, config.max_body_size)
                finally:
                    await response.aclose()
        except TimeoutError as exc:
            raise _error(
                TaskTimeoutError, input, f"no complete response within {total:g}s", response
            ) from exc
        except GuardRefused as exc:
            raise _error(PermanentError, input, str(exc), hops[-1] if hops else None) from exc
        except _BodyTooLarge as exc:
            raise _error(PermanentError, input, str(exc), response) from exc
        except httpx.TimeoutException as exc:
            reason = _timeout_reason(exc, request, total)
            raise _error(TaskTimeoutError, input, reason, response) from exc
        except httpx.TooManyRedirects as exc:
            raise _error(
                PermanentError,
                input,
                f"more than {config.max_redirects} redirects (the next would go to "
                f"{exc.request.url})",
                hops[-1] if hops else None,
            ) from exc
        except httpx.TransportError as exc:
            # Connection refused/reset, protocol errors: another attempt may succeed.
            raise _error(RetryableError, input, _reason(exc), response) from exc
        except httpx.HTTPError as exc:  # undecodable body and the like
            raise _error(PermanentError, input, _reason(exc), response) from exc
        elapsed = time.perf_counter() - started
        status = response.status_code
        if status in self._retry_statuses:
            retry_after = parse_retry_after(response.headers.get("retry-after"))
            raise RetryableError(
                f"{input.method} {input.url}: HTTP {status}",
                retry_after=retry_after,
                details={
                    "method": input.method,
                    "status": status,
                    "url": str(response.url),
                    "retry_after": retry_after,
                },
            )
        if input.expect_status is not None:
            if status not in input.expect_status:
                raise PermanentError(
                    f"{input.method} {input.url}: HTTP {status}, expected one of "
                    f"{input.expect_status}",
                    details={"method": input.method, "status": status, "url": str(response.url)},
                )
        elif status >= 400 and (
            input.raise_for_status
            if input.raise_for_status is not None
            else config.raise_for_status
        ):
            raise PermanentError(
                f"{input.method} {input.url}: HTTP {status}",
                details={"method": input.method, "status": status, "url": str(response.url)},
            )
        headers = response.headers
        kind = _body_kind(headers.get("content-type", ""))
        body: Any
        if kind == "json":
            try:
                body = json.loads(content) if content else None
            except ValueError:
                kind = "text"
        if kind == "text":
            body = content.decode(response.encoding or "utf-8", errors="replace")
        elif kind == "base64":
            body = base64.b64encode(content).decode("ascii")
        # A plain dict in the Output's shape: skips a model round trip per call.
        return {
            "status": status,
            "headers": dict(headers.items()),
            "body": body,
            "body_encoding": kind,
            "url": str(response.url),
            "http_version": response.http_version,
            "elapsed": elapsed,
        }

    @staticmethod
    async def _read(response: httpx.Response, cap: int) -> bytes:
        declared = response.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > cap:
            raise _BodyTooLarge(
                f"response body of {declared} bytes is over max_body_size ({cap} bytes)"
            )
        chunks: list[bytes] = []
        size = 0
        async for chunk in response.aiter_bytes():
            size += len(chunk)
            if size > cap:
                # Stop reading at once: closing the response drops the connection.
                raise _BodyTooLarge(
                    f"response body is over max_body_size ({cap} bytes); reading stopped"
                )
            chunks.append(chunk)
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)
