"""A third-party pattern installed as its own distribution and found through the
`workplex.patterns` entry point: at most N task starts in any one-second window."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import ROOT, Workplex

PLUGIN = ROOT / "tests" / "plugins" / "rate_limited"
PER_SECOND = 3
ITEMS = 7

PIPELINE = f"""
name: limited
stages:
  - name: calls
    mode: rate_limited
    executor: python
    scatter: {{input: {list(range(ITEMS))}, as: n}}
    input: {{function: "e2e_funcs:record_start", args: [$.n, "{{starts}}"]}}
    config: {{per_second: {PER_SECOND}, max_parallel: 2}}
"""


@pytest.fixture(scope="module")
def plugin_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The plugin installed with pip into a directory of its own (built from a copy, so the
    source tree stays clean)."""
    base = tmp_path_factory.mktemp("rate_limited")
    source = base / "src"
    shutil.copytree(PLUGIN, source, ignore=shutil.ignore_patterns("build", "*.egg-info"))
    target = base / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "--disable-pip-version-check",
            "--target",
            str(target),
            str(source),
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    return target


def test_rate_limited_plugin_is_found_and_keeps_the_rate(
    workplex: Workplex, plugin_path: Path, tmp_path: Path
) -> None:
    starts = tmp_path / "starts.txt"
    pipeline = tmp_path / "limited.yaml"
    pipeline.write_text(PIPELINE.replace("{starts}", str(starts)))
    pythonpath = f"{plugin_path}:{Path(__file__).parent}"

    # Without the plugin on the path the pattern is unknown.
    missing = workplex("validate", str(pipeline), env={"PYTHONPATH": str(Path(__file__).parent)})
    assert missing.code == 2
    assert "unknown pattern 'rate_limited'" in missing.stderr

    done = workplex("run", str(pipeline), "--json", "--no-store", env={"PYTHONPATH": pythonpath})
    assert done.code == 0, done.stderr
    data = done.json
    assert data["stages"]["calls"]["status"] == "succeeded"
    assert data["stages"]["calls"]["output"] == list(range(ITEMS))
    assert data["stages"]["calls"]["tasks"]["total"] == ITEMS

    times = sorted(float(line) for line in starts.read_text().split())
    assert len(times) == ITEMS
    # No window of (almost) one second holds more than PER_SECOND starts. The 50 ms allowance
    # covers the gap between the pattern admitting a task and the function recording it.
    for i in range(len(times) - PER_SECOND):
        assert times[i + PER_SECOND] - times[i] >= 0.95, times


def test_the_plugin_comes_from_its_distribution(plugin_path: Path) -> None:
    code = (
        "from workplex.patterns import PatternRegistry; r = PatternRegistry(); "
        "print(r.distributions['rate_limited'], type(r.get('rate_limited')).__module__)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        env={"PYTHONPATH": str(plugin_path), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout.split()
    assert out == ["workplex-pattern-rate-limited", "workplex_rate_limited"]
