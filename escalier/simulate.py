"""``escalier simulate``: dry-run a policy against one ticket and print what would happen, when, why.

Nothing is sent anywhere: the ticket and its events are read from files and time is stepped
through the engine, from the ticket's creation through each event and each wake-up the engine asks
for, until ``--until``, the ticket closes, or :data:`DEFAULT_HORIZON` after creation.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, TextIO

from pydantic import ValidationError

from escalier.core.clocks import zone
from escalier.core.durations import parse_duration
from escalier.core.engine import Decision
from escalier.core.errors import ConfigError
from escalier.core.model import EventKind, Ticket, TicketEvent
from escalier.core.policy import Policy
from escalier.replay import replay_ticket

__all__ = ["DEFAULT_HORIZON", "SimulationInputError", "run", "simulate"]

DEFAULT_HORIZON = timedelta(days=30)
EXIT_OK = 0
EXIT_USAGE = 2


class SimulationInputError(Exception):
    """An input file of the simulation is unreadable or invalid; the message names file and problem."""


@dataclass(frozen=True)
class Step:
    """One decision of the timeline and the stimulus that led to it."""

    at: datetime
    stimulus: str
    decision: Decision
    tier: int | None
    timezone: str
    entries: tuple[Any, ...] = field(default=())
    tier_before: int | None = None
    """The tier before the decision; None when it opened the escalation."""


def run(
    policy_path: str | Path,
    ticket_path: str | Path,
    *,
    events_path: str | Path | None = None,
    until: str | datetime | None = None,
    as_json: bool = False,
    show_all: bool = False,
    out: TextIO = sys.stdout,
) -> int:
    """Simulate a ticket under a policy and print the timeline; returns the exit status.

    :param show_all: print every step; by default a run of repeated notifications to the same
        people is folded into one line. The JSON output always holds every step.
    """
    from escalier.core.config import load_policy

    try:
        try:
            policy = load_policy(policy_path)
        except ConfigError as exc:
            first = exc.problems[0] if exc.problems else exc
            more = f" (and {len(exc.problems) - 1} more problems)" if len(exc.problems) > 1 else ""
            raise SimulationInputError(f"{first}{more}") from None
        ticket = read_ticket(ticket_path)
        events = read_events(events_path, ticket) if events_path else []
        end = _until(until, ticket)
    except SimulationInputError as exc:
        print(f"escalier simulate: {exc}", file=sys.stderr)
        return EXIT_USAGE
    steps = simulate(policy, ticket, events, until=end)
    if as_json:
        json.dump(_as_json(policy, ticket, steps, end), out, indent=2)
        out.write("\n")
    else:
        _print_table(policy, ticket, steps, end, out, show_all=show_all)
    return EXIT_OK


def simulate(
    policy: Policy, ticket: Ticket, events: Iterable[TicketEvent], *, until: datetime
) -> list[Step]:
    """Step the engine through a ticket's life: its creation, its events and its wake-ups."""
    created = TicketEvent(
        id=f"{ticket.system}:{ticket.id}:created",
        system=ticket.system,
        instance=ticket.instance,
        ticket_id=ticket.id,
        kind=EventKind.CREATED,
        occurred_at=ticket.created_at,
        ticket=ticket,
    )
    steps: list[Step] = []
    for turn in replay_ticket(policy, events, until=until, opening=created, stop_when_closed=True):
        decision = turn.decision
        if decision.history or decision.actions:
            tier = decision.state.tier if decision.state is not None else None
            before = turn.before.tier if turn.before is not None else None
            label = "created" if turn.stimulus is created else turn.label
            steps.append(Step(turn.at, label, decision, tier, _tz_of(policy, tier), tier_before=before))
    return steps


def read_ticket(path: str | Path) -> Ticket:
    """The ticket in a JSON file; :class:`SimulationInputError` names the file and the problem."""
    data = _read_json(path)
    try:
        return Ticket.model_validate(data)
    except ValidationError as exc:
        raise SimulationInputError(f"{path}: {_first_error(exc)}") from None


