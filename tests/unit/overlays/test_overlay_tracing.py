"""tracing: task and attempt spans with their attributes, nested under run and stage spans."""

from __future__ import annotations

from pathlib import Path

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from tests.support import require
from tests.unit.overlays.conftest import MakeRegistry, StepClock
from workplex.errors import MissingExtraError
from workplex.executor import Context, Task
from workplex.overlays.tracing import run_span, stage_span


async def test_given_tracing_when_a_task_is_retried_then_spans_nest_run_stage_task_attempts(
    make_registry: MakeRegistry, step_clock: StepClock, tmp_path: Path
) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    registry, _ = make_registry(
        {"*": {"tracing": True}, "python": {"retry": {"max_attempts": 3, "initial_delay": 0}}},
        clock=step_clock,
        tracer_provider=provider,
    )
    task = Task(
        "python",
        {
            "function": "tests.unit.overlays.flaky:fail_times",
            "kwargs": {"counter": str(tmp_path / "n"), "failures": 1},
        },
    )
    async with registry:
        with run_span("run-1", "pipe", provider=provider), stage_span("run-1", "s1", provider=provider):
            result = await registry.execute(task, Context(task.id, "run-1", "s1"))
    assert result.success
    spans = {s.name: s for s in exporter.get_finished_spans() if s.name != "workplex.attempt"}
    attempts = [s for s in exporter.get_finished_spans() if s.name == "workplex.attempt"]
    run, stage, task_span = spans["workplex.run"], spans["workplex.stage"], spans["workplex.task"]
    assert stage.parent is not None and stage.parent.span_id == run.context.span_id
    assert task_span.parent is not None and task_span.parent.span_id == stage.context.span_id
    assert [a.attributes["workplex.attempt"] for a in attempts] == [1, 2]
    assert [a.attributes["workplex.outcome"] for a in attempts] == ["failed", "success"]
    for a in attempts:
        assert a.parent is not None and a.parent.span_id == task_span.context.span_id
    attrs = task_span.attributes
    assert attrs is not None
    assert attrs["workplex.run_id"] == "run-1" and attrs["workplex.stage"] == "s1"
    assert attrs["workplex.task_id"] == task.id and attrs["workplex.executor"] == "python"
    assert attrs["workplex.outcome"] == "success" and attrs["workplex.attempts"] == 2


def test_given_otlp_without_its_package_when_built_then_the_error_names_the_package(
    make_registry: MakeRegistry,
) -> None:
    require("opentelemetry.sdk")
    try:
        import opentelemetry.exporter.otlp  # type: ignore[import-not-found]  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("the OTLP exporter is installed here")
    registry, _ = make_registry({"echo": {"tracing": {"exporter": "otlp"}}})
    with pytest.raises(MissingExtraError, match="opentelemetry-exporter-otlp"):
        registry.call_for("echo")
