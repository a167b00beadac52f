"""Business-hours arithmetic: when a calendar is open, and how much business time lies between.

An instant is open when its local wall-clock time, in the calendar's zone, falls in an open
interval of its local date, and that date is not a holiday (unless it is an extra workday).
Everything is computed exactly from that definition, including on the days clocks change:

- a ``00:00-24:00`` day lasts 23 or 25 hours;
- an interval that starts or ends inside a spring-forward gap starts or ends at the first instant
  whose local time is past that boundary, i.e. at the change itself;
- an interval inside the repeated hour of a fall-back day is open twice.

The open time is laid out on UTC in blocks of four weeks: each block holds its open stretches as
sorted integer microseconds with running totals, built once per calendar and kept. A question is
then a binary search in one block, and a long span adds whole-block totals, so the cost of
``elapsed`` and ``add`` hardly depends on the span or on how often the calendar opens and closes.
"""

from __future__ import annotations

import re
from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

__all__ = ["BusinessCalendar", "parse_hours"]

Hours = Mapping[int, Sequence[tuple[time, time | None]]]
Stretch = tuple[datetime, datetime]
# One block: edges [start0, end0, start1, end1, ...] in microseconds since the epoch, merged and
# clipped to the block; before[i] is the open time in the block before edges[i], with the
# block's total appended so that before[len(edges)] needs no special case.
_Block = tuple[tuple[int, ...], tuple[int, ...], int]

_ZERO = timedelta(0)
_MICRO = timedelta(microseconds=1)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_EPOCH_ORDINAL = date(1970, 1, 1).toordinal()
_EPOCH_WEEKDAY = date(1970, 1, 1).weekday()
_SECOND = 1_000_000
_DAY = 86_400 * _SECOND
_BLOCK = 28 * _DAY
_SEARCH_BLOCKS = 27  # 756 days: a calendar closed for two years is a mistake, not a calendar
_KEPT_BLOCKS = 4096  # 314 years of blocks; past that, start again rather than grow without end
# The tz database has no two offset changes less than four days apart, so sampling the offset
# every six hours finds every change; each is then pinned to the microsecond by bisection.
_PROBE = 6 * 3600 * _SECOND

_WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_INTERVAL = re.compile(r"(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})")


# --- the admin-facing syntax ----------------------------------------------------------------


def parse_hours(
    spec: Mapping[str, str | Sequence[str]],
) -> dict[int, tuple[tuple[time, time | None], ...]]:
    """Parse ``{"mon-fri": "09:00-17:00", "sat": ["10:00-12:00"]}`` into weekday -> intervals.

    Days are ``mon``..``sun`` or a range of them, which may wrap (``fri-mon``). An interval is
    ``HH:MM-HH:MM`` in local wall-clock time; ``24:00`` ends the day and comes back as None.
    Weekdays are numbered 0 (Monday) to 6 (Sunday); intervals come back sorted.

    :raises ValueError: on a bad day or interval, an interval that does not end after it
        starts, or intervals that overlap on the same day.
    """
    if not isinstance(spec, Mapping) or not spec:
        raise ValueError("hours must map days to intervals, e.g. {'mon-fri': '09:00-17:00'}")
    per_day: dict[int, list[tuple[int, int, str]]] = {}
    for days, intervals in spec.items():
        if isinstance(intervals, str):
            intervals = [intervals]
        if not isinstance(intervals, Sequence) or not intervals:
            raise ValueError(f"'{days}': give an interval like '09:00-17:00' or a list of them")
        parsed = [_parse_interval(text) for text in intervals]
        for weekday in _parse_days(days):
            per_day.setdefault(weekday, []).extend(parsed)
    result: dict[int, tuple[tuple[time, time | None], ...]] = {}
    for weekday, spans in sorted(per_day.items()):
        spans.sort()
        for (_, end, earlier), (start, _, later) in zip(spans, spans[1:]):
            if start < end:
                raise ValueError(f"'{earlier}' and '{later}' overlap on {_WEEKDAYS[weekday]}")
        result[weekday] = tuple((_time(start), _time(end)) for start, end, _ in spans)
    return result


