"""concurrency and rate_limit: keyed limits, checked by counting real calls."""

from __future__ import annotations

import asyncio
from collections import Counter

from tests.unit.overlays import flaky
from tests.unit.overlays.conftest import MakeRegistry, VirtualClock
from workplex.executor import Task

TRACK = "tests.unit.overlays.flaky:track"


def track_task(name: str, group: str = "") -> Task:
    return Task("python", {"function": TRACK, "kwargs": {"name": name, "group": group}})


async def test_given_a_concurrency_limit_when_many_tasks_run_then_at_most_that_many_are_in_flight(
    make_registry: MakeRegistry,
) -> None:
    registry, _ = make_registry({"python": {"concurrency": {"limit": 3}}})
    async with registry:
        results = await asyncio.gather(*(registry.execute(track_task("c3")) for _ in range(20)))
    assert all(r.success for r in results)
    assert flaky.STATE["c3"]["calls"] == 20
    assert flaky.STATE["c3"]["peak"] == 3


async def test_given_no_concurrency_limit_when_many_tasks_run_then_they_overlap(
    make_registry: MakeRegistry,
) -> None:
    registry, _ = make_registry({})
    async with registry:
        await asyncio.gather(*(registry.execute(track_task("free")) for _ in range(20)))
    assert flaky.STATE["free"]["peak"] > 3  # so the test above can tell a limit from none


async def test_given_a_concurrency_key_on_the_input_when_tasks_differ_then_each_key_has_its_limit(
    make_registry: MakeRegistry,
) -> None:
    registry, _ = make_registry({"python": {"concurrency": {"limit": 1, "key": "$.kwargs.name"}}})
    async with registry:
        await asyncio.gather(
            *(registry.execute(track_task(name, "kg")) for name in ["ka", "kb", "kc"] * 6)
        )
    assert flaky.STATE["ka"]["peak"] == 1
    assert flaky.STATE["kb"]["peak"] == 1
    assert flaky.STATE["kc"]["peak"] == 1
    assert flaky.STATE["kg"]["peak"] == 3  # the three keys ran side by side


async def test_given_a_jsonpath_key_when_it_is_not_a_simple_path_then_jsonpath_is_used(
    make_registry: MakeRegistry,
) -> None:
    registry, _ = make_registry(
        {"python": {"concurrency": {"limit": 2, "key": "$['kwargs']['name']"}}}
    )
    async with registry:
        await asyncio.gather(
            *(registry.execute(track_task(name, "jg")) for name in ["ja", "jb"] * 5)
        )
    assert flaky.STATE["ja"]["peak"] == 2
    assert flaky.STATE["jb"]["peak"] == 2
    assert flaky.STATE["jg"]["peak"] == 4


async def test_given_a_rate_limit_when_tasks_start_then_each_period_has_rate_starts(
    make_registry: MakeRegistry, virtual_clock: VirtualClock
) -> None:
    flaky.STATE["rl"] = {"clock": virtual_clock, "starts": []}
    registry, _ = make_registry(
        {"python": {"rate_limit": {"rate": 2, "period": "1s", "burst": 1}}}, clock=virtual_clock
    )
    task = Task("python", {"function": "tests.unit.overlays.flaky:stamp", "kwargs": {"name": "rl"}})
    async with registry:
        results = await virtual_clock.run(
            asyncio.gather(*(registry.execute(task) for _ in range(10)))
        )
    assert all(r.success for r in results)
    starts = flaky.STATE["rl"]["starts"]
    assert starts == [i * 0.5 for i in range(10)]
    assert Counter(int(s) for s in starts) == {0: 2, 1: 2, 2: 2, 3: 2, 4: 2}


async def test_given_a_burst_when_tasks_arrive_together_then_burst_start_at_once_and_the_rest_at_rate(
    make_registry: MakeRegistry, virtual_clock: VirtualClock
) -> None:
    flaky.STATE["burst"] = {"clock": virtual_clock, "starts": []}
    registry, _ = make_registry(
        {"python": {"rate_limit": {"rate": 4, "period": "2s", "burst": 3}}}, clock=virtual_clock
    )
    task = Task(
        "python", {"function": "tests.unit.overlays.flaky:stamp", "kwargs": {"name": "burst"}}
    )
    async with registry:
        await virtual_clock.run(asyncio.gather(*(registry.execute(task) for _ in range(7))))
    assert flaky.STATE["burst"]["starts"] == [0.0, 0.0, 0.0, 0.5, 1.0, 1.5, 2.0]
