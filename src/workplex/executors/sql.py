"""``sql``: a parameterized query, or a list of statements in one transaction, against a DSN.

Values only ever travel as bound parameters (``sqlalchemy.text`` with ``:name``
placeholders); the query text is never built from them. One ``AsyncEngine`` (a connection
pool) per DSN is shared by every task, created on first use and disposed at shutdown.

The executor is TRUSTED: tasks name a database from the config's ``connections``. An
inline ``dsn`` could name any file or host, so it is accepted only when the config sets
``allow_dsn: true``.

DSNs name the database the usual way and are mapped to async drivers:
``sqlite:///path`` → ``sqlite+aiosqlite``, ``postgresql://`` / ``postgres://`` →
``postgresql+asyncpg``, ``mysql://`` / ``mariadb://`` → ``mysql+aiomysql`` (when
installed). Rows come back as JSON-safe dicts: dates and times as ISO strings, decimals
and UUIDs as strings, bytes as base64.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime as dt
import decimal
import importlib.util
import json
import math
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from workplex.errors import (
    MissingExtraError,
    PermanentError,
    RetryableError,
    TaskTimeoutError,
)
from workplex.executor import Capabilities, Context, Executor, ExecutorConfig, SecurityLevel

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

ParamType = Literal["date", "datetime", "time", "decimal", "uuid", "bytes", "json"]


class Statement(BaseModel):
    model_config = ConfigDict(extra="forbid")

    query: str = Field(min_length=1)
    params: dict[str, Any] = Field(default_factory=dict)
    types: dict[str, ParamType] = Field(default_factory=dict)


class SqlInput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    dsn: str | None = Field(default=None, description="Database URL (prefer `connection`).")
    connection: str | None = Field(
        default=None, description="Name of a DSN in the executor config's `connections`."
    )
    query: str | None = Field(default=None, min_length=1, description="SQL with :name params.")
    params: dict[str, Any] = Field(default_factory=dict, description="Bound parameters.")
    types: dict[str, ParamType] = Field(
        default_factory=dict,
        description="Converts JSON parameter values before binding (e.g. an ISO string to a date).",
    )
    statements: list[Statement] | None = Field(
        default=None, min_length=1, description="Run in order in one transaction."
    )
    fetch: Literal["all", "one", "none"] = "all"
    max_rows: int | None = Field(default=None, gt=0, description="Row cap (config default).")
    timeout: float | None = Field(default=None, gt=0, description="Statement timeout, seconds.")

    @model_validator(mode="after")
    def _exactly_one(self) -> SqlInput:
        if (self.dsn is None) == (self.connection is None):
            raise ValueError("give exactly one of dsn, connection")
        if (self.query is None) == (self.statements is None):
            raise ValueError("give exactly one of query, statements")
        if self.statements is not None and (self.params or self.types):
            raise ValueError("params/types go inside each of statements[], not beside them")
        return self


class StatementResult(BaseModel):
    rows: list[dict[str, Any]]
    rowcount: int
    columns: list[str]
    truncated: bool


class SqlOutput(StatementResult):
    results: list[StatementResult] | None = Field(
        default=None, description="One per statement when `statements` was given."
    )


class SqlConfig(ExecutorConfig):
    connections: dict[str, str] = Field(
        default_factory=dict, description="Named DSNs, so secrets stay out of pipeline files."
    )
    allow_dsn: bool = Field(
        default=False,
        description=(
            "Accept an inline `dsn` from pipelines. Off by default: the executor is TRUSTED "
            "(network to configured places), and an inline DSN can name any database file or "
            "host, so turning this on widens its reach to what `privileged` means."
        ),
    )
    pool_size: int = Field(default=5, gt=0)
    max_overflow: int = Field(default=10, ge=0)
    pool_timeout: float = Field(default=30.0, gt=0)
    max_rows: int = Field(default=10_000, gt=0)
    timeout_seconds: float | None = Field(default=None, gt=0, description="Default timeout.")
    health_timeout_seconds: float = Field(
        default=5.0, gt=0, description="Bound on the health check (`SELECT 1` on each pool)."
    )


_ASYNC_DRIVERS = {
    "sqlite": "aiosqlite",
    "postgresql": "asyncpg",
    "postgres": "asyncpg",
    "mysql": "aiomysql",
    "mariadb": "aiomysql",
}
_KNOWN_ASYNC = {"aiosqlite", "asyncpg", "psycopg", "aiomysql", "asyncmy"}
_DRIVER_EXTRA = {"asyncpg": "sql", "aiomysql": "mysql", "asyncmy": "mysql", "psycopg": "sql"}


def redact_dsn(text: str, dsn: str) -> str:
    """``text`` with the DSN's password (if any) replaced by ``***``."""
    from sqlalchemy.engine import make_url

    try:
        password = make_url(dsn).password
    except Exception:
        return text
    if password:
        text = text.replace(str(password), "***")
    return text


