"""The ``workplex`` CLI: exit codes and messages for good and bad input (CliRunner and a
few real subprocesses)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from workplex.cli import app

runner = CliRunner()


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # no stray ./workplex.yaml, and ./data lands here
    monkeypatch.delenv("WORKPLEX_CONFIG", raising=False)


def invoke(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args))
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout, result.stderr


def test_exec_prints_the_result_as_json() -> None:
    code, out, _ = invoke("exec", "echo", "--input", '{"a": [1, 2]}', "--json")
    assert code == 0
    data = json.loads(out)
    assert data["success"] is True and data["output"] == {"a": [1, 2]}


def test_exec_command_human_view_and_exit_codes() -> None:
    code, out, _ = invoke("exec", "command", "--input", '{"command": "echo", "args": ["hi there"]}')
    assert code == 0
    assert "hi there" in out and "succeeded" in out
    code, out, _ = invoke("exec", "command", "--input", '{"command": "false"}')
    assert code == 1
    assert "exit code" in out


def test_exec_reads_the_payload_from_a_file(tmp_path: Path) -> None:
    (tmp_path / "payload.json").write_text('{"from": "file"}')
    code, out, _ = invoke("exec", "echo", "--input", "@payload.json", "--json")
    assert code == 0 and json.loads(out)["output"] == {"from": "file"}


def test_task_failure_exits_1() -> None:
    code, out, _ = invoke(
        "exec", "file", "--input", '{"operation": "read", "path": "none.txt"}', "--json"
    )
    assert code == 1
    assert "none.txt" in json.loads(out)["error"]["message"]


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["exec", "nope", "--input", "{}"], ["unknown executor 'nope'", "echo"]),
        (["exec", "echo", "--input", "{not json"], ["--input", "invalid JSON", "line 1"]),
        (["exec", "echo", "--input", "@missing.json"], ["missing.json", "cannot read"]),
        (["exec", "file", "--input", '{"operation": "move"}'], ["operation", "'file'"]),
        (["exec", "command", "--input", '{"command": "ls", "timeout": "soon"}'], ["timeout"]),
        (["exec", "echo", "--input", "[1, 2]"], ["echo", "dictionary"]),
        (["schema", "nope"], ["unknown executor 'nope'"]),
    ],
)
def test_bad_input_exits_2_with_a_clear_message(args: list[str], words: list[str]) -> None:
    code, _, err = invoke(*args)
    assert code == 2, err
    assert err.startswith("error: ")
    for word in words:
        assert word in err


def test_security_refused_by_the_config_file(tmp_path: Path) -> None:
    (tmp_path / "workplex.yaml").write_text("max_security: safe\n")
    code, _, err = invoke("exec", "command", "--input", '{"command": "true"}')
    assert code == 2
    assert "max_security" in err and "privileged" in err
    code, _, err = invoke("exec", "echo", "--input", "{}")
    assert code == 0


@pytest.mark.parametrize(
    ("yaml", "words"),
    [
        ("max_securty: safe\n", ["max_securty", "unknown key", "strict.yaml"]),
        ("executors:\n  command:\n    shel: true\n", ["shel", "command", "strict.yaml"]),
        ("executors:\n  nosuch: {}\n", ["nosuch"]),
        ("max_security: [\n", ["strict.yaml", "YAML"]),
    ],
)
def test_bad_config_file_exits_2_naming_the_key(
    tmp_path: Path, yaml: str, words: list[str]
) -> None:
    (tmp_path / "strict.yaml").write_text(yaml)
    code, _, err = invoke("--config", "strict.yaml", "exec", "echo", "--input", "{}")
    assert code == 2
    for word in words:
        assert word in err


def test_executors_schema_and_health() -> None:
    code, out, _ = invoke("executors", "--json")
    assert code == 0
    infos = {i["name"]: i for i in json.loads(out)}
    assert {"echo", "python", "command", "file"} <= set(infos)
    assert infos["file"]["security"] == "trusted"
    assert "operation" in infos["file"]["input_schema"]["properties"]
    code, out, _ = invoke("executors")
    assert code == 0 and "command" in out and "privileged" in out
    code, out, _ = invoke("schema", "command")
    assert code == 0
    schema = json.loads(out)
    assert schema["security"] == "privileged"
    assert set(schema["input"]["properties"]) >= {
        "command",
        "args",
        "env",
        "working_dir",
        "stdin",
        "timeout",
        "shell",
    }
    code, out, _ = invoke("health", "--json")
    report = json.loads(out)
    assert report["command"]["ok"] is True and report["echo"]["ok"] is True
    assert code in (0, 1)  # other executors may lack their services here


def test_health_checks_only_the_named_executors_and_refuses_unknown_ones(tmp_path: Path) -> None:
    code, out, _ = invoke("health", "command", "echo", "--json")
    assert code == 0
    assert set(json.loads(out)) == {"command", "echo"}
    (tmp_path / "workplex.yaml").write_text("executors:\n  echo:\n    enabled: false\n")
    code, _, err = invoke("health", "echo")
    assert code == 2 and "unknown executor 'echo'" in err and "disabled" in err


def test_health_timeout_reports_and_exits_even_when_a_check_is_stuck_on_a_thread() -> None:
    import socket
    import tempfile

    from tests.support import require

    require("docker")
    # A "Docker engine" that accepts connections and never answers: the SDK's ping blocks
    # on a thread for its own 60 s timeout, which no asyncio timeout can interrupt.
    where = Path(tempfile.mkdtemp(dir="/tmp")) / "d.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as silent:
        silent.bind(str(where))
        silent.listen(8)
        config = where.parent / "workplex.yaml"
        config.write_text(f"executors:\n  docker:\n    base_url: unix://{where}\n")
        done = subprocess.run(
            [sys.executable, "-m", "workplex.cli", "--config", str(config),
             "health", "docker", "--timeout", "0.5"],
            capture_output=True, text=True, timeout=45, check=False,
        )  # fmt: skip
    assert done.returncode == 1, done.stderr
    assert "FAIL docker: no answer within 0.5s" in done.stdout


def test_exec_human_view_prints_program_output_and_data_literally() -> None:
    text = "[bold]x[/bold] [/] end a[b]c"
    code, out, _ = invoke("exec", "command", "--input", json.dumps({"command": "echo", "args": [text]}))
    assert code == 0 and text in out
    code, out, _ = invoke("exec", "echo", "--input", '{"n": null, "t": true}')
    assert code == 0 and '"n": null' in out and '"t": true' in out  # JSON, not Python repr


# ---- real processes ---------------------------------------------------------------------
def workplex(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "WORKPLEX_CONFIG"}
    return subprocess.run(
        [sys.executable, "-m", "workplex.cli", *args],
        capture_output=True, text=True, cwd=cwd, env=env, timeout=60, check=False,
    )  # fmt: skip


def test_end_to_end_exit_codes(tmp_path: Path) -> None:
    ok = workplex("exec", "command", "--input", '{"command": "echo", "args": ["hi"]}', cwd=tmp_path)
    assert ok.returncode == 0 and "hi" in ok.stdout
    failed = workplex("exec", "command", "--input", '{"command": "false"}', "--json", cwd=tmp_path)
    assert failed.returncode == 1 and json.loads(failed.stdout)["exit_code"] == 1
    blocked = workplex(
        "exec", "command", "--input", '{"command": "rm", "args": ["-rf", "x"]}', cwd=tmp_path
    )
    assert blocked.returncode == 1 and "blocked_commands" in blocked.stdout
    bad = workplex("exec", "command", "--input", '{"comand": "echo"}', cwd=tmp_path)
    assert bad.returncode == 2 and "comand" in bad.stderr and "Traceback" not in bad.stderr
    (tmp_path / "workplex.yaml").write_text("executors:\n  command:\n    blocked: [ls]\n")
    conf = workplex("executors", cwd=tmp_path)
    assert conf.returncode == 2 and "blocked" in conf.stderr and "Traceback" not in conf.stderr


HEAVY = (
    "httpx",
    "grpc",
    "docker",
    "boto3",
    "nats",
    "sqlalchemy",
    "fastapi",
    "uvicorn",
    "rich",
    "pydantic",
)


def test_help_does_not_import_heavy_modules(tmp_path: Path) -> None:
    code = (
        "import sys\n"
        "sys.argv = ['workplex', '--help']\n"
        "from workplex.cli import main\n"
        "try:\n"
        "    main()\n"
        "except SystemExit:\n"
        "    pass\n"
        f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "exec" in proc.stdout  # the help text was printed
    assert proc.stdout.strip().splitlines()[-1] == "[]"


def test_files_that_are_not_utf8_or_nested_too_deeply_are_bad_input(tmp_path: Path) -> None:
    binary = tmp_path / "bin.json"
    binary.write_bytes(b"\xff\xfe{}")
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 5000 + "]" * 5000)
    cases = [
        (("exec", "echo", "--input", f"@{binary}"), "not UTF-8 text"),
        (("validate", str(binary)), "not UTF-8 text"),
        (("--config", str(binary), "executors"), "not UTF-8 text"),
        (("exec", "echo", "--input", f"@{deep}"), "nested too deeply"),
    ]
    for args, reason in cases:
        done = workplex(*args, cwd=tmp_path)
        assert done.returncode == 2, (args, done.stderr)
        assert reason in done.stderr and "Traceback" not in done.stderr, (args, done.stderr)


def test_runs_on_a_fresh_machine_lists_nothing_and_a_mistyped_store_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    monkeypatch.delenv("WORKPLEX_STORE", raising=False)
    fresh = workplex("runs", "--json", cwd=tmp_path)
    assert fresh.returncode == 0, fresh.stderr
    assert json.loads(fresh.stdout) == []
    assert not (tmp_path / "data").exists()  # listing creates no store
    typo = workplex("runs", "--store", f"sqlite:///{tmp_path}/nope/runs.db", cwd=tmp_path)
    assert typo.returncode == 2 and "no run store at" in typo.stderr
