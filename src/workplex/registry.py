"""The one registry of executors, built-ins and plugins alike.

Executors are found through the entry-point group ``workplex.executors`` (the built-ins
are registered through the same door), checked when registered, configured from the
config file, started once on first use and shut down on exit::

    >>> import asyncio
    >>> from workplex import Registry, Task
    >>> async def main():
    ...     async with Registry() as registry:
    ...         result = await registry.execute(Task("echo", {"hello": "world"}))
    ...         return result.output
    >>> asyncio.run(main())
    {'hello': 'world'}
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any, Literal, Protocol

from pydantic import BaseModel
from pydantic import ValidationError as PydanticValidationError

from workplex.config import Config
from workplex.errors import (
    ConfigError,
    SecurityRefusedError,
    UnknownExecutorError,
    ValidationError,
    WorkplexError,
)
from workplex.executor import (
    Context,
    ErrorInfo,
    Executor,
    ExecutorConfig,
    Metrics,
    Result,
    Secrets,
    SecurityLevel,
    Task,
    error_info,
)

ENTRY_POINT_GROUP = "workplex.executors"

Call = Callable[[Any, Context], Awaitable[Any]]
"""The shape of an executor call, and of every overlay around it: (validated input, ctx) -> output."""


class OverlayBuilder(Protocol):
    """Wraps the terminal call of one executor in overlays (see ``workplex.overlays``)."""

    def build(
        self, executor: str, terminal: Call, settings: Mapping[str, Any] | None = None
    ) -> Call: ...


class PluginError(ConfigError):
    """A plugin was refused at registration (names the distribution that supplied it)."""


class BrokenPluginError(PluginError, UnknownExecutorError):
    """A task or lookup named an executor whose plugin was refused at discovery.

    It is also an ``UnknownExecutorError`` so every place that reports an unusable
    executor name (``validate``, ``execute``, pipeline validation, exit code 2) treats it alike.
    """


@dataclass(frozen=True)
class BrokenPlugin:
    """An entry point of ``workplex.executors`` that could not be registered, and why."""

    name: str
    distribution: str
    target: str
    """The entry point's ``module:attribute``."""
    reason: str
    """The full message, naming the plugin and its distribution."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "distribution": self.distribution,
            "entry_point": self.target,
            "reason": self.reason,
        }


@dataclass
class ExecutorInfo:
    """What ``workplex executors`` shows about one executor."""

    name: str
    description: str
    version: str
    security: SecurityLevel
    capabilities: dict[str, bool]
    distribution: str
    enabled: bool
    input_schema: dict[str, Any]
    output_schema: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "version": self.version,
            "security": self.security.value,
            "capabilities": self.capabilities,
            "distribution": self.distribution,
            "enabled": self.enabled,
            "input_schema": self.input_schema,
            "output_schema": self.output_schema,
        }


@dataclass(eq=False)
class _Entry:
    cls: type[Executor]
    distribution: str
    executor: Executor
    settings: dict[str, Any]
    enabled: bool = True
    config: ExecutorConfig | None = None
    started: bool = False
    start_lock: asyncio.Lock | None = None
    terminal: Call | None = None
    calls: dict[Any, Call] = field(default_factory=dict)
    security: SecurityLevel = SecurityLevel.PRIVILEGED
    """The level as configured (``cls.security_for(config)``), which max_security judges."""


def _why_level(entry: _Entry) -> str:
    """`` (with its settings)`` when the config raised the class's own level."""
    return "" if entry.security == entry.cls.security else " (with its settings)"


