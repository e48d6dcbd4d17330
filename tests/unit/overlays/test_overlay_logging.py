"""logging: JSON lines per attempt with the ids, and no secret anywhere."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.unit.overlays.conftest import MakeRegistry, StepClock
from workplex.executor import Context, Task
from workplex.overlays.logging import configure_logging

SECRET = "s3cr3t-Value-42"


@pytest.mark.usefixtures("reset_structlog")
async def test_given_logging_when_a_task_is_retried_then_each_attempt_logs_ids_and_no_secret(
    make_registry: MakeRegistry, step_clock: StepClock, tmp_path: Path
) -> None:
    stream = io.StringIO()
    configure_logging(json=True, level="debug", stream=stream)
    registry, _ = make_registry(
        {"*": {"logging": True}, "python": {"retry": {"max_attempts": 2, "initial_delay": 0}}},
        executors={"python": {"pass_context": True}},
        secrets={"API_KEY": SECRET},
        clock=step_clock,
    )
    counter = tmp_path / "n"
    fail = Task(
        "python",
        {
            "function": "tests.unit.overlays.flaky:fail_times",
            "kwargs": {"counter": str(counter), "failures": 1, "message": f"bad key {SECRET}"},
        },
    )
    leak = Task(
        "python",
        {"function": "tests.unit.overlays.flaky:log_with_secret", "kwargs": {"secret": SECRET}},
    )
    async with registry:
        for task in (fail, leak):
            ctx = Context(task.id, "run-7", "stage-x", secrets=registry.secrets)
            result = await registry.execute(task, ctx)
            assert result.success, result.error
    text = stream.getvalue()
    assert SECRET not in text
    assert "hunter2" not in text
    lines = [json.loads(line) for line in text.splitlines()]
    attempts = [e for e in lines if e["event"].startswith("attempt.")]
    assert [(e["event"], e["task_id"], e["attempt"], e.get("outcome")) for e in attempts] == [
        ("attempt.start", fail.id, 1, None),
        ("attempt.end", fail.id, 1, "failed"),
        ("attempt.start", fail.id, 2, None),
        ("attempt.end", fail.id, 2, "success"),
        ("attempt.start", leak.id, 1, None),
        ("attempt.end", leak.id, 1, "success"),
    ]
    for event in attempts:
        assert event["run_id"] == "run-7"
        assert event["stage"] == "stage-x"
        assert event["executor"] == "python"
    failed = attempts[1]
    # At info level only the end of each attempt is logged.
    quiet = io.StringIO()
    configure_logging(json=True, level="info", stream=quiet)
    registry, _ = make_registry({"*": {"logging": True}}, secrets={"API_KEY": SECRET})
    async with registry:
        await registry.execute(leak, Context(leak.id, "run-8", "stage-y", secrets=registry.secrets))
    events = [json.loads(line)["event"] for line in quiet.getvalue().splitlines()]
    assert [e for e in events if e.startswith("attempt.")] == ["attempt.end"]
    assert failed["error"] == "bad key *** 1"
    assert failed["error_type"] == "RetryableError"
    assert failed["duration"] >= 0
    own = next(e for e in lines if e["event"] == "calling")
    assert own["url"] == "https://example.invalid/?key=***"
    assert own["password"] == "***"


@pytest.mark.usefixtures("reset_structlog")
def test_given_a_terminal_or_not_when_configured_then_json_is_chosen_for_non_terminals() -> None:
    stream = io.StringIO()
    configure_logging(stream=stream)  # a StringIO is not a terminal: JSON
    import structlog

    structlog.get_logger("t").info("hello", token="abc")
    event = json.loads(stream.getvalue())
    assert event["event"] == "hello" and event["token"] == "***"
    console = io.StringIO()
    configure_logging(json=False, stream=console)
    structlog.get_logger("t").info("hello")
    assert not console.getvalue().startswith("{")


def test_given_logging_only_on_a_stage_when_run_with_json_then_log_lines_go_to_stderr(
    tmp_path: Path,
) -> None:
    pipeline = tmp_path / "logged.yaml"
    pipeline.write_text(
        "name: logged\n"
        "stages:\n"
        "  - name: hello\n"
        "    executor: echo\n"
        "    input: {greeting: hi}\n"
        "    overlays: {logging: {}}\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "WORKPLEX_CONFIG"}
    done = subprocess.run(
        [sys.executable, "-m", "workplex.cli", "run", str(pipeline), "--json", "--no-store"],
        capture_output=True, text=True, cwd=tmp_path, env=env, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["status"] == "succeeded"  # nothing but the result
    lines = [json.loads(line) for line in done.stderr.splitlines() if line.startswith("{")]
    assert any(line.get("stage") == "hello" for line in lines), done.stderr


def test_given_level_debug_when_run_then_the_debug_lines_show(tmp_path: Path) -> None:
    pipeline = tmp_path / "debug.yaml"
    pipeline.write_text(
        "name: debug\n"
        "stages:\n"
        "  - name: hello\n"
        "    executor: echo\n"
        "    input: {greeting: hi}\n"
        "    overlays: {logging: {level: debug}}\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "WORKPLEX_CONFIG"}
    done = subprocess.run(
        [sys.executable, "-m", "workplex.cli", "run", str(pipeline), "--json", "--no-store"],
        capture_output=True, text=True, cwd=tmp_path, env=env, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stderr.splitlines() if line.startswith("{")]
    events = [(line["event"], line["level"]) for line in lines]
    assert ("attempt.start", "debug") in events and ("attempt.end", "debug") in events
