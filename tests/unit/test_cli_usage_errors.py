"""Command-line usage errors (a missing argument, an unknown option or command) print the
usage with the reason and exit 2, never a traceback."""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.parametrize(
    ("args", "reason"),
    [
        (["show"], "Missing argument"),
        (["logs", "--bogus", "x"], "No such option: --bogus"),
        (["approve", "r-1"], "Missing argument"),
        (["no-such-command"], "No such command"),
    ],
)
def test_usage_errors_exit_2(args: list[str], reason: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "workplex.cli", *args],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert reason in proc.stderr
    assert "Traceback" not in proc.stderr
