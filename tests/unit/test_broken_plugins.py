"""Broken third-party executor plugins, found through real entry-point discovery.

A ``*.dist-info`` directory with ``entry_points.txt`` on ``sys.path`` is an installed
distribution as far as ``importlib.metadata`` is concerned, so these tests use the same
discovery path as ``pip install``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from workplex import Registry, Task
from workplex.cli import app
from workplex.config import parse_config
from workplex.errors import UnknownExecutorError
from workplex.registry import BrokenPluginError, PluginError

DIST = "wpx-broken-pair"


def install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """One distribution with a good executor, two broken ones and one that must not be imported."""
    suffix = tmp_path.name.replace("-", "_")
    good, bad, marker = f"wpx_good_{suffix}", f"wpx_bad_{suffix}", tmp_path / "imported"
    (tmp_path / f"{good}.py").write_text(
        "from pydantic import BaseModel\n"
        "from workplex import Executor, SecurityLevel\n"
        "class Text(BaseModel):\n"
        "    text: str\n"
        "class Shout(Executor):\n"
        "    name = 'shout'\n"
        "    security = SecurityLevel.SAFE\n"
        "    Input = Text\n"
        "    Output = Text\n"
        "    async def execute(self, input, ctx):\n"
        "        return Text(text=input.text.upper())\n"
        "class NoExecute(Executor):\n"
        "    name = 'noexec'\n"
        "    security = SecurityLevel.SAFE\n"
        "    Input = Text\n"
        "    Output = Text\n"
    )
    (tmp_path / f"{bad}.py").write_text(
        "raise ImportError('needs libfrobnicate [v2]')\n"
    )
    (tmp_path / f"wpx_marker_{suffix}.py").write_text(
        f"open({str(marker)!r}, 'w').close()\n"
        "raise RuntimeError('disabled plugins must not be imported')\n"
    )
    dist = tmp_path / "wpx_broken_pair-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {DIST}\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(
        "[workplex.executors]\n"
        f"shout = {good}:Shout\n"
        f"noexec = {good}:NoExecute\n"
        f"frob = {bad}:Frob\n"
        f"sleeper = wpx_marker_{suffix}:Sleeper\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    return {"marker": str(marker)}


async def test_broken_plugins_are_recorded_and_the_rest_still_work(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    install(tmp_path, monkeypatch)
    config = parse_config({"executors": {"sleeper": {"enabled": False}}})
    async with Registry(config) as registry:
        broken = {b.name: b for b in registry.broken}
        assert set(broken) == {"frob", "noexec"}  # both reported, not only the first
        assert broken["frob"].distribution == DIST
        assert "failed to import" in broken["frob"].reason
        assert "needs libfrobnicate" in broken["frob"].reason
        assert DIST in broken["noexec"].reason and "execute" in broken["noexec"].reason
        assert "frob" not in registry and "noexec" not in registry
        assert "frob" not in registry.names(include_disabled=True)

        assert (await registry.execute(Task("echo", {"a": 1}))).output == {"a": 1}
        assert (await registry.execute(Task("shout", {"text": "hi"}))).output == {"text": "HI"}

        # Using a broken one is the error, with the recorded reason and the distribution.
        with pytest.raises(BrokenPluginError) as err:
            registry.get("frob")
        assert DIST in str(err.value) and "needs libfrobnicate" in str(err.value)
        assert isinstance(err.value, PluginError)
        with pytest.raises(BrokenPluginError, match="does not implement"):
            registry.validate(Task("noexec", {"text": "x"}))
        result = await registry.execute(Task("frob", {}))
        assert not result.success and result.error is not None
        assert result.error.type == "BrokenPluginError" and DIST in result.error.message

    # The disabled entry point counts as known (no "unknown executor" config error).
    assert registry.not_loaded == {"sleeper": DIST}
    with pytest.raises(UnknownExecutorError, match="disabled in the config"):
        registry.get("sleeper")


def test_disabled_entry_points_are_not_imported_and_are_not_unknown(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    paths = install(tmp_path, monkeypatch)
    config = parse_config({"executors": {"frob": {"enabled": False}, "sleeper": {"enabled": False}}})
    registry = Registry(config)
    # Disabled entry points are never imported: the marker module would have left its file.
    assert not Path(paths["marker"]).exists()
    assert {b.name for b in registry.broken} == {"noexec"}  # frob disabled: not even imported
    assert registry.not_loaded == {"frob": DIST, "sleeper": DIST}


def test_cli_lists_broken_plugins_warns_and_keeps_working(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    install(tmp_path, monkeypatch)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("WORKPLEX_CONFIG", raising=False)
    (tmp_path / "workplex.yaml").write_text("executors:\n  sleeper: {enabled: false}\n")
    runner = CliRunner()

    listed = runner.invoke(app, ["executors", "--json"])
    assert listed.exit_code == 0, listed.stderr
    items = {i["name"]: i for i in json.loads(listed.stdout)}
    assert items["frob"]["broken"] is True and items["noexec"]["broken"] is True
    assert items["frob"]["distribution"] == DIST and "needs libfrobnicate" in items["frob"]["reason"]
    assert items["shout"]["broken"] is False and items["shout"]["enabled"] is True
    assert items["sleeper"] == {
        "name": "sleeper", "distribution": DIST, "enabled": False, "loaded": False, "broken": False
    }
    warnings = [line for line in listed.stderr.splitlines() if line.startswith("warning: ")]
    assert len(warnings) == 2 and all(DIST in w for w in warnings)

    table = runner.invoke(app, ["executors"])
    assert table.exit_code == 0, table.stderr
    assert "broken executor plugins" in table.stdout
    # Rich must not eat "[v2]" as markup.
    assert "[v2]" in " ".join(table.stdout.split())

    echo = runner.invoke(app, ["exec", "echo", "--input", '{"a": 1}', "--json"])
    assert echo.exit_code == 0, echo.stderr
    assert json.loads(echo.stdout)["output"] == {"a": 1}

    used = runner.invoke(app, ["exec", "frob", "--input", "{}"])
    assert used.exit_code == 2
    assert "error:" in used.stderr and DIST in used.stderr and "failed to import" in used.stderr
