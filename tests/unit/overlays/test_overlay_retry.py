"""retry: real flaky work (python functions, a command exiting 75), delays on an injected clock."""

from __future__ import annotations

import random
import sys
from pathlib import Path

import pytest

from tests.unit.overlays import flaky
from tests.unit.overlays.conftest import MakeRegistry, StepClock
from workplex.errors import ConfigError
from workplex.executor import Task

FLAKY = "tests.unit.overlays.flaky:fail_times"


def flaky_task(counter: Path, failures: int, **kwargs: object) -> Task:
    return Task(
        "python",
        {"function": FLAKY, "kwargs": {"counter": str(counter), "failures": failures, **kwargs}},
    )


async def test_given_a_function_failing_twice_when_retried_three_times_then_it_succeeds_on_the_third(
    make_registry: MakeRegistry, step_clock: StepClock, tmp_path: Path
) -> None:
    registry, _ = make_registry(
        {"python": {"retry": {"max_attempts": 3, "initial_delay": "1s"}}}, clock=step_clock
    )
    counter = tmp_path / "n"
    async with registry:
        result = await registry.execute(flaky_task(counter, 2))
    assert result.success, result.error
    assert result.output == {"calls": 3}
    assert result.metrics is not None and result.metrics.attempts == 3
    assert flaky.calls(str(counter)) == 3


async def test_given_more_failures_than_attempts_when_run_then_the_last_error_is_reported(
    make_registry: MakeRegistry, step_clock: StepClock, tmp_path: Path
) -> None:
    registry, _ = make_registry({"python": {"retry": {"max_attempts": 2}}}, clock=step_clock)
    counter = tmp_path / "n"
    async with registry:
        result = await registry.execute(flaky_task(counter, 5))
    assert not result.success and result.error is not None
    assert result.error.type == "RetryableError"
    assert result.error.message == "flaky failure 2"
    assert result.metrics is not None and result.metrics.attempts == 2
    assert flaky.calls(str(counter)) == 2


@pytest.mark.parametrize(
    ("backoff", "expected"),
    [
        ("fixed", [0.5, 0.5, 0.5, 0.5]),
        ("linear", [0.5, 1.0, 1.5, 2.0]),
        ("exponential", [0.5, 1.0, 2.0, 3.0]),  # 4.0 capped by max_delay
    ],
)
async def test_given_a_backoff_when_attempts_fail_then_the_delays_follow_it(
    make_registry: MakeRegistry,
    step_clock: StepClock,
    tmp_path: Path,
    backoff: str,
    expected: list[float],
) -> None:
    options = {"max_attempts": 5, "backoff": backoff, "initial_delay": "500ms", "max_delay": 3}
    registry, _ = make_registry({"python": {"retry": options}}, clock=step_clock)
    async with registry:
        result = await registry.execute(flaky_task(tmp_path / "n", 4))
    assert result.success
    assert step_clock.sleeps == expected


@pytest.mark.parametrize(("jitter", "low_share"), [("full", 0.0), ("equal", 0.5)])
async def test_given_jitter_when_attempts_fail_then_each_delay_stays_within_its_bounds(
    make_registry: MakeRegistry, step_clock: StepClock, tmp_path: Path, jitter: str, low_share: float
) -> None:
    options = {"max_attempts": 6, "backoff": "exponential", "initial_delay": 1, "jitter": jitter}
    registry, _ = make_registry(
        {"python": {"retry": options}}, clock=step_clock, random=random.Random(7)
    )
    async with registry:
        result = await registry.execute(flaky_task(tmp_path / "n", 5))
    assert result.success
    bases = [1.0, 2.0, 4.0, 8.0, 16.0]
    assert len(step_clock.sleeps) == 5
    for delay, base in zip(step_clock.sleeps, bases, strict=True):
        assert base * low_share <= delay <= base
    assert step_clock.sleeps != [b * low_share for b in bases]  # jitter actually varies


