"""Every option of the built-in patterns: single, scatter, gather, broadcast, fork_join."""

from __future__ import annotations

from typing import Any, ClassVar

import pytest
from pydantic import BaseModel, RootModel

from workplex.engine import Engine
from workplex.executor import Capabilities, Context, Executor, SecurityLevel
from workplex.registry import Registry

from . import pl_funcs
from .conftest import LoadPipeline

# ---- single ----------------------------------------------------------------------------------


async def test_single_stage_output_is_the_executor_output(
    engine: Engine, load: LoadPipeline
) -> None:
    p = load("""
        name: one
        stages:
          - name: only
            executor: echo
            input: {a: 1, b: [x, y]}
        """)
    result = await engine.run(p)
    assert result.status == "succeeded"
    assert result.stages["only"].output == {"a": 1, "b": ["x", "y"]}
    assert result.stages["only"].total == 1


# ---- scatter ---------------------------------------------------------------------------------


async def test_scatter_outputs_keep_input_order_when_tasks_finish_out_of_order(
    engine: Engine, load: LoadPipeline
) -> None:
    items = list(range(30))
    p = load("""
        name: order
        inputs: {items: {type: array}}
        stages:
          - name: each
            mode: scatter
            executor: python
            scatter: {input: $.trigger.items, as: n}
            input: {function: "{F}:jitter", kwargs: {item: $.n, seed: 7}}
            config: {max_parallel: 30}
        """)
    result = await engine.run(p, {"items": items})
    assert result.status == "succeeded"
    assert items != pl_funcs.CALLS, "the tasks should have finished out of order"
    assert sorted(pl_funcs.CALLS) == items
    assert result.stages["each"].output == [{"item": i} for i in items]


@pytest.mark.parametrize("limit", [1, 3])
async def test_scatter_max_parallel_bounds_concurrency(
    engine: Engine, load: LoadPipeline, limit: int
) -> None:
    p = load(f"""
        name: bounded
        stages:
          - name: each
            mode: scatter
            executor: python
            scatter: {{input: [1, 2, 3, 4, 5, 6, 7, 8, 9, 10], as: n}}
            input: {{function: "{{F}}:tracked", args: [$.n]}}
            config: {{max_parallel: {limit}}}
        """)
    result = await engine.run(p)
    assert result.stages["each"].output == list(range(1, 11))
    assert limit == pl_funcs.PEAK


async def test_scatter_without_a_small_limit_runs_tasks_concurrently(
    engine: Engine, load: LoadPipeline
) -> None:
    p = load("""
        name: wide
        stages:
          - name: each
            mode: scatter
            executor: python
            scatter: {input: [a, b, c, d], as: n}
            input: {function: "{F}:overlap", args: [$.n, 4]}
        """)
    result = await engine.run(p)
    assert result.status == "succeeded"
    assert pl_funcs.PEAK == 4


class _BatchIn(BaseModel):
    n: int


class BatchDouble(Executor):
    """Doubles numbers; supports batches and records the size of each call."""

    name = "batch_double"
    description = "test executor with batches"
    security = SecurityLevel.SAFE
    capabilities = Capabilities(batch=True)
    Input = _BatchIn
    Output = RootModel[int]
    batches: ClassVar[list[int]] = []
    singles: ClassVar[int] = 0

    async def execute(self, input: _BatchIn, ctx: Context) -> Any:
        BatchDouble.singles += 1
        return input.n * 2

    async def execute_batch(self, inputs: list[Any], ctxs: list[Context]) -> list[Any]:
        BatchDouble.batches.append(len(inputs))
        return [i.n * 2 for i in inputs]


class PlainDouble(Executor):
    """The same without batch support: called once per item."""

    name = "plain_double"
    description = "test executor without batches"
    security = SecurityLevel.SAFE
    Input = _BatchIn
    Output = RootModel[int]
    calls: ClassVar[list[int]] = []

    async def execute(self, input: _BatchIn, ctx: Context) -> Any:
        PlainDouble.calls.append(input.n)
        return input.n * 2


BATCH_PIPELINE = """
    name: batches
    stages:
      - name: each
        mode: scatter
        executor: {executor}
        scatter: {{input: [0, 1, 2, 3, 4, 5, 6, 7, 8, 9], as: n}}
        input: {{n: $.n}}
        config: {{batch_size: 4, max_parallel: 1}}
    """