def check_executor_class(obj: Any, distribution: str, entry_name: str = "") -> type[Executor]:
    """Refuse a plugin that does not follow the executor contract, naming its distribution."""
    where = f"executor plugin {entry_name or getattr(obj, '__name__', obj)!r} from {distribution!r}"
    if not (inspect.isclass(obj) and issubclass(obj, Executor)):
        raise PluginError(f"{where}: {obj!r} is not a subclass of workplex.Executor")
    if not isinstance(obj.name, str) or not obj.name:
        raise PluginError(f"{where}: the class does not set a `name`")
    for attr in ("Input", "Output"):
        model = getattr(obj, attr, None)
        if not (inspect.isclass(model) and issubclass(model, BaseModel)):
            raise PluginError(f"{where}: `{attr}` must be a pydantic BaseModel subclass")
    cfg = getattr(obj, "Config", None)
    if not (inspect.isclass(cfg) and issubclass(cfg, BaseModel)):
        raise PluginError(f"{where}: `Config` must be a pydantic BaseModel subclass")
    if obj.execute is Executor.execute:
        raise PluginError(f"{where}: the class does not implement `execute(input, ctx)`")
    if not isinstance(obj.security, SecurityLevel):
        raise PluginError(f"{where}: `security` must be a workplex.SecurityLevel")
    return obj


def _terminal_call(executor: Executor) -> Call:
    """The innermost call. A sync ``execute`` is adapted here, once, to run on a thread."""
    fn = executor.execute
    if inspect.iscoroutinefunction(fn):
        return fn

    async def threaded(input: Any, ctx: Context) -> Any:
        return await asyncio.to_thread(fn, input, ctx)

    return threaded


