"""Business-hours arithmetic: golden cases, the admin syntax, and properties checked against a
brute-force count of UTC minutes whose local wall time is open."""

from __future__ import annotations

import dataclasses
from datetime import UTC, date, datetime, time, timedelta, timezone
from functools import cache
from zoneinfo import ZoneInfo

import holidays
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from escalier.core.calendar import BusinessCalendar, parse_hours

BERLIN = ZoneInfo("Europe/Berlin")
NEW_YORK = ZoneInfo("America/New_York")
SYDNEY = ZoneInfo("Australia/Sydney")
SANTIAGO = ZoneInfo("America/Santiago")
MINUTE = timedelta(minutes=1)
HOUR = timedelta(hours=1)


def calendar(zone: str, spec, **kwargs) -> BusinessCalendar:
    return BusinessCalendar.build(name="test", timezone=zone, hours=parse_hours(spec), **kwargs)


def at(zone: ZoneInfo, *args: int) -> datetime:
    return datetime(*args, tzinfo=zone)


# --- golden cases ---------------------------------------------------------------------------

OFFICE = {"mon-fri": "09:00-17:00"}


def test_friday_afternoon_plus_two_hours_is_monday_morning():
    cal = calendar("Europe/Berlin", OFFICE, holiday_country="DE")
    assert cal.add(at(BERLIN, 2026, 3, 6, 16, 50), 2 * HOUR) == at(BERLIN, 2026, 3, 9, 10, 50)
    # The same over the weekend the clocks go forward.
    assert cal.add(at(BERLIN, 2026, 3, 27, 16, 50), 2 * HOUR) == at(BERLIN, 2026, 3, 30, 10, 50)


def test_a_saturday_ticket_starts_counting_on_monday_morning():
    cal = calendar("Europe/Berlin", OFFICE, holiday_country="DE")
    saturday = at(BERLIN, 2026, 3, 7, 11, 0)
    monday = at(BERLIN, 2026, 3, 9, 9, 0)
    assert cal.next_open(saturday) == monday
    assert cal.add(saturday, timedelta(0)) == monday
    assert cal.add(saturday, HOUR) == monday + HOUR
    assert cal.elapsed(saturday, monday) == timedelta(0)
    assert cal.elapsed(saturday, monday + HOUR) == HOUR


def test_christmas_and_an_extra_holiday():
    cal = calendar("Europe/Berlin", OFFICE, holiday_country="DE", holiday_subdiv="BE",
                   extra_holidays=[date(2026, 12, 24)])
    assert cal.next_open(at(BERLIN, 2026, 12, 24, 10, 0)) == at(BERLIN, 2026, 12, 28, 9, 0)
    assert cal.add(at(BERLIN, 2026, 12, 23, 16, 0), 2 * HOUR) == at(BERLIN, 2026, 12, 28, 10, 0)
    german = holidays.country_holidays("DE", subdiv="BE", years=2026)
    assert cal.holiday_name(date(2026, 12, 25)) == german[date(2026, 12, 25)]
    assert cal.holiday_name(date(2026, 12, 26)) == german[date(2026, 12, 26)]
    assert cal.holiday_name(date(2026, 12, 24)) == "Extra holiday"
    assert cal.holiday_name(date(2026, 12, 28)) is None
    assert cal.is_holiday(date(2026, 12, 25)) and not cal.is_holiday(date(2026, 12, 28))


def test_an_extra_workday_opens_a_holiday_with_its_weekdays_hours():
    labour_day = date(2026, 5, 1)  # a Friday
    closed = calendar("Europe/Berlin", OFFICE, holiday_country="DE")
    opened = calendar("Europe/Berlin", OFFICE, holiday_country="DE", extra_workdays=[labour_day])
    assert not closed.is_open(at(BERLIN, 2026, 5, 1, 10, 0))
    assert opened.is_open(at(BERLIN, 2026, 5, 1, 10, 0))
    assert opened.is_holiday(labour_day)  # still a holiday, only open
    assert opened.elapsed(at(BERLIN, 2026, 5, 1), at(BERLIN, 2026, 5, 2)) == 8 * HOUR
    # A Saturday has no hours to open with.
    weekend = calendar("Europe/Berlin", OFFICE, extra_workdays=[date(2026, 5, 2)])
    assert not weekend.is_open(at(BERLIN, 2026, 5, 2, 10, 0))


