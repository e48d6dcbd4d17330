"""One error hierarchy for the whole of workplex.

::

    WorkplexError
    ├── ConfigError            bad configuration file or option; a missing optional extra
    │   └── MissingExtraError  an optional dependency is not installed (names the pip command)
    ├── PipelineError          a pipeline file that cannot be loaded (file, line, stage, field)
    ├── ValidationError        a payload that does not match an executor's Input model
    │   ├── UnknownExecutorError
    │   └── SecurityRefusedError   executor above the deployment's ``max_security``
    ├── ExecutorError          raised by executors while running; ``retryable`` says if a retry may help
    │   ├── RetryableError
    │   ├── PermanentError
    │   ├── TaskTimeoutError   (retryable)
    │   └── CircuitOpenError   (retryable, fails fast while a breaker is open)
    ├── BackendError           the distribution layer (NATS, workers)
    ├── StoreError             the run store
    └── RunPaused              raised by an executor (approval) to pause the run until resumed

Foreign exceptions are translated at the boundary with ``raise ... from exc``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

# Prefixes pydantic puts before the message of a validator's ValueError/AssertionError.
_PYDANTIC_PREFIXES = ("Value error, ", "Assertion failed, ")


def pydantic_reason(err: Mapping[str, Any]) -> str:
    """The reason of one pydantic error entry, as a person would say it."""
    if err.get("type") == "extra_forbidden":
        return "unknown key"
    msg = str(err.get("msg", "invalid"))
    for prefix in _PYDANTIC_PREFIXES:
        if msg.startswith(prefix):
            return msg[len(prefix) :]
    return msg


class WorkplexError(Exception):
    """Root of every error workplex raises on purpose."""


class ConfigError(WorkplexError):
    """A configuration file or option is wrong."""


class MissingExtraError(ConfigError):
    """An optional dependency is missing; the message names the ``pip install`` to run."""

    def __init__(self, extra: str, module: str, what: str) -> None:
        self.extra = extra
        self.module = module
        super().__init__(
            f"{what} needs the optional dependency {module!r}, which is not installed. "
            f"Install it with: pip install 'workplex[{extra}]'"
        )


class PipelineError(WorkplexError):
    """A pipeline cannot be loaded or is inconsistent.

    ``problems`` holds every problem found (validation reports all, not the first).
    """

    def __init__(self, message: str, problems: Sequence[str] = ()) -> None:
        self.problems = list(problems) or [message]
        super().__init__(message)


class ValidationError(WorkplexError):
    """A task payload does not match its executor's input model.

    ``errors`` is a list of ``(field_path, reason)``.
    """

    def __init__(self, message: str, errors: Sequence[tuple[str, str]] = ()) -> None:
        self.errors = list(errors)
        super().__init__(message)

    @classmethod
    def from_pydantic(cls, executor: str, exc: Any, where: str = "") -> ValidationError:
        """Translate a ``pydantic.ValidationError`` into ours, keeping field paths."""
        errors: list[tuple[str, str]] = []
        for err in exc.errors(include_url=False):
            path = ".".join(str(p) for p in err.get("loc", ())) or "(payload)"
            errors.append((path, pydantic_reason(err)))
        lines = "; ".join(f"{p}: {m}" for p, m in errors)
        prefix = f"{where}: " if where else ""
        return cls(f"{prefix}invalid input for executor {executor!r}: {lines}", errors)


class UnknownExecutorError(ValidationError):
    """No executor of that name is registered (or it is disabled)."""


class SecurityRefusedError(ValidationError):
    """The executor's security level is above the configured ``max_security``."""


class ExecutorError(WorkplexError):
    """An executor failed. ``retryable`` tells overlays whether another attempt may help."""

    retryable: bool = False

    def __init__(
        self,
        message: str,
        *,
        retryable: bool | None = None,
        retry_after: float | None = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        if retryable is not None:
            self.retryable = retryable
        self.retry_after = retry_after
        self.details = details or {}

    @property
    def type(self) -> str:
        return type(self).__name__


class RetryableError(ExecutorError):
    """A transient failure: try again."""

    retryable = True


class PermanentError(ExecutorError):
    """A failure that another attempt will not fix."""

    retryable = False


class TaskTimeoutError(ExecutorError):
    """An attempt ran past its time limit and was cancelled."""

    retryable = True


class CircuitOpenError(ExecutorError):
    """A circuit breaker is open for this key; the call was not made."""

    retryable = True


class BackendError(WorkplexError):
    """The distribution layer failed (NATS unreachable, no worker offers an executor, ...)."""


class StoreError(WorkplexError):
    """The run store failed or refused an operation (e.g. the run's lease is held)."""


class RunPaused(WorkplexError):
    """An executor asks the engine to pause the run (e.g. waiting for an approval).

    The engine stores the run as ``paused`` and returns; ``workplex resume`` continues it.
    """


def unreadable(exc: OSError | UnicodeDecodeError) -> str:
    """Why a text file could not be read: the OS's reason, or where it stops being UTF-8."""
    if isinstance(exc, UnicodeDecodeError):
        return f"not UTF-8 text (byte {exc.start} is {exc.object[exc.start : exc.start + 1]!r})"
    return exc.strerror or str(exc)
