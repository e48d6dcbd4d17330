"""The JetStream layout shared by the ``nats`` backend and ``workplex worker``: streams,
subjects, the workers KV bucket, the payload object store, and dead letters.

Layout on the server (whatever is missing is created by the controller or a worker with
its :class:`StreamSettings`; existing streams are left as they are, except by a worker
given stream settings explicitly):

========================  ====================================  ==============================
name                      subjects                              purpose
========================  ====================================  ==============================
``WORKPLEX_TASKS``        ``workplex.tasks.<executor>``         work-queue stream of tasks
``WORKPLEX_RESULTS``      ``workplex.results.<run>.<stage>``    results, limits retention
``WORKPLEX_DEAD``         ``workplex.dead.<executor>``          dead letters, limits retention
``WORKPLEX_ADVISORIES``   ``$JS.EVENT.ADVISORY.CONSUMER.        max-deliveries advisories kept
                          MAX_DELIVERIES.WORKPLEX_TASKS.*``     until a live party handles them
``workplex-workers``      KV bucket with a TTL                  live workers and capabilities
``workplex-payloads``     object store                          payloads/results too large for
                                                                one message
========================  ====================================  ==============================

A task message is JSON: ``id``, ``type``, ``payload`` (or ``payload_ref`` into the object
store), ``metadata``, ``run_id``, ``stage``, ``index``, ``settings`` (the stage's overlay
settings as canonical JSON text), ``reply`` (the results subject) and ``dispatch`` (its
``Nats-Msg-Id``: the task id, ``<task id>#<n>`` when it is dispatched again after ``n``
failed results, ``<task id>#<n>.<m>`` when an earlier dispatch was withdrawn or can no
longer report). The header makes JetStream drop a task dispatched again (after
``workplex resume``) inside the duplicate window. A results message is a JSON list of
``Result.to_dict()`` objects (or ``{"task_id", "ref", "success"}`` for one kept in the
object store).
"""


from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import re
import ssl
import time
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from workplex.errors import BackendError, MissingExtraError
from workplex.executor import ErrorInfo, Result

if TYPE_CHECKING:
    pass

TASKS_STREAM = "WORKPLEX_TASKS"
RESULTS_STREAM = "WORKPLEX_RESULTS"
DEAD_STREAM = "WORKPLEX_DEAD"
ADVISORY_STREAM = "WORKPLEX_ADVISORIES"
WORKERS_BUCKET = "workplex-workers"
PAYLOAD_BUCKET = "workplex-payloads"
DEAD_LETTER_CONSUMER = "workplex-dead-letter"
MAX_DELIVERIES_ADVISORY = f"$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{TASKS_STREAM}.*"
MSG_ID = "Nats-Msg-Id"
DEAD_LETTER_ERROR = "DeadLetterError"

# Room left for headers and framing when deciding whether a message fits.
HEADROOM = 8 * 1024
_TOKEN_RE = re.compile(r"[^A-Za-z0-9_-]")


def load_nats() -> Any:
    try:
        import nats
        import nats.js.api
        import nats.js.errors
    except ImportError as exc:  # pragma: no cover - exercised only without the extra
        raise MissingExtraError("nats", "nats-py", "the nats backend") from exc
    return nats


def subject_token(text: str) -> str:
    """``text`` as one NATS subject token (also a valid consumer name).

    Characters outside ``[A-Za-z0-9_-]`` become ``_`` and a short hash of the original is
    appended, so two different names never share a token.
    """
    token = _TOKEN_RE.sub("_", text)
    if token != text or not token:
        token = f"{token}-{hashlib.sha1(text.encode()).hexdigest()[:8]}"
    return token


def task_subject(executor: str) -> str:
    return f"workplex.tasks.{subject_token(executor)}"


def dead_subject(executor: str) -> str:
    return f"workplex.dead.{subject_token(executor)}"


def results_subject(run_id: str, stage: str) -> str:
    return f"workplex.results.{subject_token(run_id)}.{subject_token(stage or '-')}"


def durable_name(executor: str) -> str:
    """The durable pull consumer shared by every worker offering ``executor``."""
    return f"workplex-{subject_token(executor)}"


def _json_dumps(data: Any) -> bytes:
    return json.dumps(data, separators=(",", ":"), default=str).encode()


try:  # orjson (optional) encodes and decodes several times faster than the json module
    import orjson as _orjson

    _OPTS = _orjson.OPT_NON_STR_KEYS

    def dumps(data: Any) -> bytes:
        try:
            return _orjson.dumps(data, default=str, option=_OPTS)
        except TypeError:  # e.g. integers beyond 64 bits: the json module handles those
            return _json_dumps(data)

    loads: Callable[[bytes | str], Any] = _orjson.loads
