"""`workplex run --metrics-port` serves live metrics; tracing gives run, stage and task spans."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.support import free_port, require
from workplex import Engine, Pipeline, Registry, Stage
from workplex.config import parse_config
from workplex.overlays import default_overlays


def test_given_metrics_port_when_a_run_scrapes_itself_then_task_counters_are_served(
    tmp_path: Path,
) -> None:
    port = free_port()
    config = tmp_path / "workplex.yaml"
    config.write_text("executors:\n  http:\n    allow_private_networks: [127.0.0.1]\n")
    pipeline = tmp_path / "scrape.yaml"
    pipeline.write_text(
        f"""
name: scrape
stages:
  - name: work
    mode: scatter
    executor: echo
    scatter: {{input: [1, 2, 3], as: n}}
    input: {{n: $.n}}
  - name: scrape
    executor: http
    input: {{method: GET, url: "http://127.0.0.1:{port}/metrics"}}
"""
    )
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "workplex.cli",
            "--config",
            str(config),
            "run",
            str(pipeline),
            "--no-store",
            "--json",
            "--metrics-port",
            str(port),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    body = json.loads(out.stdout)["stages"]["scrape"]["output"]["body"]
    lines = [ln for ln in body.splitlines() if ln.startswith("workplex_tasks_total{")]
    echo = [ln for ln in lines if 'executor="echo"' in ln and 'outcome="success"' in ln]
    assert echo, body
    assert float(echo[0].rsplit(" ", 1)[1]) == 3.0
    assert f"metrics: http://127.0.0.1:{port}/metrics" in out.stderr  # says where to look


async def test_given_tracing_on_when_a_pipeline_runs_then_spans_nest_run_stage_task() -> None:
    sdk = require("opentelemetry.sdk.trace")
    export = require("opentelemetry.sdk.trace.export")
    memory = require("opentelemetry.sdk.trace.export.in_memory_span_exporter")
    exporter = memory.InMemorySpanExporter()
    provider = sdk.TracerProvider()
    provider.add_span_processor(export.SimpleSpanProcessor(exporter))
    config = parse_config({"overlays": {"*": {"tracing": {}}}})
    chain = default_overlays(config)
    chain.tracer_provider = provider
    registry = Registry(config, overlays=chain)
    pipeline = Pipeline(
        name="traced",
        stages=[Stage(name="only", executor="echo", input={"x": 1})],
    )
    async with registry, Engine(registry) as engine:
        result = await engine.run(pipeline)
    assert result.status == "succeeded"
    spans = {s.name: s for s in exporter.get_finished_spans()}
    assert {"workplex.run", "workplex.stage"} <= set(spans)
    run, stage = spans["workplex.run"], spans["workplex.stage"]
    assert stage.parent is not None and stage.parent.span_id == run.context.span_id
    assert run.attributes["workplex.run_id"] == result.run_id
    task_spans = [
        s for s in exporter.get_finished_spans() if s.name not in ("workplex.run", "workplex.stage")
    ]
    assert any(
        s.parent is not None and s.parent.span_id == stage.context.span_id for s in task_spans
    ), [s.name for s in exporter.get_finished_spans()]
