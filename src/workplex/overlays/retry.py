"""``retry``: run a failed attempt again, with backoff and jitter, within a total deadline.

What is retried, in this order:

1. an error whose class (or a base class) is named in ``no_retry_on`` is never retried;
2. an error whose class (or a base class) is named in ``retry_on`` is retried;
3. an error carrying ``details["status"]`` listed in ``statuses`` (HTTP) is retried;
4. without ``retry_on``, an executor error marked retryable (``RetryableError``,
   ``TaskTimeoutError``, ...) is retried;
5. a successful output whose ``exit_code`` is listed in ``exit_codes`` (commands) is
   retried; when attempts run out that output is returned as it is (an exit code is an
   outcome, not an error).

Cancellation is never retried. ``ctx.attempt`` is set before each attempt, so the Result
counts attempts. ``deadline`` is checked on the chain's clock (an injected one in tests),
while the ``ctx.deadline`` it sets is, like every ``ctx.deadline``, a ``time.monotonic()``
value. An error's ``retry_after`` (e.g. an HTTP ``Retry-After``) replaces the
computed delay, capped by ``max_delay``.
"""

from __future__ import annotations

from time import monotonic
from typing import Any, Literal

from pydantic import Field, PositiveInt, model_validator

from workplex.errors import ExecutorError
from workplex.executor import Context
from workplex.overlays.chain import Duration, Overlay, OverlayConfig, exit_code_of
from workplex.registry import Call


class RetryConfig(OverlayConfig):
    max_attempts: PositiveInt = Field(3, description="Attempts in all, the first one included.")
    backoff: Literal["fixed", "linear", "exponential"] = Field(
        "exponential", description="How the delay grows: d, d*n, or d*multiplier**(n-1)."
    )
    initial_delay: Duration = Field(1.0, description="The delay after the first failure.")
    max_delay: Duration = Field(60.0, description="No delay (nor retry_after) exceeds this.")
    multiplier: float = Field(2.0, ge=1.0, description="Growth factor of exponential backoff.")
    jitter: Literal["none", "full", "equal"] = Field(
        "none", description="none; full: uniform(0, d); equal: d/2 + uniform(0, d/2)."
    )
    retry_on: tuple[str, ...] = Field(
        (), description="Error class names to retry (replaces the 'retryable' flag)."
    )
    no_retry_on: tuple[str, ...] = Field((), description="Error class names never retried.")
    exit_codes: tuple[int, ...] = Field((), description="Command exit codes to retry.")
    statuses: tuple[int, ...] = Field((), description="HTTP statuses to retry.")
    deadline: Duration | None = Field(
        None, description="Total time for all attempts and delays; no attempt starts past it."
    )

    @model_validator(mode="after")
    def _delays(self) -> RetryConfig:
        if self.max_delay < self.initial_delay:
            raise ValueError("max_delay must be at least initial_delay")
        return self

    def delay(self, failures: int) -> float:
        """The delay after the ``failures``-th failed attempt, before jitter."""
        base = self.initial_delay
        if self.backoff == "linear":
            base *= failures
        elif self.backoff == "exponential":
            base *= self.multiplier ** (failures - 1)
        return min(base, self.max_delay)


def _class_names(exc: BaseException) -> set[str]:
    return {cls.__name__ for cls in type(exc).__mro__}


class Retry(Overlay):
    name = "retry"
    description = "Retries failed attempts with backoff and jitter (per-attempt ctx.attempt)."
    Config = RetryConfig

    def coerce(self, value: Any) -> Any:
        # `retry: 3` is short for `retry: {max_attempts: 3}`.
        if isinstance(value, int) and not isinstance(value, bool):
            return {"max_attempts": value}
        return super().coerce(value)

    def wrap(self, next: Call, executor: str, config: RetryConfig) -> Call:
        clock = self.chain.clock
        rng = self.chain.random
        max_attempts = config.max_attempts
        exit_codes = frozenset(config.exit_codes)
        statuses = frozenset(config.statuses)
        retry_on = frozenset(config.retry_on)
        no_retry_on = frozenset(config.no_retry_on)
        jitter = config.jitter
        max_delay = config.max_delay
        total = config.deadline

        def should_retry(exc: Exception) -> bool:
            names = _class_names(exc)
            if no_retry_on and names & no_retry_on:
                return False
            if retry_on and names & retry_on:
                return True
            if statuses and getattr(exc, "details", {}).get("status") in statuses:
                return True
            return not retry_on and isinstance(exc, ExecutorError) and exc.retryable

        def retry_exit(out: Any) -> bool:
            return exit_code_of(out) in exit_codes

        def delay_after(failures: int, exc: Exception | None) -> float:
            retry_after = getattr(exc, "retry_after", None)
            if retry_after is not None:
                return min(float(retry_after), max_delay)
            delay = config.delay(failures)
            if jitter == "full":
                return float(rng.uniform(0.0, delay))
            if jitter == "equal":
                return float(delay / 2 + rng.uniform(0.0, delay / 2))
            return delay

        async def retry(input: Any, ctx: Context) -> Any:
            deadline_at: float | None = None
            if total is not None:
                # Retry decides on its own (possibly injected) clock; ctx.deadline is always
                # in time.monotonic() terms, as timeout and the executors compare it so.
                deadline_at = clock.monotonic() + total
                real_deadline = monotonic() + total
                if ctx.deadline is None or real_deadline < ctx.deadline:
                    ctx.deadline = real_deadline
            attempt = 1
            while True:
                ctx.attempt = attempt
                try:
                    out = await next(input, ctx)
                except Exception as exc:
                    if attempt >= max_attempts or not should_retry(exc):
                        raise
                    delay = delay_after(attempt, exc)
                    if deadline_at is not None and clock.monotonic() + delay >= deadline_at:
                        raise
                else:
                    if not exit_codes or attempt >= max_attempts or not retry_exit(out):
                        return out
                    delay = delay_after(attempt, None)
                    if deadline_at is not None and clock.monotonic() + delay >= deadline_at:
                        return out
                if delay > 0:
                    await clock.sleep(delay)
                attempt += 1

        return retry
