"""Expressions: the simple fast path, general JSONPath, `$$`, the roots, run-time misses."""

from __future__ import annotations

import pytest

from workplex.engine import Engine
from workplex.errors import PipelineError
from workplex.pipeline.expressions import Missing, compile_expr, compile_template

from .conftest import LoadPipeline


@pytest.mark.parametrize(
    ("text", "keys"),
    [
        ("$.a.b[0]", ("a", "b", 0)),
        ("$.a['x y']", ("a", "x y")),
        ('$.stage-name["k"][-1]', ("stage-name", "k", -1)),
    ],
)
def test_simple_paths_take_the_fast_path(text: str, keys: tuple[object, ...]) -> None:
    expr = compile_expr(text)
    assert expr.is_simple
    assert expr.root == keys[0]
    scope: dict[str, object] = {}
    # Build a scope along the keys and check the walk finds the leaf.
    leaf: object = "found"
    for key in reversed(keys):
        leaf = [leaf] if isinstance(key, int) else {key: leaf}
    scope = leaf  # type: ignore[assignment]
    assert expr.evaluate(scope) == "found"


@pytest.mark.parametrize("text", ["$.a[*].b", "$..b", "$.a[?(@.b > 1)]", "$.a[0:2]"])
def test_wildcards_filters_and_slices_are_general(text: str) -> None:
    assert not compile_expr(text).is_simple


def test_general_paths_return_every_match() -> None:
    scope = {"a": [{"b": 1}, {"b": 2}, {"c": 3}]}
    assert compile_expr("$.a[*].b").evaluate(scope) == [1, 2]
    assert compile_expr("$.a[?(@.b > 1)].b").evaluate(scope) == [2]  # a filter stays a list
    assert compile_expr("$..c").evaluate(scope) == [3]


def test_a_simple_path_that_finds_nothing_raises_missing_naming_the_key() -> None:
    with pytest.raises(Missing, match="nothing at 'z'"):
        compile_expr("$.a.z").evaluate({"a": {"b": 1}})
    assert compile_expr("$.a.z").get({"a": {}}, "fallback") == "fallback"


def test_bad_syntax_is_a_pipeline_error_naming_the_place() -> None:
    with pytest.raises(PipelineError, match=r"stage 'x': input\.v: bad expression"):
        compile_expr("$.a[?(@", "stage 'x': input.v")


def test_dollar_dollar_escapes_a_literal_dollar() -> None:
    tpl = compile_template({"price": "$$5", "nested": ["$$.not.a.path"], "path": "$.v"})
    assert tpl.render({"v": 1}) == {"price": "$5", "nested": ["$.not.a.path"], "path": 1}
    assert [e.text for _, e in tpl.exprs] == ["$.v"]


def test_a_template_without_expressions_is_constant() -> None:
    tpl = compile_template({"a": [1, {"b": "$$x"}]})
    assert tpl.constant
    assert tpl.render({}) is tpl.render({"anything": 1})
    assert tpl.render({}) == {"a": [1, {"b": "$x"}]}


async def test_expression_roots_resolve_at_run_time(
    engine: Engine, load: LoadPipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WPX_PIPELINE_TEST_VAR", "from-env")
    p = load("""
        name: roots
        stages:
          - name: first
            executor: echo
            input: {nums: [10, 20, 30], deep: {"x y": ok}}
          - name: show
            executor: echo
            input:
              env: $.env.WPX_PIPELINE_TEST_VAR
              trigger: $.trigger.x
              simple: $.first.nums[1]
              quoted: "$.first.deep['x y']"
              general: "$.first.nums[*]"
              literal: "$$.first"
              run: $.run.pipeline
              run_id: $.run.id
        """)
    result = await engine.run(p, {"x": {"k": [1, 2]}})
    out = result.stages["show"].output
    assert out == {
        "env": "from-env",
        "trigger": {"k": [1, 2]},
        "simple": 20,
        "quoted": "ok",
        "general": [10, 20, 30],
        "literal": "$.first",
        "run": "roots",
        "run_id": result.run_id,
    }


async def test_a_missing_path_at_run_time_fails_the_stage_clearly(
    engine: Engine, load: LoadPipeline
) -> None:
    p = load("""
        name: missing
        stages:
          - name: first
            executor: echo
            input: {a: 1}
          - name: second
            executor: echo
            input: {wanted: $.first.b}
        """)
    result = await engine.run(p)
    assert result.status == "failed"
    error = result.stages["second"].error or ""
    assert "wanted" in error and "$.first.b" in error and "nothing at 'b'" in error
    assert result.stages["second"].total == 0


async def test_a_missing_scatter_input_fails_the_stage_clearly(
    engine: Engine, load: LoadPipeline
) -> None:
    p = load("""
        name: missing
        stages:
          - name: each
            mode: scatter
            executor: echo
            scatter: {input: $.trigger.items, as: x}
            input: {x: $.x}
        """)
    result = await engine.run(p)
    assert result.status == "failed"
    assert "scatter.input" in (result.stages["each"].error or "")
    assert "$.trigger.items" in (result.stages["each"].error or "")
