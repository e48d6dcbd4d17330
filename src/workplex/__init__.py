"""workplex: a pluggable work-execution engine.

Executors do the work, overlays wrap every call, patterns turn pipeline stages into
tasks, the engine runs them durably, locally or on NATS workers.
"""

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from workplex.config import Config, load_config
    from workplex.engine import Engine, RunResult, StageResult
    from workplex.errors import (
        BackendError,
        CircuitOpenError,
        ConfigError,
        ExecutorError,
        MissingExtraError,
        PermanentError,
        PipelineError,
        RetryableError,
        RunPaused,
        SecurityRefusedError,
        StoreError,
        TaskTimeoutError,
        UnknownExecutorError,
        ValidationError,
        WorkplexError,
    )
    from workplex.executor import (
        Capabilities,
        Context,
        ErrorInfo,
        Executor,
        ExecutorConfig,
        Metrics,
        Result,
        Secrets,
        SecurityLevel,
        Task,
    )
    from workplex.pipeline import Pipeline, Stage
    from workplex.registry import Registry

# Public names are imported on first use, so `import workplex` (and `workplex --help`)
# stays fast; `from workplex import Engine` works as usual.
_LAZY = {
    "BackendError": "workplex.errors",
    "Capabilities": "workplex.executor",
    "CircuitOpenError": "workplex.errors",
    "Config": "workplex.config",
    "ConfigError": "workplex.errors",
    "Context": "workplex.executor",
    "Engine": "workplex.engine",
    "ErrorInfo": "workplex.executor",
    "Executor": "workplex.executor",
    "ExecutorConfig": "workplex.executor",
    "ExecutorError": "workplex.errors",
    "Metrics": "workplex.executor",
    "MissingExtraError": "workplex.errors",
    "PermanentError": "workplex.errors",
    "Pipeline": "workplex.pipeline",
    "PipelineError": "workplex.errors",
    "Registry": "workplex.registry",
    "Result": "workplex.executor",
    "RetryableError": "workplex.errors",
    "RunPaused": "workplex.errors",
    "RunResult": "workplex.engine",
    "Secrets": "workplex.executor",
    "SecurityLevel": "workplex.executor",
    "SecurityRefusedError": "workplex.errors",
    "Stage": "workplex.pipeline",
    "StageResult": "workplex.engine",
    "StoreError": "workplex.errors",
    "Task": "workplex.executor",
    "TaskTimeoutError": "workplex.errors",
    "UnknownExecutorError": "workplex.errors",
    "ValidationError": "workplex.errors",
    "WorkplexError": "workplex.errors",
    "load_config": "workplex.config",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'workplex' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


__version__ = "0.1.0"

__all__ = [
    "BackendError",
    "Capabilities",
    "CircuitOpenError",
    "Config",
    "ConfigError",
    "Context",
    "Engine",
    "ErrorInfo",
    "Executor",
    "ExecutorConfig",
    "ExecutorError",
    "Metrics",
    "MissingExtraError",
    "PermanentError",
    "Pipeline",
    "PipelineError",
    "Registry",
    "Result",
    "RetryableError",
    "RunPaused",
    "RunResult",
    "Secrets",
    "SecurityLevel",
    "SecurityRefusedError",
    "Stage",
    "StageResult",
    "StoreError",
    "Task",
    "TaskTimeoutError",
    "UnknownExecutorError",
    "ValidationError",
    "WorkplexError",
    "__version__",
    "load_config",
]
