"""The examples in docs/executors.md run as written."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parents[2] / "docs" / "executors.md"
TEXT = DOC.read_text()


def test_python_examples_run(capsys: pytest.CaptureFixture[str]) -> None:
    blocks = re.findall(r"```python\n(.*?)```", TEXT, re.S)
    program = blocks[0] + "\n" + blocks[1]  # the executor, then running it
    exec(compile(program, str(DOC), "exec"), {"__name__": "__main__"})
    assert capsys.readouterr().out.strip() == "True {'text': 'HELLO'}"


CLI_LINES = [line for line in re.findall(r"^workplex exec (?:echo|command|file) .*$", TEXT, re.M)]


@pytest.mark.parametrize("line", CLI_LINES)
def test_cli_examples_run(line: str, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "WORKPLEX_CONFIG"}
    if '"read"' in line:  # the read example reads what the write example wrote
        write = next(x for x in CLI_LINES if '"write"' in x)
        subprocess.run(
            [sys.executable, "-m", "workplex.cli", *shlex.split(write)[1:]],
            cwd=tmp_path, env=env, check=True, capture_output=True, timeout=60,
        )  # fmt: skip
    proc = subprocess.run(
        [sys.executable, "-m", "workplex.cli", *shlex.split(line)[1:]],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "succeeded" in proc.stdout


def test_cli_examples_were_found() -> None:
    assert len(CLI_LINES) >= 4
