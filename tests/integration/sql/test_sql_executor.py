"""The sql executor against a SQLite file and a real PostgreSQL server."""

from __future__ import annotations

import base64
import json
import uuid

from workplex.backends.local import LocalBackend
from workplex.executor import Result, Task

from .conftest import MakeRegistry, ok, run

COUNT_TO = "WITH RECURSIVE s(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM s WHERE n < :top) "


async def test_create_insert_select(make_registry: MakeRegistry, dsn: str, table: str) -> None:
    reg = make_registry()
    await ok(reg, {"dsn": dsn, "query": f"CREATE TABLE {table} (id INTEGER, name TEXT)", "fetch": "none"})
    out = await ok(
        reg,
        {
            "dsn": dsn,
            "statements": [
                {"query": f"INSERT INTO {table} VALUES (:id, :name)", "params": {"id": 1, "name": "a"}},
                {"query": f"INSERT INTO {table} VALUES (:id, :name)", "params": {"id": 2, "name": "b"}},
            ],
            "fetch": "none",
        },
    )
    assert [r["rowcount"] for r in out["results"]] == [1, 1]
    out = await ok(reg, {"dsn": dsn, "query": f"SELECT id, name FROM {table} ORDER BY id"})
    assert out["columns"] == ["id", "name"]
    assert out["rows"] == [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]
    assert out["rowcount"] == 2 and out["truncated"] is False

    one = await ok(
        reg,
        {"dsn": dsn, "query": f"SELECT name FROM {table} WHERE id = :id", "params": {"id": 2}, "fetch": "one"},
    )
    assert one["rows"] == [{"name": "b"}]
    none = await ok(
        reg,
        {"dsn": dsn, "query": f"UPDATE {table} SET name = :n WHERE id >= :id", "params": {"n": "z", "id": 1}, "fetch": "none"},
    )
    assert none["rowcount"] == 2 and none["rows"] == []


async def test_injection_string_stays_data(make_registry: MakeRegistry, dsn: str, table: str) -> None:
    reg = make_registry()
    evil = "x'); DROP TABLE " + table + "; --"
    await ok(reg, {"dsn": dsn, "query": f"CREATE TABLE {table} (name TEXT)", "fetch": "none"})
    await ok(reg, {"dsn": dsn, "query": f"INSERT INTO {table} (name) VALUES (:name)", "params": {"name": evil}})
    out = await ok(
        reg, {"dsn": dsn, "query": f"SELECT name FROM {table} WHERE name = :name", "params": {"name": evil}}
    )
    assert out["rows"] == [{"name": evil}]
    # The table is still there, with its one row.
    count = await ok(reg, {"dsn": dsn, "query": f"SELECT count(*) AS n FROM {table}"})
    assert count["rows"] == [{"n": 1}]


async def test_statements_roll_back_together(make_registry: MakeRegistry, dsn: str, table: str) -> None:
    reg = make_registry()
    await ok(reg, {"dsn": dsn, "query": f"CREATE TABLE {table} (id INTEGER PRIMARY KEY)", "fetch": "none"})
    result = await run(
        reg,
        {
            "dsn": dsn,
            "statements": [
                {"query": f"INSERT INTO {table} VALUES (:id)", "params": {"id": 1}},
                {"query": f"INSERT INTO {table} VALUES (:id)", "params": {"id": 2}},
                {"query": f"INSERT INTO {table} VALUES (:id)", "params": {"id": 1}},
            ],
        },
    )
    assert not result.success and result.error is not None
    assert result.error.type == "PermanentError"
    assert "unique" in result.error.message.lower() or "duplicate" in result.error.message.lower()
    count = await ok(reg, {"dsn": dsn, "query": f"SELECT count(*) AS n FROM {table}"})
    assert count["rows"] == [{"n": 0}]


