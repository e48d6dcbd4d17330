"""``approval``: pauses a pipeline run until a person approves or rejects the stage.

The first time the stage runs, the request is recorded in the run store and the task
raises ``RunPaused``: the engine stores the run as ``paused`` and the process may exit.
``workplex approve RUN STAGE [--reject] [--comment ...]`` records the decision and
``workplex resume RUN`` (or ``approve --resume``) runs the stage again, which now finds it:

- approved: the output is ``{approved: true, comment, by, at}``;
- rejected: the task fails permanently with the comment;
- no decision yet, and ``timeout`` has passed since the first request: ``default`` decides.

The timeout is checked only when the stage runs, that is on a later ``workplex resume``:
nothing wakes a paused run when the deadline passes. The pause message names the deadline.

Security SAFE: it only reads and writes the run store the engine already uses.
"""

from __future__ import annotations

import time
from typing import Literal

from pydantic import BaseModel, Field

from workplex.errors import PermanentError, RunPaused
from workplex.executor import Context, Executor, SecurityLevel
from workplex.overlays.chain import Duration


class ApprovalInput(BaseModel):
    message: str = Field("Approval needed", description="What the approver is asked.")
    timeout: Duration | None = Field(
        None, description="How long to wait (from the first request) before `default` decides."
    )
    default: Literal["approve", "reject"] = Field(
        "reject", description="The decision taken when `timeout` passes without one."
    )
    approvers: list[str] = Field(
        default_factory=list,
        description="Who may decide (names given to `approve --by`); empty allows anyone.",
    )


class ApprovalOutput(BaseModel):
    approved: bool
    comment: str | None = None
    by: str | None = None
    at: float
    timed_out: bool = False


class Approval(Executor):
    name = "approval"
    description = "Pauses the run until a person approves or rejects the stage (optional timeout)."
    security = SecurityLevel.SAFE
    local_only = True

    Input = ApprovalInput
    Output = ApprovalOutput

    async def execute(self, input: ApprovalInput, ctx: Context) -> ApprovalOutput:
        store = ctx.engine.store if ctx.engine is not None else None
        if store is None or not ctx.run_id:
            raise PermanentError(
                f"stage {ctx.stage!r}: the approval executor needs a pipeline run with a run "
                "store (run it with `workplex run`, not --no-store or `exec`)"
            )
        decision = await store.get_approval(ctx.run_id, ctx.stage)
        if decision is not None:
            if input.approvers and decision.by not in input.approvers:
                raise PermanentError(
                    f"stage {ctx.stage!r}: decided by {decision.by!r}, who is not one of the "
                    f"approvers {input.approvers}"
                )
            if not decision.approved:
                why = decision.comment or "no comment"
                raise PermanentError(
                    f"stage {ctx.stage!r} was rejected by {decision.by or 'someone'}: {why}"
                )
            return ApprovalOutput(
                approved=True, comment=decision.comment, by=decision.by, at=decision.at
            )
        requested = await store.request_approval(
            ctx.run_id, ctx.stage, input.message, approvers=input.approvers
        )
        now = time.time()
        if input.timeout is not None and now - requested >= input.timeout:
            approved = input.default == "approve"
            await store.event(
                ctx.run_id,
                "approval.timeout",
                {"stage": ctx.stage, "default": input.default, "waited": now - requested},
            )
            if not approved:
                raise PermanentError(
                    f"stage {ctx.stage!r}: no decision within {input.timeout:g}s; "
                    "rejected by default"
                )
            return ApprovalOutput(
                approved=True, comment="approved by default on timeout", at=now, timed_out=True
            )
        await store.flush()
        why = f"stage {ctx.stage!r} waits for approval: {input.message}"
        if input.timeout is not None:
            deadline = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(requested + input.timeout))
            why += (
                f"; timeout at {deadline}: a resume after that, still undecided, "
                f"decides {input.default!r}"
            )
        raise RunPaused(why)
