"""The config file's ``overlays:`` section refuses executor names that are not installed."""

from __future__ import annotations

import pytest

from tests.unit.overlays.conftest import MakeRegistry
from workplex.errors import ConfigError


def test_given_a_misspelt_executor_under_overlays_when_the_registry_loads_then_it_is_refused(
    make_registry: MakeRegistry,
) -> None:
    with pytest.raises(ConfigError) as info:
        make_registry({"comand": {"retry": 3}})
    message = str(info.value)
    assert message.startswith("test.yaml: overlays: unknown executor(s) comand;")
    installed = message.split("installed: ", 1)[1]
    for name in ("command", "echo", "python"):
        assert name in installed


def test_given_the_global_key_and_installed_executors_when_the_registry_loads_then_they_are_accepted(
    make_registry: MakeRegistry,
) -> None:
    registry, chain = make_registry({"*": {"timeout": 5}, "command": {"retry": 3}})
    assert "command" in registry
    assert chain.defaults == {"timeout": 5}