def test_a_year_in_berlin():
    cal = calendar("Europe/Berlin", OFFICE, holiday_country="DE", holiday_subdiv="BE")
    # 2026 has 261 weekdays; 7 Berlin holidays fall on them (1 Jan, Good Friday, Easter Monday,
    # 1 May, Ascension, Whit Monday, Christmas Day).
    assert cal.elapsed(at(BERLIN, 2026, 1, 1), at(BERLIN, 2027, 1, 1)) == 254 * 8 * HOUR


@pytest.mark.parametrize(
    ("zone", "day", "hours"),
    [("Europe/Berlin", date(2026, 3, 29), 23), ("Europe/Berlin", date(2026, 10, 25), 25),
     ("America/New_York", date(2026, 3, 8), 23), ("America/New_York", date(2026, 11, 1), 25),
     ("Australia/Sydney", date(2026, 4, 5), 25), ("Australia/Sydney", date(2026, 10, 4), 23),
     ("Australia/Lord_Howe", date(2026, 4, 5), 24.5),
     ("Australia/Lord_Howe", date(2026, 10, 4), 23.5),
     ("Europe/Berlin", date(2026, 3, 30), 24)],
)
def test_a_whole_day_lasts_as_long_as_the_clocks_say(zone, day, hours):
    cal = calendar(zone, {"mon-sun": "00:00-24:00"})
    start = datetime.combine(day, time(0), ZoneInfo(zone))
    end = datetime.combine(day + timedelta(days=1), time(0), ZoneInfo(zone))
    assert cal.elapsed(start, end) == timedelta(hours=hours)
    assert cal.add(start, timedelta(hours=hours)) == end


def test_new_york_across_both_switches():
    cal = calendar("America/New_York", {"mon-fri": "08:00-18:00"}, holiday_country="US",
                   holiday_subdiv="NY")
    # March: Friday 17:00 EST + 2h is Monday 09:00 EDT, 13:00 UTC.
    done = cal.add(at(NEW_YORK, 2026, 3, 6, 17, 0), 2 * HOUR)
    assert done == at(NEW_YORK, 2026, 3, 9, 9, 0) == datetime(2026, 3, 9, 13, 0, tzinfo=UTC)
    assert cal.elapsed(at(NEW_YORK, 2026, 3, 6, 8, 0), at(NEW_YORK, 2026, 3, 9, 18, 0)) == 20 * HOUR
    # November: Friday 17:00 EDT + 2h is Monday 09:00 EST, 14:00 UTC.
    done = cal.add(at(NEW_YORK, 2026, 10, 30, 17, 0), 2 * HOUR)
    assert done == at(NEW_YORK, 2026, 11, 2, 9, 0) == datetime(2026, 11, 2, 14, 0, tzinfo=UTC)
    # Thanksgiving.
    assert cal.next_open(at(NEW_YORK, 2026, 11, 25, 18, 0)) == at(NEW_YORK, 2026, 11, 27, 8, 0)


def test_a_lunch_break_splits_the_day():
    cal = calendar("America/New_York", {"mon-fri": ["08:00-12:30", "13:30-18:00"]})
    friday = at(NEW_YORK, 2026, 3, 6, 17, 0)
    # 1h on Friday, the switch on Sunday, 4h30 on Monday morning, then lunch.
    assert cal.add(friday, timedelta(hours=5, minutes=30)) == at(NEW_YORK, 2026, 3, 9, 12, 30)
    assert cal.add(friday, timedelta(hours=5, minutes=31)) == at(NEW_YORK, 2026, 3, 9, 13, 31)
    assert not cal.is_open(at(NEW_YORK, 2026, 3, 9, 12, 45))
    assert cal.next_open(at(NEW_YORK, 2026, 3, 9, 12, 45)) == at(NEW_YORK, 2026, 3, 9, 13, 30)
    assert cal.elapsed(at(NEW_YORK, 2026, 3, 9), at(NEW_YORK, 2026, 3, 10)) == 9 * HOUR
    assert list(cal.open_intervals(at(NEW_YORK, 2026, 3, 9, 12), at(NEW_YORK, 2026, 3, 9, 14))) == [
        (at(NEW_YORK, 2026, 3, 9, 12, 0), at(NEW_YORK, 2026, 3, 9, 12, 30)),
        (at(NEW_YORK, 2026, 3, 9, 13, 30), at(NEW_YORK, 2026, 3, 9, 14, 0)),
    ]


