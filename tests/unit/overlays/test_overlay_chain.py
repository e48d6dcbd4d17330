"""The chain: order, placement, plugins through the entry point, settings and their errors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from workplex.cli import app
from workplex.errors import ConfigError
from workplex.executor import Context
from workplex.overlays import DEFAULT_ORDER, Overlay, OverlayChain, OverlayConfig, parse_duration
from workplex.registry import Call, PluginError


async def terminal(input: Any, ctx: Context) -> Any:
    return input


class Stamp(Overlay):
    """Records the order in which overlays run, into ``input`` (a list)."""

    name = "stamp"

    class Config(OverlayConfig):
        label: str = "stamp"

    def wrap(self, next: Call, executor: str, config: Any) -> Call:
        async def call(input: Any, ctx: Context) -> Any:
            input.append(config.label)
            return await next(input, ctx)

        return call


def test_given_the_installed_overlays_when_discovered_then_the_default_order_is_used() -> None:
    assert OverlayChain().names() == list(DEFAULT_ORDER)


def test_given_nothing_configured_when_built_then_the_terminal_call_is_returned_itself() -> None:
    chain = OverlayChain()
    assert chain.build("echo", terminal, {}) is terminal
    assert chain.build("echo", terminal, {"retry": None, "timeout": False}) is terminal


def test_given_before_and_after_when_added_then_the_overlay_sits_next_to_that_one() -> None:
    chain = OverlayChain()
    chain.add(Stamp, after="retry")
    names = chain.names()
    assert names.index("stamp") == names.index("retry") + 1
    other = OverlayChain()
    other.add(Stamp, before="metrics")
    assert other.names().index("stamp") == other.names().index("metrics") - 1


def test_given_a_missing_reference_when_placed_then_it_fails_loudly() -> None:
    chain = OverlayChain()
    with pytest.raises(ConfigError, match="wants to go before 'bulkhead', which is not in the chain"):
        chain.add(Stamp, before="bulkhead")
    assert "stamp" not in chain


def test_given_a_name_clash_when_added_then_it_is_refused() -> None:
    class Retry2(Stamp):
        name = "retry"

    with pytest.raises(PluginError, match="clashes"):
        OverlayChain().add(Retry2)


def test_given_a_config_allowing_unknown_keys_when_registered_then_it_is_refused() -> None:
    from pydantic import BaseModel

    class Loose(Stamp):
        name = "loose"

        class Config(BaseModel):
            x: int = 1

    with pytest.raises(PluginError, match="must forbid unknown keys"):
        OverlayChain().add(Loose)


async def test_given_two_plugins_when_built_then_they_run_outermost_first() -> None:
    class Outer(Stamp):
        name = "outer"
        before = "retry"

    chain = OverlayChain(discover=False, overlays=[Stamp])
    chain.add(Outer, before="stamp")
    call = chain.build("echo", terminal, {"outer": {"label": "o"}, "stamp": {"label": "s"}})
    assert await call([], Context()) == ["o", "s"]


def test_given_a_plugin_distribution_when_discovered_then_it_is_placed_and_its_dist_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = f"wpx_plugin_{tmp_path.name.replace('-', '_')}"
    (tmp_path / f"{module}.py").write_text(
        "from workplex.overlays import Overlay, OverlayConfig\n"
        "class Audit(Overlay):\n"
        "    name = 'audit'\n"
        "    after = 'retry'\n"
        "    class Config(OverlayConfig):\n"
        "        sink: str = 'stderr'\n"
    )
    dist = tmp_path / "wpx_audit-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: wpx-audit\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(f"[workplex.overlays]\naudit = {module}:Audit\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    chain = OverlayChain()
    names = chain.names()
    assert names.index("audit") == names.index("retry") + 1
    info = {i.name: i for i in chain.describe()}["audit"]
    assert info.distribution == "wpx-audit"
    assert info.options["sink"]["default"] == "stderr"
    with pytest.raises(ConfigError, match="audit: unknown option 'sinc'"):
        chain.validate({"audit": {"sinc": "x"}}, "stage 'fetch'")


def test_given_a_plugin_naming_a_missing_overlay_when_discovered_then_it_fails_loudly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = f"wpx_broken_{tmp_path.name.replace('-', '_')}"
    (tmp_path / f"{module}.py").write_text(
        "from workplex.overlays import Overlay\n"
        "class Bad(Overlay):\n"
        "    name = 'bad'\n"
        "    before = 'bulkhead'\n"
    )
    dist = tmp_path / "wpx_bad-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: wpx-bad\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(f"[workplex.overlays]\nbad = {module}:Bad\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ConfigError, match="'bad' wants to go before 'bulkhead'"):
        OverlayChain()


def test_given_stage_settings_when_validated_then_every_problem_names_stage_overlay_and_key() -> None:
    chain = OverlayChain()
    with pytest.raises(ConfigError) as info:
        chain.validate(
            {"retry": {"max_attempts": 0, "bakoff": "fixed"}, "timeout": "soon", "retyr": {}},
            "stage 'fetch'",
        )
    message = str(info.value)
    assert message.startswith("stage 'fetch': ")
    assert "retry: unknown option 'bakoff'" in message
    assert "retry.max_attempts: Input should be greater than 0" in message
    assert "timeout.seconds" in message and "invalid duration 'soon'" in message
    assert "unknown overlay 'retyr'" in message


def test_given_shorthand_when_parsed_then_it_means_the_documented_options() -> None:
    parsed = OverlayChain().parse(
        {"timeout": "30s", "retry": 4, "concurrency": 8, "metrics": True}, "stage 's'"
    )
    assert parsed["timeout"].seconds == 30.0
    assert parsed["retry"].max_attempts == 4
    assert parsed["concurrency"].limit == 8
    assert "metrics" in parsed


@pytest.mark.parametrize(
    ("text", "seconds"),
    [(2, 2.0), (0.5, 0.5), ("500ms", 0.5), ("1s", 1.0), ("2m", 120.0), ("1h", 3600.0), ("1.5", 1.5)],
)
def test_given_a_duration_when_parsed_then_it_is_in_seconds(text: Any, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("bad", ["-1s", "1y", "", True, -3])
def test_given_a_bad_duration_when_parsed_then_it_is_refused(bad: Any) -> None:
    with pytest.raises(ValueError):
        parse_duration(bad)


def test_given_global_defaults_when_an_executor_sets_its_own_then_its_own_wins() -> None:
    from workplex.config import parse_config

    config = parse_config(
        {"overlays": {"*": {"timeout": 5, "metrics": True}, "http": {"timeout": 30}}}
    )
    chain = OverlayChain.from_config(config)
    merged = dict(config.overlays["http"])
    assert chain.effective("http", merged)["timeout"].seconds == 30.0
    assert "metrics" in chain.effective("http", merged)
    assert chain.effective("echo", {})["timeout"].seconds == 5.0
    assert "timeout" not in chain.effective("echo", {"timeout": None})


def test_given_a_bad_global_default_when_the_config_loads_then_the_error_names_the_file(
    tmp_path: Path,
) -> None:
    cfg = tmp_path / "workplex.yaml"
    cfg.write_text("overlays:\n  '*':\n    logging: {lvl: debug}\n")
    result = CliRunner().invoke(app, ["--config", str(cfg), "overlays"])
    assert result.exit_code == 2
    assert f"{cfg}: overlays.*: logging: unknown option 'lvl'" in result.output


def test_given_the_cli_when_listing_overlays_as_json_then_the_chain_is_in_order() -> None:
    result = CliRunner().invoke(app, ["overlays", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert [o["name"] for o in data["order"]] == list(DEFAULT_ORDER)
    retry = data["order"][DEFAULT_ORDER.index("retry")]
    assert retry["options"]["max_attempts"]["default"] == 3
    assert data["order"][DEFAULT_ORDER.index("timeout")]["options"]["seconds"]["required"]


def test_given_the_cli_when_listing_overlays_then_a_table_shows_each_one() -> None:
    result = CliRunner().invoke(app, ["overlays"])
    assert result.exit_code == 0, result.output
    for name in DEFAULT_ORDER:
        assert name in result.output
