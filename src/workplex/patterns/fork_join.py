"""``fork_join``: named branches, each its own executor and input, all in parallel."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from workplex.engine import StageRun
from workplex.patterns import Pattern, PatternConfig
from workplex.pipeline.model import Stage


class Branch(BaseModel):
    model_config = ConfigDict(extra="forbid")
    executor: str
    input: Any = Field(default_factory=dict)


class ForkJoinConfig(PatternConfig):
    branches: dict[str, Branch] = Field(min_length=1, description="Branch name -> executor and input.")


class ForkJoin(Pattern):
    name = "fork_join"
    description = "Named parallel branches (config: {branches: {name: {executor, input}}})."
    Config = ForkJoinConfig
    needs_executor = False

    sections = frozenset()

    def executor_fields(self, stage: Stage, config: Any) -> list[tuple[str, str]]:
        return [(b.executor, f"config.branches.{name}.executor") for name, b in config.branches.items()]

    def check(self, stage: Stage, config: Any) -> list[str]:
        # Each branch has its own executor and input; stage-level ones would be ignored.
        return [
            f"{field}: a fork_join stage sets it per branch (config.branches.NAME.{field}); "
            "this one would be ignored"
            for field in ("executor", "input")
            if field in stage.model_fields_set and getattr(stage, field) not in (None, {})
        ]

    def templates(self, stage: Stage, config: Any) -> dict[str, tuple[Any, str | list[str] | None]]:
        return {
            f"config.branches.{name}.input": (b.input, b.executor)
            for name, b in config.branches.items()
        }

    async def run(self, run: StageRun) -> Any:
        config: ForkJoinConfig = run.config
        names = list(config.branches)
        tasks = [
            run.task(
                config.branches[name].executor,
                run.render(run.template(f"config.branches.{name}.input")),
                i,
            )
            for i, name in enumerate(names)
        ]
        results = await run.execute(tasks, limit=len(tasks))
        return {n: r.output if r is not None else None for n, r in zip(names, results, strict=True)}