def test_sydney_over_easter_and_the_end_of_daylight_saving():
    cal = calendar("Australia/Sydney", OFFICE, holiday_country="AU", holiday_subdiv="NSW")
    # Good Friday 3 April to Easter Monday 6 April are holidays; clocks go back on the 5th.
    assert cal.add(at(SYDNEY, 2026, 4, 2, 16, 0), 2 * HOUR) == at(SYDNEY, 2026, 4, 7, 10, 0)
    assert cal.next_open(at(SYDNEY, 2026, 4, 3, 12, 0)) == datetime(2026, 4, 6, 23, 0, tzinfo=UTC)


def test_a_boundary_in_a_spring_forward_gap_moves_to_the_change():
    # Berlin, 29 March 2026: 02:00 CET is followed by 03:00 CEST, at 01:00 UTC.
    change = datetime(2026, 3, 29, 1, 0, tzinfo=UTC)
    starts_in_gap = calendar("Europe/Berlin", {"sun": "02:30-03:30"})
    assert starts_in_gap.next_open(at(BERLIN, 2026, 3, 29, 0, 0)) == change
    assert starts_in_gap.elapsed(at(BERLIN, 2026, 3, 29), at(BERLIN, 2026, 3, 30)) == 30 * MINUTE
    ends_in_gap = calendar("Europe/Berlin", {"sun": "01:00-02:30"})
    assert list(ends_in_gap.open_intervals(at(BERLIN, 2026, 3, 29), at(BERLIN, 2026, 3, 30))) == [
        (datetime(2026, 3, 29, 0, 0, tzinfo=UTC), change)
    ]
    inside_gap = calendar("Europe/Berlin", {"sun": "02:15-02:45"})
    assert inside_gap.elapsed(at(BERLIN, 2026, 3, 29), at(BERLIN, 2026, 3, 30)) == timedelta(0)
    assert inside_gap.next_open(at(BERLIN, 2026, 3, 29)) == at(BERLIN, 2026, 4, 5, 2, 15)


def test_the_repeated_hour_of_a_fall_back_day_is_open_twice():
    # Berlin, 25 October 2026: 03:00 CEST is followed by 02:00 CET, at 01:00 UTC.
    cal = calendar("Europe/Berlin", {"sun": "02:10-02:40"})
    assert list(cal.open_intervals(at(BERLIN, 2026, 10, 25), at(BERLIN, 2026, 10, 26))) == [
        (datetime(2026, 10, 25, 0, 10, tzinfo=UTC), datetime(2026, 10, 25, 0, 40, tzinfo=UTC)),
        (datetime(2026, 10, 25, 1, 10, tzinfo=UTC), datetime(2026, 10, 25, 1, 40, tzinfo=UTC)),
    ]
    assert cal.add(datetime(2026, 10, 25, tzinfo=UTC), 45 * MINUTE) == datetime(
        2026, 10, 25, 1, 25, tzinfo=UTC
    )


def test_clocks_that_change_at_midnight():
    # Santiago: 5 April 2026 00:00 -03 is 4 April 23:00 -04, so Saturday's last hour comes twice;
    # 6 September 00:00 -04 is 01:00 -03, so Sunday starts at 01:00.
    evening = calendar("America/Santiago", {"sat": "22:00-24:00", "sun": "00:00-02:00"})
    april = evening.open_intervals(at(SANTIAGO, 2026, 4, 4, 12), at(SANTIAGO, 2026, 4, 5, 12))
    assert list(april) == [
        (datetime(2026, 4, 5, 1, 0, tzinfo=UTC), datetime(2026, 4, 5, 6, 0, tzinfo=UTC))
    ]
    assert evening.elapsed(at(SANTIAGO, 2026, 9, 5, 12), at(SANTIAGO, 2026, 9, 6, 12)) == 3 * HOUR
    assert evening.next_open(at(SANTIAGO, 2026, 9, 5, 23, 30)) == at(SANTIAGO, 2026, 9, 5, 23, 30)
    assert evening.add(at(SANTIAGO, 2026, 9, 5, 23, 30), HOUR) == at(SANTIAGO, 2026, 9, 6, 1, 30)


