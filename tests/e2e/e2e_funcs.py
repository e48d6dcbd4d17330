"""Functions for pipelines run by ``workplex run`` in a subprocess (on its PYTHONPATH)."""

from __future__ import annotations

import os
import time


def record_start(item: int, path: str) -> int:
    """Append this task's start time (monotonic seconds) to ``path``."""
    with open(path, "a") as f:
        f.write(f"{time.monotonic()!r}\n")
        f.flush()
        os.fsync(f.fileno())
    return item
