"""``escalier report``: what the escalations of a period say, read from the store's audit trail.

The report reads the ``audit`` table (every decision the engine made, with its kind, tiers,
criteria, actor and reason) and, for the ticket's tags, components and organization, the ticket
snapshot kept in each ``escalations`` row. It never writes.

It streams: the audit entries are read in escalation order in chunks (``yield_per``, a
server-side cursor on PostgreSQL), each escalation's trail is replayed into its *stays* (a stay
is a placement at one tier or department, from the move into it to the move out of it or the
resolution), tallied into counters, and dropped before the next escalation is read. Beside the
trail, the escalations rows are read in the same order and joined as they come. Memory grows with
the number of days in the window, of tiers, of distinct tags, components, organizations and
people, and with the durations kept for the quantiles below, never with the number of entries.

Medians and 90th percentiles are exact (nearest rank: the smallest value with at least q of the
values at or below it) while a group holds at most :data:`EXACT_LIMIT` durations; past that the
group switches to a log-bucket sketch (DDSketch's mapping) whose answers are within
:data:`SKETCH_ACCURACY` of the exact value, relatively, in a few kilobytes. The report says
which method each figure used.

Durations are wall-clock time, as the audit records it; SLA clocks count business time, so a
"time to acknowledge" here can be longer than the acknowledge clock's elapsed time. Where each
metric's truth lives is written down in docs/report.md.
"""

from __future__ import annotations

import argparse
import csv
import heapq
import json
import math
import os
import re
import sys
import time
from array import array
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any, TextIO
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

__all__ = [
    "EXACT_LIMIT",
    "SKETCH_ACCURACY",
    "Column",
    "Durations",
    "Report",
    "Table",
    "UsageError",
    "Window",
    "add_command",
    "build_report",
    "format_seconds",
    "format_value",
    "main",
    "parse_window",
    "render_text",
    "report_document",
    "run_command",
    "summary_lines",
    "write_csv",
]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2

EXACT_LIMIT = 100_000
"""Durations a quantile group keeps exactly; past that it becomes a sketch."""

SKETCH_ACCURACY = 0.01
"""Relative accuracy of the sketch's quantiles."""

CHUNK = 5_000
"""Audit rows fetched per round trip."""

TOP = 10
"""Rows of the top tags, components, organizations and ping-pong tables."""

# The kinds the engine writes that move a ticket into a stay (views.MOVES, with the placement a
# late update corrected), and those that are escalations: one per path.
_ESCALATIONS = {"escalated": "internal", "functional": "functional", "hierarchical": "hierarchical"}
_ENTERING = frozenset({"opened", "escalated", "functional", "deescalated", "reopened", "corrected"})
_FLOW_KINDS = (
    "opened", "escalated", "functional", "hierarchical", "deescalated", "resolved", "reopened",
    "sla-warning", "sla-breach",
)
# The sentences the engine writes (core/engine.py): the clock of a warning or breach, the
# department of a functional move and the level of a hierarchical one live only in them.
_CLOCK = re.compile(r"\bthe (acknowledge|resolve|follow_up) target\b", re.IGNORECASE)
_DEPARTMENT = re.compile(r"^Handed from .+? to .+? \(([^()]+)\): ")
_LEVEL = re.compile(r"^Raised to management level (\d+)")
_WITH_REASON = ("sla-warning", "sla-breach", "functional", "hierarchical")

_DESCRIPTION = """\
Learn from the escalations of a period, read from the store's audit trail:
escalations per tier and per path (internal, functional, hierarchical) per day
or week; time to acknowledge, to escalate and to resolve, and time in tier, per
tier (median and 90th percentile); SLA breach rates and whether the warnings
before a breach were acted on; tickets that went back and forth between tiers
(ping-pong); escalations de-escalated as unneeded; the reopen rate; the tags,
components and organizations behind escalations; the load per team and person.

The terminal gets tables; --html writes one self-contained page with charts
(inline SVG, no script, works offline), --csv one CSV file per table, --json
the whole report as one document. The store is read in chunks, so a store of
millions of audit entries is reported on in bounded memory. With --policy, the
tiers, departments and people are named as the policy names them, and the tags
and components Escalier sets itself are left out of the top lists."""

_EPILOG = """\
examples:
  escalier report --policy escalier.yaml                  the last 30 days, in the terminal
  escalier report --db sqlite:///demo.db --since all      everything a demo run left behind
  escalier report --policy escalier.yaml --since 12w --by week --html report.html
  escalier report --since 2026-03-01 --until 2026-04-01 --timezone Europe/Berlin --csv out/
  escalier report --db postgresql+psycopg://escalier@db/escalier --json | jq .summary

--since takes a duration back from --until (30d, 12w, 36h), a date or time
(2026-03-01, 2026-03-01T08:00:00+01:00), or 'all'. Days and weeks (starting on
Monday) are cut in --timezone (default UTC).

exit status: 0 report written, 1 the store could not be read, 2 invalid arguments."""

_DB_HELP = (
    "the store: a SQLAlchemy URL such as sqlite:///escalier.db or "
    "postgresql+psycopg://user@host/db (default: $ESCALIER_DB, else escalier.db beside the policy)"
)


class UsageError(Exception):
    """A mistake in the command line: said in one sentence, exit status 2."""


# --- the command --------------------------------------------------------------------------------