def test_a_fall_back_just_after_midnight_interleaves_two_dates():
    # St John's, 7 November 2010: 00:01 NDT became 6 November 23:01 NST, at 02:31 UTC, so a
    # minute of Sunday comes between two stretches of Saturday night.
    cal = calendar("America/St_Johns", {"sat": "23:30-24:00", "sun": "00:00-00:01"})
    night = datetime(2010, 11, 7, tzinfo=UTC)
    assert list(cal.open_intervals(night, night + timedelta(hours=6))) == [
        (night + timedelta(hours=2), night + timedelta(hours=2, minutes=31)),
        (night + timedelta(hours=3), night + timedelta(hours=3, minutes=31)),
    ]
    assert cal.elapsed(night, night + timedelta(hours=6)) == 62 * MINUTE


def test_two_offset_changes_a_week_apart():
    # Boa Vista kept summer time for one week only, 8 to 15 October 2000.
    cal = calendar("America/Boa_Vista", OFFICE)
    for day, utc_hour in ((2, 13), (9, 12), (16, 13)):  # Mondays: before, during, after
        monday = datetime(2000, 10, day, tzinfo=UTC)
        assert cal.next_open(monday) == monday + utc_hour * HOUR


def test_stretches_that_meet_at_midnight_come_back_as_one():
    cal = calendar("UTC", {"mon": "22:00-24:00", "tue": ["00:00-02:00", "03:00-04:00"]})
    monday = datetime(2026, 3, 2, tzinfo=UTC)
    assert list(cal.open_intervals(monday, monday + timedelta(days=2))) == [
        (monday + 22 * HOUR, monday + 26 * HOUR),
        (monday + 27 * HOUR, monday + 28 * HOUR),
    ]
    assert list(cal.open_intervals(monday + 23 * HOUR, monday + 27 * HOUR + 30 * MINUTE)) == [
        (monday + 23 * HOUR, monday + 26 * HOUR),
        (monday + 27 * HOUR, monday + 27 * HOUR + 30 * MINUTE),
    ]
    assert list(cal.open_intervals(monday + 5 * HOUR, monday)) == []


def test_always_open():
    cal = BusinessCalendar.always()
    assert (cal.name, cal.timezone) == ("24x7", "UTC")
    start = datetime(2026, 3, 28, 12, 0, 0, 1, tzinfo=UTC)
    assert cal.add(start, timedelta(hours=30)) == start + timedelta(hours=30)
    assert cal.elapsed(start, start + timedelta(days=400)) == timedelta(days=400)
    berlin = BusinessCalendar.always("office", "Europe/Berlin")
    assert berlin.elapsed(at(BERLIN, 2026, 3, 28), at(BERLIN, 2026, 3, 30)) == 47 * HOUR


def test_results_are_utc_whatever_the_input_zone():
    cal = calendar("Europe/Berlin", OFFICE)
    moment = datetime(2026, 3, 6, 16, 50, tzinfo=BERLIN)
    elsewhere = moment.astimezone(timezone(timedelta(hours=-7, minutes=-30)))
    for result in (cal.add(elsewhere, 2 * HOUR), cal.next_open(elsewhere),
                   *next(cal.open_intervals(elsewhere, elsewhere + HOUR))):
        assert result.tzinfo is UTC
    assert cal.add(elsewhere, 2 * HOUR) == cal.add(moment, 2 * HOUR)
    assert cal.elapsed(elsewhere, moment + HOUR) == 10 * MINUTE


