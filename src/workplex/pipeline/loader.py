"""Reading pipeline files: YAML with line marks, so every error names file, line, stage, field."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError as PydanticValidationError

from workplex.errors import PipelineError, pydantic_reason, unreadable
from workplex.pipeline.model import Pipeline


class _Loader(yaml.SafeLoader):
    """SafeLoader (no arbitrary objects) that we walk ourselves to keep line numbers."""


def _build(node: yaml.Node, loader: _Loader, path: tuple[Any, ...], marks: dict[tuple[Any, ...], int]) -> Any:
    marks[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        loader.flatten_mapping(node)
        out: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            key = loader.construct_object(key_node, deep=True)
            if isinstance(key, list | dict):
                raise PipelineError(f"line {key_node.start_mark.line + 1}: a key cannot be a list or mapping")
            if key in out:
                raise PipelineError(f"line {key_node.start_mark.line + 1}: duplicate key {key!r}")
            out[key] = _build(value_node, loader, (*path, key), marks)
            marks[(*path, key)] = key_node.start_mark.line + 1
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_build(n, loader, (*path, i), marks) for i, n in enumerate(node.value)]
    return loader.construct_object(node, deep=True)


def parse_yaml(text: str, source: str) -> tuple[Any, dict[tuple[Any, ...], int]]:
    """The document and a map from key path to its 1-based line."""
    loader = _Loader(text)
    marks: dict[tuple[Any, ...], int] = {}
    try:
        node = loader.get_single_node()
        if node is None:
            return None, marks
        return _build(node, loader, (), marks), marks
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        line = f":{mark.line + 1}" if mark is not None else ""
        raise PipelineError(f"{source}{line}: not valid YAML: {exc.problem}") from exc
    except yaml.YAMLError as exc:
        raise PipelineError(f"{source}: not valid YAML: {exc}") from exc
    except PipelineError as exc:
        raise PipelineError(f"{source}: {exc}") from exc
    except RecursionError as exc:
        raise PipelineError(f"{source}: nested too deeply to read") from exc
    finally:
        loader.dispose()


def describe_loc(doc: Any, loc: tuple[Any, ...]) -> str:
    """``stage 'fetch': field 'input.url'`` for a pydantic location inside a pipeline."""
    if len(loc) >= 2 and loc[0] == "stages" and isinstance(loc[1], int):
        stages = doc.get("stages") if isinstance(doc, dict) else None
        name = None
        if isinstance(stages, list) and loc[1] < len(stages) and isinstance(stages[loc[1]], dict):
            name = stages[loc[1]].get("name")
        label = f"stage {name!r}" if name else f"stage #{loc[1] + 1}"
        rest = ".".join(str(p) for p in loc[2:])
        return f"{label}: field {rest!r}" if rest else label
    return f"field {'.'.join(str(p) for p in loc)!r}" if loc else "pipeline"


def pipeline_from_data(
    data: Any, source: str, marks: dict[tuple[Any, ...], int] | None = None, text: str | None = None
) -> Pipeline:
    """Validate a parsed document into a Pipeline; every problem is reported at once."""
    if not isinstance(data, dict):
        raise PipelineError(f"{source}: a pipeline file must be a mapping with `name` and `stages`")
    # Duplicate stage names are found here, not by the model, so the error has a line.
    problems = _duplicate_stages(data, source, marks)
    try:
        pipeline = Pipeline.model_validate(data)
    except PydanticValidationError as exc:
        for err in exc.errors(include_url=False):
            loc = tuple(err.get("loc", ()))
            if not loc and problems:
                continue  # the model's own duplicate-name error, already reported with its line
            line = _line(marks, loc)
            msg = pydantic_reason(err)
            problems.append(f"{source}{line}: {describe_loc(data, loc)}: {msg}")
        error = StructureError(problems[0] if len(problems) == 1 else "\n".join(problems), problems)
        error.partial = _salvage(data, exc.errors(include_url=False), source, marks)
        raise error from exc
    pipeline._path = source
    pipeline._source = text
    pipeline._marks = marks
    return pipeline


class StructureError(PipelineError):
    """The document does not fit the pipeline model.

    ``partial`` is the pipeline without the offending optional keys (None when a required
    part is broken), so the checks against executors and patterns can still run on the rest
    and ``workplex validate`` reports every problem of the file in one go.
    """

    partial: Pipeline | None = None


# Stage keys that may be left out without changing what the other checks see (dropping
# `needs`, `scatter`, `config`... would change dependencies or the pattern's checks).
_DROPPABLE_STAGE_KEYS = frozenset(
    {"timeout", "if", "retry", "overlays", "continue_on_error", "fail_on_nonzero", "description"}
)


def _salvage(
    data: dict[Any, Any],
    errors: list[Any],
    source: str,
    marks: dict[tuple[Any, ...], int] | None,
) -> Pipeline | None:
    """``data`` without the keys the model refused, as a Pipeline; None if that is not safe."""
    doc = dict(data)
    stages = [dict(s) if isinstance(s, dict) else s for s in doc.get("stages") or []]
    inputs = dict(doc["inputs"]) if isinstance(doc.get("inputs"), dict) else None
    for err in errors:
        loc = tuple(err.get("loc", ()))
        unknown = err.get("type") == "extra_forbidden"
        if len(loc) == 1 and (unknown or loc[0] == "description"):
            doc.pop(loc[0], None)
        elif len(loc) >= 2 and loc[0] == "inputs" and inputs is not None:
            # Keep the name declared (as `any`), so references to it are not reported too.
            inputs[loc[1]] = {}
        elif (
            len(loc) >= 3
            and loc[0] == "stages"
            and isinstance(loc[1], int)
            and loc[1] < len(stages)
            and isinstance(stages[loc[1]], dict)
            and ((unknown and len(loc) == 3) or loc[2] in _DROPPABLE_STAGE_KEYS)
        ):
            stages[loc[1]].pop(loc[2], None)
        else:
            return None
    doc["stages"] = stages
    if inputs is not None:
        doc["inputs"] = inputs
    try:
        pipeline = Pipeline.model_validate(doc)
    except PydanticValidationError:
        return None
    pipeline._path = source
    pipeline._marks = marks
    return pipeline


def _duplicate_stages(data: dict[Any, Any], source: str, marks: dict[tuple[Any, ...], int] | None) -> list[str]:
    stages = data.get("stages")
    if not isinstance(stages, list):
        return []
    first: dict[Any, int] = {}
    problems = []
    for i, stage in enumerate(stages):
        name = stage.get("name") if isinstance(stage, dict) else None
        if not isinstance(name, str):
            continue
        if name in first:
            line = _line(marks, ("stages", i, "name"))
            earlier = _line(marks, ("stages", first[name], "name")).lstrip(":")
            at = f" (first at line {earlier})" if earlier else ""
            problems.append(
                f"{source}{line}: stage {name!r}: field 'name': stage name {name!r} is used twice{at}"
            )
        else:
            first[name] = i
    return problems


def _line(marks: dict[tuple[Any, ...], int] | None, loc: tuple[Any, ...]) -> str:
    if not marks:
        return ""
    key = loc
    while key:
        if key in marks:
            return f":{marks[key]}"
        key = key[:-1]
    return ""


def read_pipeline(path: str | Path) -> Pipeline:
    """Parse and validate a pipeline file's structure (no registry checks)."""
    p = Path(path)
    try:
        text = p.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise PipelineError(f"cannot read pipeline file {p}: {unreadable(exc)}") from exc
    data, marks = parse_yaml(text, str(p))
    return pipeline_from_data(data, str(p), marks, text)
