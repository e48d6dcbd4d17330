"""``grpc``: one call to a gRPC method, request and response as JSON.

Message types come from the server's reflection service (``grpc.reflection.v1alpha``) or,
for a server without one, from a descriptor set file (``protoc --descriptor_set_out
--include_imports``). Descriptors are fetched once per (endpoint, service) and cached; one
``grpc.aio`` channel per endpoint and TLS settings is created on first use and reused by
every task until shutdown. Unary-unary and server-streaming methods are supported.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, field_validator

from workplex.errors import MissingExtraError, PermanentError, RetryableError, TaskTimeoutError
from workplex.executor import Capabilities, Context, Executor, ExecutorConfig, SecurityLevel

_RETRYABLE = frozenset({"UNAVAILABLE", "RESOURCE_EXHAUSTED"})


class TLSSettings(BaseModel):
    """TLS for the channel. Each value is a file path or the PEM text itself."""

    model_config = {"extra": "forbid", "frozen": True}

    ca_cert: str | None = Field(
        default=None, description="CA certificate(s) that sign the server's certificate."
    )
    client_cert: str | None = Field(default=None, description="Client certificate (mutual TLS).")
    client_key: str | None = Field(default=None, description="Client private key (mutual TLS).")
    server_name: str | None = Field(
        default=None, description="Name to check the server certificate against."
    )


class GrpcInput(BaseModel):
    model_config = {"extra": "forbid"}

    endpoint: str = Field(description="`host:port` of the server.")
    method: str = Field(description="The method as `package.Service/Method`.")
    request: dict[str, Any] = Field(
        default_factory=dict, description="The request message as JSON (proto field names)."
    )
    metadata: dict[str, str] = Field(
        default_factory=dict, description="Request metadata (keys are lower-cased)."
    )
    timeout: float | None = Field(default=None, gt=0, description="Deadline in seconds.")
    tls: TLSSettings | None = Field(
        default=None, description="TLS settings; absent means an insecure (plaintext) channel."
    )
    descriptor_set: str | None = Field(
        default=None,
        description="Path to a FileDescriptorSet (.pb) to use instead of server reflection.",
    )

    @field_validator("endpoint")
    @classmethod
    def _endpoint(cls, v: str) -> str:
        host, sep, port = v.rpartition(":")
        if not sep or not host or not port.isdigit():
            raise ValueError("must look like 'host:port'")
        return v

    @field_validator("method")
    @classmethod
    def _method(cls, v: str) -> str:
        v = v.lstrip("/")
        service, sep, name = v.partition("/")
        if not sep or not service or not name or "/" in name:
            raise ValueError("must look like 'package.Service/Method'")
        return v

    @field_validator("metadata")
    @classmethod
    def _metadata(cls, v: dict[str, str]) -> dict[str, str]:
        return {k.lower(): val for k, val in v.items()}


class GrpcOutput(BaseModel):
    response: dict[str, Any] | None = Field(
        default=None, description="The response message (unary methods)."
    )
    responses: list[dict[str, Any]] | None = Field(
        default=None, description="Every response message (server-streaming methods)."
    )
    code: str = Field(description="The gRPC status code name (`OK`).")
    metadata: dict[str, dict[str, str]] = Field(
        default_factory=dict,
        description="`initial` and `trailing` metadata from the server (`-bin` values base64).",
    )


class GrpcConfig(ExecutorConfig):
    descriptor_set: str | None = Field(
        default=None,
        description="Default descriptor set file for tasks that give none (skips reflection).",
    )
    timeout_seconds: float | None = Field(
        default=60.0, gt=0, description="Deadline for calls that set no `timeout`."
    )
    max_message_bytes: int = Field(
        default=4 * 1024 * 1024, gt=0, description="Largest message sent or received."
    )
    health_timeout_seconds: float = Field(
        default=5.0,
        gt=0,
        description="Bound on the health check (every open channel must connect within it).",
    )


@dataclass(slots=True)
class _Method:
    path: str
    request_cls: Any
    response_cls: Any
    server_streaming: bool
    pool: Any
    callable: Any = None


class Grpc(Executor):
    name = "grpc"
    description = (
        "Calls a gRPC method (package.Service/Method) with a JSON request, via server "
        "reflection or a descriptor set; TLS, metadata, deadline."
    )
    security = SecurityLevel.PRIVILEGED
    capabilities = Capabilities(network=True)

    Input = GrpcInput
    Output = GrpcOutput
    Config = GrpcConfig

    def __init__(self) -> None:
        super().__init__()
        self._grpc: Any = None
        self._channels: dict[tuple[str, TLSSettings | None], Any] = {}
        # (endpoint, tls, descriptor source, service) -> file descriptor pool and service
        self._services: dict[tuple[Any, ...], tuple[Any, Any]] = {}
        self._methods: dict[tuple[Any, ...], _Method] = {}
        self._descriptor_sets: dict[str, Any] = {}
        self._locks: dict[tuple[Any, ...], asyncio.Lock] = {}

    # ---- lifecycle -------------------------------------------------------------------
    def _modules(self) -> Any:
        if self._grpc is None:
            try:
                import grpc
                import grpc.aio
            except ImportError as exc:
                raise MissingExtraError("grpc", "grpcio", "the grpc executor") from exc
            try:
                from google.protobuf import message_factory  # noqa: F401
            except ImportError as exc:
                raise MissingExtraError("grpc", "protobuf", "the grpc executor") from exc
            self._grpc = grpc
        return self._grpc

    async def startup(self, config: Any) -> None:
        await super().startup(config)
        self._modules()

    async def shutdown(self) -> None:
        channels, self._channels = list(self._channels.values()), {}
        self._services.clear()
        self._methods.clear()
        for channel in channels:
            await channel.close()

    async def health_check(self) -> bool:
        """Every open channel reaches READY (connecting if idle) within
        ``health_timeout_seconds``; true when no channel is open yet."""
        grpc = self._modules()
        channels = list(self._channels.values())
        if not channels:
            return True
        try:
            async with asyncio.timeout(self.config.health_timeout_seconds):
                answers = await asyncio.gather(*(_connected(grpc, c) for c in channels))
        except TimeoutError:
            return False
        return all(answers)

    # ---- channels ----------------------------------------------------------------------
    def _channel(self, endpoint: str, tls: TLSSettings | None) -> Any:
        key = (endpoint, tls)
        channel = self._channels.get(key)
        if channel is None:
            grpc = self._modules()
            size = self.config.max_message_bytes
            options: list[tuple[str, Any]] = [
                ("grpc.max_send_message_length", size),
                ("grpc.max_receive_message_length", size),
            ]
            if tls is None:
                channel = grpc.aio.insecure_channel(endpoint, options=options)
            else:
                if tls.server_name:
                    options.append(("grpc.ssl_target_name_override", tls.server_name))
                if (tls.client_cert is None) != (tls.client_key is None):
                    raise PermanentError(
                        "tls: client_cert and client_key must be given together",
                        details={"field": "tls"},
                    )
                creds = grpc.ssl_channel_credentials(
                    root_certificates=_pem(tls.ca_cert, "tls.ca_cert"),
                    private_key=_pem(tls.client_key, "tls.client_key"),
                    certificate_chain=_pem(tls.client_cert, "tls.client_cert"),
                )
                channel = grpc.aio.secure_channel(endpoint, creds, options=options)
            self._channels[key] = channel
        return channel

    # ---- descriptors -------------------------------------------------------------------
    def _descriptor_set_pool(self, path: str) -> Any:
        pool = self._descriptor_sets.get(path)
        if pool is None:
            from google.protobuf import descriptor_pb2

            try:
                data = Path(path).read_bytes()
            except OSError as exc:
                raise PermanentError(
                    f"descriptor_set: cannot read {path}: {exc.strerror}",
                    details={"field": "descriptor_set"},
                ) from exc
            fds = descriptor_pb2.FileDescriptorSet()
            try:
                fds.ParseFromString(data)
            except Exception as exc:
                raise PermanentError(
                    f"descriptor_set: {path} is not a FileDescriptorSet: {exc}",
                    details={"field": "descriptor_set"},
                ) from exc
            pool = _build_pool({f.name: f for f in fds.file}, f"descriptor_set {path}")
            self._descriptor_sets[path] = pool
        return pool

    async def _reflect(
        self, channel: Any, endpoint: str, service: str, deadline: float | None
    ) -> Any:
        """Ask the server's reflection service for the file defining ``service`` and its deps."""
        from google.protobuf import descriptor_pb2
        from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

        grpc = self._grpc
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        files: dict[str, Any] = {}
        call = stub.ServerReflectionInfo(timeout=deadline)
        try:

            async def ask(request: Any, what: str) -> None:
                await call.write(request)
                response = await call.read()
                if response is grpc.aio.EOF:
                    raise PermanentError(f"{endpoint}: reflection stream ended early ({what})")
                if response.HasField("error_response"):
                    err = response.error_response
                    raise PermanentError(
                        f"method: {what} not found through server reflection at {endpoint}: "
                        f"{err.error_message}",
                        details={"field": "method", "endpoint": endpoint},
                    )
                for raw in response.file_descriptor_response.file_descriptor_proto:
                    proto = descriptor_pb2.FileDescriptorProto.FromString(raw)
                    files.setdefault(proto.name, proto)

            await ask(
                reflection_pb2.ServerReflectionRequest(file_containing_symbol=service),
                f"service {service!r}",
            )
            # Servers other than grpcio may send only the file itself: fetch missing imports.
            missing = _missing_dependencies(files)
            while missing:
                for name in missing:
                    await ask(
                        reflection_pb2.ServerReflectionRequest(file_by_filename=name),
                        f"file {name!r}",
                    )
                missing = _missing_dependencies(files)
            await call.done_writing()
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.UNIMPLEMENTED:
                raise PermanentError(
                    f"{endpoint} offers no server reflection; give `descriptor_set` "
                    f"(a protoc --descriptor_set_out file) for {service}",
                    details={"field": "descriptor_set", "endpoint": endpoint},
                ) from exc
            raise _translate(exc, endpoint, f"reflection for {service}") from exc
        finally:
            call.cancel()
        return _build_pool(files, f"reflection at {endpoint}")

    async def _method(self, input: GrpcInput, channel: Any, deadline: float | None) -> _Method:
        source = input.descriptor_set or self.config.descriptor_set
        key = (input.endpoint, input.tls, source, input.method)
        method = self._methods.get(key)
        if method is not None:
            return method
        service_name, _, method_name = input.method.partition("/")
        skey = (input.endpoint, input.tls, source, service_name)
        found = self._services.get(skey)
        if found is None:
            lock = self._locks.setdefault(skey, asyncio.Lock())
            async with lock:  # one reflection round trip per service, even under a scatter
                found = self._services.get(skey)
                if found is None:
                    if source is not None:
                        pool = self._descriptor_set_pool(source)
                    else:
                        pool = await self._reflect(channel, input.endpoint, service_name, deadline)
                    try:
                        service = pool.FindServiceByName(service_name)
                    except KeyError as exc:
                        where = f"descriptor set {source}" if source else input.endpoint
                        raise PermanentError(
                            f"method: service {service_name!r} is not defined in {where}",
                            details={"field": "method"},
                        ) from exc
                    found = self._services[skey] = (pool, service)
        pool, service = found
        desc = service.methods_by_name.get(method_name)
        if desc is None:
            known = ", ".join(sorted(service.methods_by_name)) or "(none)"
            raise PermanentError(
                f"method: {service_name} has no method {method_name!r}; it has: {known}",
                details={"field": "method"},
            )
        if desc.client_streaming:
            raise PermanentError(
                f"method: {input.method} is client-streaming, which this executor does not call",
                details={"field": "method"},
            )
        from google.protobuf.message_factory import GetMessageClass

        req_cls = GetMessageClass(desc.input_type)
        resp_cls = GetMessageClass(desc.output_type)
        path = f"/{service_name}/{method_name}"
        make = channel.unary_stream if desc.server_streaming else channel.unary_unary
        method = _Method(
            path=path,
            request_cls=req_cls,
            response_cls=resp_cls,
            server_streaming=desc.server_streaming,
            pool=pool,
            callable=make(
                path,
                request_serializer=req_cls.SerializeToString,
                response_deserializer=resp_cls.FromString,
            ),
        )
        self._methods[key] = method
        return method

    # ---- the call ----------------------------------------------------------------------
    async def execute(self, input: GrpcInput, ctx: Context) -> GrpcOutput:
        grpc = self._modules()
        from google.protobuf import json_format

        timeout = input.timeout if input.timeout is not None else self.config.timeout_seconds
        remaining = ctx.remaining()
        if remaining is not None:
            timeout = remaining if timeout is None else min(timeout, remaining)
        channel = self._channel(input.endpoint, input.tls)
        method = await self._method(input, channel, timeout)
        try:
            request = json_format.ParseDict(
                input.request, method.request_cls(), descriptor_pool=method.pool
            )
        except json_format.ParseError as exc:
            raise PermanentError(
                f"request: does not match {method.request_cls.DESCRIPTOR.full_name}: {exc}",
                details={"field": "request"},
            ) from exc
        metadata = tuple(input.metadata.items()) or None

        def to_json(message: Any) -> dict[str, Any]:
            out: dict[str, Any] = json_format.MessageToDict(
                message, preserving_proto_field_name=True, descriptor_pool=method.pool
            )
            return out

        try:
            call = method.callable(request, timeout=timeout, metadata=metadata)
            if method.server_streaming:
                responses = [to_json(m) async for m in call]
                response = None
            else:
                response = to_json(await call)
                responses = None
            initial = await call.initial_metadata()
            trailing = await call.trailing_metadata()
            code = await call.code()
        except grpc.aio.AioRpcError as exc:
            raise _translate(exc, input.endpoint, input.method) from exc
        return GrpcOutput(
            response=response,
            responses=responses,
            code=code.name,
            metadata={"initial": _metadata_dict(initial), "trailing": _metadata_dict(trailing)},
        )