async def test_scatter_batch_size_hands_batches_to_an_executor_that_supports_them(
    registry: Registry, engine: Engine, load: LoadPipeline
) -> None:
    BatchDouble.batches, BatchDouble.singles = [], 0
    registry.register(BatchDouble)
    result = await engine.run(load(BATCH_PIPELINE.format(executor="batch_double")))
    assert result.status == "succeeded"
    assert BatchDouble.batches == [4, 4, 2]
    assert BatchDouble.singles == 0
    assert result.stages["each"].output == [n * 2 for n in range(10)]


async def test_scatter_batch_size_with_a_non_batch_executor_still_runs_every_item(
    registry: Registry, engine: Engine, load: LoadPipeline
) -> None:
    PlainDouble.calls = []
    registry.register(PlainDouble)
    result = await engine.run(load(BATCH_PIPELINE.format(executor="plain_double")))
    assert result.status == "succeeded"
    assert sorted(PlainDouble.calls) == list(range(10))
    assert result.stages["each"].output == [n * 2 for n in range(10)]


async def test_scatter_over_a_literal_list(engine: Engine, load: LoadPipeline) -> None:
    p = load("""
        name: literal
        stages:
          - name: each
            mode: scatter
            executor: echo
            scatter: {input: [x, y, z], as: letter}
            input: {letter: $.letter, fixed: 1}
        """)
    result = await engine.run(p)
    assert result.stages["each"].output == [
        {"letter": "x", "fixed": 1},
        {"letter": "y", "fixed": 1},
        {"letter": "z", "fixed": 1},
    ]
    assert result.stages["each"].total == 3


async def test_scatter_over_a_dict_gives_key_value_pairs(
    engine: Engine, load: LoadPipeline
) -> None:
    p = load("""
        name: dict
        inputs: {hosts: {type: object}}
        stages:
          - name: each
            mode: scatter
            executor: echo
            scatter: {input: $.trigger.hosts, as: host}
            input: {name: "$.host[0]", port: "$.host[1]"}
        """)
    result = await engine.run(p, {"hosts": {"web": 80, "db": 5432}})
    assert result.stages["each"].output == [
        {"name": "web", "port": 80},
        {"name": "db", "port": 5432},
    ]


async def test_scatter_over_something_that_is_not_a_list_fails_the_stage(
    engine: Engine, load: LoadPipeline
) -> None:
    p = load("""
        name: notalist
        inputs: {items: {type: any}}
        stages:
          - name: each
            mode: scatter
            executor: echo
            scatter: {input: $.trigger.items, as: n}
            input: {n: $.n}
        """)
    result = await engine.run(p, {"items": 5})
    assert result.status == "failed"
    assert "not a list" in (result.stages["each"].error or "")


# ---- gather ----------------------------------------------------------------------------------

GROUPS = """
    name: groups
    stages:
      - name: docs
        mode: scatter
        executor: echo
        scatter: {input: $.trigger.docs, as: d}
        input: $.d
      - name: by-kind
        mode: gather
        gather: {stage: docs, group_by: $.kind}
        %s
"""
DOCS = [
    {"id": 1, "kind": "letter"},
    {"id": 2, "kind": "invoice"},
    {"id": 3, "kind": "letter"},
    {"id": 4, "kind": "receipt"},
    {"id": 5, "kind": "invoice"},
]


async def test_gather_group_by_without_executor_outputs_groups_in_first_seen_order(
    engine: Engine, load: LoadPipeline
) -> None:
    p = load(GROUPS % "")
    result = await engine.run(p, {"docs": DOCS})
    assert result.status == "succeeded"
    assert result.stages["by-kind"].output == [
        {"key": "letter", "items": [DOCS[0], DOCS[2]]},
        {"key": "invoice", "items": [DOCS[1], DOCS[4]]},
        {"key": "receipt", "items": [DOCS[3]]},
    ]


async def test_gather_group_by_runs_one_task_per_group(engine: Engine, load: LoadPipeline) -> None:
    p = load(
        GROUPS % "executor: echo\n        input: {kind: $.group.key, ids: '$.group.items[*].id'}"
    )
    result = await engine.run(p, {"docs": DOCS})
    assert result.stages["by-kind"].total == 3
    assert result.stages["by-kind"].output == [
        {"kind": "letter", "ids": [1, 3]},
        {"kind": "invoice", "ids": [2, 5]},
        {"kind": "receipt", "ids": [4]},
    ]


