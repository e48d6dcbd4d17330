"""The overlay chain: an ordered list of overlays built once, in reverse, around a terminal call.

Every overlay has the shape of the call it wraps (``(input, ctx) -> output``) and holds the
next call. The default order, outermost first, is :data:`DEFAULT_ORDER`::

    tracing → logging → metrics → circuit_breaker → retry → rate_limit → concurrency
            → [attempt hooks] → timeout → executor

Why this order:

* ``retry`` is outside ``timeout``, so every attempt gets its own time limit.
* ``rate_limit`` and ``concurrency`` are inside ``retry``: each attempt takes a token and a
  slot, and a task sleeping through its backoff holds no concurrency slot (the slot protects
  the target, which is idle during the backoff). The token is taken before the slot, so no
  slot is held while waiting for a token.
* ``circuit_breaker`` is outside ``retry``: one task is one observation, and while the
  circuit is open no attempt (and no retry storm) reaches the target.
* ``tracing``, ``logging`` and ``metrics`` are outermost and see the whole task; their
  per-attempt parts (attempt spans, attempt log lines) are applied at the attempt position,
  just outside ``timeout``, so they see each attempt and its own outcome.

An overlay that is not configured is not in the chain at all: it costs nothing.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from importlib import metadata
from typing import TYPE_CHECKING, Any, ClassVar, Protocol
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, RootModel
from pydantic import ValidationError as PydanticValidationError

from workplex.durations import Duration, parse_duration
from workplex.errors import ConfigError, pydantic_reason
from workplex.executor import Context
from workplex.registry import Call, PluginError

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from workplex.config import Config
    from workplex.overlays.metrics import Collectors

ENTRY_POINT_GROUP = "workplex.overlays"

DEFAULT_ORDER: tuple[str, ...] = (
    "tracing",
    "logging",
    "metrics",
    "circuit_breaker",
    "retry",
    "rate_limit",
    "concurrency",
    "timeout",
)
"""The built-in overlays, outermost first. Attempt hooks run just outside ``timeout``."""

ATTEMPT_POSITION = "timeout"
"""Attempt-level hooks (``Overlay.wrap_attempt``) are applied just outside this overlay."""

GLOBAL_KEY = "*"
"""``overlays: {"*": {...}}`` in the config file applies to every executor."""

_stdlib_logger = logging.getLogger("workplex.overlays")


# ---- clock -------------------------------------------------------------------------------
class Clock(Protocol):
    """Time as the overlays see it; tests inject one to check delays without sleeping."""

    def monotonic(self) -> float: ...

    async def sleep(self, seconds: float) -> None: ...


class SystemClock:
    """The real clock: ``time.monotonic`` and ``asyncio.sleep``."""

    __slots__ = ()

    def monotonic(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


# ---- configs and keys --------------------------------------------------------------------
class OverlayConfig(BaseModel):
    """Base of every overlay's options: unknown keys are errors; frozen so it can key state."""

    model_config = ConfigDict(extra="forbid", frozen=True)


KeyFn = Callable[[Any, Context], Hashable]

_DOTTED = re.compile(r"^\$((?:\.[A-Za-z_][A-Za-z0-9_]*)+)$")
_HOST = re.compile(r"^host\((.+)\)$")


def key_function(key: str, executor: str) -> KeyFn | Hashable:
    """Compile a ``key`` option once.

    ``executor`` (one key for the executor), ``stage`` (one per pipeline stage), a JSONPath on
    the task input (``$.region``), or ``host($.url)`` (the host of a URL found by a JSONPath).
    Returns a constant for ``executor`` (no per-call work), else a function of (input, ctx).
    """
    if key == "executor":
        return executor
    if key == "stage":
        return _stage_key
    host = _HOST.match(key)
    getter = _path_getter(host.group(1) if host else key)
    if host:

        def host_key(input: Any, ctx: Context) -> Hashable:
            value = getter(input, ctx)
            return urlsplit(value).hostname if isinstance(value, str) else value

        return host_key
    return getter


def _stage_key(input: Any, ctx: Context) -> Hashable:
    return ctx.stage


