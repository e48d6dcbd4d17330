"""Overlays: wrappers around every executor call (retry, timeout, limits, ...)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from workplex.config import Config
    from workplex.registry import OverlayBuilder


def default_overlays(config: Config) -> OverlayBuilder | None:
    """The overlay chain configured for this deployment (None: bare calls)."""
    return None