async def test_gather_is_a_barrier_that_sees_every_upstream_result(
    engine: Engine, load: LoadPipeline
) -> None:
    p = load("""
        name: barrier
        stages:
          - name: work
            mode: scatter
            executor: python
            scatter: {input: [0, 1, 2, 3, 4, 5, 6, 7], as: n}
            input: {function: "{F}:jitter", kwargs: {item: $.n, seed: 3}}
          - name: all
            mode: gather
            gather: {stage: work}
            executor: echo
            input: {count: 0, items: $.group.items, key: $.group.key}
        """)
    result = await engine.run(p)
    out = result.stages["all"].output
    assert result.stages["all"].total == 1
    assert out["key"] is None
    assert out["items"] == [{"item": i} for i in range(8)]


async def test_gather_without_group_by_or_executor_outputs_the_single_group(
    engine: Engine, load: LoadPipeline
) -> None:
    p = load("""
        name: plain
        stages:
          - name: work
            mode: scatter
            executor: echo
            scatter: {input: [a, b], as: x}
            input: {x: $.x}
          - name: all
            mode: gather
            gather: {stage: work}
        """)
    result = await engine.run(p)
    assert result.stages["all"].output == {"key": None, "items": [{"x": "a"}, {"x": "b"}]}


MIN_RESULTS = """
    name: minimum
    inputs: {items: {type: array}}
    stages:
      - name: work
        mode: scatter
        executor: echo
        scatter: {input: $.trigger.items, as: x}
        input: {x: $.x}
      - name: all
        mode: gather
        gather: {stage: work}
        config: {min_results: 3}
"""


async def test_gather_min_results_is_met_with_exactly_that_many(
    engine: Engine, load: LoadPipeline
) -> None:
    result = await engine.run(load(MIN_RESULTS), {"items": [1, 2, 3]})
    assert result.status == "succeeded"
    assert len(result.stages["all"].output["items"]) == 3


async def test_gather_min_results_fails_with_one_fewer(engine: Engine, load: LoadPipeline) -> None:
    result = await engine.run(load(MIN_RESULTS), {"items": [1, 2]})
    assert result.status == "failed"
    error = result.stages["all"].error or ""
    assert "only 2 successful results" in error and "min_results=3" in error
    assert result.stages["work"].status == "succeeded"


TOLERATED = """
    name: tolerated
    inputs: {bad: {type: array}}
    stages:
      - name: work
        mode: scatter
        executor: python
        scatter: {input: [1, 2, 3, 4], as: n}
        input: {function: "{F}:fail_on", args: [$.n, $.trigger.bad]}
      - name: all
        mode: gather
        gather: {stage: work}
        config: {tolerated_failures: %s}
"""


@pytest.mark.parametrize(
    ("tolerated", "bad", "status"),
    [
        ("1", [2], "succeeded"),
        ("1", [2, 3], "failed"),
        ("'25%'", [2], "succeeded"),
        ("'25%'", [2, 3], "failed"),
        ("'50%'", [2, 3], "succeeded"),
        ("0", [4], "failed"),
    ],
)
async def test_gather_tolerated_failures_boundary(
    engine: Engine, load: LoadPipeline, tolerated: str, bad: list[int], status: str
) -> None:
    result = await engine.run(load(TOLERATED % tolerated), {"bad": bad})
    assert result.status == status
    gather = result.stages["all"]
    # Every upstream task ran (the gather decides, not fail-fast), failures included.
    assert result.stages["work"].total == 4
    assert result.stages["work"].failed == len(bad)
    if status == "succeeded":
        good = [{"item": n} for n in (1, 2, 3, 4) if n not in bad]
        assert gather.output == {"key": None, "items": good}
    else:
        assert f"{len(bad)} of 4 tasks of stage 'work' failed" in (gather.error or "")


async def test_gather_timeout_uses_what_arrived_and_stops_the_upstream_stage(
    engine: Engine, load: LoadPipeline
) -> None:
    p = load("""
        name: late
        stages:
          - name: work
            mode: scatter
            executor: python
            scatter: {input: [[0, 0], [1, 0], [2, 60], [3, 60]], as: it}
            input: {function: "{F}:sleep_for", args: ["$.it[0]", "$.it[1]"]}
          - name: all
            mode: gather
            gather: {stage: work}
            config: {timeout: 300ms}
        """)
    result = await engine.run(p)
    data = result.to_dict()
    assert data["status"] == "succeeded"
    gather = data["stages"]["all"]
    assert gather["output"] == {"key": None, "items": [{"item": 0}, {"item": 1}]}
    assert gather["info"]["missing"] == 2 and gather["info"]["complete"] is False
    upstream = data["stages"]["work"]
    assert upstream["status"] == "cancelled"
    assert "timeout" in upstream["error"]
    assert upstream["tasks"]["succeeded"] == 2 and upstream["tasks"]["total"] == 4


