"""A `command` task that exits non-zero is stored, counted and shown as the engine judged it."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from typer.testing import CliRunner

from workplex import Engine, Registry
from workplex.cli import app
from workplex.pipeline.model import Pipeline
from workplex.store import Store

# No shell needed: the interpreter running the tests prints to both streams and exits 3.
# The "[bold]" would vanish if rich read it as markup.
SCRIPT = (
    "import sys; print('out line'); "
    "print('err one', file=sys.stderr); print('err [bold]two[/bold]', file=sys.stderr); "
    "sys.exit(3)"
)


def pipeline(fail_on_nonzero: bool) -> Pipeline:
    return Pipeline.model_validate(
        {
            "name": "nonzero",
            "stages": [
                {
                    "name": "work",
                    "executor": "command",
                    "input": {"command": sys.executable, "args": ["-c", SCRIPT]},
                    "fail_on_nonzero": fail_on_nonzero,
                }
            ],
        }
    )


def run(store_url: str, fail_on_nonzero: bool) -> tuple[str, dict[str, Any], Any, list[Any]]:
    """Run the pipeline through the Engine with a real SQLite store; read back what was stored."""

    async def go() -> tuple[str, dict[str, Any], Any, list[Any]]:
        store = await Store.open(store_url)
        try:
            async with Registry() as registry, Engine(registry, store=store) as engine:
                result = await engine.run(pipeline(fail_on_nonzero))
            stats = await store.task_stats(result.run_id)
            failed = await store.failed_tasks(result.run_id)
            return result.run_id, result.to_dict(), stats["work"], failed
        finally:
            await store.close()

    return asyncio.run(go())


def test_a_nonzero_exit_that_fails_the_stage_is_a_failed_task(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'runs.db'}"
    run_id, summary, stats, failed = run(url, fail_on_nonzero=True)
    assert summary["status"] == "failed"
    assert "exit code 3" in summary["stages"]["work"]["error"]
    assert (stats.succeeded, stats.failed) == (0, 1)
    assert len(failed) == 1
    assert failed[0]["exit_code"] == 3 and failed[0]["stage"] == "work"
    assert failed[0]["stderr_tail"] == "err one\nerr [bold]two[/bold]"

    shown = CliRunner().invoke(app, ["show", run_id, "--json", "--store", url])
    assert shown.exit_code == 0, shown.stderr
    data = json.loads(shown.stdout)
    assert data["stages"]["work"]["tasks"]["succeeded"] == 0
    assert data["stages"]["work"]["tasks"]["failed"] == 1
    [task] = data["failed_tasks"]
    assert task["exit_code"] == 3 and task["index"] == 0
    assert task["stderr_tail"].endswith("err [bold]two[/bold]")

    human = CliRunner().invoke(app, ["show", run_id, "--store", url], env={"COLUMNS": "200"})
    assert human.exit_code == 0, human.stderr
    assert "failed tasks" in human.stdout
    assert "stderr (tail)" in human.stdout and "err one" in human.stdout
    assert "err [bold]two[/bold]" in human.stdout  # escaped, not eaten as markup


def test_with_fail_on_nonzero_false_the_task_stays_succeeded(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'runs.db'}"
    run_id, summary, stats, failed = run(url, fail_on_nonzero=False)
    assert summary["status"] == "succeeded"
    assert (stats.succeeded, stats.failed) == (1, 0)
    assert failed == []

    shown = CliRunner().invoke(app, ["show", run_id, "--json", "--store", url])
    assert shown.exit_code == 0, shown.stderr
    data = json.loads(shown.stdout)
    assert data["failed_tasks"] == []
    assert data["stages"]["work"]["tasks"]["succeeded"] == 1
