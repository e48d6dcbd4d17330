"""Work for the crash tests: each execution appends one line (the task's index) to a file."""

from __future__ import annotations

import asyncio
import os


async def mark(index: int, path: str, pause: float = 0.0) -> int:
    # Sleeping (not spinning) spreads a run over time without using CPU, so kills land
    # mid-run and several trials can share two cores.
    if pause:
        await asyncio.sleep(pause)
    # One small O_APPEND write per execution: lines never interleave.
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{index}\n".encode())
    finally:
        os.close(fd)
    return index
