"""Functions the `python` executor tests call by `module:function`."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from workplex.errors import RetryableError
from workplex.executor import Context

NOT_CALLABLE = 42


def add(a: int, b: int, *, scale: int = 1) -> dict[str, Any]:
    """Sync: reports the thread it ran on, so the test can tell it left the loop's thread."""
    return {"sum": (a + b) * scale, "thread": threading.get_ident()}


async def async_add(a: int, b: int, *, scale: int = 1) -> dict[str, Any]:
    await asyncio.sleep(0)
    return {"sum": (a + b) * scale, "thread": threading.get_ident()}


class Namespace:
    @staticmethod
    def nested(x: str) -> str:
        return x.upper()


def with_ctx(ctx: Context) -> str:
    return ctx.task_id


def flaky() -> None:
    raise RetryableError("try again")


def broken() -> None:
    raise KeyError("missing")
