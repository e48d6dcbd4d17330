"""``metrics``: Prometheus counters, histograms and gauges per executor and outcome.

Collectors live in a ``CollectorRegistry`` of their own, held by the overlay chain (not the
process-wide default registry), and are served by :func:`serve_metrics`::

    workplex_tasks_total{executor, outcome}        outcome: success | failed | cancelled
    workplex_errors_total{executor, error_type}
    workplex_task_duration_seconds{executor}       histogram, the whole task (all attempts)
    workplex_task_attempts{executor}               histogram of attempts per task
    workplex_tasks_in_flight{executor}             gauge
    workplex_circuit_state{executor, key}          gauge: 0 closed, 1 half-open, 2 open
    workplex_circuit_transitions_total{executor, state}

``prometheus-client`` is the ``metrics`` extra; it is imported only when metrics are on.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Hashable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from workplex.errors import MissingExtraError, ValidationError
from workplex.executor import Context
from workplex.overlays.chain import Overlay, OverlayConfig
from workplex.registry import Call

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from workplex.overlays.chain import OverlayChain

_STATE_VALUE = {"closed": 0.0, "half_open": 1.0, "open": 2.0}


def _prometheus() -> Any:
    try:
        import prometheus_client
    except ImportError as exc:
        raise MissingExtraError("metrics", "prometheus-client", "the metrics overlay") from exc
    return prometheus_client


class Collectors:
    """The Prometheus collectors of one overlay chain, in their own registry."""

    def __init__(self) -> None:
        prom = _prometheus()
        self.registry: CollectorRegistry = prom.CollectorRegistry(auto_describe=True)
        r = self.registry
        self.tasks = prom.Counter(
            "workplex_tasks_total", "Tasks run, by outcome.", ["executor", "outcome"], registry=r
        )
        self.errors = prom.Counter(
            "workplex_errors_total", "Failed tasks, by error type.", ["executor", "error_type"],
            registry=r,
        )
        self.duration = prom.Histogram(
            "workplex_task_duration_seconds", "Task duration, all attempts included.",
            ["executor"], registry=r,
        )
        self.attempts = prom.Histogram(
            "workplex_task_attempts", "Attempts per task.", ["executor"],
            buckets=(1, 2, 3, 4, 5, 7, 10, 20, float("inf")), registry=r,
        )
        self.in_flight = prom.Gauge(
            "workplex_tasks_in_flight", "Tasks running now.", ["executor"], registry=r
        )
        self.circuit_state = prom.Gauge(
            "workplex_circuit_state", "Circuit breaker state: 0 closed, 1 half-open, 2 open.",
            ["executor", "key"], registry=r,
        )
        self.circuit_transitions = prom.Counter(
            "workplex_circuit_transitions_total", "Circuit breaker state changes.",
            ["executor", "state"], registry=r,
        )

    def circuit_changed(self, executor: str, key: Hashable, state: str) -> None:
        self.circuit_state.labels(executor, str(key)).set(_STATE_VALUE.get(state, -1.0))
        self.circuit_transitions.labels(executor, state).inc()


class MetricsConfig(OverlayConfig):
    """No options yet: ``metrics: true`` (or ``{}``) turns it on."""


class Metrics(Overlay):
    name = "metrics"
    description = "Prometheus metrics per executor: tasks, errors, duration, attempts, in-flight."
    Config = MetricsConfig

    def wrap(self, next: Call, executor: str, config: MetricsConfig) -> Call:
        c = self.chain.collectors
        # Label children are bound once here, not looked up per call.
        ok = c.tasks.labels(executor, "success")
        failed = c.tasks.labels(executor, "failed")
        cancelled = c.tasks.labels(executor, "cancelled")
        duration = c.duration.labels(executor)
        attempts = c.attempts.labels(executor)
        in_flight = c.in_flight.labels(executor)
        errors: dict[str, Any] = {}
        perf = time.perf_counter

        async def metrics(input: Any, ctx: Context) -> Any:
            in_flight.inc()
            t0 = perf()
            try:
                out = await next(input, ctx)
            except asyncio.CancelledError:
                cancelled.inc()
                raise
            except Exception as exc:
                failed.inc()
                name = type(exc).__name__
                counter = errors.get(name)
                if counter is None:
                    counter = errors[name] = c.errors.labels(executor, name)
                counter.inc()
                duration.observe(perf() - t0)
                attempts.observe(ctx.attempt)
                raise
            finally:
                in_flight.dec()
            ok.inc()
            duration.observe(perf() - t0)
            attempts.observe(ctx.attempt)
            return out

        return metrics


@dataclass
class MetricsServer:
    """A running metrics endpoint; ``stop()`` shuts it down and frees the port."""

    host: str
    port: int
    _server: Any
    _thread: Any

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/metrics"

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def serve_metrics(
    port: int,
    host: str = "127.0.0.1",
    registry: CollectorRegistry | OverlayChain | None = None,
) -> MetricsServer:
    """Serve ``registry`` (a chain's, or the chain itself) on ``http://host:port/metrics``.

    ``port=0`` picks a free port (see ``.port``). Without a registry, the process-wide
    default registry is served.
    """
    prom = _prometheus()
    from workplex.overlays.chain import OverlayChain

    if isinstance(registry, OverlayChain):
        registry = registry.metrics_registry
    if not 0 <= port <= 65535:
        raise ValidationError(f"metrics port {port}: not a TCP port (use 0 to 65535)")
    try:
        server, thread = prom.start_http_server(port, addr=host, registry=registry or prom.REGISTRY)
    except (OSError, OverflowError) as exc:
        why = getattr(exc, "strerror", None) or str(exc)
        raise ValidationError(f"metrics port {port}: cannot listen on {host}:{port}: {why}") from exc
    return MetricsServer(host, int(server.server_port), server, thread)
