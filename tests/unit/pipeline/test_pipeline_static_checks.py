"""Load-time checks: inputs with expressions, reserved names, declared inputs, pattern
sections, precise locations in fork_join/broadcast, and the pipeline JSON Schema."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from typer.testing import CliRunner

from workplex.cli import app
from workplex.engine import Engine
from workplex.errors import PipelineError

Write = Callable[..., Path]


def problems_of(engine: Engine, path: Path) -> list[str]:
    with pytest.raises(PipelineError) as info:
        engine.load(path)
    return list(info.value.problems)


def one(problems: list[str], prefix: str, reason: str) -> None:
    """Exactly one problem starts with ``prefix`` (file:line: stage: field) and says ``reason``."""
    found = [p for p in problems if p.startswith(prefix)]
    assert len(found) == 1, (prefix, problems)
    assert reason in found[0], (reason, found[0])


# ---- 1. inputs with expressions are still checked against the executor's schema ----------


def test_input_with_expressions_is_checked_field_by_field(engine: Engine, write: Write) -> None:
    path = write("""
        name: p
        inputs:
          a: {type: array}
        stages:
          - name: cmd
            executor: command
            input: {command: 5, args: "$.trigger.a", timeout: -3, bogus: 1}
          - name: typo
            executor: command
            input:
              comand: tr
              args: [$.trigger.a]
        """)
    problems = problems_of(engine, path)
    assert len(problems) == 5, problems
    where = f"{path}:8: stage 'cmd': field"
    one(problems, f"{where} 'input.command'", "valid string (executor 'command')")
    one(problems, f"{where} 'input.timeout'", "greater than 0")
    one(problems, f"{where} 'input.bogus'", "unknown key")
    one(problems, f"{path}:12: stage 'typo': field 'input.comand'", "unknown key")
    one(problems, f"{path}:11: stage 'typo': field 'input.command'", "Field required")
    # The expression-valued `args` is any value: no problem names it.
    assert not any("input.args" in p for p in problems), problems


def test_expression_fields_at_any_depth_are_any_value(engine: Engine, write: Write) -> None:
    # Expressions where a string, a list, an object or the whole input is expected: all fine.
    path = write("""
        name: p
        inputs:
          cmd: {type: object}
          n: {type: integer, default: 1}
        stages:
          - name: whole
            executor: command
            input: $.trigger.cmd
          - name: parts
            executor: command
            input: {command: $.trigger.cmd.name, args: [x, $.trigger.n], env: {A: $.trigger.n},
                    timeout: $.trigger.n}
          - name: py
            executor: python
            input: {function: "{F}:label", args: $.trigger.n, kwargs: {a: $.trigger.n, b: 2}}
          - name: any
            executor: echo
            input: $.trigger.cmd
          - name: dollars
            executor: command
            input: {command: "$$HOME"}
        """)
    pipeline = engine.load(path)
    assert [s.name for s in pipeline.stages] == ["whole", "parts", "py", "any", "dollars"]


def test_a_constant_list_item_next_to_an_expression_is_still_checked(
    engine: Engine, write: Write
) -> None:
    path = write("""
        name: p
        stages:
          - name: a
            executor: command
            input:
              command: echo
              args: [$.run.id, 7]
        """)
    problems = problems_of(engine, path)
    assert len(problems) == 1, problems
    one(problems, f"{path}:8: stage 'a': field 'input.args[1]'", "valid string")


# ---- 2. scatter.as cannot hide a reserved root or a stage ------------------------------------


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("trigger", "'trigger' is reserved for expressions ($.trigger)"),
        ("secrets", "'secrets' is reserved for expressions ($.secrets)"),
        ("first", "'first' is the name of a stage"),
    ],
)
def test_scatter_as_cannot_be_a_reserved_root_or_a_stage(
    engine: Engine, write: Write, name: str, reason: str
) -> None:
    path = write(f"""
        name: p
        stages:
          - name: first
            executor: echo
          - name: each
            mode: scatter
            executor: echo
            scatter:
              input: [1, 2]
              as: {name}
            input: {{v: $.{name}}}
        """)
    problems = problems_of(engine, path)
    one(problems, f"{path}:11: stage 'each': field 'scatter.as'", reason)


# ---- 3. a declared input's default must fit its type -----------------------------------------


def test_a_default_of_the_wrong_type_is_a_load_error(engine: Engine, write: Write) -> None:
    path = write("""
        name: p
        inputs:
          count:
            type: integer
            default: abc
          ok: {type: integer, default: null}
          ratio: {type: number, default: 2}
        stages:
          - name: a
            executor: echo
            input: {n: $.trigger.count}
        """)
    problems = problems_of(engine, path)
    # Only the default: the input stays declared, so `$.trigger.count` is not reported too.
    assert len(problems) == 1, problems
    one(problems, f"{path}:6: field 'inputs.count.default'",
        "the default 'abc' is not of type integer (it is string)")


def test_a_boolean_default_is_not_a_number(engine: Engine, write: Write) -> None:
    path = write("""
        name: p
        inputs:
          n: {type: number, default: true}
        stages:
          - {name: a, executor: echo}
        """)
    problems = problems_of(engine, path)
    one(problems, f"{path}:4: field 'inputs.n.default'", "not of type number (it is boolean)")


# ---- 4. $.trigger.NAME must be a declared input (when inputs are declared) -------------------


def test_an_undeclared_input_is_a_load_error(engine: Engine, write: Write) -> None:
    path = write("""
        name: p
        inputs:
          files: {type: array}
          limit: {type: integer, default: 3}
        stages:
          - name: each
            mode: scatter
            executor: echo
            scatter: {input: $.trigger.file, as: f}
            input: {n: $.trigger.limt, all: "$.trigger[*]", ok: $.trigger.files}
            if: $.trigger.go
        """)
    problems = problems_of(engine, path)
    assert len(problems) == 3, problems
    declared = "which is not declared; declared inputs: files, limit"
    one(problems, f"{path}:10: stage 'each': field 'scatter.input'",
        f"'$.trigger.file' refers to input 'file', {declared}")
    one(problems, f"{path}:11: stage 'each': field 'input.n'",
        f"'$.trigger.limt' refers to input 'limt', {declared}")
    one(problems, f"{path}:12: stage 'each': field 'if'", f"refers to input 'go', {declared}")


def test_without_declared_inputs_any_trigger_path_is_allowed(engine: Engine, write: Write) -> None:
    path = write("""
        name: p
        stages:
          - {name: a, executor: echo, input: {v: $.trigger.anything}}
        """)
    assert engine.load(path).stages[0].name == "a"


# ---- 5. tolerated_failures bounds; pattern sections that belong to another mode --------------


@pytest.mark.parametrize(
    ("value", "reason"),
    [('"150%"', "'150%' is more than 100%"), ("-1", "cannot be negative"),
     ('"-5%"', "must be a count or a percentage")],
)
def test_tolerated_failures_out_of_range(
    engine: Engine, write: Write, value: str, reason: str
) -> None:
    path = write(f"""
        name: p
        stages:
          - {{name: a, mode: scatter, executor: echo, scatter: {{input: [1]}}}}
          - name: b
            mode: gather
            gather: {{stage: a}}
            config:
              tolerated_failures: {value}
        """)
    problems = problems_of(engine, path)
    assert len(problems) == 1, problems
    one(problems, f"{path}:9: stage 'b': field 'config.tolerated_failures'", reason)


def test_tolerated_failures_of_100_percent_is_fine(engine: Engine, write: Write) -> None:
    path = write("""
        name: p
        stages:
          - {name: a, mode: scatter, executor: echo, scatter: {input: [1]}}
          - {name: b, mode: gather, gather: {stage: a}, config: {tolerated_failures: "100%"}}
        """)
    assert engine.load(path).stages[1].config == {"tolerated_failures": "100%"}


def test_a_section_of_another_mode_is_a_load_error(engine: Engine, write: Write) -> None:
    path = write("""
        name: p
        stages:
          - name: one
            executor: echo
            scatter: {input: [1, 2], as: x}
          - name: many
            mode: scatter
            executor: echo
            scatter: {input: [1, 2]}
            gather: {stage: one}
        """)
    problems = problems_of(engine, path)
    assert len(problems) == 2, problems
    one(problems, f"{path}:6: stage 'one': field 'scatter'",
        "a `scatter:` section does not belong to mode 'single' and would be ignored")
    one(problems, f"{path}:11: stage 'many': field 'gather'",
        "a `gather:` section does not belong to mode 'scatter'")


# ---- 6. precise locations in fork_join and broadcast -----------------------------------------


def test_fork_join_problems_name_the_branch(engine: Engine, write: Write) -> None:
    path = write("""
        name: p
        stages:
          - name: facts
            mode: fork_join
            config:
              branches:
                kernel:
                  executor: command
                  input: {command: uname, args: [-s]}
                broken:
                  executor: nope
                py:
                  executor: python
                  input:
                    args: [$.run.id]
        """)
    problems = problems_of(engine, path)
    assert len(problems) == 2, problems
    one(problems, f"{path}:12: stage 'facts': field 'config.branches.broken.executor'",
        "unknown executor 'nope'")
    one(problems, f"{path}:15: stage 'facts': field 'config.branches.py.input.function'",
        "Field required (executor 'python')")


def test_broadcast_problems_name_the_list_item(engine: Engine, write: Write) -> None:
    path = write("""
        name: p
        stages:
          - name: ask
            mode: broadcast
            input: {function: "platform:python_version"}
            config:
              executors:
                - echo
                - nope
        """)
    problems = problems_of(engine, path)
    assert len(problems) == 1, problems
    one(problems, f"{path}:10: stage 'ask': field 'config.executors[1]'", "unknown executor 'nope'")


# ---- 7. "runs later" only for a stage that waits for this one --------------------------------


def test_parallel_and_later_stages_are_told_apart(engine: Engine, write: Write) -> None:
    path = write("""
        name: p
        stages:
          - name: a
            executor: echo
            input: {x: $.side.v, y: $.next.v, z: $.collect}
          - name: side
            needs: []
            executor: echo
          - name: next
            needs: [a]
            executor: echo
          - name: spread
            mode: scatter
            needs: []
            executor: echo
            scatter: {input: [1]}
          - name: collect
            mode: gather
            needs: []
            gather: {stage: spread}
          - name: after
            needs: [collect]
            executor: echo
            input: {w: $.spread}
        """)
    problems = problems_of(engine, path)
    assert len(problems) == 3, problems
    where = f"{path}:6: stage 'a': field"
    one(problems, f"{where} 'input.x'",
        "'$.side.v' refers to stage 'side', which runs in parallel (add it to this stage's `needs`)")
    one(problems, f"{where} 'input.y'",
        "'$.next.v' refers to stage 'next', which runs later (it waits for this stage)")
    one(problems, f"{where} 'input.z'", "refers to stage 'collect', which runs in parallel")
    # `after` needs `collect`, which gathers `spread`: `$.spread` is allowed there.
    assert not any("'after'" in p for p in problems)


# ---- 8. the pipeline JSON Schema types branches, broadcast executors and retry ---------------


@pytest.fixture(scope="module")
def schema() -> dict[str, Any]:
    result = CliRunner().invoke(app, ["schema", "--pipeline"])
    assert result.exit_code == 0, result.output
    data: dict[str, Any] = json.loads(result.stdout)
    jsonschema.Draft202012Validator.check_schema(data)
    return data


def schema_errors(schema: dict[str, Any], stage: dict[str, Any]) -> list[str]:
    """Every message, including those inside `anyOf` alternatives (expressions or values)."""
    doc = {"name": "p", "stages": [stage]}
    out: list[str] = []
    todo = list(jsonschema.Draft202012Validator(schema).iter_errors(doc))
    while todo:
        error = todo.pop()
        out.append(error.message)
        todo.extend(error.context or [])
    return out


def fork_join(**branch: Any) -> dict[str, Any]:
    return {"name": "f", "mode": "fork_join", "config": {"branches": {"b": branch}}}


def test_schema_checks_fork_join_branches(schema: dict[str, Any]) -> None:
    good = fork_join(executor="command", input={"command": "uname", "args": "$.trigger.a"})
    assert schema_errors(schema, good) == []
    unknown = schema_errors(schema, fork_join(executor="nope"))
    assert any("'nope' is not one of" in m for m in unknown), unknown
    no_function = schema_errors(schema, fork_join(executor="python", input={"args": [1]}))
    assert any("'function' is a required property" in m for m in no_function), no_function
    typo = schema_errors(schema, fork_join(executor="command", input={"comand": "x"}))
    assert typo, "a misspelt command input key was accepted"


def test_schema_checks_broadcast_executors(schema: dict[str, Any]) -> None:
    stage = {"name": "b", "mode": "broadcast", "config": {"executors": ["echo", "python"]}}
    assert schema_errors(schema, stage) == []
    stage["config"] = {"executors": ["echo", "nope"]}
    found = schema_errors(schema, stage)
    assert any("'nope' is not one of" in m for m in found), found


def test_schema_types_retry_with_the_retry_overlay_options(schema: dict[str, Any]) -> None:
    stage: dict[str, Any] = {"name": "a", "executor": "echo"}
    stage["retry"] = {"max_attempts": 3, "backoff": "exponential", "initial_delay": "100ms"}
    assert schema_errors(schema, stage) == []
    stage["retry"] = {"max_atempts": 3}
    found = schema_errors(schema, stage)
    assert any("max_atempts" in m for m in found), found
    stage["retry"] = {"backoff": "sometimes"}
    found = schema_errors(schema, stage)
    assert any("'sometimes'" in m for m in found), found


def test_stage_level_executor_or_input_on_fork_join_and_broadcast_is_refused(
    engine: Engine, write: Write
) -> None:
    path = write("""
        name: p
        stages:
          - name: fj
            mode: fork_join
            executor: echo
            input: {a: 1}
            config:
              branches:
                left: {executor: echo, input: {x: 1}}
          - name: bc
            mode: broadcast
            executor: echo
            input: {a: 1}
            config: {executors: [echo]}
        """)
    problems = problems_of(engine, path)
    assert len(problems) == 3, problems
    fj = [p for p in problems if "stage 'fj'" in p]
    assert any("executor: a fork_join stage sets it per branch" in p for p in fj), fj
    assert any("input: a fork_join stage sets it per branch" in p for p in fj), fj
    assert any("stage 'bc'" in p and "executor: a broadcast stage names its executors" in p for p in problems)


def test_a_cycle_through_a_gather_is_a_load_error(engine: Engine, write: Write) -> None:
    # The gather waits for `s`, and `s` needs the gather: neither could ever start.
    path = write("""
        name: p
        stages:
          - name: g
            mode: gather
            executor: echo
            gather: {stage: s}
            input: {items: $.group}
            needs: []
          - name: s
            mode: scatter
            executor: echo
            needs: [g]
            scatter: {input: [1, 2], as: n}
            input: {n: $.n}
        """)
    problems = problems_of(engine, path)
    assert len(problems) == 1, problems
    assert "cycle in needs (through a gather" in problems[0]
    assert "g -> s -> g" in problems[0] or "s -> g -> s" in problems[0]


def test_an_overlay_key_naming_no_input_field_is_a_load_error(engine: Engine, write: Write) -> None:
    # A typo in a key path would put every task under one key (None) without a word.
    path = write("""
        name: p
        stages:
          - name: f
            executor: http
            input: {method: GET, url: "http://127.0.0.1:1/"}
            overlays:
              concurrency: {limit: 2, key: "host($.urll)"}
              circuit_breaker: {key: "$.url"}
              rate_limit: {rate: 5, period: 1s, key: "$.hots"}
        """)
    problems = problems_of(engine, path)
    assert len(problems) == 2, problems
    one(problems, f"{path}:8: stage 'f': field 'overlays.concurrency.key'", "no input field 'urll'")
    one(problems, f"{path}:10: stage 'f': field 'overlays.rate_limit.key'", "no input field 'hots'")
