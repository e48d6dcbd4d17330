"""circuit_breaker: opens, fails fast, half-opens after the cooldown, closes (injected clock)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.unit.overlays import flaky
from tests.unit.overlays.conftest import MakeRegistry, StepClock
from workplex.executor import Task

FLAKY = "tests.unit.overlays.flaky:fail_times"


def flaky_task(counter: Path, failures: int, host: str = "a") -> Task:
    kwargs = {"counter": str(counter), "failures": failures, "message": f"host {host} down"}
    return Task("python", {"function": FLAKY, "kwargs": kwargs, "args": []}, metadata={})


def breaker_settings(**options: object) -> dict[str, object]:
    return {"*": {"metrics": True}, "python": {"circuit_breaker": options}}


async def test_given_consecutive_failures_when_the_threshold_is_hit_then_calls_fail_fast_until_cooldown(
    make_registry: MakeRegistry, step_clock: StepClock, tmp_path: Path
) -> None:
    registry, chain = make_registry(
        breaker_settings(failure_threshold=3, cooldown="10s"), clock=step_clock
    )
    counter = tmp_path / "n"
    async with registry:
        first = [await registry.execute(flaky_task(counter, 4)) for _ in range(3)]
        assert [r.error.type for r in first if r.error] == ["RetryableError"] * 3
        assert chain.metrics_registry.get_sample_value(
            "workplex_circuit_state", {"executor": "python", "key": "python"}
        ) == 2.0

        # Open: the function is not called at all.
        step_clock.now += 4
        blocked = await registry.execute(flaky_task(counter, 4))
        assert blocked.error is not None and blocked.error.type == "CircuitOpenError"
        assert "is open after 3 consecutive failures" in blocked.error.message
        assert "half-opens in 6.0s" in blocked.error.message
        assert flaky.calls(str(counter)) == 3

        # Half-open: one trial call; it fails (call 4) and the circuit opens again.
        step_clock.now += 6
        trial = await registry.execute(flaky_task(counter, 4))
        assert trial.error is not None and trial.error.type == "RetryableError"
        again = await registry.execute(flaky_task(counter, 4))
        assert again.error is not None and again.error.type == "CircuitOpenError"
        assert "the trial call failed" in again.error.message

        # Next half-open: the trial succeeds and the circuit closes.
        step_clock.now += 10
        ok = await registry.execute(flaky_task(counter, 4))
        assert ok.success
        after = await registry.execute(flaky_task(counter, 4))
        assert after.success
    assert flaky.calls(str(counter)) == 6
    transitions = {
        state: chain.metrics_registry.get_sample_value(
            "workplex_circuit_transitions_total", {"executor": "python", "state": state}
        )
        for state in ("open", "half_open", "closed")
    }
    assert transitions == {"open": 2.0, "half_open": 2.0, "closed": 1.0}
    assert chain.metrics_registry.get_sample_value(
        "workplex_circuit_state", {"executor": "python", "key": "python"}
    ) == 0.0


async def test_given_a_failure_rate_when_enough_calls_in_the_window_fail_then_it_opens(
    make_registry: MakeRegistry, step_clock: StepClock, tmp_path: Path
) -> None:
    registry, _ = make_registry(
        breaker_settings(
            failure_threshold=None, failure_rate=0.5, window="1m", min_calls=4, cooldown=5
        ),
        clock=step_clock,
    )
    async with registry:
        outcomes = []
        for i in range(6):
            # Alternate: a failing call, then a succeeding one.
            failures = 1 if i % 2 == 0 else 0
            r = await registry.execute(flaky_task(tmp_path / f"c{i}", failures))
            outcomes.append(r.error.type if r.error else "ok")
    # Calls 1-3: fail, ok, fail (3 calls < min_calls); call 4 ok makes 2/4 = 0.5 ... but only
    # a failure opens it, so call 5 (3/5 failed) opens it and call 6 fails fast.
    assert outcomes == ["RetryableError", "ok", "RetryableError", "ok", "RetryableError",
                        "CircuitOpenError"]


async def test_given_a_key_on_the_input_when_one_host_fails_then_other_hosts_still_pass(
    make_registry: MakeRegistry, step_clock: StepClock, tmp_path: Path
) -> None:
    registry, _ = make_registry(
        breaker_settings(failure_threshold=2, key="$.kwargs.message"), clock=step_clock
    )
    async with registry:
        for _ in range(2):
            await registry.execute(flaky_task(tmp_path / "bad", 9, host="bad"))
        blocked = await registry.execute(flaky_task(tmp_path / "bad", 9, host="bad"))
        other = await registry.execute(flaky_task(tmp_path / "good", 0, host="good"))
    assert blocked.error is not None and blocked.error.type == "CircuitOpenError"
    assert "host bad down" in blocked.error.message  # the key names the target
    assert other.success


async def test_given_a_breaker_outside_retry_when_a_task_recovers_within_its_attempts_then_it_stays_closed(
    make_registry: MakeRegistry, step_clock: StepClock, tmp_path: Path
) -> None:
    settings = breaker_settings(failure_threshold=1)
    settings["python"]["retry"] = {"max_attempts": 3, "initial_delay": 0}  # type: ignore[index]
    registry, _ = make_registry(settings, clock=step_clock)
    async with registry:
        first = await registry.execute(flaky_task(tmp_path / "a", 2))
        second = await registry.execute(flaky_task(tmp_path / "b", 0))
    assert first.success and second.success


def test_given_a_circuit_that_opens_when_run_with_json_then_stdout_is_only_the_json_result(
    tmp_path: Path,
) -> None:
    root = Path(__file__).resolve().parents[3]
    counter = tmp_path / "n"
    pipeline = tmp_path / "breaker.yaml"
    pipeline.write_text(
        "name: breaker\n"
        "stages:\n"
        "  - name: calls\n"
        "    mode: scatter\n"
        "    executor: python\n"
        "    continue_on_error: true\n"
        "    scatter: {input: [1, 2, 3], as: n}\n"
        f"    input: {{function: '{FLAKY}', kwargs: {{counter: '{counter}', failures: 9}}}}\n"
        "    config: {max_parallel: 1}\n"
        "    overlays: {circuit_breaker: {failure_threshold: 1, cooldown: 60s}}\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "WORKPLEX_CONFIG"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(root), env.get("PYTHONPATH")]))
    done = subprocess.run(
        [sys.executable, "-m", "workplex.cli", "run", str(pipeline), "--json"],
        capture_output=True, text=True, cwd=tmp_path, env=env, timeout=60, check=False,
    )  # fmt: skip
    result = json.loads(done.stdout)  # nothing but the result on stdout
    assert result["stages"]["calls"]["status"] == "failed", done.stdout
    assert "circuit_breaker.state" in done.stderr
    assert "'closed'" in done.stderr and "'open'" in done.stderr
    assert flaky.calls(str(counter)) == 1  # the open circuit kept the others from running
