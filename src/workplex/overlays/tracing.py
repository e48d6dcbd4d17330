"""``tracing``: OpenTelemetry spans for each task and each attempt.

Spans are named ``workplex.task`` and ``workplex.attempt`` (a child of the task span) and
carry ``workplex.run_id``, ``workplex.stage``, ``workplex.task_id``, ``workplex.executor``,
``workplex.attempt`` and ``workplex.outcome``. The engine opens ``workplex.run`` and
``workplex.stage`` spans around them with :func:`run_span` and :func:`stage_span`, so a
run is one trace.

Only ``opentelemetry-api`` is needed: without an SDK the spans cost next to nothing and go
nowhere. ``exporter: otlp`` installs an SDK tracer provider with an OTLP exporter, which
needs the ``opentelemetry-exporter-otlp`` package.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Literal

from pydantic import Field

from workplex.errors import MissingExtraError
from workplex.executor import Context
from workplex.overlays.chain import Overlay, OverlayConfig
from workplex.registry import Call

TRACER_NAME = "workplex"


def _otel_trace() -> Any:
    try:
        from opentelemetry import trace
    except ImportError as exc:
        raise MissingExtraError("tracing", "opentelemetry-api", "the tracing overlay") from exc
    return trace


def get_tracer(provider: Any = None) -> Any:
    """The workplex tracer of ``provider`` (default: OpenTelemetry's global provider)."""
    trace = _otel_trace()
    if provider is None:
        return trace.get_tracer(TRACER_NAME)
    return provider.get_tracer(TRACER_NAME)


def otlp_provider(endpoint: str | None = None) -> Any:
    """An SDK tracer provider exporting to an OTLP endpoint (``MissingExtraError`` if the
    exporter package is not installed)."""
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import (  # type: ignore[import-not-found]
            OTLPSpanExporter,
        )
    except ImportError as exc:
        raise MissingExtraError(
            "otlp", "opentelemetry-exporter-otlp", "the tracing overlay's OTLP exporter"
        ) from exc
    try:
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError as exc:
        raise MissingExtraError("tracing", "opentelemetry-sdk", "the OTLP exporter") from exc
    provider = TracerProvider()
    exporter = OTLPSpanExporter(endpoint=endpoint) if endpoint else OTLPSpanExporter()
    provider.add_span_processor(BatchSpanProcessor(exporter))
    return provider


@contextmanager
def run_span(
    run_id: str, pipeline: str = "", provider: Any = None, **attributes: Any
) -> Iterator[Any]:
    """A ``workplex.run`` span around a whole run (the engine opens it)."""
    attrs = {"workplex.run_id": run_id, "workplex.pipeline": pipeline}
    attrs.update({f"workplex.{k}": v for k, v in attributes.items()})
    with get_tracer(provider).start_as_current_span("workplex.run", attributes=attrs) as span:
        yield span


@contextmanager
def stage_span(
    run_id: str, stage: str, provider: Any = None, **attributes: Any
) -> Iterator[Any]:
    """A ``workplex.stage`` span around one stage of a run (the engine opens it)."""
    attrs = {"workplex.run_id": run_id, "workplex.stage": stage}
    attrs.update({f"workplex.{k}": v for k, v in attributes.items()})
    with get_tracer(provider).start_as_current_span("workplex.stage", attributes=attrs) as span:
        yield span


class TracingConfig(OverlayConfig):
    exporter: Literal["none", "otlp"] = Field(
        "none", description="none: use the process's tracer provider; otlp: export over OTLP."
    )
    endpoint: str | None = Field(None, description="OTLP endpoint (default: the exporter's).")


class Tracing(Overlay):
    name = "tracing"
    description = "OpenTelemetry spans per task and per attempt."
    Config = TracingConfig

    def _tracer(self, config: TracingConfig) -> Any:
        chain = self.chain
        if config.exporter == "otlp" and chain.tracer_provider is None:
            chain.tracer_provider = otlp_provider(config.endpoint)
        return get_tracer(chain.tracer_provider)

    def wrap(self, next: Call, executor: str, config: TracingConfig) -> Call:
        return _spanned(next, self._tracer(config), "workplex.task", executor, attempt=False)

    def wrap_attempt(self, next: Call, executor: str, config: TracingConfig) -> Call:
        return _spanned(next, self._tracer(config), "workplex.attempt", executor, attempt=True)


def _spanned(next: Call, tracer: Any, name: str, executor: str, *, attempt: bool) -> Call:
    """``next`` inside a span ``name`` carrying the task's ids and, at the end, its outcome
    (and, on the task span, how many attempts it took)."""

    async def traced(input: Any, ctx: Context) -> Any:
        attrs: dict[str, str | int] = {
            "workplex.executor": executor,
            "workplex.run_id": ctx.run_id,
            "workplex.stage": ctx.stage,
            "workplex.task_id": ctx.task_id,
        }
        if attempt:
            attrs["workplex.attempt"] = ctx.attempt
        with tracer.start_as_current_span(name, attributes=attrs) as span:
            outcome = "failed"
            try:
                out = await next(input, ctx)
                outcome = "success"
                return out
            except asyncio.CancelledError:
                outcome = "cancelled"
                raise
            finally:
                span.set_attribute("workplex.outcome", outcome)
                if not attempt:
                    span.set_attribute("workplex.attempts", ctx.attempt)

    return traced
