"""Each optional part, with its dependency missing, fails with a message naming the
``pip install`` to run. The dependency is hidden in a subprocess with
``sys.modules[name] = None`` (importing it then raises ImportError), and the real
command line runs there."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

RUNNER = """
import sys
for name in sys.argv[1].split(","):
    sys.modules[name] = None
from workplex.cli import main
sys.argv = ["workplex", *sys.argv[2:]]
main()
"""


def run_without(modules: str, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WORKPLEX_")}
    env["XDG_DATA_HOME"] = str(cwd / "xdg")
    return subprocess.run(
        [sys.executable, "-c", RUNNER, modules, *args],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


# (extra, hidden modules, executor, payload)
EXECUTORS = [
    ("http", "httpx", "http", {"url": "http://127.0.0.1:9/"}),
    ("sql", "asyncpg", "sql", {"connection": "pg", "query": "select 1"}),
    ("grpc", "grpc", "grpc", {"endpoint": "127.0.0.1:9", "method": "a.B/C", "request": {}}),
    ("aws", "boto3", "serverless", {"provider": "aws", "function": "f", "payload": {}}),
    ("docker", "docker", "docker", {"image": "scratch-test"}),
]


@pytest.mark.parametrize(("extra", "hidden", "executor", "payload"), EXECUTORS, ids=[e[0] for e in EXECUTORS])
def test_executor_without_its_extra(
    extra: str, hidden: str, executor: str, payload: dict[str, object], tmp_path: Path
) -> None:
    if executor == "sql":  # inline DSNs are off by default: name the database in the config
        (tmp_path / "workplex.yaml").write_text(
            "executors:\n  sql:\n    connections:\n      pg: postgresql://u@127.0.0.1:9/db\n"
        )
    proc = run_without(hidden, "exec", executor, "--input", json.dumps(payload), "--json", cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr
    error = json.loads(proc.stdout)["error"]
    assert error["type"] == "MissingExtraError"
    assert f"pip install 'workplex[{extra}]'" in error["message"]
    # The human view prints the same command (not eaten as markup).
    human = run_without(hidden, "exec", executor, "--input", json.dumps(payload), cwd=tmp_path)
    assert f"'workplex[{extra}]'" in " ".join(human.stdout.split())


@pytest.mark.parametrize(
    "args",
    [
        ("workers", "--nats", "nats://127.0.0.1:9"),
        ("worker", "--nats", "nats://127.0.0.1:9"),
    ],
    ids=["workers", "worker"],
)
def test_nats_commands_without_nats_py(args: tuple[str, ...], tmp_path: Path) -> None:
    proc = run_without("nats", *args, cwd=tmp_path)
    assert proc.returncode == 2
    assert "pip install 'workplex[nats]'" in proc.stderr


def test_run_on_nats_without_nats_py(tmp_path: Path) -> None:
    pipeline = tmp_path / "p.yaml"
    pipeline.write_text("name: p\nstages:\n  - {name: a, executor: echo, input: {x: 1}}\n")
    proc = run_without(
        "nats", "run", str(pipeline), "--no-store", "--backend", "nats://127.0.0.1:9", cwd=tmp_path
    )
    assert proc.returncode == 2
    assert "pip install 'workplex[nats]'" in proc.stderr


def test_postgres_store_without_asyncpg(tmp_path: Path) -> None:
    proc = run_without("asyncpg", "runs", "--store", "postgresql://u:pw@127.0.0.1:9/db", cwd=tmp_path)
    assert proc.returncode == 2
    assert "pip install 'workplex[postgres]'" in proc.stderr
    assert "pw" not in proc.stderr  # the password stays out of the message


def test_all_extra_includes_every_optional_part() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    (everything,) = extras["all"]
    named = set(everything.split("[", 1)[1].rstrip("]").split(","))
    for extra in ("http", "sql", "grpc", "aws", "docker", "nats", "postgres"):
        assert extra in extras, extra
        assert extra in named, f"[all] lacks [{extra}]"
