"""Secrets referenced as $.secrets.NAME reach the executor but never the run result or store."""

from __future__ import annotations

import json
from pathlib import Path

from workplex import Engine, Pipeline, Registry, Secrets, Stage
from workplex.store import Store

TOKEN = "s3cr3t-t0ken-value"


async def test_given_a_secret_in_a_stage_input_when_the_work_echoes_it_then_it_is_redacted(
    tmp_path: Path,
) -> None:
    pipeline = Pipeline(
        name="secretive",
        stages=[
            Stage(name="call", executor="echo", input={"auth": "$.secrets.TOKEN", "n": 1}),
            Stage(
                name="use",
                executor="python",
                input={"function": "os.path:join", "args": ["/x", "$.secrets.TOKEN"]},
            ),
        ],
    )
    store = await Store.open(f"sqlite:///{tmp_path / 'runs.db'}")
    try:
        registry = Registry(secrets=Secrets({"TOKEN": TOKEN}))
        async with registry, Engine(registry, store=store) as engine:
            result = await engine.run(pipeline)
        assert result.status == "succeeded"
        assert result.stages["call"].output == {"auth": "***", "n": 1}
        assert result.stages["use"].output == "/x/***"
        assert TOKEN not in json.dumps(result.to_dict())
        stored = await store.get_run(result.run_id)
        assert stored is not None
    finally:
        await store.close()
    files = [tmp_path / "runs.db", tmp_path / "runs.db-wal"]  # the database and its WAL
    for file in files:
        if file.exists():
            assert TOKEN.encode() not in file.read_bytes(), file