def _parse_days(text: object) -> list[int]:
    first, dash, last = str(text).strip().lower().partition("-")
    try:
        start = _WEEKDAYS.index(first.strip())
        end = _WEEKDAYS.index(last.strip()) if dash else start
    except ValueError:
        raise ValueError(
            f"'{text}' is not a day or day range like 'mon-fri' (days: {', '.join(_WEEKDAYS)})"
        ) from None
    return [(start + i) % 7 for i in range((end - start) % 7 + 1)]


def _parse_interval(text: object) -> tuple[int, int, str]:
    if not isinstance(text, str) or (match := _INTERVAL.fullmatch(text.strip())) is None:
        raise ValueError(f"'{text}' is not HH:MM-HH:MM")
    shown = text.strip()
    h1, m1, h2, m2 = (int(group) for group in match.groups())
    if h1 > 24 or h2 > 24 or m1 > 59 or m2 > 59 or (h1 == 24 and m1) or (h2 == 24 and m2):
        raise ValueError(f"'{shown}' is not within 00:00-24:00")
    start, end = h1 * 60 + m1, h2 * 60 + m2
    if end <= start:
        raise ValueError(
            f"'{shown}' must end after it starts; split a night shift at midnight, "
            "e.g. 'mon': '22:00-24:00' and 'tue': '00:00-06:00'"
        )
    return start, end, shown