except ImportError:  # pragma: no cover - exercised only without orjson
    dumps = _json_dumps
    loads = json.loads


# ---- connection ----------------------------------------------------------------------------
@dataclass(frozen=True)
class ConnectOptions:
    """How to reach the NATS server: credentials and TLS, passed through to nats-py.

    Unset fields fall back to ``WORKPLEX_NATS_CREDS``, ``WORKPLEX_NATS_TLS_CA``,
    ``WORKPLEX_NATS_TLS_CERT`` and ``WORKPLEX_NATS_TLS_KEY``.
    """

    creds: str | None = None
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    name: str | None = None

    def resolved(self) -> ConnectOptions:
        env = os.environ.get
        return ConnectOptions(
            creds=self.creds or env("WORKPLEX_NATS_CREDS"),
            tls_ca=self.tls_ca or env("WORKPLEX_NATS_TLS_CA"),
            tls_cert=self.tls_cert or env("WORKPLEX_NATS_TLS_CERT"),
            tls_key=self.tls_key or env("WORKPLEX_NATS_TLS_KEY"),
            name=self.name,
        )


FIRST_CONNECT_TIMEOUT = 10.0


async def connect(url: str, options: ConnectOptions | None = None) -> Any:
    """A nats-py client connected to ``url``; ``BackendError`` naming the URL when it fails."""
    nats = load_nats()
    opts = (options or ConnectOptions()).resolved()
    kwargs: dict[str, Any] = {
        "servers": [url.replace("nats+tls://", "tls://")],
        "connect_timeout": 5,
        "max_reconnect_attempts": -1,
        "reconnect_time_wait": 0.5,
    }
    if opts.name:
        kwargs["name"] = opts.name
    if opts.creds:
        kwargs["user_credentials"] = opts.creds
    if opts.tls_ca or opts.tls_cert or url.startswith(("tls://", "nats+tls://")):
        ctx = ssl.create_default_context(cafile=opts.tls_ca)
        if opts.tls_cert:
            ctx.load_cert_chain(opts.tls_cert, opts.tls_key)
        kwargs["tls"] = ctx

    async def quiet(exc: Exception) -> None:
        # Reconnect noise is expected while a server restarts; failures surface as errors.
        return None

    kwargs["error_cb"] = quiet
    try:
        # Reconnects are unbounded once connected, and nats-py applies that to the first
        # connection too: bound it, so a wrong URL is an error rather than a hang.
        async with asyncio.timeout(FIRST_CONNECT_TIMEOUT):
            return await nats.connect(**kwargs)
    except TimeoutError as exc:
        raise BackendError(
            f"cannot connect to NATS at {url}: no server answered within "
            f"{FIRST_CONNECT_TIMEOUT:g}s"
        ) from exc
    except Exception as exc:
        raise BackendError(f"cannot connect to NATS at {url}: {type(exc).__name__}: {exc}") from exc


# ---- streams, buckets ----------------------------------------------------------------------
@dataclass(frozen=True)
class StreamSettings:
    """How the streams are created. Defaults suit one server; raise ``replicas`` on a cluster."""

    replicas: int = 1
    storage: str = "file"
    """``file`` or ``memory``."""
    task_max_age: float = 7 * 86400.0
    """Seconds a queued task may wait for a worker before JetStream drops it."""
    result_max_age: float = 7 * 86400.0
    """Seconds results (and large objects) are kept, i.e. how long a run can be resumed."""
    duplicate_window: float = 3600.0
    """Seconds during which a task published again with the same id is dropped."""
    worker_ttl: float = 15.0
    """Seconds a worker's entry lives in the KV bucket without a heartbeat."""


@dataclass
class Layout:
    """Handles on the streams and buckets, once created."""

    js: Any
    workers: Any
    payloads: Any
    max_payload: int


_log = logging.getLogger("workplex.nats")


def _storage_name(value: Any) -> str:
    return str(getattr(value, "value", value) or "file").lower()


async def _ensure_stream(js: Any, config: Any, update: frozenset[str]) -> None:
    """Create the stream when it is missing. An existing one is left as it is (its
    settings belong to whoever set it up, e.g. workers started with ``--replicas 3``),
    unless ``update`` names settings passed explicitly to a worker (``replicas``,
    ``storage``): only those are changed; a difference in the others is logged."""
    nats = load_nats()
    try:
        await js.add_stream(config)
        return
    except nats.js.errors.BadRequestError as exc:
        if not update:
            try:
                have = (await js.stream_info(config.name)).config
            except Exception:
                raise BackendError(f"cannot create stream {config.name}: {exc}") from exc
            theirs = (_storage_name(have.storage), have.num_replicas or 1)
            ours = (_storage_name(config.storage), config.num_replicas or 1)
            if theirs != ours:
                _log.info(
                    "stream %s exists with storage=%s replicas=%s; kept as it is (not %s/%s)",
                    config.name, *theirs, *ours,
                )
            return
    try:
        have = (await js.stream_info(config.name)).config
        # Only what was asked for changes; the rest stays as whoever set it up chose.
        if "storage" not in update:
            config.storage = have.storage
        if "replicas" not in update:
            config.num_replicas = have.num_replicas
        await js.update_stream(config)
    except Exception as exc:
        raise BackendError(
            f"stream {config.name} exists with settings that cannot be changed to "
            f"storage={_storage_name(config.storage)} replicas={config.num_replicas}: {exc} "
            "(delete the WORKPLEX_* streams and buckets to change storage)"
        ) from exc