async def test_row_cap(make_registry: MakeRegistry, dsn: str) -> None:
    reg = make_registry(max_rows=10)
    query = COUNT_TO + "SELECT n FROM s"
    capped = await ok(reg, {"dsn": dsn, "query": query, "params": {"top": 25}})
    assert [r["n"] for r in capped["rows"]] == list(range(1, 11))
    assert capped["truncated"] is True
    wider = await ok(reg, {"dsn": dsn, "query": query, "params": {"top": 25}, "max_rows": 25})
    assert len(wider["rows"]) == 25 and wider["truncated"] is False


async def test_syntax_error_is_permanent(make_registry: MakeRegistry, dsn: str) -> None:
    result = await run(make_registry(), {"dsn": dsn, "query": "SELEC 1"})
    assert result.error is not None
    assert result.error.type == "PermanentError"
    assert "syntax" in result.error.message.lower()


async def test_named_connection_and_inline_dsn_refused(make_registry: MakeRegistry, dsn: str) -> None:
    reg = make_registry(connections={"main": dsn}, allow_dsn=False)
    out = await ok(reg, {"connection": "main", "query": "SELECT 1 AS one"})
    assert out["rows"] == [{"one": 1}]
    unknown = await run(reg, {"connection": "other", "query": "SELECT 1"})
    assert unknown.error is not None and "'other'" in unknown.error.message
    assert "main" in unknown.error.message
    inline = await run(reg, {"dsn": dsn, "query": "SELECT 1"})
    assert inline.error is not None and "allow_dsn" in inline.error.message


async def test_sqlite_types_and_timeout(make_registry: MakeRegistry, tmp_path: object, table: str) -> None:
    dsn = f"sqlite:///{tmp_path}/types.db"
    reg = make_registry()
    await ok(reg, {"dsn": dsn, "query": f"CREATE TABLE {table} (b BLOB, f REAL, n TEXT, d TEXT)"})
    await ok(
        reg,
        {
            "dsn": dsn,
            "query": f"INSERT INTO {table} VALUES (:b, :f, :n, :d)",
            "params": {"b": base64.b64encode(b"\x00\xffhi").decode(), "f": 1.5, "n": None, "d": "2024-02-29"},
            "types": {"b": "bytes", "d": "date"},
        },
    )
    out = await ok(reg, {"dsn": dsn, "query": f"SELECT b, f, n, d FROM {table}"})
    assert out["rows"] == [
        {"b": base64.b64encode(b"\x00\xffhi").decode(), "f": 1.5, "n": None, "d": "2024-02-29"}
    ]
    endless = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c"
    timed = await run(reg, {"dsn": dsn, "query": endless, "timeout": 0.3})
    assert timed.error is not None and timed.error.type == "TaskTimeoutError", timed.error
    # The pooled connection is still usable after the interrupt.
    again = await ok(reg, {"dsn": dsn, "query": "SELECT 2 AS two", "timeout": 5})
    assert again["rows"] == [{"two": 2}]


