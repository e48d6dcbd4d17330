"""JSONPath expressions in pipeline files, compiled once when the pipeline loads.

A string value that starts with ``$`` is a path into the run context: ``$.trigger.files``,
``$.fetch.status``, ``$.file.path`` (a scatter variable), ``$.group.items``, ``$.env.HOME``,
``$.secrets.TOKEN``. A simple path (names and integer indexes only, e.g. ``$.a.b[0]`` or
``$.a['x y']``) compiles to a tuple of keys walked by a tiny loop; anything else (wildcards,
filters, slices) goes through jsonpath-ng, compiled once too. ``$$`` at the start escapes a
literal dollar.

    >>> tpl = compile_template({"path": "$.file.path", "n": 1})
    >>> tpl.render({"file": {"path": "/tmp/a"}})
    {'path': '/tmp/a', 'n': 1}
    >>> compile_expr("$.items[*].id").evaluate({"items": [{"id": 1}, {"id": 2}]})
    [1, 2]
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

from workplex.errors import PipelineError

_SIMPLE = re.compile(
    r"""
    (?:\.(?P<name>[A-Za-z_][A-Za-z0-9_\-]*))   # .name (dashes allowed: stage names)
    | \[(?P<index>-?\d+)\]                     # [0]
    | \[(?P<q>['"])(?P<key>.*?)(?P=q)\]        # ['key']
    """,
    re.VERBOSE,
)


class Missing(LookupError):
    """An expression found nothing at run time."""


class Expr:
    """One compiled expression. ``evaluate(scope)`` returns its value."""

    __slots__ = ("_general", "_keys", "root", "text")

    def __init__(self, text: str, keys: tuple[Any, ...] | None, general: Any | None) -> None:
        self.text = text
        self._keys = keys
        self._general = general
        self.root: str | None = str(keys[0]) if keys else _general_root(text)

    @property
    def is_simple(self) -> bool:
        return self._keys is not None

    @property
    def keys(self) -> tuple[Any, ...] | None:
        """The keys of a simple path (``$.a.b[0]`` -> ``("a", "b", 0)``), else None."""
        return self._keys

    def evaluate(self, scope: Mapping[str, Any]) -> Any:
        """The value at this path; raises ``Missing`` when a simple path finds nothing.

        A general JSONPath returns the list of matches (one match: that value alone).
        """
        keys = self._keys
        if keys is not None:
            value: Any = scope
            for key in keys:
                try:
                    value = value[key]
                except (KeyError, IndexError, TypeError):
                    raise Missing(f"{self.text}: nothing at {key!r}") from None
            return value
        general: Any = self._general
        matches = [m.value for m in general.find(_plain(scope))]
        if not matches:
            raise Missing(f"{self.text}: no match")
        return matches[0] if len(matches) == 1 and not _is_multi(self.text) else matches

    def get(self, scope: Mapping[str, Any], default: Any = None) -> Any:
        try:
            return self.evaluate(scope)
        except Missing:
            return default

    def __repr__(self) -> str:
        return f"Expr({self.text!r})"


def _plain(scope: Mapping[str, Any]) -> Any:
    # jsonpath-ng wants real dicts; a scope may be a lightweight Mapping.
    return scope if isinstance(scope, dict) else dict(scope)


def _is_multi(text: str) -> bool:
    return any(tok in text for tok in ("*", "..", "?(", ":"))


def _general_root(text: str) -> str | None:
    m = re.match(r"\$\.([A-Za-z_][A-Za-z0-9_\-]*)", text)
    return m.group(1) if m else None


def parse_simple(text: str) -> tuple[Any, ...] | None:
    """The key tuple of a simple path, or None if the path needs the general engine."""
    if not text.startswith("$"):
        return None
    rest = text[1:]
    keys: list[Any] = []
    pos = 0
    while pos < len(rest):
        m = _SIMPLE.match(rest, pos)
        if m is None:
            return None
        if m.group("name") is not None:
            keys.append(m.group("name"))
        elif m.group("index") is not None:
            keys.append(int(m.group("index")))
        else:
            keys.append(m.group("key"))
        pos = m.end()
    return tuple(keys) if keys else None


def compile_expr(text: str, where: str = "") -> Expr:
    """Compile one expression; a syntax error is a ``PipelineError`` naming ``where``."""
    keys = parse_simple(text)
    if keys is not None:
        return Expr(text, keys, None)
    try:
        from jsonpath_ng.ext.parser import parse

        general = parse(text)
    except Exception as exc:
        prefix = f"{where}: " if where else ""
        raise PipelineError(f"{prefix}bad expression {text!r}: {exc}") from exc
    return Expr(text, None, general)


def is_expression(value: Any) -> bool:
    return isinstance(value, str) and value.startswith("$") and not value.startswith("$$")


Renderer = Callable[[Mapping[str, Any]], Any]


class Template:
    """A JSON value with expressions inside, compiled to one render function.

    A template without expressions renders to the same constant object every time (no copy).
    """

    __slots__ = ("constant", "exprs", "render", "source")

    def __init__(self, source: Any, render: Renderer, exprs: list[tuple[str, Expr]]) -> None:
        self.source = source
        self.render = render
        self.exprs = exprs
        """Every (field path, expression) inside, for load-time reference checks."""
        self.constant = not exprs

    def roots(self) -> set[str]:
        return {e.root for _, e in self.exprs if e.root}


def compile_template(value: Any, where: str = "") -> Template:
    """Compile every expression inside a JSON value (dicts, lists, strings)."""
    exprs: list[tuple[str, Expr]] = []
    render = _compile(value, where, "", exprs)
    if not exprs:
        const = _unescape(value)
        return Template(value, lambda _scope: const, exprs)
    return Template(value, render, exprs)


def _unescape(value: Any) -> Any:
    if isinstance(value, str):
        return value[1:] if value.startswith("$$") else value
    if isinstance(value, dict):
        return {k: _unescape(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_unescape(v) for v in value]
    return value


def _compile(value: Any, where: str, path: str, exprs: list[tuple[str, Expr]]) -> Renderer:
    if is_expression(value):
        expr = compile_expr(value, f"{where}{'.' if where and path else ''}{path}")
        exprs.append((path, expr))

        def evaluate(scope: Mapping[str, Any]) -> Any:
            try:
                return expr.evaluate(scope)
            except Missing as exc:
                raise Missing(f"{path or 'input'}: {exc}") from None

        return evaluate
    if isinstance(value, dict):
        parts = [(k, _compile(v, where, f"{path}.{k}" if path else str(k), exprs)) for k, v in value.items()]
        dynamic = [(k, r) for (k, r), v in zip(parts, value.values(), strict=True) if _has_expr(v)]
        if not dynamic:
            const = _unescape(value)
            return lambda _scope: const
        # Dynamic keys get a placeholder so the rendered dict keeps the file's key order.
        static = {k: None if _has_expr(v) else _unescape(v) for k, v in value.items()}

        def render_dict(scope: Mapping[str, Any]) -> Any:
            out = dict(static)
            for k, r in dynamic:
                out[k] = r(scope)
            return out

        return render_dict
    if isinstance(value, list):
        items = [_compile(v, where, f"{path}[{i}]", exprs) for i, v in enumerate(value)]
        if not any(_has_expr(v) for v in value):
            const_list = _unescape(value)
            return lambda _scope: const_list
        return lambda scope: [r(scope) for r in items]
    const = _unescape(value)
    return lambda _scope: const


def _has_expr(value: Any) -> bool:
    if is_expression(value):
        return True
    if isinstance(value, dict):
        return any(_has_expr(v) for v in value.values())
    if isinstance(value, list):
        return any(_has_expr(v) for v in value)
    return False


def truthy(value: Any) -> bool:
    """JSON truthiness for ``if:`` conditions: null, false, 0, "", [], {} and "false" are false."""
    if isinstance(value, str):
        return value.strip().lower() not in ("", "false", "0", "no", "off")
    return bool(value)
