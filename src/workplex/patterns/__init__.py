"""Patterns: how one pipeline stage turns into tasks.

A pattern is a small class with a ``Config`` model (the stage's ``config:`` section) and an
async ``run(stage_run)`` that creates tasks, hands them to the engine and returns the
stage's output. Patterns are plugins, found through the entry-point group
``workplex.patterns``; the built-ins (single, scatter, gather, broadcast, fork_join) are
registered the same way. A third-party pattern needs no change to the engine::

    class Twice(Pattern):
        name = "twice"

        async def run(self, run: StageRun) -> Any:
            payload = run.render(run.template("input"))
            tasks = [run.task(run.executor, payload, i) for i in range(2)]
            results = await run.execute(tasks)
            return [r.output for r in results]
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from importlib import metadata
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel, ConfigDict

from workplex.errors import ConfigError

if TYPE_CHECKING:
    from workplex.engine import StageRun
    from workplex.pipeline.model import Stage

ENTRY_POINT_GROUP = "workplex.patterns"


class PatternConfig(BaseModel):
    """Base of every pattern's config model. Unknown keys are errors."""

    model_config = ConfigDict(extra="forbid")


class Pattern:
    """Base class of every pattern."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    Config: ClassVar[type[PatternConfig]] = PatternConfig
    needs_executor: ClassVar[bool] = True
    """False when the stage's ``executor:`` is optional or replaced by ``config``."""
    sections: ClassVar[frozenset[str] | None] = None
    """The stage sections (``scatter``, ``gather``) this pattern reads; another one is a
    load-time error, since it would be ignored. None: the pattern does not say (not checked)."""

    def executors(self, stage: Stage, config: Any) -> list[str]:
        """Executors this stage will call (checked against the registry at load)."""
        return [name for name, _ in self.executor_fields(stage, config)]

    def executor_fields(self, stage: Stage, config: Any) -> list[tuple[str, str]]:
        """Each executor with the field that names it (``executor``, ``config.executors[1]``),
        so a load-time problem points at the right line."""
        return [(stage.executor, "executor")] if stage.executor else []

    def templates(
        self, stage: Stage, config: Any
    ) -> dict[str, tuple[Any, str | list[str] | None]]:
        """Values with expressions to compile at load: name -> (value, executor(s) it feeds)."""
        return {"input": (stage.input, stage.executor)}

    def locals(self, stage: Stage, config: Any) -> set[str]:
        """Expression roots this pattern adds for its templates (e.g. the scatter variable)."""
        return set()

    def gathers(self, stage: Stage) -> str | None:
        """The stage whose task results this stage collects (a gather), if any."""
        return None

    def check(self, stage: Stage, config: Any) -> list[str]:
        """Load-time problems with this stage (missing sections, ...)."""
        return []

    async def run(self, run: StageRun) -> Any:
        """Run the stage and return its output."""
        raise TypeError(f"pattern {self.name!r} does not implement run()")


class PatternRegistry:
    """Patterns by name, from the entry-point group (remembering each one's distribution)."""

    def __init__(self, *, discover: bool = True) -> None:
        self._patterns: dict[str, Pattern] = {}
        self.distributions: dict[str, str] = {}
        if discover:
            self.discover()

    def discover(self) -> None:
        for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
            dist = ep.dist.name if ep.dist is not None else "(unknown distribution)"
            if ep.name in self._patterns:
                continue
            try:
                obj = ep.load()
            except Exception as exc:
                raise ConfigError(
                    f"pattern plugin {ep.name!r} from {dist!r} failed to import ({ep.value}): "
                    f"{type(exc).__name__}: {exc}"
                ) from exc
            self.register(obj, distribution=dist)

    def register(self, cls: type[Pattern], *, distribution: str = "(local)") -> None:
        where = f"pattern plugin {getattr(cls, 'name', cls)!r} from {distribution!r}"
        if not (inspect.isclass(cls) and issubclass(cls, Pattern)):
            raise ConfigError(f"{where}: {cls!r} is not a subclass of workplex.patterns.Pattern")
        if not cls.name:
            raise ConfigError(f"{where}: the class does not set a `name`")
        if cls.run is Pattern.run:
            raise ConfigError(f"{where}: the class does not implement `run(stage_run)`")
        if not (inspect.isclass(cls.Config) and issubclass(cls.Config, BaseModel)):
            raise ConfigError(f"{where}: `Config` must be a pydantic model")
        self._patterns[cls.name] = cls()
        self.distributions[cls.name] = distribution

    def get(self, name: str) -> Pattern | None:
        return self._patterns.get(name)

    def names(self) -> list[str]:
        return sorted(self._patterns)

    def items(self) -> Mapping[str, Pattern]:
        return dict(self._patterns)


__all__ = ["ENTRY_POINT_GROUP", "Pattern", "PatternConfig", "PatternRegistry"]
