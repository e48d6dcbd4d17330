"""Engine semantics: the DAG, `if`, `needs`, fail-fast, `continue_on_error`,
`fail_on_nonzero`, cancellation of running processes, and the Python API."""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

import pytest

from workplex import Engine, Pipeline, Stage
from workplex.errors import ValidationError
from workplex.pipeline import ScatterSpec

from . import pl_funcs
from .conftest import FUNCS, LoadPipeline

CONDITIONAL = """
    name: cond
    inputs: {go: {type: boolean, default: false}}
    stages:
      - name: first
        executor: echo
        input: {v: 1}
      - name: maybe
        if: $.trigger.go
        executor: echo
        input: {ran: true}
      - name: after
        executor: echo
        input: {maybe: $.maybe}
"""


async def test_if_false_skips_the_stage_and_says_why(engine: Engine, load: LoadPipeline) -> None:
    result = await engine.run(load(CONDITIONAL))
    assert result.status == "succeeded"
    maybe = result.to_dict()["stages"]["maybe"]
    assert maybe["status"] == "skipped"
    assert "$.trigger.go" in maybe["info"]["reason"]
    assert maybe["tasks"]["total"] == 0
    # A stage after a skipped one still runs; the skipped stage's value is null.
    assert result.stages["after"].output == {"maybe": None}


async def test_if_true_runs_the_stage(engine: Engine, load: LoadPipeline) -> None:
    result = await engine.run(load(CONDITIONAL), {"go": True})
    assert result.stages["maybe"].status == "succeeded"
    assert result.stages["after"].output == {"maybe": {"ran": True}}


async def test_independent_stages_run_concurrently(engine: Engine, load: LoadPipeline) -> None:
    p = load("""
        name: parallel
        stages:
          - name: a
            executor: python
            input: {function: "{F}:overlap", args: [a, 2]}
          - name: b
            needs: []
            executor: python
            input: {function: "{F}:overlap", args: [b, 2]}
          - name: join
            needs: [a, b]
            executor: echo
            input: {a: $.a.name, b: $.b.name}
        """)
    result = await engine.run(p)
    assert result.stages["join"].output == {"a": "a", "b": "b"}
    assert pl_funcs.PEAK == 2
    (a0, a1), (b0, b1) = pl_funcs.SPANS["a"], pl_funcs.SPANS["b"]
    assert a0 < b1 and b0 < a1


async def test_a_stage_depends_on_the_one_before_it_by_default(
    engine: Engine, load: LoadPipeline
) -> None:
    p = load("""
        name: chain
        stages:
          - name: a
            executor: python
            input: {function: "{F}:overlap", args: [a, 1]}
          - name: b
            executor: python
            input: {function: "{F}:overlap", args: [b, 1]}
        """)
    result = await engine.run(p)
    assert result.status == "succeeded"
    assert pl_funcs.PEAK == 1
    assert pl_funcs.SPANS["a"][1] <= pl_funcs.SPANS["b"][0]
    assert result.stages["a"].ended is not None and result.stages["b"].started is not None
    assert result.stages["a"].ended <= result.stages["b"].started


FAILING = """
    name: failing
    stages:
      - name: bad
        executor: python
        input: {function: "{F}:boom", args: [exploded]}
        %s
      - name: next
        executor: echo
        input: {ok: true}
"""


async def test_a_failed_stage_fails_the_run_and_blocks_what_follows(
    engine: Engine, load: LoadPipeline
) -> None:
    result = await engine.run(load(FAILING % ""))
    data = result.to_dict()
    assert data["status"] == "failed"
    assert "exploded" in data["stages"]["bad"]["error"]
    assert "stage 'bad' failed" in data["error"]
    assert data["stages"]["next"]["status"] in ("pending", "cancelled")
    assert data["stages"]["next"]["output"] is None


async def test_continue_on_error_lets_the_run_go_on(engine: Engine, load: LoadPipeline) -> None:
    result = await engine.run(load(FAILING % "continue_on_error: true"))
    assert result.status == "succeeded"
    assert result.stages["bad"].status == "failed"
    assert "exploded" in (result.stages["bad"].error or "")
    assert result.stages["next"].status == "succeeded"


async def test_continue_on_error_in_a_scatter_runs_every_item(
    engine: Engine, load: LoadPipeline
) -> None:
    p = load("""
        name: keep-going
        stages:
          - name: each
            mode: scatter
            executor: python
            scatter: {input: [1, 2, 3, 4], as: n}
            input: {function: "{F}:fail_on", args: [$.n, [2]]}
            config: {max_parallel: 1}
            continue_on_error: true
        """)
    result = await engine.run(p)
    each = result.stages["each"]
    assert each.status == "failed" and each.total == 4 and each.failed == 1 and each.succeeded == 3
    assert each.output == [{"item": 1}, None, {"item": 3}, {"item": 4}]
    assert result.status == "succeeded"


NONZERO = """
    name: nonzero
    stages:
      - name: exit3
        executor: command
        input: {command: %s, args: [-c, "import sys; print('out'); sys.exit(3)"]}
        %s
"""


async def test_a_nonzero_exit_fails_the_stage_by_default(
    engine: Engine, load: LoadPipeline
) -> None:
    result = await engine.run(load(NONZERO % (sys.executable, "")))
    assert result.status == "failed"
    assert "exit code 3" in (result.stages["exit3"].error or "")


async def test_fail_on_nonzero_false_keeps_the_output(engine: Engine, load: LoadPipeline) -> None:
    result = await engine.run(load(NONZERO % (sys.executable, "fail_on_nonzero: false")))
    assert result.status == "succeeded"
    out = result.stages["exit3"].output
    assert out["exit_code"] == 3 and out["stdout"] == "out\n"


# ---- cancellation ----------------------------------------------------------------------------

