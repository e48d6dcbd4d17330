"""The engine: runs pipelines (stages as a DAG, tasks through a backend) and records runs.

::

    >>> import asyncio
    >>> from workplex import Engine, Pipeline, Registry, Stage
    >>> pipeline = Pipeline(name="demo", stages=[
    ...     Stage(name="a", executor="echo", input={"n": 1}),
    ...     Stage(name="b", executor="echo", input={"twice": "$.a.n"}),
    ... ])
    >>> async def main():
    ...     async with Registry() as registry, Engine(registry) as engine:
    ...         return await engine.run(pipeline)
    >>> result = asyncio.run(main())
    >>> result.status, result.stages["b"].output
    ('succeeded', {'twice': 1})
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import socket
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from workplex.errors import PipelineError, RunPaused, ValidationError, WorkplexError
from workplex.executor import Result, Task
from workplex.pipeline.expressions import Missing, Template, truthy
from workplex.pipeline.loader import StructureError, read_pipeline
from workplex.pipeline.model import Pipeline
from workplex.pipeline.plan import Plan, StagePlan, build_plan

if TYPE_CHECKING:
    from workplex.backends import Backend
    from workplex.patterns import PatternRegistry
    from workplex.registry import Registry

TERMINAL = frozenset({"succeeded", "failed", "skipped", "cancelled"})


class StageFailed(WorkplexError):
    """A stage failed; the message says why (raised by patterns through ``StageRun.fail``)."""


def new_run_id() -> str:
    return "r-" + uuid.uuid4().hex[:16]


@dataclass
class StageResult:
    """One stage's outcome in a run."""

    name: str
    status: str = "pending"
    output: Any = None
    error: str | None = None
    started: float | None = None
    ended: float | None = None
    total: int = 0
    succeeded: int = 0
    failed: int = 0
    tolerated: bool = False
    info: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "status": self.status,
            "output": self.output,
            "error": self.error,
            "started": self.started,
            "ended": self.ended,
            "duration": (self.ended - self.started) if self.started and self.ended else None,
            "tasks": {"total": self.total, "succeeded": self.succeeded, "failed": self.failed},
        }
        if self.info:
            data["info"] = self.info
        return data


@dataclass
class RunResult:
    """A run's outcome: status, every stage's status/output/error, timings."""

    run_id: str
    pipeline: str
    status: str = "running"
    error: str | None = None
    stages: dict[str, StageResult] = field(default_factory=dict)
    started: float = 0.0
    ended: float | None = None
    inputs: dict[str, Any] = field(default_factory=dict)
    parent_run_id: str | None = None
    waiting: list[dict[str, Any]] = field(default_factory=list)
    """When paused: the approvals it waits for (``run_id``, ``stage``, ``message``), sub-runs
    included, so a caller can say exactly what to approve."""

    @property
    def output(self) -> Any:
        """The output of the last stage that produced one."""
        for stage in reversed(list(self.stages.values())):
            if stage.status == "succeeded":
                return stage.output
        return None

    def to_dict(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "pipeline": self.pipeline,
            "status": self.status,
            "error": self.error,
            "inputs": self.inputs,
            "parent_run_id": self.parent_run_id,
            "stages": {n: s.to_dict() for n, s in self.stages.items()},
            "started": self.started,
            "ended": self.ended,
            "duration": (self.ended - self.started) if self.ended else None,
            **({"waiting": self.waiting} if self.waiting else {}),
        }


class _RunState:
    def __init__(self, engine: Engine, plan: Plan, result: RunResult, scope: dict[str, Any]) -> None:
        self.engine = engine
        self.plan = plan
        self.result = result
        self.scope = scope
        self.done = {n: asyncio.Event() for n in plan.stages}
        self.started = {n: asyncio.Event() for n in plan.stages}
        self.runs: dict[str, StageRun] = {}
        self.tasks: dict[str, asyncio.Future[None]] = {}
        self.failure: str | None = None
        self.cancel_reason: str | None = None
        self.paused = False
        self.tracer: Any = None

    def abort(self, reason: str, *, cancelled: bool = False) -> None:
        """Stop every running stage (fail fast)."""
        if cancelled:
            self.cancel_reason = self.cancel_reason or reason
        elif self.failure is None:
            self.failure = reason
        for task in self.tasks.values():
            if not task.done():
                task.cancel()


