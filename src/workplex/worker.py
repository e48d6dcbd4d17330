"""``workplex worker``: pulls the tasks it can run from NATS JetStream and returns Results.

A worker owns a Registry (same config file and entry points as the controller) and binds
one durable pull consumer per executor type it offers (``workplex-<executor>``, filter
``workplex.tasks.<executor>``), shared with every other worker offering that type: work
goes only where the capability is, and workers of one type share it.

Per task: decode, validate with the executor's Input model, run through the same overlays
(``registry.call_for(type, settings)``), publish the Result to the run's results subject,
wait for JetStream's publish ack, then ack the task. A failure whose error is retryable
(after the overlays' own retries here) is handed back with a delayed ``nak`` (the error's
``retry_after``, else ``--nak-delay``) for another delivery, maybe on another worker, until
the last allowed delivery, which reports it; other failures are final. A payload that
cannot be processed (bad JSON, invalid input) is reported failed and terminated
(``term``); a task whose executor cannot start at all is handed back with a delayed
``nak``. Once its result is stored, a task is acked when it succeeded and terminated
(``term``) when it failed, so JetStream never redelivers a final failure. Long tasks send in-progress acks, so the ack
wait only has to cover a dead worker, not a slow task.

SIGTERM: stop pulling, hand back queued tasks, finish running ones within ``grace``
seconds, hand back the rest, remove this worker from the KV bucket, exit 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import socket
import time
from collections.abc import Collection, Iterable, Sequence
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError as PydanticValidationError

from workplex.backends.jetstream import (
    HEADROOM,
    MSG_ID,
    TASKS_STREAM,
    ConnectOptions,
    Layout,
    StreamSettings,
    connect,
    dead_letter_loop,
    dumps,
    durable_name,
    ensure_layout,
    get_blob,
    load_nats,
    loads,
    put_blob,
    task_subject,
)
from workplex.errors import BackendError, ConfigError, ValidationError
from workplex.executor import Context, Result
from workplex.registry import Prepared, run_call

if TYPE_CHECKING:
    from workplex.registry import Registry

_KEY_RE = re.compile(r"[^-/_=.a-zA-Z0-9]")


def default_worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


class _Slots:
    """How many tasks this worker holds (queued or running) or has asked the server for."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.held = 0
        self.reserved = 0
        self.changed = asyncio.Event()

    @property
    def free(self) -> int:
        return self.capacity - self.held - self.reserved

    def release(self, n: int = 1) -> None:
        self.held -= n
        self.changed.set()


