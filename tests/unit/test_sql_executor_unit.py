"""Pieces of the sql executor that need no database: input checks, DSN mapping, redaction
and JSON-safe values."""

from __future__ import annotations

import datetime as dt
import decimal
import json
import uuid

import pytest
from pydantic import ValidationError

from workplex.errors import MissingExtraError, PermanentError
from workplex.executors.sql import SqlInput, _bind, _json_safe, async_url, redact_dsn


def test_input_needs_exactly_one_target_and_one_query() -> None:
    with pytest.raises(ValidationError, match="exactly one of dsn, connection"):
        SqlInput.model_validate({"query": "SELECT 1"})
    with pytest.raises(ValidationError, match="exactly one of dsn, connection"):
        SqlInput.model_validate({"dsn": "sqlite://", "connection": "x", "query": "SELECT 1"})
    with pytest.raises(ValidationError, match="exactly one of query, statements"):
        SqlInput.model_validate({"dsn": "sqlite://"})
    with pytest.raises(ValidationError, match="inside each of statements"):
        SqlInput.model_validate(
            {"dsn": "sqlite://", "statements": [{"query": "SELECT 1"}], "params": {"a": 1}}
        )
    with pytest.raises(ValidationError, match="fetch"):
        SqlInput.model_validate({"dsn": "sqlite://", "query": "SELECT 1", "fetch": "some"})


@pytest.mark.parametrize(
    ("dsn", "driver"),
    [
        ("sqlite:///x.db", "sqlite+aiosqlite"),
        ("sqlite+aiosqlite:///x.db", "sqlite+aiosqlite"),
        ("postgresql://u:p@h/db", "postgresql+asyncpg"),
        ("postgres://u@h/db", "postgresql+asyncpg"),
    ],
)
def test_async_drivers(dsn: str, driver: str) -> None:
    assert async_url(dsn).drivername == driver


def test_sync_driver_and_unknown_database_are_refused() -> None:
    with pytest.raises(PermanentError, match="not an async driver"):
        async_url("postgresql+psycopg2://h/db")
    with pytest.raises(PermanentError, match="unsupported database 'oracle'"):
        async_url("oracle://h/db")
    with pytest.raises(PermanentError, match="not a database URL"):
        async_url("not a url")


def test_mysql_without_its_driver_names_the_extra() -> None:
    try:
        import aiomysql  # noqa: F401
    except ImportError:
        with pytest.raises(MissingExtraError, match=r"workplex\[mysql\]"):
            async_url("mysql://u@h/db")
    else:
        assert async_url("mysql://u@h/db").drivername == "mysql+aiomysql"


def test_redaction() -> None:
    dsn = "postgresql://user:hunter2@db.example/app"
    assert redact_dsn("failed for user:hunter2@db", dsn) == "failed for user:***@db"
    assert redact_dsn("nothing to hide", "sqlite:///x.db") == "nothing to hide"


def test_json_safe_values() -> None:
    key = uuid.uuid4()
    row = {
        "dt": dt.datetime(2024, 2, 29, 12, 0, tzinfo=dt.UTC),
        "d": dt.date(2024, 2, 29),
        "t": dt.time(23, 59),
        "dec": decimal.Decimal("1.10"),
        "id": key,
        "b": b"\x00\x01",
        "mv": memoryview(b"ab"),
        "nested": {"when": dt.date(2020, 1, 1), "list": [decimal.Decimal("2")]},
        "nan": float("nan"),
        "gap": dt.timedelta(minutes=1, seconds=30),
    }
    safe = {k: _json_safe(v) for k, v in row.items()}
    assert safe == {
        "dt": "2024-02-29T12:00:00+00:00",
        "d": "2024-02-29",
        "t": "23:59:00",
        "dec": "1.10",
        "id": str(key),
        "b": "AAE=",
        "mv": "YWI=",
        "nested": {"when": "2020-01-01", "list": ["2"]},
        "nan": "nan",
        "gap": 90.0,
    }
    json.dumps(safe)


def test_bind_converts_and_names_the_bad_parameter() -> None:
    bound = _bind({"d": "2024-01-02", "n": None, "j": {"a": 1}}, {"d": "date", "n": "uuid", "j": "json"}, "")
    assert bound == {"d": dt.date(2024, 1, 2), "n": None, "j": '{"a": 1}'}
    with pytest.raises(PermanentError, match=r"statements\[1\]\.params\.d: cannot convert"):
        _bind({"d": "yesterday"}, {"d": "date"}, "statements[1].")