class StageRun:
    """What a pattern gets to run one stage: templates, task creation and execution."""

    def __init__(
        self,
        state: _RunState,
        plan: StagePlan,
        prior: Mapping[int, Result] | None = None,
    ) -> None:
        self._state = state
        self.plan = plan
        self.stage = plan.stage
        self.config = plan.config
        self.executor = plan.stage.executor or ""
        self.scope = state.scope
        self.run_id = state.result.run_id
        self.task_prefix = f"{self.run_id}:{plan.stage.name}:"
        self.result = state.result.stages[plan.stage.name]
        self.results: list[Result | None] = []
        self._prior = dict(prior or {})
        self._failure: str | None = None
        self._pause: str | None = None
        self.fail_fast = not (plan.stage.continue_on_error or plan.downstream_gathers)
        engine = state.engine
        registry = engine.registry
        local_only = bool(plan.executors) and all(
            name in registry and registry.executor_class(name).local_only for name in plan.executors
        )
        self.backend: Backend = engine.local if local_only or engine.backend is None else engine.backend
        self._fail_on_nonzero = plan.stage.fail_on_nonzero
        # A stage whose input reads $.secrets gets its results scrubbed before they are kept,
        # so a secret echoed back by the work never reaches the run result or the store.
        uses_secrets = any("secrets" in t.roots() for t in plan.templates.values())
        self._secrets = registry.secrets if uses_secrets and len(registry.secrets) else None

    # ---- helpers for patterns --------------------------------------------------------
    def template(self, name: str) -> Template:
        return self.plan.templates[name]

    def render(self, template: Template, extra: Mapping[str, Any] | None = None) -> Any:
        """The template's value in this run's scope (plus ``extra`` names)."""
        scope = self.scope if not extra else {**self.scope, **extra}
        try:
            return template.render(scope)
        except Missing as exc:
            self.fail(f"expression found nothing: {exc}")

    def task(self, executor: str, payload: Any, index: int) -> Task:
        return Task(executor, payload, f"{self.task_prefix}{index}")

    def scatter_items(self) -> list[Any]:
        spec = self.stage.scatter
        assert spec is not None
        if self.plan.scatter_input is None:
            items = spec.input
        else:
            try:
                items = self.plan.scatter_input.evaluate(self.scope)
            except Missing as exc:
                self.fail(f"scatter.input: {exc}")
        if isinstance(items, dict):
            items = list(items.items())
        if not isinstance(items, list):
            self.fail(f"scatter.input {spec.input!r} is a {type(items).__name__}, not a list")
        return items

    def succeeded(self, result: Result) -> bool:
        """Did this task succeed? A non-zero exit code fails unless ``fail_on_nonzero: false``."""
        if not result.success:
            return False
        return not (self._fail_on_nonzero and result.exit_code not in (None, 0))

    def fail(self, message: str) -> NoReturn:
        raise StageFailed(message)

    def note(self, **info: Any) -> None:
        """Extra facts shown with the stage (e.g. how many results a gather used)."""
        self.result.info.update(info)

    # ---- execution -----------------------------------------------------------------------
    async def execute(
        self,
        tasks: Iterable[Task],
        *,
        total: int | None = None,
        limit: int | None = None,
        batch_size: int = 1,
    ) -> list[Result | None]:
        """Run tasks through the backend; return their Results in the order given.

        Fails the stage at the first failed task unless the stage tolerates failures
        (``continue_on_error``, or a gather downstream decides).
        """
        if total is None:
            tasks = list(tasks)
            total = len(tasks)
        offset = len(self.results)
        results = self.results
        results.extend([None] * total)
        stage = self.result
        stage.total += total
        store = self._state.engine.store
        run_id = self.run_id
        name = self.stage.name
        succeeded = self.succeeded
        prior = self._prior
        positions: list[int] | None = None
        inflight: dict[int, Task] = {}

        source: Iterator[Task] = iter(tasks)
        if prior:
            positions = found = []

            def skip_finished() -> Iterator[Task]:
                for pos, task in enumerate(tasks):
                    old = prior.get(offset + pos)
                    if old is not None:
                        results[offset + pos] = old
                        stage.succeeded += 1
                        continue
                    found.append(pos)
                    yield task

            source = skip_finished()
        if store is not None:
            plain = source

            def remember() -> Iterator[Task]:
                for n, task in enumerate(plain):
                    inflight[n] = task
                    yield task

            source = remember()

        runner: asyncio.Future[None] | None = None

        secrets = self._secrets

        def on_result(pos: int, result: Result) -> None:
            index = offset + (positions[pos] if positions is not None else pos)
            if secrets is not None:
                secrets.redact_result(result)
            results[index] = result
            err = result.error
            ok = succeeded(result)
            if ok:
                stage.succeeded += 1
            elif err is not None and err.type == "RunPaused":
                # Waiting (an approval), not failed: it runs again when the run resumes.
                self._pause = err.message
                if runner is not None:
                    runner.cancel()
            else:
                stage.failed += 1
                if self._failure is None:
                    why = err.message if err is not None else f"exit code {result.exit_code}"
                    self._failure = f"task {index} failed: {why}"
                    if self.fail_fast and runner is not None:
                        runner.cancel()
            if store is not None:
                task = inflight.pop(pos, None)
                store.task_done(
                    run_id, name, index, result.task_id, task.type if task else "",
                    task.payload if task else None, result, succeeded=ok,
                )

        runner = asyncio.ensure_future(
            self.backend.execute(
                source,
                run_id=run_id,
                stage=name,
                limit=limit or total or 1,
                on_result=on_result,
                settings=self.plan.settings or None,
                batch_size=batch_size,
            )
        )
        try:
            await runner
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise
            if self._pause is None and self._failure is None:
                raise
        if self._pause is not None:
            raise RunPaused(self._pause)
        if self._failure is not None and self.fail_fast:
            self.fail(self._failure)
        return results[offset : offset + total]

    async def execute_one(self, task: Task, index: int, *, tolerate: bool = False) -> Result:
        """Run one task (for patterns that schedule tasks themselves)."""
        old = self._prior.get(index)
        if old is not None:
            return old
        holder: list[Result] = []
        await self.backend.execute(
            [task],
            run_id=self.run_id,
            stage=self.stage.name,
            limit=1,
            on_result=lambda _pos, r: holder.append(r),
            settings=self.plan.settings or None,
        )
        result = holder[0]
        if self._secrets is not None:
            self._secrets.redact_result(result)
        self.result.total += 1
        store = self._state.engine.store
        if store is not None:
            store.task_done(
                self.run_id, self.stage.name, index, task.id, task.type, task.payload, result,
                succeeded=self.succeeded(result),
            )
        if result.error is not None and result.error.type == "RunPaused":
            raise RunPaused(result.error.message)
        if self.succeeded(result):
            self.result.succeeded += 1
        else:
            self.result.failed += 1
        if not tolerate and not self.succeeded(result):
            why = result.error.message if result.error else f"exit code {result.exit_code}"
            if self._failure is None:
                self._failure = f"task {index} failed: {why}"
            if self.fail_fast:
                self.fail(f"task {index} failed: {why}")
        return result

    async def wait_for(self, stage: str, timeout: float | None) -> tuple[list[Result | None], bool]:
        """Wait until ``stage`` has finished (a barrier); return its results and whether
        it completed. With a timeout, what arrived by then is returned and the rest of
        that stage is stopped."""
        state = self._state
        done = state.done[stage]
        complete = True
        if timeout is None:
            await done.wait()
        else:
            try:
                await asyncio.wait_for(done.wait(), timeout)
            except TimeoutError:
                complete = False
        upstream = state.runs[stage]
        results = list(upstream.results)
        if not complete:
            upstream.result.tolerated = True
            upstream.result.info["stopped_by"] = f"gather {self.stage.name!r} timeout after {timeout}s"
            task = state.tasks.get(stage)
            if task is not None and not task.done():
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        return results, complete


