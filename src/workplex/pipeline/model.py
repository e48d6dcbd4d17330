"""The pipeline model: what a pipeline file says, as Pydantic models.

The same pipeline can be written in YAML or built in Python::

    >>> from workplex.pipeline import Pipeline, Stage
    >>> p = Pipeline(
    ...     name="hello",
    ...     inputs={"who": {"type": "string", "default": "world"}},
    ...     stages=[Stage(name="greet", executor="echo", input={"greeting": "$.trigger.who"})],
    ... )
    >>> p.stages[0].mode
    'single'
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from workplex.durations import parse_duration

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_\-]*$")
RESERVED_ROOTS = frozenset({"trigger", "env", "secrets", "group", "run"})


OptionalDuration = Annotated[
    float | None,
    # Validated by parse_duration (mode="before"); the schema shows what a file may say.
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "number", "minimum": 0},
                {"type": "string", "pattern": r"^\s*\d+(\.\d+)?\s*(ms|s|m|h|d|w)?\s*$"},
                {"type": "null"},
            ],
            "description": "Seconds, or a duration like 500ms, 30s, 2m, 1h.",
        }
    ),
]


InputType = Literal["string", "number", "integer", "boolean", "array", "object", "any"]
_PY_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "number": (int, float),
    "integer": (int,),
    "boolean": (bool,),
    "array": (list,),
    "object": (dict,),
}


class InputSpec(BaseModel):
    """One declared run input."""

    model_config = ConfigDict(extra="forbid")
    type: InputType = "any"
    default: Any = None
    required: bool | None = None
    description: str = ""

    @field_validator("default")
    @classmethod
    def _default_fits(cls, v: Any, info: ValidationInfo) -> Any:
        # A default of the wrong type would only fail at run time, in a stage far away.
        # null stays allowed: an optional input without a value.
        type_ = info.data.get("type")
        if v is None or type_ is None or type_ == "any" or fits_type(v, type_):
            return v
        raise ValueError(f"the default {v!r} is not of type {type_} (it is {_json_type(v)})")

    @property
    def is_required(self) -> bool:
        if self.required is not None:
            return self.required
        return "default" not in self.model_fields_set

    def check(self, name: str, value: Any) -> Any:
        """The value, converted from a CLI string when needed; ValueError when it does not fit."""
        if self.type == "any":
            return value
        if isinstance(value, str) and self.type != "string":
            value = _from_text(value, self.type)
        if not fits_type(value, self.type):
            raise ValueError(f"input {name!r} must be of type {self.type}, got {type(value).__name__}")
        return value


def fits_type(value: Any, type_: str) -> bool:
    """Whether ``value`` is of the declared input type (a bool is not a number)."""
    if type_ == "any":
        return True
    if type_ in ("number", "integer") and isinstance(value, bool):
        return False
    return isinstance(value, _PY_TYPES[type_])


def _json_type(value: Any) -> str:
    for name in ("boolean", "integer", "number", "string", "array", "object"):
        if fits_type(value, name):
            return name
    return type(value).__name__


def _from_text(text: str, type_: str) -> Any:
    import json

    try:
        if type_ == "integer":
            return int(text)
        if type_ == "number":
            return float(text)
        if type_ == "boolean":
            low = text.strip().lower()
            if low in ("true", "yes", "1", "on"):
                return True
            if low in ("false", "no", "0", "off"):
                return False
            raise ValueError
        return json.loads(text)
    except ValueError:
        return text


class ScatterSpec(BaseModel):
    """``scatter: {input: $.trigger.files, as: file}``: one task per item."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    input: Any
    as_: str = Field(default="item", alias="as")

    @field_validator("as_")
    @classmethod
    def _name(cls, v: str) -> str:
        if not _NAME.match(v):
            raise ValueError("must be a simple name (letters, digits, _ and -)")
        return v


class GatherSpec(BaseModel):
    """``gather: {stage: fetch, group_by: $.kind}``: a barrier on an earlier stage."""

    model_config = ConfigDict(extra="forbid")
    stage: str
    group_by: str | None = None


