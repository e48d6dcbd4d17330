"""Typed parameters, atomic statement lists and lock-wait timeouts, on SQLite (and the
same typed parameters on a real PostgreSQL)."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

from .conftest import MakeRegistry, ok, run

UUID = "12345678-1234-5678-1234-567812345678"


async def test_typed_params_bind_and_match(make_registry: MakeRegistry, dsn: str, table: str) -> None:
    reg = make_registry()
    if dsn.startswith("sqlite"):
        # SQLite has no such column types; TEXT keeps the bound text as it is.
        columns = "n TEXT, u TEXT, t TEXT, d TEXT"
    else:
        columns = "n NUMERIC(10, 2), u UUID, t TIME, d DATE"
    await ok(reg, {"dsn": dsn, "query": f"CREATE TABLE {table} ({columns})", "fetch": "none"})
    types = {"n": "decimal", "u": "uuid", "t": "time", "d": "date"}
    await ok(
        reg,
        {
            "dsn": dsn,
            "query": f"INSERT INTO {table} VALUES (:n, :u, :t, :d)",
            "params": {"n": "12.50", "u": UUID.upper(), "t": "10:20:30", "d": "2024-02-29"},
            "types": types,
            "fetch": "none",
        },
    )
    out = await ok(
        reg,
        {
            "dsn": dsn,
            # Typed values also match in a WHERE clause (the uuid given in another case).
            "query": f"SELECT n, u, t, d FROM {table} WHERE n = :n AND u = :u AND t = :t AND d = :d",
            "params": {"n": "12.50", "u": UUID, "t": "10:20:30", "d": "2024-02-29"},
            "types": types,
        },
    )
    assert out["rows"] == [{"n": "12.50", "u": UUID, "t": "10:20:30", "d": "2024-02-29"}]


async def test_sqlite_select_of_a_typed_param(make_registry: MakeRegistry, tmp_path: Path) -> None:
    """The audit's example: a decimal bound straight into a SELECT on SQLite."""
    reg = make_registry(connections={"db": f"sqlite:///{tmp_path / 'v.db'}"})
    out = await ok(
        reg,
        {
            "connection": "db",
            "query": "SELECT :v AS v, :u AS u, :t AS t",
            "params": {"v": "12.50", "u": UUID, "t": "07:08:09.5"},
            "types": {"v": "decimal", "u": "uuid", "t": "time"},
        },
    )
    assert out["rows"] == [{"v": "12.50", "u": UUID, "t": "07:08:09.500000"}]
    bad = await run(
        reg,
        {"connection": "db", "query": "SELECT :v AS v", "params": {"v": "12,5"}, "types": {"v": "decimal"}},
    )
    assert bad.error is not None and bad.error.type == "PermanentError"
    assert "params.v" in bad.error.message and "decimal" in bad.error.message


async def test_failed_statement_list_undoes_ddl(make_registry: MakeRegistry, dsn: str, table: str) -> None:
    reg = make_registry()
    failed = await run(
        reg,
        {
            "dsn": dsn,
            "statements": [
                {"query": f"CREATE TABLE {table} (x INTEGER)"},
                {"query": f"INSERT INTO {table} VALUES (1)"},
                {"query": f"INSERT INTO {table}_nosuch VALUES (1)"},
            ],
        },
    )
    assert failed.error is not None and failed.error.type == "PermanentError"
    # The CREATE TABLE was undone with the rest: the table is not there.
    gone = await run(reg, {"dsn": dsn, "query": f"SELECT count(*) AS n FROM {table}"})
    assert gone.error is not None and table in gone.error.message

    done = await ok(
        reg,
        {
            "dsn": dsn,
            "statements": [
                {"query": f"CREATE TABLE {table} (x INTEGER)"},
                {"query": f"INSERT INTO {table} VALUES (:x)", "params": {"x": 7}},
            ],
        },
    )
    assert done["results"] is not None and len(done["results"]) == 2
    out = await ok(reg, {"dsn": dsn, "query": f"SELECT x FROM {table}"})
    assert out["rows"] == [{"x": 7}]


async def test_sqlite_ddl_committed_for_other_connections(make_registry: MakeRegistry, tmp_path: Path) -> None:
    """What a separate sqlite3 connection sees: nothing after a failed list, the table after
    a good one (so the explicit BEGIN is also committed)."""
    path = tmp_path / "ddl.db"
    reg = make_registry(connections={"db": f"sqlite:///{path}"})
    bad = [{"query": "CREATE TABLE made (x INTEGER)"}, {"query": "INSERT INTO nosuch VALUES (1)"}]
    assert not (await run(reg, {"connection": "db", "statements": bad})).success

    def tables() -> list[str]:
        with sqlite3.connect(path) as other:
            return [r[0] for r in other.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]

    assert tables() == []
    good = [{"query": "CREATE TABLE made (x INTEGER)"}, {"query": "INSERT INTO made VALUES (1)"}]
    await ok(reg, {"connection": "db", "statements": good})
    assert tables() == ["made"]


async def test_sqlite_lock_wait_ends_with_the_task_timeout(make_registry: MakeRegistry, tmp_path: Path) -> None:
    path = tmp_path / "locked.db"
    reg = make_registry(connections={"db": f"sqlite:///{path}"})
    await ok(reg, {"connection": "db", "query": "CREATE TABLE t (x INTEGER)", "fetch": "none"})
    holder = sqlite3.connect(path, isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")  # a write lock the task has to wait for
        started = time.monotonic()
        result = await run(
            reg, {"connection": "db", "query": "INSERT INTO t VALUES (1)", "timeout": 0.5}
        )
        waited = time.monotonic() - started
        # The lock is still held here: the task gave up on its own.
        assert result.error is not None and result.error.type == "TaskTimeoutError", result.error
        assert "0.5s" in result.error.message
        # Loose bound: SQLite's own lock wait is 5 s; the task's 0.5 s must end it first.
        assert waited < 4.0
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    # The pooled connection is fine afterwards, and a task without a timeout gets the
    # default lock wait back (no lock now, so it just succeeds).
    await ok(reg, {"connection": "db", "query": "INSERT INTO t VALUES (2)", "fetch": "none"})
    out = await ok(reg, {"connection": "db", "query": "SELECT x FROM t"})
    assert out["rows"] == [{"x": 2}]
    # The lock wait follows each task's timeout, and goes back to SQLite's 5 s without one.
    waits = [
        (await ok(reg, {"connection": "db", "query": "PRAGMA busy_timeout", **extra}))["rows"]
        for extra in ({"timeout": 2}, {}, {"timeout": 0.25})
    ]
    assert [rows[0]["timeout"] for rows in waits] == [2000, 5000, 250]