class _Pull:
    """A streaming pull on one durable consumer: one pull request at a time, messages are
    handed to the worker's queue as they arrive (no waiting for a full batch)."""

    def __init__(self, worker: Worker, executor: str) -> None:
        self.worker = worker
        self.executor = executor
        self.durable = durable_name(executor)
        self.remaining = 0
        self.counted = False  # whether the open request's tasks were reserved as slots
        self.ended = asyncio.Event()
        self.sub: Any = None

    async def on_message(self, msg: Any) -> None:
        worker = self.worker
        headers = msg.headers
        if headers and "Status" in headers and not msg.data:
            if headers["Status"] != "100":  # 100 is an idle heartbeat; others end the request
                self.ended.set()
            return
        if self.remaining > 0:
            self.remaining -= 1
            if self.counted:
                worker.slots.reserved -= 1
        if self.remaining == 0:
            self.ended.set()
        if worker.stopping.is_set():
            await msg.nak()  # arrived after the stop: hand it back at once
            return
        worker.slots.held += 1
        worker.track(msg)
        worker.queue.put_nowait(msg)

    async def loop(self) -> None:
        worker = self.worker
        nc = worker.nc
        inbox = nc.new_inbox()
        self.sub = await nc.subscribe(inbox, cb=self.on_message, pending_msgs_limit=-1)
        request_subject = f"$JS.API.CONSUMER.MSG.NEXT.{TASKS_STREAM}.{self.durable}"
        expires = int(worker.pull_expires * 1e9)
        slots = worker.slots
        stopping = worker.stopping
        low = max(1, min(worker.fetch_batch, slots.capacity) // 4)
        idle = True
        try:
            while not stopping.is_set():
                if slots.free < (1 if idle else low):
                    slots.changed.clear()
                    await _first(slots.changed.wait(), stopping.wait())
                    continue
                # An idle consumer only probes for one task and reserves no slot for it:
                # a probe waits at the server for up to pull_expires, and reserved probes of
                # the other executor types would starve a busy one. A probe that does bring
                # a task may hold it queued beyond --concurrency; the runners still run at
                # most --concurrency at once.
                n = 1 if idle else min(slots.free, worker.fetch_batch)
                self.remaining = n
                self.counted = not idle
                if self.counted:
                    slots.reserved += n
                self.ended.clear()
                await nc.publish(
                    request_subject, dumps({"batch": n, "expires": expires}), reply=inbox
                )
                # The request ends fulfilled or expired; keep listening until then even when
                # stopping, so nothing the server already sent is stranded.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.ended.wait(), worker.pull_expires + 2.0)
                idle = self.remaining == n
                if self.counted:
                    slots.reserved -= self.remaining
                self.remaining = 0
                slots.changed.set()
        finally:
            with contextlib.suppress(Exception):
                await self.sub.unsubscribe()


async def _first(*coros: Any) -> None:
    """Wait until the first of ``coros`` finishes; cancel the others."""
    tasks = [asyncio.ensure_future(c) for c in coros]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


class _Outgoing:
    """One finished task waiting to be reported: its result and the message to ack."""

    __slots__ = ("data", "dispatch", "msg", "reply", "success", "term", "tid")

    def __init__(
        self, reply: str, tid: str, dispatch: str, data: bytes, msg: Any, success: bool, term: bool
    ) -> None:
        self.reply = reply
        self.tid = tid
        self.dispatch = dispatch
        self.data = data
        self.msg = msg
        self.success = success
        self.term = term


class _ResultSender:
    """Publishes results in batches (one message per results subject carrying many results),
    waits for JetStream's ack, then acks (or terminates) the task messages."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.buffer: list[_Outgoing] = []
        self.wake = asyncio.Event()
        self.idle = asyncio.Event()
        self.idle.set()

    def add(
        self, reply: str, tid: str, dispatch: str, result: Result, msg: Any, term: bool = False
    ) -> None:
        data = dumps(result.to_dict())
        self.buffer.append(_Outgoing(reply, tid, dispatch, data, msg, result.success, term))
        self.idle.clear()
        self.wake.set()

    async def loop(self) -> None:
        while True:
            await self.wake.wait()
            self.wake.clear()
            while self.buffer:
                batch, self.buffer = self.buffer, []
                await self.send(batch)
            self.idle.set()

    async def send(self, batch: list[_Outgoing]) -> None:
        worker = self.worker
        layout = worker.layout
        limit = layout.max_payload - HEADROOM
        groups: dict[str, list[_Outgoing]] = {}
        for entry in batch:
            groups.setdefault(entry.reply, []).append(entry)
        chunks: list[tuple[str, list[_Outgoing]]] = []
        for reply, entries in groups.items():
            chunk: list[_Outgoing] = []
            size = 2
            for entry in entries:
                if len(entry.data) > limit:
                    ref = f"result/{entry.dispatch}"
                    await put_blob(layout, ref, entry.data)
                    entry.data = dumps({"task_id": entry.tid, "ref": ref, "success": entry.success})
                if chunk and size + len(entry.data) + 1 > limit:
                    chunks.append((reply, chunk))
                    chunk, size = [], 2
                chunk.append(entry)
                size += len(entry.data) + 1
            if chunk:
                chunks.append((reply, chunk))

        async def publish(reply: str, chunk: list[_Outgoing]) -> None:
            data = b"[" + b",".join(e.data for e in chunk) + b"]"
            # A lone result is deduplicated by its dispatch id (a redelivered task whose
            # result made it just before a crash); a batch is deduplicated by the controller.
            headers = {MSG_ID: f"r:{chunk[0].dispatch}"} if len(chunk) == 1 else None
            try:
                await layout.js.publish(reply, data, headers=headers)
            except Exception:
                # Not recorded: hand the tasks back so they run again (at-least-once).
                for e in chunk:
                    worker.untrack(e.msg)
                    with contextlib.suppress(Exception):
                        await e.msg.nak(delay=worker.nak_delay)
                return
            for e in chunk:
                worker.untrack(e.msg)
                with contextlib.suppress(Exception):
                    await (e.msg.term() if e.term else e.msg.ack())

        await asyncio.gather(*(publish(r, c) for r, c in chunks))


class Worker:
    """A process's worth of task execution on NATS. See the module docstring."""

    def __init__(
        self,
        registry: Registry,
        url: str,
        concurrency: int = 16,
        executors: Sequence[str] | None = None,
        worker_id: str | None = None,
        heartbeat: float = 5.0,
        grace: float = 30.0,
        *,
        ack_wait: float = 30.0,
        max_deliver: int = 5,
        backoff: Sequence[float] | None = None,
        max_ack_pending: int = 20_000,
        fetch_batch: int = 256,
        pull_expires: float = 1.0,
        nak_delay: float = 5.0,
        redeliver_retryable: bool = True,
        connect_options: ConnectOptions | None = None,
        stream_settings: StreamSettings | None = None,
        update_streams: Collection[str] = (),
    ) -> None:
        if concurrency < 1:
            raise ConfigError(f"--concurrency must be at least 1 (got {concurrency})")
        self.registry = registry
        self.url = url
        self.concurrency = concurrency
        self.id = _KEY_RE.sub("_", worker_id or default_worker_id())
        self.heartbeat = heartbeat
        self.grace = grace
        self.ack_wait = ack_wait
        self.max_deliver = max_deliver
        self.backoff = list(backoff) if backoff else None
        self.max_ack_pending = max_ack_pending
        self.fetch_batch = max(1, fetch_batch)
        self.pull_expires = pull_expires
        self.nak_delay = nak_delay
        self.redeliver_retryable = redeliver_retryable
        self.redelivered = 0
        self.connect_options = connect_options or ConnectOptions(name=f"workplex-worker {self.id}")
        self.stream_settings = stream_settings or StreamSettings()
        # Existing streams keep their settings unless this worker was told to change them.
        self.update_streams = update_streams
        self.executors = self._choose(executors)
        self.slots = _Slots(concurrency)
        self.queue: asyncio.Queue[Any] = asyncio.Queue()
        self.stopping = asyncio.Event()
        self.nc: Any = None
        self._layout: Layout | None = None
        self._unacked: dict[int, list[Any]] = {}
        self._prepared_by: dict[tuple[str, str | None], Prepared] = {}
        self._started = time.time()
        self.completed = 0

    def _choose(self, wanted: Sequence[str] | None) -> list[str]:
        """The executors to offer: enabled, allowed by ``max_security``, and asked for."""
        registry = self.registry
        allowed = [
            n
            for n in registry.names()
            if registry.max_security.allows(registry._entries[n].security)
        ]
        if wanted:
            unknown = [n for n in wanted if n not in allowed]
            if unknown:
                raise ConfigError(
                    f"--executors: {', '.join(unknown)} not available on this worker "
                    "(installed, enabled and allowed by max_security: "
                    f"{', '.join(allowed) or 'none'})"
                )
            allowed = [n for n in allowed if n in wanted]
        if not allowed:
            raise ConfigError("this worker offers no executor (all disabled or refused)")
        return allowed

    @property
    def layout(self) -> Layout:
        assert self._layout is not None, "worker not started"
        return self._layout

    # ---- bookkeeping for in-progress acks ------------------------------------------------
    def track(self, msg: Any) -> None:
        self._unacked[id(msg)] = [msg, time.monotonic()]

    def untrack(self, msg: Any) -> None:
        self._unacked.pop(id(msg), None)

    async def _keep_alive(self) -> None:
        """Tell JetStream that held tasks are still being worked on (one ticker for all)."""
        interval = max(0.2, self.ack_wait / 3)
        while True:
            await asyncio.sleep(interval)
            now = time.monotonic()
            for entry in list(self._unacked.values()):
                if now - entry[1] >= interval * 0.9:
                    entry[1] = now
                    with contextlib.suppress(Exception):
                        await entry[0].in_progress()

    # ---- capabilities --------------------------------------------------------------------
    def advertisement(self) -> dict[str, Any]:
        executors = {}
        for name in self.executors:
            info = self.registry.info(name)
            executors[name] = {
                "security": info.security.value,
                "version": info.version,
                "description": info.description,
                "input_schema": info.input_schema,
            }
        return {
            "id": self.id,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "executors": executors,
            "concurrency": self.concurrency,
            "load": self.slots.held,
            "completed": self.completed,
            "max_security": self.registry.max_security.value,
            "started": self._started,
            "updated": time.time(),
        }

    async def _heartbeat(self) -> None:
        kv = self.layout.workers
        while True:
            with contextlib.suppress(Exception):
                await kv.put(self.id, dumps(self.advertisement()))
            await asyncio.sleep(self.heartbeat)

    # ---- consumers -----------------------------------------------------------------------
    async def _bind(self) -> None:
        api = load_nats().js.api
        for name in self.executors:
            durable = durable_name(name)
            await self.layout.js.add_consumer(
                TASKS_STREAM,
                api.ConsumerConfig(
                    name=durable,
                    durable_name=durable,
                    filter_subject=task_subject(name),
                    ack_policy=api.AckPolicy.EXPLICIT,
                    deliver_policy=api.DeliverPolicy.ALL,
                    ack_wait=self.ack_wait,
                    max_deliver=self.max_deliver,
                    backoff=self.backoff,
                    max_ack_pending=self.max_ack_pending,
                    max_waiting=512,
                ),
            )

    # ---- running tasks -------------------------------------------------------------------
    def _prepared(self, type_: str, settings: str | None) -> Prepared:
        """The executor, validator and overlay chain for tasks of one type and settings."""
        key = (type_, settings)
        prepared = self._prepared_by.get(key)
        if prepared is None:
            parsed = json.loads(settings) if settings else None
            prepared = self._prepared_by[key] = self.registry.prepare(type_, parsed, key=settings)
        return prepared

    async def _runner(self, sender: _ResultSender) -> None:
        queue = self.queue
        while True:
            msg = await queue.get()
            if msg is None:
                return
            try:
                await self._process(msg, sender)
            except asyncio.CancelledError:
                self.untrack(msg)
                with contextlib.suppress(Exception):
                    await msg.nak()
                raise
            except Exception:
                self.untrack(msg)
                with contextlib.suppress(Exception):
                    await msg.nak(delay=self.nak_delay)
            finally:
                self.slots.release()

    async def _process(self, msg: Any, sender: _ResultSender) -> None:
        try:
            task = loads(msg.data)
            tid = str(task["id"])
            type_ = str(task["type"])
            reply = str(task["reply"])
            dispatch = str(task.get("dispatch") or tid)
        except (ValueError, KeyError, TypeError):
            self.untrack(msg)
            await msg.term()  # not a task at all: nobody to report to
            return
        registry = self.registry
        try:
            deliveries = msg.metadata.num_delivered
        except Exception:
            deliveries = 1
        meta = {"worker": self.id, "deliveries": deliveries}
        if "payload_ref" in task:
            try:
                payload = loads(await get_blob(self.layout, task["payload_ref"]))
            except load_nats().js.errors.NotFoundError:
                # Deleted by the controller once a result arrived: this is a stale copy.
                gone = Result.failure(
                    BackendError(
                        f"the payload of task {tid} ({task['payload_ref']}) is no longer in "
                        "the object store (its result was already recorded)"
                    ),
                    task_id=tid,
                )
                gone.metadata = meta
                sender.add(reply, tid, dispatch, gone, msg, term=True)
                return
        else:
            payload = task.get("payload")
        try:
            prepared = self._prepared(type_, task.get("settings"))
            model = prepared.validate(payload)
        except PydanticValidationError as exc:
            bad = Result.failure(ValidationError.from_pydantic(type_, exc), task_id=tid)
            bad.metadata = meta
            sender.add(reply, tid, dispatch, bad, msg, term=True)
            return
        except ValidationError as exc:
            bad = Result.failure(exc, task_id=tid)
            bad.metadata = meta
            sender.add(reply, tid, dispatch, bad, msg, term=True)
            return
        if not prepared.started:
            try:
                await prepared.start()
            except Exception:
                # The executor cannot run here right now: another worker (or a later try) may.
                self.untrack(msg)
                await msg.nak(delay=self.nak_delay)
                return
        ctx = Context(
            tid,
            str(task.get("run_id", "")),
            str(task.get("stage", "")),
            1,
            None,
            prepared.config,
            registry.secrets,
            task.get("metadata") or {},
        )
        result = await run_call(prepared.executor, prepared.call, model, ctx, tid)
        err = result.error
        if (
            err is not None
            and err.retryable
            and self.redeliver_retryable
            and deliveries < self.max_deliver
        ):
            # A transient failure (after the overlays' own retries here): hand the task
            # back for another delivery, maybe on another worker; the last delivery reports.
            retry_after = (err.details or {}).get("retry_after")
            delay = float(retry_after) if isinstance(retry_after, int | float) else self.nak_delay
            self.untrack(msg)
            self.redelivered += 1
            await msg.nak(delay=delay)
            return
        result.metadata = {**result.metadata, **meta} if result.metadata else meta
        self.completed += 1
        # A final failure is terminated, not acked: JetStream records that it was given up.
        sender.add(reply, tid, dispatch, result, msg, term=not result.success)

    # ---- lifecycle -----------------------------------------------------------------------
    def stop(self) -> None:
        """Begin a graceful shutdown (safe to call from a signal handler)."""
        self.stopping.set()

    async def run(self, *, install_signals: bool = True) -> None:
        """Serve until ``stop()`` (or SIGTERM/SIGINT), then shut down gracefully."""
        loop = asyncio.get_running_loop()
        if install_signals:
            for sig in (signal.SIGTERM, signal.SIGINT):
                with contextlib.suppress(NotImplementedError, RuntimeError):
                    loop.add_signal_handler(sig, self.stop)
        self.nc = await connect(self.url, self.connect_options)
        background: list[asyncio.Task[Any]] = []
        pulls: list[asyncio.Task[Any]] = []
        runners: list[asyncio.Task[Any]] = []
        dead_stop = asyncio.Event()
        try:
            self._layout = await ensure_layout(
                self.nc, self.stream_settings, update=self.update_streams
            )
            await self.registry.startup(self.executors)
            await self._bind()
            sender = _ResultSender(self)
            background = [
                asyncio.ensure_future(sender.loop()),
                asyncio.ensure_future(self._keep_alive()),
                asyncio.ensure_future(self._heartbeat()),
                asyncio.ensure_future(dead_letter_loop(self.layout, dead_stop)),
            ]
            runners = [asyncio.ensure_future(self._runner(sender)) for _ in range(self.concurrency)]
            pulls = [asyncio.ensure_future(_Pull(self, n).loop()) for n in self.executors]
            stop_wait = asyncio.ensure_future(self.stopping.wait())
            # Wait on the tasks themselves (not a gather, whose cancellation would cancel
            # them): until a stop is asked or one of them dies.
            await asyncio.wait([stop_wait, *pulls, *runners], return_when=asyncio.FIRST_COMPLETED)
            stop_wait.cancel()
            self.stopping.set()
            broken = [t for t in (*pulls, *runners) if t.done() and not t.cancelled()]
            await self._wind_down(pulls, runners, sender)
            for t in broken:
                exc = t.exception()
                if exc is not None:
                    raise BackendError(f"worker {self.id} failed: {type(exc).__name__}: {exc}") from exc
        finally:
            dead_stop.set()
            for task in (*pulls, *runners, *background):
                task.cancel()
            await asyncio.gather(*pulls, *runners, *background, return_exceptions=True)
            if self._layout is not None:
                with contextlib.suppress(Exception):
                    await self.layout.workers.delete(self.id)
            with contextlib.suppress(Exception):
                await self.nc.drain()
            with contextlib.suppress(Exception):
                await self.registry.shutdown()

    async def _wind_down(
        self,
        pulls: Iterable[asyncio.Task[Any]],
        runners: list[asyncio.Task[Any]],
        sender: _ResultSender,
    ) -> None:
        # Hand back what is queued but not started, so other workers take it now.
        while not self.queue.empty():
            msg = self.queue.get_nowait()
            if msg is not None:
                self.untrack(msg)
                self.slots.release()
                with contextlib.suppress(Exception):
                    await msg.nak()
        for _ in runners:
            self.queue.put_nowait(None)
        late: set[asyncio.Task[Any]] = set()
        if runners:
            _, late = await asyncio.wait(runners, timeout=self.grace)
        for task in late:
            task.cancel()  # the runner naks its task on cancellation
        if late:
            await asyncio.gather(*late, return_exceptions=True)
        # Results of finished tasks: publish and ack them before leaving.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(sender.idle.wait(), 10.0)
        await asyncio.gather(*pulls, return_exceptions=True)
        # Messages that arrived during the wind-down were naked on arrival.


__all__ = ["Worker", "default_worker_id"]