def read_events(path: str | Path, ticket: Ticket) -> list[TicketEvent]:
    """The events in a JSON-lines file; ``system`` and ``ticket_id`` default to the ticket's."""
    text = _read_text(path)
    events = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            data = json.loads(line)
        except json.JSONDecodeError as exc:
            raise SimulationInputError(f"{path}:{number}: not valid JSON: {exc.msg}") from None
        if not isinstance(data, dict):
            raise SimulationInputError(f"{path}:{number}: each line must be a JSON object (an event)")
        data.setdefault("system", ticket.system)
        data.setdefault("instance", ticket.instance)
        data.setdefault("ticket_id", ticket.id)
        data.setdefault("id", f"line-{number}")
        if isinstance(data.get("ticket"), dict):
            # An event's ticket is the ticket after the change: what the line does not say is unchanged.
            data["ticket"] = {**ticket.model_dump(mode="json"), **data["ticket"]}
        try:
            events.append(TicketEvent.model_validate(data))
        except ValidationError as exc:
            raise SimulationInputError(f"{path}:{number}: {_first_error(exc)}") from None
    return events


def _read_text(path: str | Path) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SimulationInputError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SimulationInputError(f"{path}: cannot read the file: {exc}") from None


def _read_json(path: str | Path) -> Any:
    try:
        return json.loads(_read_text(path))
    except json.JSONDecodeError as exc:
        raise SimulationInputError(f"{path}:{exc.lineno}: not valid JSON: {exc.msg}") from None


def _first_error(exc: ValidationError) -> str:
    error = exc.errors()[0]
    where = ".".join(str(part) for part in error["loc"])
    message = error["msg"].removeprefix("Value error, ")
    more = f" (and {exc.error_count() - 1} more problems)" if exc.error_count() > 1 else ""
    return f"{where}: {message}{more}" if where else f"{message}{more}"


def _until(value: str | datetime | None, ticket: Ticket) -> datetime:
    if value is None:
        return ticket.created_at + DEFAULT_HORIZON
    if isinstance(value, datetime):
        if value.utcoffset() is None:
            raise SimulationInputError("--until: give a time zone, e.g. 2026-03-09T18:00:00+01:00")
        return value
    text = value.strip()
    if re.fullmatch(r"(\d+\s*[wdhms]\s*)+", text):
        return ticket.created_at + parse_duration(text)
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise SimulationInputError(
            f"--until: '{value}' is neither a time (2026-03-09T18:00:00+01:00) nor a duration (10d)"
        ) from None
    if when.utcoffset() is None:
        raise SimulationInputError("--until: give a time zone, e.g. 2026-03-09T18:00:00+01:00")
    return when


def _tz_of(policy: Policy, tier: int | None) -> str:
    spec = policy.tiers_by_level.get(tier) if tier is not None else None
    name = (spec.calendar if spec is not None else None) or policy.default_calendar
    return policy.calendars[name].timezone


def _local(at: datetime, tz: str) -> str:
    return at.astimezone(zone(tz)).strftime("%a %Y-%m-%d %H:%M %Z")


def _utc(at: datetime) -> str:
    return at.astimezone(zone("UTC")).strftime("%Y-%m-%d %H:%M")


def _rows(policy: Policy, steps: list[Step]) -> list[dict[str, Any]]:
    rows = []
    for step in steps:
        # The tier each entry concerns, in the engine's order: a decision may hold entries about
        # the tier a ticket leaves (its last notifications) and, after the move, the one it enters.
        current = step.tier_before if step.tier_before is not None else step.tier
        for entry in step.decision.history:
            tier = _tier_of(entry, current)
            if entry.path is not None and entry.to_tier is not None:
                current = entry.to_tier  # a move: later entries concern the tier it entered
            # A move is told in the time of the calendar that measured it: the tier it left.
            tz = _tz_of(policy, tier)
            actions = [a for a in step.decision.actions]
            rows.append(
                {
                    "at": entry.at.isoformat(),
                    "at_utc": _utc(entry.at),
                    "at_local": _local(entry.at, tz),
                    "timezone": tz,
                    "stimulus": step.stimulus,
                    "kind": entry.kind,
                    "from_tier": entry.from_tier,
                    "to_tier": entry.to_tier,
                    "tier": tier,
                    "criteria": list(entry.criteria),
                    "reason": entry.reason,
                    "policy_version": entry.policy_version,
                    "actions": [
                        a.model_dump(mode="json", exclude_defaults=True)
                        for a in actions
                        if entry is step.decision.history[0]
                    ],
                }
            )
    return rows


