"""`store_max_output_bytes` in the config file caps what `workplex run` stores per output."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


def test_given_a_small_output_cap_in_the_config_when_a_run_is_stored_then_the_output_is_truncated(
    tmp_path: Path,
) -> None:
    config = tmp_path / "workplex.yaml"
    config.write_text("store_max_output_bytes: 200\n")
    pipeline = tmp_path / "big.yaml"
    pipeline.write_text(
        "name: big\nstages:\n  - name: big\n    executor: echo\n"
        f"    input: {{text: {'x' * 1000}}}\n"
    )
    db = tmp_path / "runs.db"
    base = [sys.executable, "-m", "workplex.cli", "--config", str(config)]
    run = subprocess.run(
        [*base, "run", str(pipeline), "--store", f"sqlite:///{db}", "--json"],
        capture_output=True, text=True, timeout=60,
    )
    assert run.returncode == 0, run.stderr
    run_id = json.loads(run.stdout)["run_id"]
    shown = subprocess.run(
        [*base, "show", run_id, "--store", f"sqlite:///{db}", "--json"],
        capture_output=True, text=True, timeout=60,
    )
    assert shown.returncode == 0, shown.stderr
    stage = json.loads(shown.stdout)["stages"]["big"]
    assert stage["output"]["truncated"] is True
    assert stage["output"]["size"] > 200