class Engine:
    """Runs pipelines on a backend (local by default), recording them in a store if given."""

    def __init__(
        self,
        registry: Registry,
        *,
        backend: Backend | None = None,
        store: Any = None,
        patterns: PatternRegistry | None = None,
        lease_ttl: float = 30.0,
    ) -> None:
        self.registry = registry
        from workplex.backends.local import LocalBackend

        if backend is None:
            backend = LocalBackend(registry)
        self.backend: Backend | None = backend
        self.local = backend if isinstance(backend, LocalBackend) else LocalBackend(registry)
        """Runs ``local_only`` executors (approval, workflow) in this process on any backend."""
        self.local.engine = self
        self.store = store
        if patterns is None:
            from workplex.patterns import PatternRegistry

            patterns = PatternRegistry()
        self.patterns = patterns
        self.lease_ttl = lease_ttl
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self._plans: dict[int, tuple[Pipeline, Plan]] = {}
        self._tracer: Any = _tracing_provider(registry)
        self._tracing_checked: dict[int, Any] = {}
        self._opened = False
        self.runs: dict[str, _RunState] = {}
        """Runs in progress (by run id): their stage runs carry live counters for progress."""

    async def __aenter__(self) -> Engine:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def open(self) -> None:
        if not self._opened and self.backend is not None:
            await self.backend.open()
            self._opened = True

    async def close(self) -> None:
        if self._opened and self.backend is not None:
            self._opened = False
            await self.backend.close()

    # ---- planning ----------------------------------------------------------------------
    def plan(self, pipeline: Pipeline) -> Plan:
        """Check and compile a pipeline (cached per pipeline object)."""
        cached = self._plans.get(id(pipeline))
        if cached is not None and cached[0] is pipeline:
            return cached[1]
        check = None
        backend = self.backend
        if backend is not None and hasattr(backend, "input_model"):
            check = backend.input_model
        plan = build_plan(pipeline, self.registry, self.patterns, check_executor=check)
        self._plans[id(pipeline)] = (pipeline, plan)
        return plan

    def load(self, path: str | Path) -> Pipeline:
        """Read a pipeline file and check it against this engine's executors and patterns.

        ``PipelineError.problems`` lists every problem: when the structure is wrong, the
        other checks still run on the parts that could be read.
        """
        try:
            pipeline = read_pipeline(path)
        except StructureError as exc:
            if exc.partial is None:
                raise
            try:
                self.plan(exc.partial)
            except PipelineError as more:
                problems = [*exc.problems, *more.problems]
                raise PipelineError(
                    f"{len(problems)} problems:\n" + "\n".join(problems), problems
                ) from exc
            raise
        self.plan(pipeline)
        _check_self_reference(pipeline)
        self._tracer_for(self.plan(pipeline))  # a missing OTLP exporter is bad input, now
        return pipeline

    # ---- running -----------------------------------------------------------------------
    async def run(
        self,
        pipeline: Pipeline,
        inputs: Mapping[str, Any] | None = None,
        *,
        run_id: str | None = None,
        parent_run_id: str | None = None,
    ) -> RunResult:
        """Run ``pipeline`` with ``inputs`` and return its RunResult.

        Bad inputs raise ``ValidationError``; a pipeline that does not check raises
        ``PipelineError``; everything that happens while running is in the result.
        """
        plan = self.plan(pipeline)
        checked = plan.check_inputs(inputs)
        self._tracer_for(plan)  # bad tracing setup is bad input: raised before the run is stored
        await self._check_backend(plan)
        run_id = run_id or new_run_id()
        result = RunResult(
            run_id, pipeline.name, started=time.time(), inputs=checked, parent_run_id=parent_run_id
        )
        for name in plan.stages:
            result.stages[name] = StageResult(name)
        if self.store is not None:
            # Absolute, so `workplex resume` finds the file (and its sub-pipelines) from any
            # working directory.
            path = _absolute(pipeline.path)
            await self.store.create_run(
                run_id, pipeline.name, pipeline.to_document(), path, checked,
                parent_run_id=parent_run_id,
            )
            url = getattr(self.backend, "url", None)
            if url:
                # Remembered so `workplex resume` can default to the run's backend.
                await self.store.event(run_id, "backend", {"url": re.sub(r"//[^@/]*@", "//", url)})
        return await self._drive(plan, result, {})

    async def resume(self, run_id: str) -> RunResult:
        """Continue a stored run: finished stages and tasks keep their results."""
        if self.store is None:
            raise ValidationError("resume needs a run store")
        stored = await self.store.get_run(run_id)
        if stored is None:
            raise ValidationError(f"no run {run_id!r} in the store")
        if stored.status in ("succeeded", "cancelled"):
            raise ValidationError(f"run {run_id} has already {stored.status}; nothing to resume")
        if stored.cancel_requested:
            # A cancel whose driver has not seen it yet (or that died first) is final too.
            raise ValidationError(
                f"run {run_id} was cancelled (`workplex cancel`); a cancelled run is not resumed"
            )
        pipeline = Pipeline.from_document(stored.document, stored.path)
        plan = self.plan(pipeline)
        await self._check_backend(plan)
        result = RunResult(
            run_id, pipeline.name, started=time.time(), inputs=dict(stored.inputs or {}),
            parent_run_id=stored.parent_run_id,
        )
        priors: dict[str, Mapping[int, Result]] = {}
        for name in plan.stages:
            st = StageResult(name)
            old = stored.stages.get(name)
            if old is not None and old.status in ("succeeded", "skipped"):
                st.status = old.status
                st.output = old.output
                st.total = st.succeeded = old.total or 0
            result.stages[name] = st
        for name, st in result.stages.items():
            if st.status not in ("succeeded", "skipped"):
                finished = await self.store.finished_tasks(run_id, name)
                priors[name] = {i: r for i, r in finished.items() if r.success}
        return await self._drive(plan, result, priors, resumed=True)

    async def run_child(
        self,
        pipeline: Pipeline | str | Path,
        inputs: Mapping[str, Any] | None = None,
        *,
        parent_run_id: str | None = None,
    ) -> RunResult:
        """Run a sub-pipeline (the ``workflow`` executor) linked to its parent run."""
        if not isinstance(pipeline, Pipeline):
            pipeline = self.load(pipeline)
        return await self.run(pipeline, inputs, parent_run_id=parent_run_id)

    async def _check_backend(self, plan: Plan) -> None:
        if self.backend is None:
            return
        names = {e for sp in plan.stages.values() for e in sp.executors}
        await self.backend.check_executors(sorted(names))

    async def _drive(
        self,
        plan: Plan,
        result: RunResult,
        priors: Mapping[str, Mapping[int, Result]],
        *,
        resumed: bool = False,
    ) -> RunResult:
        scope: dict[str, Any] = {
            "trigger": result.inputs,
            "env": dict(os.environ),
            "secrets": self.registry.secrets,
            "run": {"id": result.run_id, "pipeline": result.pipeline},
        }
        for name, st in result.stages.items():
            if st.status in ("succeeded", "skipped"):
                scope[name] = st.output
        state = _RunState(self, plan, result, scope)
        # Before the lease: a missing OTLP exporter must not leave a run marked running.
        tracer = state.tracer = self._tracer_for(plan)
        for name, sp in plan.stages.items():
            state.runs[name] = StageRun(state, sp, priors.get(name))
        store = self.store
        renew: asyncio.Task[None] | None = None
        if store is not None:
            await store.acquire_lease(result.run_id, self.owner, self.lease_ttl)
            if resumed:
                # Only now: a resume refused because another process holds the lease left no trace.
                await store.event(result.run_id, "resumed", {"owner": self.owner})
            await store.run_update(result.run_id, "running")
            renew = asyncio.create_task(self._renew(state))
        self.runs[result.run_id] = state
        span: contextlib.AbstractContextManager[Any] = contextlib.nullcontext()
        if tracer is not None:
            from workplex.overlays.tracing import run_span

            span = run_span(result.run_id, result.pipeline, provider=tracer or None)
        try:
            span.__enter__()
            for name in plan.order:
                state.tasks[name] = asyncio.ensure_future(self._stage(state, name))
            try:
                # return_exceptions: a stage cancelled by fail-fast or a gather timeout is an
                # outcome recorded on the stage, not an error of the run itself.
                await asyncio.gather(*state.tasks.values(), return_exceptions=True)
            except asyncio.CancelledError:
                state.abort("cancelled", cancelled=True)
                await asyncio.gather(*state.tasks.values(), return_exceptions=True)
                await asyncio.shield(self._finish(state))
                raise
        finally:
            span.__exit__(None, None, None)
            if renew is not None:
                renew.cancel()
            self.runs.pop(result.run_id, None)
        await self._finish(state)
        return result

    async def _finish(self, state: _RunState) -> None:
        result = state.result
        if result.ended is not None:
            return
        result.ended = time.time()
        if state.cancel_reason is not None:
            result.status, result.error = "cancelled", state.cancel_reason
        elif state.failure is not None:
            result.status, result.error = "failed", state.failure
        elif state.paused:
            result.status = "paused"
            paused = [(n, s.error) for n, s in result.stages.items() if s.status == "paused"]
            result.error = "; ".join(
                f"paused at stage {n}" + (f" ({why})" if why else "") for n, why in paused
            )
        else:
            result.status = "succeeded"
        store = self.store
        if store is not None and result.status == "paused":
            # Best effort: the run must still be finalised and its lease released.
            with contextlib.suppress(Exception):
                await store.flush()
                result.waiting = [
                    {"run_id": p.run_id, "stage": p.stage, "message": p.message}
                    for p in await store.pending_approvals(result.run_id)
                ]
        if store is not None:
            try:
                await store.run_update(result.run_id, result.status, output=result.output, error=result.error)
            finally:
                await store.release_lease(result.run_id, self.owner)

    async def _record_stage(self, run_id: str, st: StageResult) -> None:
        """A stage's final state, and an event for `workplex logs`."""
        store = self.store
        event: dict[str, Any] = {
            "stage": st.name, "status": st.status,
            "tasks": {"total": st.total, "succeeded": st.succeeded, "failed": st.failed},
        }
        if st.error:
            event["error"] = st.error
        # The event first: it is only buffered, so it keeps its place before later stages'.
        await store.event(run_id, "stage.finished", event)
        await store.stage_update(
            run_id, st.name, st.status, output=st.output, error=st.error,
            total=st.total, started=st.started, ended=st.ended,
        )

    def _tracer_for(self, plan: Plan) -> Any:
        """The tracer provider for a run of ``plan`` (None: tracing off, "": the global one).

        Tracing set only on a stage still gives the run and stage spans; an OTLP exporter is
        created here, before the first task builds its call, so every span goes to it.
        """
        cached = self._tracing_checked.get(id(plan), False)
        if cached is not False:
            return cached
        from workplex.overlays.chain import OverlayChain

        chain = self.registry.overlays
        provider = self._tracer
        if isinstance(chain, OverlayChain) and "tracing" in chain:
            from workplex.overlays.tracing import TracingConfig, otlp_provider

            stage_settings = [
                ((sp.settings or {}).get("tracing"), f"stage {sp.name!r}")
                for sp in plan.stages.values()
            ]
            config_settings = [
                ((s or {}).get("tracing"), f"overlays.{name}")
                for name, s in self.registry.config.overlays.items()
            ]
            defaults = chain.defaults
            configs: list[TracingConfig] = []
            for value, where in [(defaults.get("tracing"), "overlays"), *config_settings, *stage_settings]:
                if value in (None, False):
                    continue
                parsed = chain.parse({"tracing": value}, where).get("tracing")
                if isinstance(parsed, TracingConfig):
                    configs.append(parsed)
            if configs:
                otlp = next((c for c in configs if c.exporter == "otlp"), None)
                if otlp is not None and chain.tracer_provider is None:
                    chain.tracer_provider = otlp_provider(otlp.endpoint)
                provider = chain.tracer_provider or ""
        self._tracing_checked[id(plan)] = provider
        return provider

    async def _renew(self, state: _RunState) -> None:
        store = self.store
        interval = max(0.05, self.lease_ttl / 3)
        while True:
            await asyncio.sleep(interval)
            ok = await store.renew_lease(state.result.run_id, self.owner, self.lease_ttl)
            if not ok:
                state.abort("cancel requested (or the run's lease was lost)", cancelled=True)
                return

    async def _stage(self, state: _RunState, name: str) -> None:
        sp = state.plan.stages[name]
        st = state.result.stages[name]
        run = state.runs[name]
        store = self.store
        if st.status in ("succeeded", "skipped"):  # finished before a resume
            state.started[name].set()
            state.done[name].set()
            return
        try:
            for dep in sp.needs:
                await (state.started if dep == sp.gathers else state.done)[dep].wait()
            blocked = [
                d for d in sp.needs
                if d != sp.gathers and state.result.stages[d].status not in ("succeeded", "skipped")
                and not state.result.stages[d].tolerated
            ]
            if blocked:
                st.status = "pending" if state.failure is None else "cancelled"
                return
            if sp.condition is not None and not truthy(sp.condition.get(state.scope)):
                st.status = "skipped"
                st.info["reason"] = f"condition {sp.stage.if_} was false"
                state.scope[name] = None
                return  # recorded in the finally below
            st.status = "running"
            st.started = time.time()
            state.started[name].set()
            if store is not None:
                await store.stage_update(state.result.run_id, name, "running", started=st.started)
                await store.event(state.result.run_id, "stage.started", {"stage": name})
            try:
                if state.tracer is None:
                    output = await sp.pattern.run(run)
                else:
                    from workplex.overlays.tracing import stage_span

                    with stage_span(state.result.run_id, name, provider=state.tracer or None):
                        output = await sp.pattern.run(run)
            except StageFailed as exc:
                st.status, st.error = "failed", str(exc)
            except RunPaused as exc:
                st.status, st.error = "paused", str(exc) or "waiting"
                state.paused = True
            except (PipelineError, ValidationError) as exc:
                st.status, st.error = "failed", str(exc)
            except asyncio.CancelledError:
                st.status = "cancelled"
                st.error = st.info.get("stopped_by") or state.failure or state.cancel_reason or "cancelled"
                raise
            except Exception as exc:
                st.status, st.error = "failed", f"{type(exc).__name__}: {exc}"
            else:
                st.output = output
                state.scope[name] = output
                # A failure a pattern tolerated (execute_one(tolerate=True)) does not count.
                st.status = "failed" if run._failure is not None and not st.tolerated else "succeeded"
                if st.status == "failed":
                    st.error = run._failure
            if st.status == "failed":
                st.tolerated = st.tolerated or sp.stage.continue_on_error or bool(sp.downstream_gathers)
                if not st.tolerated:
                    state.abort(f"stage {name!r} failed: {st.error}")
                else:
                    state.scope.setdefault(name, st.output)
        except asyncio.CancelledError:
            # Cancelled (fail-fast, cancel) while recording its start, before the pattern ran:
            # it must not stay "running" in a finished run.
            if st.status == "running":
                st.status = "cancelled"
                st.error = st.info.get("stopped_by") or state.failure or state.cancel_reason or "cancelled"
            raise
        finally:
            st.ended = time.time() if st.started else None
            state.started[name].set()
            state.done[name].set()
            if store is not None and st.status != "pending":
                await asyncio.shield(self._record_stage(state.result.run_id, st))


