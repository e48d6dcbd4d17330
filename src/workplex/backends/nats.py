"""The ``nats`` backend: tasks travel over NATS JetStream to ``workplex worker`` processes.

The layout on the server (streams, subjects, message formats) is described in
:mod:`workplex.backends.jetstream`.

The controller reads a stage's results with one ordered consumer per (run, stage),
shared by every ``execute`` call of that stage and kept a while after the last one. It
starts at the beginning of the subject and is read to its end before anything is
dispatched, so after a controller crash every result already published is seen: a
success is reported without dispatching the task again. The first result per dispatched
task is recorded (exactly once). Tasks are published pipelined (see :class:`_Publisher`).
"""


from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError as PydanticValidationError

from workplex.backends import Backend, OnResult, Validator
from workplex.errors import BackendError, MissingExtraError, UnknownExecutorError, ValidationError
from workplex.executor import Result, Task

if TYPE_CHECKING:
    from workplex.registry import Registry

from workplex.backends.jetstream import (
    ADVISORY_STREAM,
    DEAD_STREAM,
    HEADROOM,
    MSG_ID,
    PAYLOAD_BUCKET,
    RESULTS_STREAM,
    TASKS_STREAM,
    WORKERS_BUCKET,
    ConnectOptions,
    Layout,
    StreamSettings,
    connect,
    dead_letter_loop,
    delete_blob,
    dumps,
    durable_name,
    ensure_layout,
    get_blob,
    live_workers,
    load_nats,
    loads,
    offered,
    put_blob,
    results_subject,
    subject_token,
    task_subject,
)


# ---- the backend ---------------------------------------------------------------------------
class _Call:
    """The state of one ``execute`` call."""

    __slots__ = (
        "acked", "acks", "blobs", "done", "ended", "error", "feed", "inflight", "limit",
        "on_result", "pending", "published_all", "reply", "room", "run_id", "sent",
        "settings", "stage", "unacked",
    )

    def __init__(
        self,
        on_result: OnResult,
        limit: int,
        feed: _Feed,
        run_id: str,
        stage: str,
        settings: str | None,
    ) -> None:
        self.on_result = on_result
        self.limit = max(1, limit)
        self.feed = feed
        self.run_id = run_id
        self.stage = stage
        self.reply = feed.subject
        self.settings = settings
        self.inflight = 0
        """Tasks dispatched whose result has not arrived yet (bounded by ``limit``)."""
        self.pending: dict[str, int] = {}
        """Task id -> index of every dispatched task still waiting for its result."""
        self.sent: dict[str, Task] = {}
        """Task id -> the task, while pending: to publish it again when JetStream dropped it."""
        self.blobs: dict[str, str] = {}
        """Task id -> its payload's object name, deleted once its result arrived."""
        self.ended = False
        self.acks: dict[str, bytes] = {}
        """Task id -> JetStream's publish ack, parsed only to withdraw the task."""
        self.unacked = 0
        self.room = asyncio.Event()
        self.acked = asyncio.Event()
        self.done = asyncio.Event()
        self.published_all = False
        self.error: BaseException | None = None

    def fail(self, exc: BaseException) -> None:
        if self.error is None:
            self.error = exc
        self.room.set()
        self.acked.set()
        self.done.set()


class _Feed:
    """The results of one (run, stage): one ordered consumer shared by every ``execute``
    call of that stage, so many small calls (``execute_one``) do not each replay the
    subject from its start."""

    def __init__(self, subject: str) -> None:
        self.subject = subject
        self.sub: Any = None
        self.owner: dict[str, _Call] = {}
        """Task id -> the call waiting for its result."""
        self.early: dict[str, dict[str, Any]] = {}
        """Results nobody waited for: finished before a controller crash (or duplicates)."""
        self.failures: dict[str, int] = {}
        """Task id -> failed results seen; names a re-dispatch past the duplicate window."""
        self.target = 0
        self.caught_up = asyncio.Event()
        self.seen = 0
        """Stream sequence of the last results message handled."""
        self.progress = asyncio.Event()
        self.ready: asyncio.Future[None] | None = None
        self.users = 0
        self.idle_since = 0.0


