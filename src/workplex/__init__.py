"""workplex: a pluggable work-execution engine.

Executors do the work, overlays wrap every call, patterns turn pipeline stages into
tasks, the engine runs them durably, locally or on NATS workers.
"""

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
    StoreError,
    TaskTimeoutError,
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
    "RunResult",
    "Secrets",
    "SecurityLevel",
    "Stage",
    "StageResult",
    "StoreError",
    "Task",
    "TaskTimeoutError",
    "ValidationError",
    "WorkplexError",
    "__version__",
    "load_config",
]
