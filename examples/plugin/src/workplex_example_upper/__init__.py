"""An example workplex executor plugin: ``upper`` upper-cases text."""

from __future__ import annotations

from pydantic import BaseModel

from workplex import Capabilities, Context, Executor, SecurityLevel


class Upper(Executor):
    name = "upper"
    description = "Upper-cases text."
    version = "0.1.0"
    security = SecurityLevel.SAFE
    capabilities = Capabilities()

    class Input(BaseModel):
        text: str

    class Output(BaseModel):
        text: str

    async def execute(self, input: Input, ctx: Context) -> Output:
        return self.Output(text=input.text.upper())
