"""``logging``: one structured line when an attempt starts and one when it ends.

Each line carries ``run_id``, ``stage``, ``task_id``, ``attempt``, ``executor``, and at the
end ``outcome`` (success | failed | cancelled), ``duration`` (seconds) and the error.
:func:`configure_logging` sets structlog up: JSON lines when stderr is not a terminal, a
console layout when it is. Secrets never appear: every value of the task's
``ctx.secrets`` is replaced by ``***`` in every event logged while the task runs (the
executor's own ``ctx.logger`` lines included), and values under keys named like
password / token / secret / authorization / api key are masked.
"""

from __future__ import annotations

import asyncio
import functools
import re
import sys
import time
from collections.abc import Mapping, MutableMapping
from contextvars import ContextVar
from typing import Any, Literal, TextIO

import structlog
from pydantic import Field

from workplex.executor import Context, Secrets
from workplex.overlays.chain import Overlay, OverlayConfig, exit_code_of
from workplex.registry import Call

MASK = "***"
SENSITIVE_KEY = re.compile(r"pass(word|wd)?|token|secret|authori[sz]ation|api[_-]?key|cookie", re.I)

_secrets: ContextVar[Secrets | None] = ContextVar("workplex_log_secrets", default=None)


@functools.lru_cache(maxsize=1024)
def _sensitive(key: str) -> bool:
    # Log events reuse a handful of keys: decide each once, not per line.
    return SENSITIVE_KEY.search(key) is not None


def _scrub(value: Any, secrets: Secrets | None) -> Any:
    if isinstance(value, str):
        return secrets.redact(value) if secrets else value
    if isinstance(value, Mapping):
        return {
            k: MASK if isinstance(k, str) and _sensitive(k) else _scrub(v, secrets)
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [_scrub(v, secrets) for v in value]
    return value


def redact_secrets(
    logger: Any, method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """structlog processor: mask sensitive keys and the running task's secret values."""
    secrets = _secrets.get()
    for key, value in event_dict.items():
        if _sensitive(key):
            event_dict[key] = MASK
        elif secrets or not isinstance(value, str | int | float | bool | None):
            event_dict[key] = _scrub(value, secrets)
    return event_dict


_ours: dict[str, Any] | None = None
"""The arguments of our last ``configure_logging`` (None: structlog is not ours to change)."""


def _ensure_configured(level: str) -> None:
    """Turned on only in a stage, structlog's own default prints to stdout, where it would
    mix with `workplex run --json`; ours goes to stderr. ``level: debug`` lowers our filter
    so its lines show. Runs before a logger binds its methods, which fixes its configuration."""
    if not structlog.is_configured():
        configure_logging(level="debug" if level == "debug" else "info")
    elif level == "debug" and _ours is not None and _ours["level"] not in ("debug", 10):
        configure_logging(json=_ours["json"], level="debug", stream=_ours["stream"])


def configure_logging(
    json: bool | None = None,
    level: str | int = "info",
    stream: TextIO | None = None,
) -> None:
    """Configure structlog for workplex: JSON lines (``json=None``: when ``stream`` is not a
    terminal) or console output, on ``stream`` (default stderr), with secrets redacted."""
    global _ours
    _ours = {"json": json, "level": level, "stream": stream}
    out = stream if stream is not None else sys.stderr
    if json is None:
        json = not (hasattr(out, "isatty") and out.isatty())
    renderer: Any = (
        structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            redact_secrets,
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(file=out),
        cache_logger_on_first_use=True,
    )


class LoggingConfig(OverlayConfig):
    level: Literal["debug", "info", "warning"] = Field(
        "info", description="Level of the attempt lines (failures are at least warning)."
    )


class Logging(Overlay):
    name = "logging"
    description = "Structured log lines per attempt with run/stage/task ids; secrets redacted."
    Config = LoggingConfig

    def wrap(self, next: Call, executor: str, config: LoggingConfig) -> Call:
        async def with_secrets(input: Any, ctx: Context) -> Any:
            token = _secrets.set(ctx.secrets if len(ctx.secrets) else None)
            try:
                return await next(input, ctx)
            finally:
                _secrets.reset(token)

        return with_secrets

    def wrap_attempt(self, next: Call, executor: str, config: LoggingConfig) -> Call:
        _ensure_configured(config.level)
        logger = structlog.get_logger("workplex.overlays")
        log = getattr(logger, config.level)
        # One line per attempt by default (its end, with outcome and duration); the start
        # line is debug-level, filtered out for almost nothing unless asked for.
        log_start = logger.debug
        perf = time.perf_counter

        async def log_attempt(input: Any, ctx: Context) -> Any:
            ids = {
                "executor": executor,
                "run_id": ctx.run_id,
                "stage": ctx.stage,
                "task_id": ctx.task_id,
                "attempt": ctx.attempt,
            }
            log_start("attempt.start", **ids)
            t0 = perf()
            try:
                out = await next(input, ctx)
            except asyncio.CancelledError:
                logger.warning(
                    "attempt.end", **ids, outcome="cancelled", duration=perf() - t0
                )
                raise
            except Exception as exc:
                logger.warning(
                    "attempt.end",
                    **ids,
                    outcome="failed",
                    duration=perf() - t0,
                    error_type=type(exc).__name__,
                    error=str(exc),
                    retryable=bool(getattr(exc, "retryable", False)),
                )
                raise
            extra = {}
            code = exit_code_of(out)
            if code is not None:
                extra["exit_code"] = code
            log("attempt.end", **ids, outcome="success", duration=perf() - t0, **extra)
            return out

        return log_attempt
