"""The examples in docs/pipelines.md and docs/overlays.md run as written."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from workplex.cli import app

ROOT = Path(__file__).resolve().parents[2]
PIPELINES = (ROOT / "docs" / "pipelines.md").read_text()
OVERLAYS = (ROOT / "docs" / "overlays.md").read_text()


def blocks(text: str, lang: str) -> list[str]:
    return [b for lg, b in re.findall(r"```(\w*)\n(.*?)```", text, re.S) if lg == lang]


def block_starting(text: str, lang: str, start: str) -> str:
    found = [b for b in blocks(text, lang) if b.lstrip().startswith(start)]
    assert len(found) == 1, f"one ```{lang} block starting with {start!r} expected"
    return found[0]


@pytest.fixture
def cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """Run `workplex ARGS` in a fresh directory with the examples' functions importable."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("WORKPLEX_CONFIG", raising=False)
    monkeypatch.syspath_prepend(str(ROOT / "examples"))

    def run(*args: str) -> Any:
        return CliRunner().invoke(app, list(args))

    return run


def run_pipeline(cli: Any, tmp_path: Path, text: str, *inputs: str) -> dict[str, Any]:
    path = tmp_path / "p.yaml"
    path.write_text(text)
    args = [a for i in inputs for a in ("--input", i)]
    result = cli("run", str(path), "--json", "--no-store", *args)
    assert result.exit_code == 0, result.stderr + result.stdout
    data: dict[str, Any] = json.loads(result.stdout)
    return data


def stages_doc(*snippets: str) -> str:
    return "name: doc\nstages:\n" + "".join(textwrap.indent(s, "  ") for s in snippets)


FILES = (
    'files=[{"path": "data/invoice-1001.txt", "type": "invoice"},'
    ' {"path": "data/letter-q3.txt", "type": "letter"},'
    ' {"path": "data/invoice-1002.txt", "type": "invoice"}]'
)


def test_the_file_format_example_runs(cli: Any, tmp_path: Path) -> None:
    text = block_starting(
        PIPELINES, "yaml", "# yaml-language-server: $schema=./workplex-pipeline.schema.json\nname: doc"
    )
    data = run_pipeline(cli, tmp_path, text, "limit=3", FILES)
    out = data["stages"]["process-files"]["output"]
    assert [o["documentType"] for o in out] == ["invoice", "letter", "invoice"]
    # Without files the `if:` is false and the stage says why it was skipped.
    skipped = run_pipeline(cli, tmp_path, text, "limit=3")["stages"]["process-files"]
    assert skipped["status"] == "skipped" and "$.trigger.files" in skipped["info"]["reason"]


def test_the_pattern_examples_run(cli: Any, tmp_path: Path) -> None:
    single = block_starting(PIPELINES, "yaml", "- name: hello")
    scatter = block_starting(PIPELINES, "yaml", "- name: shout")
    broadcast = block_starting(PIPELINES, "yaml", "- name: ask-everyone")
    fork = block_starting(PIPELINES, "yaml", "- name: facts")
    data = run_pipeline(
        cli, tmp_path, stages_doc(single, scatter, broadcast, fork), 'words=["a", "b", "c"]'
    )
    stages = data["stages"]
    assert stages["hello"]["output"]["stdout"] == "hello\n"
    assert [o["stdout"] for o in stages["shout"]["output"]] == ["A", "B", "C"]
    assert set(stages["ask-everyone"]["output"]) == {"echo", "python"}
    assert stages["ask-everyone"]["output"]["python"] == ".".join(
        str(v) for v in sys.version_info[:3]
    )
    assert stages["report"]["output"]["kernel"] == stages["facts"]["output"]["kernel"]["stdout"]


def test_the_gather_example_runs(cli: Any, tmp_path: Path) -> None:
    scatter = (
        "- name: process-files\n  mode: scatter\n  executor: python\n"
        "  scatter: {input: $.trigger.files, as: file}\n"
        "  input: {function: docs_pipeline:parse, kwargs: {path: $.file.path, kind: $.file.type}}\n"
    )
    gather = block_starting(PIPELINES, "yaml", "- name: consolidate")
    data = run_pipeline(cli, tmp_path, stages_doc(scatter, gather), FILES)
    out = data["stages"]["consolidate"]["output"]
    assert [(g["documentType"], g["documents"]) for g in out] == [("invoice", 2), ("letter", 1)]


def test_the_python_api_example_runs() -> None:
    code = block_starting(PIPELINES, "python", "import asyncio")
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60,
        check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    first, second = proc.stdout.strip().splitlines()
    assert first.startswith("succeeded [{'word': 'x', 'n': [{'word': 'x'}, {'word': 'x'}]}")
    assert second == "succeeded"


def test_the_overlay_config_and_stage_examples_load(cli: Any, tmp_path: Path) -> None:
    config = block_starting(OVERLAYS, "yaml", "# workplex.yaml")
    (tmp_path / "workplex.yaml").write_text(config)
    listed = cli("overlays", "--json")
    assert listed.exit_code == 0, listed.stderr
    assert json.loads(listed.stdout)["defaults"] == {"metrics": True, "logging": True}
    stage = block_starting(OVERLAYS, "yaml", "# a pipeline stage")
    path = tmp_path / "p.yaml"
    path.write_text("name: doc\ninputs: {url: {type: string}}\nstages:\n" + textwrap.indent(stage, "  "))
    checked = cli("validate", str(path))
    assert checked.exit_code == 0, checked.stderr


def test_the_overlay_error_examples_are_the_real_messages(cli: Any, tmp_path: Path) -> None:
    shown = re.search(r"```\n(workplex\.yaml: .*?)```", OVERLAYS, re.S)
    assert shown is not None
    config_line, stage_line = shown.group(1).strip().splitlines()
    (tmp_path / "workplex.yaml").write_text("overlays:\n  http:\n    retry: {max_attempt: 3}\n")
    bad_config = cli("overlays")
    assert bad_config.exit_code == 2
    message = bad_config.stderr.strip()
    assert message.startswith(f"error: {tmp_path}") and message.endswith(config_line)
    (tmp_path / "workplex.yaml").unlink()
    path = tmp_path / "p.yaml"
    path.write_text("name: doc\nstages:\n  - {name: fetch, executor: echo, overlays: {timeout: soon}}\n")
    bad_stage = cli("validate", str(path))
    assert bad_stage.exit_code == 2
    assert bad_stage.stderr.strip().endswith(stage_line)


@pytest.mark.parametrize("start", ["from workplex.overlays import OverlayChain\n\nchain", "from workplex.overlays import OverlayChain\nfrom", "import asyncio"])
def test_the_overlay_python_examples_run(start: str) -> None:
    code = block_starting(OVERLAYS, "python", start)
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60,
        check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    if "serve_metrics" in code:
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+/metrics", proc.stdout.strip())
    if "class Audit" in code:
        order, counts = proc.stdout.strip().splitlines()
        assert "'retry', 'audit', 'rate_limit'" in order
        assert counts == "{'hi': 1} {'echo': 1}"