def add_command(commands: argparse._SubParsersAction) -> None:
    """Register ``escalier report`` on the ``escalier`` command's subparsers."""
    parser = commands.add_parser(
        "report",
        help="learn from escalations: rates, times per tier, ping-pong, load (from the audit)",
        description=_DESCRIPTION,
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--db", metavar="URL", help=_DB_HELP)
    parser.add_argument(
        "--policy", metavar="FILE",
        help="find the default store beside this policy, and name tiers, departments and people as it does",
    )
    parser.add_argument(
        "--since", default="30d", metavar="WHEN",
        help="start of the period: a duration back from --until (30d, 12w), a date or time, or 'all' "
        "(default 30d)",
    )
    parser.add_argument("--until", metavar="WHEN", help="end of the period, a date or time (default now)")
    parser.add_argument(
        "--by", choices=("auto", "day", "week"), default="auto",
        help="buckets of the charts over time (default auto: days up to 62 days, else weeks)",
    )
    parser.add_argument(
        "--timezone", default="UTC", metavar="ZONE",
        help="the IANA time zone days and weeks are cut in (default UTC), e.g. Europe/Berlin",
    )
    parser.add_argument("--html", metavar="FILE", help="also write the report as one HTML page with charts")
    parser.add_argument("--csv", metavar="DIR", help="also write one CSV file per table into DIR")
    parser.add_argument(
        "--json", action="store_true", help="print the report as JSON instead of tables"
    )
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress on standard error")
    parser.set_defaults(handler=run_command)


def main(argv: Sequence[str] | None = None) -> int:
    """``escalier report ARGS``, on its own; returns the exit status."""
    parser = argparse.ArgumentParser(prog="escalier")
    commands = parser.add_subparsers()
    add_command(commands)
    args = parser.parse_args(["report", *(argv or [])])
    return int(args.handler(args))


def run_command(args: argparse.Namespace) -> int:
    """The handler of ``escalier report``."""
    from escalier.core.errors import ConfigError

    try:
        window = parse_window(args.since, args.until, by=args.by, timezone=args.timezone)
        url = _store_url(args)
        policy = None
        if args.policy:
            from escalier.core.config import load_policy

            if not Path(args.policy).is_file():
                raise UsageError(f"--policy {args.policy}: no such file")
            policy = load_policy(args.policy)
        html_path = _writable_file(args.html, "--html") if args.html else None
        csv_dir = _writable_dir(args.csv) if args.csv else None
        engine = _open_store(url)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return EXIT_USAGE
    except UsageError as exc:
        print(f"escalier report: {exc}", file=sys.stderr)
        return EXIT_USAGE
    progress = None if args.quiet else _Progress(sys.stderr)
    try:
        report = build_report(engine, window, policy=policy, progress=progress, store=_safe_url(url))
    except _StoreUnreadable as exc:
        print(f"escalier report: {exc}", file=sys.stderr)
        return EXIT_FAILED
    finally:
        engine.dispose()
        if progress is not None:
            progress.done()
    if args.json:
        json.dump(report_document(report), sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        render_text(report, sys.stdout)
    if csv_dir is not None:
        written = write_csv(report, csv_dir)
        print(f"escalier report: {len(written)} CSV files in {csv_dir}", file=sys.stderr)
    if html_path is not None:
        from escalier.report_html import render_html

        html_path.write_text(render_html(report), encoding="utf-8")
        print(f"escalier report: HTML report in {html_path}", file=sys.stderr)
    return EXIT_OK


def _store_url(args: argparse.Namespace) -> str:
    from escalier.store.database import default_url

    return args.db or os.environ.get("ESCALIER_DB") or default_url(args.policy)


def _safe_url(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


class _StoreUnreadable(Exception):
    """The store answered, but not with an audit trail."""


def _open_store(url: str) -> Any:
    from sqlalchemy import inspect
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError, SQLAlchemyError

    from escalier.store.database import create_store_engine

    try:
        parsed = make_url(url)
    except ArgumentError:
        raise UsageError(f"--db {url!r} is not a SQLAlchemy URL (e.g. sqlite:///escalier.db)") from None
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database or ""
        if database in ("", ":memory:") or not Path(database).is_file():
            raise UsageError(
                f"no store at {database or url} (give it with --db URL or --policy FILE; "
                "`escalier serve` and `escalier demo --db` make one)"
            )
    try:
        engine = create_store_engine(url)
        with engine.connect() as connection:
            tables = set(inspect(connection).get_table_names())
    except NoSuchModuleError:
        raise UsageError(f"--db {_safe_url(url)}: no driver for this kind of database") from None
    except SQLAlchemyError as exc:
        raise UsageError(f"cannot open the store {_safe_url(url)}: {exc.__class__.__name__}: "
                         f"{str(exc).splitlines()[0]}") from None
    if not {"audit", "escalations"} <= tables:
        engine.dispose()
        raise UsageError(f"{_safe_url(url)} is not an Escalier store (no audit table); "
                         "run `escalier db upgrade` first")
    return engine


def _writable_file(name: str, option: str) -> Path:
    path = Path(name)
    if path.is_dir():
        raise UsageError(f"{option} {name}: is a directory; name a file")
    if not path.parent.exists() and str(path.parent) not in ("", "."):
        raise UsageError(f"{option} {name}: the directory {path.parent} does not exist")
    return path


def _writable_dir(name: str) -> Path:
    path = Path(name)
    if path.exists() and not path.is_dir():
        raise UsageError(f"--csv {name}: is a file; name a directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"--csv {name}: cannot create the directory ({exc.strerror})") from None
    return path


class _Progress:
    """Entries read so far, on standard error: a line kept up to date on a terminal, else a line
    every few seconds."""

    def __init__(self, stream: TextIO):
        self.stream = stream
        self.live = _isatty(stream)
        self.began = self.last = time.monotonic()
        self.shown = False

    def __call__(self, entries: int, escalations: int) -> None:
        now = time.monotonic()
        if now - self.last < (0.5 if self.live else 5.0):
            return
        self.last = now
        text = f"escalier report: {entries:,} audit entries of {escalations:,} escalations read"
        if self.live:
            self.stream.write("\r" + text)
        else:
            self.stream.write(text + "\n")
        self.stream.flush()
        self.shown = True

    def done(self) -> None:
        if self.live and self.shown:
            self.stream.write("\n")
            self.stream.flush()


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


# --- the window ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Window:
    """The period reported on, ``[since, until)`` in UTC (``since`` None: from the beginning)."""

    since: datetime | None
    until: datetime
    by: str  # auto, day or week
    timezone: str = "UTC"

    @property
    def zone(self) -> ZoneInfo:
        """The zone days are cut in."""
        return ZoneInfo(self.timezone)

    def holds(self, at: datetime) -> bool:
        """True if ``at`` falls in the window."""
        return (self.since is None or at >= self.since) and at < self.until


def parse_window(
    since: str | None, until: str | None, *, by: str = "auto", timezone: str = "UTC",
    now: datetime | None = None,
) -> Window:
    """The window the options describe; raises :class:`UsageError` naming the option."""
    try:
        ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError):
        raise UsageError(f"--timezone {timezone}: not a time zone (e.g. UTC, Europe/Berlin)") from None
    zone = ZoneInfo(timezone)
    end = _moment(until, "--until", zone) if until else (now or datetime.now(UTC))
    start: datetime | None
    text = (since or "all").strip()
    if text.lower() == "all":
        start = None
    elif re.fullmatch(r"(\d+\s*[wdhms]\s*)+", text):
        from escalier.core.durations import parse_duration

        try:
            start = end - parse_duration(text)
        except ValueError as exc:
            raise UsageError(f"--since {text}: {exc}") from None
    else:
        start = _moment(text, "--since", zone)
    if start is not None and start >= end:
        raise UsageError(f"--since {since} is not before --until ({end.isoformat()})")
    if by not in ("auto", "day", "week"):
        raise UsageError(f"--by {by}: day, week or auto")
    return Window(start, end.astimezone(UTC), by, timezone)


def _moment(text: str, option: str, zone: ZoneInfo) -> datetime:
    try:
        if re.fullmatch(r"\d{4}-\d{2}-\d{2}", text):
            day = date.fromisoformat(text)
            return datetime(day.year, day.month, day.day, tzinfo=zone).astimezone(UTC)
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise UsageError(
            f"{option} {text}: not a date or time (e.g. 2026-03-01 or 2026-03-01T08:00:00+01:00), "
            "nor a duration (30d)"
        ) from None
    if value.tzinfo is None:
        value = value.replace(tzinfo=zone)
    return value.astimezone(UTC)


# --- quantiles ----------------------------------------------------------------------------------


class Durations:
    """Durations in seconds of one group, with their median and p90.

    Exact (nearest rank) up to ``limit`` values, kept in an ``array('d')``; past that every value
    goes into a log-bucket sketch of relative accuracy ``accuracy``: bucket ``i`` holds the values
    in ``(gamma**(i-1), gamma**i]`` with ``gamma = (1+a)/(1-a)``, and a quantile is answered with
    ``2 * gamma**i / (gamma + 1)`` for the bucket that holds the rank, which is within ``a`` of
    every value of the bucket. Values under a millisecond count as zero.
    """

    __slots__ = ("count", "total", "_values", "_buckets", "_zeros", "_limit", "_log_gamma", "_gamma")

    def __init__(self, *, limit: int = EXACT_LIMIT, accuracy: float = SKETCH_ACCURACY):
        self.count = 0
        self.total = 0.0
        self._values: array[float] | None = array("d")
        self._buckets: dict[int, int] = {}
        self._zeros = 0
        self._limit = limit
        self._gamma = (1 + accuracy) / (1 - accuracy)
        self._log_gamma = math.log(self._gamma)

    @property
    def exact(self) -> bool:
        """True while the quantiles are exact."""
        return self._values is not None

    def add(self, seconds: float) -> None:
        """Add one duration."""
        self.count += 1
        self.total += seconds
        if self._values is not None:
            self._values.append(seconds)
            if len(self._values) > self._limit:
                values, self._values = self._values, None
                for value in values:
                    self._bucket(value)
            return
        self._bucket(seconds)

    def _bucket(self, seconds: float) -> None:
        if seconds < 0.001:
            self._zeros += 1
            return
        index = math.ceil(math.log(seconds) / self._log_gamma)
        self._buckets[index] = self._buckets.get(index, 0) + 1

    def quantile(self, q: float) -> float | None:
        """The ``q`` quantile (0 < q <= 1); None without values."""
        if not self.count:
            return None
        rank = max(1, math.ceil(q * self.count))
        if self._values is not None:
            return sorted(self._values)[rank - 1]
        seen = self._zeros
        if rank <= seen:
            return 0.0
        for index in sorted(self._buckets):
            seen += self._buckets[index]
            if seen >= rank:
                return 2 * self._gamma**index / (self._gamma + 1)
        raise AssertionError("the buckets hold fewer values than counted")

    def summary(self) -> tuple[int, float | None, float | None]:
        """``(count, median, p90)``."""
        if self._values is not None and self._values:
            ordered = sorted(self._values)
            n = len(ordered)
            return n, ordered[math.ceil(0.5 * n) - 1], ordered[math.ceil(0.9 * n) - 1]
        return self.count, self.quantile(0.5), self.quantile(0.9)


# --- the result ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Column:
    """A column of a table: its key (JSON, CSV), its label (terminal, HTML) and its type.

    Types: ``text``, ``int``, ``number``, ``seconds`` (a duration in seconds), ``rate`` (a
    fraction), ``date``.
    """

    key: str
    label: str
    type: str = "int"


@dataclass
class Table:
    """One table of the report; each row maps column keys to values."""

    name: str
    title: str
    columns: tuple[Column, ...]
    rows: list[dict[str, Any]] = field(default_factory=list)
    note: str = ""


@dataclass
class Report:
    """The whole report: the window, the key figures and the tables."""

    window: Window
    store: str
    generated_at: datetime
    by: str  # day or week, as decided
    entries: int
    escalations_read: int
    summary: dict[str, Any]
    tables: dict[str, Table]
    quantile_method: str
    tiers: tuple[int, ...]
    names: dict[str, str]  # team and tier labels


# --- reading the store --------------------------------------------------------------------------


def build_report(
    engine: Any,
    window: Window,
    *,
    policy: Any | None = None,
    progress: Callable[[int, int], None] | None = None,
    store: str = "",
    chunk: int = CHUNK,
    exact_limit: int = EXACT_LIMIT,
) -> Report:
    """Read the audit trail of the escalations active in ``window`` and tally the report."""
    from sqlalchemy import case, select
    from sqlalchemy.exc import SQLAlchemyError

    from escalier.store.schema import audit, escalations

    active = None
    if window.since is not None:
        active = (
            select(audit.c.escalation_id)
            .where(audit.c.at >= window.since, audit.c.at < window.until)
            .distinct()
        )
    trail = select(
        audit.c.escalation_id, audit.c.at, audit.c.kind, audit.c.from_tier, audit.c.to_tier,
        audit.c.criteria, audit.c.actor,
        case((audit.c.kind.in_(_WITH_REASON), audit.c.reason), else_=None).label("reason"),
    ).where(audit.c.at < window.until)
    state = escalations.c.state
    tickets = select(
        escalations.c.id, escalations.c.system, escalations.c.ticket_id,
        state[("ticket", "tags")].label("tags"),
        state[("ticket", "organization")].label("organization"),
        state[("ticket", "fields", "components")].label("components"),
    )
    if active is not None:
        trail = trail.where(audit.c.escalation_id.in_(active))
        tickets = tickets.where(escalations.c.id.in_(active))
    trail = trail.order_by(audit.c.escalation_id, audit.c.at, audit.c.id)
    tickets = tickets.order_by(escalations.c.id)

    tally = _Tally(window, _Names(policy), exact_limit=exact_limit)
    try:
        with engine.connect() as reading, engine.connect() as joining:
            rows = reading.execution_options(stream_results=True, yield_per=chunk).execute(trail)
            facts = _Ahead(
                joining.execution_options(stream_results=True, yield_per=chunk).execute(tickets)
            )
            for escalation_id, entries in _by_escalation(rows):
                tally.escalation(escalation_id, entries, facts.find(escalation_id))
                if progress is not None:
                    progress(tally.entries, tally.escalations_read)
    except SQLAlchemyError as exc:
        raise _StoreUnreadable(
            f"reading the audit trail failed: {exc.__class__.__name__}: {str(exc).splitlines()[0]}"
        ) from exc
    return tally.report(store)


def _by_escalation(rows: Iterable[Any]) -> Iterator[tuple[int, list[Any]]]:
    """The rows grouped by escalation, in the order read."""
    current: int | None = None
    group: list[Any] = []
    for row in rows:
        escalation_id = row[0]
        if escalation_id != current:
            if group:
                yield current, group  # type: ignore[misc]
            current, group = escalation_id, []
        group.append(row)
    if group:
        yield current, group  # type: ignore[misc]


class _Ahead:
    """A stream of rows ordered by id, looked up with ascending ids (a merge join)."""

    def __init__(self, rows: Iterable[Any]):
        self._rows = iter(rows)
        self._next: Any = None
        self._done = False

    def find(self, wanted: int) -> Any | None:
        while not self._done:
            if self._next is None:
                self._next = next(self._rows, None)
                if self._next is None:
                    self._done = True
                    return None
            if self._next[0] == wanted:
                return self._next
            if self._next[0] > wanted:
                return None
            self._next = None
        return None


# --- naming -------------------------------------------------------------------------------------


class _Names:
    """Tiers, departments, management levels and people named as the policy names them."""

    def __init__(self, policy: Any | None):
        self.policy = policy
        self.first_tier = 1
        self.tiers: dict[int, str] = {}
        self.departments: dict[str, str] = {}
        self.levels: dict[int, str] = {}
        self.people: dict[str, str] = {}
        self.own_tags: set[str] = set()
        self.own_components: set[str] = set()
        self.prefix = "escalier-"
        if policy is None:
            return
        self.first_tier = min(t.level for t in policy.tiers)
        self.prefix = f"{policy.tag_prefix}-"
        self.tiers = {t.level: t.name for t in policy.tiers}
        self.departments = {key: d.name for key, d in policy.paths.functional.items()}
        self.levels = {m.level: m.name for m in policy.paths.hierarchical}
        for key, person in policy.people.items():
            label = f"{person.name} ({key})"
            for ref in (person.jira, person.zendesk, person.email, key):
                if ref is not None:
                    self.people[str(ref).lower()] = label
        targets: list[Mapping[str, Any]] = []
        for tier in policy.tiers:
            self.own_tags.update(tier.tags)
            targets.extend(tier.targets.values())
        for department in policy.paths.functional.values():
            targets.extend(department.targets.values())
        for target in targets:
            for key in ("labels", "tags"):
                value = target.get(key)
                if isinstance(value, (list, tuple)):
                    self.own_tags.update(str(v) for v in value)
            for key in ("component", "components"):
                value = target.get(key)
                if isinstance(value, str):
                    self.own_components.add(value)
                elif isinstance(value, (list, tuple)):
                    self.own_components.update(str(v) for v in value)

    def tier(self, tier: int) -> str:
        name = self.tiers.get(tier)
        return f"tier {tier} ({name})" if name else f"tier {tier}"

    def department(self, key: str) -> str:
        name = self.departments.get(key)
        return f"{name} ({key})" if name else key

    def level(self, level: int) -> str:
        name = self.levels.get(level)
        return f"management level {level} ({name})" if name else f"management level {level}"

    def person(self, actor: str) -> str:
        return self.people.get(actor.lower(), actor)

    def tag_is_own(self, tag: str) -> bool:
        return tag.startswith(self.prefix) or tag in self.own_tags


# --- tallying -----------------------------------------------------------------------------------


class _Stay:
    """One placement of an escalation: at a tier, or with a department at a tier."""

    __slots__ = ("tier", "team", "start", "entered_by", "counted", "acked", "warned", "breached",
                 "ended", "ended_by")

    def __init__(self, tier: int, team: str, start: datetime, entered_by: str, counted: bool):
        self.tier = tier
        self.team = team
        self.start = start
        self.entered_by = entered_by
        self.counted = counted  # entered in the window
        self.acked: datetime | None = None
        self.warned: dict[str, datetime] = {}
        self.breached: dict[str, datetime] = {}
        self.ended: datetime | None = None
        self.ended_by: str | None = None


class _TierTally:
    __slots__ = ("stays", "entered", "ended", "still", "ack", "escalate", "in_tier", "resolve",
                 "breached", "any_breach", "warned", "hours")

    def __init__(self, limit: int):
        self.stays = 0
        self.entered: Counter[str] = Counter()
        self.ended: Counter[str] = Counter()
        self.still = 0
        self.ack = Durations(limit=limit)
        self.escalate = Durations(limit=limit)
        self.in_tier = Durations(limit=limit)
        self.resolve = Durations(limit=limit)
        self.breached: Counter[str] = Counter()
        self.any_breach = 0
        self.warned: Counter[str] = Counter()  # acted_on, breached, pending
        self.hours = 0.0


class _Tally:
    """Counters of the whole report, fed one escalation's trail at a time."""

    def __init__(self, window: Window, names: _Names, *, exact_limit: int):
        self.window = window
        self.names = names
        self.limit = exact_limit
        self.zone = window.zone
        self.entries = 0
        self.escalations_read = 0
        self.flow: dict[date, Counter[str]] = defaultdict(Counter)
        self.flow_tiers: dict[date, Counter[int]] = defaultdict(Counter)
        self.tiers: dict[int, _TierTally] = {}
        self.teams: dict[str, Counter[str]] = defaultdict(Counter)
        self.team_hours: Counter[str] = Counter()
        self.people: dict[str, Counter[str]] = defaultdict(Counter)
        self.resolve_all = Durations(limit=exact_limit)
        self.deescalations: Counter[str] = Counter()
        self.deescalated_after: dict[str, Durations] = {}
        self.tags: Counter[str] = Counter()
        self.components: Counter[str] = Counter()
        self.organizations: Counter[str] = Counter()
        self.escalated_with_facts = 0
        self.ping_pong: list[tuple[int, int, str, str, str]] = []  # a heap of the top ones
        self.outcomes: Counter[str] = Counter()
        self.noted: Counter[str] = Counter()
        self.zone_is_utc = window.timezone in ("UTC", "Etc/UTC")

    def _tier(self, tier: int) -> _TierTally:
        found = self.tiers.get(tier)
        if found is None:
            found = self.tiers[tier] = _TierTally(self.limit)
        return found

    def _day(self, at: datetime) -> date:
        if self.zone_is_utc:
            return at.date()
        return at.astimezone(self.zone).date()

    def escalation(self, escalation_id: int, rows: list[Any], facts: Any | None) -> None:
        """Replay one escalation's trail (entries in time order, up to the window's end)."""
        self.escalations_read += 1
        self.entries += len(rows)
        window = self.window
        since, until = window.since, window.until
        names = self.names
        stay: _Stay | None = None
        opened_at: datetime | None = None
        opened_in_window = False
        resolved_first: tuple[datetime, int] | None = None
        reopened = breached = deescalated = escalated_up = escalated_in_window = False
        path: list[int] = []
        bounces = 0
        direction = 0

        def close(at: datetime, by: str) -> None:
            assert stay is not None
            stay.ended, stay.ended_by = at, by
            self._finish(stay)

        for row in rows:
            _, at, kind, from_tier, to_tier, criteria, actor, reason = row
            at = at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)
            counted = (since is None or at >= since) and at < until
            if counted and kind in _FLOW_KINDS:
                day = self._day(at)
                self.flow[day][kind] += 1
                if kind in _ESCALATIONS and to_tier is not None:
                    self.flow_tiers[day][int(to_tier)] += 1
            if kind in _ENTERING and to_tier is not None:
                tier = int(to_tier)
                if kind == "corrected" and stay is not None and stay.tier == tier:
                    continue
                if stay is not None and stay.ended is None:
                    close(at, kind)
                if kind == "opened":
                    opened_at = at
                    opened_in_window = counted
                    if tier > names.first_tier:
                        escalated_up = True
                        escalated_in_window = escalated_in_window or counted
                elif kind == "reopened":
                    reopened = True
                    if counted:
                        self._person(actor, "reopened")
                if kind == "functional":
                    department = _DEPARTMENT.match(reason or "")
                    team = names.department(department.group(1)) if department else "functional"
                elif kind == "reopened" and stay is not None:
                    team = stay.team
                else:
                    team = names.tier(tier)
                if kind == "deescalated" and stay is not None:
                    deescalated = True
                    if counted:
                        label = ", ".join(dict.fromkeys(criteria or ())) or "none"
                        self.deescalations[label] += 1
                        spent = self.deescalated_after.get(label)
                        if spent is None:
                            spent = self.deescalated_after[label] = Durations(limit=self.limit)
                        spent.add((at - stay.start).total_seconds())
                        self._person(actor, "deescalations")
                if kind in _ESCALATIONS:
                    self._escalation(stay, at, counted, actor)
                    escalated_up = True
                    escalated_in_window = escalated_in_window or counted
                stay = _Stay(tier, team, at, kind, counted)
                if not path or path[-1] != tier:
                    if path:
                        step = 1 if tier > path[-1] else -1
                        if direction and step != direction:
                            bounces += 1
                        direction = step
                    path.append(tier)
                continue
            if kind == "hierarchical":
                self._escalation(stay, at, counted, actor)
                escalated_up = True
                escalated_in_window = escalated_in_window or counted
                found = _LEVEL.match(reason or "")
                if counted:
                    self.teams[names.level(int(found.group(1))) if found else "management"]["raised"] += 1
                continue
            if stay is None:
                continue
            if kind == "acknowledged":
                if stay.acked is None and stay.ended is None:
                    stay.acked = at
                if counted:
                    self._person(actor, "acknowledged")
            elif kind == "resolved":
                if stay.ended is None:
                    close(at, "resolved")
                if resolved_first is None:
                    resolved_first = (at, stay.tier)
                if counted:
                    self._person(actor, "resolved")
            elif kind == "sla-warning" or kind == "sla-breach":
                clock = _CLOCK.search(reason or "")
                name = clock.group(1).lower() if clock else "unknown"
                if kind == "sla-breach":
                    breached = True
                    stay.breached.setdefault(name, at)
                else:
                    stay.warned.setdefault(name, at)
            elif kind in ("move-refused", "missing-information", "notified", "notification-exhausted"):
                if counted:
                    self.noted[kind] += 1
        if stay is not None and stay.ended is None:
            self._finish(stay)

        if opened_at is not None and opened_in_window:
            outcomes = self.outcomes
            outcomes["opened"] += 1
            if escalated_up:
                outcomes["escalated"] += 1
            if resolved_first is not None:
                outcomes["resolved"] += 1
                seconds = (resolved_first[0] - opened_at).total_seconds()
                self._tier(resolved_first[1]).resolve.add(seconds)
                self.resolve_all.add(seconds)
            if reopened:
                outcomes["reopened"] += 1
            if breached:
                outcomes["breached"] += 1
            if deescalated:
                outcomes["deescalated"] += 1
            if len(path) != len(set(path)):
                outcomes["ping_pong"] += 1
                system = facts.system if facts is not None else ""
                ticket = facts.ticket_id if facts is not None else str(escalation_id)
                item = (bounces, -escalation_id, system, ticket, " -> ".join(map(str, path)))
                if len(self.ping_pong) < TOP:
                    heapq.heappush(self.ping_pong, item)
                else:
                    heapq.heappushpop(self.ping_pong, item)
        if escalated_in_window:
            self.escalated_with_facts += 1
            if facts is not None:
                self._facts(facts)

    def _escalation(self, stay: _Stay | None, at: datetime, counted: bool, actor: str | None) -> None:
        if stay is not None and stay.counted:
            self._tier(stay.tier).escalate.add((at - stay.start).total_seconds())
        if counted:
            self._person(actor, "escalations")

    def _person(self, actor: str | None, what: str) -> None:
        if actor:
            self.people[self.names.person(actor)][what] += 1

    def _finish(self, stay: _Stay) -> None:
        if not stay.counted:
            return
        tally = self._tier(stay.tier)
        tally.stays += 1
        tally.entered[stay.entered_by] += 1
        team = self.teams[stay.team]
        team["stays"] += 1
        if stay.acked is not None:
            tally.ack.add((stay.acked - stay.start).total_seconds())
            team["acknowledged"] += 1
        end = stay.ended
        if end is None:
            tally.still += 1
            team["still"] += 1
            held = self.window.until - stay.start
        else:
            tally.ended[stay.ended_by or ""] += 1
            if stay.ended_by in ("escalated", "functional"):
                team["escalated"] += 1
            elif stay.ended_by == "resolved":
                team["resolved"] += 1
            tally.in_tier.add((end - stay.start).total_seconds())
            held = end - stay.start
        self.team_hours[stay.team] += held.total_seconds() / 3600
        for clock in stay.breached:
            tally.breached[clock] += 1
        if stay.breached:
            tally.any_breach += 1
        for clock, warned_at in stay.warned.items():
            if clock in stay.breached:
                tally.warned["breached"] += 1
            elif (clock == "acknowledge" and stay.acked is not None) or end is not None:
                # Acknowledged, resolved, or moved on before the breach came.
                tally.warned["acted_on"] += 1
            else:
                tally.warned["pending"] += 1

    def _facts(self, facts: Any) -> None:
        names = self.names
        tags = _json_list(facts.tags)
        for tag in dict.fromkeys(tags):
            if tag and not names.tag_is_own(tag):
                self.tags[tag] += 1
        for component in dict.fromkeys(_json_list(facts.components)):
            if component and component not in names.own_components:
                self.components[component] += 1
        organization = _json_scalar(facts.organization)
        if organization:
            self.organizations[organization] += 1

    # --- the tables -------------------------------------------------------------------------

    def report(self, store: str) -> Report:
        window = self.window
        days = sorted(self.flow)
        last = (window.until - timedelta(microseconds=1)).astimezone(self.zone).date()
        if window.since is not None:
            first: date | None = window.since.astimezone(self.zone).date()
        else:
            # From the beginning: the days that have entries, not every day up to today.
            first = days[0] if days else None
            last = days[-1] if days else last
        by = window.by
        if by == "auto":
            span = (last - first).days + 1 if first is not None else 0
            by = "day" if span <= 62 else "week"
        tiers = tuple(sorted(set(self.tiers) | {t for c in self.flow_tiers.values() for t in c}))
        tables: dict[str, Table] = {}
        exact = True

        def times(d: Durations) -> tuple[int, float | None, float | None]:
            nonlocal exact
            exact = exact and d.exact
            return d.summary()

        # Flow over time.
        buckets = _buckets(first, last, by) if first is not None else []
        flow = Table("flow", f"Escalations per {by}, by path", (
            Column("bucket", by, "date"),
            Column("opened", "opened"),
            Column("internal", "internal"),
            Column("functional", "functional"),
            Column("hierarchical", "hierarchical"),
            Column("deescalated", "de-escalated"),
            Column("resolved", "resolved"),
            Column("reopened", "reopened"),
            Column("breaches", "SLA breaches"),
        ), note="Entries in the window, by the day (or week from Monday) they were written, in "
                f"{window.timezone}. internal, functional, hierarchical: escalations by path.")
        by_tier = Table("escalations_by_tier", f"Escalations per {by}, by the tier they reached", (
            Column("bucket", by, "date"), *(Column(f"tier_{t}", f"tier {t}") for t in tiers),
            Column("total", "total"),
        ), note="Escalations on any path, by the tier of the entry (a hierarchical escalation "
                "keeps the ticket's tier).")
        for start, end in buckets:
            counts: Counter[str] = Counter()
            reached: Counter[int] = Counter()
            day = start
            while day < end:
                counts.update(self.flow.get(day, Counter()))
                reached.update(self.flow_tiers.get(day, Counter()))
                day += timedelta(days=1)
            flow.rows.append({
                "bucket": start.isoformat(), "opened": counts["opened"],
                "internal": counts["escalated"], "functional": counts["functional"],
                "hierarchical": counts["hierarchical"], "deescalated": counts["deescalated"],
                "resolved": counts["resolved"], "reopened": counts["reopened"],
                "breaches": counts["sla-breach"],
            })
            row: dict[str, Any] = {"bucket": start.isoformat()}
            for t in tiers:
                row[f"tier_{t}"] = reached[t]
            row["total"] = sum(reached.values())
            by_tier.rows.append(row)
        tables[flow.name] = flow
        tables[by_tier.name] = by_tier

        # Stays per tier.
        stays = Table("tiers", "Stays per tier (placements entered in the window)", (
            Column("tier", "tier", "text"),
            Column("stays", "stays"),
            Column("by_opening", "opened here"),
            Column("by_escalation", "escalated in"),
            Column("by_deescalation", "de-escalated in"),
            Column("by_reopening", "reopened"),
            Column("escalated_onwards", "escalated on"),
            Column("deescalated_out", "de-escalated out"),
            Column("resolved_here", "resolved here"),
            Column("still_here", "still here"),
        ), note="A stay runs from the move into a tier (or department) to the move out of it or "
                "the resolution; a reopening starts a new stay.")
        for t in tiers:
            tally = self._tier(t)
            stays.rows.append({
                "tier": self.names.tier(t), "stays": tally.stays,
                "by_opening": tally.entered["opened"],
                "by_escalation": tally.entered["escalated"] + tally.entered["functional"],
                "by_deescalation": tally.entered["deescalated"],
                "by_reopening": tally.entered["reopened"],
                "escalated_onwards": tally.ended["escalated"] + tally.ended["functional"],
                "deescalated_out": tally.ended["deescalated"],
                "resolved_here": tally.ended["resolved"],
                "still_here": tally.still,
            })
        tables[stays.name] = stays

        # Times per tier.
        timing = Table("times", "Times per tier (wall-clock): median and 90th percentile", (
            Column("measure", "measure", "text"),
            Column("tier", "tier", "text"),
            Column("count", "count"),
            Column("median_s", "median", "seconds"),
            Column("p90_s", "p90", "seconds"),
        ), note="time to acknowledge: from entering the stay to its first acknowledgement; "
                "time to escalate: from entering the stay to each escalation out of it (any path); "
                "time in tier: stays that ended; time to resolve: escalations opened in the window, "
                "from opening to the first resolution, by the tier it was resolved at.")
        measures = (
            ("time to acknowledge", lambda x: x.ack),
            ("time to escalate", lambda x: x.escalate),
            ("time in tier", lambda x: x.in_tier),
            ("time to resolve", lambda x: x.resolve),
        )
        for measure, pick in measures:
            for t in tiers:
                n, median, p90 = times(pick(self._tier(t)))
                timing.rows.append({"measure": measure, "tier": self.names.tier(t), "count": n,
                                    "median_s": median, "p90_s": p90})
        n, median, p90 = times(self.resolve_all)
        timing.rows.append({"measure": "time to resolve", "tier": "all", "count": n,
                            "median_s": median, "p90_s": p90})
        tables[timing.name] = timing

        # SLA.
        sla = Table("sla", "SLA breaches and the warnings before them, per tier", (
            Column("tier", "tier", "text"),
            Column("stays", "stays"),
            Column("breached", "breached"),
            Column("breach_rate", "breach rate", "rate"),
            Column("ack_breached", "ack breached"),
            Column("resolve_breached", "resolve breached"),
            Column("warned", "warned"),
            Column("acted_on", "acted on"),
            Column("breached_anyway", "breached anyway"),
            Column("pending", "pending"),
        ), note="Per stay entered in the window: breached, any clock. A warned clock (50% or 75% "
                "used) is acted on when the stay was acknowledged (acknowledge clock), resolved "
                "or moved on before that clock breached.")
        for t in tiers:
            tally = self._tier(t)
            warned = sum(tally.warned.values())
            sla.rows.append({
                "tier": self.names.tier(t), "stays": tally.stays, "breached": tally.any_breach,
                "breach_rate": _rate(tally.any_breach, tally.stays),
                "ack_breached": tally.breached["acknowledge"],
                "resolve_breached": tally.breached["resolve"],
                "warned": warned, "acted_on": tally.warned["acted_on"],
                "breached_anyway": tally.warned["breached"], "pending": tally.warned["pending"],
            })
        tables[sla.name] = sla

        # De-escalations and ping-pong.
        down = Table("deescalations", "De-escalations (escalations undone), by why", (
            Column("why", "rule or criteria", "text"),
            Column("count", "count"),
            Column("median_s", "median time above", "seconds"),
        ), note="De-escalations in the window, by the rule that made them (or 'manual'), with "
                "the time the ticket had spent at the tier it left.")
        for why, count in self.deescalations.most_common():
            _, median, _ = times(self.deescalated_after[why])
            down.rows.append({"why": why, "count": count, "median_s": median})
        tables[down.name] = down
        pong = Table("ping_pong", f"Ping-pong: the {TOP} escalations that bounced most", (
            Column("system", "system", "text"),
            Column("ticket", "ticket", "text"),
            Column("tiers", "tiers in order", "text"),
            Column("reversals", "reversals"),
        ), note="An escalation ping-pongs when it comes back to a tier it had left.")
        for reversals, _, system, ticket, tier_path in sorted(self.ping_pong, reverse=True):
            pong.rows.append({"system": system, "ticket": ticket, "tiers": tier_path,
                              "reversals": reversals})
        tables[pong.name] = pong

        # What is behind escalations.
        escalated = self.escalated_with_facts
        for name, title, counter in (
            ("top_tags", "Tags behind escalations", self.tags),
            ("top_components", "Components behind escalations", self.components),
            ("top_organizations", "Organizations behind escalations", self.organizations),
        ):
            what = name.removeprefix("top_").rstrip("s")
            table = Table(name, title, (
                Column(what, what, "text"), Column("escalations", "escalations"),
                Column("share", "share", "rate"),
            ), note=f"Escalations with an escalation in the window ({escalated}), by the ticket's "
                    "latest snapshot; the tags and components Escalier sets itself are left out.")
            for value, count in counter.most_common(TOP):
                table.rows.append({what: value, "escalations": count, "share": _rate(count, escalated)})
            tables[name] = table

        # Load.
        teams = Table("teams", "Load per team", (
            Column("team", "team", "text"),
            Column("stays", "stays"),
            Column("acknowledged", "acknowledged"),
            Column("escalated", "escalated on"),
            Column("resolved", "resolved"),
            Column("still", "still open"),
            Column("raised", "raised to"),
            Column("hours", "hours held", "number"),
        ), note="Stays entered in the window, per tier or department; hours held up to the "
                "window's end for those still open. Hierarchical escalations count as raised to "
                "the management level.")
        for team in sorted(self.teams, key=lambda k: (-self.teams[k]["stays"], -self.teams[k]["raised"], k)):
            c = self.teams[team]
            teams.rows.append({
                "team": team, "stays": c["stays"], "acknowledged": c["acknowledged"],
                "escalated": c["escalated"], "resolved": c["resolved"], "still": c["still"],
                "raised": c["raised"], "hours": round(self.team_hours[team], 1),
            })
        tables[teams.name] = teams
        people = Table("people", "Load per person", (
            Column("person", "person", "text"),
            Column("acknowledged", "acknowledged"),
            Column("resolved", "resolved"),
            Column("escalations", "escalations"),
            Column("deescalations", "de-escalations"),
            Column("reopened", "reopened"),
            Column("total", "total"),
        ), note="Entries in the window by the person the audit names as their actor (who "
                "acknowledged, resolved, asked for or caused a move).")
        ranked = sorted(self.people.items(), key=lambda item: (-sum(item[1].values()), item[0]))
        for person, c in ranked:
            people.rows.append({
                "person": person, "acknowledged": c["acknowledged"], "resolved": c["resolved"],
                "escalations": c["escalations"], "deescalations": c["deescalations"],
                "reopened": c["reopened"], "total": sum(c.values()),
            })
        tables[people.name] = people

        o = self.outcomes
        flow_total: Counter[str] = Counter()
        for counts in self.flow.values():
            flow_total.update(counts)
        warned = sum(sum(self._tier(t).warned.values()) for t in tiers)
        acted = sum(self._tier(t).warned["acted_on"] for t in tiers)
        stays_total = sum(self._tier(t).stays for t in tiers)
        breached_stays = sum(self._tier(t).any_breach for t in tiers)
        summary = {
            "escalations_opened": o["opened"],
            "escalations_escalated": o["escalated"],
            "escalations_resolved": o["resolved"],
            "escalations": flow_total["escalated"] + flow_total["functional"] + flow_total["hierarchical"],
            "escalations_internal": flow_total["escalated"],
            "escalations_functional": flow_total["functional"],
            "escalations_hierarchical": flow_total["hierarchical"],
            "deescalations": flow_total["deescalated"],
            "sla_breaches": flow_total["sla-breach"],
            "sla_warnings": flow_total["sla-warning"],
            "stays": stays_total,
            "stay_breach_rate": _rate(breached_stays, stays_total),
            "warned_clocks": warned,
            "warnings_acted_on": acted,
            "warnings_acted_on_rate": _rate(acted, warned),
            "reopened": o["reopened"],
            "reopen_rate": _rate(o["reopened"], o["resolved"]),
            "ping_pong": o["ping_pong"],
            "ping_pong_rate": _rate(o["ping_pong"], o["opened"]),
            "deescalated": o["deescalated"],
            "deescalated_rate": _rate(o["deescalated"], o["escalated"]),
            "breached": o["breached"],
            "breach_rate": _rate(o["breached"], o["opened"]),
            "moves_held_for_missing_information": self.noted["missing-information"],
            "moves_refused": self.noted["move-refused"],
            "notifications": self.noted["notified"],
        }
        names = {f"tier_{t}": self.names.tier(t) for t in tiers}
        method = (
            "exact (nearest rank)" if exact else
            f"exact (nearest rank) up to {self.limit:,} durations a group, past that a log-bucket "
            f"sketch within {SKETCH_ACCURACY:.0%}"
        )
        return Report(
            window=window, store=store, generated_at=datetime.now(UTC), by=by, entries=self.entries,
            escalations_read=self.escalations_read, summary=summary, tables=tables,
            quantile_method=method, tiers=tiers, names=names,
        )


def _buckets(first: date, last: date, by: str) -> list[tuple[date, date]]:
    """``[start, end)`` of each day or week (from Monday) from ``first`` to ``last``."""
    step = timedelta(days=1 if by == "day" else 7)
    start = first if by == "day" else first - timedelta(days=first.weekday())
    found = []
    while start <= last:
        found.append((start, start + step))
        start += step
    return found


def _rate(part: int, whole: int) -> float | None:
    return None if not whole else part / whole


def _json_list(value: Any) -> list[str]:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            return [value]
    if isinstance(value, (list, tuple)):
        return [str(v) for v in value if v is not None]
    return []


def _json_scalar(value: Any) -> str | None:
    if isinstance(value, str) and value[:1] in ('"', "["):
        try:
            value = json.loads(value)
        except ValueError:
            pass
    if value is None or value == "" or isinstance(value, (list, dict)):
        return None
    return str(value)


# --- output -------------------------------------------------------------------------------------

_SUMMARY_LABELS = (
    ("escalations_opened", "escalations opened", "int"),
    ("escalations_escalated", "  of which escalated", "int"),
    ("escalations", "escalations (moves up, any path)", "int"),
    ("escalations_internal", "  internal", "int"),
    ("escalations_functional", "  functional", "int"),
    ("escalations_hierarchical", "  hierarchical", "int"),
    ("deescalations", "de-escalations", "int"),
    ("stay_breach_rate", "SLA breach rate (stays)", "rate"),
    ("warnings_acted_on_rate", "warnings acted on", "rate"),
    ("reopen_rate", "reopen rate", "rate"),
    ("ping_pong_rate", "ping-pong rate", "rate"),
    ("deescalated_rate", "de-escalated as unneeded", "rate"),
)


def format_value(value: Any, kind: str) -> str:
    """A value as the terminal and the HTML page show it."""
    if value is None:
        return "-"
    if kind == "seconds":
        return format_seconds(float(value))
    if kind == "rate":
        return f"{float(value) * 100:.1f}%"
    if kind == "int":
        return f"{int(value):,}"
    if kind == "number":
        return f"{float(value):,.1f}"
    return str(value)


def format_seconds(seconds: float) -> str:
    """``3725.0`` -> ``1h02m``; ``45.0`` -> ``45s``; ``200000.0`` -> ``2d07h``."""
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds}s"
    minutes, second = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{second:02d}s" if second else f"{minutes}m"
    hours, minute = divmod(minutes, 60)
    if hours < 24:
        return f"{hours}h{minute:02d}m"
    days, hour = divmod(hours, 24)
    return f"{days}d{hour:02d}h"


def summary_lines(report: Report) -> list[tuple[str, str, str]]:
    """``(key, label, shown)`` for the key figures, with the counts behind the rates."""
    s = report.summary
    behind = {
        "stay_breach_rate": f" ({_breached_stays(report)} of {s['stays']:,} stays)",
        "warnings_acted_on_rate": f" ({s['warnings_acted_on']:,} of {s['warned_clocks']:,} warned clocks)",
        "reopen_rate": f" ({s['reopened']:,} of {s['escalations_resolved']:,} resolved)",
        "ping_pong_rate": f" ({s['ping_pong']:,} of {s['escalations_opened']:,} opened)",
        "deescalated_rate": f" ({s['deescalated']:,} of {s['escalations_escalated']:,} escalated)",
    }
    return [
        (key, label, format_value(s[key], kind) + behind.get(key, ""))
        for key, label, kind in _SUMMARY_LABELS
    ]


def _breached_stays(report: Report) -> str:
    return f"{sum(row['breached'] for row in report.tables['sla'].rows):,}"


def render_text(report: Report, out: TextIO) -> None:
    """The report as plain-text tables."""
    w = report.window
    since = _shown_time(w.since, w.zone) if w.since else "the beginning"
    out.write(f"Escalation report: {since} to {_shown_time(w.until, w.zone)} "
              f"(per {report.by}, {w.timezone})\n")
    out.write(f"store {report.store}: {report.entries:,} audit entries of "
              f"{report.escalations_read:,} escalations read\n\n")
    lines = summary_lines(report)
    width = max(len(label) for _, label, _ in lines)
    for _, label, shown in lines:
        out.write(f"  {label:<{width}}  {shown}\n")
    for table in report.tables.values():
        out.write(f"\n{table.title}\n")
        if not table.rows:
            out.write("  (none)\n")
            continue
        cells = [[c.label for c in table.columns]]
        for row in table.rows:
            cells.append([format_value(row.get(c.key), c.type) for c in table.columns])
        widths = [max(len(line[i]) for line in cells) for i in range(len(table.columns))]
        numeric = [c.type in ("int", "number", "rate", "seconds") for c in table.columns]
        for n, line in enumerate(cells):
            parts = [
                cell.rjust(widths[i]) if numeric[i] else cell.ljust(widths[i])
                for i, cell in enumerate(line)
            ]
            out.write("  " + "  ".join(parts).rstrip() + "\n")
            if n == 0:
                out.write("  " + "  ".join("-" * x for x in widths) + "\n")
    out.write(f"\nMedians and p90: {report.quantile_method}. Durations are wall-clock time.\n")


def _shown_time(at: datetime, zone: ZoneInfo) -> str:
    return at.astimezone(zone).isoformat(sep=" ", timespec="minutes")


def report_document(report: Report) -> dict[str, Any]:
    """The report as a JSON-ready document (durations in seconds, rates as fractions)."""
    w = report.window
    return {
        "generated_at": report.generated_at.isoformat(),
        "store": report.store,
        "window": {
            "since": w.since.isoformat() if w.since else None,
            "until": w.until.isoformat(),
            "by": report.by,
            "timezone": w.timezone,
        },
        "entries": report.entries,
        "escalations_read": report.escalations_read,
        "quantiles": {"method": report.quantile_method, "definition": "nearest rank"},
        "summary": report.summary,
        "tables": {
            name: {
                "title": table.title,
                "note": table.note,
                "columns": [{"key": c.key, "label": c.label, "type": c.type} for c in table.columns],
                "rows": table.rows,
            }
            for name, table in report.tables.items()
        },
    }


def write_csv(report: Report, directory: Path) -> list[Path]:
    """One CSV file per table (and ``summary.csv``) in ``directory``; returns the files."""
    written = []
    summary = directory / "summary.csv"
    with summary.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["figure", "value"])
        for key, value in report.summary.items():
            writer.writerow([key, "" if value is None else value])
    written.append(summary)
    for table in report.tables.values():
        path = directory / f"{table.name}.csv"
        with path.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow([c.key for c in table.columns])
            for row in table.rows:
                writer.writerow(["" if row.get(c.key) is None else row.get(c.key) for c in table.columns])
        written.append(path)
    return written
