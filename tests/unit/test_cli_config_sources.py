"""Where the CLI finds its config: --config, then $WORKPLEX_CONFIG, then ./workplex.yaml;
and `--version`."""

from __future__ import annotations

import json
from importlib import metadata
from pathlib import Path

import pytest
from typer.testing import CliRunner

from workplex.cli import app


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("WORKPLEX_CONFIG", raising=False)
    # Each file disables a different executor, so the listing tells which file was read.
    for name in ("local", "env", "flag"):
        (tmp_path / f"{name}.yaml").write_text(f"executors:\n  {EXECUTOR[name]}: {{enabled: false}}\n")
    (tmp_path / "workplex.yaml").write_text((tmp_path / "local.yaml").read_text())


EXECUTOR = {"local": "echo", "env": "file", "flag": "command"}


def disabled(*args: str) -> set[str]:
    result = CliRunner().invoke(app, [*args, "executors", "--json"])
    assert result.exit_code == 0, result.stderr
    return {e["name"] for e in json.loads(result.stdout) if not e["enabled"]}


def test_workplex_yaml_in_the_working_directory_is_read() -> None:
    assert disabled() == {"echo"}


def test_the_env_variable_wins_over_the_working_directory(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WORKPLEX_CONFIG", "env.yaml")
    assert disabled() == {"file"}


def test_the_flag_wins_over_the_env_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WORKPLEX_CONFIG", "env.yaml")
    assert disabled("--config", "flag.yaml") == {"command"}
    assert disabled("-c", "flag.yaml") == {"command"}


@pytest.mark.parametrize("how", ["flag", "env"])
def test_a_missing_config_file_exits_2_naming_it(how: str, monkeypatch: pytest.MonkeyPatch) -> None:
    args = ["--config", "missing.yaml"] if how == "flag" else []
    if how == "env":
        monkeypatch.setenv("WORKPLEX_CONFIG", "missing.yaml")
    result = CliRunner().invoke(app, [*args, "executors"])
    assert result.exit_code == 2
    assert result.stderr.startswith("error: ") and "missing.yaml" in result.stderr


def test_version_prints_the_installed_version() -> None:
    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.stdout.strip() == f"workplex {metadata.version('workplex')}"
