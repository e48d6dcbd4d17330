"""The executor contract: ``Executor``, ``Task``, ``Result``, ``Context`` and friends.

An executor author writes one class::

    from pydantic import BaseModel
    from workplex import Context, Executor, SecurityLevel

    class Upper(Executor):
        name = "upper"
        description = "Upper-cases text."
        security = SecurityLevel.SAFE

        class Input(BaseModel):
            text: str

        class Output(BaseModel):
            text: str

        async def execute(self, input: Input, ctx: Context) -> Output:
            return self.Output(text=input.text.upper())

``execute`` may also be a plain ``def``; the registry then runs it on a thread. That
adaptation happens once, when the class is registered, not per call.
"""

from __future__ import annotations

import enum
import itertools
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel, ConfigDict

if TYPE_CHECKING:
    from structlog.typing import FilteringBoundLogger

    from workplex.engine import Engine

__all__ = [
    "Capabilities",
    "Context",
    "ErrorInfo",
    "Executor",
    "ExecutorConfig",
    "Metrics",
    "Result",
    "Secrets",
    "SecurityLevel",
    "Task",
]


class SecurityLevel(str, enum.Enum):
    """How much an executor can touch. Ordered: SAFE < TRUSTED < PRIVILEGED."""

    SAFE = "safe"
    """No side effects outside its output."""
    TRUSTED = "trusted"
    """Files, or network to configured places."""
    PRIVILEGED = "privileged"
    """Processes, containers, arbitrary network."""

    @property
    def rank(self) -> int:
        return _RANK[self]

    def allows(self, other: SecurityLevel) -> bool:
        """True when a deployment capped at ``self`` may run an executor of level ``other``."""
        return _RANK[other] <= _RANK[self]


_RANK = {SecurityLevel.SAFE: 0, SecurityLevel.TRUSTED: 1, SecurityLevel.PRIVILEGED: 2}


@dataclass(frozen=True, slots=True)
class Capabilities:
    """What an executor touches and supports; shown by ``workplex executors``."""

    network: bool = False
    filesystem: bool = False
    subprocess: bool = False
    containers: bool = False
    batch: bool = False
    """The executor implements ``execute_batch`` (a scatter hands it items in batches)."""

    def as_dict(self) -> dict[str, bool]:
        return {
            "network": self.network,
            "filesystem": self.filesystem,
            "subprocess": self.subprocess,
            "containers": self.containers,
            "batch": self.batch,
        }


class ExecutorConfig(BaseModel):
    """Base of every executor's config model. Unknown keys are errors."""

    model_config = ConfigDict(extra="forbid")


class Secrets(Mapping[str, str]):
    """Secret values by name. Printing it never shows a value."""

    __slots__ = ("_values",)

    def __init__(self, values: Mapping[str, str] | None = None) -> None:
        self._values = dict(values or {})

    def __getitem__(self, key: str) -> str:
        return self._values[key]

    def __iter__(self) -> Any:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __repr__(self) -> str:
        return f"Secrets({sorted(self._values)!r})"

    def redact(self, text: str) -> str:
        """Replace every secret value found in ``text`` by ``***``."""
        for value in self._values.values():
            if value and value in text:
                text = text.replace(value, "***")
        return text

    def redact_value(self, value: Any) -> Any:
        """``value`` (any JSON) with every secret inside its strings replaced by ``***``."""
        if isinstance(value, str):
            return self.redact(value)
        if isinstance(value, dict):
            return {k: self.redact_value(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self.redact_value(v) for v in value]
        return value

    def redact_result(self, result: Result) -> None:
        """Scrub a Result in place: output, error message and logs."""
        if not self._values:
            return
        result.output = self.redact_value(result.output)
        if result.error is not None:
            result.error.message = self.redact(result.error.message)
        if result.logs:
            result.logs = [self.redact(line) for line in result.logs]


_EMPTY_SECRETS = Secrets()
_task_counter = itertools.count(1)
_process_tag = uuid.uuid4().hex[:8]


def new_task_id() -> str:
    """A cheap unique id: a per-process random tag and a counter (no uuid per task)."""
    return f"t-{_process_tag}-{next(_task_counter)}"


class Task:
    """One unit of work: an executor type and a JSON payload."""

    __slots__ = ("id", "metadata", "payload", "type")

    def __init__(
        self,
        type: str,
        payload: Any,
        id: str | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        self.type = type
        self.payload = payload
        self.id = id or new_task_id()
        self.metadata = metadata if metadata is not None else {}

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "type": self.type, "payload": self.payload, "metadata": self.metadata}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Task:
        return cls(
            type=data["type"],
            payload=data.get("payload", {}),
            id=data.get("id"),
            metadata=dict(data.get("metadata") or {}),
        )

    def __repr__(self) -> str:
        return f"Task(id={self.id!r}, type={self.type!r})"


class ErrorInfo:
    """Why a task failed: the error class name, its message, whether a retry may help."""

    __slots__ = ("details", "message", "retryable", "type")

    def __init__(
        self,
        type: str,
        message: str,
        retryable: bool = False,
        details: dict[str, Any] | None = None,
    ) -> None:
        self.type = type
        self.message = message
        self.retryable = retryable
        self.details = details

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "type": self.type,
            "message": self.message,
            "retryable": self.retryable,
        }
        if self.details:
            data["details"] = self.details
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ErrorInfo:
        return cls(
            str(data.get("type", "Error")),
            str(data.get("message", "")),
            bool(data.get("retryable", False)),
            data.get("details"),
        )

    def __repr__(self) -> str:
        return f"ErrorInfo({self.type}: {self.message})"


