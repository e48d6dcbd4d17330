"""Functions the ``python`` executor calls in the NATS tests (importable by workers)."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path


def slow(i: int, seconds: float = 0.2, record: str | None = None) -> int:
    """Sleep, optionally append ``i`` to a file (to count executions), return ``i``."""
    time.sleep(seconds)
    if record:
        with Path(record).open("a") as fh:
            fh.write(f"{i}\n")
    return i


def die() -> None:
    """A poison task: kills the worker process running it."""
    os.kill(os.getpid(), signal.SIGKILL)


def fail_once(marker: str) -> str:
    """Fails the first time (creating ``marker``), succeeds every later time."""
    path = Path(marker)
    if not path.exists():
        path.write_text("failed once\n")
        raise RuntimeError("first attempt fails")
    return "ok"


def fail_once_retryable(marker: str) -> str:
    """Fails with a retryable error the first time (creating ``marker``), then succeeds."""
    from workplex.errors import RetryableError

    path = Path(marker)
    if not path.exists():
        path.write_text("failed once\n")
        raise RetryableError("the service is busy, try again")
    return "ok"


def die_holding(secret: str) -> None:
    """A poison task whose payload carries ``secret`` (to check where payloads end up)."""
    os.kill(os.getpid(), signal.SIGKILL)



def gate(i: int, folder: str, want: int, wait: float = 15.0) -> int:
    """Mark this task running and wait (bounded) until ``want`` tasks ran at once, as seen
    by this task or, through a ``reached`` file, by another; return the most it saw
    running together: a worker's real concurrency, observed, not timed."""
    here = Path(folder)
    reached = here / "reached"
    mine = here / f"running-{i}"
    mine.touch()
    most = 0
    deadline = time.monotonic() + wait
    try:
        while True:
            most = max(most, len(list(here.glob("running-*"))))
            if most >= want:
                reached.touch()
            if reached.exists() or time.monotonic() > deadline:
                return most
            time.sleep(0.01)
    finally:
        mine.unlink()
