"""One JSON Schema for pipeline files, covering every executor's input and pattern's config.

Editors (e.g. with the YAML language server) use it to autocomplete and check pipeline
files. Anywhere a value is expected, an expression string (``$.path``) is accepted too.
"""

from __future__ import annotations

import copy
import typing
from typing import TYPE_CHECKING, Any

from workplex.durations import parse_duration
from workplex.pipeline.model import Pipeline

if TYPE_CHECKING:
    from workplex.patterns import PatternRegistry
    from workplex.registry import Registry

EXPRESSION = {"type": "string", "pattern": "^\\$", "description": "A JSONPath expression"}
DURATION = [
    {"type": "number", "minimum": 0},
    {"type": "string", "pattern": r"^\s*\d+(\.\d+)?\s*(ms|s|m|h|d|w)?\s*$"},
]


def _is_duration(annotation: Any, metadata: list[Any]) -> bool:
    """Whether a model field is a ``Duration`` (a number or ``30s``), possibly optional."""
    if any(getattr(m, "func", None) is parse_duration for m in metadata):
        return True
    return any(
        _is_duration(None, list(getattr(arg, "__metadata__", ())))
        for arg in typing.get_args(annotation)
    )


def _model_schema(model: Any) -> dict[str, Any]:
    """A model's JSON Schema, with duration fields accepting ``500ms``/``30s`` as files do."""
    schema: dict[str, Any] = model.model_json_schema()
    props = schema.get("properties", {})
    for name, info in model.model_fields.items():
        key = info.alias or name
        if key in props and _is_duration(info.annotation, list(info.metadata)):
            nullable = info.annotation is not float
            extra = {k: v for k, v in props[key].items() if k in ("description", "title", "default")}
            props[key] = {"anyOf": [*DURATION, *([{"type": "null"}] if nullable else [])], **extra}
    return schema


def _without_expression(schema: Any) -> Any:
    """``{"anyOf": [X, EXPRESSION]}`` -> X: executor names are never expressions."""
    if isinstance(schema, dict) and schema.get("anyOf", [None])[-1] == EXPRESSION:
        rest = [s for s in schema["anyOf"] if s != EXPRESSION]
        return rest[0] if len(rest) == 1 else schema
    return schema


def _name_executors(node: Any, names: list[str]) -> Any:
    """In a pattern's config schema, type the fields that name executors: a string
    ``executor`` (with its sibling ``input`` checked per executor) and a list ``executors``."""
    if isinstance(node, list):
        return [_name_executors(v, names) for v in node]
    if not isinstance(node, dict):
        return node
    out = {k: _name_executors(v, names) for k, v in node.items()}
    props = out.get("properties")
    if isinstance(props, dict):
        executor = _without_expression(props.get("executor"))
        if isinstance(executor, dict) and executor.get("type") == "string":
            props["executor"] = {**executor, "enum": names}
            if "input" in props:
                out["allOf"] = [
                    {
                        "if": {"properties": {"executor": {"const": n}}, "required": ["executor"]},
                        "then": {"properties": {"input": {"$ref": f"#/$defs/input_{n}"}}},
                    }
                    for n in names
                ]
        many = _without_expression(props.get("executors"))
        if isinstance(many, dict) and many.get("type") == "array":
            props["executors"] = {**many, "items": {"type": "string", "enum": names}}
    return out


def _allow_expressions(schema: Any) -> Any:
    """Let every property (recursively) be an expression string as well."""
    if isinstance(schema, dict):
        out = {k: _allow_expressions(v) for k, v in schema.items()}
        props = out.get("properties")
        if isinstance(props, dict):
            out["properties"] = {k: {"anyOf": [v, EXPRESSION]} for k, v in props.items()}
        if isinstance(out.get("items"), dict):
            out["items"] = {"anyOf": [out["items"], EXPRESSION]}
        if isinstance(out.get("additionalProperties"), dict):
            out["additionalProperties"] = {"anyOf": [out["additionalProperties"], EXPRESSION]}
        return out
    if isinstance(schema, list):
        return [_allow_expressions(v) for v in schema]
    return schema


def _lift_defs(schema: dict[str, Any], prefix: str, defs: dict[str, Any]) -> dict[str, Any]:
    """Move a sub-schema's ``$defs`` to the top, renamed under ``prefix`` to stay unique."""
    schema = copy.deepcopy(schema)
    local = schema.pop("$defs", {})
    renames = {name: f"{prefix}__{name}" for name in local}

    def fix(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                name = ref[len("#/$defs/") :]
                if name in renames:
                    node = {**node, "$ref": f"#/$defs/{renames[name]}"}
            return {k: fix(v) for k, v in node.items()}
        if isinstance(node, list):
            return [fix(v) for v in node]
        return node

    for name, sub in local.items():
        defs[renames[name]] = fix(sub)
    fixed: dict[str, Any] = fix(schema)
    return fixed


def pipeline_schema(registry: Registry, patterns: PatternRegistry | None = None) -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of pipeline files for the installed plugins."""
    if patterns is None:
        from workplex.patterns import PatternRegistry

        patterns = PatternRegistry()
    schema = Pipeline.model_json_schema(by_alias=True)
    defs: dict[str, Any] = schema.setdefault("$defs", {})
    stage = defs["Stage"]
    stage["properties"]["executor"] = {"type": "string", "enum": registry.names()}
    stage["properties"]["mode"] = {"type": "string", "enum": patterns.names(), "default": "single"}
    from workplex.overlays.retry import RetryConfig

    retry = _lift_defs(_model_schema(RetryConfig), "retry", defs)
    stage["properties"]["retry"] = {
        "anyOf": [retry, {"type": "integer", "minimum": 1}, {"type": "boolean"}, {"type": "null"}],
        "description": "Retry settings for this stage's tasks (the retry overlay's options).",
    }
    names = registry.names()
    rules: list[dict[str, Any]] = []
    for name in names:
        model = registry.executor_class(name).Input
        # One definition per executor, shared by stages and fork_join branches.
        defs[f"input_{name}"] = _lift_defs(
            _allow_expressions(_model_schema(model)), f"input_{name}", defs
        )
        rules.append(
            {
                "if": {"properties": {"executor": {"const": name}}, "required": ["executor"]},
                "then": {"properties": {"input": {"$ref": f"#/$defs/input_{name}"}}},
            }
        )
    for name, pattern in patterns.items().items():
        typed = _name_executors(_allow_expressions(_model_schema(pattern.Config)), names)
        cfg = _lift_defs(typed, f"config_{name}", defs)
        cond: dict[str, Any] = {"properties": {"mode": {"const": name}}}
        if name == "single":
            cond = {"anyOf": [{"not": {"required": ["mode"]}}, cond]}
        else:
            cond["required"] = ["mode"]
        rules.append({"if": cond, "then": {"properties": {"config": cfg}}})
    stage["allOf"] = rules
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "workplex pipeline"
    return schema
