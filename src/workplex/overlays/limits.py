"""``concurrency`` and ``rate_limit``: how many attempts run at once, and how often they start.

Both are keyed: ``key: executor`` (the default, one limit for the executor), ``key: stage``
(one per pipeline stage), a JSONPath on the task input (``key: $.region``), or
``key: host($.url)`` (one per target host). Calls with the same key and the same options
share one limiter, across stages and calls.

Both sit inside ``retry``: every attempt takes a token and a slot, and a task waiting out
its backoff holds neither.
"""

from __future__ import annotations

import asyncio
import math
from collections import deque
from collections.abc import Callable, Hashable
from typing import Any

from pydantic import Field, PositiveFloat, PositiveInt, field_validator, model_validator

from workplex.executor import Context
from workplex.overlays.chain import Clock, Duration, Overlay, OverlayConfig, check_key, key_function
from workplex.registry import Call

_PRUNE_AT = 4096
"""Past this many keyed limiters, idle ones are dropped (keys taken from inputs are open-ended)."""


class KeyedConfig(OverlayConfig):
    key: str = Field(
        "executor", description="executor | stage | a JSONPath on the input | host($.url)"
    )

    @field_validator("key")
    @classmethod
    def _key(cls, v: str) -> str:
        return check_key(v)


# ---- concurrency -------------------------------------------------------------------------
class ConcurrencyConfig(KeyedConfig):
    limit: PositiveInt = Field(description="At most this many attempts in flight per key.")


class Slots:
    """A counting semaphore that hands a freed slot straight to the first waiter (FIFO)."""

    __slots__ = ("active", "limit", "waiters")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.active = 0
        self.waiters: deque[asyncio.Future[None]] = deque()

    @property
    def idle(self) -> bool:
        return self.active == 0 and not self.waiters

    async def acquire(self) -> None:
        if self.active < self.limit and not self.waiters:
            self.active += 1
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.waiters.append(fut)
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self.release()  # the slot was handed over just as we were cancelled
            else:
                self.waiters.remove(fut)
            raise

    def release(self) -> None:
        while self.waiters:
            fut = self.waiters.popleft()
            if not fut.done():
                fut.set_result(None)  # the slot passes on; `active` is unchanged
                return
        self.active -= 1


class Concurrency(Overlay):
    name = "concurrency"
    description = "At most `limit` attempts in flight per key."
    Config = ConcurrencyConfig

    def __init__(self, chain: Any) -> None:
        super().__init__(chain)
        self._tables: dict[Hashable, dict[Hashable, Slots]] = {}

    def coerce(self, value: Any) -> Any:
        if isinstance(value, int) and not isinstance(value, bool):
            return {"limit": value}
        return super().coerce(value)

    def wrap(self, next: Call, executor: str, config: ConcurrencyConfig) -> Call:
        keyed = key_function(config.key, executor)
        limit = config.limit
        # Calls with the same executor and options share limiters (looked up once, here).
        table = self._tables.setdefault((executor, config), {})

        def slots_for(key: Hashable) -> Slots:
            slots = table.get(key)
            if slots is None:
                if len(table) >= _PRUNE_AT:
                    for k in [k for k, s in table.items() if s.idle]:
                        del table[k]
                slots = table[key] = Slots(limit)
            return slots

        if not callable(keyed):
            fixed = slots_for(keyed)

            async def concurrency(input: Any, ctx: Context) -> Any:
                await fixed.acquire()
                try:
                    return await next(input, ctx)
                finally:
                    fixed.release()

            return concurrency
        key_of: Callable[[Any, Context], Hashable] = keyed

        async def keyed_concurrency(input: Any, ctx: Context) -> Any:
            slots = slots_for(key_of(input, ctx))
            await slots.acquire()
            try:
                return await next(input, ctx)
            finally:
                slots.release()

        return keyed_concurrency


# ---- rate limit --------------------------------------------------------------------------
class RateLimitConfig(KeyedConfig):
    rate: PositiveFloat = Field(description="Attempts allowed per `period`.")
    period: Duration = Field(1.0, description="The period `rate` is counted over.")
    burst: PositiveInt | None = Field(
        None, description="Bucket size: attempts that may start at once (default: rate)."
    )

    @model_validator(mode="after")
    def _period(self) -> RateLimitConfig:
        if self.period <= 0:
            raise ValueError("period must be more than 0")
        return self


class Bucket:
    """A token bucket. Waiters reserve their token up front (the count may go negative), so
    they start in arrival order, each at the earliest time the rate allows."""

    __slots__ = ("burst", "clock", "last", "per_token", "tokens")

    def __init__(self, clock: Clock, rate: float, period: float, burst: int) -> None:
        self.clock = clock
        self.per_token = period / rate
        self.burst = float(burst)
        self.tokens = float(burst)
        self.last = clock.monotonic()

    def _refill(self) -> None:
        now = self.clock.monotonic()
        tokens = self.tokens + (now - self.last) / self.per_token
        self.tokens = tokens if tokens < self.burst else self.burst
        self.last = now

    @property
    def idle(self) -> bool:
        self._refill()
        return self.tokens >= self.burst

    async def acquire(self) -> None:
        self._refill()
        self.tokens -= 1.0
        if self.tokens >= 0.0:
            return
        try:
            await self.clock.sleep(-self.tokens * self.per_token)
        except asyncio.CancelledError:
            self.tokens += 1.0  # give the reserved token back
            raise


class RateLimit(Overlay):
    name = "rate_limit"
    description = "Token bucket: at most `rate` attempts per `period` per key (waits for a token)."
    Config = RateLimitConfig

    def __init__(self, chain: Any) -> None:
        super().__init__(chain)
        self._tables: dict[Hashable, dict[Hashable, Bucket]] = {}

    def wrap(self, next: Call, executor: str, config: RateLimitConfig) -> Call:
        keyed = key_function(config.key, executor)
        table = self._tables.setdefault((executor, config), {})
        burst = config.burst or max(1, math.ceil(config.rate))
        clock = self.chain.clock

        def bucket_for(key: Hashable) -> Bucket:
            bucket = table.get(key)
            if bucket is None:
                if len(table) >= _PRUNE_AT:
                    for k in [k for k, b in table.items() if b.idle]:
                        del table[k]
                bucket = table[key] = Bucket(clock, config.rate, config.period, burst)
            return bucket

        if not callable(keyed):
            fixed = bucket_for(keyed)

            async def rate_limit(input: Any, ctx: Context) -> Any:
                await fixed.acquire()
                return await next(input, ctx)

            return rate_limit
        key_of: Callable[[Any, Context], Hashable] = keyed

        async def keyed_rate_limit(input: Any, ctx: Context) -> Any:
            await bucket_for(key_of(input, ctx)).acquire()
            return await next(input, ctx)

        return keyed_rate_limit
