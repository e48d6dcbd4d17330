"""A stored run keeps one event per stage start and end, in order, for `workplex logs`."""

from __future__ import annotations

from pathlib import Path

from workplex import Engine, Pipeline, Registry, Stage
from workplex.store import Store


async def test_given_a_stored_run_when_it_ends_then_stage_events_tell_its_story(
    tmp_path: Path,
) -> None:
    pipeline = Pipeline(
        name="story",
        inputs={"go": {"type": "boolean", "default": False}},
        stages=[
            Stage(name="first", executor="echo", input={"a": 1}),
            Stage(name="maybe", executor="echo", input={"b": 2}, **{"if": "$.trigger.go"}),
            Stage(name="last", executor="echo", input={"c": "$.first.a"}, needs=["first"]),
        ],
    )
    store = await Store.open(f"sqlite:///{tmp_path / 'runs.db'}")
    try:
        async with Registry() as registry, Engine(registry, store=store) as engine:
            result = await engine.run(pipeline)
        events = await store.events(result.run_id, kinds=["stage.started", "stage.finished"])
    finally:
        await store.close()
    story = [(e.kind, e.stage, e.data.get("status")) for e in events]
    assert story == [
        ("stage.started", "first", None),
        ("stage.finished", "first", "succeeded"),
        ("stage.finished", "maybe", "skipped"),
        ("stage.started", "last", None),
        ("stage.finished", "last", "succeeded"),
    ]
