"""Business-time arithmetic for the engine: cached calendar sums and running meters.

A meter is business time accumulated in stretches: ``banked`` before ``since``, plus whatever the
calendar counts from ``since`` on while it runs (``since`` is None while it is paused). Deadlines
are computed with :meth:`BusinessCalendar.add`, which the engine calls with the same arguments
over and over while a ticket sits still, so results are remembered on the calendar object itself
(a bounded memo per calendar; nothing here keeps a calendar alive).
"""

from __future__ import annotations

from datetime import datetime, timedelta, tzinfo
from functools import lru_cache
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from escalier.core.calendar import BusinessCalendar

__all__ = ["business_add", "business_elapsed", "meter_deadline", "zone"]

_ZERO = timedelta(0)
_CACHE_LIMIT = 50_000
"""Results remembered per calendar and question; past that, the calendar starts afresh."""


def business_add(calendar: BusinessCalendar, start: datetime, delta: timedelta) -> datetime:
    """``calendar.add(start, delta)``, remembered on the calendar."""
    cache = calendar._added
    key = (start, delta)
    found = cache.get(key)
    if found is None:
        if len(cache) >= _CACHE_LIMIT:
            cache.clear()
        found = cache[key] = calendar.add(start, delta)
    return found


def business_elapsed(calendar: BusinessCalendar, start: datetime, end: datetime) -> timedelta:
    """``calendar.elapsed(start, end)``, remembered on the calendar; zero unless ``end`` is later."""
    if end <= start:
        return _ZERO
    cache = calendar._spanned
    key = (start, end)
    found = cache.get(key)
    if found is None:
        if len(cache) >= _CACHE_LIMIT:
            cache.clear()
        found = cache[key] = calendar.elapsed(start, end)
    return found


def meter_deadline(
    calendar: BusinessCalendar, since: datetime | None, banked: timedelta, threshold: timedelta
) -> datetime | None:
    """When a meter reaches ``threshold``: None while it is paused, ``since`` if it already has."""
    if since is None:
        return None
    if banked >= threshold:
        return since
    return business_add(calendar, since, threshold - banked)


@lru_cache(maxsize=64)
def zone(name: str) -> tzinfo:
    """The IANA time zone ``name``."""
    from zoneinfo import ZoneInfo

    return ZoneInfo(name)