async def test_gather_timeout_with_too_few_arrivals_fails_naming_the_timeout(
    engine: Engine, load: LoadPipeline
) -> None:
    p = load("""
        name: late
        stages:
          - name: work
            mode: scatter
            executor: python
            scatter: {input: [[0, 0], [1, 60]], as: it}
            input: {function: "{F}:sleep_for", args: ["$.it[0]", "$.it[1]"]}
          - name: all
            mode: gather
            gather: {stage: work}
            config: {timeout: 0.3, min_results: 2}
        """)
    result = await engine.run(p)
    assert result.status == "failed"
    assert "had not arrived when the timeout passed" in (result.stages["all"].error or "")


# ---- broadcast -------------------------------------------------------------------------------


async def test_broadcast_sends_the_same_input_to_each_executor(
    engine: Engine, load: LoadPipeline
) -> None:
    p = load("""
        name: bc
        stages:
          - name: all
            mode: broadcast
            input: {function: "{F}:label", kwargs: {who: python}}
            config: {executors: [echo, python]}
        """)
    result = await engine.run(p)
    assert result.stages["all"].output == {
        "echo": {"function": f"{pl_funcs.__name__}:label", "kwargs": {"who": "python"}},
        "python": {"who": "python"},
    }
    assert result.stages["all"].total == 2


async def test_broadcast_without_wait_for_all_returns_the_first_success_and_cancels_the_rest(
    engine: Engine, load: LoadPipeline
) -> None:
    p = load("""
        name: race
        stages:
          - name: first
            mode: broadcast
            input: {function: "{F}:slow_until_cancelled", args: [python]}
            config: {executors: [python, echo], wait_for_all: false}
        """)
    result = await engine.run(p)
    assert result.status == "succeeded"
    assert result.stages["first"].output == {
        "echo": {"function": f"{pl_funcs.__name__}:slow_until_cancelled", "args": ["python"]}
    }
    assert pl_funcs.CANCELLED == ["python"]


async def test_broadcast_without_wait_for_all_ignores_a_loser_that_failed(
    engine: Engine, load: LoadPipeline
) -> None:
    p = load("""
        name: race
        stages:
          - name: first
            mode: broadcast
            input: {function: "{F}:boom"}
            config: {executors: [python, echo], wait_for_all: false}
        """)
    result = await engine.run(p)
    assert result.status == "succeeded", result.to_dict()
    assert list(result.stages["first"].output) == ["echo"]


async def test_broadcast_without_wait_for_all_fails_when_nothing_succeeds(
    engine: Engine, load: LoadPipeline
) -> None:
    p = load("""
        name: race
        stages:
          - name: first
            mode: broadcast
            input: {function: "{F}:boom"}
            config: {executors: [python], wait_for_all: false}
        """)
    result = await engine.run(p)
    assert result.status == "failed"
    assert "no executor succeeded" in (result.stages["first"].error or "")


# ---- fork_join -------------------------------------------------------------------------------


async def test_fork_join_output_is_keyed_by_branch_and_branches_overlap(
    engine: Engine, load: LoadPipeline
) -> None:
    p = load("""
        name: fj
        stages:
          - name: both
            mode: fork_join
            config:
              branches:
                left: {executor: python, input: {function: "{F}:overlap", args: [left, 3]}}
                right: {executor: python, input: {function: "{F}:overlap", args: [right, 3]}}
                middle: {executor: python, input: {function: "{F}:overlap", args: [middle, 3]}}
                plain: {executor: echo, input: {v: $.trigger.v}}
        """)
    result = await engine.run(p, {"v": 9})
    assert result.stages["both"].output == {
        "left": {"name": "left"},
        "right": {"name": "right"},
        "middle": {"name": "middle"},
        "plain": {"v": 9},
    }
    # Every branch started before any other ended: they ran at the same time.
    spans = pl_funcs.SPANS
    assert max(s for s, _ in spans.values()) < min(e for _, e in spans.values())
    assert pl_funcs.PEAK == 3