def test_long_durations_on_a_sparse_calendar():
    cal = calendar("UTC", {"mon": "09:00-10:00"})
    # The first Monday of 2026 is the 5th; the thousandth hour ends 999 weeks later.
    expected = datetime(2026, 1, 5, 10, 0, tzinfo=UTC) + timedelta(weeks=999)
    assert cal.add(datetime(2026, 1, 1, tzinfo=UTC), 1000 * HOUR) == expected
    assert cal.elapsed(datetime(2026, 1, 1, tzinfo=UTC), expected) == 1000 * HOUR


def test_a_calendar_that_never_opens_gives_up_after_about_two_years():
    never = BusinessCalendar.build(name="never", timezone="UTC", hours={})
    start = datetime(2026, 1, 1, tzinfo=UTC)
    with pytest.raises(ValueError, match="does not open within two years"):
        never.next_open(start)
    with pytest.raises(ValueError, match="does not open within two years"):
        never.add(start, HOUR)
    with pytest.raises(ValueError, match="does not open within two years"):
        never.add(start, timedelta(0))
    assert never.elapsed(start, start + timedelta(days=3000)) == timedelta(0)
    assert list(never.open_intervals(start, start + timedelta(days=3000))) == []

    def closed_for(days: int) -> BusinessCalendar:
        closures = [date(2026, 1, 1) + timedelta(days=n) for n in range(days)]
        return calendar("UTC", OFFICE, extra_holidays=closures)

    assert closed_for(366).next_open(start) == datetime(2027, 1, 4, 9, 0, tzinfo=UTC)
    with pytest.raises(ValueError, match="'test' does not open"):
        closed_for(3 * 366).next_open(start)


def test_times_without_a_zone_and_negative_durations_are_refused():
    cal = BusinessCalendar.always()
    naive = datetime(2026, 1, 1)
    aware = datetime(2026, 1, 1, tzinfo=UTC)
    for call in (lambda: cal.is_open(naive), lambda: cal.next_open(naive),
                 lambda: cal.add(naive, HOUR), lambda: cal.elapsed(aware, naive),
                 lambda: cal.open_intervals(naive, aware),
                 lambda: cal.elapsed(date(2026, 1, 1), aware)):
        with pytest.raises(ValueError, match="must be a datetime that carries a time zone"):
            call()
    with pytest.raises(ValueError, match="cannot be negative"):
        cal.add(aware, -MINUTE)


def test_calendars_are_immutable_values():
    eve = [date(2026, 12, 24)]
    one = calendar("Europe/Berlin", OFFICE, holiday_country="DE", extra_holidays=eve)
    two = calendar("Europe/Berlin", OFFICE, holiday_country="DE", extra_holidays=eve)
    one.elapsed(at(BERLIN, 2026, 1, 1), at(BERLIN, 2026, 6, 1))  # a warm cache changes nothing
    assert one == two and hash(one) == hash(two) and len({one, two}) == 1
    assert one != calendar("Europe/Berlin", OFFICE, holiday_country="DE")
    with pytest.raises(dataclasses.FrozenInstanceError):
        one.name = "other"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"hours": {7: [(time(9), time(17))]}},
      "7 is not a weekday number from 0 (Monday) to 6 (Sunday)"),
     ({"hours": {0: [(time(17), time(9))]}}, "mon: 17:00:00-09:00:00 must end after it starts"),
     ({"hours": {0: [(time(9), time(12)), (time(11), time(13))]}}, "mon: open intervals overlap"),
     ({"hours": {}, "timezone": "Mars/Olympus"}, "'Mars/Olympus' is not an IANA time zone"),
     ({"hours": {}, "holiday_country": "XX"}, "holidays 'XX'"),
     ({"hours": {}, "holiday_subdiv": "BE"}, "holiday subdivision 'BE' needs a holiday country"),
     ({"hours": {}, "extra_holidays": [datetime(2026, 1, 1)]},
      "extra_holidays: datetime.datetime(2026, 1, 1, 0, 0) is not a date")],
)
def test_build_refuses_bad_input(kwargs, message):
    kwargs = {"name": "bad", "timezone": "UTC", **kwargs}
    with pytest.raises(ValueError) as info:
        BusinessCalendar.build(**kwargs)
    assert str(info.value).startswith(message)