def _path_getter(path: str) -> KeyFn:
    dotted = _DOTTED.match(path)
    if dotted:
        parts = tuple(dotted.group(1)[1:].split("."))

        # Simple paths skip JSONPath: key lookups, or attributes of the model itself
        # (by the field's JSON name, i.e. its alias).
        def dotted_key(input: Any, ctx: Context) -> Hashable:
            obj = input
            for part in parts:
                if isinstance(obj, Mapping):
                    obj = obj.get(part)
                elif isinstance(obj, BaseModel):
                    if isinstance(obj, RootModel):
                        obj = obj.root
                        obj = obj.get(part) if isinstance(obj, Mapping) else None
                    else:
                        obj = getattr(obj, _json_names(type(obj)).get(part, part), None)
                else:
                    obj = None
                if obj is None:
                    return None
            return _hashable(obj)

        return dotted_key
    try:
        from jsonpath_ng.ext.parser import parse as jsonpath_parse

        expr = jsonpath_parse(path)
    except Exception as exc:
        raise ValueError(
            f"invalid key {path!r}: use 'executor', 'stage', a JSONPath like '$.host', "
            f"or 'host($.url)' ({exc})"
        ) from exc

    def jsonpath_key(input: Any, ctx: Context) -> Hashable:
        data = input.model_dump(mode="json", by_alias=True) if isinstance(input, BaseModel) else input
        found = [m.value for m in expr.find(data)]
        if not found:
            return None
        return _hashable(found[0] if len(found) == 1 else found)

    return jsonpath_key


_NAMES: dict[type[BaseModel], dict[str, str]] = {}


def _json_names(cls: type[BaseModel]) -> dict[str, str]:
    """JSON name (alias) -> attribute name of a model's fields, computed once per class."""
    names = _NAMES.get(cls)
    if names is None:
        names = {(f.alias or n): n for n, f in cls.model_fields.items()}
        _NAMES[cls] = names
    return names


def _hashable(value: Any) -> Hashable:
    if isinstance(value, str | int | float | bool):
        return value
    try:
        hash(value)
    except TypeError:
        return repr(value)
    return value  # type: ignore[no-any-return]


def exit_code_of(out: Any) -> Any:
    """The ``exit_code`` of an output model or dict (None when it has none)."""
    if isinstance(out, Mapping):
        return out.get("exit_code")
    return getattr(out, "exit_code", None)


def check_key(value: str) -> str:
    """Validate a ``key`` option at load time (a bad JSONPath is a config error)."""
    key_function(value, "")
    return value


