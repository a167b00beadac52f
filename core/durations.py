"""Durations as admins write them: ``20m``, ``2h``, ``1h30m``, ``3d``, ``90s``, ``1w``."""

from __future__ import annotations

import re
from datetime import timedelta

__all__ = ["DURATION_PATTERN", "format_duration", "parse_duration"]

_UNITS = {"w": 604800, "d": 86400, "h": 3600, "m": 60, "s": 1}
_PART = re.compile(r"(\d+)([wdhms])")
DURATION_PATTERN = r"^\s*(\d+\s*[wdhms]\s*)+$"
_WHOLE = re.compile(DURATION_PATTERN)


def parse_duration(value: object) -> timedelta:
    """Parse ``'1h30m'`` into a timedelta; a bare number is refused because its unit is a guess."""
    if isinstance(value, timedelta):
        return value
    if isinstance(value, bool) or not isinstance(value, str):
        raise ValueError(
            f"{value!r} is not a duration; write it with a unit, e.g. '20m', '2h', '1h30m', '3d'"
        )
    if not _WHOLE.match(value):
        raise ValueError(
            f"'{value}' is not a duration; use numbers with units w, d, h, m, s, e.g. '1h30m'"
        )
    seconds = sum(int(n) * _UNITS[unit] for n, unit in _PART.findall(value.replace(" ", "")))
    if seconds == 0:
        raise ValueError(f"'{value}' is zero; a duration must be positive")
    return timedelta(seconds=seconds)


def format_duration(value: timedelta) -> str:
    """The shortest admin-style spelling of ``value`` (``timedelta(minutes=90)`` -> ``'1h30m'``)."""
    # The engine spells the same few targets and intervals in every warning and reason.
    found = _SPELLED.get(value)
    if found is None:
        if len(_SPELLED) >= 4096:
            _SPELLED.clear()
        found = _SPELLED[value] = _spell(value)
    return found


_SPELLED: dict[timedelta, str] = {}


def _spell(value: timedelta) -> str:
    seconds = int(value.total_seconds())
    if seconds <= 0:
        return "0s"
    parts = []
    for unit, size in _UNITS.items():
        if unit == "w" and seconds % size:
            continue  # '10d' reads better than '1w3d'
        count, seconds = divmod(seconds, size)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts)