async def test_postgres_types_round_trip(make_registry: MakeRegistry, postgres_url: str, table: str) -> None:
    reg = make_registry()
    await ok(
        reg,
        {
            "dsn": postgres_url,
            "query": f"CREATE TABLE {table} (d date, ts timestamp, tz timestamptz, t time, "
            "amount numeric(12, 3), id uuid, raw bytea, doc jsonb, missing text, ok boolean, "
            "f double precision)",
            "fetch": "none",
        },
    )
    key = uuid.uuid4()
    raw = bytes(range(256))
    doc = {"a": [1, 2, {"b": None}], "c": "ü"}
    await ok(
        reg,
        {
            "dsn": postgres_url,
            "query": f"INSERT INTO {table} VALUES (:d, :ts, :tz, :t, :amount, :id, :raw, "
            "CAST(:doc AS jsonb), :missing, :ok, :f)",
            "params": {
                "d": "2024-02-29",
                "ts": "2024-02-29T12:34:56.789000",
                "tz": "2024-02-29T12:34:56+00:00",
                "t": "23:59:58",
                "amount": "12345.678",
                "id": str(key),
                "raw": base64.b64encode(raw).decode(),
                "doc": doc,
                "missing": None,
                "ok": True,
                "f": 0.25,
            },
            "types": {
                "d": "date",
                "ts": "datetime",
                "tz": "datetime",
                "t": "time",
                "amount": "decimal",
                "id": "uuid",
                "raw": "bytes",
                "doc": "json",
            },
        },
    )
    out = await ok(reg, {"dsn": postgres_url, "query": f"SELECT * FROM {table}"})
    row = out["rows"][0]
    json.dumps(out)  # JSON-safe as a whole
    assert row["d"] == "2024-02-29"
    assert row["ts"] == "2024-02-29T12:34:56.789000"
    assert row["tz"].startswith("2024-02-29T12:34:56")
    assert row["t"] == "23:59:58"
    assert row["amount"] == "12345.678"
    assert row["id"] == str(key)
    assert base64.b64decode(row["raw"]) == raw
    assert row["doc"] == doc
    assert row["missing"] is None
    assert row["ok"] is True
    assert row["f"] == 0.25


async def test_postgres_statement_timeout(make_registry: MakeRegistry, postgres_url: str) -> None:
    reg = make_registry()
    timed = await run(reg, {"dsn": postgres_url, "query": "SELECT pg_sleep(10)", "timeout": 0.3})
    assert timed.error is not None and timed.error.type == "TaskTimeoutError", timed.error
    after = await ok(reg, {"dsn": postgres_url, "query": "SELECT 1 AS one", "timeout": 5})
    assert after["rows"] == [{"one": 1}]


async def test_password_never_in_messages(make_registry: MakeRegistry) -> None:
    # Port 1 on 127.0.0.1: nothing listens, the connection is refused.
    dsn = "postgresql://someone:s3cretpass@127.0.0.1:1/db"
    result = await run(make_registry(), {"dsn": dsn, "query": "SELECT 1"})
    assert result.error is not None
    assert result.error.type == "RetryableError", result.error
    assert "s3cretpass" not in result.error.message


async def test_pool_bounded_under_a_thousand_tasks(
    make_registry: MakeRegistry, postgres_url: str
) -> None:
    reg = make_registry(pool_size=3, max_overflow=2)
    query = (
        "SELECT pg_backend_pid() AS pid, (SELECT count(*) FROM pg_stat_activity "
        "WHERE backend_type = 'client backend' AND datname = current_database()) AS conns"
    )
    tasks = [Task("sql", {"dsn": postgres_url, "query": query}) for _ in range(1000)]
    results: list[Result | None] = [None] * len(tasks)

    def on_result(index: int, result: Result) -> None:
        results[index] = result

    await LocalBackend(reg).execute(tasks, run_id="r", stage="s", limit=100, on_result=on_result)
    assert all(r is not None and r.success for r in results), [r for r in results if r and not r.success][:3]
    rows = [r.output["rows"][0] for r in results if r is not None]
    # Never more than pool_size + max_overflow connections at once ...
    assert max(row["conns"] for row in rows) <= 5
    # ... and connections are reused: overflow ones are closed when returned, the pooled
    # ones serve task after task.
    assert len({row["pid"] for row in rows}) < 100


async def test_pool_without_overflow_keeps_its_connections(
    make_registry: MakeRegistry, postgres_url: str
) -> None:
    reg = make_registry(pool_size=4, max_overflow=0)
    tasks = [Task("sql", {"dsn": postgres_url, "query": "SELECT pg_backend_pid() AS pid"}) for _ in range(300)]
    pids: set[int] = set()

    def on_result(index: int, result: Result) -> None:
        assert result.success, result.error
        pids.add(result.output["rows"][0]["pid"])

    await LocalBackend(reg).execute(tasks, run_id="r", stage="s", limit=50, on_result=on_result)
    assert 1 <= len(pids) <= 4
