"""Crash test: a 1,000-task scatter killed with SIGKILL at random points, then resumed.

Every task appends its index to a file each time it executes. After each trial's resume
completes, every index is in the file, and no task the store had recorded as finished
before the resume appears twice (finished tasks are never executed again; unfinished ones
may be, at-least-once).
"""

from __future__ import annotations

import asyncio
import collections
import json
import random
import signal
import sys
from pathlib import Path

from workplex.store import Store

from .conftest import run_cli

TASKS = 1000
TRIALS = 20
SEED = 20240605

PIPELINE = """\
name: {name}
inputs:
  items: {{type: array}}
stages:
  - name: work
    mode: scatter
    executor: python
    scatter: {{input: $.trigger.items, as: item}}
    input:
      function: store_crash_work:mark
      kwargs: {{index: $.item, path: {lines}, pause: 0.001}}
    config: {{max_parallel: 8}}
  - name: after
    executor: echo
    input: {{done: true}}
"""


async def wait_for_run(store: Store, pipeline: str, proc: asyncio.subprocess.Process) -> str | None:
    """The id of the run once its row exists (None if the process ended first)."""
    for _ in range(6000):
        runs = await store.list_runs(pipeline=pipeline, limit=1)
        if runs:
            return runs[0].run_id
        if proc.returncode is not None:
            return None
        await asyncio.sleep(0.002)
    raise AssertionError(f"run of {pipeline} never appeared")


async def one_trial(
    trial: int, rng: random.Random, store: Store, url: str, tmp_path: Path, env: dict[str, str]
) -> bool:
    """Start a run, SIGKILL it at a random point, resume until it completes, check the
    lines. Returns whether the kill interrupted the run."""
    delay = rng.uniform(0.0, 0.4)
    name = f"crash-{tmp_path.name[-12:]}-{trial}"
    lines = tmp_path / f"lines-{trial}.txt"
    file = tmp_path / f"{name}.yaml"
    file.write_text(PIPELINE.format(name=name, lines=lines))
    inputs = tmp_path / "inputs.json"
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "workplex.cli",
        "run",
        str(file),
        "--inputs-file",
        str(inputs),
        "--store",
        url,
        "--json",
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        run_id = await wait_for_run(store, name, proc)
        # Kill somewhere between "run recorded" and "well into the scatter".
        await asyncio.sleep(delay)
        if proc.returncode is None:
            proc.send_signal(signal.SIGKILL)
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()
    assert run_id is not None, f"trial {trial}: run never recorded"
    before = await store.get_run(run_id)
    assert before is not None
    finished = {i for i, r in (await store.finished_tasks(run_id, "work")).items() if r.success}
    interrupted = before.status != "succeeded"
    if interrupted:
        code, out, err = await run_cli("resume", run_id, "--store", url, "--json", env=env)
        assert code == 0, f"trial {trial}: resume exited {code}: {err}"
        assert json.loads(out)["status"] == "succeeded", f"trial {trial}: {out}"
    after = await store.get_run(run_id)
    assert after is not None and after.status == "succeeded", f"trial {trial}"
    counts = collections.Counter(int(x) for x in lines.read_text().split())
    missing = set(range(TASKS)) - set(counts)
    assert not missing, f"trial {trial}: tasks never executed: {sorted(missing)[:10]}"
    twice = sorted(i for i in finished if counts[i] > 1)
    assert not twice, f"trial {trial}: finished tasks executed again: {twice[:10]}"
    recorded = await store.finished_tasks(run_id, "work")
    assert sorted(recorded) == list(range(TASKS))
    assert all(r.success and r.output == i for i, r in recorded.items())
    return interrupted


async def test_killed_runs_resume_without_redoing_finished_tasks(
    any_store_url: str, tmp_path: Path, cli_env: dict[str, str]
) -> None:
    rng = random.Random(SEED)
    (tmp_path / "inputs.json").write_text(json.dumps({"items": list(range(TASKS))}))
    store = await Store.open(any_store_url)
    # Trials overlap (each has its own run and file): most of a trial is process start-up
    # and sleeping tasks, so four at a time keep two cores busy.
    gate = asyncio.Semaphore(4)
    rngs = [random.Random(rng.random()) for _ in range(TRIALS)]

    async def limited(trial: int) -> bool:
        async with gate:
            return await one_trial(trial, rngs[trial], store, any_store_url, tmp_path, cli_env)

    try:
        interrupted = await asyncio.gather(*(limited(n) for n in range(TRIALS)))
    finally:
        await store.close()
    # The random kills must actually interrupt runs, or this test proves nothing.
    assert sum(interrupted) >= TRIALS // 2, interrupted