async def test_given_a_command_exiting_75_twice_when_exit_codes_lists_75_then_it_is_run_until_0(
    make_registry: MakeRegistry, step_clock: StepClock, tmp_path: Path
) -> None:
    registry, _ = make_registry(
        {"command": {"retry": {"max_attempts": 4, "exit_codes": [75], "initial_delay": 0.25}}},
        clock=step_clock,
    )
    counter = tmp_path / "runs"
    task = Task(
        "command",
        {"command": sys.executable, "args": ["-c", flaky.EXIT_75_SCRIPT, str(counter), "2"]},
    )
    async with registry:
        result = await registry.execute(task)
    assert result.success
    assert result.exit_code == 0
    assert result.metrics is not None and result.metrics.attempts == 3
    assert counter.read_text() == "3"
    assert step_clock.sleeps == [0.25, 0.5]


async def test_given_a_command_always_exiting_75_when_attempts_run_out_then_exit_75_is_the_outcome(
    make_registry: MakeRegistry, step_clock: StepClock, tmp_path: Path
) -> None:
    registry, _ = make_registry(
        {"command": {"retry": {"max_attempts": 2, "exit_codes": [75]}}}, clock=step_clock
    )
    counter = tmp_path / "runs"
    task = Task(
        "command",
        {"command": sys.executable, "args": ["-c", flaky.EXIT_75_SCRIPT, str(counter), "9"]},
    )
    async with registry:
        result = await registry.execute(task)
    assert result.success  # an exit code is an outcome, not an error
    assert result.exit_code == 75
    assert counter.read_text() == "2"


async def test_given_no_retry_on_when_that_error_is_raised_then_no_second_attempt_is_made(
    make_registry: MakeRegistry, step_clock: StepClock, tmp_path: Path
) -> None:
    registry, _ = make_registry(
        {"python": {"retry": {"max_attempts": 5, "no_retry_on": ["RetryableError"]}}},
        clock=step_clock,
    )
    counter = tmp_path / "n"
    async with registry:
        result = await registry.execute(flaky_task(counter, 1))
    assert not result.success
    assert flaky.calls(str(counter)) == 1


async def test_given_retry_on_a_foreign_error_when_it_is_raised_then_it_is_retried(
    make_registry: MakeRegistry, step_clock: StepClock, tmp_path: Path
) -> None:
    registry, _ = make_registry(
        {"python": {"retry": {"max_attempts": 3, "retry_on": ["ConnectionError"]}}},
        clock=step_clock,
    )
    async with registry:
        refused = await registry.execute(flaky_task(tmp_path / "a", 2, error="ConnectionRefusedError"))
        permanent = await registry.execute(flaky_task(tmp_path / "b", 2, error="RetryableError"))
    assert refused.success  # ConnectionRefusedError is a ConnectionError
    assert not permanent.success  # retry_on replaces the retryable flag
    assert flaky.calls(str(tmp_path / "b")) == 1


async def test_given_a_permanent_error_by_default_when_raised_then_it_is_not_retried(
    make_registry: MakeRegistry, step_clock: StepClock, tmp_path: Path
) -> None:
    registry, _ = make_registry({"python": {"retry": 5}}, clock=step_clock)
    counter = tmp_path / "n"
    async with registry:
        result = await registry.execute(flaky_task(counter, 1, error="PermanentError"))
    assert not result.success and result.error is not None
    assert result.error.type == "PermanentError"
    assert flaky.calls(str(counter)) == 1


async def test_given_statuses_when_an_error_carries_a_listed_status_then_it_is_retried(
    make_registry: MakeRegistry, step_clock: StepClock, tmp_path: Path
) -> None:
    registry, _ = make_registry(
        {"python": {"retry": {"max_attempts": 3, "statuses": [409]}}}, clock=step_clock
    )
    async with registry:
        listed = await registry.execute(
            flaky_task(tmp_path / "a", 1, error="PermanentError", status=409)
        )
        other = await registry.execute(
            flaky_task(tmp_path / "b", 1, error="PermanentError", status=400)
        )
    assert listed.success
    assert not other.success


