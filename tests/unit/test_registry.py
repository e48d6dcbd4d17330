"""The Registry: registration checks, config, security cap, lifecycle, sync adaptation, health."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest
from pydantic import BaseModel

from workplex import Context, Executor, ExecutorConfig, Registry, SecurityLevel, Task
from workplex.config import parse_config
from workplex.errors import (
    ConfigError,
    PermanentError,
    SecurityRefusedError,
    UnknownExecutorError,
    ValidationError,
)
from workplex.executors.command import Command
from workplex.executors.echo import Echo
from workplex.registry import PluginError, check_executor_class


class Text(BaseModel):
    text: str


class Counting(Executor):
    """Records its lifecycle; startup yields to the loop so concurrent callers overlap."""

    name = "counting"
    security = SecurityLevel.SAFE
    Input = Text
    Output = Text

    class Config(ExecutorConfig):
        prefix: str = ""
        healthy: bool = True

    def __init__(self) -> None:
        super().__init__()
        self.startups = 0
        self.shutdowns = 0
        self.seen_config: Any = None

    async def startup(self, config: Any) -> None:
        self.startups += 1
        for _ in range(5):
            await asyncio.sleep(0)
        await super().startup(config)

    async def shutdown(self) -> None:
        self.shutdowns += 1

    async def health_check(self) -> bool:
        return bool(self.config.healthy)

    async def execute(self, input: Text, ctx: Context) -> Text:
        self.seen_config = ctx.config
        return Text(text=self.config.prefix + input.text)


class SyncWork(Executor):
    name = "syncwork"
    security = SecurityLevel.SAFE
    Input = Text
    Output = Text

    def execute(self, input: Text, ctx: Context) -> Text:  # type: ignore[override]
        # A plain def: the registry runs it on a worker thread, never on the loop's.
        return Text(text=f"{input.text}:{threading.get_ident()}")


class Failing(Executor):
    name = "failing"
    security = SecurityLevel.SAFE
    Input = Text
    Output = Text

    async def health_check(self) -> bool:
        raise RuntimeError("backing service down")

    async def execute(self, input: Text, ctx: Context) -> Text:
        raise PermanentError(f"cannot handle {input.text!r}")


def make(config: dict[str, Any] | None = None, *classes: type[Executor]) -> Registry:
    registry = Registry(parse_config(config or {}), discover=False)
    for cls in classes or (Counting,):
        registry.register(cls)
    return registry


async def test_config_settings_reach_the_executor_config() -> None:
    async with make({"executors": {"counting": {"prefix": ">> "}}}) as registry:
        result = await registry.execute(Task("counting", {"text": "hi"}))
        executor = registry.get("counting")
    assert result.output == {"text": ">> hi"}
    assert isinstance(executor, Counting)
    assert executor.seen_config.prefix == ">> "


def test_unknown_config_key_names_the_key_and_the_executor() -> None:
    with pytest.raises(ConfigError) as err:
        make({"executors": {"counting": {"prefx": "x"}}})
    assert "prefx" in str(err.value) and "counting" in str(err.value)
    with pytest.raises(ConfigError) as err:
        parse_config({"executors": {}, "max_securty": "safe"}, source="deploy.yaml")
    assert "max_securty" in str(err.value) and "deploy.yaml" in str(err.value)


def test_config_for_an_executor_that_is_not_installed() -> None:
    with pytest.raises(ConfigError) as err:
        Registry(parse_config({"executors": {"no-such-executor": {}}}))
    assert "no-such-executor" in str(err.value)


async def test_max_security_refuses_executors_above_it() -> None:
    registry = make({"max_security": "safe"}, Command, Echo)
    with pytest.raises(SecurityRefusedError) as err:
        registry.validate(Task("command", {"command": "true"}))
    assert "'command'" in str(err.value) and "privileged" in str(err.value)
    assert "safe" in str(err.value)
    result = await registry.execute(Task("command", {"command": "true"}))
    assert not result.success and result.error is not None
    assert result.error.type == "SecurityRefusedError"
    assert (await registry.execute(Task("echo", {"a": 1}))).output == {"a": 1}
    assert registry.info("command").enabled is False
    assert (await registry.health())["command"]["ok"] is False


async def test_disabled_executor_is_unknown_with_a_reason() -> None:
    registry = make({"executors": {"counting": {"enabled": False}}}, Counting, Echo)
    assert "counting" not in registry
    assert registry.names() == ["echo"]
    assert registry.names(include_disabled=True) == ["counting", "echo"]
    with pytest.raises(UnknownExecutorError) as err:
        registry.get("counting")
    assert "disabled" in str(err.value)
    with pytest.raises(UnknownExecutorError) as err:
        registry.validate(Task("nope", {}))
    assert "'nope'" in str(err.value) and "echo" in str(err.value)


def test_enabled_must_be_a_boolean() -> None:
    with pytest.raises(ConfigError) as err:
        make({"executors": {"counting": {"enabled": "yes"}}})
    assert "executors.counting.enabled" in str(err.value)


async def test_startup_runs_once_under_concurrency_and_shutdown_on_exit() -> None:
    registry = make()
    async with registry:
        results = await asyncio.gather(
            *(registry.execute(Task("counting", {"text": str(i)})) for i in range(20))
        )
        executor = registry.get("counting")
        assert isinstance(executor, Counting)
        assert executor.startups == 1
        assert executor.shutdowns == 0
    assert all(r.success for r in results)
    assert executor.shutdowns == 1


async def test_sync_execute_runs_on_a_thread() -> None:
    async with make(None, SyncWork) as registry:
        result = await registry.execute(Task("syncwork", {"text": "x"}))
    text, ident = result.output["text"].split(":")
    assert text == "x"
    assert int(ident) != threading.get_ident()


async def test_errors_and_bad_payloads_come_back_as_results() -> None:
    async with make(None, Failing) as registry:
        result = await registry.execute(Task("failing", {"text": "x"}))
        assert not result.success and result.error is not None
        assert result.error.type == "PermanentError"
        assert result.error.retryable is False
        assert "cannot handle 'x'" in result.error.message
        bad = await registry.execute(Task("failing", {"txt": "x"}))
        assert bad.error is not None and bad.error.type == "ValidationError"
        assert "text" in bad.error.message
        with pytest.raises(ValidationError) as err:
            registry.validate(Task("failing", {"text": 5}))
        assert err.value.errors[0][0] == "text"


async def test_health_reports_every_executor() -> None:
    registry = make({"executors": {"counting": {"healthy": False}}}, Counting, Failing, Echo)
    async with registry:
        report = await registry.health()
    assert report["echo"] == {"ok": True, "detail": "ok"}
    assert report["counting"]["ok"] is False
    assert report["failing"]["ok"] is False
    assert "backing service down" in report["failing"]["detail"]


def test_capabilities_carry_schemas_and_security() -> None:
    registry = make(None, Command, Echo)
    infos = {i.name: i for i in registry.capabilities()}
    assert infos["command"].security is SecurityLevel.PRIVILEGED
    assert infos["command"].capabilities["subprocess"] is True
    assert "command" in infos["command"].input_schema["properties"]
    assert "exit_code" in infos["command"].output_schema["properties"]
    assert infos["echo"].distribution == "(local)"


# ---- plugins refused at registration ------------------------------------------------------
class NoModels(Executor):
    name = "nomodels"

    async def execute(self, input: Any, ctx: Context) -> Any:
        return input


class NoExecute(Executor):
    name = "noexecute"
    Input = Text
    Output = Text


class NoName(Executor):
    Input = Text
    Output = Text

    async def execute(self, input: Any, ctx: Context) -> Any:
        return input


class NotAnExecutor:
    name = "plain"


@pytest.mark.parametrize(
    ("obj", "reason"),
    [
        (NoModels, "`Input` must be a pydantic BaseModel"),
        (NoExecute, "does not implement `execute"),
        (NoName, "does not set a `name`"),
        (NotAnExecutor, "not a subclass of workplex.Executor"),
        (len, "not a subclass of workplex.Executor"),
    ],
)
def test_broken_plugins_are_refused_naming_the_distribution(obj: Any, reason: str) -> None:
    with pytest.raises(PluginError) as err:
        check_executor_class(obj, "acme-executors", "thing")
    assert "acme-executors" in str(err.value)
    assert reason in str(err.value)
    registry = Registry(parse_config({}), discover=False)
    with pytest.raises(PluginError):
        registry.register(obj, distribution="acme-executors")


def test_entry_point_name_must_match_and_names_must_not_clash() -> None:
    registry = make()
    with pytest.raises(PluginError) as err:
        registry.register(Echo, distribution="acme", entry_name="shout")
    assert "'shout'" in str(err.value) and "acme" in str(err.value)

    class OtherCounting(Counting):
        pass

    with pytest.raises(PluginError) as err:
        registry.register(OtherCounting, distribution="acme")
    assert "clashes" in str(err.value) and "acme" in str(err.value)
