"""Overlays: wrappers around every executor call (retry, timeout, limits, breaker, metrics,
logging, tracing), composed in one declared order. See ``docs/overlays.md``.

The built-ins are registered through the ``workplex.overlays`` entry points, like plugins.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from workplex.overlays.chain import (
    DEFAULT_ORDER,
    GLOBAL_KEY,
    Clock,
    Duration,
    Overlay,
    OverlayChain,
    OverlayConfig,
    SystemClock,
    parse_duration,
)

if TYPE_CHECKING:
    from workplex.config import Config


def default_overlays(config: Config) -> OverlayChain:
    """The overlay chain for a deployment: every installed overlay, in the default order,
    with the config file's ``overlays:`` checked now (``ConfigError`` names file, executor,
    overlay and key) and ``overlays: {"*": ...}`` applied to every executor."""
    chain = OverlayChain.from_config(config)
    uses_logging = any(
        isinstance(s, dict) and s.get("logging") not in (None, False)
        for s in config.overlays.values()
    )
    if uses_logging:
        import structlog

        if not structlog.is_configured():
            from workplex.overlays.logging import configure_logging

            configure_logging()
    return chain


__all__ = [
    "DEFAULT_ORDER",
    "GLOBAL_KEY",
    "Clock",
    "Duration",
    "Overlay",
    "OverlayChain",
    "OverlayConfig",
    "SystemClock",
    "default_overlays",
    "parse_duration",
]
