"""Durations in config and pipeline files: seconds as a number, or ``500ms``/``30s``/``2m``/``1h``/``7d``.

    >>> parse_duration("500ms"), parse_duration("2m"), parse_duration(1.5)
    (0.5, 120.0, 1.5)
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import BeforeValidator

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*(ms|s|m|h|d|w)?\s*$")


def parse_duration(value: Any) -> float:
    """Seconds from a number (seconds) or a string such as ``500ms``, ``1s``, ``2m``, ``1h``, ``7d``, ``2w``."""
    if isinstance(value, bool):
        raise ValueError("a duration must be a number of seconds or a string like '500ms'")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError("a duration cannot be negative")
        return float(value)
    if isinstance(value, str):
        match = _DURATION.match(value)
        if match:
            return float(match.group(1)) * _UNITS[match.group(2) or "s"]
    raise ValueError(
        f"invalid duration {value!r}: use seconds or a string like 500ms, 30s, 2m, 1h, 7d"
    )


Duration = Annotated[float, BeforeValidator(parse_duration)]
"""A Pydantic field type: seconds, given as a number or as ``500ms`` / ``1s`` / ``2m`` / ``1h``."""
