"""The approval and workflow executors inside real engine runs with a SQLite store."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from workplex import Registry
from workplex.engine import Engine
from workplex.pipeline import read_pipeline
from workplex.store import Store


@pytest.fixture
async def engine(store: Store) -> AsyncIterator[Engine]:
    async with Registry() as registry, Engine(registry, store=store) as eng:
        yield eng


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


GATE = """\
name: gate-{default}
stages:
  - name: gate
    executor: approval
    input: {{message: "go?", timeout: {timeout}, default: {default}}}
"""


async def test_the_default_decides_when_the_timeout_has_passed(
    engine: Engine, tmp_path: Path
) -> None:
    approve = read_pipeline(write(tmp_path, "a.yaml", GATE.format(timeout=0, default="approve")))
    result = await engine.run(approve)
    assert result.status == "succeeded"
    out = result.stages["gate"].output
    assert out["approved"] is True and out["timed_out"] is True
    reject = read_pipeline(write(tmp_path, "r.yaml", GATE.format(timeout=0, default="reject")))
    result = await engine.run(reject)
    assert result.status == "failed"
    assert "rejected by default" in (result.stages["gate"].error or "")


async def test_before_the_timeout_the_run_pauses(engine: Engine, tmp_path: Path) -> None:
    pipeline = read_pipeline(
        write(tmp_path, "p.yaml", GATE.format(timeout="1h", default="approve"))
    )
    result = await engine.run(pipeline)
    assert result.status == "paused"
    assert engine.store is not None
    assert await engine.store.get_approval(result.run_id, "gate") is None
    stored = await engine.store.get_run(result.run_id)
    assert stored is not None and stored.status == "paused"
    # The paused task is not recorded as finished: it runs again on resume.
    assert await engine.store.finished_tasks(result.run_id, "gate") == {}


async def test_only_listed_approvers_count(engine: Engine, tmp_path: Path) -> None:
    text = """\
name: listed
stages:
  - name: gate
    executor: approval
    input: {message: "go?", approvers: [alice]}
"""
    pipeline = read_pipeline(write(tmp_path, "l.yaml", text))
    first = await engine.run(pipeline)
    assert first.status == "paused"
    assert engine.store is not None
    await engine.store.set_approval(first.run_id, "gate", True, by="mallory")
    again = await engine.resume(first.run_id)
    assert again.status == "failed"
    assert "mallory" in (again.stages["gate"].error or "")


async def test_approval_needs_a_store(tmp_path: Path) -> None:
    pipeline = read_pipeline(
        write(tmp_path, "n.yaml", GATE.format(timeout="1h", default="approve"))
    )
    async with Registry() as registry, Engine(registry) as engine:
        result = await engine.run(pipeline)
    assert result.status == "failed"
    assert "needs a pipeline run with a run store" in (result.stages["gate"].error or "")


CHILD = """\
name: child
inputs:
  who: {type: string}
stages:
  - name: ask
    executor: approval
    input: {message: "child asks"}
  - name: hello
    executor: echo
    input: {hello: $.trigger.who, by: $.ask.by}
"""

PARENT = """\
name: parent
stages:
  - name: sub
    executor: workflow
    input: {pipeline: child.yaml, inputs: {who: world}}
"""


async def test_a_paused_sub_run_pauses_its_parent_and_resumes_with_it(
    engine: Engine, tmp_path: Path
) -> None:
    write(tmp_path, "child.yaml", CHILD)
    parent = engine.load(write(tmp_path, "parent.yaml", PARENT))
    store = engine.store
    assert store is not None
    first = await engine.run(parent)
    assert first.status == "paused"
    children = await store.list_runs(parent_run_id=first.run_id)
    assert len(children) == 1 and children[0].status == "paused"
    child_id = children[0].run_id
    await store.set_approval(child_id, "ask", True, by="carol")
    second = await engine.resume(first.run_id)
    assert second.status == "succeeded", second.to_dict()
    out = second.stages["sub"].output
    assert out["run_id"] == child_id and out["output"] == {"hello": "world", "by": "carol"}
    # The same sub-run was resumed, not a new one started.
    assert [c.run_id for c in await store.list_runs(parent_run_id=first.run_id)] == [child_id]
    child = await store.get_run(child_id)
    assert child is not None and child.status == "succeeded"


async def test_a_failed_sub_run_fails_the_task(engine: Engine, tmp_path: Path) -> None:
    write(
        tmp_path,
        "bad.yaml",
        "name: bad\nstages:\n  - name: x\n    executor: approval\n"
        "    input: {timeout: 0, default: reject}\n",
    )
    parent = engine.load(write(tmp_path, "p.yaml", PARENT.replace("child.yaml", "bad.yaml")))
    result = await engine.run(parent)
    assert result.status == "failed"
    assert "sub-run" in (result.stages["sub"].error or "")
    assert "rejected by default" in (result.stages["sub"].error or "")
