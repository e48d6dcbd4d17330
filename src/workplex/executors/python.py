"""``python``: calls ``module:function`` (sync or async) with ``args`` and ``kwargs``.

The function's return value (JSON-serialisable) is the task's output. A sync function runs
on a thread so it never blocks the event loop. A thread cannot be interrupted: on a timeout
or cancellation the task fails at once, but a sync function runs on to its end in the
background (result dropped, side effects kept). Work that must really stop belongs in an
``async`` function (cancelled where it awaits) or in the ``command`` executor (its process
group is killed).
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, RootModel, field_validator
from pydantic_core import PydanticSerializationError, to_jsonable_python

from workplex.errors import ExecutorError, PermanentError
from workplex.executor import Capabilities, Context, Executor, ExecutorConfig, SecurityLevel


class PythonInput(BaseModel):
    function: str = Field(description="The callable as `module:attribute` (dots allowed in both).")
    args: list[Any] = Field(default_factory=list)
    # Named kwargs_ in Python (a field called `kwargs` clashes with the generated __init__).
    kwargs_: dict[str, Any] = Field(default_factory=dict, alias="kwargs")

    model_config = ConfigDict(populate_by_name=True)

    @field_validator("function")
    @classmethod
    def _shape(cls, v: str) -> str:
        module, sep, attr = v.partition(":")
        if not sep or not module or not attr:
            raise ValueError("must look like 'package.module:function'")
        return v


class PythonOutput(RootModel[Any]):
    """Whatever the function returned."""


class PythonConfig(ExecutorConfig):
    allowed_modules: list[str] = Field(
        default_factory=list,
        description="Module prefixes that may be called; empty allows every module.",
    )
    pass_context: bool = Field(
        default=False, description="Pass the task Context as the keyword argument `ctx`."
    )


class Python(Executor):
    name = "python"
    description = "Calls a Python function (module:function), sync or async, with args and kwargs."
    security = SecurityLevel.PRIVILEGED
    capabilities = Capabilities(subprocess=False, filesystem=True, network=True)

    Input = PythonInput
    Output = PythonOutput
    Config = PythonConfig

    def __init__(self) -> None:
        super().__init__()
        self._cache: dict[str, tuple[Callable[..., Any], bool]] = {}

    def _resolve(self, spec: str) -> tuple[Callable[..., Any], bool]:
        found = self._cache.get(spec)
        if found is not None:
            return found
        module_name, _, attr = spec.partition(":")
        allowed = self.config.allowed_modules
        if allowed and not any(
            module_name == m or module_name.startswith(m + ".") for m in allowed
        ):
            raise PermanentError(f"module {module_name!r} is not in allowed_modules")
        try:
            obj: Any = importlib.import_module(module_name)
        except ImportError as exc:
            raise PermanentError(f"cannot import module {module_name!r}: {exc}") from exc
        for part in attr.split("."):
            try:
                obj = getattr(obj, part)
            except AttributeError as exc:
                raise PermanentError(f"{module_name!r} has no attribute {attr!r}") from exc
        if not callable(obj):
            raise PermanentError(f"{spec!r} is not callable")
        found = (obj, inspect.iscoroutinefunction(obj))
        self._cache[spec] = found
        return found

    async def execute(self, input: PythonInput, ctx: Context) -> Any:
        fn, is_async = self._resolve(input.function)
        kwargs = dict(input.kwargs_)
        if self.config.pass_context:
            kwargs["ctx"] = ctx
        try:
            if is_async:
                out = await fn(*input.args, **kwargs)
            else:
                out = await asyncio.to_thread(fn, *input.args, **kwargs)
        except ExecutorError:
            raise
        except TypeError as exc:
            raise PermanentError(f"{input.function}: {exc}") from exc
        except (SystemExit, KeyboardInterrupt) as exc:
            # The function's own exit must not end the process that runs everyone's tasks.
            raise PermanentError(
                f"{input.function} raised {type(exc).__name__}({exc})"
            ) from exc
        return _jsonable(input.function, out)


def _jsonable(function: str, out: Any) -> Any:
    """The return value as JSON data: dates, decimals, UUIDs, sets, dataclasses and models
    are converted, bytes become URL-safe base64; anything else is refused, not str()-ed."""
    try:
        return to_jsonable_python(out, bytes_mode="base64")
    except PydanticSerializationError as exc:
        raise PermanentError(
            f"{function} returned a value that is not JSON data: {exc}"
        ) from exc