class Registry:
    """Executors by name, with their config, lifecycle, validation and execution."""

    def __init__(
        self,
        config: Config | None = None,
        *,
        discover: bool = True,
        overlays: OverlayBuilder | Literal["default"] | None = "default",
        secrets: Secrets | None = None,
    ) -> None:
        self.config = config or Config()
        self.max_security = self.config.max_security
        if overlays == "default":
            # Every installed overlay, as the CLI has them: a stage's `timeout` and `retry`
            # must mean the same in Python as in `workplex run`. ``None`` turns them off.
            from workplex.overlays import default_overlays

            overlays = default_overlays(self.config)
        self.overlays: OverlayBuilder | None = overlays
        self._secrets = secrets
        self._entries: dict[str, _Entry] = {}
        self._broken: dict[str, BrokenPlugin] = {}
        # Entry points the config disables: never imported, so a broken one costs nothing.
        self._skipped: dict[str, str] = {}
        if discover:
            self.discover()
        unknown = set(self.config.executors) - set(self._entries) - set(self._broken)
        unknown -= set(self._skipped)
        if unknown and discover:
            raise ConfigError(
                f"{self.config.source}: executors: unknown executor(s) "
                f"{', '.join(sorted(unknown))}; installed: {', '.join(sorted(self._entries))}"
            )
        # The same for `overlays:` ("*" is every executor): a typo must not pass silently.
        unknown = set(self.config.overlays) - set(self._entries) - {"*"}
        if unknown and discover:
            raise ConfigError(
                f"{self.config.source}: overlays: unknown executor(s) "
                f"{', '.join(sorted(unknown))}; installed: {', '.join(sorted(self._entries))} "
                f"(or '*' for every executor)"
            )

    # ---- registration -------------------------------------------------------------
    def discover(self) -> None:
        """Register every executor advertised in the ``workplex.executors`` entry-point group.

        One broken plugin must not take every command down with it: an entry point that
        fails to import or breaks the executor contract is recorded in ``broken`` (and not
        registered); using it later raises ``BrokenPluginError`` with the recorded reason.
        An entry point the config disables (``enabled: false``) is not imported at all.
        """
        for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
            dist = ep.dist.name if ep.dist is not None else "(unknown distribution)"
            if ep.name in self._entries or ep.name in self._broken or ep.name in self._skipped:
                continue
            if self.config.executor_settings(ep.name).get("enabled", True) is False:
                self._skipped[ep.name] = dist
                continue
            try:
                obj = ep.load()
            except (Exception, SystemExit) as exc:
                self._broken[ep.name] = BrokenPlugin(
                    ep.name,
                    dist,
                    ep.value,
                    f"executor plugin {ep.name!r} from {dist!r} failed to import ({ep.value}): "
                    f"{type(exc).__name__}: {exc}",
                )
                continue
            try:
                self.register(obj, distribution=dist, entry_name=ep.name)
            except PluginError as exc:
                self._broken[ep.name] = BrokenPlugin(ep.name, dist, ep.value, str(exc))

    @property
    def broken(self) -> list[BrokenPlugin]:
        """The plugins refused at discovery, by name."""
        return [self._broken[n] for n in sorted(self._broken)]

    @property
    def not_loaded(self) -> dict[str, str]:
        """Entry points skipped because the config disables them: name -> distribution."""
        return dict(sorted(self._skipped.items()))

    def register(
        self, cls: type[Executor], *, distribution: str = "(local)", entry_name: str = ""
    ) -> None:
        """Register an executor class (checked against the contract first)."""
        cls = check_executor_class(cls, distribution, entry_name)
        if entry_name and entry_name != cls.name:
            raise PluginError(
                f"executor plugin {entry_name!r} from {distribution!r}: the entry point name "
                f"differs from the class's name {cls.name!r}"
            )
        if cls.name in self._entries and self._entries[cls.name].cls is not cls:
            other = self._entries[cls.name].distribution
            raise PluginError(
                f"executor {cls.name!r} from {distribution!r} clashes with the one from {other!r}"
            )
        settings = self.config.executor_settings(cls.name)
        enabled = settings.pop("enabled", True)
        if not isinstance(enabled, bool):
            raise ConfigError(f"{self.config.source}: executors.{cls.name}.enabled must be true/false")
        try:
            config = cls.Config.model_validate(settings)
        except PydanticValidationError as exc:
            raise ConfigError(
                str(ValidationError.from_pydantic(cls.name, exc, self.config.source)).replace(
                    "invalid input for executor", "invalid settings for executor"
                )
            ) from exc
        try:
            executor = cls()
        except Exception as exc:
            raise PluginError(
                f"executor plugin {entry_name or cls.name!r} from {distribution!r}: the class "
                f"cannot be instantiated: {type(exc).__name__}: {exc}"
            ) from exc
        self._entries[cls.name] = _Entry(
            cls=cls,
            distribution=distribution,
            executor=executor,
            settings=settings,
            enabled=enabled,
            config=config,
            security=cls.security_for(config),
        )

    # ---- lookup -------------------------------------------------------------------
    def names(self, *, include_disabled: bool = False) -> list[str]:
        return sorted(n for n, e in self._entries.items() if include_disabled or e.enabled)

    def __contains__(self, name: object) -> bool:
        entry = self._entries.get(name) if isinstance(name, str) else None
        return entry is not None and entry.enabled

    def _entry(self, name: str) -> _Entry:
        entry = self._entries.get(name)
        if entry is None and name in self._broken:
            raise BrokenPluginError(
                f"{self._broken[name].reason}. Fix or uninstall that distribution, or disable "
                f"the executor in the config (executors: {{{name}: {{enabled: false}}}})",
                [("type", f"broken executor plugin {name!r}")],
            )
        if entry is None or not entry.enabled:
            known = ", ".join(self.names()) or "(none)"
            disabled = entry is not None or name in self._skipped
            state = "is disabled in the config" if disabled else "is not installed"
            raise UnknownExecutorError(
                f"unknown executor {name!r}: it {state}. Available executors: {known}",
                [("type", f"unknown executor {name!r}")],
            )
        if not self.max_security.allows(entry.security):
            raise SecurityRefusedError(
                f"executor {name!r} has security level {entry.security.value!r}"
                f"{_why_level(entry)}, above the "
                f"configured max_security {self.max_security.value!r}",
                [("type", "security level refused")],
            )
        return entry

    def get(self, name: str) -> Executor:
        """The executor instance called ``name`` (raises if unknown, disabled or refused)."""
        return self._entry(name).executor

    def executor_class(self, name: str) -> type[Executor]:
        return self._entry(name).cls

    def info(self, name: str) -> ExecutorInfo:
        entry = self._entries.get(name)
        if entry is None:
            self._entry(name)
            raise AssertionError  # pragma: no cover - _entry raised
        cls = entry.cls
        return ExecutorInfo(
            name=cls.name,
            description=cls.description,
            version=cls.version,
            security=entry.security,
            capabilities=cls.capabilities.as_dict(),
            distribution=entry.distribution,
            enabled=entry.enabled and self.max_security.allows(entry.security),
            input_schema=cls.Input.model_json_schema(),
            output_schema=cls.Output.model_json_schema(),
        )

    def capabilities(self) -> list[ExecutorInfo]:
        """Every enabled executor with its security level and input/output schemas."""
        return [self.info(n) for n in self.names()]

    # ---- validation ---------------------------------------------------------------
    def validate(self, task: Task) -> BaseModel:
        """The task's payload as its executor's Input model; ``ValidationError`` if not."""
        entry = self._entry(task.type)
        try:
            return entry.cls.Input.model_validate(task.payload)
        except PydanticValidationError as exc:
            raise ValidationError.from_pydantic(task.type, exc) from exc

    # ---- lifecycle ----------------------------------------------------------------
    @property
    def secrets(self) -> Secrets:
        if self._secrets is None:
            self._secrets = self.config.load_secrets()
        return self._secrets

    async def start(self, name: str) -> Executor:
        """Start one executor (once; concurrent callers wait for the same start)."""
        entry = self._entry(name)
        if not entry.started:
            await self._start(entry)
        return entry.executor

    async def _start(self, entry: _Entry) -> None:
        if entry.start_lock is None:
            entry.start_lock = asyncio.Lock()
        async with entry.start_lock:
            if entry.started:
                return
            try:
                await entry.executor.startup(entry.config)
            except WorkplexError:
                raise
            except Exception as exc:
                raise ConfigError(
                    f"executor {entry.cls.name!r} failed to start: {type(exc).__name__}: {exc}"
                ) from exc
            entry.started = True

    async def startup(self, names: Iterable[str] | None = None) -> None:
        for name in names if names is not None else self.names():
            await self.start(name)

    async def shutdown(self) -> None:
        """Shut down every started executor (errors are collected, not swallowed silently)."""
        problems = []
        for entry in self._entries.values():
            if entry.started:
                entry.started = False
                try:
                    await entry.executor.shutdown()
                except Exception as exc:  # keep shutting the others down
                    problems.append(f"{entry.cls.name}: {exc}")
        if problems:
            raise ConfigError("executors failed to shut down: " + "; ".join(problems))

    async def __aenter__(self) -> Registry:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.shutdown()

    async def health(
        self, names: Iterable[str] | None = None, *, timeout: float = 10.0
    ) -> dict[str, dict[str, Any]]:
        """Each enabled executor's health: ``{"ok": bool, "detail": str}``.

        ``names`` limits the check (unknown names raise ``UnknownExecutorError``). The checks
        run concurrently, each bounded by ``timeout`` so one unreachable service cannot hang
        the report.
        """
        wanted = self.names() if names is None else list(dict.fromkeys(names))
        for name in wanted:
            entry = self._entries.get(name)
            if entry is None or not entry.enabled:
                self._entry(name)  # raises the usual "unknown executor" error

        async def check(name: str) -> dict[str, Any]:
            if not self.max_security.allows(self._entries[name].security):
                return {"ok": False, "detail": "refused by max_security"}
            try:
                async with asyncio.timeout(timeout):
                    executor = await self.start(name)
                    ok = bool(await executor.health_check())
            except TimeoutError:
                return {"ok": False, "detail": f"no answer within {timeout:g}s", "timed_out": True}
            except Exception as exc:
                return {"ok": False, "detail": f"{type(exc).__name__}: {exc}"}
            return {"ok": ok, "detail": "ok" if ok else "health check failed"}

        results = await asyncio.gather(*(check(n) for n in wanted))
        return dict(zip(wanted, results, strict=True))

    # ---- execution ----------------------------------------------------------------
    def call_for(self, name: str, settings: Mapping[str, Any] | None = None, key: Any = None) -> Call:
        """The call of ``name`` wrapped in its overlays; built once per (executor, key)."""
        entry = self._entry(name)
        call = entry.calls.get(key)
        if call is None:
            if entry.terminal is None:
                entry.terminal = _terminal_call(entry.executor)
            call = entry.terminal
            if self.overlays is not None:
                merged = dict(self.config.overlays.get(name) or {})
                merged.update(settings or {})
                call = self.overlays.build(name, call, merged)
            entry.calls[key] = call
        return call

    def prepare(
        self, name: str, settings: Mapping[str, Any] | None = None, key: Any = None
    ) -> Prepared:
        """Look up ``name`` once for many tasks: its executor, validator and overlay chain.

        Raises ``UnknownExecutorError`` / ``SecurityRefusedError`` like ``get``."""
        entry = self._entry(name)
        return Prepared(self, entry, self.call_for(name, settings, key))

    def context(self, task: Task, *, run_id: str = "", stage: str = "") -> Context:
        entry = self._entries.get(task.type)
        return Context(
            task_id=task.id,
            run_id=run_id,
            stage=stage,
            config=entry.config if entry else None,
            secrets=self.secrets,
            metadata=task.metadata,
        )

    async def execute(
        self, task: Task, ctx: Context | None = None, *, call: Call | None = None
    ) -> Result:
        """Validate and run one task; every outcome (even a bad payload) comes back as a Result."""
        try:
            entry = self._entry(task.type)
            model = entry.cls.Input.model_validate(task.payload)
        except PydanticValidationError as exc:
            return Result.failure(ValidationError.from_pydantic(task.type, exc), task_id=task.id)
        except ValidationError as exc:
            return Result.failure(exc, task_id=task.id)
        if not entry.started:
            try:
                await self._start(entry)
            except WorkplexError as exc:
                return Result.failure(exc, task_id=task.id)
        if ctx is None:
            ctx = Context(task.id, config=entry.config, secrets=self.secrets, metadata=task.metadata)
        if call is None:
            call = entry.calls.get(None) or self.call_for(task.type)
        return await run_call(entry.executor, call, model, ctx, task.id)