def async_url(dsn: str) -> Any:
    """The SQLAlchemy URL of ``dsn`` with an async driver (PermanentError if none fits)."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        url = make_url(dsn)
    except ArgumentError as exc:
        raise PermanentError("dsn: not a database URL (like postgresql://host/db)") from exc
    backend, _, driver = url.drivername.partition("+")
    if not driver:
        driver = _ASYNC_DRIVERS.get(backend, "")
        if not driver:
            raise PermanentError(f"dsn: unsupported database {backend!r}")
        if backend in ("postgres", "mariadb"):
            backend = "postgresql" if backend == "postgres" else "mysql"
        url = url.set(drivername=f"{backend}+{driver}")
    elif driver not in _KNOWN_ASYNC:
        raise PermanentError(
            f"dsn: driver {driver!r} is not an async driver; use one of "
            f"{', '.join(sorted(_KNOWN_ASYNC))} or leave the driver out"
        )
    if importlib.util.find_spec(driver) is None:
        extra = _DRIVER_EXTRA.get(driver, "sql")
        raise MissingExtraError(extra, driver, f"the sql executor ({backend})")
    return url


def _b64(value: bytes | bytearray | memoryview) -> str:
    return base64.b64encode(value).decode("ascii")


def _json_safe(value: Any) -> Any:
    converter = _CONVERTERS.get(type(value))
    if converter is not None:
        return converter(value)
    for kind, conv in _CONVERTER_BASES:
        if isinstance(value, kind):
            return conv(value)
    return str(value)


def _iso(value: dt.date | dt.time) -> str:
    return value.isoformat()


def _seconds(value: dt.timedelta) -> float:
    return value.total_seconds()


def _dict(value: dict[Any, Any]) -> dict[str, Any]:
    return {str(k): v if type(v) in _PLAIN else _json_safe(v) for k, v in value.items()}


def _list(value: list[Any] | tuple[Any, ...]) -> list[Any]:
    return [v if type(v) in _PLAIN else _json_safe(v) for v in value]


def _identity(value: Any) -> Any:
    return value


def _float(value: float) -> Any:
    # NaN and infinities are not JSON.
    return value if value == value and value not in (float("inf"), float("-inf")) else str(value)


_PLAIN = frozenset({str, int, bool, type(None)})
_CONVERTERS: dict[type, Callable[[Any], Any]] = {
    str: _identity,
    int: _identity,
    bool: _identity,
    type(None): _identity,
    float: _float,
    dt.datetime: _iso,
    dt.date: _iso,
    dt.time: _iso,
    dt.timedelta: _seconds,
    decimal.Decimal: str,
    uuid.UUID: str,
    bytes: _b64,
    bytearray: _b64,
    memoryview: _b64,
    dict: _dict,
    list: _list,
    tuple: _list,
}
_CONVERTER_BASES: tuple[tuple[type, Callable[[Any], Any]], ...] = (
    (dt.datetime, _iso),
    (dt.date, _iso),
    (dt.time, _iso),
    (decimal.Decimal, str),
    (uuid.UUID, str),
    (dict, _dict),
    (list, _list),
)


def _to_bytes(v: Any) -> bytes:
    return base64.b64decode(v, validate=True) if isinstance(v, str) else bytes(v)


_PARAM_CONVERTERS: dict[str, Callable[[Any], Any]] = {
    "date": lambda v: dt.date.fromisoformat(v),
    "datetime": lambda v: dt.datetime.fromisoformat(v),
    "time": lambda v: dt.time.fromisoformat(v),
    "decimal": lambda v: decimal.Decimal(str(v)),
    "uuid": lambda v: uuid.UUID(str(v)),
    "bytes": _to_bytes,
    "json": lambda v: json.dumps(v),
}


def _sqlite_datetime(v: Any) -> str:
    # The text form sqlite3's (deprecated) default adapter wrote, so stored values match.
    return dt.datetime.fromisoformat(v).isoformat(" ")


# SQLite has no date, time, decimal or UUID column types and sqlite3 cannot bind those
# objects: values are checked by parsing, then bound as their canonical text.
_SQLITE_PARAM_CONVERTERS: dict[str, Callable[[Any], Any]] = {
    **_PARAM_CONVERTERS,
    "date": lambda v: dt.date.fromisoformat(v).isoformat(),
    "datetime": _sqlite_datetime,
    "time": lambda v: dt.time.fromisoformat(v).isoformat(),
    "decimal": lambda v: str(decimal.Decimal(str(v))),
    "uuid": lambda v: str(uuid.UUID(str(v))),
}


def _bind(
    params: dict[str, Any],
    types: dict[str, ParamType],
    where: str,
    converters: dict[str, Callable[[Any], Any]] = _PARAM_CONVERTERS,
) -> dict[str, Any]:
    if not types:
        return params
    out = dict(params)
    for name, kind in types.items():
        if name not in out or out[name] is None:
            continue
        try:
            out[name] = converters[kind](out[name])
        except (TypeError, ValueError, decimal.InvalidOperation) as exc:
            raise PermanentError(
                f"{where}params.{name}: cannot convert {out[name]!r} to {kind}: {exc}"
            ) from exc
    return out


# SQLSTATE classes where another attempt may succeed: connection exceptions, transaction
# rollbacks (serialization failures, deadlocks), insufficient resources, operator
# intervention (shutdown), lock not available.
_RETRYABLE_SQLSTATE_CLASSES = ("08", "40", "53", "57P", "55P03", "58")
_SQLITE_RETRYABLE = ("database is locked", "database table is locked", "disk i/o error")


class Sql(Executor):
    name = "sql"
    description = "Runs a parameterized SQL query (or statements in one transaction) against a DSN."
    security = SecurityLevel.TRUSTED

    @classmethod
    def security_for(cls, config: Any) -> SecurityLevel:
        # Inline DSNs reach any database, not only the configured ones.
        return SecurityLevel.PRIVILEGED if getattr(config, "allow_dsn", False) else cls.security
    capabilities = Capabilities(network=True, filesystem=True)

    Input = SqlInput
    Output = SqlOutput
    Config = SqlConfig

    def __init__(self) -> None:
        super().__init__()
        self._engines: dict[str, AsyncEngine] = {}
        self._lock = asyncio.Lock()
        self._texts: dict[str, Any] = {}
        self._sa: Any = None
        self._closed = False

    async def startup(self, config: SqlConfig) -> None:
        await super().startup(config)
        import sqlalchemy

        self._sa = sqlalchemy
        self._closed = False

    async def shutdown(self) -> None:
        self._closed = True
        engines, self._engines = self._engines, {}
        for engine in engines.values():
            await engine.dispose()

    async def health_check(self) -> bool:
        """``SELECT 1`` on every open pool, all within ``health_timeout_seconds``; true when
        no pool exists yet (nothing to check until a task names a database)."""
        if self._closed:
            return False
        engines = list(self._engines.values())
        if not engines:
            return True
        config: SqlConfig = self.config
        try:
            async with asyncio.timeout(config.health_timeout_seconds):
                answers = await asyncio.gather(
                    *(self._ping(engine) for engine in engines), return_exceptions=True
                )
        except TimeoutError:
            return False
        return all(answer is True for answer in answers)

    async def _ping(self, engine: AsyncEngine) -> bool:
        async with engine.connect() as conn:
            value = (await conn.execute(self._text("SELECT 1"))).scalar()
        return bool(value == 1)

    # ---- engines ------------------------------------------------------------------
    def _dsn(self, input: SqlInput) -> str:
        config: SqlConfig = self.config
        if input.connection is not None:
            dsn = config.connections.get(input.connection)
            if dsn is None:
                known = ", ".join(sorted(config.connections)) or "(none configured)"
                raise PermanentError(
                    f"connection: unknown connection {input.connection!r}; known: {known}"
                )
            return dsn
        if not config.allow_dsn:
            raise PermanentError(
                "dsn: inline DSNs are not allowed; name a `connection` from the config's "
                "executors.sql.connections, or set executors.sql.allow_dsn: true in the config "
                "(which lets pipelines reach any database)",
                details={"field": "dsn"},
            )
        assert input.dsn is not None
        return input.dsn

    async def _engine(self, dsn: str) -> AsyncEngine:
        engine = self._engines.get(dsn)
        if engine is not None:
            return engine
        async with self._lock:
            engine = self._engines.get(dsn)
            if engine is None:
                engine = self._make_engine(dsn)
                self._engines[dsn] = engine
        return engine

    def _make_engine(self, dsn: str) -> AsyncEngine:
        from sqlalchemy.ext.asyncio import create_async_engine

        config: SqlConfig = self.config
        url = async_url(dsn)
        options: dict[str, Any] = {}
        memory = url.get_backend_name() == "sqlite" and url.database in (None, "", ":memory:")
        if not memory:
            # An in-memory SQLite database lives in one connection (a static pool).
            options.update(
                pool_size=config.pool_size,
                max_overflow=config.max_overflow,
                pool_timeout=config.pool_timeout,
            )
        if url.get_backend_name() != "sqlite":
            options["pool_pre_ping"] = False
            return create_async_engine(url, **options)
        options["connect_args"] = {"timeout": _SQLITE_BUSY_DEFAULT_MS / 1000}
        engine = create_async_engine(url, **options)
        _transactional_ddl(engine)
        return engine

    def _text(self, query: str) -> Any:
        clause = self._texts.get(query)
        if clause is None:
            clause = self._sa.text(query)
            if len(self._texts) >= 1024:  # bounded: pipelines use few distinct queries
                self._texts.clear()
            self._texts[query] = clause
        return clause

    # ---- execution ----------------------------------------------------------------
    async def execute(self, input: SqlInput, ctx: Context) -> dict[str, Any]:
        if self._closed:
            raise PermanentError("the sql executor is shut down")
        config: SqlConfig = self.config
        dsn = self._dsn(input)
        engine = await self._engine(dsn)
        max_rows = input.max_rows or config.max_rows
        timeout = input.timeout or config.timeout_seconds
        remaining = ctx.remaining()
        if remaining is not None:
            timeout = min(timeout, remaining) if timeout else remaining
        sqlite = engine.dialect.name == "sqlite"
        converters = _SQLITE_PARAM_CONVERTERS if sqlite else _PARAM_CONVERTERS
        if input.statements is not None:
            steps = [
                (s.query, _bind(s.params, s.types, f"statements[{i}].", converters))
                for i, s in enumerate(input.statements)
            ]
        else:
            assert input.query is not None
            steps = [(input.query, _bind(input.params, input.types, "", converters))]
        from sqlalchemy.exc import SQLAlchemyError

        interrupt: asyncio.TimerHandle | None = None
        try:
            # A backstop past the statement timeout, should the database not stop in time.
            async with asyncio.timeout(timeout + 1.0 if timeout is not None else None):
                async with engine.begin() as conn:
                    try:
                        if sqlite:
                            interrupt = await _arm_sqlite(conn, timeout)
                        elif timeout is not None:
                            await self._arm_timeout(conn, timeout)
                        results = [
                            await self._run(conn, q, p, input.fetch, max_rows) for q, p in steps
                        ]
                    finally:
                        # Disarm before the connection goes back to the pool, so a late
                        # interrupt can never hit another task's statement.
                        if interrupt is not None:
                            interrupt.cancel()
        except SQLAlchemyError as exc:
            # The busy timeout ends a lock wait at the same moment the interrupt is due;
            # a little slack keeps clock granularity from calling that a plain lock error.
            timed_out = interrupt is not None and _fired(interrupt, slack=0.05)
            raise self._translate(exc, dsn, ctx, timed_out, timeout) from exc
        except TimeoutError as exc:
            if timeout is None:  # e.g. the driver's own connect timeout
                raise RetryableError("the database did not answer in time") from exc
            raise TaskTimeoutError(f"statement timeout ({timeout:g}s) exceeded") from exc
        except OSError as exc:
            raise RetryableError(
                ctx.secrets.redact(redact_dsn(f"cannot reach the database: {exc}", dsn))
            ) from exc
        last = results[-1]
        if input.statements is not None:
            last["results"] = results
        return last

    async def _arm_timeout(self, conn: AsyncConnection, seconds: float) -> None:
        """Start the statement timeout for this transaction (SQLite: see ``_arm_sqlite``)."""
        if conn.dialect.name == "postgresql":
            # SET LOCAL ends with the transaction; the server cancels a statement past it.
            ms = max(1, int(seconds * 1000))
            await conn.exec_driver_sql(f"SET LOCAL statement_timeout = {ms}")
        # Elsewhere the asyncio backstop in execute() cancels the call.

    async def _run(
        self, conn: AsyncConnection, query: str, params: dict[str, Any], fetch: str, max_rows: int
    ) -> dict[str, Any]:
        result = await conn.execute(self._text(query), params)
        rows: list[dict[str, Any]] = []
        columns: list[str] = []
        truncated = False
        if result.returns_rows:
            columns = list(result.keys())
            if fetch == "one":
                first = result.fetchone()
                fetched = [first] if first is not None else []
            elif fetch == "all":
                fetched = list(result.fetchmany(max_rows + 1))
                if len(fetched) > max_rows:
                    truncated = True
                    del fetched[max_rows:]
            else:
                fetched = []
            result.close()
            plain = _PLAIN
            for row in fetched:
                rows.append(
                    {
                        c: v if type(v) in plain else _json_safe(v)
                        for c, v in zip(columns, row, strict=True)
                    }
                )
            rowcount = len(rows) if fetch != "none" else max(result.rowcount, 0)
        else:
            rowcount = max(result.rowcount, 0)
        return {"rows": rows, "rowcount": rowcount, "columns": columns, "truncated": truncated}

    def _translate(
        self, exc: Exception, dsn: str, ctx: Context, timed_out: bool, timeout: float | None
    ) -> Exception:
        from sqlalchemy import exc as sa_exc

        orig = getattr(exc, "orig", None) or exc
        message = str(orig).strip() or type(orig).__name__
        message = ctx.secrets.redact(redact_dsn(message, dsn))
        sqlstate = _sqlstate(orig)
        if timed_out or sqlstate == "57014":
            limit = f" ({timeout:g}s)" if timeout is not None else ""
            return TaskTimeoutError(f"statement timeout{limit} exceeded: {message}")
        details = {"sqlstate": sqlstate} if sqlstate else None
        if isinstance(exc, sa_exc.TimeoutError):
            return RetryableError(f"no database connection free in the pool: {message}")
        if sqlstate is not None:
            if sqlstate.startswith(_RETRYABLE_SQLSTATE_CLASSES):
                return RetryableError(f"database error [{sqlstate}]: {message}", details=details)
            return PermanentError(f"database error [{sqlstate}]: {message}", details=details)
        lowered = message.lower()
        if isinstance(exc, sa_exc.OperationalError) and any(
            s in lowered for s in _SQLITE_RETRYABLE
        ):
            return RetryableError(f"database busy: {message}")
        if isinstance(exc, sa_exc.InterfaceError) or getattr(exc, "connection_invalidated", False):
            return RetryableError(f"database connection failed: {message}")
        if isinstance(exc, sa_exc.DBAPIError) and isinstance(
            getattr(orig, "__cause__", None), OSError
        ):
            return RetryableError(f"cannot reach the database: {message}")
        return PermanentError(f"database error: {message}")


def _fired(handle: asyncio.TimerHandle, slack: float = 0.0) -> bool:
    return handle.when() <= asyncio.get_running_loop().time() + slack


# sqlite3's own default: how long a statement waits for another connection's lock.
_SQLITE_BUSY_DEFAULT_MS = 5000
_BUSY_KEY = "workplex_busy_timeout_ms"


def _transactional_ddl(engine: AsyncEngine) -> None:
    """SQLAlchemy's recipe for pysqlite/aiosqlite: the driver stops managing transactions
    (it would COMMIT before DDL, so a failing list of statements could not undo a CREATE)
    and every transaction starts with an explicit BEGIN."""
    from sqlalchemy import event

    def on_connect(dbapi_connection: Any, record: Any) -> None:
        dbapi_connection.isolation_level = None
        record.info[_BUSY_KEY] = _SQLITE_BUSY_DEFAULT_MS  # from connect_args' timeout

    def on_begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN")

    event.listen(engine.sync_engine, "connect", on_connect)
    event.listen(engine.sync_engine, "begin", on_begin)


async def _arm_sqlite(conn: AsyncConnection, seconds: float | None) -> asyncio.TimerHandle | None:
    """Bound this transaction on SQLite: waits for another connection's lock end with the
    task's timeout (busy timeout), and a running statement is interrupted when it is due.

    The busy timeout is a connection setting, so it is set (and remembered on the pooled
    connection) only when it differs from what the previous task left."""
    raw = await conn.get_raw_connection()
    busy_ms = _SQLITE_BUSY_DEFAULT_MS if seconds is None else max(1, math.ceil(seconds * 1000))
    if raw.info.get(_BUSY_KEY) != busy_ms:
        await conn.exec_driver_sql(f"PRAGMA busy_timeout = {busy_ms}")
        raw.info[_BUSY_KEY] = busy_ms
    if seconds is None:
        return None
    sqlite_conn = getattr(raw.driver_connection, "_conn", None)
    if sqlite_conn is None:
        return None
    return asyncio.get_running_loop().call_later(seconds, _interrupt, sqlite_conn)


def _interrupt(sqlite_conn: Any) -> None:
    # sqlite3's interrupt is safe from another thread: the running statement stops.
    with contextlib.suppress(Exception):  # the connection closed meanwhile: nothing to stop
        sqlite_conn.interrupt()


def _sqlstate(orig: Any) -> str | None:
    for candidate in (orig, getattr(orig, "__cause__", None)):
        code = getattr(candidate, "sqlstate", None) or getattr(candidate, "pgcode", None)
        if isinstance(code, str) and code:
            return code
    return None
