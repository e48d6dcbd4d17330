"""``echo``: returns its input. The cheapest executor; the engine's own cost shows through it."""

from __future__ import annotations

from typing import Any

from pydantic import RootModel

from workplex.executor import Context, Executor, SecurityLevel


class EchoInput(RootModel[dict[str, Any]]):
    """Any JSON object."""


class Echo(Executor):
    name = "echo"
    description = "Returns its input unchanged."
    security = SecurityLevel.SAFE

    Input = EchoInput
    Output = EchoInput

    async def execute(self, input: EchoInput, ctx: Context) -> dict[str, Any]:
        # Returning the plain dict skips a model round trip on the hot path.
        return input.root
