"""Load-time errors: each names the file, the line, the stage and the field."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import CliRunner

from workplex.cli import app
from workplex.engine import Engine
from workplex.errors import PipelineError

Write = Callable[..., Path]

CASES = {
    "unknown stage in needs": (
        """
        name: p
        stages:
          - name: a
            executor: echo
          - name: b
            executor: echo
            needs: [nope]
        """,
        8,
        "b",
        "needs",
        "unknown stage 'nope'",
    ),
    "reference to a later stage": (
        """
        name: p
        stages:
          - name: a
            executor: echo
            input: {v: $.b.x}
          - name: b
            executor: echo
        """,
        6,
        "a",
        "input.v",
        "refers to stage 'b', which runs later (it waits for this stage)",
    ),
    "reference to a parallel stage without needs": (
        """
        name: p
        stages:
          - name: a
            executor: echo
          - name: b
            needs: []
            executor: echo
          - name: c
            needs: [a]
            executor: echo
            input: {v: $.b.x}
        """,
        12,
        "c",
        "input.v",
        "refers to stage 'b', which runs in parallel",
    ),
    "reference to an unknown stage": (
        """
        name: p
        stages:
          - name: a
            executor: echo
            input:
              nested: {deep: [1, $.ghost.x]}
        """,
        7,
        "a",
        "input.nested.deep[1]",
        "refers to unknown stage 'ghost'",
    ),
    "bad expression syntax": (
        """
        name: p
        stages:
          - name: a
            executor: echo
            input:
              v: "$.x[?(@"
        """,
        7,
        "a",
        "input.v",
        "bad expression '$.x[?(@'",
    ),
    "bad expression in if": (
        """
        name: p
        stages:
          - name: a
            executor: echo
            if: "$.trigger[?(@"
        """,
        6,
        "a",
        "if",
        "bad expression",
    ),
    "cycle in needs": (
        """
        name: p
        stages:
          - name: a
            executor: echo
            needs: [c]
          - name: b
            executor: echo
            needs: [a]
          - name: c
            executor: echo
            needs: [b]
        """,
        6,
        "a",
        "needs",
        "cycle in needs: a -> c -> b -> a",
    ),
    "unknown executor": (
        """
        name: p
        stages:
          - name: a
            executor: no-such-executor
        """,
        5,
        "a",
        "executor",
        "unknown executor 'no-such-executor'",
    ),
    "unknown executor in a broadcast": (
        """
        name: p
        stages:
          - name: a
            mode: broadcast
            config: {executors: [echo, nope]}
        """,
        6,
        "a",
        "config.executors[1]",
        "unknown executor 'nope'",
    ),
    "unknown pattern": (
        """
        name: p
        stages:
          - name: a
            mode: scater
            executor: echo
        """,
        5,
        "a",
        "mode",
        "unknown pattern 'scater'; installed: broadcast, fork_join, gather, scatter, single",
    ),
    "unknown key in a stage": (
        """
        name: p
        stages:
          - name: a
            executor: echo
            imput: {x: 1}
        """,
        6,
        "a",
        "imput",
        "unknown key",
    ),
    "unknown key in a pattern config": (
        """
        name: p
        stages:
          - name: a
            mode: scatter
            executor: echo
            scatter: {input: [1], as: x}
            config:
              max_paralel: 3
        """,
        9,
        "a",
        "config.max_paralel",
        "unknown key (pattern 'scatter')",
    ),
    "wrong type in a pattern config": (
        """
        name: p
        stages:
          - name: a
            mode: scatter
            executor: echo
            scatter: {input: [1], as: x}
            config:
              max_parallel: many
        """,
        9,
        "a",
        "config.max_parallel",
        "valid integer",
    ),
    "python input without function": (
        """
        name: p
        stages:
          - name: a
            executor: python
            input:
              args: [1]
        """,
        6,
        "a",
        "input.function",
        "Field required (executor 'python')",
    ),
    "command input of the wrong type": (
        """
        name: p
        stages:
          - name: a
            executor: command
            input:
              command: echo
              args: not-a-list
        """,
        8,
        "a",
        "input.args",
        "valid list (executor 'command')",
    ),
    "gather of an unknown stage": (
        """
        name: p
        stages:
          - name: a
            executor: echo
          - name: g
            mode: gather
            gather: {stage: ghost}
        """,
        8,
        "g",
        "gather.stage",
        "unknown stage 'ghost'",
    ),
    "scatter without its section": (
        """
        name: p
        stages:
          - name: a
            mode: scatter
            executor: echo
        """,
        5,
        "a",
        "",
        "mode scatter needs a `scatter: {input: $.path.to.list, as: item}` section",
    ),
    "duplicate stage names": (
        """
        name: p
        stages:
          - name: a
            executor: echo
          - name: a
            executor: echo
        """,
        6,
        "a",
        "name",
        "stage name 'a' is used twice (first at line 4)",
    ),
    "reserved stage name": (
        """
        name: p
        stages:
          - name: trigger
            executor: echo
        """,
        4,
        "trigger",
        "name",
        "reserved for expressions",
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_load_error_names_file_line_stage_and_field(
    engine: Engine, write: Write, case: str
) -> None:
    text, line, stage, field, message = CASES[case]
    path = write(text)
    with pytest.raises(PipelineError) as info:
        engine.load(path)
    assert len(info.value.problems) == 1, info.value.problems
    problem = info.value.problems[0]
    where = f"{path}:{line}: stage {stage!r}: "
    assert problem.startswith(where), problem
    if field:
        assert f"field {field!r}: " in problem, problem
    assert message in problem, problem


def test_not_yaml_names_the_file_and_line(engine: Engine, write: Write) -> None:
    path = write("name: p\nstages:\n  - name: a\n    input: {x: [1, 2}\n")
    with pytest.raises(PipelineError, match=rf"^{path}:4: not valid YAML"):
        engine.load(path)


def test_every_problem_of_a_file_is_reported_at_once(engine: Engine, write: Write) -> None:
    path = write("""
        name: many
        stages:
          - name: a
            executor: echoo
          - name: b
            mode: scatterx
            executor: echo
          - name: c
            executor: python
            input: {args: [1]}
            needs: [zzz]
          - name: d
            executor: echo
            input: {v: $.e.x}
          - name: e
            executor: echo
        """)
    with pytest.raises(PipelineError) as info:
        engine.load(path)
    problems = info.value.problems
    assert len(problems) == 5, problems
    assert str(info.value).startswith("5 problems:")
    for fragment in ("'echoo'", "'scatterx'", "'zzz'", "input.function", "which runs later"):
        assert sum(fragment in p for p in problems) == 1, fragment


def test_structural_problems_are_reported_together(engine: Engine, write: Write) -> None:
    path = write("""
        name: many
        stages:
          - name: a
            executor: echo
            bogus: 1
          - name: b
            executor: echo
            needs: 5
            timeout: soon
        """)
    with pytest.raises(PipelineError) as info:
        engine.load(path)
    problems = info.value.problems
    assert len(problems) == 3, problems
    assert problems[0].startswith(f"{path}:6: stage 'a': field 'bogus': unknown key")
    assert any(p.startswith(f"{path}:9: stage 'b': field 'needs'") for p in problems)
    assert any(p.startswith(f"{path}:10: stage 'b': field 'timeout'") for p in problems)


def test_validate_command_lists_all_problems_and_exits_2(
    write: Write, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("WORKPLEX_CONFIG", raising=False)
    good = write("name: good\nstages:\n  - {name: a, executor: echo}\n", "good.yaml")
    bad = write(
        """
        name: bad
        stages:
          - name: a
            executor: echoo
          - name: b
            executor: echo
            needs: [zzz]
            input: {v: $.a.x}
        """,
        "bad.yaml",
    )
    result = CliRunner().invoke(app, ["validate", str(good), str(bad)])
    assert result.exit_code == 2
    assert f"ok: {good} (pipeline 'good', 1 stages)" in result.stdout
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 3, result.stderr
    assert all(line.startswith(f"error: {bad}:") for line in errors)
    assert any("unknown executor 'echoo'" in line for line in errors)
    assert any("unknown stage 'zzz'" in line for line in errors)
    # `needs: [zzz]` replaces the default dependency on `a`, so `$.a` is a parallel stage.
    assert any(
        ":9: stage 'b': field 'input.v'" in line and "in parallel" in line for line in errors
    )

    ok = CliRunner().invoke(app, ["validate", str(good)])
    assert ok.exit_code == 0


def test_structural_and_semantic_problems_are_reported_in_one_go(
    engine: Engine, write: Write
) -> None:
    # Bad optional keys (an unknown key, a bad timeout) do not hide the checks against
    # executors, patterns and needs: the rest of the file is still checked.
    path = write("""
        name: many
        stages:
          - name: a
            executor: echoo
            bogus: 1
            timeout: soon
          - name: b
            mode: scatterx
            executor: echo
            needs: [zzz]
        """)
    with pytest.raises(PipelineError) as info:
        engine.load(path)
    problems = info.value.problems
    assert len(problems) == 5, problems
    assert str(info.value).startswith("5 problems:")
    structural = sorted(problems[:2])  # first, in the model's own order
    assert structural[0].startswith(f"{path}:6: stage 'a': field 'bogus': unknown key")
    assert structural[1].startswith(f"{path}:7: stage 'a': field 'timeout': invalid duration")
    for fragment in ("unknown executor 'echoo'", "unknown pattern 'scatterx'", "'zzz'"):
        assert sum(fragment in p for p in problems[2:]) == 1, (fragment, problems)
    # pydantic's "Value error, " prefix is not part of the reason.
    assert not any("Value error" in p for p in problems)


def test_a_broken_required_part_stops_at_the_structural_problems(
    engine: Engine, write: Write
) -> None:
    # A stage without a name cannot be checked further: only the structure is reported.
    path = write("""
        name: p
        stages:
          - executor: echoo
          - name: b
            executor: echo
            timeout: soon
        """)
    with pytest.raises(PipelineError) as info:
        engine.load(path)
    problems = info.value.problems
    assert len(problems) == 2, problems
    assert problems[0].startswith(f"{path}:4: stage #1: field 'name'")
    assert "timeout" in problems[1]


def test_validate_names_a_stage_overlay_problem_once(
    write: Write, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("WORKPLEX_CONFIG", raising=False)
    bad = write(
        """
        name: p
        stages:
          - name: fetch
            executor: echo
            retry: {max_attempts: 0, foo: 1}
            description: 5
        """,
        "bad.yaml",
    )
    result = CliRunner().invoke(app, ["validate", str(bad)])
    assert result.exit_code == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 2, result.stderr
    assert errors[0].startswith(f"error: {bad}:7: stage 'fetch': field 'description'")
    assert errors[1] == (
        f"error: {bad}:6: stage 'fetch': retry.max_attempts: Input should be greater than 0; "
        "retry: unknown option 'foo'"
    )