class _Publisher:
    """Pipelined JetStream publishes: plain publishes with a reply subject under one
    wildcard inbox, acks matched by token. Cheaper per message than a request (or
    nats-py's ``publish_async``, which makes a future and a timer per message)."""

    def __init__(
        self, nc: Any, max_pending: int, on_duplicate: Callable[[_Call, str, bytes], None]
    ) -> None:
        self.nc = nc
        self.on_duplicate = on_duplicate
        self.prefix = nc.new_inbox() + "."
        self.cut = len(self.prefix)
        self.max_pending = max_pending
        self.waiting: dict[str, tuple[_Call, str]] = {}
        self.room = asyncio.Event()
        self.counter = 0
        self.sub: Any = None

    async def start(self) -> None:
        self.sub = await self.nc.subscribe(
            self.prefix + "*", cb=self._on_ack, pending_msgs_limit=-1, pending_bytes_limit=-1
        )

    async def _on_ack(self, msg: Any) -> None:
        entry = self.waiting.pop(msg.subject[self.cut :], None)
        if len(self.waiting) < self.max_pending:
            self.room.set()
        if entry is None:
            return
        call, tid = entry
        call.unacked -= 1
        data = msg.data
        if not data or b'"error"' in data:
            status = (msg.headers or {}).get("Status", "")
            reason = "no stream (status 503)" if status == "503" else data.decode(errors="replace")
            call.fail(BackendError(f"JetStream refused task {tid} ({TASKS_STREAM}): {reason}"))
            return
        call.acks[tid] = data
        if b'"duplicate"' in data:
            # Dropped as a copy of an earlier dispatch: fine while that one is queued or
            # its result is on the way, a lost task otherwise (see NatsBackend._duplicate).
            self.on_duplicate(call, tid, data)
        if call.unacked == 0:
            call.acked.set()

    async def publish(
        self, call: _Call, tid: str, subject: str, data: bytes, msg_id: str, timeout: float
    ) -> None:
        while len(self.waiting) >= self.max_pending:
            self.room.clear()
            try:
                await asyncio.wait_for(self.room.wait(), timeout)
            except TimeoutError as exc:
                raise BackendError(
                    f"JetStream did not acknowledge {len(self.waiting)} published task(s) "
                    f"within {timeout:g}s (stream {TASKS_STREAM})"
                ) from exc
        self.counter += 1
        token = str(self.counter)
        self.waiting[token] = (call, tid)
        call.unacked += 1
        call.acked.clear()
        await self.nc.publish(subject, data, reply=self.prefix + token, headers={MSG_ID: msg_id})

    def forget(self, call: _Call) -> None:
        """Drop the acks ``call`` still waits for (it ended early)."""
        if call.unacked:
            for token in [t for t, (c, _) in self.waiting.items() if c is call]:
                del self.waiting[token]
            call.unacked = 0
            self.room.set()