async def ensure_layout(
    nc: Any, settings: StreamSettings, *, update: Collection[str] = ()
) -> Layout:
    """Create every missing stream and bucket with ``settings``; safe to call from many
    processes. Existing ones are kept as they are, except for the settings named in
    ``update`` (``replicas``, ``storage``: what a worker was given explicitly)."""
    update = frozenset(update)
    if not update <= {"replicas", "storage"}:
        raise ValueError(f"update: unknown stream settings {sorted(update)}")
    nats = load_nats()
    api = nats.js.api
    js = nc.jetstream(publish_async_max_pending=8192)
    storage = api.StorageType.MEMORY if settings.storage == "memory" else api.StorageType.FILE
    work, limits = api.RetentionPolicy.WORK_QUEUE, api.RetentionPolicy.LIMITS
    task_age, result_age = settings.task_max_age, settings.result_max_age
    # name, subjects, retention, max age, whether publishes are deduplicated by id
    streams = [
        (TASKS_STREAM, ["workplex.tasks.>"], work, task_age, True),
        (RESULTS_STREAM, ["workplex.results.>"], limits, result_age, True),
        (DEAD_STREAM, ["workplex.dead.>"], limits, result_age, True),
        (ADVISORY_STREAM, [MAX_DELIVERIES_ADVISORY], work, result_age, False),
    ]
    try:
        for name, subjects, retention, max_age, dedupe in streams:
            window = {"duplicate_window": min(settings.duplicate_window, max_age)} if dedupe else {}
            config = api.StreamConfig(
                name=name,
                subjects=subjects,
                retention=retention,
                max_age=max_age,
                storage=storage,
                num_replicas=settings.replicas,
                **window,
            )
            await _ensure_stream(js, config, update)
        await js.add_consumer(
            ADVISORY_STREAM,
            api.ConsumerConfig(
                durable_name=DEAD_LETTER_CONSUMER,
                ack_policy=api.AckPolicy.EXPLICIT,
                ack_wait=30.0,
                max_deliver=-1,
            ),
        )
        kv_config = api.KeyValueConfig(
            bucket=WORKERS_BUCKET,
            ttl=settings.worker_ttl,
            history=1,
            storage=storage,
            replicas=settings.replicas,
        )
        try:
            workers = await js.create_key_value(kv_config)
        except nats.js.errors.BadRequestError:
            workers = await js.key_value(WORKERS_BUCKET)
        try:
            payloads = await js.object_store(PAYLOAD_BUCKET)
        except nats.js.errors.NotFoundError:
            payloads = await js.create_object_store(
                PAYLOAD_BUCKET,
                api.ObjectStoreConfig(
                    ttl=settings.result_max_age, storage=storage, replicas=settings.replicas
                ),
            )
    except BackendError:
        raise
    except Exception as exc:
        raise BackendError(
            f"cannot set up JetStream streams (is JetStream enabled? nats-server -js): "
            f"{type(exc).__name__}: {exc}"
        ) from exc
    return Layout(js, workers, payloads, int(nc.max_payload or 1024 * 1024))


async def put_blob(layout: Layout, name: str, data: bytes) -> None:
    await layout.payloads.put(name, data)


async def get_blob(layout: Layout, name: str) -> bytes:
    obj = await layout.payloads.get(name)
    return bytes(obj.data or b"")


async def delete_blob(layout: Layout, name: str) -> None:
    """Remove an object (its chunks are purged); a missing one is not an error."""
    with contextlib.suppress(Exception):
        await layout.payloads.delete(name)


