"""Registries with the sql executor, against a SQLite file and a real PostgreSQL."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from workplex.config import parse_config
from workplex.executor import Result, Task
from workplex.executors.sql import Sql
from workplex.registry import Registry

MakeRegistry = Callable[..., Registry]


@pytest.fixture
async def make_registry() -> AsyncIterator[MakeRegistry]:
    """Builds registries holding only the sql executor with the given settings; all are
    shut down (engines disposed) at the end of the test.

    Most tests pass inline DSNs, so ``allow_dsn: true`` is set unless the test says otherwise
    (the executor's own default is false)."""
    made: list[Registry] = []

    def make(**settings: Any) -> Registry:
        settings.setdefault("allow_dsn", True)
        config = parse_config({"executors": {"sql": settings}})
        registry = Registry(config, discover=False)
        registry.register(Sql)
        made.append(registry)
        return registry

    try:
        yield make
    finally:
        for registry in made:
            await registry.shutdown()


@pytest.fixture(params=["sqlite", "postgres"])
def dsn(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A DSN of each kind of database the tests run against."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'test.db'}"
    url: str = request.getfixturevalue("postgres_url")
    return url


@pytest.fixture
def table() -> str:
    """A table name of this test's own (the PostgreSQL server is shared by the session)."""
    return f"t_{uuid.uuid4().hex[:10]}"


async def run(registry: Registry, payload: dict[str, Any]) -> Result:
    return await registry.execute(Task("sql", payload))


async def ok(registry: Registry, payload: dict[str, Any]) -> dict[str, Any]:
    result = await run(registry, payload)
    assert result.success, result.error
    assert isinstance(result.output, dict)
    return result.output
