"""The grpc executor's health check: every open channel must connect to its real server."""

from __future__ import annotations

from typing import Any

from tests.support import free_port
from workplex.executor import Task
from workplex.registry import Registry

from .conftest import Protos, ServerState, grpc_registry, start_server

SAY = "workplex.test.Echo/Say"


async def say(registry: Registry, endpoint: str, **extra: Any) -> Any:
    return await registry.execute(
        Task("grpc", {"endpoint": endpoint, "method": SAY, "request": {"text": "hi"}, **extra})
    )


async def test_health_without_channels_is_true(registry: Registry) -> None:
    executor = await registry.start("grpc")
    assert await executor.health_check() is True


async def test_health_true_while_the_server_answers(
    registry: Registry, echo_server: ServerState
) -> None:
    assert (await say(registry, echo_server.endpoint)).success
    executor = await registry.start("grpc")
    assert await executor.health_check() is True
    assert (await registry.health(["grpc"]))["grpc"] == {"ok": True, "detail": "ok"}


async def test_health_false_once_the_server_stops(protos: Protos) -> None:
    server, state = await start_server(protos)
    registry = grpc_registry({"health_timeout_seconds": 5})
    try:
        result = await say(registry, state.endpoint)
        assert result.success, result.error
        executor = await registry.start("grpc")
        assert await executor.health_check() is True
        await server.stop(None)
        assert await executor.health_check() is False
        assert (await registry.health(["grpc"]))["grpc"]["ok"] is False
    finally:
        await server.stop(None)
        await registry.shutdown()


async def test_one_dead_channel_makes_the_check_false(
    protos: Protos, echo_server: ServerState
) -> None:
    registry = grpc_registry({"health_timeout_seconds": 5})
    try:
        assert (await say(registry, echo_server.endpoint)).success
        # Nothing listens there: the call fails and its channel stays open in the executor.
        dead = await say(
            registry,
            f"127.0.0.1:{free_port()}",
            descriptor_set=str(protos.descriptor_set),
            timeout=5,
        )
        assert dead.error is not None and "UNAVAILABLE" in dead.error.message
        executor = await registry.start("grpc")
        assert await executor.health_check() is False
    finally:
        await registry.shutdown()


async def test_health_is_bounded_by_its_timeout(protos: Protos) -> None:
    # A listener that accepts TCP but never speaks HTTP/2: the channel never gets READY,
    # so only the configured bound ends the check.
    import socket

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    endpoint = f"127.0.0.1:{silent.getsockname()[1]}"
    registry = grpc_registry({"health_timeout_seconds": 0.5})
    try:
        dead = await say(registry, endpoint, descriptor_set=str(protos.descriptor_set), timeout=0.5)
        assert dead.error is not None
        executor = await registry.start("grpc")
        assert await executor.health_check() is False
        # The executor's own bound ended the check, not the registry's (much longer) one.
        report = await registry.health(["grpc"], timeout=60)
        assert report["grpc"] == {"ok": False, "detail": "health check failed"}
    finally:
        await registry.shutdown()
        silent.close()