def _absolute(path: str | None) -> str | None:
    """``path`` made absolute (no I/O beyond the working directory)."""
    return os.path.abspath(path) if path else None


def _check_self_reference(pipeline: Pipeline) -> None:
    """A ``workflow`` stage whose constant ``pipeline`` is the file itself would nest runs
    without end: refuse it when the pipeline loads (the executor also guards at run time)."""
    if not pipeline.path:
        return
    own = Path(pipeline.path).resolve()
    problems = []
    for stage in pipeline.stages:
        if stage.executor != "workflow" or not isinstance(stage.input, Mapping):
            continue
        target = stage.input.get("pipeline")
        if not isinstance(target, str) or "$" in target or "{{" in target:
            continue  # computed at run time: the executor's cycle check covers it
        p = Path(target)
        if not p.is_absolute():
            p = own.parent / p
        if p.resolve() == own:
            problems.append(
                f"{pipeline.path}: stage {stage.name!r}: input.pipeline {target!r} is this "
                "pipeline itself; a workflow stage that runs its own file never ends"
            )
    if problems:
        raise PipelineError("; ".join(problems), problems)


def _tracing_provider(registry: Registry) -> Any:
    """None when tracing is off; otherwise the chain's tracer provider ("" for the global one)."""
    chain = registry.overlays
    defaults = getattr(chain, "defaults", None)
    if chain is None or defaults is None:
        return None
    configured = [defaults.get("tracing")] + [
        (s or {}).get("tracing") for s in registry.config.overlays.values()
    ]
    if not any(v not in (None, False) for v in configured):
        return None
    return getattr(chain, "tracer_provider", None) or ""


__all__ = ["Engine", "RunResult", "StageFailed", "StageResult", "StageRun", "new_run_id"]
