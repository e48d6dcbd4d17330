"""Helpers shared by the test fixtures: free ports, skipping (or failing under CI) when a
real server cannot be had."""

from __future__ import annotations

import os
import socket

import pytest


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def unavailable(reason: str) -> None:
    """Skip with ``reason`` locally; fail when ``CI`` is set (a CI run must test everything)."""
    if os.environ.get("CI"):
        pytest.fail(reason)
    pytest.skip(reason)
