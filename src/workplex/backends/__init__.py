"""Backends: where tasks execute. ``local`` (this process, the default) or ``nats`` (workers).

The engine keeps the orchestration; a backend only runs batches of tasks and reports each
result by its index. Both backends have the same semantics, so a pipeline does not change
when it moves from one to the other.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, ClassVar

from workplex.errors import ConfigError

if TYPE_CHECKING:
    from workplex.executor import Result, Task
    from workplex.registry import Registry

OnResult = Callable[[int, "Result"], None]
"""Called (synchronously, on the event loop) once per finished task with its index."""

Validator = Callable[[Any], Any]
"""Checks one payload for an executor; raises ``workplex.ValidationError`` when it is bad."""


class Backend(ABC):
    """Runs tasks somewhere and reports their Results."""

    name: ClassVar[str]

    def __init__(self, registry: Registry) -> None:
        self.registry = registry

    async def open(self) -> None:
        """Connect / prepare. Called once before the first ``execute``."""

    async def close(self) -> None:
        """Release connections. Called once at the end."""

    async def check_executors(self, names: Iterable[str], *, wait: float = 0.0) -> None:
        """Raise ``BackendError`` (or ``ValidationError``) if an executor cannot be run here.

        ``wait`` is how long to wait for a capable worker to appear (distributed backends).
        """
        for name in names:
            self.registry.get(name)

    def validator(self, executor: str) -> Validator | None:
        """A payload check for ``executor`` to run before dispatch, or None when the backend
        validates on execution anyway (the local backend does, through the registry)."""
        return None

    @abstractmethod
    async def execute(
        self,
        tasks: Iterable[Task],
        *,
        run_id: str,
        stage: str,
        limit: int,
        on_result: OnResult,
        settings: Mapping[str, Any] | None = None,
        batch_size: int = 1,
    ) -> None:
        """Run every task (at most ``limit`` at once) and call ``on_result(index, result)``
        for each, ``index`` being the task's position in ``tasks``. Returns when all are done.
        Cancelling the call cancels the tasks still running. ``settings`` are the stage's
        overlay settings (retry, timeout, ...)."""


def open_backend(url: str | None, registry: Registry, **options: Any) -> Backend:
    """The backend for ``--backend``: ``local`` (default) or ``nats://host:port``."""
    if not url or url == "local":
        from workplex.backends.local import LocalBackend

        return LocalBackend(registry)
    if url.startswith(("nats://", "tls://", "nats+tls://")):
        from workplex.backends.nats import NatsBackend

        return NatsBackend(registry, url, **options)
    raise ConfigError(f"unknown backend {url!r}: use 'local' or 'nats://HOST:PORT'")
