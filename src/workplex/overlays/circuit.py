"""``circuit_breaker``: stop calling a failing target for a while, then try it again.

Keyed like the limits (``key: host($.url)`` gives one breaker per target host). States:

* **closed**: calls go through; failures are counted. It opens after
  ``failure_threshold`` consecutive failures, or when at least ``min_calls`` calls in the
  last ``window`` failed at ``failure_rate`` or more.
* **open**: calls fail fast with ``CircuitOpenError`` (the message says when it half-opens)
  and never reach the executor. After ``cooldown`` it half-opens.
* **half_open**: one trial call goes through (others still fail fast). Success closes the
  circuit; failure opens it again for another ``cooldown``.

The breaker sits outside ``retry``: a task (all its attempts) is one observation. Errors
named in ``ignore`` (class names) count as neither success nor failure. Every state change
is logged (structlog, ``circuit_breaker.state``) and counted in metrics.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Hashable
from typing import Any

from pydantic import Field, PositiveInt, model_validator

from workplex.errors import CircuitOpenError
from workplex.executor import Context
from workplex.overlays.chain import Duration, Overlay, OverlayChain, key_function
from workplex.overlays.limits import KeyedConfig
from workplex.registry import Call

CLOSED = "closed"
OPEN = "open"
HALF_OPEN = "half_open"


class CircuitBreakerConfig(KeyedConfig):
    failure_threshold: PositiveInt | None = Field(
        5, description="Open after this many consecutive failures (null: off)."
    )
    failure_rate: float | None = Field(
        None, gt=0.0, le=1.0, description="Open when this share of calls in `window` failed."
    )
    window: Duration = Field(60.0, description="The time window of `failure_rate`.")
    min_calls: PositiveInt = Field(10, description="Calls in `window` before the rate counts.")
    cooldown: Duration = Field(30.0, description="How long it stays open before half-opening.")
    ignore: tuple[str, ...] = Field((), description="Error class names that do not count.")

    @model_validator(mode="after")
    def _some_trigger(self) -> CircuitBreakerConfig:
        if self.failure_threshold is None and self.failure_rate is None:
            raise ValueError("set failure_threshold, failure_rate, or both")
        return self


class Breaker:
    """The state of one circuit (one key)."""

    __slots__ = (
        "calls",
        "chain",
        "config",
        "consecutive",
        "executor",
        "key",
        "opened_at",
        "probing",
        "reason",
        "state",
    )

    def __init__(
        self, chain: OverlayChain, executor: str, key: Hashable, config: CircuitBreakerConfig
    ) -> None:
        self.chain = chain
        self.executor = executor
        self.key = key
        self.config = config
        self.state = CLOSED
        self.consecutive = 0
        self.calls: deque[tuple[float, bool]] = deque()
        self.opened_at = 0.0
        self.probing = False
        self.reason = ""

    def _move(self, new: str, reason: str) -> None:
        old, self.state = self.state, new
        self.chain.circuit_changed(self.executor, self.key, old, new, reason)

    def before(self) -> None:
        """Let a call through, or raise ``CircuitOpenError``."""
        if self.state == CLOSED:
            return
        now = self.chain.clock.monotonic()
        if self.state == OPEN:
            left = self.opened_at + self.config.cooldown - now
            if left > 0:
                raise CircuitOpenError(
                    f"circuit breaker for executor {self.executor!r} (key {self.key!r}) is open "
                    f"after {self.reason}; calls fail fast until it half-opens in {left:.1f}s",
                    retry_after=left,
                    details={"key": str(self.key), "state": OPEN, "half_opens_in": left},
                )
            self._move(HALF_OPEN, f"cooldown of {self.config.cooldown:g}s elapsed")
        if self.probing:
            raise CircuitOpenError(
                f"circuit breaker for executor {self.executor!r} (key {self.key!r}) is "
                f"half-open and its trial call is still running; this call fails fast",
                retry_after=0.0,
                details={"key": str(self.key), "state": HALF_OPEN},
            )
        self.probing = True

    def success(self) -> None:
        if self.state == HALF_OPEN:
            self.probing = False
            self.consecutive = 0
            self.calls.clear()
            self._move(CLOSED, "the trial call succeeded")
            return
        self.consecutive = 0
        if self.config.failure_rate is not None:
            self._record(False)

    def failure(self, exc: BaseException) -> None:
        now = self.chain.clock.monotonic()
        error = type(exc).__name__
        if self.state == HALF_OPEN:
            self.probing = False
            self._open(now, f"the trial call failed ({error})")
            return
        if self.state == OPEN:
            return
        self.consecutive += 1
        threshold = self.config.failure_threshold
        if threshold is not None and self.consecutive >= threshold:
            self._open(now, f"{self.consecutive} consecutive failures (last: {error})")
            return
        rate = self.config.failure_rate
        if rate is not None:
            self._record(True)
            total = len(self.calls)
            failed = sum(1 for _, f in self.calls if f)
            if total >= self.config.min_calls and failed / total >= rate:
                self._open(now, f"{failed} of {total} calls failed within {self.config.window:g}s")

    def cancelled(self) -> None:
        if self.state == HALF_OPEN:
            self.probing = False

    def _record(self, failed: bool) -> None:
        now = self.chain.clock.monotonic()
        calls = self.calls
        calls.append((now, failed))
        horizon = now - self.config.window
        while calls and calls[0][0] < horizon:
            calls.popleft()

    def _open(self, now: float, reason: str) -> None:
        self.opened_at = now
        self.reason = reason
        self.consecutive = 0
        self.calls.clear()
        self._move(OPEN, reason)


class CircuitBreaker(Overlay):
    name = "circuit_breaker"
    description = "Fails fast while a target keeps failing; half-opens after a cooldown."
    Config = CircuitBreakerConfig

    def __init__(self, chain: OverlayChain) -> None:
        super().__init__(chain)
        self._tables: dict[Hashable, dict[Hashable, Breaker]] = {}

    def breakers(self) -> list[Breaker]:
        return [b for table in self._tables.values() for b in table.values()]

    def wrap(self, next: Call, executor: str, config: CircuitBreakerConfig) -> Call:
        keyed = key_function(config.key, executor)
        ignore = frozenset(config.ignore)
        # Calls with the same executor and options share breakers (looked up once, here).
        table = self._tables.setdefault((executor, config), {})
        chain = self.chain

        def breaker_for(key: Hashable) -> Breaker:
            breaker = table.get(key)
            if breaker is None:
                breaker = table[key] = Breaker(chain, executor, key, config)
            return breaker

        fixed = None if callable(keyed) else breaker_for(keyed)
        key_of: Callable[[Any, Context], Hashable] | None = keyed if callable(keyed) else None

        async def circuit_breaker(input: Any, ctx: Context) -> Any:
            breaker = fixed if key_of is None else breaker_for(key_of(input, ctx))
            assert breaker is not None
            breaker.before()
            try:
                out = await next(input, ctx)
            except asyncio.CancelledError:
                breaker.cancelled()
                raise
            except Exception as exc:
                if ignore and {c.__name__ for c in type(exc).__mro__} & ignore:
                    breaker.cancelled()
                else:
                    breaker.failure(exc)
                raise
            breaker.success()
            return out

        return circuit_breaker