def ok_result(
    executor: Executor, out: Any, start: float, t0: float, ctx: Context, task_id: str
) -> Result:
    """The Result of a call that returned ``out`` (timing from ``start``/``t0``)."""
    duration = time.perf_counter() - t0
    if isinstance(out, BaseModel):
        exit_code = executor.exit_code(out)
        out = out.model_dump(mode="json")
    else:
        exit_code = None
    return Result(
        True, out, None, exit_code,
        metrics=Metrics(start, start + duration, duration, ctx.attempt),
        task_id=task_id,
    )


def failed_result(exc: BaseException, start: float, t0: float, ctx: Context, task_id: str) -> Result:
    """The Result of a call that raised ``exc``."""
    duration = time.perf_counter() - t0
    return Result(
        False, None, error_info(exc),
        metrics=Metrics(start, start + duration, duration, ctx.attempt),
        task_id=task_id,
    )


async def run_call(executor: Executor, call: Call, model: Any, ctx: Context, task_id: str) -> Result:
    """Run an already-validated input through ``call`` and wrap the outcome in a Result."""
    start = time.time()
    t0 = time.perf_counter()
    try:
        out = await call(model, ctx)
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        return failed_result(exc, start, t0, ctx, task_id)
    return ok_result(executor, out, start, t0, ctx, task_id)


