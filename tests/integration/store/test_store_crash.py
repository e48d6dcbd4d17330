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
      kwargs: {{index: $.item, path: {lines}, pause: 0.0005}}
    config: {{max_parallel: 4}}
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


async def test_killed_runs_resume_without_redoing_finished_tasks(
    any_store_url: str, tmp_path: Path, cli_env: dict[str, str]
) -> None:
    rng = random.Random(SEED)
    inputs = tmp_path / "inputs.json"
    inputs.write_text(json.dumps({"items": list(range(TASKS))}))
    store = await Store.open(any_store_url)
    killed_mid_run = 0
    try:
        for trial in range(TRIALS):
            name = f"crash-{tmp_path.name[-12:]}-{trial}"
            lines = tmp_path / f"lines-{trial}.txt"
            file = tmp_path / f"{name}.yaml"
            file.write_text(PIPELINE.format(name=name, lines=lines))
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "workplex.cli", "run", str(file),
                "--inputs-file", str(inputs), "--store", any_store_url, "--json",
                env=cli_env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
            )
            try:
                run_id = await wait_for_run(store, name, proc)
                # Kill somewhere between "run recorded" and "well into the scatter".
                await asyncio.sleep(rng.uniform(0.0, 0.5))
                if proc.returncode is None:
                    proc.send_signal(signal.SIGKILL)
            finally:
                if proc.returncode is None:
                    proc.kill()
                await proc.communicate()
            assert run_id is not None, f"trial {trial}: run never recorded"
            before = await store.get_run(run_id)
            assert before is not None
            finished = {
                i for i, r in (await store.finished_tasks(run_id, "work")).items() if r.success
            }
            if before.status != "succeeded":
                killed_mid_run += 1
                for _attempt in range(3):
                    code, out, err = await run_cli(
                        "resume", run_id, "--store", any_store_url, "--json", env=cli_env
                    )
                    assert code == 0, f"trial {trial}: resume exited {code}: {err}"
                    if json.loads(out)["status"] == "succeeded":
                        break
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
    finally:
        await store.close()
    # The random kills must actually interrupt runs, or this test proves nothing.
    assert killed_mid_run >= TRIALS // 2
