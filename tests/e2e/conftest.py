"""Helpers for end-to-end tests: the real ``workplex`` command in a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"


class Done:
    def __init__(self, proc: subprocess.CompletedProcess[str]) -> None:
        self.code = proc.returncode
        self.stdout = proc.stdout
        self.stderr = proc.stderr

    @property
    def json(self) -> Any:
        return json.loads(self.stdout)


Workplex = Callable[..., Done]


@pytest.fixture
def workplex(tmp_path: Path) -> Workplex:
    """Run ``workplex ARGS`` (no config file, no store unless given) and return what it did."""

    def _run(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> Done:
        environ = {k: v for k, v in os.environ.items() if not k.startswith("WORKPLEX_")}
        environ["XDG_DATA_HOME"] = str(tmp_path / "xdg")
        environ.update(env or {})
        proc = subprocess.run(
            [sys.executable, "-m", "workplex.cli", *args],
            cwd=cwd or tmp_path,
            env=environ,
            capture_output=True,
            text=True,
            timeout=90,
        )
        return Done(proc)

    return _run
