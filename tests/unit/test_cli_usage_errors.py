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


def test_workers_with_no_server_answering_exits_2_naming_the_url() -> None:
    from tests.support import free_port

    url = f"nats://127.0.0.1:{free_port()}"
    proc = subprocess.run(
        [sys.executable, "-m", "workplex.cli", "workers", "--nats", url],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert f"cannot connect to NATS at {url}" in proc.stderr