class NatsBackend(Backend):
    """Publishes tasks to JetStream; ``workplex worker`` processes run them.

    Options: ``creds``, ``tls_ca``, ``tls_cert``, ``tls_key`` (connection), ``replicas``,
    ``storage``, ``task_max_age``, ``result_max_age``, ``duplicate_window``, ``worker_ttl``
    (see :class:`StreamSettings`), ``ack_timeout`` (seconds to wait for publish acks),
    ``max_pending_publishes`` (task publishes awaiting JetStream's ack, per controller),
    ``feed_linger`` (seconds a stage's results subscription stays open after its last use).
    """

    name = "nats"

    def __init__(
        self,
        registry: Registry,
        url: str = "nats://127.0.0.1:4222",
        *,
        creds: str | None = None,
        tls_ca: str | None = None,
        tls_cert: str | None = None,
        tls_key: str | None = None,
        replicas: int = 1,
        storage: str = "file",
        task_max_age: float = 7 * 86400.0,
        result_max_age: float = 7 * 86400.0,
        duplicate_window: float = 3600.0,
        worker_ttl: float = 15.0,
        ack_timeout: float = 10.0,
        wait_for_workers: float = 0.0,
        max_pending_publishes: int = 8192,
        feed_linger: float = 60.0,
        **unknown: Any,
    ) -> None:
        super().__init__(registry)
        if unknown:
            raise BackendError(f"nats backend: unknown option(s) {', '.join(sorted(unknown))}")
        self.url = url
        self.connect_options = ConnectOptions(
            creds, tls_ca, tls_cert, tls_key, "workplex-controller"
        )
        self.settings = StreamSettings(
            replicas=replicas,
            storage=storage,
            task_max_age=task_max_age,
            result_max_age=result_max_age,
            duplicate_window=duplicate_window,
            worker_ttl=worker_ttl,
        )
        self.ack_timeout = ack_timeout
        self.wait_for_workers = wait_for_workers
        self._nc: Any = None
        self._layout: Layout | None = None
        self._workers: list[dict[str, Any]] = []
        self._schemas: dict[str, Validator] = {}
        self.max_pending_publishes = max(1, max_pending_publishes)
        self.feed_linger = feed_linger
        self._stop = asyncio.Event()
        self._background: set[asyncio.Task[Any]] = set()
        self._publisher: _Publisher | None = None
        self._feeds: dict[str, _Feed] = {}
        self._subjects: dict[str, str] = {}
        self._fresh: dict[str, int] = {}
        """Task id -> times it needed a new ``Nats-Msg-Id`` (withdrawn, or dropped as a
        duplicate of a dispatch that will never report)."""

    # ---- lifecycle ---------------------------------------------------------------------
    async def open(self) -> None:
        if self._layout is not None:
            return
        self._nc = await connect(self.url, self.connect_options)
        try:
            self._layout = await ensure_layout(self._nc, self.settings)
            self._publisher = _Publisher(
                self._nc, self.max_pending_publishes, self._on_duplicate
            )
            await self._publisher.start()
        except BaseException:
            await self._nc.close()
            raise
        self._stop.clear()
        self._spawn(dead_letter_loop(self._layout, self._stop))
        await self.workers()

    async def close(self) -> None:
        self._stop.set()
        for feed in list(self._feeds.values()):
            self._close_feed(feed)
        self._publisher = None
        for task in list(self._background):
            if not task.done():
                # The dead-letter loop ends by itself within a second; cleanups finish.
                with contextlib.suppress(asyncio.TimeoutError, Exception):
                    await asyncio.wait_for(asyncio.shield(task), 3.0)
            task.cancel()
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)
        self._background.clear()
        if self._nc is not None:
            with contextlib.suppress(Exception):
                await self._nc.drain()
            self._nc = None
        self._layout = None

    async def __aenter__(self) -> NatsBackend:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    @property
    def layout(self) -> Layout:
        if self._layout is None:
            raise BackendError("the nats backend is not open (call open() or use `async with`)")
        return self._layout

    # ---- workers and validation ----------------------------------------------------------
    async def workers(self) -> list[dict[str, Any]]:
        """The live workers with their capabilities (also refreshes the schema cache)."""
        self._workers = await live_workers(self.layout.js, self.layout.workers)
        self._schemas.clear()
        return self._workers

    async def check_executors(self, names: Iterable[str], *, wait: float = 0.0) -> None:
        wanted = sorted(set(names))
        wait = max(wait, self.wait_for_workers)
        deadline = time.monotonic() + wait
        while True:
            by_name = offered(await self.workers())
            missing = [n for n in wanted if n not in by_name]
            if not missing:
                return
            if time.monotonic() >= deadline:
                break
            await asyncio.sleep(min(0.25, max(0.0, deadline - time.monotonic())))
        if by_name:
            have = "; ".join(f"{n} ({', '.join(ids)})" for n, ids in sorted(by_name.items()))
            what = f"live workers offer: {have}"
        else:
            what = (
                f"no worker is live in bucket {WORKERS_BUCKET!r} "
                "(start one with `workplex worker`)"
            )
        waited = f" after waiting {wait:g}s" if wait > 0 else ""
        raise BackendError(
            f"no live worker offers executor(s) {', '.join(repr(n) for n in missing)}{waited}; "
            f"{what}. Use --wait-for-workers SECONDS to wait for one."
        )

    def validator(self, executor: str) -> Validator | None:
        """The local Input model when installed here, else the schema workers advertise."""
        if executor in self.registry:
            cls = self.registry.executor_class(executor)

            def check_model(payload: Any) -> Any:
                try:
                    return cls.Input.model_validate(payload)
                except PydanticValidationError as exc:
                    raise ValidationError.from_pydantic(executor, exc) from exc

            return check_model
        cached = self._schemas.get(executor)
        if cached is None:
            schema = self._advertised_schema(executor)
            if schema is None:
                return None
            cached = self._schemas[executor] = schema_validator(executor, schema)
        return cached

    def input_model(self, executor: str) -> Any:
        """For the engine's load-time checks: the Input model of ``executor``.

        Installed here: the local model. Offered only by workers: an object with
        ``model_validate`` that checks against the JSON Schema they advertise. Unknown
        everywhere: ``UnknownExecutorError`` listing what is offered (None while
        ``wait_for_workers`` lets a worker still appear).
        """
        if executor in self.registry:
            return self.registry.executor_class(executor).Input
        if self._advertised_schema(executor) is not None:
            return _SchemaModel(executor, self)
        if self.wait_for_workers > 0:
            return None
        local = set(self.registry.names())
        by_name = offered(self._workers)
        known = ", ".join(sorted(local | set(by_name))) or "(none)"
        raise UnknownExecutorError(
            f"unknown executor {executor!r}: not installed here and no live worker offers it. "
            f"Available executors: {known}",
            [("type", f"unknown executor {executor!r}")],
        )

    def _advertised_schema(self, executor: str) -> dict[str, Any] | None:
        for w in self._workers:
            ad = (w.get("executors") or {}).get(executor)
            if ad is not None and isinstance(ad.get("input_schema"), dict):
                schema: dict[str, Any] = ad["input_schema"]
                return schema
        return None

    # ---- execution ---------------------------------------------------------------------
    async def execute(
        self,
        tasks: Iterable[Task],
        *,
        run_id: str,
        stage: str,
        limit: int,
        on_result: OnResult,
        settings: Mapping[str, Any] | None = None,
        batch_size: int = 1,
    ) -> None:
        subject = results_subject(run_id, stage)
        settings_text = json.dumps(settings, sort_keys=True, default=str) if settings else None
        # The stage's results are read (from the start of the subject) before anything is
        # dispatched: results of tasks finished before a controller crash are reused.
        feed = await self._acquire_feed(subject)
        call = _Call(on_result, limit, feed, run_id, stage, settings_text)
        try:
            await self._dispatch(call, tasks)
            call.published_all = True
            if call.unacked and call.error is None:
                try:
                    await asyncio.wait_for(call.acked.wait(), self.ack_timeout)
                except TimeoutError as exc:
                    raise BackendError(
                        f"JetStream did not acknowledge {call.unacked} published task(s) within "
                        f"{self.ack_timeout:g}s (stream {TASKS_STREAM})"
                    ) from exc
            if call.pending and call.error is None:
                await call.done.wait()
            if call.error is not None:
                raise call.error
        except BaseException:
            if self._publisher is not None:
                self._publisher.forget(call)
            if call.pending:
                # Withdraw the queued tasks nobody reported yet (best effort, in background).
                # Their ids are spent: JetStream would drop a later dispatch of the same
                # task as a duplicate, so the next one goes out under a fresh id.
                withdrawn = [t for t in call.pending if t in call.acks]
                for tid in withdrawn:
                    self._fresh[tid] = self._fresh.get(tid, 0) + 1
                seqs = [s for s in (_ack_seq(call.acks[t]) for t in withdrawn) if s]
                blobs = [call.blobs.pop(t) for t in withdrawn if t in call.blobs]
                self._spawn(self._withdraw(seqs, blobs))
            raise
        finally:
            call.ended = True
            for tid in call.pending:
                if feed.owner.get(tid) is call:
                    del feed.owner[tid]
            self._release_feed(feed)

    async def _dispatch(self, call: _Call, tasks: Iterable[Task]) -> None:
        checks: dict[str, Any] = {}
        early = call.feed.early
        for index, task in enumerate(tasks):
            if call.error is not None:
                return
            tid = task.id
            if tid in early and await self._reuse(call, index, tid):
                continue
            check = checks.get(task.type, _UNSET)
            if check is _UNSET:
                check = checks[task.type] = self.validator(task.type)
            if check is not None:
                try:
                    check(task.payload)
                except ValidationError as exc:
                    # Refused before it is queued, like the local backend would.
                    call.on_result(index, Result.failure(exc, task_id=tid))
                    continue
            if call.inflight >= call.limit:
                while call.inflight >= call.limit:
                    call.room.clear()
                    await call.room.wait()
                    if call.error is not None:
                        return
                # Its result may have come in meanwhile (a late one from an earlier call).
                if tid in early and await self._reuse(call, index, tid):
                    continue
            call.pending[tid] = index
            call.sent[tid] = task
            call.feed.owner[tid] = call
            call.inflight += 1
            await self._send(call, task, index)

    async def _reuse(self, call: _Call, index: int, tid: str) -> bool:
        """Report a success published before this call (e.g. before a controller crash)
        instead of dispatching the task again; False when there is none to reuse."""
        old = call.feed.early.get(tid)
        if old is None or not old.get("success"):
            return False
        del call.feed.early[tid]
        result = await self._load(tid, old)
        if result is None:
            return False  # its result object is gone: run it again
        self._fresh.pop(tid, None)
        call.on_result(index, result)
        return True

    def _msg_id(self, feed: _Feed, tid: str) -> str:
        """The task's ``Nats-Msg-Id``: its id, or a new one when an earlier dispatch failed
        (``#<failures>``) or can no longer report (``#<failures>.<n>``), since JetStream
        drops a publish with an id it has seen within the duplicate window."""
        tries = feed.failures.get(tid, 0)
        fresh = self._fresh.get(tid, 0)
        if fresh:
            return f"{tid}#{tries}.{fresh}"
        return f"{tid}#{tries}" if tries else tid

    async def _send(self, call: _Call, task: Task, index: int) -> None:
        layout = self.layout
        publisher = self._publisher
        if publisher is None:
            raise BackendError("the nats backend was closed while dispatching")
        tid = task.id
        msg_id = self._msg_id(call.feed, tid)
        message: dict[str, Any] = {
            "id": tid,
            "type": task.type,
            "payload": task.payload,
            "run_id": call.run_id,
            "stage": call.stage,
            "index": index,
            "settings": call.settings,
            "reply": call.reply,
            "dispatch": msg_id,
        }
        if task.metadata:
            message["metadata"] = task.metadata
        data = dumps(message)
        if len(data) > layout.max_payload - HEADROOM:
            ref = f"payload/{msg_id}"
            await put_blob(layout, ref, dumps(task.payload))
            old = call.blobs.get(tid)
            call.blobs[tid] = ref
            if old is not None and old != ref:
                await delete_blob(layout, old)
            del message["payload"]
            message["payload_ref"] = ref
            data = dumps(message)
        subject = self._subjects.get(task.type)
        if subject is None:
            subject = self._subjects[task.type] = task_subject(task.type)
        await publisher.publish(call, tid, subject, data, msg_id, self.ack_timeout)

    def _on_duplicate(self, call: _Call, tid: str, ack: bytes) -> None:
        if not call.ended and tid in call.pending:
            self._spawn(self._duplicate(call, tid, ack))

    async def _duplicate(self, call: _Call, tid: str, ack: bytes) -> None:
        """JetStream dropped the task as a copy of an earlier dispatch. While that one is
        still in the stream (queued or running) its result will come. Once it is gone
        (acked, terminated, dead-lettered, withdrawn by a cancel, aged out), any result it
        had was published before it was removed: read the results to their end, and if
        the task is still waiting, publish it again under a fresh id."""
        try:
            nats = load_nats()
            js = self.layout.js
            seq = _ack_seq(ack)
            if seq:
                try:
                    await js.get_msg(TASKS_STREAM, seq)
                    return
                except nats.js.errors.NotFoundError:
                    pass
            await self._catch_up(call.feed)
            if call.ended or call.error is not None or tid not in call.pending:
                return
            fresh = self._fresh[tid] = self._fresh.get(tid, 0) + 1
            if fresh > MAX_FRESH_IDS:
                raise BackendError(
                    f"task {tid} was dropped as a duplicate {fresh} times (stream "
                    f"{TASKS_STREAM}); its earlier dispatches never reported a result"
                )
            await self._send(call, call.sent[tid], call.pending[tid])
        except Exception as exc:
            if not call.ended:
                call.fail(exc)

    async def _catch_up(self, feed: _Feed) -> None:
        """Wait (up to ``ack_timeout``) until the feed has handled every result published
        so far on its subject."""
        nats = load_nats()
        try:
            last = await self.layout.js.get_last_msg(RESULTS_STREAM, feed.subject)
        except nats.js.errors.NotFoundError:
            return
        target = int(last.seq or 0)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.ack_timeout
        while feed.seen < target:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return
            feed.progress.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(feed.progress.wait(), remaining)

    async def _load(self, tid: str, item: dict[str, Any]) -> Result | None:
        """The Result in a results message item (fetching it when it was stored as an
        object, which is then deleted); None when that object no longer exists."""
        try:
            ref = item.get("ref")
            if ref is not None:
                try:
                    data = await get_blob(self.layout, ref)
                except load_nats().js.errors.NotFoundError:
                    return None
                await delete_blob(self.layout, ref)
                item = loads(data)
            return Result.from_dict(item)
        except Exception as exc:
            return Result.failure(
                BackendError(f"cannot read the result of task {tid}: {exc}"), task_id=tid
            )

    async def _report(self, call: _Call, index: int, tid: str, item: dict[str, Any]) -> None:
        # Reported: its fresh-id count is not needed any more (a later duplicate drop is
        # still caught by the publish ack).
        self._fresh.pop(tid, None)
        blob = call.blobs.pop(tid, None)
        if blob is not None:
            # The task's payload is not needed any more (it may carry resolved secrets).
            await delete_blob(self.layout, blob)
        result = await self._load(tid, item)
        if result is None:
            result = Result.failure(
                BackendError(
                    f"cannot read the result of task {tid}: object {item.get('ref')!r} is "
                    f"no longer in {PAYLOAD_BUCKET}"
                ),
                task_id=tid,
            )
        call.on_result(index, result)

    # ---- the shared results feeds --------------------------------------------------------
    async def _acquire_feed(self, subject: str) -> _Feed:
        feed = self._feeds.get(subject)
        if feed is None:
            feed = self._feeds[subject] = _Feed(subject)
            feed.ready = asyncio.ensure_future(self._start_feed(feed))
        feed.users += 1
        try:
            assert feed.ready is not None
            await asyncio.shield(feed.ready)
            while not feed.caught_up.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(feed.caught_up.wait(), 1.0)
                    break
                # The last message may have aged out of the stream meanwhile: ask.
                info = await feed.sub.consumer_info()
                if info.num_pending == 0 and feed.sub.pending_msgs == 0:
                    feed.caught_up.set()
        except BaseException:
            self._release_feed(feed)
            ready = feed.ready
            broken = ready is not None and ready.done() and not ready.cancelled()
            if broken and ready and ready.exception() is not None and self._feeds.get(subject) is feed:
                del self._feeds[subject]  # a later call tries again
            raise
        return feed

    async def _start_feed(self, feed: _Feed) -> None:
        nats = load_nats()
        js = self.layout.js
        try:
            last = await js.get_last_msg(RESULTS_STREAM, feed.subject)
            feed.target = int(last.seq or 0)
        except nats.js.errors.NotFoundError:
            feed.target = 0
        if feed.target == 0:
            feed.caught_up.set()
        feed.sub = await js.subscribe(
            feed.subject,
            stream=RESULTS_STREAM,
            ordered_consumer=True,
            cb=self._feed_callback(feed),
            deliver_policy=nats.js.api.DeliverPolicy.ALL,
            pending_msgs_limit=-1,
            pending_bytes_limit=-1,
        )

    def _feed_callback(self, feed: _Feed) -> Callable[[Any], Any]:
        owner = feed.owner
        early = feed.early
        failures = feed.failures
        caught_up = feed.caught_up

        async def on_message(msg: Any) -> None:
            if not caught_up.is_set():
                with contextlib.suppress(Exception):
                    if msg.metadata.sequence.stream >= feed.target:
                        caught_up.set()
            try:
                items = loads(msg.data)
            except ValueError:
                return
            if isinstance(items, dict):
                items = [items]
            for item in items:
                tid = item.get("task_id")
                if not item.get("success"):
                    failures[tid] = failures.get(tid, 0) + 1
                call = owner.pop(tid, None)
                if call is None:
                    if tid not in early or not early[tid].get("success"):
                        early[tid] = item
                    continue
                index = call.pending.pop(tid, None)
                call.sent.pop(tid, None)
                if index is None:
                    continue
                call.inflight -= 1
                call.room.set()
                try:
                    await self._report(call, index, tid, item)
                except BaseException as exc:
                    call.fail(exc)
                    continue
                if call.published_all and not call.pending:
                    call.done.set()
            with contextlib.suppress(Exception):
                feed.seen = max(feed.seen, int(msg.metadata.sequence.stream))
            feed.progress.set()

        return on_message

    def _release_feed(self, feed: _Feed) -> None:
        feed.users -= 1
        if feed.users > 0:
            return
        feed.idle_since = time.monotonic()
        idle_since = feed.idle_since

        def reap() -> None:
            unused = feed.users == 0 and feed.idle_since == idle_since
            if unused and self._feeds.get(feed.subject) is feed:
                self._close_feed(feed)

        # Kept a while: the next execute of the same stage reuses the replayed state.
        asyncio.get_running_loop().call_later(self.feed_linger, reap)

    def _close_feed(self, feed: _Feed) -> None:
        if self._feeds.get(feed.subject) is feed:
            del self._feeds[feed.subject]
        if feed.sub is not None:
            self._spawn(_unsubscribe(feed.sub))
        elif feed.ready is not None:
            feed.ready.cancel()

    async def _withdraw(self, seqs: list[int], blobs: list[str]) -> None:
        layout = self.layout
        js = layout.js

        async def delete(seq: int) -> None:
            with contextlib.suppress(Exception):
                await js.delete_msg(TASKS_STREAM, seq)

        for start in range(0, len(seqs), 256):
            await asyncio.gather(*(delete(s) for s in seqs[start : start + 256]))
        for blob in blobs:
            await delete_blob(layout, blob)


