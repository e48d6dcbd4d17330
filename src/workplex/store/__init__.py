"""The run store: where runs, stages, tasks, events and approvals live (SQLite or PostgreSQL).

store = await Store.open("sqlite:///runs.db")   # None: the per-user default file
...
await store.close()
"""

from workplex.store.store import (
    DEFAULT_MAX_OUTPUT,
    Approval,
    PendingApproval,
    RunNotFoundError,
    Store,
    StoredEvent,
    StoredRun,
    StoredStage,
    TaskStats,
)
from workplex.store.url import default_path, driver_url, resolve_url

__all__ = [
    "DEFAULT_MAX_OUTPUT",
    "Approval",
    "PendingApproval",
    "RunNotFoundError",
    "Store",
    "StoredEvent",
    "StoredRun",
    "StoredStage",
    "TaskStats",
    "default_path",
    "driver_url",
    "resolve_url",
]