# --- the admin-facing syntax ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "expected"),
    [({"mon-fri": "09:00-17:00", "sat": "10:00-14:00"},
      {d: ((time(9), time(17)),) for d in range(5)} | {5: ((time(10), time(14)),)}),
     ({"mon": ["13:00-17:00", "08:00-12:00"]}, {0: ((time(8), time(12)), (time(13), time(17)))}),
     ({"mon-sun": "00:00-24:00"}, {d: ((time(0), None),) for d in range(7)}),
     ({"fri-mon": "10:00-11:30"}, {d: ((time(10), time(11, 30)),) for d in (0, 4, 5, 6)}),
     ({" Sat - SUN ": " 9:00 - 13:30 "}, {d: ((time(9), time(13, 30)),) for d in (5, 6)}),
     ({"tue": ["08:00-12:00", "12:00-17:00"]}, {1: ((time(8), time(12)), (time(12), time(17)))}),
     ({"sun-sat": "23:59-24:00"}, {d: ((time(23, 59), None),) for d in range(7)})],
)
def test_parse_hours(spec, expected):
    assert parse_hours(spec) == expected


NIGHT_SHIFT = ("must end after it starts; split a night shift at midnight, "
               "e.g. 'mon': '22:00-24:00' and 'tue': '00:00-06:00'")
DAYS = "is not a day or day range like 'mon-fri' (days: mon, tue, wed, thu, fri, sat, sun)"


@pytest.mark.parametrize(
    ("spec", "message"),
    [({"mon-fri": "9:00-17"}, "'9:00-17' is not HH:MM-HH:MM"),
     ({"mon-fri": "9-5"}, "'9-5' is not HH:MM-HH:MM"),
     ({"mon": 9}, "'mon': give an interval like '09:00-17:00' or a list of them"),
     ({"mon": ["09:00-12:00", None]}, "'None' is not HH:MM-HH:MM"),
     ({"mon-fry": "09:00-17:00"}, f"'mon-fry' {DAYS}"),
     ({"weekdays": "09:00-17:00"}, f"'weekdays' {DAYS}"),
     ({"mon": "17:00-09:00"}, f"'17:00-09:00' {NIGHT_SHIFT}"),
     ({"mon": "09:00-09:00"}, f"'09:00-09:00' {NIGHT_SHIFT}"),
     ({"mon": "24:00-24:00"}, f"'24:00-24:00' {NIGHT_SHIFT}"),
     ({"mon": "25:00-26:00"}, "'25:00-26:00' is not within 00:00-24:00"),
     ({"mon": "09:00-24:30"}, "'09:00-24:30' is not within 00:00-24:00"),
     ({"mon": "09:60-10:00"}, "'09:60-10:00' is not within 00:00-24:00"),
     ({"mon": ["09:00-12:00", "11:00-13:00"]}, "'09:00-12:00' and '11:00-13:00' overlap on mon"),
     ({"mon-fri": "09:00-17:00", "fri": "16:00-18:00"},
      "'09:00-17:00' and '16:00-18:00' overlap on fri"),
     ({"mon": []}, "'mon': give an interval like '09:00-17:00' or a list of them"),
     ({}, "hours must map days to intervals, e.g. {'mon-fri': '09:00-17:00'}"),
     ("mon-fri 09:00-17:00", "hours must map days to intervals, e.g. {'mon-fri': '09:00-17:00'}")],
)
def test_parse_hours_errors(spec, message):
    with pytest.raises(ValueError) as info:
        parse_hours(spec)
    assert str(info.value) == message


# --- properties -----------------------------------------------------------------------------


def _changes(zone: str, first: int, last: int) -> list[datetime]:
    """The instants the zone's offset changes in years ``first``..``last``, to the minute."""
    tz = ZoneInfo(zone)
    found = []
    day = datetime(first, 1, 1, tzinfo=UTC)
    while day.year <= last:
        after = day + timedelta(days=1)
        if day.astimezone(tz).utcoffset() != after.astimezone(tz).utcoffset():
            low, high = day, after
            while high - low > MINUTE:
                middle = low + (high - low) // 2
                if middle.astimezone(tz).utcoffset() == low.astimezone(tz).utcoffset():
                    low = middle
                else:
                    high = middle
            found.append(high)
        day = after
    return found