# ---- the overlay base --------------------------------------------------------------------
class Overlay:
    """Base class of every overlay.

    Set ``name`` and ``Config`` (an :class:`OverlayConfig` subclass), implement ``wrap``, and
    optionally ``wrap_attempt`` (applied once per attempt, inside retry). A plugin places
    itself with ``before = "name"`` or ``after = "name"`` (relative to the outermost-first
    order); without either it goes innermost, just around the executor.
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    Config: ClassVar[type[OverlayConfig]] = OverlayConfig
    before: ClassVar[str | None] = None
    after: ClassVar[str | None] = None

    def __init__(self, chain: OverlayChain) -> None:
        self.chain = chain

    def coerce(self, value: Any) -> Any:
        """Turn a shorthand value into the options mapping (``True`` enables with defaults)."""
        return {} if value is True else value

    def wrap(self, next: Call, executor: str, config: Any) -> Call:
        """Return the call that runs around ``next`` (may return ``next`` itself)."""
        return next

    def wrap_attempt(self, next: Call, executor: str, config: Any) -> Call | None:
        """The per-attempt part, or None (the default) when the overlay has none."""
        return None


@dataclass(frozen=True)
class OverlayInfo:
    """What ``workplex overlays`` shows about one overlay in the chain."""

    position: int
    name: str
    description: str
    distribution: str
    options: dict[str, Any]
    attempt_hook: bool

    def to_dict(self) -> dict[str, Any]:
        return {
            "position": self.position,
            "name": self.name,
            "description": self.description,
            "distribution": self.distribution,
            "attempt_hook": self.attempt_hook,
            "options": self.options,
        }


def check_overlay_class(obj: Any, distribution: str, entry_name: str = "") -> type[Overlay]:
    """Refuse a plugin that does not follow the overlay contract, naming its distribution."""
    where = f"overlay plugin {entry_name or getattr(obj, '__name__', obj)!r} from {distribution!r}"
    if not (isinstance(obj, type) and issubclass(obj, Overlay)):
        raise PluginError(f"{where}: {obj!r} is not a subclass of workplex.overlays.Overlay")
    if not isinstance(obj.name, str) or not obj.name:
        raise PluginError(f"{where}: the class does not set a `name`")
    if entry_name and entry_name != obj.name:
        raise PluginError(f"{where}: the entry point name differs from the class's {obj.name!r}")
    if not (isinstance(obj.Config, type) and issubclass(obj.Config, BaseModel)):
        raise PluginError(f"{where}: `Config` must be a pydantic BaseModel subclass")
    if obj.Config.model_config.get("extra") != "forbid":
        raise PluginError(f"{where}: `Config` must forbid unknown keys (subclass OverlayConfig)")
    if obj.before is not None and obj.after is not None:
        raise PluginError(f"{where}: set `before` or `after`, not both")
    return obj


# ---- the chain ---------------------------------------------------------------------------
class OverlayChain:
    """The ordered overlays of a deployment; implements the registry's ``OverlayBuilder``.

    ``defaults`` are settings applied to every executor (the config file's ``overlays: "*"``);
    the settings given to :meth:`build` (config file per executor, then a stage's own) win,
    overlay by overlay. A value of ``false``/``null`` turns an overlay off.
    """

    def __init__(
        self,
        overlays: Iterable[type[Overlay]] | None = None,
        *,
        discover: bool = True,
        defaults: Mapping[str, Any] | None = None,
        clock: Clock | None = None,
        tracer_provider: Any = None,
        random: Any = None,
    ) -> None:
        import random as random_module

        self.clock: Clock = clock or SystemClock()
        self.random: Any = random or random_module.Random()
        self.tracer_provider = tracer_provider
        self._order: list[Overlay] = []
        self._distribution: dict[str, str] = {}
        self._collectors: Collectors | None = None
        self.defaults: dict[str, Any] = {}
        if discover:
            self.discover()
        for cls in overlays or ():
            self.add(cls)
        if defaults:
            self.validate(defaults, f"overlays.{GLOBAL_KEY}")
            self.defaults = dict(defaults)

    @classmethod
    def from_config(cls, config: Config, **options: Any) -> OverlayChain:
        """The chain for a config file: discover overlays, check every ``overlays:`` entry."""
        chain = cls(**options)
        for executor, settings in config.overlays.items():
            chain.validate(settings, f"{config.source}: overlays.{executor}")
        chain.defaults = dict(config.overlays.get(GLOBAL_KEY) or {})
        return chain

    # ---- registration ---------------------------------------------------------------
    def discover(self) -> None:
        """Add every overlay advertised in the ``workplex.overlays`` entry-point group.

        Built-ins (those in :data:`DEFAULT_ORDER`) are placed first, in that order, so that
        plugins can refer to them with ``before``/``after``.
        """
        found: list[tuple[int, type[Overlay], str]] = []
        for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
            dist = ep.dist.name if ep.dist is not None else "(unknown distribution)"
            try:
                obj = ep.load()
            except Exception as exc:
                raise PluginError(
                    f"overlay plugin {ep.name!r} from {dist!r} failed to import ({ep.value}): "
                    f"{type(exc).__name__}: {exc}"
                ) from exc
            cls = check_overlay_class(obj, dist, ep.name)
            known = cls.name in DEFAULT_ORDER
            rank = DEFAULT_ORDER.index(cls.name) if known else len(DEFAULT_ORDER)
            found.append((rank, cls, dist))
        found.sort(key=lambda item: item[0])
        pending = [(cls, dist) for _, cls, dist in found]
        # Plugins may refer to each other: place in passes until nothing moves.
        while pending:
            left = []
            for cls, dist in pending:
                ref = cls.before or cls.after
                if ref is None or ref in self or not any(c.name == ref for c, _ in pending):
                    if cls.name not in self:
                        self.add(cls, distribution=dist)
                else:
                    left.append((cls, dist))
            if len(left) == len(pending):
                names = ", ".join(c.name for c, _ in left)
                raise PluginError(f"overlay plugins refer to each other in a cycle: {names}")
            pending = left

    def add(
        self,
        cls: type[Overlay],
        *,
        before: str | None = None,
        after: str | None = None,
        distribution: str = "(local)",
    ) -> Overlay:
        """Put an overlay in the chain; ``before``/``after`` name the one it goes next to.

        "before X" is outside X (nearer the caller), "after X" inside it. Naming an overlay
        that is not in the chain is an error.
        """
        cls = check_overlay_class(cls, distribution)
        if cls.name in self:
            raise PluginError(
                f"overlay {cls.name!r} from {distribution!r} clashes with the one from "
                f"{self._distribution[cls.name]!r}"
            )
        before = before if before is not None else cls.before
        after = after if after is not None else cls.after
        if before is not None and after is not None:
            raise ConfigError(f"overlay {cls.name!r}: give before= or after=, not both")
        names = self.names()
        ref = before or after
        if ref is not None and ref not in names:
            raise ConfigError(
                f"overlay {cls.name!r} wants to go {'before' if before else 'after'} {ref!r}, "
                f"which is not in the chain ({', '.join(names) or 'empty'})"
            )
        if before is not None:
            index = names.index(before)
        elif after is not None:
            index = names.index(after) + 1
        elif cls.name in DEFAULT_ORDER:
            # A built-in added by hand still goes to its documented place.
            rank = DEFAULT_ORDER.index(cls.name)
            index = sum(1 for n in names if n in DEFAULT_ORDER and DEFAULT_ORDER.index(n) < rank)
        else:
            index = len(names)
        overlay = cls(self)
        self._order.insert(index, overlay)
        self._distribution[cls.name] = distribution
        return overlay

    def names(self) -> list[str]:
        """The overlays in order, outermost first."""
        return [o.name for o in self._order]

    def __contains__(self, name: object) -> bool:
        return any(o.name == name for o in self._order)

    def get(self, name: str) -> Overlay:
        for overlay in self._order:
            if overlay.name == name:
                return overlay
        raise KeyError(name)

    def enable(self, name: str, options: Mapping[str, Any] | None = None) -> None:
        """Turn an overlay on for every executor (e.g. ``metrics`` for ``--metrics-port``).

        Affects calls built afterwards (the registry builds each call on first use).
        """
        settings = {name: dict(options or {})}
        self.validate(settings, f"overlays.{GLOBAL_KEY}")
        self.defaults[name] = settings[name]

    # ---- settings -------------------------------------------------------------------
    def parse(self, settings: Mapping[str, Any] | None, where: str) -> dict[str, Any]:
        """Settings as each overlay's validated Config (overlays turned off are absent)."""
        problems: list[str] = []
        parsed: dict[str, Any] = {}
        if settings is not None and not isinstance(settings, Mapping):
            raise ConfigError(f"{where}: overlay settings must map overlay names to options")
        for name, value in (settings or {}).items():
            try:
                overlay = self.get(name)
            except KeyError:
                problems.append(
                    f"unknown overlay {name!r} (known: {', '.join(sorted(self.names()))})"
                )
                continue
            if value is None or value is False:
                continue
            try:
                parsed[name] = overlay.Config.model_validate(overlay.coerce(value))
            except PydanticValidationError as exc:
                for err in exc.errors(include_url=False):
                    loc = ".".join(str(p) for p in err.get("loc", ()))
                    if err.get("type") == "extra_forbidden":
                        problems.append(f"{name}: unknown option {loc!r}")
                    else:
                        field = f".{loc}" if loc else ""
                        problems.append(f"{name}{field}: {pydantic_reason(err)}")
            except ValueError as exc:
                problems.append(f"{name}: {exc}")
        if problems:
            raise ConfigError(f"{where}: " + "; ".join(problems))
        return parsed

    def validate(self, settings: Mapping[str, Any] | None, where: str) -> None:
        """Check overlay settings at load time; ``ConfigError`` names ``where``, overlay, key."""
        self.parse(settings, where)

    def effective(self, executor: str, settings: Mapping[str, Any] | None) -> dict[str, Any]:
        """Global defaults overlaid by ``settings`` (overlay by overlay), validated."""
        merged = dict(self.defaults)
        merged.update(settings or {})
        return self.parse(merged, f"overlays for executor {executor!r}")

    # ---- building -------------------------------------------------------------------
    def build(
        self, executor: str, terminal: Call, settings: Mapping[str, Any] | None = None
    ) -> Call:
        """Wrap ``terminal`` in the configured overlays, innermost first (done once per call)."""
        configs = self.effective(executor, settings)
        if not configs:
            return terminal
        call = terminal
        attempt_hooks = [o for o in self._order if o.name in configs]
        for overlay in reversed(self._order):
            config = configs.get(overlay.name)
            if config is not None:
                call = overlay.wrap(call, executor, config)
            if overlay.name == ATTEMPT_POSITION:
                call = self._wrap_attempts(call, executor, attempt_hooks, configs)
        if ATTEMPT_POSITION not in self:
            call = self._wrap_attempts(call, executor, attempt_hooks, configs)
        return call

    def _wrap_attempts(
        self, call: Call, executor: str, overlays: Sequence[Overlay], configs: Mapping[str, Any]
    ) -> Call:
        for overlay in reversed(overlays):
            wrapped = overlay.wrap_attempt(call, executor, configs[overlay.name])
            if wrapped is not None:
                call = wrapped
        return call

    # ---- shared state ---------------------------------------------------------------
    @property
    def collectors(self) -> Collectors:
        """The Prometheus collectors of this chain (created on first use, own registry)."""
        if self._collectors is None:
            from workplex.overlays.metrics import Collectors

            self._collectors = Collectors()
        return self._collectors

    @property
    def metrics_registry(self) -> CollectorRegistry:
        """The Prometheus registry to serve (see ``workplex.overlays.metrics.serve_metrics``)."""
        return self.collectors.registry

    def circuit_changed(
        self, executor: str, key: Hashable, old: str, new: str, reason: str
    ) -> None:
        """Log a circuit breaker's state change, and count it when metrics are on.

        Through structlog when the application configured it; otherwise through the stdlib
        ``logging`` logger ``workplex.overlays`` (stderr by default), because unconfigured
        structlog prints to stdout, where ``workplex run --json`` writes its result."""
        import structlog

        fields = {"executor": executor, "key": str(key), "old": old, "new": new, "reason": reason}
        if structlog.is_configured():
            structlog.get_logger("workplex.overlays").warning("circuit_breaker.state", **fields)
        else:
            _stdlib_logger.warning(
                "circuit_breaker.state %s",
                " ".join(f"{k}={v!r}" for k, v in fields.items()),
                extra={"workplex": fields},
            )
        if self._collectors is not None:
            self._collectors.circuit_changed(executor, key, new)

    def describe(self) -> list[OverlayInfo]:
        """Each overlay in order with its options (JSON Schema properties) and defaults."""
        infos = []
        for position, overlay in enumerate(self._order, 1):
            schema = overlay.Config.model_json_schema()
            options: dict[str, Any] = {}
            for field_name, field in overlay.Config.model_fields.items():
                prop = schema.get("properties", {}).get(field_name, {})
                default = None
                if not field.is_required():
                    default = field.get_default(call_default_factory=True)
                options[field_name] = {
                    "required": field.is_required(),
                    "default": default,
                    "description": field.description or prop.get("description", ""),
                }
            infos.append(
                OverlayInfo(
                    position=position,
                    name=overlay.name,
                    description=overlay.description,
                    distribution=self._distribution[overlay.name],
                    options=options,
                    attempt_hook=type(overlay).wrap_attempt is not Overlay.wrap_attempt,
                )
            )
        return infos


__all__ = [
    "ATTEMPT_POSITION",
    "DEFAULT_ORDER",
    "ENTRY_POINT_GROUP",
    "GLOBAL_KEY",
    "Clock",
    "Duration",
    "Overlay",
    "OverlayChain",
    "OverlayConfig",
    "OverlayInfo",
    "SystemClock",
    "check_overlay_class",
    "exit_code_of",
    "key_function",
    "parse_duration",
]