async def _unsubscribe(sub: Any) -> None:
    with contextlib.suppress(Exception):
        await sub.unsubscribe()


def _ack_seq(ack: bytes) -> int:
    try:
        return int(loads(ack).get("seq") or 0)
    except (ValueError, AttributeError, TypeError):
        return 0


_UNSET: Any = object()
MAX_FRESH_IDS = 100


class _SchemaModel:
    """Quacks like a pydantic model class for ``model_validate`` only (load-time checks of
    inputs for executors that only workers have), raising pydantic's ValidationError."""

    def __init__(self, executor: str, backend: NatsBackend) -> None:
        self.executor = executor
        self.backend = backend

    def model_validate(self, payload: Any) -> Any:
        from pydantic_core import InitErrorDetails, PydanticCustomError

        check = self.backend.validator(self.executor)
        if check is None:
            return payload
        try:
            return check(payload)
        except ValidationError as exc:
            details = [
                InitErrorDetails(
                    type=PydanticCustomError("schema", "{reason}", {"reason": reason}),
                    loc=tuple(p for p in path.split(".") if p and p != "(payload)"),
                    input=payload,
                )
                for path, reason in exc.errors
            ]
            raise PydanticValidationError.from_exception_data(self.executor, details) from None


def schema_validator(executor: str, schema: Mapping[str, Any]) -> Validator:
    """A payload check from a JSON Schema a worker advertised (compiled once)."""
    try:
        import jsonschema  # type: ignore[import-untyped]
    except ImportError as exc:  # pragma: no cover - exercised only without the extra
        raise MissingExtraError(
            "nats", "jsonschema", "validating tasks for remote executors"
        ) from exc
    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    checker = cls(schema)

    def check(payload: Any) -> Any:
        problems = sorted(checker.iter_errors(payload), key=lambda e: list(e.absolute_path))
        if problems:
            errors = [
                (".".join(str(p) for p in e.absolute_path) or "(payload)", e.message)
                for e in problems
            ]
            lines = "; ".join(f"{p}: {m}" for p, m in errors)
            raise ValidationError(
                f"invalid input for executor {executor!r} (schema advertised by its workers): "
                f"{lines}",
                errors,
            )
        return payload

    return check


__all__ = [
    "ADVISORY_STREAM",
    "DEAD_STREAM",
    "PAYLOAD_BUCKET",
    "RESULTS_STREAM",
    "TASKS_STREAM",
    "WORKERS_BUCKET",
    "ConnectOptions",
    "Layout",
    "NatsBackend",
    "StreamSettings",
    "connect",
    "dead_letter_loop",
    "durable_name",
    "ensure_layout",
    "live_workers",
    "results_subject",
    "schema_validator",
    "subject_token",
    "task_subject",
]
