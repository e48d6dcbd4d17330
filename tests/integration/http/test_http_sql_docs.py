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


def _examples_section() -> str:
    text = (ROOT / "docs" / "http.md").read_text()
    return text[text.index("## Examples") : text.index("From Python, against a small server")]


def test_http_doc_cli_and_pipeline_examples_run(tmp_path: Path) -> None:
    """The shell and pipeline examples of docs/http.md, on a free port instead of 8000."""
    import json
    import os
    import shlex
    import socket
    import time

    from tests.support import free_port

    section = _examples_section()
    shell = "\n".join(re.findall(r"```sh\n(.*?)```", section, re.S))
    (pipeline,) = re.findall(r"```yaml\n(.*?)```", section, re.S)
    port = str(free_port())
    lines = [line.replace("8000", port) for line in shell.splitlines()]
    # Set up what the shell lines set up (the site and the config file), then run the
    # server as a managed process rather than a shell job.
    assert lines[0].startswith("mkdir -p site && echo ")
    subprocess.run(["bash", "-c", lines[0]], cwd=tmp_path, check=True)
    config = shell[shell.index("<<'END'\n") + 8 : shell.index("\nEND")]
    (tmp_path / "workplex.yaml").write_text(config)
    (tmp_path / "fetch.yaml").write_text(pipeline.replace("8000", port))
    server_cmd = shlex.split(next(x for x in lines if "http.server" in x).split("&")[0])
    assert server_cmd[0] == "python"
    server = subprocess.Popen(
        [sys.executable, *server_cmd[1:]],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    env = {k: v for k, v in os.environ.items() if k not in ("WORKPLEX_CONFIG", "WORKPLEX_STORE")}
    try:
        deadline = time.monotonic() + 10
        while True:  # poll until the server answers
            try:
                with socket.create_connection(("127.0.0.1", int(port)), timeout=0.2):
                    break
            except OSError:
                assert time.monotonic() < deadline, "the example's server did not start"
                time.sleep(0.02)

        def workplex(line: str) -> dict[str, object]:
            words = shlex.split(line)
            extra = {}
            while "=" in words[0]:  # leading VAR=value assignments
                name, _, value = words.pop(0).partition("=")
                extra[name] = value
            assert words[0] == "workplex"
            proc = subprocess.run(
                [sys.executable, "-m", "workplex.cli", *words[1:]],
                cwd=tmp_path, env={**env, **extra}, capture_output=True, text=True, timeout=60,
            )  # fmt: skip
            assert proc.returncode == 0, proc.stderr
            data: dict[str, object] = json.loads(proc.stdout)
            return data

        (exec_line,) = [x for x in lines if x.startswith("workplex exec http")]
        result = workplex(exec_line)
        output = result["output"]
        assert isinstance(output, dict)
        assert output["status"] == 200
        assert output["body"] == {"greeting": "hello"}
        assert output["body_encoding"] == "json"
        assert output["http_version"] == "HTTP/1.0"

        (run_line,) = [x for x in lines if " workplex run " in x]
        run = workplex(run_line)
        assert run["status"] == "succeeded", run
        stages = run["stages"]
        assert isinstance(stages, dict)
        assert stages["fetch"]["output"]["body"] == {"greeting": "hello"}
    finally:
        server.terminate()
        server.wait(10)
