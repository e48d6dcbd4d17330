"""One JSON Schema for pipeline files, covering every executor's input and pattern's config.

Editors (e.g. with the YAML language server) use it to autocomplete and check pipeline
files. Anywhere a value is expected, an expression string (``$.path``) is accepted too.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any

from workplex.pipeline.model import Pipeline

if TYPE_CHECKING:
    from workplex.patterns import PatternRegistry
    from workplex.registry import Registry

EXPRESSION = {"type": "string", "pattern": "^\\$", "description": "A JSONPath expression"}


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
    rules: list[dict[str, Any]] = []
    for name in registry.names():
        model = registry.executor_class(name).Input
        sub = _lift_defs(_allow_expressions(model.model_json_schema()), f"input_{name}", defs)
        rules.append(
            {
                "if": {"properties": {"executor": {"const": name}}, "required": ["executor"]},
                "then": {"properties": {"input": sub}},
            }
        )
    for name, pattern in patterns.items().items():
        cfg = _lift_defs(_allow_expressions(pattern.Config.model_json_schema()), f"config_{name}", defs)
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