class Stage(BaseModel):
    """One stage of a pipeline."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    name: str
    mode: str = "single"
    executor: str | None = None
    input: Any = Field(default_factory=dict)
    scatter: ScatterSpec | None = None
    gather: GatherSpec | None = None
    config: dict[str, Any] = Field(default_factory=dict)
    needs: list[str] | None = None
    timeout: OptionalDuration | Literal[False] = None
    """A duration, or ``false`` to turn off a timeout the config file sets."""
    retry: dict[str, Any] | int | bool | None = None
    """The retry overlay's options, or its shorthands: ``3`` (max_attempts), ``true``
    (defaults), ``false`` (off, even if the config file turns it on)."""
    overlays: dict[str, Any] | None = None
    if_: str | None = Field(default=None, alias="if")
    continue_on_error: bool = False
    fail_on_nonzero: bool = True
    description: str = ""

    @field_validator("name")
    @classmethod
    def _stage_name(cls, v: str) -> str:
        if not _NAME.match(v):
            raise ValueError("a stage name must start with a letter or _ and use letters, digits, _ and -")
        if v in RESERVED_ROOTS:
            raise ValueError(f"{v!r} is reserved for expressions ($.{v})")
        return v

    @field_validator("timeout", mode="before")
    @classmethod
    def _timeout(cls, v: Any) -> Any:
        if v is None or v is False:
            return v
        return parse_duration(v)

    @field_validator("if_")
    @classmethod
    def _if(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith("$"):
            raise ValueError("must be a JSONPath expression starting with '$'")
        return v

    @field_validator("needs", mode="before")
    @classmethod
    def _needs(cls, v: Any) -> Any:
        return [v] if isinstance(v, str) else v

    def overlay_settings(self) -> dict[str, Any]:
        """This stage's own overlay settings: ``overlays:`` plus ``retry:`` and ``timeout:``."""
        settings: dict[str, Any] = dict(self.overlays or {})
        if self.retry is not None:
            settings["retry"] = self.retry
        if self.timeout is not None:
            settings["timeout"] = self.timeout
        return settings


class Pipeline(BaseModel):
    """A named list of stages with declared run inputs."""

    model_config = ConfigDict(extra="forbid")

    name: str
    description: str = ""
    inputs: dict[str, InputSpec] = Field(default_factory=dict)
    stages: list[Stage]

    # Where it came from (not part of the document): for error messages and resume.
    _path: str | None = None
    _source: str | None = None
    _marks: dict[tuple[Any, ...], int] | None = None

    @field_validator("inputs", mode="before")
    @classmethod
    def _inputs(cls, v: Any) -> Any:
        if isinstance(v, dict):
            return {k: (s if s is not None else {}) for k, s in v.items()}
        return v

    @model_validator(mode="after")
    def _unique(self) -> Pipeline:
        if not self.stages:
            raise ValueError("a pipeline needs at least one stage")
        seen: set[str] = set()
        for stage in self.stages:
            if stage.name in seen:
                raise ValueError(f"stage name {stage.name!r} is used twice")
            seen.add(stage.name)
        return self

    def __eq__(self, other: object) -> bool:
        # The document alone: where a pipeline was loaded from (_path, _source, _marks)
        # must not make a YAML pipeline differ from the same one built in code.
        if not isinstance(other, BaseModel):
            return NotImplemented
        return type(self) is type(other) and self.__dict__ == other.__dict__

    __hash__ = None  # type: ignore[assignment]  # mutable, like any non-frozen model

    @property
    def path(self) -> str | None:
        return self._path

    @property
    def source(self) -> str | None:
        return self._source

    def stage(self, name: str) -> Stage:
        for s in self.stages:
            if s.name == name:
                return s
        raise KeyError(name)

    def to_document(self) -> dict[str, Any]:
        """A JSON-able document that ``from_document`` turns back into this pipeline."""
        return self.model_dump(mode="json", by_alias=True, exclude_defaults=True)

    @classmethod
    def from_document(cls, doc: dict[str, Any], path: str | None = None) -> Pipeline:
        p = cls.model_validate(doc)
        p._path = path
        return p

    def line_of(self, *loc: Any) -> int | None:
        """The YAML line of the deepest known key along ``loc`` (1-based), if known."""
        if not self._marks:
            return None
        key = tuple(loc)
        while key:
            if key in self._marks:
                return self._marks[key]
            key = key[:-1]
        return None
