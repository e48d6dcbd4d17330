"""Checking a pipeline against the installed executors and patterns, and compiling it once.

The result, a ``Plan``, holds per stage: the pattern and its validated config, compiled
templates, the ``if`` expression, dependencies, and the overlay settings. Every problem is
collected, so ``workplex validate`` reports all of them at once, each naming the file, the
line, the stage and the field.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError as PydanticValidationError

from workplex.errors import PipelineError, ValidationError, pydantic_reason
from workplex.pipeline.expressions import (
    Expr,
    Template,
    compile_expr,
    compile_template,
    is_expression,
)
from workplex.pipeline.model import RESERVED_ROOTS, Pipeline, Stage

if TYPE_CHECKING:
    from pydantic_core import ErrorDetails

    from workplex.patterns import Pattern, PatternRegistry
    from workplex.registry import Registry


@dataclass(eq=False)
class StagePlan:
    stage: Stage
    pattern: Pattern
    config: Any
    templates: dict[str, Template]
    executors: list[str]
    needs: list[str]
    gathers: str | None
    condition: Expr | None
    settings: dict[str, Any]
    scatter_input: Expr | None = None
    downstream_gathers: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.stage.name


@dataclass(eq=False)
class Plan:
    pipeline: Pipeline
    stages: dict[str, StagePlan]
    order: list[str]

    def check_inputs(self, inputs: Mapping[str, Any] | None) -> dict[str, Any]:
        """Run inputs checked against the declared ones (defaults filled, types converted)."""
        given = dict(inputs or {})
        declared = self.pipeline.inputs
        out: dict[str, Any] = {}
        problems = []
        for name, spec in declared.items():
            if name in given:
                try:
                    out[name] = spec.check(name, given.pop(name))
                except ValueError as exc:
                    problems.append(str(exc))
            elif spec.is_required:
                problems.append(f"input {name!r} is required ({spec.type})")
            else:
                out[name] = spec.default
        if given and declared:
            problems.append(
                f"unknown input(s) {', '.join(sorted(given))}; declared: {', '.join(declared)}"
            )
        elif given:
            out.update(given)
        if problems:
            raise ValidationError(
                f"pipeline {self.pipeline.name!r}: " + "; ".join(problems),
                [("inputs", p) for p in problems],
            )
        return out


_KEY_ROOT = re.compile(r"\$\.([A-Za-z_][A-Za-z0-9_]*)")


def _key_problems(
    settings: Mapping[str, Any], input_models: Mapping[str, Any]
) -> list[tuple[str, str, str]]:
    """Overlay ``key`` paths whose first field no executor input of the stage has: a typo
    there would put every task under one key (``None``) without a word."""
    found = []
    for name, options in settings.items():
        key = options.get("key") if isinstance(options, dict) else None
        if not isinstance(key, str):
            continue
        for root in _KEY_ROOT.findall(key):
            for ex, model in input_models.items():
                known = _input_fields(model)
                if known is not None and root not in known:
                    found.append((
                        name, root,
                        f"key {key!r}: executor {ex!r} has no input field {root!r} "
                        f"(fields: {', '.join(sorted(known))})",
                    ))  # fmt: skip
    return found


def _input_fields(model: Any) -> set[str] | None:
    """Field names and aliases of a closed Input model; None when any key may appear."""
    fields = getattr(model, "model_fields", None)
    if not fields or getattr(model, "model_config", {}).get("extra") == "allow":
        return None
    names = set(fields)
    names.update(f.alias for f in fields.values() if f.alias)
    return names


def _path_loc(path: str) -> tuple[Any, ...]:
    """``a.b[1]`` -> ``("a", "b", 1)``: a template field path as YAML mark keys."""
    return tuple(
        int(part[1:-1]) if part.startswith("[") else part
        for part in re.findall(r"\[\d+\]|[^.\[\]]+", path)
    )


class _ExpressionValue:
    """Stands for an expression's value while an input is checked at load: any value fits."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "<expression>"


_EXPRESSION_VALUE = _ExpressionValue()


def _with_placeholders(
    value: Any, loc: tuple[Any, ...], found: list[tuple[Any, ...]]
) -> Any:
    """``value`` as the executor would get it, each expression replaced by a placeholder
    (its location appended to ``found``) and ``$$`` unescaped."""
    if is_expression(value):
        found.append(loc)
        return _EXPRESSION_VALUE
    if isinstance(value, str):
        return value[1:] if value.startswith("$$") else value
    if isinstance(value, dict):
        return {k: _with_placeholders(v, (*loc, k), found) for k, v in value.items()}
    if isinstance(value, list):
        return [_with_placeholders(v, (*loc, i), found) for i, v in enumerate(value)]
    return value


