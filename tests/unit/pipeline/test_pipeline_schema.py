"""`workplex schema --pipeline`: a JSON Schema that accepts every example and rejects mistakes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from typer.testing import CliRunner

from workplex.cli import app

EXAMPLES = sorted((Path(__file__).parents[3] / "examples").glob("*.yaml"))


@pytest.fixture(scope="module")
def schema() -> dict[str, Any]:
    result = CliRunner().invoke(app, ["schema", "--pipeline"])
    assert result.exit_code == 0, result.output
    data: dict[str, Any] = json.loads(result.stdout)
    jsonschema.Draft202012Validator.check_schema(data)
    return data


def errors(schema: dict[str, Any], doc: Any) -> list[str]:
    validator = jsonschema.Draft202012Validator(schema)
    return [e.message for e in validator.iter_errors(doc)]


def test_there_are_examples() -> None:
    assert {p.name for p in EXAMPLES} >= {
        "quickstart.yaml",
        "document-processing.yaml",
        "broadcast.yaml",
        "fork-join.yaml",
        "conditional.yaml",
    }


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_the_schema_accepts_every_example(schema: dict[str, Any], path: Path) -> None:
    assert errors(schema, yaml.safe_load(path.read_text())) == []


BASE = {"name": "p", "stages": [{"name": "a", "executor": "echo", "input": {"x": 1}}]}


def with_stage(**stage: Any) -> dict[str, Any]:
    return {"name": "p", "stages": [stage]}


def test_the_schema_accepts_a_minimal_pipeline(schema: dict[str, Any]) -> None:
    assert errors(schema, BASE) == []


@pytest.mark.parametrize(
    ("doc", "fragment"),
    [
        (with_stage(name="a", executor="echo", imput={}), "imput"),
        (with_stage(name="a", executor="nope"), "nope"),
        (with_stage(name="a", executor="echo", mode="scatterx"), "scatterx"),
        (
            with_stage(
                name="a",
                mode="scatter",
                executor="echo",
                scatter={"input": [1]},
                config={"max_parallel": "lots"},
            ),
            "lots",
        ),
        (
            with_stage(
                name="a",
                mode="scatter",
                executor="echo",
                scatter={"input": [1]},
                config={"max_paralel": 3},
            ),
            "max_paralel",
        ),
        (with_stage(name="a", executor="python", input={"args": [1]}), "function"),
        (with_stage(name="a", executor="command", input={"args": ["x"]}), "command"),
        ({"stages": BASE["stages"]}, "name"),
    ],
    ids=[
        "unknown stage key",
        "unknown executor",
        "unknown pattern",
        "max_parallel type",
        "unknown config key",
        "python without function",
        "command without command",
        "pipeline without name",
    ],
)
def test_the_schema_rejects_a_broken_pipeline(
    schema: dict[str, Any], doc: dict[str, Any], fragment: str
) -> None:
    found = errors(schema, doc)
    assert found, f"accepted {doc}"
    assert any(fragment in message for message in found), found


def test_the_schema_accepts_expressions_where_values_are_expected(schema: dict[str, Any]) -> None:
    doc = with_stage(
        name="a",
        mode="scatter",
        executor="command",
        scatter={"input": "$.trigger.x", "as": "x"},
        input={"command": "echo", "args": "$.x.args", "timeout": "$.trigger.t"},
        config={"max_parallel": 2},
    )
    assert errors(schema, doc) == []