# Zones with changes forward and back, by an hour or half an hour, at midnight, in both
# hemispheres, and one that suspends its summer time for Ramadan; with public holidays for some.
ZONES = [
    ("Europe/Berlin", "DE", "BE"),
    ("America/New_York", "US", "NY"),
    ("Australia/Sydney", "AU", "NSW"),
    ("Australia/Lord_Howe", None, None),
    ("America/Santiago", "CL", None),
    ("America/Havana", None, None),
    ("Africa/Casablanca", None, None),
    ("Asia/Kolkata", None, None),
]
# Spans start near each change, and near Christmas and Easter for the holidays.
FEASTS = [datetime(2026, 12, 24, tzinfo=UTC), datetime(2026, 4, 3, tzinfo=UTC)]
ANCHORS = {zone: _changes(zone, 2025, 2027) + FEASTS for zone, _, _ in ZONES}
# Boundaries near the usual change times are the interesting ones.
BOUNDARY = st.one_of(
    st.integers(0, 1440), st.sampled_from([0, 60, 90, 120, 150, 180, 1380, 1410, 1440])
)


@st.composite
def hour_specs(draw) -> dict[int, list[tuple[int, int]]]:
    """Per weekday, disjoint ``[start, end)`` minute intervals of the local day."""
    spec = {}
    for weekday in range(7):
        edges = sorted(draw(st.lists(BOUNDARY, unique=True, max_size=6)))
        if len(edges) % 2:
            edges.pop()
        if edges:
            spec[weekday] = list(zip(edges[::2], edges[1::2]))
    return spec


