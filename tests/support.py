"""Helpers shared by the test fixtures: free ports, skipping (or failing under CI) when a
real server cannot be had."""

from __future__ import annotations

import importlib
import os
import socket
from types import ModuleType
from typing import NoReturn

import pytest


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def unavailable(reason: str) -> NoReturn:
    """Skip with ``reason`` locally; fail when ``CI`` is set (a CI run must test everything).

    Also usable at module level (a conftest or test module importing what it needs)."""
    if os.environ.get("CI"):
        pytest.fail(reason, pytrace=False)
    pytest.skip(reason, allow_module_level=True)


def require(module: str) -> ModuleType:
    """``module`` imported, or :func:`unavailable` naming it: the CI-aware replacement for
    ``pytest.importorskip``."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        unavailable(f"cannot import {module}: {exc}")
