"""The run store: runs, stages, tasks, events, approvals and leases in SQLite or PostgreSQL.

Durability model:

- ``create_run`` writes the run and all its stages in one transaction.
- ``task_done`` only appends to an in-memory buffer. A background flusher writes the buffer
  in one transaction (``executemany``) when it holds ``batch_rows`` rows or every
  ``flush_interval`` seconds; ``flush``, ``stage_update``, ``run_update`` and every read
  that depends on tasks flush first. A task row is written once, with its final result, so
  a process killed at any instant leaves either the whole batch or none of it.
- Task results buffered but not yet written when the process dies are lost; ``resume`` runs
  those tasks again (at-least-once).
- A lease (owner + expiry on the run row) lets one process drive a run; taking it is a
  single conditional ``UPDATE`` whose row count says who won.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import and_, delete, event, func, insert, or_, select, update
from sqlalchemy.engine import Row
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from workplex.errors import MissingExtraError, StoreError
from workplex.executor import ErrorInfo, Metrics, Result
from workplex.store import schema as t
from workplex.store.migrations import migrate
from workplex.store.url import driver_url, redact, sqlite_file

try:  # orjson is optional: about 3x faster than json for the task-row hot path
    import orjson

    def _dumps(value: Any) -> str:
        return orjson.dumps(value, default=_fallback, option=orjson.OPT_NON_STR_KEYS).decode()

    _loads: Callable[[str | bytes], Any] = orjson.loads
except ImportError:  # pragma: no cover - depends on the environment

    def _dumps(value: Any) -> str:
        return json.dumps(value, default=_fallback, separators=(",", ":"))

    _loads = json.loads


def _fallback(value: Any) -> Any:
    if hasattr(value, "model_dump"):
        return value.model_dump(mode="json")
    return str(value)


DEFAULT_MAX_OUTPUT = 1024 * 1024
"""Largest serialized output (bytes) kept per task or stage; larger ones are truncated."""
MAX_OUTPUT_ENV = "WORKPLEX_STORE_MAX_OUTPUT"
PREVIEW_CHARS = 2048
TRUNCATED_TEXT = " ... [truncated: {size} bytes]"
"""The marker appended to a text (error message, event field) cut to the output cap."""
TERMINAL_RUN = frozenset(t.FINISHED)


class RunNotFoundError(StoreError):
    """No run with that id is in the store."""

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id
        super().__init__(f"no run {run_id!r} in the store")


@dataclass
class StoredStage:
    name: str
    status: str
    output: Any = None
    error: str | None = None
    total: int | None = None
    started: float | None = None
    ended: float | None = None
    position: int = 0


@dataclass
class StoredRun:
    run_id: str
    pipeline: str
    status: str
    document: dict[str, Any] | None
    path: str | None
    inputs: dict[str, Any]
    parent_run_id: str | None
    created: float
    started: float | None = None
    ended: float | None = None
    output: Any = None
    error: str | None = None
    lease_owner: str | None = None
    lease_until: float | None = None
    cancel_requested: bool = False
    stages: dict[str, StoredStage] = field(default_factory=dict)

    @property
    def duration(self) -> float | None:
        if self.started is None:
            return None
        return (self.ended or time.time()) - self.started

    def to_dict(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "pipeline": self.pipeline,
            "status": self.status,
            "path": self.path,
            "inputs": self.inputs,
            "parent_run_id": self.parent_run_id,
            "created": self.created,
            "started": self.started,
            "ended": self.ended,
            "duration": self.duration,
            "output": self.output,
            "error": self.error,
            "lease_owner": self.lease_owner,
            "lease_until": self.lease_until,
            "cancel_requested": self.cancel_requested,
            "stages": {
                s.name: {
                    "status": s.status,
                    "output": s.output,
                    "error": s.error,
                    "total": s.total,
                    "started": s.started,
                    "ended": s.ended,
                }
                for s in self.stages.values()
            },
        }


@dataclass(frozen=True)
class Approval:
    approved: bool
    comment: str | None
    by: str | None
    at: float


@dataclass(frozen=True)
class PendingApproval:
    """A stage waiting for a decision: ``run_id`` may be a sub-run of the run asked about."""

    run_id: str
    stage: str
    message: str | None
    requested: float


@dataclass(frozen=True)
class TaskStats:
    """Per-stage summary of the recorded tasks."""

    total: int
    succeeded: int
    failed: int
    retried: int
    max_attempts: int
    min_duration: float | None
    avg_duration: float | None
    max_duration: float | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "recorded": self.total,
            "succeeded": self.succeeded,
            "failed": self.failed,
            "retried": self.retried,
            "max_attempts": self.max_attempts,
            "duration": {
                "min": self.min_duration,
                "avg": self.avg_duration,
                "max": self.max_duration,
            },
        }


@dataclass(frozen=True)
class StoredEvent:
    ts: float
    kind: str
    stage: str | None
    data: dict[str, Any]


STDERR_TAIL_LINES = 20
STDERR_TAIL_CHARS = 2000


def _stderr_tail(output: Any) -> str | None:
    """The last lines of a task output's ``stderr`` (as the command executor returns it)."""
    if not isinstance(output, dict) or not isinstance(output.get("stderr"), str):
        return None
    text = output["stderr"].rstrip("\n")
    if not text:
        return None
    tail = "\n".join(text.splitlines()[-STDERR_TAIL_LINES:])
    return tail[-STDERR_TAIL_CHARS:]