# ---- helpers ---------------------------------------------------------------------------
async def _connected(grpc: Any, channel: Any) -> bool:
    """True once ``channel`` is READY (connecting it if idle); false when it is shut down or
    in TRANSIENT_FAILURE (its last connection attempt failed; grpc retries with backoff and
    the channel turns READY again once one succeeds). The caller bounds the wait."""
    states = grpc.ChannelConnectivity
    state = channel.get_state(try_to_connect=True)
    while state is not states.READY:
        if state is states.SHUTDOWN or state is states.TRANSIENT_FAILURE:
            return False
        await channel.wait_for_state_change(state)
        state = channel.get_state(try_to_connect=True)
    return True


def _pem(value: str | None, field: str) -> bytes | None:
    """PEM text as given, or the contents of the file it names."""
    if value is None:
        return None
    if "-----BEGIN" in value:
        return value.encode()
    try:
        return Path(value).expanduser().read_bytes()
    except OSError as exc:
        raise PermanentError(
            f"{field}: cannot read {value}: {exc.strerror}", details={"field": field}
        ) from exc


def _missing_dependencies(files: Mapping[str, Any]) -> list[str]:
    return sorted({dep for f in files.values() for dep in f.dependency if dep not in files})


def _build_pool(files: Mapping[str, Any], where: str) -> Any:
    """A fresh descriptor pool holding ``files``, added dependencies first."""
    from google.protobuf import descriptor_pool

    pool = descriptor_pool.DescriptorPool()
    added: set[str] = set()

    def add(name: str, chain: Sequence[str]) -> None:
        if name in added:
            return
        proto = files.get(name)
        if proto is None:
            raise PermanentError(f"{where}: missing imported file {name!r} (needed by {chain[-1]})")
        for dep in proto.dependency:
            add(dep, [*chain, name])
        try:
            pool.Add(proto)
        except Exception as exc:
            raise PermanentError(f"{where}: cannot load {name!r}: {exc}") from exc
        added.add(name)

    for name in files:
        add(name, [name])
    return pool


def _metadata_dict(md: Any) -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in md or ():
        if isinstance(value, bytes):
            value = base64.b64encode(value).decode()
        out[key] = value if key not in out else f"{out[key]},{value}"
    return out


def _translate(exc: Any, endpoint: str, what: str) -> Exception:
    """An ``AioRpcError`` as our typed error, with the status code name and details."""
    code = exc.code()
    name: str = getattr(code, "name", str(code))
    details_text = exc.details() or ""
    message = f"{what} at {endpoint} failed: {name}: {details_text}"
    details = {"code": name, "details": details_text, "endpoint": endpoint}
    if name == "DEADLINE_EXCEEDED":
        return TaskTimeoutError(message, details=details)
    if name in _RETRYABLE:
        return RetryableError(message, details=details)
    return PermanentError(message, details=details)