def _tier_of(entry: Any, current: int | None) -> int | None:
    """The tier a history entry concerns: a move's from-tier, else the one it names, else ``current``."""
    if entry.from_tier is not None:
        return entry.from_tier
    if entry.to_tier is not None:
        return entry.to_tier
    return current


def _as_json(policy: Policy, ticket: Ticket, steps: list[Step], until: datetime) -> dict[str, Any]:
    final = steps[-1].decision.state if steps else None
    return {
        "policy": {"name": policy.name, "version": policy.version, "source": policy.source},
        "ticket": {"system": ticket.system, "id": ticket.id, "subject": ticket.subject},
        "until": until.isoformat(),
        "timeline": _rows(policy, steps),
        "final": None
        if final is None
        else {
            "tier": final.tier,
            "status": final.status.value,
            "paused_total_seconds": final.paused_total.total_seconds(),
            "wake_at": final.wake_at.isoformat() if final.wake_at else None,
        },
    }


def _print_table(
    policy: Policy, ticket: Ticket, steps: list[Step], until: datetime, out: TextIO, *, show_all: bool = False
) -> None:
    out.write(f"Policy {policy.name} (version {policy.version}), ticket {ticket.system} {ticket.id}")
    out.write(f' "{ticket.subject}"\n' if ticket.subject else "\n")
    rows = _rows(policy, steps)
    if not show_all:
        rows = _fold_notifications(rows)
    headers = ("local time", "UTC", "tier", "what", "why")
    table = [
        (
            row["at_local"],
            row["at_utc"],
            _tier_cell(row),
            row["kind"],
            row["reason"] + (f" [{', '.join(row['criteria'])}]" if row["criteria"] else ""),
        )
        for row in rows
    ]
    widths = [max([len(h)] + [len(r[i]) for r in table]) for i, h in enumerate(headers[:-1])]
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=False)) + "  " + headers[-1]
    out.write(line + "\n")
    out.write("  ".join("-" * w for w in widths) + "  " + "-" * 3 + "\n")
    for row in table:
        out.write("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=False)) + "  " + row[-1] + "\n")
    final = steps[-1].decision.state if steps else None
    if final is not None:
        tail = f"until {_utc(until)} UTC: tier {final.tier}, {final.status.value}"
        if final.wake_at:
            tail += f", next wake-up {_utc(final.wake_at)} UTC"
        out.write(tail + "\n")


def _notified_whom(row: dict[str, Any]) -> str | None:
    """``Accountable (mia)`` for a row that notified the Accountable (mia); None for other rows."""
    if row["kind"] != "notified" or not row["reason"].startswith("Notified "):
        return None
    return row["reason"].removeprefix("Notified ").split(":", 1)[0]


def _fold_notifications(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows with each run of notifications to the same people, at the same tier, as one row."""
    folded: list[dict[str, Any]] = []
    run: list[dict[str, Any]] = []

    def flush() -> None:
        if len(run) == 1:
            folded.append(run[0])
        elif run:
            first, last = run[0], run[-1]
            tz = zone(first["timezone"])
            start, end = (datetime.fromisoformat(r["at"]).astimezone(tz) for r in (first, last))
            shown = "%H:%M" if start.date() == end.date() else "%a %H:%M"
            folded.append(
                {
                    **first,
                    "reason": (
                        f"notified {_notified_whom(first)} \u00d7{len(run)}, "
                        f"{start.strftime(shown)}\u2013{end.strftime(shown)}"
                    ),
                    "criteria": [],
                }
            )
        run.clear()

    for row in rows:
        whom = _notified_whom(row)
        if whom is None:
            flush()
            folded.append(row)
        elif run and (whom != _notified_whom(run[-1]) or row["tier"] != run[-1]["tier"]):
            flush()
            run.append(row)
        else:
            run.append(row)
    flush()
    return folded


def _tier_cell(row: dict[str, Any]) -> str:
    if row["from_tier"] and row["to_tier"] and row["from_tier"] != row["to_tier"]:
        return f"{row['from_tier']}->{row['to_tier']}"
    return str(row["tier"] or "")