def _json_or_none(value: str | None) -> Any:
    return None if value is None else _loads(value)


class Store:
    """The run store. Open with ``await Store.open(url)``; close with ``await store.close()``."""

    def __init__(
        self,
        engine: AsyncEngine,
        url: str,
        *,
        max_output_bytes: int = DEFAULT_MAX_OUTPUT,
        batch_rows: int = 5000,
        flush_interval: float = 0.05,
    ) -> None:
        self._engine = engine
        self.url = url
        self.dialect = engine.dialect.name
        self.max_output_bytes = max_output_bytes
        self._batch_rows = batch_rows
        self._flush_interval = flush_interval
        self._tasks: list[tuple[str, str, int, str, str, Result, bool]] = []
        self._events: list[tuple[str, float, str, str | None, str]] = []
        self._write_lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._flusher: asyncio.Task[None] | None = None
        self._closed = False
        ph = self._placeholders
        self._insert_tasks_sql = (
            "INSERT INTO tasks (run_id, stage, idx, task_id, executor, status, output, error, "
            "exit_code, attempts, started, ended, duration, logs) "
            f"VALUES ({ph(14)}) ON CONFLICT (run_id, stage, idx) DO UPDATE SET "
            "task_id = excluded.task_id, executor = excluded.executor, status = excluded.status, "
            "output = excluded.output, error = excluded.error, exit_code = excluded.exit_code, "
            "attempts = excluded.attempts, started = excluded.started, ended = excluded.ended, "
            "duration = excluded.duration, logs = excluded.logs"
        )
        self._insert_events_sql = (
            f"INSERT INTO events (run_id, ts, kind, stage, data) VALUES ({ph(5)})"
        )

    def _placeholders(self, n: int) -> str:
        # exec_driver_sql speaks the driver's paramstyle: qmark (aiosqlite), $n (asyncpg).
        if self.dialect == "postgresql":
            return ", ".join(f"${i}" for i in range(1, n + 1))
        return ", ".join("?" * n)

    # ---- lifecycle ------------------------------------------------------------------
    @classmethod
    async def open(
        cls,
        url: str | None = None,
        *,
        max_output_bytes: int | None = None,
        batch_rows: int = 5000,
        flush_interval: float = 0.05,
        busy_timeout: float = 30.0,
    ) -> Store:
        """Connect, bring the schema up to date and start the background flusher."""
        target = driver_url(url)
        if max_output_bytes is None:
            env = os.environ.get(MAX_OUTPUT_ENV)
            try:
                max_output_bytes = int(env) if env else DEFAULT_MAX_OUTPUT
            except ValueError as exc:
                raise StoreError(f"{MAX_OUTPUT_ENV}={env!r}: not a number of bytes") from exc
        path = sqlite_file(target)
        if path is not None:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise StoreError(f"store {path}: cannot create its directory: {exc}") from exc
        try:
            if path is not None or target.startswith("sqlite"):
                engine = create_async_engine(target, connect_args={"timeout": busy_timeout})
                _sqlite_setup(engine, busy_timeout)
            else:
                engine = create_async_engine(target, pool_size=5, max_overflow=5)
        except ImportError as exc:
            # The driver of a PostgreSQL store is an extra: say which pip install adds it.
            missing = MissingExtraError("postgres", exc.name or "asyncpg", "a PostgreSQL store")
            raise StoreError(f"store {redact(target)}: {missing}") from exc
        except (SQLAlchemyError, ValueError) as exc:
            raise StoreError(f"store {redact(target)}: {exc}") from exc
        store = cls(
            engine,
            target,
            max_output_bytes=max_output_bytes,
            batch_rows=batch_rows,
            flush_interval=flush_interval,
        )
        try:
            async with store._begin_write() as conn:
                await migrate(conn)
        except StoreError:
            await engine.dispose()
            raise
        except (SQLAlchemyError, OSError) as exc:
            await engine.dispose()
            raise StoreError(f"cannot open store {redact(target)}: {exc}") from exc
        store._flusher = asyncio.ensure_future(store._flush_loop())
        return store

    async def close(self) -> None:
        """Write what is buffered, stop the flusher and close connections."""
        if self._closed:
            return
        self._closed = True
        try:
            if self._flusher is not None:
                self._flusher.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._flusher
            await self.flush()
        finally:
            await self._engine.dispose()

    async def __aenter__(self) -> Store:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @contextlib.asynccontextmanager
    async def _begin_write(self) -> AsyncIterator[AsyncConnection]:
        """A write transaction; on SQLite ``BEGIN IMMEDIATE`` so it waits for the write lock
        up front (busy timeout) instead of failing when a read turns into a write."""
        async with self._engine.connect() as conn:
            if self.dialect == "sqlite":
                conn = await conn.execution_options(workplex_begin="BEGIN IMMEDIATE")
            async with conn.begin():
                yield conn

    # ---- writing runs ----------------------------------------------------------------
    async def create_run(
        self,
        run_id: str,
        pipeline_name: str,
        document: dict[str, Any] | None,
        path: str | None,
        inputs: Mapping[str, Any],
        parent_run_id: str | None = None,
    ) -> None:
        """Record a new run and its stages (``pending``) in one transaction."""
        now = time.time()
        stage_rows = [
            {"run_id": run_id, "name": name, "position": i, "status": "pending"}
            for i, name in enumerate(_stage_names(document))
        ]
        try:
            async with self._begin_write() as conn:
                await conn.execute(
                    insert(t.runs),
                    {
                        "run_id": run_id,
                        "pipeline": pipeline_name,
                        "status": "pending",
                        "document": _dumps(document) if document is not None else None,
                        "path": path,
                        "inputs": _dumps(dict(inputs)),
                        "parent_run_id": parent_run_id,
                        "created": now,
                        "updated": now,
                        "cancel_requested": False,
                    },
                )
                if stage_rows:
                    await conn.execute(insert(t.stages), stage_rows)
        except IntegrityError as exc:
            raise StoreError(f"run {run_id!r} already exists in the store") from exc
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot record run {run_id!r}: {exc}") from exc

    async def run_update(
        self, run_id: str, status: str, *, output: Any = None, error: str | None = None
    ) -> None:
        """Set a run's status (and output/error); flushes buffered tasks first."""
        await self.flush()
        now = time.time()
        values: dict[str, Any] = {"status": status, "updated": now}
        if output is not None:
            values["output"] = self._dump_output(output)
        error = self.cap_text(error)
        if status in ("running", "pending"):
            values["error"] = error
            values["ended"] = None
            values["started"] = func.coalesce(t.runs.c.started, now)
        else:
            if error is not None:
                values["error"] = error
            if status in TERMINAL_RUN:
                values["ended"] = now
        await self._write_checked(
            run_id, update(t.runs).where(t.runs.c.run_id == run_id).values(values)
        )

    async def stage_update(
        self,
        run_id: str,
        stage: str,
        status: str,
        *,
        output: Any = None,
        error: str | None = None,
        total: int | None = None,
        started: float | None = None,
        ended: float | None = None,
    ) -> None:
        """Set a stage's status and details; values left None keep what is stored, except
        that a stage going (back) to running or pending drops its old error and end time."""
        await self.flush()
        values: dict[str, Any] = {"status": status}
        if output is not None:
            values["output"] = self._dump_output(output)
        if total is not None:
            values["total"] = total
        if started is not None:
            values["started"] = started
        error = self.cap_text(error)
        if status in ("running", "pending"):
            values["error"] = error
            values["ended"] = ended
        else:
            if error is not None:
                values["error"] = error
            if ended is not None:
                values["ended"] = ended
        cond = and_(t.stages.c.run_id == run_id, t.stages.c.name == stage)
        try:
            async with self._begin_write() as conn:
                res = await conn.execute(update(t.stages).where(cond).values(values))
                if res.rowcount == 0:
                    # A stage the document did not list (e.g. added by a pattern plugin).
                    position = (
                        await conn.execute(select(func.count()).where(t.stages.c.run_id == run_id))
                    ).scalar_one()
                    values.update(run_id=run_id, name=stage, position=int(position))
                    await conn.execute(insert(t.stages).values(values))
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot update stage {stage!r} of run {run_id!r}: {exc}") from exc

    async def _write_checked(self, run_id: str, statement: Any) -> int:
        try:
            async with self._begin_write() as conn:
                res = await conn.execute(statement)
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot update run {run_id!r}: {exc}") from exc
        if res.rowcount == 0:
            raise RunNotFoundError(run_id)
        return int(res.rowcount)

    # ---- batched task results and events --------------------------------------------
    def task_done(
        self,
        run_id: str,
        stage: str,
        index: int,
        task_id: str,
        executor: str,
        payload: Any,
        result: Result,
        *,
        succeeded: bool | None = None,
    ) -> None:
        """Buffer a task's final result; it reaches the database with the next batch.

        ``payload`` is not stored: payloads may hold resolved secrets, and the pipeline
        document plus the run inputs rebuild it. ``succeeded`` is the status as the engine
        judged it (a non-zero exit fails a task unless ``fail_on_nonzero: false``); without
        it, ``result.success`` decides.
        """
        ok = result.success if succeeded is None else succeeded
        self._tasks.append((run_id, stage, index, task_id, executor, result, ok))
        if len(self._tasks) >= self._batch_rows:
            self._wake.set()

    async def event(self, run_id: str, kind: str, data: Mapping[str, Any]) -> None:
        """Record an event (state change, log line, ...); batched with the task results."""
        stage = data.get("stage")
        self._events.append(
            (
                run_id,
                time.time(),
                kind,
                str(stage) if stage is not None else None,
                self._dump_event(data),
            )
        )
        if len(self._events) >= self._batch_rows:
            self._wake.set()

    async def log(
        self, run_id: str, message: str, *, stage: str | None = None, **fields: Any
    ) -> None:
        """A log line of a run (an event of kind ``log``)."""
        await self.event(run_id, "log", {"message": message, "stage": stage, **fields})

    async def flush(self) -> None:
        """Write every buffered task result and event now (one transaction)."""
        async with self._write_lock:
            if not self._tasks and not self._events:
                return
            tasks, self._tasks = self._tasks, []
            events, self._events = self._events, []
            try:
                # A task that paused the run (RunPaused) has not finished: it runs again on
                # resume, so it must not be recorded as a final result.
                rows = [
                    self._task_row(*item)
                    for item in tasks
                    if item[5].error is None or item[5].error.type != "RunPaused"
                ]
                async with self._begin_write() as conn:
                    if self.dialect == "sqlite":
                        # Straight to aiosqlite, inside the transaction begun above: SQLAlchemy's
                        # per-row parameter handling would double the cost of a large batch.
                        raw = (await conn.get_raw_connection()).driver_connection
                        assert raw is not None
                        if rows:
                            await raw.executemany(self._insert_tasks_sql, rows)
                        if events:
                            await raw.executemany(self._insert_events_sql, events)
                    else:
                        if rows:
                            await conn.exec_driver_sql(self._insert_tasks_sql, rows)
                        if events:
                            await conn.exec_driver_sql(self._insert_events_sql, events)
            except BaseException as exc:
                # Keep the rows for the next attempt; nothing of this batch was committed.
                self._tasks[:0] = tasks
                self._events[:0] = events
                if isinstance(exc, SQLAlchemyError | OSError):
                    raise StoreError(f"writing {len(tasks)} task results failed: {exc}") from exc
                raise

    async def _flush_loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._flush_interval):
                    await self._wake.wait()
            self._wake.clear()
            if self._tasks or self._events:
                # A failed batch stays buffered; the next explicit flush (stage_update,
                # run_update, ...) retries it and reports the error to the engine.
                with contextlib.suppress(StoreError):
                    await self.flush()

    @property
    def pending_writes(self) -> int:
        """Task results and events buffered but not yet written."""
        return len(self._tasks) + len(self._events)

    def _task_row(
        self,
        run_id: str,
        stage: str,
        index: int,
        task_id: str,
        executor: str,
        result: Result,
        succeeded: bool,
    ) -> tuple[Any, ...]:
        m = result.metrics
        err = result.error
        return (
            run_id,
            stage,
            index,
            task_id or f"{run_id}:{stage}:{index}",
            executor,
            "succeeded" if succeeded else "failed",
            None if result.output is None else self._dump_output(result.output),
            None if err is None else self._dump_error(err),
            result.exit_code,
            m.attempts if m is not None else 1,
            m.start if m is not None else None,
            m.end if m is not None else None,
            m.duration if m is not None else None,
            _dumps(result.logs) if result.logs else None,
        )

    def _dump_output(self, value: Any) -> str:
        data = _dumps(value)
        if len(data) <= self.max_output_bytes:
            return data
        size = len(data.encode())
        if size <= self.max_output_bytes:
            return data
        preview = data[: min(PREVIEW_CHARS, self.max_output_bytes // 2)]
        return _dumps({"truncated": True, "preview": preview, "size": size})

    def cap_text(self, text: str | None) -> str | None:
        """``text`` cut to the output cap (an error message, an event field), with a marker
        saying how large it was."""
        if text is None or len(text) <= self.max_output_bytes // 4:
            return text  # at most 4 bytes per character: surely within the cap
        size = len(text.encode())
        if size <= self.max_output_bytes:
            return text
        preview = text[: min(PREVIEW_CHARS, self.max_output_bytes // 2)]
        return f"{preview}{TRUNCATED_TEXT.format(size=size)}"

    def _dump_error(self, err: ErrorInfo) -> str:
        data = _dumps(err.to_dict())
        if len(data) <= self.max_output_bytes:
            return data
        capped = err.to_dict()
        capped["message"] = self.cap_text(err.message)
        if "details" in capped:
            capped["details"] = _loads(self._dump_output(capped["details"]))
        return _dumps(capped)

    def _dump_event(self, data: Mapping[str, Any]) -> str:
        text = _dumps(dict(data))
        if len(text) <= self.max_output_bytes:
            return text
        # Each large field is cut on its own, so ``stage`` and the small fields stay readable.
        capped: dict[str, Any] = {}
        for key, value in data.items():
            if isinstance(value, str):
                capped[key] = self.cap_text(value)
            elif isinstance(value, int | float | bool) or value is None:
                capped[key] = value
            else:
                capped[key] = _loads(self._dump_output(value))
        return _dumps(capped)

    # ---- leases and cancellation ------------------------------------------------------
    async def acquire_lease(self, run_id: str, owner: str, ttl: float) -> None:
        """Take the run's lease for ``ttl`` seconds, or raise ``StoreError`` naming the holder."""
        now = time.time()
        r = t.runs.c
        stmt = (
            update(t.runs)
            .where(
                r.run_id == run_id,
                or_(r.lease_owner.is_(None), r.lease_until < now, r.lease_owner == owner),
            )
            .values(lease_owner=owner, lease_until=now + ttl, updated=now)
        )
        try:
            async with self._begin_write() as conn:
                res = await conn.execute(stmt)
                if res.rowcount == 1:
                    return
                row = (
                    await conn.execute(
                        select(r.lease_owner, r.lease_until).where(r.run_id == run_id)
                    )
                ).first()
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot take the lease of run {run_id!r}: {exc}") from exc
        if row is None:
            raise RunNotFoundError(run_id)
        if row.lease_owner and _dead_local_owner(row.lease_owner):
            # Its process is gone (killed, crashed): no need to wait for the lease to expire.
            dead = str(row.lease_owner)
            try:
                async with self._begin_write() as conn:
                    res = await conn.execute(
                        update(t.runs)
                        .where(r.run_id == run_id, r.lease_owner == dead)
                        .values(lease_owner=owner, lease_until=now + ttl, updated=now)
                    )
                    if res.rowcount != 1:
                        # Lost the race: another process took it over; name that one.
                        row = (
                            await conn.execute(
                                select(r.lease_owner, r.lease_until).where(r.run_id == run_id)
                            )
                        ).first()
            except SQLAlchemyError as exc:
                raise StoreError(f"cannot take the lease of run {run_id!r}: {exc}") from exc
            if res.rowcount == 1:
                await self.event(run_id, "lease.taken_over", {"from": dead, "to": owner})
                return
            if row is None:
                raise RunNotFoundError(run_id)
        until = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(row.lease_until or now))
        raise StoreError(
            f"run {run_id} is being driven by {row.lease_owner or 'another process'} "
            f"(lease until {until}); "
            "wait for it to finish or for its lease to expire"
        )

    async def renew_lease(self, run_id: str, owner: str, ttl: float) -> bool:
        """Extend the lease. False when it was lost or a cancel was requested."""
        now = time.time()
        r = t.runs.c
        stmt = (
            update(t.runs)
            .where(r.run_id == run_id, r.lease_owner == owner, r.cancel_requested.is_(False))
            .values(lease_until=now + ttl)
        )
        try:
            async with self._begin_write() as conn:
                res = await conn.execute(stmt)
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot renew the lease of run {run_id!r}: {exc}") from exc
        return res.rowcount == 1

    async def release_lease(self, run_id: str, owner: str) -> None:
        """Give the lease up (only if ``owner`` still holds it)."""
        await self.flush()
        r = t.runs.c
        try:
            async with self._begin_write() as conn:
                await conn.execute(
                    update(t.runs)
                    .where(r.run_id == run_id, r.lease_owner == owner)
                    .values(lease_owner=None, lease_until=None)
                )
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot release the lease of run {run_id!r}: {exc}") from exc

    async def request_cancel(self, run_id: str) -> str:
        """Ask the driver of a run to cancel it. A run nobody drives (paused, its lease
        expired, or its driver a process of this host that is gone) is marked ``cancelled`` at
        once. Returns the run's status."""
        now = time.time()
        r = t.runs.c
        try:
            async with self._begin_write() as conn:
                res = await conn.execute(
                    update(t.runs)
                    .where(r.run_id == run_id)
                    .values(cancel_requested=True, updated=now)
                )
                if res.rowcount == 0:
                    raise RunNotFoundError(run_id)
                nobody = [r.lease_owner.is_(None), r.lease_until < now]
                holder = (
                    await conn.execute(select(r.lease_owner).where(r.run_id == run_id))
                ).scalar()
                if holder and _dead_local_owner(str(holder)):
                    # As in acquire_lease: a killed driver never renews, so nobody drives it.
                    nobody.append(r.lease_owner == holder)
                undriven = await conn.execute(
                    update(t.runs)
                    .where(
                        r.run_id == run_id,
                        r.status.not_in(TERMINAL_RUN),
                        or_(*nobody),
                    )
                    .values(status="cancelled", ended=now, lease_owner=None, lease_until=None)
                )
                if undriven.rowcount:
                    s = t.stages.c
                    await conn.execute(
                        update(t.stages)
                        .where(s.run_id == run_id, s.status.in_(("pending", "running", "paused")))
                        .values(status="cancelled", ended=now)
                    )
                status = (
                    await conn.execute(select(r.status).where(r.run_id == run_id))
                ).scalar_one()
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot cancel run {run_id!r}: {exc}") from exc
        return str(status)

    # ---- approvals ----------------------------------------------------------------------
    async def request_approval(
        self,
        run_id: str,
        stage: str,
        message: str | None = None,
        approvers: Sequence[str] = (),
    ) -> float:
        """Note that a stage waits for approval; returns when it was first requested.

        ``approvers`` (who may decide; empty: anyone) go in the ``approval.requested`` event,
        where ``workplex approve`` reads them to refuse anyone else."""
        now = time.time()
        a = t.approvals.c
        try:
            async with self._begin_write() as conn:
                found = (
                    await conn.execute(
                        select(a.requested).where(a.run_id == run_id, a.stage == stage)
                    )
                ).scalar()
                if found is not None:
                    return float(found)
                await conn.execute(
                    insert(t.approvals).values(
                        run_id=run_id, stage=stage, requested=now, message=message
                    )
                )
        except SQLAlchemyError as exc:
            raise StoreError(
                f"cannot record the approval request of {run_id}/{stage}: {exc}"
            ) from exc
        await self.event(
            run_id,
            "approval.requested",
            {"stage": stage, "message": message, "approvers": list(approvers)},
        )
        return now

    async def approvers(self, run_id: str, stage: str) -> list[str]:
        """Who may decide on a stage's approval (empty: anyone), as its request named them."""
        found = await self.events(run_id, stage=stage, kinds=["approval.requested"])
        names = found[-1].data.get("approvers") if found else None
        return [str(n) for n in names] if isinstance(names, list) else []

    async def get_approval(self, run_id: str, stage: str) -> Approval | None:
        """The decision on a stage, or None while there is none."""
        a = t.approvals.c
        async with self._engine.connect() as conn:
            row = (
                await conn.execute(
                    select(a.approved, a.comment, a.decided_by, a.decided).where(
                        a.run_id == run_id, a.stage == stage, a.approved.is_not(None)
                    )
                )
            ).first()
        if row is None:
            return None
        return Approval(bool(row.approved), row.comment, row.decided_by, float(row.decided or 0.0))

    async def set_approval(
        self,
        run_id: str,
        stage: str,
        approved: bool,
        comment: str | None = None,
        by: str | None = None,
    ) -> None:
        """Record a decision on a stage (the last decision wins)."""
        now = time.time()
        a = t.approvals.c
        values = {"approved": approved, "comment": comment, "decided_by": by, "decided": now}
        try:
            async with self._begin_write() as conn:
                exists = (
                    await conn.execute(select(t.runs.c.run_id).where(t.runs.c.run_id == run_id))
                ).first()
                if exists is None:
                    raise RunNotFoundError(run_id)
                res = await conn.execute(
                    update(t.approvals).where(a.run_id == run_id, a.stage == stage).values(values)
                )
                if res.rowcount == 0:
                    await conn.execute(
                        insert(t.approvals).values(
                            run_id=run_id, stage=stage, requested=now, **values
                        )
                    )
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot record the decision on {run_id}/{stage}: {exc}") from exc
        await self.event(
            run_id,
            "approval.decided",
            {"stage": stage, "approved": approved, "comment": comment, "by": by},
        )
        await self.flush()

    async def pending_approvals(self, run_id: str) -> list[PendingApproval]:
        """The stages waiting for a decision in this run and in its paused sub-runs (at any
        depth), in the order they were requested."""
        await self.flush()
        a = t.approvals.c
        s = t.stages.c
        found: list[PendingApproval] = []
        todo = [run_id]
        seen: set[str] = set()
        try:
            async with self._engine.connect() as conn:
                while todo:
                    rid = todo.pop(0)
                    if rid in seen:
                        continue
                    seen.add(rid)
                    rows = (
                        await conn.execute(
                            select(a.stage, a.message, a.requested)
                            .select_from(
                                t.approvals.join(
                                    t.stages, and_(s.run_id == a.run_id, s.name == a.stage)
                                )
                            )
                            .where(a.run_id == rid, a.approved.is_(None), s.status == "paused")
                            .order_by(a.requested)
                        )
                    ).all()
                    found.extend(
                        PendingApproval(rid, r.stage, r.message, float(r.requested)) for r in rows
                    )
                    children = (
                        await conn.execute(
                            select(t.runs.c.run_id)
                            .where(t.runs.c.parent_run_id == rid, t.runs.c.status == "paused")
                            .order_by(t.runs.c.created)
                        )
                    ).all()
                    todo.extend(str(c.run_id) for c in children)
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot read the approvals of run {run_id!r}: {exc}") from exc
        return found

    # ---- reading ----------------------------------------------------------------------
    async def get_run(self, run_id: str) -> StoredRun | None:
        """The run with its stages (in pipeline order), or None."""
        async with self._engine.connect() as conn:
            row = (await conn.execute(select(t.runs).where(t.runs.c.run_id == run_id))).first()
            if row is None:
                return None
            stage_rows = (
                await conn.execute(
                    select(t.stages)
                    .where(t.stages.c.run_id == run_id)
                    .order_by(t.stages.c.position)
                )
            ).all()
        run = _run_from_row(row)
        for s in stage_rows:
            run.stages[s.name] = StoredStage(
                name=s.name,
                status=s.status,
                output=_json_or_none(s.output),
                error=s.error,
                total=s.total,
                started=s.started,
                ended=s.ended,
                position=s.position,
            )
        return run

    async def require_run(self, run_id: str) -> StoredRun:
        run = await self.get_run(run_id)
        if run is None:
            raise RunNotFoundError(run_id)
        return run

    async def list_runs(
        self,
        *,
        status: str | None = None,
        pipeline: str | None = None,
        parent_run_id: str | None = None,
        limit: int = 50,
    ) -> list[StoredRun]:
        """Runs, newest first (without their stages)."""
        r = t.runs.c
        stmt = select(t.runs).order_by(r.created.desc()).limit(limit)
        if status:
            stmt = stmt.where(r.status == status)
        if pipeline:
            stmt = stmt.where(r.pipeline == pipeline)
        if parent_run_id:
            stmt = stmt.where(r.parent_run_id == parent_run_id)
        async with self._engine.connect() as conn:
            rows = (await conn.execute(stmt)).all()
        return [_run_from_row(row) for row in rows]

    async def finished_tasks(self, run_id: str, stage: str) -> dict[int, Result]:
        """Tasks of a stage whose final result is recorded, by index."""
        await self.flush()
        c = t.tasks.c
        stmt = select(
            c.idx,
            c.task_id,
            c.status,
            c.output,
            c.error,
            c.exit_code,
            c.attempts,
            c.started,
            c.ended,
            c.duration,
            c.logs,
        ).where(c.run_id == run_id, c.stage == stage)
        async with self._engine.connect() as conn:
            rows = (await conn.execute(stmt)).all()
        found: dict[int, Result] = {}
        for row in rows:
            err = _json_or_none(row.error)
            found[row.idx] = Result(
                success=row.status == "succeeded",
                output=_json_or_none(row.output),
                error=ErrorInfo.from_dict(err) if err else None,
                exit_code=row.exit_code,
                logs=_json_or_none(row.logs),
                metrics=Metrics(
                    row.started or 0.0, row.ended or 0.0, row.duration or 0.0, row.attempts
                ),
                task_id=row.task_id,
            )
        return found

    async def task_stats(self, run_id: str) -> dict[str, TaskStats]:
        """Per stage: recorded tasks, successes, failures, retries, durations."""
        await self.flush()
        c = t.tasks.c
        ok = func.sum(_case_int(c.status == "succeeded"))
        stmt = (
            select(
                c.stage,
                func.count(),
                ok,
                func.sum(_case_int(c.attempts > 1)),
                func.max(c.attempts),
                func.min(c.duration),
                func.avg(c.duration),
                func.max(c.duration),
            )
            .where(c.run_id == run_id)
            .group_by(c.stage)
        )
        async with self._engine.connect() as conn:
            rows = (await conn.execute(stmt)).all()
        out: dict[str, TaskStats] = {}
        for stage, total, succeeded, retried, max_att, dmin, davg, dmax in rows:
            out[stage] = TaskStats(
                total=int(total),
                succeeded=int(succeeded or 0),
                failed=int(total) - int(succeeded or 0),
                retried=int(retried or 0),
                max_attempts=int(max_att or 0),
                min_duration=_f(dmin),
                avg_duration=_f(davg),
                max_duration=_f(dmax),
            )
        return out

    async def failed_tasks(
        self, run_id: str, stage: str | None = None, limit: int = 20
    ) -> list[dict[str, Any]]:
        """The first failed tasks of a run or stage: index, id, executor, attempts, exit code,
        error, and the tail of the task's ``stderr`` when its output has one (a command that
        exited non-zero has no error, only what it printed)."""
        await self.flush()
        c = t.tasks.c
        stmt = (
            select(
                c.stage, c.idx, c.task_id, c.executor, c.attempts, c.error, c.exit_code, c.output
            )
            .where(c.run_id == run_id, c.status == "failed")
            .order_by(c.stage, c.idx)
            .limit(limit)
        )
        if stage:
            stmt = stmt.where(c.stage == stage)
        async with self._engine.connect() as conn:
            rows = (await conn.execute(stmt)).all()
        return [
            {
                "stage": row.stage,
                "index": row.idx,
                "task_id": row.task_id,
                "executor": row.executor,
                "attempts": row.attempts,
                "exit_code": row.exit_code,
                "error": _json_or_none(row.error),
                "stderr_tail": _stderr_tail(_json_or_none(row.output)),
            }
            for row in rows
        ]

    async def events(
        self,
        run_id: str,
        *,
        stage: str | None = None,
        kinds: Iterable[str] | None = None,
        limit: int | None = None,
    ) -> list[StoredEvent]:
        """A run's events in the order they were recorded."""
        await self.flush()
        e = t.events.c
        stmt = select(e.ts, e.kind, e.stage, e.data).where(e.run_id == run_id).order_by(e.id)
        if stage:
            stmt = stmt.where(e.stage == stage)
        if kinds is not None:
            stmt = stmt.where(e.kind.in_(list(kinds)))
        if limit:
            stmt = stmt.limit(limit)
        async with self._engine.connect() as conn:
            rows = (await conn.execute(stmt)).all()
        return [
            StoredEvent(row.ts, row.kind, row.stage, _json_or_none(row.data) or {}) for row in rows
        ]

    # ---- retention --------------------------------------------------------------------
    async def gc(self, older_than: float) -> list[str]:
        """Delete finished runs that ended more than ``older_than`` seconds ago, with all their
        rows. Returns the deleted run ids."""
        await self.flush()
        cutoff = time.time() - older_than
        r = t.runs.c
        try:
            async with self._begin_write() as conn:
                ids = [
                    row[0]
                    for row in (
                        await conn.execute(
                            select(r.run_id).where(r.status.in_(TERMINAL_RUN), r.ended < cutoff)
                        )
                    ).all()
                ]
                for start in range(0, len(ids), 500):
                    chunk = ids[start : start + 500]
                    for table in (t.tasks, t.stages, t.events, t.approvals):
                        await conn.execute(delete(table).where(table.c.run_id.in_(chunk)))
                    await conn.execute(delete(t.runs).where(r.run_id.in_(chunk)))
        except SQLAlchemyError as exc:
            raise StoreError(f"gc failed: {exc}") from exc
        return ids


# ---- helpers ------------------------------------------------------------------------
def _sqlite_setup(engine: AsyncEngine, busy_timeout: float) -> None:
    """WAL + synchronous=NORMAL: a commit survives a killed process (not a power cut: the
    last commits before one may be lost, the file stays consistent). Transactions are
    begun explicitly so DDL is transactional and writers can ``BEGIN IMMEDIATE``."""

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
        # Switching a new file to WAL needs an exclusive lock and SQLite does not apply the
        # busy timeout to it: when two processes create the same store at once, one of them
        # gets "database is locked" at once. Retry for as long as the busy timeout allows.
        give_up = time.monotonic() + busy_timeout
        while True:
            try:
                cur.execute("PRAGMA journal_mode = WAL")
                break
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > give_up:
                    raise
                time.sleep(0.02)
        cur.execute("PRAGMA synchronous = NORMAL")
        cur.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: Any) -> None:
        conn.exec_driver_sql(conn.get_execution_options().get("workplex_begin", "BEGIN"))


_HOST = socket.gethostname()


def _dead_local_owner(owner: str) -> bool:
    """True when ``owner`` (``host:pid:tag``, as the engine names itself) is a process of
    this host that no longer exists."""
    parts = owner.split(":")
    if len(parts) < 3 or not parts[-2].isdigit():
        return False
    host = ":".join(parts[:-2])
    if host != _HOST:
        return False
    pid = int(parts[-2])
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False
    return False


def _stage_names(document: Mapping[str, Any] | None) -> list[str]:
    if not document:
        return []
    names: list[str] = []
    for stage in document.get("stages") or []:
        name = stage.get("name") if isinstance(stage, Mapping) else None
        if isinstance(name, str) and name not in names:
            names.append(name)
    return names


def _run_from_row(row: Row[Any]) -> StoredRun:
    return StoredRun(
        run_id=row.run_id,
        pipeline=row.pipeline,
        status=row.status,
        document=_json_or_none(row.document),
        path=row.path,
        inputs=_json_or_none(row.inputs) or {},
        parent_run_id=row.parent_run_id,
        created=row.created,
        started=row.started,
        ended=row.ended,
        output=_json_or_none(row.output),
        error=row.error,
        lease_owner=row.lease_owner,
        lease_until=row.lease_until,
        cancel_requested=bool(row.cancel_requested),
    )


def _case_int(cond: Any) -> Any:
    from sqlalchemy import case

    return case((cond, 1), else_=0)


def _f(value: Any) -> float | None:
    return None if value is None else float(value)
