"""Fixtures for the overlay tests: injected clocks and a registry wired to a chain."""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

import pytest
import structlog

from workplex.config import parse_config
from workplex.executor import Secrets
from workplex.overlays import OverlayChain
from workplex.registry import Registry

T = TypeVar("T")


class StepClock:
    """A clock whose ``sleep`` records the delay and moves time on at once (one task)."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
        await asyncio.sleep(0)


class VirtualClock:
    """Virtual time for many tasks: sleepers wake in time order once everything runnable
    has run (``run`` drives it)."""

    def __init__(self) -> None:
        self.now = 0.0
        self._timers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()

    def monotonic(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._timers, (self.now + seconds, next(self._seq), fut))
        await fut

    async def run(self, aw: Awaitable[T]) -> T:
        task = asyncio.ensure_future(aw)
        while not task.done():
            for _ in range(50):  # let every runnable coroutine reach its next wait
                await asyncio.sleep(0)
            if self._timers and not task.done():
                when, _, fut = heapq.heappop(self._timers)
                self.now = max(self.now, when)
                if not fut.done():
                    fut.set_result(None)
        return task.result()


@pytest.fixture
def step_clock() -> StepClock:
    return StepClock()


@pytest.fixture
def virtual_clock() -> VirtualClock:
    return VirtualClock()


MakeRegistry = Callable[..., tuple[Registry, OverlayChain]]


@pytest.fixture
def make_registry() -> MakeRegistry:
    """``make_registry(overlays, executors=..., clock=..., secrets=...)`` -> (registry, chain)."""

    def make(
        overlays: dict[str, Any] | None = None,
        *,
        executors: dict[str, Any] | None = None,
        secrets: dict[str, str] | None = None,
        **chain_options: Any,
    ) -> tuple[Registry, OverlayChain]:
        config = parse_config(
            {"overlays": overlays or {}, "executors": executors or {}}, source="test.yaml"
        )
        chain = OverlayChain.from_config(config, **chain_options)
        registry = Registry(config, overlays=chain, secrets=Secrets(secrets or {}))
        return registry, chain

    return make


@pytest.fixture
def reset_structlog() -> Iterator[None]:
    yield
    structlog.reset_defaults()
