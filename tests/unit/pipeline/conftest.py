"""Fixtures for the pipeline tests: a registry, an engine, and pipelines written to files."""

from __future__ import annotations

import textwrap
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from workplex.config import Config
from workplex.engine import Engine
from workplex.pipeline import Pipeline
from workplex.registry import Registry

from . import pl_funcs

FUNCS = pl_funcs.__name__
"""The import name of the test functions module, for ``function: MODULE:name``."""


@pytest.fixture(autouse=True)
def _fresh_funcs() -> Iterator[None]:
    pl_funcs.reset()
    yield
    pl_funcs.reset()


@pytest.fixture
async def registry() -> AsyncIterator[Registry]:
    async with Registry(Config()) as reg:
        yield reg


@pytest.fixture
async def engine(registry: Registry) -> AsyncIterator[Engine]:
    async with Engine(registry) as eng:
        yield eng


LoadPipeline = Callable[..., Pipeline]


@pytest.fixture
def load(tmp_path: Path, engine: Engine) -> LoadPipeline:
    """Write YAML (``{F}`` is the functions module) to a file and load it with the engine."""

    def _load(text: str, name: str = "pipeline.yaml") -> Pipeline:
        path = tmp_path / name
        path.write_text(textwrap.dedent(text).replace("{F}", FUNCS))
        return engine.load(path)

    return _load


@pytest.fixture
def write(tmp_path: Path) -> Callable[..., Path]:
    """Write a pipeline file without loading it (for load-error tests)."""

    def _write(text: str, name: str = "pipeline.yaml") -> Path:
        path = tmp_path / name
        path.write_text(textwrap.dedent(text).replace("{F}", FUNCS))
        return path

    return _write