def _as_hours(spec: dict[int, list[tuple[int, int]]]):
    def clock(minute: int) -> time | None:
        return None if minute == 1440 else time(minute // 60, minute % 60)

    return {day: [(clock(a), clock(b)) for a, b in spans] for day, spans in spec.items()}


@cache
def _public_holidays(country: str | None, subdiv: str | None) -> frozenset[date]:
    if country is None:
        return frozenset()
    return frozenset(holidays.country_holidays(country, subdiv=subdiv, years=range(2024, 2029)))


@st.composite
def scenarios(draw):
    """A calendar, its ingredients for the brute force, and a minute-aligned span near a change."""
    zone, country, subdiv = draw(st.sampled_from(ZONES))
    spec = draw(hour_specs())
    anchor = draw(st.sampled_from(ANCHORS[zone]))
    start = anchor.replace(second=0, microsecond=0) + MINUTE * draw(st.integers(-3 * 1440, 1440))
    end = start + MINUTE * draw(st.integers(0, 4 * 1440))
    eve = (start - timedelta(days=1)).date()
    near = st.builds(lambda days: eve + timedelta(days=days), st.integers(0, 5))
    extra_holidays = draw(st.frozensets(near, max_size=2))
    extra_workdays = draw(st.frozensets(near, max_size=2))
    cal = BusinessCalendar.build(
        name="random", timezone=zone, hours=_as_hours(spec), holiday_country=country,
        holiday_subdiv=subdiv, extra_holidays=extra_holidays, extra_workdays=extra_workdays,
    )
    closed = (_public_holidays(country, subdiv) | extra_holidays) - extra_workdays
    return cal, spec, closed, start, end


def _open_minutes(cal: BusinessCalendar, spec, closed, start: datetime, end: datetime):
    """For each UTC minute in [start, end): is its local wall time in an open interval?"""
    tz = ZoneInfo(cal.timezone)
    flags = []
    moment = start
    while moment < end:
        local = moment.astimezone(tz)
        minute = local.hour * 60 + local.minute
        flags.append(
            local.date() not in closed
            and any(first <= minute < last for first, last in spec.get(local.weekday(), ()))
        )
        moment += MINUTE
    return flags


def _runs(flags: list[bool], start: datetime) -> list[tuple[datetime, datetime]]:
    runs: list[tuple[datetime, datetime]] = []
    for i, flag in enumerate(flags):
        if flag:
            here = start + i * MINUTE
            if runs and runs[-1][1] == here:
                runs[-1] = (runs[-1][0], here + MINUTE)
            else:
                runs.append((here, here + MINUTE))
    return runs


@settings(max_examples=120, deadline=None)
@given(scenario=scenarios())
def test_elapsed_open_intervals_and_is_open_agree_with_a_minute_count(scenario):
    cal, spec, closed, start, end = scenario
    flags = _open_minutes(cal, spec, closed, start, end)
    assert cal.elapsed(start, end) == MINUTE * sum(flags)
    assert list(cal.open_intervals(start, end)) == _runs(flags, start)
    assert [cal.is_open(start + i * MINUTE) for i in range(len(flags))] == flags


@settings(max_examples=120, deadline=None)
@given(scenario=scenarios(), fraction=st.floats(0, 1))
def test_add_and_next_open_agree_with_a_minute_count(scenario, fraction):
    cal, spec, closed, start, end = scenario
    flags = _open_minutes(cal, spec, closed, start, end)
    assume(any(flags))
    wanted = int(fraction * sum(flags))
    count = 0
    for i, flag in enumerate(flags):
        if flag and wanted == 0:
            expected = start + i * MINUTE  # a zero duration waits for the opening
            break
        count += flag
        if flag and count == wanted:
            expected = start + (i + 1) * MINUTE
            break
    assert cal.add(start, wanted * MINUTE) == expected
    assert cal.next_open(start) == start + flags.index(True) * MINUTE


MOMENTS = st.datetimes(datetime(2024, 1, 1), datetime(2028, 12, 31), timezones=st.just(UTC))


@st.composite
def calendars(draw) -> tuple[BusinessCalendar, timedelta]:
    """A random calendar and the open time of its ordinary week."""
    zone, country, subdiv = draw(st.sampled_from(ZONES))
    spec = draw(hour_specs())
    week = MINUTE * sum(end - start for spans in spec.values() for start, end in spans)
    cal = BusinessCalendar.build(name="random", timezone=zone, hours=_as_hours(spec),
                                 holiday_country=country, holiday_subdiv=subdiv)
    return cal, week


@settings(max_examples=150, deadline=None)
@given(pair=calendars(), start=MOMENTS, parts=st.lists(st.floats(0, 8), min_size=2, max_size=2))
def test_add_inverts_elapsed_and_grows_with_the_duration(pair, start, parts):
    cal, week = pair
    assume(week)
    # Durations of up to eight ordinary weeks, to the microsecond, so that no search runs long.
    shorter, longer = sorted(week * part for part in parts)
    done = cal.add(start, shorter)
    assert cal.elapsed(start, done) == shorter
    assert done >= start and done <= cal.add(start, longer)
    assert cal.elapsed(start, cal.add(start, longer)) == longer
    if timedelta(0) < shorter < longer:
        assert cal.add(done, longer - shorter) == cal.add(start, longer)
    assert cal.add(start, timedelta(0)) == cal.next_open(start)


@settings(max_examples=150, deadline=None)
@given(pair=calendars(), moments=st.lists(MOMENTS, min_size=3, max_size=3))
def test_elapsed_adds_up_over_consecutive_spans(pair, moments):
    cal, _ = pair
    first, middle, last = sorted(moments)
    last = min(last, first + timedelta(days=120))
    middle = min(middle, last)
    assert cal.elapsed(first, middle) + cal.elapsed(middle, last) == cal.elapsed(first, last)
    assert cal.elapsed(last, first) == timedelta(0)
    stretches = list(cal.open_intervals(first, last))
    assert sum((b - a for a, b in stretches), timedelta(0)) == cal.elapsed(first, last)
    for (_, end), (start, _) in zip(stretches, stretches[1:]):
        assert end < start


@settings(max_examples=150, deadline=None)
@given(pair=calendars(), moment=MOMENTS)
def test_next_open_is_the_first_open_instant(pair, moment):
    cal, week = pair
    assume(week)
    opening = cal.next_open(moment)
    assert opening >= moment and cal.is_open(opening)
    assert cal.elapsed(moment, opening) == timedelta(0)
    tick = timedelta(microseconds=1)
    assert cal.is_open(moment) == (cal.elapsed(moment, moment + tick) == tick)
    if opening > moment:
        assert not cal.is_open(opening - tick)
