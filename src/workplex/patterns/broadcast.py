"""``broadcast``: the same input to several executors; output keyed by executor name."""

from __future__ import annotations

import asyncio
from typing import Any

from pydantic import Field

from workplex.engine import StageRun
from workplex.patterns import Pattern, PatternConfig
from workplex.pipeline.model import Stage


class BroadcastConfig(PatternConfig):
    executors: list[str] = Field(min_length=1, description="Executors that each get the input.")
    wait_for_all: bool = Field(
        default=True, description="False: finish with the first success and cancel the rest."
    )


class Broadcast(Pattern):
    name = "broadcast"
    description = "The same input to several executors (config: {executors, wait_for_all})."
    Config = BroadcastConfig
    needs_executor = False

    sections = frozenset()

    def executor_fields(self, stage: Stage, config: Any) -> list[tuple[str, str]]:
        return [(name, f"config.executors[{i}]") for i, name in enumerate(config.executors)]

    def templates(
        self, stage: Stage, config: Any
    ) -> dict[str, tuple[Any, str | list[str] | None]]:
        return {"input": (stage.input, list(config.executors))}

    def check(self, stage: Stage, config: Any) -> list[str]:
        problems = []
        if stage.executor is not None:
            problems.append(
                "executor: a broadcast stage names its executors in config.executors; "
                "this one would be ignored"
            )
        if len(set(config.executors)) != len(config.executors):
            problems.append("config.executors: an executor is listed twice")
        return problems

    async def run(self, run: StageRun) -> Any:
        config: BroadcastConfig = run.config
        payload = run.render(run.template("input"))
        tasks = [run.task(name, payload, i) for i, name in enumerate(config.executors)]
        if config.wait_for_all:
            results = await run.execute(tasks, limit=len(tasks))
            return {
                name: r.output if r is not None else None
                for name, r in zip(config.executors, results, strict=True)
            }
        pending = {
            asyncio.ensure_future(run.execute_one(task, i, tolerate=True)): name
            for i, (task, name) in enumerate(zip(tasks, config.executors, strict=True))
        }
        try:
            while pending:
                done, _ = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for fut in done:
                    name = pending.pop(fut)
                    result = fut.result()
                    if run.succeeded(result):
                        return {name: result.output}
            run.fail("no executor succeeded: " + ", ".join(config.executors))
        finally:
            for fut in pending:
                fut.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
