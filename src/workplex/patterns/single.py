"""``single``: one task; the stage's output is the executor's output."""

from __future__ import annotations

from typing import Any

from workplex.engine import StageRun
from workplex.patterns import Pattern


class Single(Pattern):
    name = "single"
    description = "One task."
    sections = frozenset()

    async def run(self, run: StageRun) -> Any:
        payload = run.render(run.template("input"))
        results = await run.execute([run.task(run.executor, payload, 0)])
        return results[0].output if results[0] is not None else None
