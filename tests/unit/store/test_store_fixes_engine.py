"""Engine and store fixes: run/stage spans when tracing is set only on a stage, the workflow
recursion guards, absolute stored paths, errors and events capped like outputs, and the
``resumed`` event written only once the lease is held."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.support import require
from workplex import Engine, Registry
from workplex.config import parse_config
from workplex.errors import PipelineError, StoreError
from workplex.overlays import default_overlays
from workplex.pipeline.loader import read_pipeline
from workplex.store import Store
from workplex.store.store import TRUNCATED_TEXT

BIG_FAIL = """\
name: big
stages:
  - name: boom
    executor: python
    input: {function: "workplex_fix_funcs:explode", kwargs: {size: 3000000}}
"""

FUNCS = """\
def explode(size):
    raise RuntimeError("x" * size)
"""


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


# ---- tracing -------------------------------------------------------------------------------
async def test_given_tracing_only_on_a_stage_when_it_runs_then_run_stage_task_attempt_spans_nest(
    tmp_path: Path,
) -> None:
    sdk = require("opentelemetry.sdk.trace")
    export = require("opentelemetry.sdk.trace.export")
    memory = require("opentelemetry.sdk.trace.export.in_memory_span_exporter")
    exporter = memory.InMemorySpanExporter()
    provider = sdk.TracerProvider()
    provider.add_span_processor(export.SimpleSpanProcessor(exporter))
    config = parse_config({})
    chain = default_overlays(config)
    chain.tracer_provider = provider  # the provider a program embedding workplex hands over
    path = write(
        tmp_path,
        "traced.yaml",
        "name: traced\nstages:\n  - name: only\n    executor: echo\n    input: {x: 1}\n"
        "    overlays: {tracing: {}}\n",
    )
    registry = Registry(config, overlays=chain)
    async with registry, Engine(registry) as engine:
        result = await engine.run(engine.load(path))
    assert result.status == "succeeded"
    spans = exporter.get_finished_spans()
    by_name = {s.name: s for s in spans}
    assert set(by_name) >= {"workplex.run", "workplex.stage", "workplex.task", "workplex.attempt"}
    run, stage = by_name["workplex.run"], by_name["workplex.stage"]
    task, attempt = by_name["workplex.task"], by_name["workplex.attempt"]
    assert run.parent is None
    assert stage.parent is not None and stage.parent.span_id == run.context.span_id
    assert task.parent is not None and task.parent.span_id == stage.context.span_id
    assert attempt.parent is not None and attempt.parent.span_id == task.context.span_id
    assert len({s.context.trace_id for s in spans}) == 1
    assert run.attributes is not None and run.attributes["workplex.run_id"] == result.run_id


# ---- workflow recursion ----------------------------------------------------------------------
async def test_given_a_pipeline_running_itself_when_loaded_then_it_is_refused(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "self.yaml",
        "name: self\nstages:\n  - name: again\n    executor: workflow\n"
        "    input: {pipeline: ./self.yaml}\n",
    )
    async with Registry() as registry:
        with pytest.raises(PipelineError) as caught:
            Engine(registry).load(path)
    assert "stage 'again'" in str(caught.value) and "itself" in str(caught.value)


async def test_given_two_pipelines_calling_each_other_when_run_then_the_cycle_fails_the_run(
    tmp_path: Path, store: Store
) -> None:
    write(tmp_path, "a.yaml", "name: a\nstages:\n  - name: to_b\n    executor: workflow\n"
          "    input: {pipeline: b.yaml}\n")
    write(tmp_path, "b.yaml", "name: b\nstages:\n  - name: to_a\n    executor: workflow\n"
          "    input: {pipeline: a.yaml}\n")
    async with Registry() as registry, Engine(registry, store=store) as engine:
        result = await engine.run(engine.load(tmp_path / "a.yaml"))
    assert result.status == "failed"
    assert "cycle" in (result.error or "") and "a.yaml -> " in (result.error or "")
    # One sub-run (b) was made; the second level was refused before it started.
    children = await store.list_runs(parent_run_id=result.run_id)
    assert [c.pipeline for c in children] == ["b"]
    assert await store.list_runs(parent_run_id=children[0].run_id) == []


async def test_given_max_depth_when_sub_runs_nest_deeper_then_the_stage_fails(
    tmp_path: Path, store: Store
) -> None:
    # A chain of distinct files p0 -> p1 -> p2 -> p3: with max_depth 2, p3 is refused.
    for i in range(3):
        write(tmp_path, f"p{i}.yaml", f"name: p{i}\nstages:\n  - name: down\n    executor: workflow\n"
              f"    input: {{pipeline: p{i + 1}.yaml}}\n")
    write(tmp_path, "p3.yaml", "name: p3\nstages:\n  - name: leaf\n    executor: echo\n    input: {}\n")
    config = parse_config({"executors": {"workflow": {"max_depth": 2}}})
    async with Registry(config) as registry, Engine(registry, store=store) as engine:
        result = await engine.run(engine.load(tmp_path / "p0.yaml"))
    assert result.status == "failed"
    assert "max_depth=2" in (result.error or "")
    names = sorted(r.pipeline for r in await store.list_runs(limit=100))
    assert names == ["p0", "p1", "p2"]

    config = parse_config({"executors": {"workflow": {"max_depth": 3}}})
    async with Registry(config) as registry, Engine(registry, store=store) as engine:
        deeper = await engine.run(engine.load(tmp_path / "p0.yaml"))
    assert deeper.status == "succeeded", deeper.error


# ---- stored path -----------------------------------------------------------------------------
async def test_given_a_relative_pipeline_path_when_run_then_the_store_keeps_it_absolute(
    tmp_path: Path, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(tmp_path, "rel.yaml", "name: rel\nstages:\n  - name: a\n    executor: echo\n    input: {}\n")
    monkeypatch.chdir(tmp_path)
    async with Registry() as registry, Engine(registry, store=store) as engine:
        result = await engine.run(read_pipeline("rel.yaml"))
    stored = await store.get_run(result.run_id)
    assert stored is not None and stored.path == str(tmp_path / "rel.yaml")


# ---- caps ------------------------------------------------------------------------------------
async def test_given_a_huge_exception_when_stored_then_every_copy_is_capped(
    tmp_path: Path, store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(tmp_path, "workplex_fix_funcs.py", FUNCS)
    monkeypatch.syspath_prepend(str(tmp_path))
    path = write(tmp_path, "big.yaml", BIG_FAIL)
    store = await Store.open(store_url, max_output_bytes=1000)
    try:
        async with Registry() as registry, Engine(registry, store=store) as engine:
            result = await engine.run(engine.load(path))
        assert result.status == "failed"
        assert len(result.error or "") > 3_000_000  # the in-memory result is whole
        stored = await store.get_run(result.run_id)
        assert stored is not None
        failed = await store.failed_tasks(result.run_id)
        events = await store.events(result.run_id)
    finally:
        await store.close()
    marker = TRUNCATED_TEXT.split("{")[0]
    texts: list[str] = [stored.error or "", stored.stages["boom"].error or ""]
    texts += [str(f["error"]["message"]) for f in failed]
    texts += [json.dumps(e.data) for e in events if "error" in e.data]
    assert len(texts) == 4
    for text in texts:
        assert len(text.encode()) <= 1200, len(text)
        assert marker in text and "3000" in text  # says how big it was


async def test_given_small_errors_when_stored_then_they_are_kept_whole(store: Store) -> None:
    await store.create_run("r-small", "p", {"stages": [{"name": "s"}]}, None, {})
    await store.stage_update("r-small", "s", "failed", error="short reason")
    await store.event("r-small", "note", {"stage": "s", "error": "short reason", "n": 1})
    stored = await store.get_run("r-small")
    events = await store.events("r-small")
    assert stored is not None and stored.stages["s"].error == "short reason"
    assert events[-1].data == {"stage": "s", "error": "short reason", "n": 1}


# ---- resumed event ---------------------------------------------------------------------------
async def test_given_a_held_lease_when_resume_is_refused_then_no_resumed_event_is_written(
    tmp_path: Path, store: Store
) -> None:
    path = write(tmp_path, "gate.yaml", "name: gate\nstages:\n  - name: gate\n    executor: approval\n"
                 "    input: {message: 'ok?'}\n")
    async with Registry() as registry, Engine(registry, store=store) as engine:
        paused = await engine.run(engine.load(path))
        assert paused.status == "paused"
        await store.acquire_lease(paused.run_id, "someone-else", 60)
        with pytest.raises(StoreError):
            await engine.resume(paused.run_id)
        kinds: list[Any] = [e.kind for e in await store.events(paused.run_id)]
        assert "resumed" not in kinds
        await store.release_lease(paused.run_id, "someone-else")
        again = await engine.resume(paused.run_id)
    assert again.status == "paused"
    kinds = [e.kind for e in await store.events(paused.run_id)]
    assert kinds.count("resumed") == 1
