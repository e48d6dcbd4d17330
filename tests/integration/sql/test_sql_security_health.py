"""The sql executor's reach (inline DSNs only when the config allows them) and its health
check, which runs ``SELECT 1`` on every open pool against the real databases."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from workplex.config import parse_config
from workplex.executor import SecurityLevel, Task
from workplex.executors.sql import Sql, SqlConfig
from workplex.registry import Registry

from .conftest import MakeRegistry, ok, run


# ---- inline DSNs -----------------------------------------------------------------------
def test_inline_dsn_is_off_by_default() -> None:
    assert Sql.security is SecurityLevel.TRUSTED
    assert SqlConfig().allow_dsn is False
    schema = SqlConfig.model_json_schema()
    assert schema["properties"]["allow_dsn"]["default"] is False


async def test_inline_dsn_refused_without_allow_dsn(tmp_path: Path) -> None:
    db = tmp_path / "never.db"
    # The deployment caps executors at `trusted`: sql is accepted, inline DSNs are not.
    config = parse_config({"max_security": "trusted", "executors": {"sql": {}}})
    async with Registry(config, discover=False) as registry:
        registry.register(Sql)
        result = await registry.execute(
            Task("sql", {"dsn": f"sqlite:///{db}", "query": "SELECT 1"})
        )
    assert result.error is not None
    assert result.error.type == "PermanentError"
    message = result.error.message
    assert message.startswith("dsn:"), message
    assert "executors.sql.allow_dsn: true" in message
    assert "connection" in message
    assert result.error.details == {"field": "dsn"}
    # Refused before any connection: the database file was never created.
    assert not db.exists()


async def test_named_connection_works_under_trusted(tmp_path: Path) -> None:
    db = tmp_path / "named.db"
    config = parse_config(
        {
            "max_security": "trusted",
            "executors": {"sql": {"connections": {"main": f"sqlite:///{db}"}}},
        }
    )
    async with Registry(config, discover=False) as registry:
        registry.register(Sql)
        result = await registry.execute(
            Task("sql", {"connection": "main", "query": "SELECT 40 + :n AS v", "params": {"n": 2}})
        )
    assert result.success, result.error
    assert isinstance(result.output, dict)
    assert result.output["rows"] == [{"v": 42}]
    assert db.exists()


async def test_inline_dsn_accepted_with_allow_dsn(make_registry: MakeRegistry, dsn: str) -> None:
    reg = make_registry(allow_dsn=True)
    out = await ok(reg, {"dsn": dsn, "query": "SELECT 7 AS seven"})
    assert out["rows"] == [{"seven": 7}]


async def test_allow_dsn_makes_sql_privileged_so_a_trusted_deployment_refuses_it(
    tmp_path: Path,
) -> None:
    db = tmp_path / "never.db"
    settings = {"executors": {"sql": {"allow_dsn": True}}}
    trusted = Registry(parse_config({**settings, "max_security": "trusted"}), discover=False)
    trusted.register(Sql)
    assert trusted.info("sql").security is SecurityLevel.PRIVILEGED
    assert not trusted.info("sql").enabled
    async with trusted:
        refused = await trusted.execute(Task("sql", {"dsn": f"sqlite:///{db}", "query": "SELECT 1"}))
    assert refused.error is not None and refused.error.type == "SecurityRefusedError"
    assert "'privileged' (with its settings)" in refused.error.message
    assert not db.exists()
    privileged = Registry(parse_config(settings), discover=False)
    privileged.register(Sql)
    async with privileged:
        allowed = await privileged.execute(Task("sql", {"dsn": f"sqlite:///{db}", "query": "SELECT 1"}))
    assert allowed.success, allowed.error


# ---- health ----------------------------------------------------------------------------
class Relay:
    """A TCP relay on 127.0.0.1 to a real server; stopping it makes the server unreachable
    at this address, as a stopped server would be (the shared server keeps running)."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.server: asyncio.Server | None = None
        self.writers: set[asyncio.StreamWriter] = set()
        self.tasks: set[asyncio.Task[None]] = set()

    @property
    def port(self) -> int:
        assert self.server is not None
        return int(self.server.sockets[0].getsockname()[1])

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        self.writers.update((writer, up_writer))
        for src, dst in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.create_task(self._pipe(src, dst))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    @staticmethod
    async def _pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.CancelledError):
            while data := await src.read(65536):
                dst.write(data)
                await dst.drain()
        dst.close()

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
        for writer in list(self.writers):
            writer.close()
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


@pytest.fixture
async def relay(postgres_url: str) -> AsyncIterator[tuple[Relay, str]]:
    url = make_url(postgres_url)
    relay = Relay(url.host or "127.0.0.1", url.port or 5432)
    await relay.start()
    try:
        yield (
            relay,
            url.set(host="127.0.0.1", port=relay.port).render_as_string(hide_password=False),
        )
    finally:
        await relay.stop()


async def test_health_without_pools_is_true(make_registry: MakeRegistry) -> None:
    executor = await make_registry().start("sql")
    assert await executor.health_check() is True


async def test_health_runs_select_1_on_each_pool(make_registry: MakeRegistry, dsn: str) -> None:
    reg = make_registry()
    await ok(reg, {"dsn": dsn, "query": "SELECT 1 AS one"})
    executor = await reg.start("sql")
    assert await executor.health_check() is True
    assert (await reg.health(["sql"]))["sql"]["ok"] is True


async def test_health_false_when_the_server_stops(
    make_registry: MakeRegistry, relay: tuple[Relay, str]
) -> None:
    proxy, url = relay
    reg = make_registry(health_timeout_seconds=5)
    await ok(reg, {"dsn": url, "query": "SELECT 1 AS one"})
    executor = await reg.start("sql")
    assert await executor.health_check() is True
    await proxy.stop()
    assert await executor.health_check() is False


async def test_health_false_for_a_pool_that_cannot_connect(
    make_registry: MakeRegistry, tmp_path: Path
) -> None:
    reg = make_registry(health_timeout_seconds=5)
    sqlite_ok = f"sqlite:///{tmp_path / 'fine.db'}"
    await ok(reg, {"dsn": sqlite_ok, "query": "SELECT 1 AS one"})
    # Port 1 on 127.0.0.1: nothing listens; the task fails and leaves its (empty) pool.
    dead = await run(reg, {"dsn": "postgresql://u:p@127.0.0.1:1/db", "query": "SELECT 1"})
    assert dead.error is not None and dead.error.type == "RetryableError"
    executor = await reg.start("sql")
    # One healthy pool does not hide an unreachable one.
    assert await executor.health_check() is False


async def test_health_false_after_shutdown(make_registry: MakeRegistry, tmp_path: Path) -> None:
    reg = make_registry()
    await ok(reg, {"dsn": f"sqlite:///{tmp_path / 'x.db'}", "query": "SELECT 1 AS one"})
    executor = await reg.start("sql")
    await executor.shutdown()
    assert await executor.health_check() is False
