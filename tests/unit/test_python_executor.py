"""The `python` executor: sync and async functions, args and kwargs, and its refusals."""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator
from typing import Any

import pytest

from workplex import Registry, Task
from workplex.config import parse_config
from workplex.executors.python import Python

from . import py_funcs

F = py_funcs.__name__


def make(config: dict[str, Any] | None = None) -> Registry:
    registry = Registry(parse_config({"executors": {"python": config or {}}}), discover=False)
    registry.register(Python)
    return registry


@pytest.fixture
async def registry() -> AsyncIterator[Registry]:
    async with make() as reg:
        yield reg


async def test_a_sync_function_runs_on_a_thread_with_args_and_kwargs(registry: Registry) -> None:
    task = Task("python", {"function": f"{F}:add", "args": [2, 3], "kwargs": {"scale": 10}})
    result = await registry.execute(task)
    assert result.success, result.error
    assert result.output["sum"] == 50
    assert result.output["thread"] != threading.get_ident()


async def test_an_async_function_is_awaited_on_the_loop(registry: Registry) -> None:
    task = Task("python", {"function": f"{F}:async_add", "args": [1], "kwargs": {"b": 4}})
    result = await registry.execute(task)
    assert result.success, result.error
    assert result.output == {"sum": 5, "thread": threading.get_ident()}


async def test_dotted_attributes_resolve(registry: Registry) -> None:
    result = await registry.execute(
        Task("python", {"function": f"{F}:Namespace.nested", "args": ["hi"]})
    )
    assert result.output == "HI"


@pytest.mark.parametrize(
    ("function", "args", "words"),
    [
        ("no_such_module_wpx:f", [], ["cannot import module 'no_such_module_wpx'"]),
        (f"{F}:nope", [], ["has no attribute 'nope'"]),
        (f"{F}:NOT_CALLABLE", [], ["is not callable"]),
        (f"{F}:add", [1], [f"{F}:add", "argument"]),
    ],
)
async def test_what_cannot_be_called_fails_permanently_with_the_reason(
    registry: Registry, function: str, args: list[Any], words: list[str]
) -> None:
    result = await registry.execute(Task("python", {"function": function, "args": args}))
    assert not result.success and result.error is not None
    assert result.error.type == "PermanentError"
    for word in words:
        assert word in result.error.message


async def test_errors_raised_by_the_function_come_back_as_results(registry: Registry) -> None:
    flaky = await registry.execute(Task("python", {"function": f"{F}:flaky"}))
    assert flaky.error is not None and flaky.error.type == "RetryableError"
    assert flaky.error.message == "try again"
    broken = await registry.execute(Task("python", {"function": f"{F}:broken"}))
    assert not broken.success and broken.error is not None
    assert "missing" in broken.error.message


async def test_allowed_modules_refuses_other_modules() -> None:
    async with make({"allowed_modules": [F]}) as registry:
        ok = await registry.execute(Task("python", {"function": f"{F}:add", "args": [1, 1]}))
        refused = await registry.execute(Task("python", {"function": "os:getcwd"}))
    assert ok.success and ok.output["sum"] == 2
    assert refused.error is not None and refused.error.type == "PermanentError"
    assert "'os' is not in allowed_modules" in refused.error.message


async def test_pass_context_gives_the_function_its_task_context() -> None:
    async with make({"pass_context": True}) as registry:
        result = await registry.execute(Task("python", {"function": f"{F}:with_ctx"}, id="t-7"))
    assert result.output == "t-7"


def test_a_function_spec_without_a_colon_is_bad_input(registry: Registry) -> None:
    from workplex.errors import ValidationError

    with pytest.raises(ValidationError) as info:
        registry.validate(Task("python", {"function": "os.getcwd"}))
    assert "function: must look like 'package.module:function'" in str(info.value)


@pytest.mark.parametrize("function", ["sys:exit", "builtins:exit"])
async def test_a_function_calling_exit_fails_its_task_and_the_process_lives_on(
    registry: Registry, function: str
) -> None:
    result = await registry.execute(Task("python", {"function": function, "args": [5]}))
    assert not result.success and result.error is not None
    assert result.error.type == "PermanentError"
    assert "SystemExit(5)" in result.error.message


async def test_return_values_become_json_data_or_the_task_fails(registry: Registry) -> None:
    converted = await registry.execute(
        Task("python", {"function": "datetime:date", "args": [2026, 11, 24]})
    )
    assert converted.success and converted.output == "2026-11-24"
    raw = await registry.execute(Task("python", {"function": "builtins:bytes", "args": [[255, 0]]}))
    assert raw.success and raw.output == "_wA="  # URL-safe base64
    refused = await registry.execute(Task("python", {"function": "builtins:object"}))
    assert not refused.success and refused.error is not None
    assert "not JSON data" in refused.error.message