CHILD_SCRIPT = """
import os, subprocess, sys, time
grandchild = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
path = os.path.join(sys.argv[1], f"{os.getpid()}.pid")
with open(path + ".tmp", "w") as f:
    f.write(f"{os.getpid()} {grandchild.pid}")
os.rename(path + ".tmp", path)
time.sleep(30)
"""


def _alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie waiting to be reaped does not count)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


async def test_a_failing_stage_stops_running_commands_of_a_parallel_stage(
    engine: Engine, load: LoadPipeline, tmp_path: Path
) -> None:
    pids_dir = tmp_path / "pids"
    pids_dir.mkdir()
    script = tmp_path / "child.py"
    script.write_text(CHILD_SCRIPT)
    p = load(f"""
        name: cancel
        stages:
          - name: slow
            mode: scatter
            executor: command
            scatter: {{input: [1, 2, 3], as: n}}
            input: {{command: {sys.executable}, args: ["{script}", "{pids_dir}"]}}
          - name: failing
            needs: []
            executor: python
            input: {{function: "{{F}}:fail_when_files", args: ["{pids_dir}", 3]}}
        """)
    result = await engine.run(p)
    data = result.to_dict()
    assert data["status"] == "failed"
    assert data["stages"]["failing"]["status"] == "failed"
    assert data["stages"]["slow"]["status"] == "cancelled"
    assert "the failing stage failed" in data["error"]

    pids = [int(x) for f in pids_dir.glob("*.pid") for x in f.read_text().split()]
    assert len(pids) == 6  # three children, three grandchildren
    # The engine returned after the kill; give the kernel a moment to finish tearing down.
    deadline = time.monotonic() + 10
    while any(_alive(pid) for pid in pids) and time.monotonic() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.02)
    assert [pid for pid in pids if _alive(pid)] == []


# ---- inputs ------------------------------------------------------------------------------------

DECLARED = """
    name: declared
    inputs:
      count: {type: integer}
      label: {type: string, default: none}
    stages:
      - name: show
        executor: echo
        input: {count: $.trigger.count, label: $.trigger.label}
"""


async def test_declared_inputs_fill_defaults_and_convert_cli_text(
    engine: Engine, load: LoadPipeline
) -> None:
    result = await engine.run(load(DECLARED), {"count": "3"})
    assert result.stages["show"].output == {"count": 3, "label": "none"}


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        ({}, "input 'count' is required (integer)"),
        ({"count": "many"}, "input 'count' must be of type integer, got str"),
        ({"count": True}, "input 'count' must be of type integer, got bool"),
        ({"count": 1, "extra": 2}, "unknown input(s) extra"),
    ],
)
async def test_bad_run_inputs_raise_validation_error(
    engine: Engine, load: LoadPipeline, inputs: dict[str, object], message: str
) -> None:
    with pytest.raises(ValidationError) as info:
        await engine.run(load(DECLARED), inputs)
    assert message in str(info.value)
    assert "pipeline 'declared'" in str(info.value)


# ---- the Python API ----------------------------------------------------------------------------

YAML_VERSION = """
    name: api
    inputs: {words: {type: array, default: [b, a, c]}}
    stages:
      - name: each
        mode: scatter
        executor: python
        scatter: {input: $.trigger.words, as: w}
        input: {function: "{F}:label", kwargs: {word: $.w, run: $.run.pipeline}}
      - name: all
        mode: gather
        gather: {stage: each, group_by: $.run}
        executor: echo
        input: {words: "$.group.items[*].word"}
"""


async def test_a_pipeline_built_in_python_gives_the_same_result_as_its_yaml(
    engine: Engine, load: LoadPipeline
) -> None:
    from workplex.pipeline import GatherSpec, InputSpec

    built = Pipeline(
        name="api",
        inputs={"words": InputSpec(type="array", default=["b", "a", "c"])},
        stages=[
            Stage(
                name="each",
                mode="scatter",
                executor="python",
                scatter=ScatterSpec(input="$.trigger.words", as_="w"),
                input={
                    "function": f"{FUNCS}:label",
                    "kwargs": {"word": "$.w", "run": "$.run.pipeline"},
                },
            ),
            Stage(
                name="all",
                mode="gather",
                executor="echo",
                gather=GatherSpec(stage="each", group_by="$.run"),
                input={"words": "$.group.items[*].word"},
            ),
        ],
    )
    from_yaml = load(YAML_VERSION)
    assert built.to_document() == from_yaml.to_document()
    assert Pipeline.from_document(built.to_document()) == built
    a = (await engine.run(built)).to_dict()
    b = (await engine.run(from_yaml)).to_dict()
    assert a["status"] == b["status"] == "succeeded"
    assert (
        a["stages"]["all"]["output"] == b["stages"]["all"]["output"] == [{"words": ["b", "a", "c"]}]
    )
    assert {n: s["output"] for n, s in a["stages"].items()} == {
        n: s["output"] for n, s in b["stages"].items()
    }


async def test_run_result_json_shape(engine: Engine, load: LoadPipeline) -> None:
    result = await engine.run(load(CONDITIONAL))
    data = result.to_dict()
    assert data["run_id"] == result.run_id and data["run_id"].startswith("r-")
    assert data["pipeline"] == "cond"
    assert data["status"] == "succeeded" and data["error"] is None
    assert list(data["stages"]) == ["first", "maybe", "after"]
    for stage in data["stages"].values():
        assert {"status", "output", "error", "started", "ended", "tasks"} <= set(stage)
    assert data["ended"] >= data["started"]
    assert data["duration"] == pytest.approx(data["ended"] - data["started"])


def test_engine_api_is_public() -> None:
    import workplex

    assert {"Engine", "Pipeline", "Stage"} <= set(workplex.__all__)