async def test_given_retry_after_when_the_error_carries_it_then_it_is_the_delay_capped_by_max_delay(
    make_registry: MakeRegistry, step_clock: StepClock, tmp_path: Path
) -> None:
    registry, _ = make_registry(
        {"python": {"retry": {"max_attempts": 3, "initial_delay": 1, "max_delay": 5}}},
        clock=step_clock,
    )
    async with registry:
        short = await registry.execute(flaky_task(tmp_path / "a", 1, retry_after=2.5))
        long = await registry.execute(flaky_task(tmp_path / "b", 1, retry_after=90))
    assert short.success and long.success
    assert step_clock.sleeps == [2.5, 5.0]


async def test_given_a_total_deadline_when_the_next_delay_would_pass_it_then_retrying_stops(
    make_registry: MakeRegistry, step_clock: StepClock, tmp_path: Path
) -> None:
    options = {"max_attempts": 10, "backoff": "fixed", "initial_delay": 2, "deadline": "5s"}
    registry, _ = make_registry({"python": {"retry": options}}, clock=step_clock)
    counter = tmp_path / "n"
    async with registry:
        result = await registry.execute(flaky_task(counter, 9))
    assert not result.success
    assert step_clock.sleeps == [2.0, 2.0]  # a third delay would end at 6s > 5s
    assert flaky.calls(str(counter)) == 3


async def test_given_stage_settings_when_they_set_retry_then_they_win_over_the_config_file(
    make_registry: MakeRegistry, step_clock: StepClock, tmp_path: Path
) -> None:
    registry, _ = make_registry({"python": {"retry": {"max_attempts": 1}}}, clock=step_clock)
    call = registry.call_for("python", {"retry": {"max_attempts": 3}}, key="stage-a")
    async with registry:
        result = await registry.execute(flaky_task(tmp_path / "n", 2), call=call)
    assert result.success
    assert result.metrics is not None and result.metrics.attempts == 3


def test_given_an_unknown_retry_option_when_the_config_loads_then_the_error_names_it(
    make_registry: MakeRegistry,
) -> None:
    with pytest.raises(ConfigError) as info:
        make_registry({"http": {"retry": {"max_attempt": 3}}})
    message = str(info.value)
    assert "test.yaml: overlays.http" in message
    assert "retry: unknown option 'max_attempt'" in message


def test_given_a_bad_duration_when_validated_then_the_error_names_overlay_and_field(
    make_registry: MakeRegistry,
) -> None:
    with pytest.raises(ConfigError) as info:
        make_registry({"http": {"retry": {"initial_delay": "soon"}}})
    assert "retry.initial_delay" in str(info.value)
    assert "invalid duration 'soon'" in str(info.value)


@pytest.mark.parametrize(
    ("shorthand", "config_retry", "failures", "expect_success", "expect_calls"),
    [("3", None, 2, True, 3), ("false", 5, 2, False, 1), ("true", None, 9, False, 3)],
    ids=["retry-3", "retry-false-beats-config", "retry-true-defaults"],
)
async def test_given_a_stage_retry_shorthand_when_run_then_it_means_what_overlays_say(
    tmp_path: Path,
    make_registry: MakeRegistry,
    step_clock: StepClock,
    shorthand: str,
    config_retry: int | None,
    failures: int,
    expect_success: bool,
    expect_calls: int,
) -> None:
    from workplex.engine import Engine

    counter = tmp_path / "n"
    pipeline = tmp_path / "p.yaml"
    pipeline.write_text(
        "name: shorthand\n"
        "stages:\n"
        "  - name: flaky\n"
        "    executor: python\n"
        f"    input: {{function: '{FLAKY}', kwargs: {{counter: '{counter}', failures: {failures}}}}}\n"
        f"    retry: {shorthand}\n"
    )
    overlays = {"*": {"retry": {"max_attempts": config_retry}}} if config_retry else None
    registry, _ = make_registry(overlays, clock=step_clock)  # backoff sleeps are instant
    async with registry, Engine(registry) as engine:
        result = await engine.run(engine.load(pipeline))
    assert (result.status == "succeeded") is expect_success
    assert flaky.calls(str(counter)) == expect_calls