class Prepared:
    """Everything needed to run tasks of one executor, looked up once per batch of tasks."""

    __slots__ = ("_entry", "_registry", "call", "config", "executor", "name", "validate")

    def __init__(self, registry: Registry, entry: _Entry, call: Call) -> None:
        self._registry = registry
        self._entry = entry
        self.name = entry.cls.name
        self.executor = entry.executor
        self.config = entry.config
        self.call = call
        # The core validator directly: skips model_validate's Python-level wrapper.
        self.validate: Callable[[Any], Any] = entry.cls.Input.__pydantic_validator__.validate_python

    @property
    def started(self) -> bool:
        return self._entry.started

    async def start(self) -> None:
        if not self._entry.started:
            await self._registry._start(self._entry)

    def invalid(self, exc: PydanticValidationError, task_id: str) -> Result:
        """The failed Result of a payload that did not validate."""
        return Result.failure(ValidationError.from_pydantic(self.name, exc), task_id=task_id)


__all__ = [
    "ENTRY_POINT_GROUP",
    "BrokenPlugin",
    "BrokenPluginError",
    "Call",
    "ErrorInfo",
    "ExecutorInfo",
    "OverlayBuilder",
    "PluginError",
    "Prepared",
    "Registry",
    "check_executor_class",
    "failed_result",
    "ok_result",
    "run_call",
]
