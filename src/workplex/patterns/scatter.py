"""``scatter``: one task per item of a list; the output is the list of outputs in input order."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from pydantic import Field

from workplex.engine import StageRun
from workplex.executor import Task
from workplex.patterns import Pattern, PatternConfig
from workplex.pipeline.model import Stage


class ScatterConfig(PatternConfig):
    max_parallel: int = Field(default=32, ge=1, description="Tasks in flight at once.")
    batch_size: int = Field(
        default=1,
        ge=1,
        description="Items handed to the executor per call when it supports batches "
        "(one call through its overlays); ignored for executors without batch support, "
        "whose items are dispatched one by one within max_parallel.",
    )


class Scatter(Pattern):
    name = "scatter"
    description = "One task per item of a list (scatter: {input, as})."
    sections = frozenset({"scatter"})
    Config = ScatterConfig

    def locals(self, stage: Stage, config: Any) -> set[str]:
        return {stage.scatter.as_} if stage.scatter else set()

    def check(self, stage: Stage, config: Any) -> list[str]:
        if stage.scatter is None:
            return ["mode scatter needs a `scatter: {input: $.path.to.list, as: item}` section"]
        return []

    async def run(self, run: StageRun) -> Any:
        items = run.scatter_items()
        template = run.template("input")
        executor = run.executor
        assert run.stage.scatter is not None
        var = run.stage.scatter.as_
        render = template.render
        base = run.scope
        prefix = run.task_prefix

        def tasks() -> Iterator[Task]:
            for i, item in enumerate(items):
                scope = dict(base)
                scope[var] = item
                yield Task(executor, render(scope), f"{prefix}{i}")

        config: ScatterConfig = run.config
        results = await run.execute(
            tasks(), total=len(items), limit=config.max_parallel, batch_size=config.batch_size
        )
        return [r.output if r is not None else None for r in results]