def _source_loc(value: Any, loc: tuple[Any, ...]) -> tuple[Any, ...]:
    """A pydantic error location as keys of the checked value: union member tags such as
    ``'list[str]'`` are dropped; a last key that is absent (a missing field) is kept."""
    out: list[Any] = []
    node = value
    for n, part in enumerate(loc):
        if isinstance(node, dict):
            if part in node:
                node = node[part]
                out.append(part)
            elif n == len(loc) - 1:
                out.append(part)
        elif isinstance(node, list):
            if isinstance(part, int) and -len(node) <= part < len(node):
                node = node[part]
                out.append(part)
        else:
            break  # a scalar or a placeholder: what is left are member tags
    return tuple(out)


# Errors at a model or container that holds an expression can not depend on its value.
_SHAPE_ERRORS = frozenset({"missing", "extra_forbidden", "model_type", "dict_type", "list_type"})


def static_input_errors(model: Any, source: Any) -> list[tuple[tuple[Any, ...], ErrorDetails]]:
    """Validation errors of the template ``source`` against an executor's Input model, with
    every expression-valued field taken as "any value": (location, pydantic error) pairs."""
    exprs: list[tuple[Any, ...]] = []
    value = _with_placeholders(source, (), exprs)
    try:
        model.model_validate(value)
    except PydanticValidationError as exc:
        errors = exc.errors(include_url=False)
    except Exception:
        # A validator that cannot cope with a placeholder: the input is only known at run time.
        return []
    else:
        return []
    out = []
    for err in errors:
        loc = _source_loc(value, tuple(err.get("loc", ())))
        if any(loc[: len(e)] == e for e in exprs):
            continue  # at or under an expression: any value may come
        if err.get("type") not in _SHAPE_ERRORS and any(e[: len(loc)] == loc for e in exprs):
            continue  # a check of a whole object that contains an expression
        out.append((loc, err))
    return out


def _dotted(loc: tuple[Any, ...]) -> str:
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc).lstrip(".")


def _where(pipeline: Pipeline, stage_index: int | None, *loc: Any) -> str:
    src = pipeline.path or f"pipeline {pipeline.name!r}"
    if stage_index is None:
        line = pipeline.line_of(*loc)
        return f"{src}{f':{line}' if line else ''}"
    line = pipeline.line_of("stages", stage_index, *loc)
    return f"{src}{f':{line}' if line else ''}"


