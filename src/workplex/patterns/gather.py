"""``gather``: a barrier on an earlier stage's tasks, optionally grouped.

``$.group`` is ``{key, items}`` for each task: one task per group with ``group_by``, one task
with every item without it. Without an ``executor`` the stage's output is the groups
themselves.
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import Field, field_validator

from workplex.durations import parse_duration
from workplex.engine import StageRun
from workplex.errors import PipelineError
from workplex.patterns import Pattern, PatternConfig
from workplex.pipeline.expressions import compile_expr
from workplex.pipeline.model import OptionalDuration, Stage


class GatherConfig(PatternConfig):
    timeout: OptionalDuration = Field(
        default=None, description="Wait at most this long; what arrived by then is used."
    )
    min_results: int = Field(default=0, ge=0, description="Fewer successful results fail.")
    tolerated_failures: int | str = Field(
        default=0, description="Failed upstream tasks tolerated: a count or a percentage ('10%')."
    )
    max_parallel: int = Field(default=8, ge=1, description="Group tasks in flight at once.")

    @field_validator("timeout", mode="before")
    @classmethod
    def _timeout(cls, v: Any) -> Any:
        return None if v is None else parse_duration(v)

    @field_validator("tolerated_failures")
    @classmethod
    def _tolerated(cls, v: int | str) -> int | str:
        if isinstance(v, int):
            if v < 0:
                raise ValueError("cannot be negative")
            return v
        if not re.fullmatch(r"\s*\d+(\.\d+)?\s*%\s*", v):
            raise ValueError("must be a count or a percentage like '10%'")
        if float(v.strip().rstrip("%")) > 100:
            raise ValueError(f"{v.strip()!r} is more than 100%")
        return v.strip()

    def tolerated(self, total: int) -> float:
        v = self.tolerated_failures
        if isinstance(v, int):
            return v
        return total * float(v.rstrip("%")) / 100.0


class Gather(Pattern):
    name = "gather"
    description = "Wait for an earlier stage's tasks, optionally grouped (gather: {stage, group_by})."
    sections = frozenset({"gather"})
    Config = GatherConfig
    needs_executor = False

    def locals(self, stage: Stage, config: Any) -> set[str]:
        return {"group"}

    def gathers(self, stage: Stage) -> str | None:
        return stage.gather.stage if stage.gather else None

    def templates(self, stage: Stage, config: Any) -> dict[str, tuple[Any, str | list[str] | None]]:
        return {"input": (stage.input, stage.executor)} if stage.executor else {}

    def check(self, stage: Stage, config: Any) -> list[str]:
        if stage.gather is None:
            return ["mode gather needs a `gather: {stage: NAME, group_by: $.path}` section"]
        if stage.gather.group_by is not None:
            try:
                compile_expr(stage.gather.group_by)
            except PipelineError as exc:
                return [f"gather.group_by: {exc}"]
        return []

    async def run(self, run: StageRun) -> Any:
        spec = run.stage.gather
        assert spec is not None
        config: GatherConfig = run.config
        results, complete = await run.wait_for(spec.stage, config.timeout)
        arrived = [r for r in results if r is not None]
        ok = [r for r in arrived if run.succeeded(r)]
        failed = len(arrived) - len(ok)
        missing = len(results) - len(arrived)
        run.note(
            arrived=len(arrived), succeeded=len(ok), failed=failed, missing=missing,
            complete=complete,
        )
        if failed > config.tolerated(len(results)):
            run.fail(
                f"{failed} of {len(results)} tasks of stage {spec.stage!r} failed, more than "
                f"tolerated_failures={config.tolerated_failures}"
            )
        if len(ok) < config.min_results:
            why = f" ({missing} had not arrived when the timeout passed)" if missing else ""
            run.fail(
                f"only {len(ok)} successful results from stage {spec.stage!r}, fewer than "
                f"min_results={config.min_results}{why}"
            )
        outputs = [r.output for r in ok]
        if spec.group_by is None:
            groups = [{"key": None, "items": outputs}]
        else:
            key_expr = compile_expr(spec.group_by)
            by_key: dict[Any, list[Any]] = {}
            keys: list[Any] = []
            for out in outputs:
                key = key_expr.get(out) if isinstance(out, dict) else None
                hashable = key if isinstance(key, str | int | float | bool | None) else repr(key)
                if hashable not in by_key:
                    by_key[hashable] = []
                    keys.append(key)
                by_key[hashable].append(out)
            groups = [
                {"key": k, "items": by_key[k if isinstance(k, str | int | float | bool | None) else repr(k)]}
                for k in keys
            ]
        if run.stage.executor is None:
            return groups if spec.group_by is not None else groups[0]
        template = run.template("input")
        tasks = [
            run.task(run.executor, run.render(template, {"group": g}), i)
            for i, g in enumerate(groups)
        ]
        done = await run.execute(tasks, limit=config.max_parallel)
        outs = [r.output if r is not None else None for r in done]
        return outs if spec.group_by is not None else outs[0]
