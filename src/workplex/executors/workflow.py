"""``workflow``: runs another pipeline file as a sub-run, linked to the parent run.

The sub-run's id is derived from the parent task's id, so when the parent is resumed the
same sub-run is found again: a finished one gives its stored result, an unfinished one is
resumed, and only a missing one starts afresh. A relative ``pipeline`` path is taken
relative to the parent pipeline's file (else the working directory).

A sub-run may not nest deeper than ``max_depth`` (config, default 16) below the top run,
and may not run a pipeline file that is already running above it in the chain (a cycle):
both fail the stage with a clear error instead of nesting runs without end.

Security SAFE: the executor itself touches nothing; every stage of the sub-pipeline is
checked against ``max_security`` like any other stage when the sub-pipeline loads, so a
sub-pipeline cannot use more than the deployment allows.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from workplex.errors import PermanentError, PipelineError, ValidationError
from workplex.executor import Context, Executor, ExecutorConfig, SecurityLevel

DEFAULT_MAX_DEPTH = 16


class WorkflowConfig(ExecutorConfig):
    max_depth: int = Field(
        DEFAULT_MAX_DEPTH, ge=1, description="How deep sub-runs may nest below the top run."
    )


class WorkflowInput(BaseModel):
    pipeline: str = Field(description="Path of the pipeline file to run as a sub-run.")
    inputs: dict[str, Any] = Field(default_factory=dict, description="The sub-run's inputs.")


class WorkflowOutput(BaseModel):
    run_id: str
    status: str
    output: Any = None
    stages: dict[str, Any] = Field(default_factory=dict)


class Workflow(Executor):
    name = "workflow"
    description = "Runs another pipeline file as a sub-run; its output is the sub-run's output."
    security = SecurityLevel.SAFE
    local_only = True

    Input = WorkflowInput
    Output = WorkflowOutput
    Config = WorkflowConfig

    async def execute(self, input: WorkflowInput, ctx: Context) -> WorkflowOutput:
        engine = ctx.engine
        if engine is None:
            raise PermanentError("the workflow executor runs only inside a pipeline run")
        child_id = f"{ctx.task_id}:sub" if ctx.task_id else None
        store = engine.store
        try:
            if store is not None and child_id is not None:
                stored = await store.get_run(child_id)
                if stored is not None and stored.status == "succeeded":
                    return _output(
                        child_id,
                        stored.status,
                        stored.output,
                        {
                            n: {"status": s.status, "output": s.output}
                            for n, s in stored.stages.items()
                        },
                    )
                if stored is not None and stored.status != "cancelled":
                    result = await engine.resume(child_id)
                    return _checked(result.to_dict(), result.output)
            path = self._path(input.pipeline, ctx)
            self._guard(path, ctx)
            pipeline = engine.load(path)
            result = await engine.run(
                pipeline, input.inputs, run_id=child_id, parent_run_id=ctx.run_id or None
            )
        except (PipelineError, ValidationError) as exc:
            raise PermanentError(f"sub-pipeline {input.pipeline}: {exc}") from exc
        return _checked(result.to_dict(), result.output)

    def _guard(self, path: Path, ctx: Context) -> None:
        """Refuse a sub-run that would be too deep or would run a file already running above."""
        engine = ctx.engine
        assert engine is not None
        chain: list[tuple[str, str]] = []  # (run id, resolved pipeline path), innermost first
        run_id: str | None = ctx.run_id
        seen: set[str] = set()
        while run_id and run_id not in seen:
            seen.add(run_id)
            state = engine.runs.get(run_id)
            if state is None:
                break
            parent_path = getattr(state.plan.pipeline, "path", None)
            chain.append((run_id, str(Path(parent_path).resolve()) if parent_path else ""))
            run_id = state.result.parent_run_id
        max_depth = getattr(self.config, "max_depth", DEFAULT_MAX_DEPTH)
        if len(chain) > max_depth:
            raise PermanentError(
                f"stage {ctx.stage!r}: sub-pipeline {path}: sub-runs nest deeper than "
                f"max_depth={max_depth} (config executors.workflow.max_depth)"
            )
        target = str(path.resolve())
        files = [p for _, p in reversed(chain)]
        if target in files:
            cycle = " -> ".join([*files[files.index(target):], target])
            raise PermanentError(
                f"stage {ctx.stage!r}: sub-pipeline {path} is already running above this "
                f"stage (a cycle: {cycle}); a pipeline may not run itself as a sub-run"
            )

    @staticmethod
    def _path(path: str, ctx: Context) -> Path:
        p = Path(path)
        if p.is_absolute() or ctx.engine is None:
            return p
        state = ctx.engine.runs.get(ctx.run_id)
        parent = getattr(getattr(state, "plan", None), "pipeline", None)
        parent_path = getattr(parent, "path", None)
        if parent_path:
            candidate = Path(parent_path).parent / p
            if candidate.exists():
                return candidate
        return p


def _checked(data: dict[str, Any], output: Any) -> WorkflowOutput:
    status = data["status"]
    if status == "paused":
        from workplex.errors import RunPaused

        raise RunPaused(f"sub-run {data['run_id']} is paused: {data.get('error')}")
    if status != "succeeded":
        raise PermanentError(f"sub-run {data['run_id']} {status}: {data.get('error')}")
    stages = {n: {"status": s["status"], "output": s["output"]} for n, s in data["stages"].items()}
    return _output(data["run_id"], status, output, stages)


def _output(run_id: str, status: str, output: Any, stages: dict[str, Any]) -> WorkflowOutput:
    return WorkflowOutput(run_id=run_id, status=status, output=output, stages=stages)
