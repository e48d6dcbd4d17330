"""Versioned schema migrations: an ordered list of DDL steps and a ``schema_version`` table.

A store is brought to ``LATEST`` when it is opened, in one transaction that also holds a
lock (``BEGIN IMMEDIATE`` on SQLite, an advisory lock on PostgreSQL), so two processes
opening a fresh store at once do not both migrate it. A store written by a newer
workplex (a version above ``LATEST``) is refused rather than misread.

To change the schema, append a ``Migration`` (never edit a released one) and update
``schema.py`` to match; ``tests/unit/test_store_migrations.py`` checks that they agree.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from workplex.errors import StoreError

# Same key for every workplex: serializes migrations of one PostgreSQL database.
_PG_LOCK_KEY = 0x776F726B706C6578 & 0x7FFFFFFFFFFFFFFF


@dataclass(frozen=True)
class Migration:
    version: int
    description: str
    steps: Callable[[str], Sequence[str]]
    """Returns the DDL statements for a dialect name (``sqlite`` or ``postgresql``)."""


def _serial(dialect: str) -> str:
    return "INTEGER PRIMARY KEY" if dialect == "sqlite" else "BIGSERIAL PRIMARY KEY"


def _v1(dialect: str) -> list[str]:
    return [
        """CREATE TABLE runs (
            run_id VARCHAR(200) PRIMARY KEY,
            pipeline VARCHAR(200) NOT NULL,
            status VARCHAR(20) NOT NULL,
            document TEXT,
            path TEXT,
            inputs TEXT,
            output TEXT,
            error TEXT,
            parent_run_id VARCHAR(200),
            created DOUBLE PRECISION NOT NULL,
            started DOUBLE PRECISION,
            ended DOUBLE PRECISION,
            updated DOUBLE PRECISION
        )""",
        """CREATE TABLE stages (
            run_id VARCHAR(200) NOT NULL,
            name VARCHAR(200) NOT NULL,
            position INTEGER NOT NULL,
            status VARCHAR(20) NOT NULL,
            output TEXT,
            error TEXT,
            total INTEGER,
            started DOUBLE PRECISION,
            ended DOUBLE PRECISION,
            PRIMARY KEY (run_id, name)
        )""",
        """CREATE TABLE tasks (
            run_id VARCHAR(200) NOT NULL,
            stage VARCHAR(200) NOT NULL,
            idx INTEGER NOT NULL,
            task_id VARCHAR(300) NOT NULL,
            executor VARCHAR(100) NOT NULL,
            status VARCHAR(20) NOT NULL,
            output TEXT,
            error TEXT,
            exit_code INTEGER,
            attempts INTEGER NOT NULL,
            started DOUBLE PRECISION,
            ended DOUBLE PRECISION,
            duration DOUBLE PRECISION,
            PRIMARY KEY (run_id, stage, idx)
        )"""
        # Clustered on the key on SQLite: no separate index to maintain, ~2x faster inserts.
        + (" WITHOUT ROWID" if dialect == "sqlite" else ""),
        f"""CREATE TABLE events (
            id {_serial(dialect)},
            run_id VARCHAR(200) NOT NULL,
            ts DOUBLE PRECISION NOT NULL,
            kind VARCHAR(50) NOT NULL,
            stage VARCHAR(200),
            data TEXT
        )""",
        "CREATE INDEX ix_events_run ON events (run_id, id)",
    ]


def _v2(dialect: str) -> list[str]:
    return [
        """CREATE TABLE approvals (
            run_id VARCHAR(200) NOT NULL,
            stage VARCHAR(200) NOT NULL,
            requested DOUBLE PRECISION NOT NULL,
            message TEXT,
            approved BOOLEAN,
            comment TEXT,
            decided_by VARCHAR(200),
            decided DOUBLE PRECISION,
            PRIMARY KEY (run_id, stage)
        )""",
        "ALTER TABLE runs ADD COLUMN lease_owner VARCHAR(200)",
        "ALTER TABLE runs ADD COLUMN lease_until DOUBLE PRECISION",
        "ALTER TABLE runs ADD COLUMN cancel_requested BOOLEAN NOT NULL DEFAULT FALSE",
        "ALTER TABLE tasks ADD COLUMN logs TEXT",
        "CREATE INDEX ix_runs_created ON runs (created)",
        "CREATE INDEX ix_runs_status ON runs (status, ended)",
        "CREATE INDEX ix_runs_parent ON runs (parent_run_id)",
    ]


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "runs, stages, tasks, events", _v1),
    Migration(2, "approvals, leases, cancel requests, task logs, listing indexes", _v2),
)
LATEST = MIGRATIONS[-1].version


async def current_version(conn: AsyncConnection) -> int:
    """The store's schema version (0 for an empty database)."""
    await conn.exec_driver_sql(
        "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)"
    )
    found = (await conn.exec_driver_sql("SELECT MAX(version) FROM schema_version")).scalar()
    return int(found or 0)


async def migrate(conn: AsyncConnection, target: int = LATEST) -> tuple[int, int]:
    """Apply the missing migrations up to ``target`` inside the caller's transaction.

    Returns ``(version before, version after)``.
    """
    dialect = conn.dialect.name
    if dialect == "postgresql":
        await conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_LOCK_KEY})
    before = await current_version(conn)
    if before > LATEST:
        raise StoreError(
            f"the store has schema version {before}, newer than this workplex understands "
            f"({LATEST}); upgrade workplex to open it"
        )
    for migration in MIGRATIONS:
        if before < migration.version <= target:
            for statement in migration.steps(dialect):
                await conn.exec_driver_sql(statement)
            await conn.execute(
                text("INSERT INTO schema_version (version) VALUES (:v)"), {"v": migration.version}
            )
    return before, max(before, min(target, LATEST))
