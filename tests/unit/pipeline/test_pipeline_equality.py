"""A pipeline is equal to the same pipeline however it was made: loaded, built or round-tripped."""

from __future__ import annotations

from pathlib import Path

from workplex import Registry
from workplex.engine import Engine
from workplex.pipeline.model import Pipeline, ScatterSpec, Stage

QUICKSTART = Path(__file__).resolve().parents[3] / "examples" / "quickstart.yaml"


def built_in_code() -> Pipeline:
    """examples/quickstart.yaml, written out in Python."""
    return Pipeline(
        name="quickstart",
        inputs={"words": {"type": "array", "default": ["alpha", "beta", "gamma", "alpha"]}},
        stages=[
            Stage(
                name="hello",
                executor="command",
                input={"command": "echo", "args": ["hello from workplex"]},
            ),
            Stage(
                name="shout",
                mode="scatter",
                executor="command",
                scatter=ScatterSpec.model_validate({"input": "$.trigger.words", "as": "word"}),
                input={"command": "tr", "args": ["a-z", "A-Z"], "stdin": "$.word"},
                config={"max_parallel": 4},
            ),
            Stage.model_validate(
                {
                    "name": "count",
                    "mode": "gather",
                    "gather": {"stage": "shout", "group_by": "$.stdout"},
                    "executor": "echo",
                    "input": {"word": "$.group.key", "times": "$.group.items.`len`"},
                }
            ),
        ],
    )


def test_loaded_yaml_equals_the_same_pipeline_built_in_code() -> None:
    loaded = Engine(Registry()).load(QUICKSTART)
    assert loaded.path is not None  # it does carry where it came from...
    assert loaded == built_in_code()  # ...which is not part of its identity
    assert built_in_code() == loaded


def test_round_trip_through_a_document_is_equal() -> None:
    loaded = Engine(Registry()).load(QUICKSTART)
    assert loaded == Pipeline.from_document(loaded.to_document())
    assert loaded == Pipeline.from_document(loaded.to_document(), path="elsewhere.yaml")


def test_a_different_document_is_not_equal() -> None:
    loaded = Engine(Registry()).load(QUICKSTART)
    changed = loaded.to_document()
    changed["stages"][0]["input"]["args"] = ["hello from elsewhere"]
    assert loaded != Pipeline.from_document(changed)
    assert loaded != built_in_code().model_copy(update={"name": "other"})
    assert loaded != loaded.to_document()  # a dict is not a pipeline
