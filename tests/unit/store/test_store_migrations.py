"""Schema versions: an older store opens with the current code; a newer one is refused."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import inspect
from sqlalchemy.ext.asyncio import create_async_engine

from workplex.errors import StoreError
from workplex.store import Store, driver_url, resolve_url
from workplex.store import schema as t
from workplex.store.migrations import LATEST, MIGRATIONS, migrate


async def make_v1_store(url: str) -> None:
    engine = create_async_engine(driver_url(url))
    try:
        async with engine.begin() as conn:
            before, after = await migrate(conn, target=1)
            assert (before, after) == (0, 1)
            await conn.exec_driver_sql(
                "INSERT INTO runs (run_id, pipeline, status, document, inputs, created) "
                "VALUES ('old', 'legacy', 'failed', '{\"name\": \"legacy\", \"stages\": []}', "
                "'{\"k\": 1}', 1.0)"
            )
            await conn.exec_driver_sql(
                "INSERT INTO tasks (run_id, stage, idx, task_id, executor, status, output, attempts) "
                "VALUES ('old', 's', 0, 'old:s:0', 'echo', 'succeeded', '{\"v\": 1}', 1)"
            )
    finally:
        await engine.dispose()


async def columns(url: str) -> dict[str, set[str]]:
    engine = create_async_engine(driver_url(url))
    try:
        async with engine.connect() as conn:

            def read(sync_conn: object) -> dict[str, set[str]]:
                insp = inspect(sync_conn)
                return {
                    name: {c["name"] for c in insp.get_columns(name)}
                    for name in insp.get_table_names()
                }

            return await conn.run_sync(read)
    finally:
        await engine.dispose()


async def test_a_v1_store_is_migrated_when_opened(store_url: str) -> None:
    url = store_url
    await make_v1_store(url)
    assert "approvals" not in await columns(url)
    store = await Store.open(url)
    try:
        run = await store.get_run("old")
        assert run is not None and run.pipeline == "legacy" and run.inputs == {"k": 1}
        assert run.lease_owner is None and run.cancel_requested is False
        done = await store.finished_tasks("old", "s")
        assert done[0].output == {"v": 1} and done[0].logs is None
        await store.acquire_lease("old", "me", 10)  # columns added by version 2
        await store.set_approval("old", "s", True, "fine")
        assert (await store.get_approval("old", "s")) is not None
    finally:
        await store.close()


async def test_the_migrated_schema_matches_the_table_definitions(store_url: str) -> None:
    url = store_url
    store = await Store.open(url)
    await store.close()
    found = await columns(url)
    for table in t.metadata.tables.values():
        assert found[table.name] == {c.name for c in table.columns}, table.name
    # Reopening an up-to-date store applies nothing.
    engine = create_async_engine(driver_url(url))
    try:
        async with engine.begin() as conn:
            assert await migrate(conn) == (LATEST, LATEST)
    finally:
        await engine.dispose()


async def test_a_store_from_a_newer_workplex_is_refused(store_url: str) -> None:
    url = store_url
    store = await Store.open(url)
    await store.close()
    engine = create_async_engine(driver_url(url))
    try:
        async with engine.begin() as conn:
            await conn.exec_driver_sql(f"INSERT INTO schema_version VALUES ({LATEST + 1})")
    finally:
        await engine.dispose()
    with pytest.raises(StoreError, match=f"schema version {LATEST + 1}, newer"):
        await Store.open(url)


def test_versions_are_consecutive() -> None:
    assert [m.version for m in MIGRATIONS] == list(range(1, len(MIGRATIONS) + 1))


def test_urls(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert driver_url("sqlite:///runs.db") == "sqlite+aiosqlite:///runs.db"
    assert driver_url("sqlite:////abs/runs.db") == "sqlite+aiosqlite:////abs/runs.db"
    assert driver_url("/tmp/x.db") == "sqlite+aiosqlite:////tmp/x.db"
    assert driver_url("postgresql://u:p@h:5/db") == "postgresql+asyncpg://u:p@h:5/db"
    assert driver_url("postgres://u@h/db") == "postgresql+asyncpg://u@h/db"
    with pytest.raises(StoreError, match=r"mysql.*unsupported scheme"):
        driver_url("mysql://u:secret@h/db")
    with pytest.raises(StoreError) as info:
        driver_url("mysql://u:secret@h/db")
    assert "secret" not in str(info.value)
    monkeypatch.delenv("WORKPLEX_STORE", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    assert resolve_url() == f"sqlite:///{tmp_path}/workplex/runs.db"
    assert resolve_url(None, "sqlite:///conf.db") == "sqlite:///conf.db"
    monkeypatch.setenv("WORKPLEX_STORE", "sqlite:///env.db")
    assert resolve_url(None, "sqlite:///conf.db") == "sqlite:///env.db"
    assert resolve_url("sqlite:///cli.db", "sqlite:///conf.db") == "sqlite:///cli.db"