def _time(minute: int) -> time | None:
    return None if minute == 1440 else time(minute // 60, minute % 60)


# --- conversions ----------------------------------------------------------------------------


def _instant(at: datetime) -> int:
    try:
        if at.tzinfo is UTC:
            return (at - _EPOCH) // _MICRO
        # Outside UTC the subtraction asks the zone for the offset, which costs more than the
        # rest of a question; the same start is asked about again and again (a ticket's clocks,
        # its time-box and its notifications all start when it arrives), so remember it by the
        # object.
        found = _INSTANTS.get(id(at))
        if found is not None and found[0] is at:
            return found[1]
        instant = (at - _EPOCH) // _MICRO
    except (AttributeError, TypeError):  # a date, or a datetime without a zone
        raise ValueError(f"{at!r} must be a datetime that carries a time zone") from None
    if len(_INSTANTS) >= _KEPT_INSTANTS:
        _INSTANTS.clear()
    _INSTANTS[id(at)] = (at, instant)  # the entry keeps ``at`` alive, so its id is not reused
    return instant


_INSTANTS: dict[int, tuple[datetime, int]] = {}
_KEPT_INSTANTS = 4_096


def _datetime(instant: int) -> datetime:
    # timedelta * int is exact, and much cheaper than timedelta(microseconds=...).
    return _EPOCH + _MICRO * instant


def _second_of_day(value: time, weekday: int) -> int:
    if not isinstance(value, time) or value.tzinfo is not None or value.microsecond:
        raise ValueError(
            f"{_WEEKDAYS[weekday]}: {value!r} is not a local time of day in whole seconds"
        )
    return value.hour * 3600 + value.minute * 60 + value.second


def _dates(values: Iterable[date], what: str) -> frozenset[date]:
    days = frozenset(values)
    for day in days:
        if isinstance(day, datetime) or not isinstance(day, date):
            raise ValueError(f"{what}: {day!r} is not a date")
    return days


# --- the calendar ---------------------------------------------------------------------------


@dataclass(frozen=True)
class BusinessCalendar:
    """Open hours in one time zone, minus holidays; immutable, hashable, cheap to share.

    ``hours`` holds, per weekday from Monday, the open intervals as ``(start, end)`` seconds of
    the local day (``end`` 86400 is midnight at the end of the day). Build one with
    :meth:`build` or :meth:`always`. Every datetime it returns is aware and in UTC.
    """

    name: str
    timezone: str
    hours: tuple[tuple[tuple[int, int], ...], ...]
    holiday_country: str | None = None
    holiday_subdiv: str | None = None
    extra_holidays: frozenset[date] = frozenset()
    extra_workdays: frozenset[date] = frozenset()
    _zone: ZoneInfo = field(init=False, repr=False, compare=False)
    _weekly: tuple[tuple[tuple[int, int], ...], ...] = field(init=False, repr=False, compare=False)
    _blocks: dict[int, _Block] = field(
        init=False, repr=False, compare=False, default_factory=dict
    )
    _holidays: dict[int, dict[date, str]] = field(
        init=False, repr=False, compare=False, default_factory=dict
    )
    # Results of add and elapsed remembered by escalier.core.clocks, which asks the same
    # questions over and over while a ticket sits still; bounded there.
    _added: dict[tuple[datetime, timedelta], datetime] = field(
        init=False, repr=False, compare=False, default_factory=dict
    )
    _spanned: dict[tuple[datetime, datetime], timedelta] = field(
        init=False, repr=False, compare=False, default_factory=dict
    )

    def __post_init__(self) -> None:
        try:
            zone = ZoneInfo(self.timezone)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(
                f"'{self.timezone}' is not an IANA time zone, e.g. 'Europe/Berlin'"
            ) from None
        if len(self.hours) != 7:
            raise ValueError("hours must list the open intervals of each of the seven weekdays")
        if self.holiday_country is None and self.holiday_subdiv is not None:
            raise ValueError(f"holiday subdivision '{self.holiday_subdiv}' needs a holiday country")
        if self.holiday_country is not None:
            self._country_holidays(None)
        object.__setattr__(self, "_zone", zone)
        object.__setattr__(
            self,
            "_weekly",
            tuple(tuple((s * _SECOND, e * _SECOND) for s, e in day) for day in self.hours),
        )

    @classmethod
    def build(
        cls,
        *,
        name: str,
        timezone: str,
        hours: Hours,
        holiday_country: str | None = None,
        holiday_subdiv: str | None = None,
        extra_holidays: Iterable[date] = (),
        extra_workdays: Iterable[date] = (),
    ) -> BusinessCalendar:
        """A calendar from weekday (0=Monday) -> ``[start, end)`` local intervals, end None = 24:00.

        Days absent are closed. ``extra_workdays`` are open with their weekday's hours even when
        they are holidays.

        :raises ValueError: on an unknown zone, country or subdivision, a weekday outside 0-6,
            an interval that does not end after it starts, or overlapping intervals.
        """
        per_day: list[tuple[tuple[int, int], ...]] = []
        for weekday in hours:
            if weekday not in range(7):
                raise ValueError(
                    f"{weekday!r} is not a weekday number from 0 (Monday) to 6 (Sunday)"
                )
        for weekday in range(7):
            spans = []
            for start, end in hours.get(weekday, ()):
                first = _second_of_day(start, weekday)
                last = 86_400 if end is None else _second_of_day(end, weekday)
                if last <= first:
                    raise ValueError(
                        f"{_WEEKDAYS[weekday]}: {start}-{end} must end after it starts "
                        "(use None for midnight at the end of the day)"
                    )
                spans.append((first, last))
            spans.sort()
            for (_, end), (start, _) in zip(spans, spans[1:]):
                if start < end:
                    raise ValueError(f"{_WEEKDAYS[weekday]}: open intervals overlap")
            per_day.append(tuple(spans))
        return cls(
            name=name,
            timezone=timezone,
            hours=tuple(per_day),
            holiday_country=holiday_country,
            holiday_subdiv=holiday_subdiv,
            extra_holidays=_dates(extra_holidays, "extra_holidays"),
            extra_workdays=_dates(extra_workdays, "extra_workdays"),
        )

    @classmethod
    def always(cls, name: str = "24x7", timezone: str = "UTC") -> BusinessCalendar:
        """A calendar that is open at every instant, with no holidays."""
        every_day = {day: [(time(0), None)] for day in range(7)}
        return cls.build(name=name, timezone=timezone, hours=every_day)

    # --- holidays -------------------------------------------------------------------------

    def holiday_name(self, day: date) -> str | None:
        """The name of the holiday on local date ``day``, or None if it is not one."""
        if self.holiday_country is not None:
            names = self._holidays.get(day.year)
            if names is None:
                names = self._holidays[day.year] = dict(self._country_holidays(day.year))
            found = names.get(day)
            if found is not None:
                return found
        return "Extra holiday" if day in self.extra_holidays else None

    def is_holiday(self, day: date) -> bool:
        """True if local date ``day`` is a holiday, even if it is also an extra workday."""
        return self.holiday_name(day) is not None

    def _country_holidays(self, year: int | None) -> Mapping[date, str]:
        # Imported here, not at the top: loading the package's country tables is slow, and a
        # calendar without holidays never needs it.
        import holidays

        try:
            return holidays.country_holidays(
                self.holiday_country, subdiv=self.holiday_subdiv, years=[] if year is None else year
            )
        except NotImplementedError as exc:  # how the package says "no such country/subdivision"
            raise ValueError(f"holidays '{self.holiday_country}': {exc}") from None

    # --- the layout on UTC ----------------------------------------------------------------

    def _block(self, index: int) -> _Block:
        found = self._blocks.get(index)
        if found is None:
            if len(self._blocks) >= _KEPT_BLOCKS:
                self._blocks.clear()
            found = self._blocks[index] = self._lay_out(index * _BLOCK, (index + 1) * _BLOCK)
        return found

    def _lay_out(self, low: int, high: int) -> _Block:
        """The open stretches within ``[low, high)``, microseconds since the epoch."""
        pieces = self._offset_pieces(low, high)
        offsets = [offset for _, _, offset in pieces]
        first_day = (low + min(offsets)) // _DAY
        last_day = (high - 1 + max(offsets)) // _DAY
        spans: list[tuple[int, int]] = []
        for day in range(first_day, last_day + 1):
            hours = self._hours_on(day)
            if not hours:
                continue
            midnight = day * _DAY
            # Within a piece of constant offset, local wall time is UTC plus the offset, so the
            # instants whose wall time lies in [start, end) of this date are exactly this range,
            # clipped to the piece; clipping is what sends a boundary in a gap to the change.
            for piece_low, piece_high, offset in pieces:
                base = midnight - offset
                for start, end in hours:
                    start = max(base + start, piece_low)
                    end = min(base + end, piece_high)
                    if start < end:
                        spans.append((start, end))
        # Dates are laid out in order, but a fall-back just after midnight (St John's used 00:01)
        # puts a minute of the new date between two stretches of the old one.
        spans.sort()
        edges: list[int] = []
        for start, end in spans:
            if edges and start <= edges[-1]:
                edges[-1] = max(edges[-1], end)
            else:
                edges += (start, end)
        before = [0]
        total = 0
        for i in range(0, len(edges), 2):
            total += edges[i + 1] - edges[i]
            before += (total, total)
        return tuple(edges), tuple(before), total

    def _hours_on(self, day: int) -> tuple[tuple[int, int], ...]:
        """The open intervals of local date ``day`` (days since the epoch), after holidays."""
        hours = self._weekly[(day + _EPOCH_WEEKDAY) % 7]
        if hours and (self.holiday_country is not None or self.extra_holidays):
            local = date.fromordinal(day + _EPOCH_ORDINAL)
            if local not in self.extra_workdays and self.holiday_name(local) is not None:
                return ()
        return hours

    def _offset_pieces(self, low: int, high: int) -> list[tuple[int, int, int]]:
        """``[low, high)`` cut where the zone's UTC offset changes: (start, end, offset) each."""
        pieces = []
        start, offset = low, self._offset(low)
        checked = low  # the offset is known to be unchanged up to here
        while checked < high - 1:
            probe = min(checked + _PROBE, high - 1)
            probed = self._offset(probe)
            while probed != offset:
                unchanged, changed = checked, probe
                while changed - unchanged > 1:
                    middle = (unchanged + changed) // 2
                    if self._offset(middle) == offset:
                        unchanged = middle
                    else:
                        changed = middle
                pieces.append((start, changed, offset))
                start = checked = changed
                offset = self._offset(changed)
            checked = probe
        pieces.append((start, high, offset))
        return pieces

    def _offset(self, instant: int) -> int:
        offset = _datetime(instant).astimezone(self._zone).utcoffset()
        assert offset is not None  # a ZoneInfo always knows the offset of an aware datetime
        return offset // _MICRO

    # --- questions ------------------------------------------------------------------------

    def is_open(self, at: datetime) -> bool:
        """True if the calendar is open at the instant ``at`` (timezone-aware)."""
        instant = _instant(at)
        return bool(bisect_right(self._block(instant // _BLOCK)[0], instant) & 1)

    def next_open(self, at: datetime) -> datetime:
        """``at`` if the calendar is open then, else the next instant it opens; in UTC.

        :raises ValueError: if it does not open within about two years.
        """
        instant = _instant(at)
        index = instant // _BLOCK
        edges = self._block(index)[0]
        found = bisect_right(edges, instant)
        if found & 1:
            return _datetime(instant)
        if found < len(edges):
            return _datetime(edges[found])
        for _ in range(_SEARCH_BLOCKS):
            index += 1
            edges = self._block(index)[0]
            if edges:
                return _datetime(edges[0])
        raise self._never_open(at)

    def add(self, start: datetime, duration: timedelta) -> datetime:
        """The first instant at which ``duration`` of business time has passed since ``start``.

        With a zero duration this is :meth:`next_open`: ``start`` itself if open, else the next
        opening, so a clock started while closed is due when it opens. A positive duration that
        runs out exactly at a closing time gives the closing time, not the next opening. Either
        way ``elapsed(start, add(start, d)) == d`` for every ``d >= 0``, and the result never
        decreases as ``d`` grows.

        :raises ValueError: on a negative duration, or if the calendar stays closed for about two
            years on the way.
        """
        remaining = duration // _MICRO
        if remaining <= 0:
            if remaining < 0:
                raise ValueError(f"a business duration cannot be negative, got {duration}")
            return self.next_open(start)
        instant = _instant(start)
        index = instant // _BLOCK
        block = self._block(index)
        target = _open_before(block, instant) + remaining
        closed = 0
        while target > block[2]:
            closed = 0 if block[2] else closed + 1
            if closed > _SEARCH_BLOCKS:
                raise self._never_open(start)
            target -= block[2]
            index += 1
            block = self._block(index)
        edges, before, _ = block
        # The first edge whose running total reaches the target is the end of the stretch in
        # which the target is met (totals stand still between stretches).
        found = bisect_left(before, target)
        return _datetime(edges[found - 1] + target - before[found - 1])

    def elapsed(self, start: datetime, end: datetime) -> timedelta:
        """Business time within ``[start, end)``; zero if ``end`` is not after ``start``."""
        low = _instant(start)
        high = _instant(end)
        if high <= low:
            return _ZERO
        index, last = low // _BLOCK, high // _BLOCK
        block = self._block(index)
        if index == last:
            return _MICRO * (_open_before(block, high) - _open_before(block, low))
        total = block[2] - _open_before(block, low)
        for index in range(index + 1, last):
            total += self._block(index)[2]
        return _MICRO * (total + _open_before(self._block(last), high))

    def open_intervals(self, start: datetime, end: datetime) -> Iterator[Stretch]:
        """The open stretches within ``[start, end)``, in order, as ``(from, to)`` in UTC.

        Each stretch is as long as it can be within the bounds: the stretches of consecutive
        days that meet at midnight come back as one.
        """
        return self._stretches(_instant(start), _instant(end))

    def _stretches(self, low: int, high: int) -> Iterator[Stretch]:
        pending: list[int] = []
        index = low // _BLOCK
        while index * _BLOCK < high:
            edges = self._block(index)[0]
            found = bisect_right(edges, low)
            for i in range(found - (found & 1), len(edges), 2):
                start, end = max(edges[i], low), min(edges[i + 1], high)
                if start >= end:
                    break
                if pending and pending[1] == start:
                    pending[1] = end
                else:
                    if pending:
                        yield _datetime(pending[0]), _datetime(pending[1])
                    pending = [start, end]
            index += 1
        if pending:
            yield _datetime(pending[0]), _datetime(pending[1])

    def _never_open(self, at: datetime) -> ValueError:
        return ValueError(
            f"calendar '{self.name}' does not open within two years after {at.isoformat()}"
        )


def _open_before(block: _Block, instant: int) -> int:
    """Open time in ``block`` before ``instant``, which lies in the block."""
    edges, before, _ = block
    found = bisect_right(edges, instant)
    if found & 1:
        return before[found - 1] + instant - edges[found - 1]
    return before[found]