def build_plan(
    pipeline: Pipeline,
    registry: Registry,
    patterns: PatternRegistry,
    *,
    check_executor: Any = None,
) -> Plan:
    """Check and compile ``pipeline``; raises ``PipelineError`` listing every problem.

    ``check_executor(name)`` may replace the local registry lookup (a distributed backend
    knows executors that only its workers have); it returns an Input model class, or None
    when the input cannot be checked statically, and raises ``ValidationError`` if unknown.
    """
    problems: list[str] = []
    names = [s.name for s in pipeline.stages]
    index_of = {n: i for i, n in enumerate(names)}
    plans: dict[str, StagePlan] = {}

    def problem(i: int | None, stage: str | None, fld: str, msg: str, *loc: Any) -> None:
        where = _where(pipeline, i, *loc)
        label = f"stage {stage!r}: " if stage else ""
        fld_label = f"field {fld!r}: " if fld else ""
        problems.append(f"{where}: {label}{fld_label}{msg}")

    # Dependencies: explicit needs, or the stage before.
    needs: dict[str, list[str]] = {}
    for i, stage in enumerate(pipeline.stages):
        if stage.needs is None:
            needs[stage.name] = [names[i - 1]] if i > 0 else []
        else:
            for dep in stage.needs:
                if dep not in index_of:
                    problem(i, stage.name, "needs", f"unknown stage {dep!r}", "needs")
                elif dep == stage.name:
                    problem(i, stage.name, "needs", "a stage cannot need itself", "needs")
            needs[stage.name] = [d for d in stage.needs if d in index_of and d != stage.name]

    # What each stage waits for, gathers included: a reference to a stage that waits for
    # this one "runs later"; any other stage outside `needs` runs in parallel.
    waits_for: dict[str, list[str]] = {}
    for stage in pipeline.stages:
        pat = patterns.get(stage.mode)
        gathered = pat.gathers(stage) if pat is not None else None
        waits_for[stage.name] = [*needs[stage.name], *([gathered] if gathered in index_of else [])]

    # Cycles, through `needs` and through gathers (a gather waits for the stage it gathers,
    # so a cycle through one would never start).
    order: list[str] = []
    state: dict[str, int] = {}

    def visit(n: str, trail: list[str]) -> None:
        if state.get(n) == 2:
            return
        if state.get(n) == 1:
            cycle = [*trail[trail.index(n) :], n]
            via_gather = any(b not in needs[a] for a, b in itertools.pairwise(cycle))
            what = "cycle in needs (through a gather, which waits for the stage it gathers)"
            problem(
                index_of[n], n, "needs",
                (what if via_gather else "cycle in needs") + ": " + " -> ".join(cycle), "needs",
            )  # fmt: skip
            return
        state[n] = 1
        for d in waits_for[n]:
            visit(d, [*trail, n])
        state[n] = 2
        order.append(n)

    for n in names:
        visit(n, [])

    def ancestors(n: str) -> set[str]:
        seen: set[str] = set()
        stack = list(needs[n])
        while stack:
            d = stack.pop()
            if d not in seen:
                seen.add(d)
                stack.extend(needs[d])
        return seen

    def waits_on(later: str, earlier: str) -> bool:
        seen: set[str] = set()
        stack = list(waits_for[later])
        while stack:
            d = stack.pop()
            if d == earlier:
                return True
            if d not in seen:
                seen.add(d)
                stack.extend(waits_for[d])
        return False

    declared_inputs = pipeline.inputs

    overlays = registry.overlays
    validate_overlays = getattr(overlays, "validate", None)

    for i, stage in enumerate(pipeline.stages):
        pattern = patterns.get(stage.mode)
        if pattern is None:
            problem(
                i, stage.name, "mode",
                f"unknown pattern {stage.mode!r}; installed: {', '.join(patterns.names())}", "mode",
            )
            continue
        try:
            config = pattern.Config.model_validate(stage.config)
        except PydanticValidationError as exc:
            for err in exc.errors(include_url=False):
                dotted = ".".join(str(p) for p in err.get("loc", ()))
                msg = pydantic_reason(err)
                problem(i, stage.name, f"config.{dotted}" if dotted else "config",
                        f"{msg} (pattern {stage.mode!r})", "config", *err.get("loc", ()))
            continue
        for msg in pattern.check(stage, config):
            problem(i, stage.name, "", msg, "mode")
        if pattern.sections is not None:
            for section in ("scatter", "gather"):
                if getattr(stage, section) is not None and section not in pattern.sections:
                    problem(
                        i, stage.name, section,
                        f"a `{section}:` section does not belong to mode {stage.mode!r} and "
                        f"would be ignored (mode {section} uses it)", section,
                    )
        if stage.scatter is not None:
            var = stage.scatter.as_
            if var in RESERVED_ROOTS:
                problem(i, stage.name, "scatter.as",
                        f"{var!r} is reserved for expressions ($.{var}); choose another name",
                        "scatter", "as")
            elif var in index_of:
                problem(i, stage.name, "scatter.as",
                        f"{var!r} is the name of a stage ($.{var} is its output); choose another name",
                        "scatter", "as")
        if pattern.needs_executor and not stage.executor:
            problem(i, stage.name, "executor", f"mode {stage.mode!r} needs an executor")
        executors = pattern.executors(stage, config)
        fields = pattern.executor_fields(stage, config)
        if [name for name, _ in fields] != executors:
            fields = [(ex, "executor") for ex in executors]  # a plugin that overrides executors()
        input_models: dict[str, Any] = {}
        for ex, ex_field in fields:
            try:
                if check_executor is not None:
                    input_models[ex] = check_executor(ex)
                else:
                    input_models[ex] = registry.executor_class(ex).Input
            except ValidationError as exc:
                problem(i, stage.name, ex_field, str(exc), *_path_loc(ex_field))
        settings = stage.overlay_settings()
        if settings and overlays is None:
            problem(
                i,
                stage.name,
                "",
                "sets retry/timeout/overlays, but the registry was built with overlays=None, "
                "so they would be ignored",
                "retry" if stage.retry is not None else ("timeout" if stage.timeout is not None else "overlays"),
            )
        elif settings and validate_overlays is not None:
            try:
                validate_overlays(settings, f"stage {stage.name!r}")
            except Exception as exc:
                # The chain's message starts with the `where` given above; say it once.
                msg = str(exc).removeprefix(f"stage {stage.name!r}: ")
                problem(i, stage.name, "", msg, "retry" if stage.retry is not None else "overlays")
            else:
                for overlay, _root, why in _key_problems(settings, input_models):
                    problem(
                        i, stage.name, f"overlays.{overlay}.key", why, "overlays", overlay, "key"
                    )

        # Expressions: compile, check their roots, validate static inputs.
        allowed = ancestors(stage.name)
        locals_ = pattern.locals(stage, config)
        gathers = pattern.gathers(stage)
        if gathers is not None:
            if gathers not in index_of:
                problem(i, stage.name, "gather.stage", f"unknown stage {gathers!r}", "gather", "stage")
            elif gathers == stage.name:
                problem(i, stage.name, "gather.stage", "a stage cannot gather itself", "gather", "stage")
            else:
                # A gather implicitly needs the stage it gathers (it waits on its tasks).
                if gathers not in needs[stage.name]:
                    needs[stage.name].append(gathers)
                allowed = allowed | {gathers} | ancestors(gathers)

        def check_roots(
            expr: Expr, fld: str, *loc: Any,
            i: int = i, stage: Stage = stage, locals_: set[str] = locals_, allowed: set[str] = allowed,
        ) -> None:
            root = expr.root
            keys = expr.keys
            if (
                root == "trigger" and root not in locals_ and declared_inputs and keys is not None
                and len(keys) > 1 and isinstance(keys[1], str) and keys[1] not in declared_inputs
            ):
                problem(
                    i, stage.name, fld,
                    f"{expr.text!r} refers to input {keys[1]!r}, which is not declared; "
                    f"declared inputs: {', '.join(declared_inputs)}", *loc,
                )
            if root is None or root in RESERVED_ROOTS or root in locals_:
                return
            if root not in index_of:
                problem(i, stage.name, fld, f"{expr.text!r} refers to unknown stage {root!r}", *loc)
            elif root not in allowed:
                if waits_on(root, stage.name):
                    why = "runs later (it waits for this stage)"
                else:
                    why = "runs in parallel (add it to this stage's `needs`)"
                problem(i, stage.name, fld, f"{expr.text!r} refers to stage {root!r}, which {why}", *loc)

        templates: dict[str, Template] = {}
        for key, (value, executor) in pattern.templates(stage, config).items():
            loc: tuple[Any, ...] = tuple(key.split("."))
            try:
                tpl = compile_template(value, f"stage {stage.name!r}: {key}")
            except PipelineError as exc:
                # The message is "stage 'x': input.path: bad expression ..."; keep the path.
                parts = str(exc).split(": ", 2)
                fld = parts[1] if len(parts) == 3 else key
                problem(i, stage.name, fld, parts[-1], *loc, *_path_loc(fld[len(key) + 1 :]))
                continue
            templates[key] = tpl
            for path, expr in tpl.exprs:
                check_roots(expr, f"{key}.{path}" if path else key, *loc, *_path_loc(path))
            targets = executor if isinstance(executor, list) else [executor] if executor else []
            for target in targets:
                model = input_models.get(target)
                if model is None:
                    continue
                for err_loc, err in static_input_errors(model, value):
                    sub = _dotted(err_loc)
                    problem(i, stage.name, f"{key}.{sub}" if sub else key,
                            f"{pydantic_reason(err)} (executor {target!r})", *loc, *err_loc)

        condition = None
        if stage.if_ is not None:
            try:
                condition = compile_expr(stage.if_)
                check_roots(condition, "if", "if")
            except PipelineError as exc:
                problem(i, stage.name, "if", str(exc), "if")
        scatter_input = None
        if stage.scatter is not None:
            if isinstance(stage.scatter.input, str) and stage.scatter.input.startswith("$"):
                try:
                    scatter_input = compile_expr(stage.scatter.input)
                    check_roots(scatter_input, "scatter.input", "scatter", "input")
                except PipelineError as exc:
                    problem(i, stage.name, "scatter.input", str(exc), "scatter", "input")
            elif not isinstance(stage.scatter.input, list):
                problem(i, stage.name, "scatter.input",
                        "must be an expression ($.path) or a list", "scatter", "input")
        plans[stage.name] = StagePlan(
            stage=stage,
            pattern=pattern,
            config=config,
            templates=templates,
            executors=executors,
            needs=needs[stage.name],
            gathers=gathers,
            condition=condition,
            settings=settings,
            scatter_input=scatter_input,
        )

    if problems:
        raise PipelineError(
            problems[0] if len(problems) == 1 else f"{len(problems)} problems:\n" + "\n".join(problems),
            problems,
        )
    for p in plans.values():
        if p.gathers:
            plans[p.gathers].downstream_gathers.append(p.name)
    return Plan(pipeline=pipeline, stages=plans, order=order)
