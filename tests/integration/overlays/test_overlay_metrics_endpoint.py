"""metrics: scraped from the real HTTP endpoint that serve_metrics starts."""

from __future__ import annotations

from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.support import free_port
from workplex.config import parse_config
from workplex.executor import Task
from workplex.overlays import OverlayChain
from workplex.overlays.metrics import serve_metrics
from workplex.registry import Registry


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


async def test_given_metrics_on_when_tasks_run_then_the_endpoint_reports_counts_and_durations(
    tmp_path: Path,
) -> None:
    config = parse_config(
        {
            "overlays": {
                "*": {"metrics": True},
                "python": {"retry": {"max_attempts": 2, "initial_delay": 0}},
            }
        }
    )
    chain = OverlayChain.from_config(config)
    registry = Registry(config, overlays=chain)
    flaky = "tests.unit.overlays.flaky:fail_times"
    async with registry:
        for i in range(3):
            await registry.execute(Task("echo", {"i": i}))
        ok = await registry.execute(
            Task(
                "python",
                {"function": flaky, "kwargs": {"counter": str(tmp_path / "a"), "failures": 1}},
            )
        )
        bad = await registry.execute(
            Task(
                "python",
                {
                    "function": flaky,
                    "kwargs": {
                        "counter": str(tmp_path / "b"),
                        "failures": 5,
                        "error": "PermanentError",
                    },
                },
            )
        )
    assert ok.success and not bad.success
    server = serve_metrics(free_port(), "127.0.0.1", registry=chain)
    try:
        async with httpx.AsyncClient(timeout=5) as client:
            response = await client.get(server.url)
    finally:
        server.stop()
    assert response.status_code == 200
    got = samples(response.text)
    assert got[("workplex_tasks_total", (("executor", "echo"), ("outcome", "success")))] == 3
    assert got[("workplex_tasks_total", (("executor", "python"), ("outcome", "success")))] == 1
    assert got[("workplex_tasks_total", (("executor", "python"), ("outcome", "failed")))] == 1
    assert (
        got[("workplex_errors_total", (("error_type", "PermanentError"), ("executor", "python")))]
        == 1
    )
    assert got[("workplex_task_duration_seconds_count", (("executor", "echo"),))] == 3
    assert got[("workplex_task_attempts_sum", (("executor", "python"),))] == 3  # 2 + 1
    assert got[("workplex_tasks_in_flight", (("executor", "echo"),))] == 0
    # A dedicated registry: nothing from the process-wide default (e.g. python_info).
    assert not any(name.startswith("python_") for name, _ in got)