# ---- live workers --------------------------------------------------------------------------
async def live_workers(
    js: Any, kv: Any, max_age: float | None = None
) -> list[dict[str, Any]]:
    """Every worker entry in the KV bucket (expired ones are dropped by the bucket's TTL).

    Keys are listed from the bucket stream's subject counts, not with ``kv.keys()``: that
    one runs an ordered consumer that can report "no keys" while the first entries are
    still in flight, which made a live fleet look empty now and then.
    """
    nats = load_nats()
    prefix = f"$KV.{WORKERS_BUCKET}."
    info = await js.stream_info(f"KV_{WORKERS_BUCKET}", subjects_filter=f"{prefix}>")
    subjects = info.state.subjects or {}
    found: list[dict[str, Any]] = []
    now = time.time()
    for subject in subjects:
        try:
            entry = await kv.get(subject[len(prefix) :])
        except nats.js.errors.KeyNotFoundError:  # deleted or purged since the listing
            continue
        if not entry.value:
            continue
        try:
            data = json.loads(entry.value)
        except ValueError:
            continue
        if max_age is not None and now - float(data.get("updated", now)) > max_age:
            continue
        found.append(data)
    found.sort(key=lambda w: str(w.get("id")))
    return found


async def list_workers(url: str, options: ConnectOptions | None = None) -> list[dict[str, Any]]:
    """The live workers, read only: unlike opening a backend, this creates no stream or
    bucket (an empty list when nothing was set up yet)."""
    nats = load_nats()
    nc = await connect(url, options)
    try:
        js = nc.jetstream()
        try:
            kv = await js.key_value(WORKERS_BUCKET)
        except nats.js.errors.NotFoundError:
            return []
        return await live_workers(js, kv)
    finally:
        await nc.close()


def offered(workers: Iterable[Mapping[str, Any]]) -> dict[str, list[str]]:
    """Executor name -> ids of the live workers offering it."""
    by_name: dict[str, list[str]] = {}
    for worker in workers:
        for name in worker.get("executors") or {}:
            by_name.setdefault(name, []).append(str(worker.get("id")))
    return by_name


# ---- dead letters --------------------------------------------------------------------------
def dead_letter_message(deliveries: int) -> str:
    return f"delivered {deliveries} times without an acknowledgement (worker died?)"


async def handle_dead_letter(layout: Layout, advisory: Any) -> None:
    """Record a task past its max deliveries in ``workplex.dead.<executor>`` (its id, run,
    stage, index, executor, dispatch id and deliveries; never the payload), remove it from
    the queue and report it failed.

    Every step is idempotent (message ids, a missing task means already handled), so the
    workers and the controller can all run this on the shared durable consumer.
    """
    nats = load_nats()
    js = layout.js
    try:
        info = json.loads(advisory.data)
        seq = int(info["stream_seq"])
        deliveries = int(info.get("deliveries") or 0)
    except (ValueError, KeyError, TypeError):
        await advisory.term()
        return
    try:
        raw = await js.get_msg(TASKS_STREAM, seq)
    except nats.js.errors.NotFoundError:
        await advisory.ack()  # handled before, or acked at the last moment
        return
    try:
        task = json.loads(raw.data or b"{}")
        task_id = str(task["id"])
        executor = str(task["type"])
        reply = str(task["reply"])
        dispatch = str(task.get("dispatch") or task_id)
    except (ValueError, KeyError, TypeError):
        await js.delete_msg(TASKS_STREAM, seq)
        await advisory.ack()
        return
    subject = dead_subject(executor)
    headers = {MSG_ID: f"dead:{dispatch}", "Workplex-Deliveries": str(deliveries)}
    # Only what identifies the task: its payload (secrets resolved) and settings stay out.
    record = {
        "id": task_id,
        "type": executor,
        "run_id": task.get("run_id"),
        "stage": task.get("stage"),
        "index": task.get("index"),
        "dispatch": dispatch,
        "deliveries": deliveries,
        "stream_seq": seq,
    }
    await js.publish(subject, dumps(record), headers=headers)
    result = Result.failure(
        ErrorInfo(
            DEAD_LETTER_ERROR,
            dead_letter_message(deliveries),
            False,
            {"dead_letter_subject": subject, "deliveries": deliveries},
        ),
        task_id=task_id,
        attempts=deliveries,
    )
    await js.publish(reply, dumps([result.to_dict()]), headers={MSG_ID: f"dead:{dispatch}"})
    with contextlib.suppress(nats.js.errors.NotFoundError):
        await js.delete_msg(TASKS_STREAM, seq)
    await advisory.ack()


async def dead_letter_loop(layout: Layout, stop: asyncio.Event) -> None:
    """Handle max-deliveries advisories until ``stop`` is set (runs in controller and workers)."""
    nats = load_nats()
    sub = await layout.js.pull_subscribe_bind(DEAD_LETTER_CONSUMER, ADVISORY_STREAM)
    try:
        while not stop.is_set():
            try:
                msgs = await sub.fetch(16, timeout=1.0)
            except (TimeoutError, nats.errors.TimeoutError):
                continue
            except nats.errors.ConnectionClosedError:
                return
            for msg in msgs:
                try:
                    await handle_dead_letter(layout, msg)
                except Exception:  # left unacked: redelivered to whoever is alive
                    continue
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()
