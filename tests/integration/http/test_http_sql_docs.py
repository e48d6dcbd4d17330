"""The Python examples of docs/http.md and docs/sql.md run and print what the docs say."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]


def _python_block(doc: str) -> str:
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "docs" / doc).read_text(), re.S)
    assert len(blocks) == 1, f"{doc} has one Python example"
    return str(blocks[0])


@pytest.mark.parametrize(
    ("doc", "expected"),
    [
        ("http.md", ["PermanentError", "200 hello"]),
        ("sql.md", ["1 x'); DROP TABLE notes; --", "2 hello"]),
    ],
)
def test_doc_example_runs(doc: str, expected: list[str], tmp_path: Path) -> None:
    script = tmp_path / "example.py"
    script.write_text(_python_block(doc))
    out = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=60, cwd=tmp_path
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == expected