class Metrics:
    """Timing of a task: wall-clock start and end (epoch seconds), duration, attempts."""

    __slots__ = ("attempts", "duration", "end", "start")

    def __init__(self, start: float, end: float, duration: float, attempts: int = 1) -> None:
        self.start = start
        self.end = end
        self.duration = duration
        self.attempts = attempts

    def to_dict(self) -> dict[str, Any]:
        return {
            "start": self.start,
            "end": self.end,
            "duration": self.duration,
            "attempts": self.attempts,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Metrics:
        return cls(
            float(data.get("start", 0.0)),
            float(data.get("end", 0.0)),
            float(data.get("duration", 0.0)),
            int(data.get("attempts", 1)),
        )


class Result:
    """The outcome envelope of one task."""

    __slots__ = ("error", "exit_code", "logs", "metadata", "metrics", "output", "success", "task_id")

    def __init__(
        self,
        success: bool,
        output: Any = None,
        error: ErrorInfo | None = None,
        exit_code: int | None = None,
        logs: list[str] | None = None,
        metrics: Metrics | None = None,
        metadata: dict[str, Any] | None = None,
        task_id: str = "",
    ) -> None:
        self.success = success
        self.output = output
        self.error = error
        self.exit_code = exit_code
        self.logs = logs
        self.metrics = metrics
        self.metadata = metadata
        self.task_id = task_id

    @classmethod
    def failure(
        cls, error: BaseException | ErrorInfo, *, task_id: str = "", attempts: int = 1
    ) -> Result:
        """A failed Result built from an exception (or an ErrorInfo)."""
        info = error if isinstance(error, ErrorInfo) else error_info(error)
        now = time.time()
        return cls(False, None, info, task_id=task_id, metrics=Metrics(now, now, 0.0, attempts))

    def to_dict(self) -> dict[str, Any]:
        return {
            "task_id": self.task_id,
            "success": self.success,
            "output": self.output,
            "error": self.error.to_dict() if self.error else None,
            "exit_code": self.exit_code,
            "logs": self.logs or [],
            "metrics": self.metrics.to_dict() if self.metrics else None,
            "metadata": self.metadata or {},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Result:
        err = data.get("error")
        met = data.get("metrics")
        return cls(
            success=bool(data.get("success")),
            output=data.get("output"),
            error=ErrorInfo.from_dict(err) if err else None,
            exit_code=data.get("exit_code"),
            logs=list(data.get("logs") or []) or None,
            metrics=Metrics.from_dict(met) if met else None,
            metadata=dict(data.get("metadata") or {}) or None,
            task_id=str(data.get("task_id", "")),
        )

    def __repr__(self) -> str:
        state = "ok" if self.success else f"failed {self.error!r}"
        return f"Result({self.task_id!r}, {state})"


def error_info(exc: BaseException) -> ErrorInfo:
    """Describe an exception for a Result: executors' typed errors keep their flags."""
    from workplex.errors import ExecutorError

    if isinstance(exc, ExecutorError):
        return ErrorInfo(exc.type, str(exc), exc.retryable, exc.details or None)
    return ErrorInfo(type(exc).__name__, str(exc) or repr(exc), False)


class Context:
    """What an executor gets beside its input: ids, attempt, deadline, config, secrets, logger.

    Cancellation is asyncio cancellation: an executor that awaits is cancelled where it
    awaits, and must clean up (kill processes, close requests) in ``finally`` or
    ``except CancelledError``.
    """

    __slots__ = (
        "_logger",
        "_logger_attempt",
        "attempt",
        "config",
        "deadline",
        "engine",
        "metadata",
        "run_id",
        "secrets",
        "stage",
        "task_id",
    )

    def __init__(
        self,
        task_id: str = "",
        run_id: str = "",
        stage: str = "",
        attempt: int = 1,
        deadline: float | None = None,
        config: Any = None,
        secrets: Secrets | None = None,
        metadata: dict[str, Any] | None = None,
        engine: Engine | None = None,
    ) -> None:
        self.task_id = task_id
        self.run_id = run_id
        self.stage = stage
        self.attempt = attempt
        self.deadline = deadline
        """``time.monotonic()`` value by which the task must end, or None."""
        self.config = config
        self.secrets = secrets if secrets is not None else _EMPTY_SECRETS
        self.metadata = metadata if metadata is not None else {}
        self.engine = engine
        """The Engine running this task inside a pipeline run (None for a lone task)."""
        self._logger: FilteringBoundLogger | None = None
        self._logger_attempt = 0

    def remaining(self) -> float | None:
        """Seconds left before the deadline (never negative), or None without one."""
        if self.deadline is None:
            return None
        return max(0.0, self.deadline - time.monotonic())

    @property
    def logger(self) -> FilteringBoundLogger:
        """A structlog logger bound to this task's ids and its current attempt.

        Created on first use and bound again when ``attempt`` changes (retry sets it before
        each attempt), so every line names the attempt that wrote it."""
        logger = self._logger
        if logger is None or self._logger_attempt != self.attempt:
            import structlog

            logger = self._logger = structlog.get_logger("workplex.task").bind(
                run_id=self.run_id, stage=self.stage, task_id=self.task_id, attempt=self.attempt
            )
            self._logger_attempt = self.attempt
        return logger


class Executor:
    """Base class of every executor. See the module docstring for an example.

    Class attributes to set: ``name``, ``description``, ``version``, ``security``,
    ``capabilities``, ``Input`` and ``Output`` (Pydantic models), and optionally
    ``Config`` (a model of the executor's settings in the config file).
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    version: ClassVar[str] = "0.1.0"
    security: ClassVar[SecurityLevel] = SecurityLevel.PRIVILEGED
    capabilities: ClassVar[Capabilities] = Capabilities()

    Input: ClassVar[type[BaseModel]]
    Output: ClassVar[type[BaseModel]]
    Config: ClassVar[type[ExecutorConfig]] = ExecutorConfig
    local_only: ClassVar[bool] = False
    """Runs in the process that drives the run (it needs ``ctx.engine``); a distributed
    backend never ships it to a worker."""

    def __init__(self) -> None:
        self.config: Any = self.Config()

    @classmethod
    def security_for(cls, config: Any) -> SecurityLevel:
        """The security level with these settings (default: the class's ``security``).

        Override when a setting widens what the executor can reach, so ``max_security``
        judges the executor as configured (``sql`` with ``allow_dsn: true`` is privileged).
        """
        return cls.security

    async def startup(self, config: Any) -> None:
        """Called once before the first task, with the validated ``Config``."""
        self.config = config

    async def shutdown(self) -> None:
        """Called once on exit: close pools and clients here."""

    async def health_check(self) -> bool:
        """True when the executor can take work (e.g. its backing service answers)."""
        return True

    async def execute(self, input: Any, ctx: Context) -> Any:
        """Do one unit of work. Return an ``Output`` instance (or a dict matching it)."""
        raise TypeError(f"{type(self).__name__} does not implement execute()")

    async def execute_batch(self, inputs: list[Any], ctxs: list[Context]) -> list[Any]:
        """Run several inputs at once (only used when ``capabilities.batch`` is set)."""
        return [await self.execute(i, c) for i, c in zip(inputs, ctxs, strict=True)]

    def exit_code(self, output: Any) -> int | None:
        """The exit code carried by an output, for executors where one means something."""
        return None
