"""``escalier backtest``: try a policy on past tickets before it governs new ones.

The connector reads the tickets created in a window, with their histories (Jira: a JQL search
with ``expand=changelog``; Zendesk: the incremental ticket export and each ticket's audits; email:
the mailbox over IMAP), as the same events its webhooks and reconciliation make, each carrying the
ticket as it was at that moment. Each ticket's events are then replayed through the engine on
their own timestamps, with the wake-ups the engine asks for in between
(:func:`escalier.replay.replay_ticket`), and nothing is written anywhere.

It streams: one ticket's history at a time goes through the engine, and only running totals are
kept (counters, a list of lead times, the busiest hours, and at most ``max_differences`` tickets
where two policies differ), so a backtest over 100,000 tickets runs in bounded memory.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import re
import sys
import time
from array import array
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TextIO

from escalier.core.durations import format_duration, parse_duration
from escalier.core.errors import ConfigError, EscalierError
from escalier.core.model import (
    Action,
    ActionKind,
    ActorRole,
    EventKind,
    HistoryEntry,
    PathKind,
    TicketEvent,
)
from escalier.core.policy import Policy
from escalier.replay import Turn, replay_ticket

__all__ = [
    "BacktestInputError",
    "Comparison",
    "Move",
    "Noticed",
    "Outcome",
    "Progress",
    "Tally",
    "add_command",
    "backtest_ticket",
    "main",
    "noticed_by_people",
    "parse_since",
    "print_report",
    "read_history",
    "run",
    "run_backtest",
    "upstream_calls",
]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2

SOURCES = ("jira", "zendesk", "email")
DEFAULT_SINCE = "30d"
DEFAULT_MAX_DIFFERENCES = 100
PROGRESS_SECONDS = 2.0

# The history reader of each built-in connector.
_READERS = {name: f"escalier.connectors.{name}.history" for name in SOURCES}
_ESCALATING = frozenset({"escalated", "functional", "hierarchical"})
_MOVES = _ESCALATING | {"deescalated", "corrected"}
# Priority words of Jira, Zendesk and policies, lowest first; words of one rank are the same.
_PRIORITY_RANKS = {
    "lowest": 0, "trivial": 0,
    "low": 1, "minor": 1,
    "normal": 2, "medium": 2,
    "high": 3, "major": 3,
    "highest": 4, "urgent": 4, "critical": 4, "blocker": 4,
}
_JIRA_FIELD_ACTIONS = frozenset(
    {ActionKind.ASSIGN, ActionKind.ADD_TAGS, ActionKind.REMOVE_TAGS, ActionKind.SET_PRIORITY}
)

_DESCRIPTION = """\
Try a policy on past tickets before it governs new ones. The connector reads
the tickets created in the window (--since) with their histories, as the same
events its webhooks make, each carrying the ticket as it was at that moment:
Jira through a JQL search with the changelog, Zendesk through the incremental
ticket export and each ticket's audits, email through the mailbox over IMAP
(every message of the folder). Each ticket is then replayed through the
engine on its own timestamps, with the wake-ups the policy asks for, and
nothing is written anywhere: no comment, no tag, no mail.

The report says what the policy would have done: where it would have opened
tickets, its escalations per tier and path and to whom, the SLA breaches and
warnings, how much earlier than people it would have escalated the tickets
people escalated by hand (raised the priority, moved the ticket to a
higher tier's group, asked for an escalation), and the upstream calls it would
have spent, per hour at the busiest hour.

With --against, a second policy is replayed on the same history and the two
are shown side by side, then ticket by ticket where they differ.

Connection settings and secrets are those `escalier serve` uses: the policy
file's connectors section (the instance named by --instance) and the
environment variables it names. Progress goes to standard error.
"""

_EPILOG = """\
examples:
  escalier backtest escalier.yaml --from zendesk
  escalier backtest escalier.yaml --from jira --since 90d
  escalier backtest escalier.yaml --from jira --instance emea --since 2026-01-01
  escalier backtest new.yaml --from zendesk --against escalier.yaml
  escalier backtest escalier.yaml --from email --json | jq '.results.policy.escalations'

exit status: 0 done, 1 the upstream could not be read, 2 invalid input (a bad
policy, a connector the policy does not configure, a missing secret).
"""


class BacktestInputError(Exception):
    """An argument or a file of the backtest is unusable; the message names it and the problem."""


# --- one ticket under one policy ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Move:
    """One move the policy made: an escalation, a hand-over, a de-escalation or a correction."""

    at: datetime
    kind: str
    from_tier: int | None
    to_tier: int | None
    path: str
    place: str
    criteria: tuple[str, ...]

    def as_json(self) -> dict[str, Any]:
        """The move as plain JSON."""
        return {
            "at": self.at.astimezone(UTC).isoformat(), "kind": self.kind,
            "from_tier": self.from_tier, "to_tier": self.to_tier, "path": self.path,
            "place": self.place, "criteria": list(self.criteria),
        }


@dataclass(frozen=True, slots=True)
class Outcome:
    """What a policy did with one ticket, in short."""

    ticket_id: str
    subject: str
    opened_tier: int | None
    moves: tuple[Move, ...]
    breaches: tuple[tuple[datetime, str], ...]
    warnings: int
    final_tier: int | None
    final_status: str | None
    actions: int
    calls: int

    @property
    def first_escalation(self) -> Move | None:
        """The first move up (an escalation, or a hand-over to a department or management)."""
        return next((m for m in self.moves if m.kind in _ESCALATING), None)

    def signature(self) -> tuple[Any, ...]:
        """What two policies are compared on: the placement, every move and every breach."""
        return (
            self.opened_tier,
            tuple((m.at, m.kind, m.from_tier, m.to_tier, m.path, m.place) for m in self.moves),
            self.breaches,
            self.final_tier,
            self.final_status,
        )

    def as_json(self) -> dict[str, Any]:
        """The outcome as plain JSON."""
        return {
            "opened_tier": self.opened_tier,
            "moves": [m.as_json() for m in self.moves],
            "breaches": [{"at": at.astimezone(UTC).isoformat(), "clock": clock}
                         for at, clock in self.breaches],
            "warnings": self.warnings,
            "final_tier": self.final_tier,
            "final_status": self.final_status,
            "actions": self.actions,
            "calls": self.calls,
        }


def backtest_ticket(
    policy: Policy,
    events: Sequence[TicketEvent],
    *,
    until: datetime,
    on_turn: Callable[[Turn], None] | None = None,
) -> Outcome:
    """Replay one ticket's events under ``policy`` up to ``until``; what it would have done.

    :param on_turn: called with every decision, for totals that need more than the outcome.
    """
    opened: int | None = None
    moves: list[Move] = []
    breaches: list[tuple[datetime, str]] = []
    warnings = actions = calls = 0
    last = None
    for turn in replay_ticket(policy, events, until=until):
        decision = turn.decision
        if on_turn is not None:
            on_turn(turn)
        if decision.state is not None:
            last = decision.state
        actions += len(decision.actions)
        calls += upstream_calls(decision.actions)
        for entry in decision.history:
            if entry.kind == "opened" and opened is None:
                opened = entry.to_tier
            elif entry.kind in _MOVES:
                moves.append(_move(entry, decision.state))
            elif entry.kind == "sla-breach":
                breaches.append((entry.at, _clock_of(entry)))
            elif entry.kind == "sla-warning":
                warnings += 1
    ticket = last.ticket if last is not None else next((e.ticket for e in events if e.ticket), None)
    return Outcome(
        ticket_id=events[0].ticket_id if events else "",
        subject=ticket.subject if ticket is not None else "",
        opened_tier=opened,
        moves=tuple(moves),
        breaches=tuple(breaches),
        warnings=warnings,
        final_tier=last.tier if last is not None else None,
        final_status=last.status.value if last is not None else None,
        actions=actions,
        calls=calls,
    )


def _move(entry: HistoryEntry, state: Any) -> Move:
    path = entry.path.value if entry.path is not None else PathKind.INTERNAL.value
    place = ""
    if state is not None and entry.path is PathKind.FUNCTIONAL and state.department:
        place = state.department
    elif state is not None and entry.path is PathKind.HIERARCHICAL and state.management_level:
        place = f"management level {state.management_level}"
    return Move(entry.at, entry.kind, entry.from_tier, entry.to_tier, path, place, entry.criteria)


def _clock_of(entry: HistoryEntry) -> str:
    # The effect names the clock: breach:<moves>:<clock>.
    if entry.effect and entry.effect.startswith("breach:"):
        return entry.effect.rsplit(":", 1)[-1]
    match = re.match(r"The (\w+) target", entry.reason)
    return match.group(1) if match else "sla"


def upstream_calls(actions: Sequence[Action]) -> int:
    """The write requests one decision's actions cost its connector, as each connector batches them.

    Jira: one ``PUT`` for the fields (assignee, labels, components, priority), a ``POST`` per
    comment, watcher and notification, two requests per transition. Zendesk: one ticket update
    (a notification rides along as a note or is not sent), one more per comment of the other
    visibility. Email: a mail per assignment, comment and distinct notification, and the
    customer's acknowledgement with the escalation's first action. Others: one per action.
    """
    if not actions:
        return 0
    system = actions[0].system
    if system == "jira":
        calls = 1 if any(a.kind in _JIRA_FIELD_ACTIONS for a in actions) else 0
        for action in actions:
            if action.kind is ActionKind.ADD_WATCHERS:
                calls += len(action.watchers)
            elif action.kind is ActionKind.TRANSITION:
                calls += 2
            elif action.kind in (ActionKind.COMMENT, ActionKind.NOTIFY):
                calls += 1
        return calls
    if system == "zendesk":
        writes = [a for a in actions if a.kind is not ActionKind.NOTIFY]
        if not writes:
            return 0
        visibilities = {a.public for a in writes if a.kind is ActionKind.COMMENT}
        return 1 + max(0, len(visibilities) - 1)
    if system == "email":
        notices = {(a.channel, a.body) for a in actions if a.kind is ActionKind.NOTIFY}
        mails = sum(1 for a in actions if a.kind in (ActionKind.ASSIGN, ActionKind.COMMENT))
        first = any(a.key.rsplit(":", 1)[-1] == "1" for a in actions)
        return mails + len(notices) + (1 if first else 0)
    return len(actions)


# --- what people did --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Noticed:
    """When a person first escalated a ticket by hand, and how."""

    at: datetime
    how: str  # "raised priority", "moved group" or "escalated upstream"
    actor: str | None


def noticed_by_people(events: Sequence[TicketEvent], policy: Policy) -> Noticed | None:
    """The first time a person escalated the ticket by hand, if one did.

    That is an agent's change that raised the priority, moved the ticket from one group to
    another of a higher tier (or to a group the policy does not place), or asked for an
    escalation. Escalier's own changes, the system's and customers' are not people noticing.
    """
    tiers = _group_tiers(policy)
    before = None
    for event in sorted(events, key=lambda e: (e.occurred_at, e.id)):
        ticket = event.ticket
        if event.actor_role is ActorRole.AGENT:
            if event.kind is EventKind.ESCALATION_REQUESTED:
                return Noticed(event.occurred_at, "escalated upstream", event.actor)
            if ticket is not None and before is not None:
                old, new = _rank(before.priority), _rank(ticket.priority)
                if old is not None and new is not None and new > old:
                    return Noticed(event.occurred_at, "raised priority", event.actor)
                if before.group and ticket.group and ticket.group != before.group:
                    old_tier = tiers.get((ticket.system, before.group))
                    new_tier = tiers.get((ticket.system, ticket.group))
                    if old_tier is None or new_tier is None or new_tier > old_tier:
                        return Noticed(event.occurred_at, "moved group", event.actor)
        if ticket is not None:
            before = ticket
    return None


def _rank(priority: str | None) -> int | None:
    return _PRIORITY_RANKS.get(priority.strip().lower()) if priority else None


def _group_tiers(policy: Policy) -> dict[tuple[str, str], int]:
    """(system, group or component) -> tier, from the tiers' targets."""
    found: dict[tuple[str, str], int] = {}
    for tier in policy.tiers:
        for system, target in tier.targets.items():
            if not isinstance(target, Mapping):
                continue
            for key in ("group", "component"):
                value = target.get(key)
                if isinstance(value, str):
                    found.setdefault((system, value), tier.level)
    return found


# --- totals -----------------------------------------------------------------------------------


class Tally:
    """Running totals of one policy over many tickets; nothing per ticket is kept."""

    def __init__(self, policy: Policy):
        self.policy = policy
        self.tickets = 0
        self.opened = 0
        self.events = 0
        self.decisions = 0
        self.actions = 0
        self.calls = 0
        self.opened_at: Counter[int] = Counter()
        self.moves: Counter[tuple[str, int | None, int | None, str, str]] = Counter()
        self.assigned: Counter[str] = Counter()
        self.notified: Counter[str] = Counter()
        self.breaches: Counter[str] = Counter()
        self.tickets_breached = 0
        self.warnings = 0
        self.final: Counter[str] = Counter()
        self.calls_by_hour: Counter[tuple[str, datetime]] = Counter()
        self.noticed: Counter[str] = Counter()
        self.earlier = array("d")  # seconds the policy escalated before people, per ticket
        self.later = array("d")
        self.never = 0
        self.policy_only = 0

    def on_turn(self, turn: Turn) -> None:
        """Count one decision: who it assigns and notifies, and the calls of its hour."""
        decision = turn.decision
        self.decisions += 1
        if not decision.actions:
            return
        for action in decision.actions:
            if action.kind is ActionKind.ASSIGN and action.target:
                self.assigned[f"{action.system} {_target_text(action.target)}"] += 1
            elif action.kind is ActionKind.NOTIFY:
                for recipient in action.recipients:
                    self.notified[recipient] += 1
        calls = upstream_calls(decision.actions)
        if calls:
            hour = turn.at.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
            self.calls_by_hour[(decision.actions[0].system, hour)] += calls

    def add(self, events: Sequence[TicketEvent], outcome: Outcome, noticed: Noticed | None) -> None:
        """Count one ticket's outcome, and compare its first escalation with people's."""
        self.tickets += 1
        self.events += len(events)
        self.actions += outcome.actions
        self.calls += outcome.calls
        if outcome.opened_tier is not None:
            self.opened += 1
            self.opened_at[outcome.opened_tier] += 1
        for move in outcome.moves:
            self.moves[(move.kind, move.from_tier, move.to_tier, move.path, move.place)] += 1
        for _, clock in outcome.breaches:
            self.breaches[clock] += 1
        self.tickets_breached += bool(outcome.breaches)
        self.warnings += outcome.warnings
        if outcome.final_status is not None:
            self.final[outcome.final_status] += 1
        first = outcome.first_escalation
        if noticed is not None:
            self.noticed[noticed.how] += 1
            if first is None:
                self.never += 1
            elif first.at < noticed.at:
                self.earlier.append((noticed.at - first.at).total_seconds())
            else:
                self.later.append((first.at - noticed.at).total_seconds())
        elif first is not None:
            self.policy_only += 1

    def report(self) -> dict[str, Any]:
        """The totals as plain JSON."""
        peak_by_system: dict[str, dict[str, Any]] = {}
        by_hour: Counter[datetime] = Counter()
        for (system, hour), calls in self.calls_by_hour.items():
            by_hour[hour] += calls
            best = peak_by_system.get(system)
            if best is None or calls > best["calls"] or (calls == best["calls"] and hour.isoformat() < best["hour"]):
                peak_by_system[system] = {"hour": hour.isoformat(), "calls": calls}
        peak = min(by_hour.items(), key=lambda item: (-item[1], item[0]), default=None)
        return {
            "policy": {"name": self.policy.name, "version": self.policy.version,
                       "source": self.policy.source},
            "tickets": self.tickets,
            "events": self.events,
            "opened": self.opened,
            "decisions": self.decisions,
            "opened_at_tier": {str(t): n for t, n in sorted(self.opened_at.items())},
            "escalations": [
                {"kind": kind, "from_tier": a, "to_tier": b, "path": path, "place": place, "count": n}
                for (kind, a, b, path, place), n in sorted(
                    self.moves.items(), key=lambda item: (-item[1], str(item[0])))
            ],
            "assigned": dict(self.assigned.most_common()),
            "notified": dict(self.notified.most_common()),
            "sla": {"breaches": dict(sorted(self.breaches.items())),
                    "tickets_breached": self.tickets_breached, "warnings": self.warnings},
            "final_status": dict(sorted(self.final.items())),
            "noticed_by_people": {
                "tickets": sum(self.noticed.values()),
                "how": dict(sorted(self.noticed.items())),
                "policy_earlier": _spread(self.earlier),
                "policy_later": _spread(self.later),
                "policy_never": self.never,
                "policy_only": self.policy_only,
            },
            "upstream": {
                "actions": self.actions,
                "calls": self.calls,
                "peak_hour": {"hour": peak[0].isoformat(), "calls": peak[1]} if peak else None,
                "peak_hour_by_system": dict(sorted(peak_by_system.items())),
            },
        }


def _target_text(target: Mapping[str, Any]) -> str:
    parts = []
    for key, value in target.items():
        if key == "instances" or value in (None, "", [], {}):
            continue
        shown = ",".join(str(v) for v in value) if isinstance(value, (list, tuple)) else str(value)
        parts.append(f"{key}={shown}")
    return " ".join(parts) or "(no target)"


def _spread(seconds: array) -> dict[str, Any]:
    if not seconds:
        return {"tickets": 0}
    ordered = sorted(seconds)

    def at(q: float) -> float:
        return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]

    return {
        "tickets": len(ordered),
        "median_seconds": at(0.5),
        "p90_seconds": at(0.9),
        "max_seconds": ordered[-1],
    }


@dataclass
class Comparison:
    """Tickets where two policies differ: counted, and the first ``limit`` kept to show."""

    limit: int
    same: int = 0
    differing: int = 0
    shown: list[dict[str, Any]] = field(default_factory=list)

    def add(self, first: Outcome, second: Outcome) -> None:
        """Compare one ticket's two outcomes."""
        if first.signature() == second.signature():
            self.same += 1
            return
        self.differing += 1
        if len(self.shown) < self.limit:
            self.shown.append({
                "ticket": first.ticket_id, "subject": first.subject,
                "policy": first.as_json(), "against": second.as_json(),
            })

    def report(self) -> dict[str, Any]:
        """The comparison as plain JSON."""
        return {
            "same": self.same, "differing": self.differing,
            "shown": self.shown, "truncated": self.differing > len(self.shown),
        }


# --- the run ----------------------------------------------------------------------------------


class Progress:
    """Says on a stream how far a long read has come, at most every ``every`` seconds."""

    def __init__(self, out: TextIO | None, *, every: float = PROGRESS_SECONDS,
                 clock: Callable[[], float] = time.monotonic):
        self.out = out
        self.every = every
        self.clock = clock
        self.started = clock()
        self.last = self.started

    def say(self, text: str, *, force: bool = False) -> None:
        """Write ``text`` if it is time to (or ``force``)."""
        if self.out is None:
            return
        now = self.clock()
        if force or now - self.last >= self.every:
            self.last = now
            self.out.write(f"escalier backtest: {text}\n")
            self.out.flush()

    def tickets(self, tickets: int, events: int, *, force: bool = False) -> None:
        """Tickets and events replayed so far, and the rate."""
        elapsed = max(self.clock() - self.started, 1e-9)
        self.say(f"{tickets:,} tickets replayed ({events:,} events, {tickets / elapsed:,.0f} tickets/s)",
                 force=force)


def run_backtest(
    histories: Iterable[Sequence[TicketEvent]],
    policy: Policy,
    *,
    until: datetime,
    against: Policy | None = None,
    max_differences: int = DEFAULT_MAX_DIFFERENCES,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Replay each ticket's history under ``policy`` (and ``against``) and add up the outcomes.

    ``histories`` yields one ticket's events at a time (the ticket's opening first, in time
    order); each is replayed and dropped before the next is read.

    :returns: the report as plain JSON: ``results.policy``, ``results.against`` (or None) and
        ``differences`` (or None).
    """
    tally = Tally(policy)
    other = Tally(against) if against is not None else None
    comparison = Comparison(max_differences) if against is not None else None
    started = time.monotonic()
    events_seen = 0
    for history in histories:
        events = list(history)
        if not events:
            continue
        events_seen += len(events)
        outcome = backtest_ticket(policy, events, until=until, on_turn=tally.on_turn)
        tally.add(events, outcome, noticed_by_people(events, policy))
        if against is not None and other is not None and comparison is not None:
            second = backtest_ticket(against, events, until=until, on_turn=other.on_turn)
            other.add(events, second, noticed_by_people(events, against))
            comparison.add(outcome, second)
        if progress is not None:
            progress.tickets(tally.tickets, events_seen)
    if progress is not None:
        progress.tickets(tally.tickets, events_seen, force=True)
    return {
        "until": until.astimezone(UTC).isoformat(),
        "tickets": tally.tickets,
        "events": events_seen,
        "elapsed_seconds": round(time.monotonic() - started, 3),
        "results": {"policy": tally.report(), "against": other.report() if other else None},
        "differences": comparison.report() if comparison is not None else None,
    }


def read_history(
    policy: Policy,
    source: str,
    *,
    instance: str = "default",
    since: datetime,
    until: datetime,
    environ: Mapping[str, str],
    plugin_manager: Any = None,
    progress: Callable[[str], None] | None = None,
) -> Iterator[list[TicketEvent]]:
    """The tickets created in ``[since, until]`` at ``source``/``instance``, one history at a time.

    The connection is built from the policy's connector settings and ``environ``, as ``escalier
    serve`` builds it, and closed when the iteration ends.

    :raises BacktestInputError: the policy does not configure the source or the instance, or a
        secret it names is not set.
    """
    from escalier.plugins import get_plugin_manager
    from escalier.runtime.operations import configured_instances

    pm = plugin_manager or get_plugin_manager()
    instances = configured_instances(policy, pm)
    found = instances.get((source, instance))
    if found is None:
        known = sorted(f"{name}/{inst}" for name, inst in instances if name == source)
        if known:
            raise BacktestInputError(
                f"--instance: {source} has no instance '{instance}' in {policy.source or 'the policy'} "
                f"(known: {', '.join(i.split('/', 1)[1] for i in known)})"
            )
        raise BacktestInputError(
            f"--from {source}: {policy.source or 'the policy'} has no connectors.{source} section "
            "to read the history with"
        )
    if found.spec.connect is None or source not in _READERS:
        raise BacktestInputError(f"--from {source}: the {source} connector cannot read a history")
    try:
        connection = found.spec.connect(found.config, instance, environ, policy.people)
    except KeyError as exc:
        raise BacktestInputError(
            f"{source}/{instance}: environment variable {exc.args[0]} is not set"
        ) from None
    except EscalierError as exc:
        raise BacktestInputError(str(exc)) from None
    reader = importlib.import_module(_READERS[source])
    try:
        yield from reader.read_history(connection, since=since, until=until, progress=progress)
    finally:
        connection.close()


# --- the command --------------------------------------------------------------------------------


def add_command(commands: argparse._SubParsersAction) -> None:
    """Register ``escalier backtest POLICY --from SOURCE [--instance NAME] [--since 30d] ...``."""
    parser = commands.add_parser(
        "backtest",
        help="try a policy on past tickets: what it would have done, and how early",
        description=_DESCRIPTION,
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _arguments(parser)
    parser.set_defaults(handler=_handle)


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("policy", metavar="POLICY", help="the policy file (YAML) to try")
    parser.add_argument(
        "--from", dest="source", required=True, choices=SOURCES,
        help="where the past tickets are read: jira, zendesk or email",
    )
    parser.add_argument(
        "--instance", default="default",
        help="the connector instance (connectors.<source>.instances.<name>; default: default)",
    )
    parser.add_argument(
        "--since", default=DEFAULT_SINCE, metavar="WHEN",
        help="the tickets created since then: a duration back from now (30d, 12w) or a date "
        "or time (2026-01-01, 2026-01-01T08:00:00+01:00); default 30d",
    )
    parser.add_argument(
        "--against", metavar="OTHER_POLICY",
        help="a second policy to replay on the same history, shown side by side",
    )
    parser.add_argument(
        "--max-differences", type=int, default=DEFAULT_MAX_DIFFERENCES, metavar="N",
        help=f"with --against, show at most N differing tickets (default {DEFAULT_MAX_DIFFERENCES}); "
        "all are counted",
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON")


def main(argv: Sequence[str] | None = None, *, out: TextIO | None = None,
         err: TextIO | None = None, environ: Mapping[str, str] | None = None,
         now: datetime | None = None) -> int:
    """``escalier backtest`` on its own: parse ``argv`` and run; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="escalier backtest", description=_DESCRIPTION, epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _arguments(parser)
    args = parser.parse_args(argv)
    return run(args, out=out, err=err, environ=environ, now=now)


def _handle(args: argparse.Namespace) -> int:
    return run(args)


def run(
    args: argparse.Namespace,
    *,
    out: TextIO | None = None,
    err: TextIO | None = None,
    environ: Mapping[str, str] | None = None,
    now: datetime | None = None,
) -> int:
    """Run a parsed ``escalier backtest``; prints the report, returns the exit status."""
    out = out or sys.stdout
    err = err or sys.stderr
    environ = os.environ if environ is None else environ
    now = now or datetime.now(UTC)
    try:
        if args.max_differences < 0:
            raise BacktestInputError("--max-differences: give 0 or more")
        policy = _load(args.policy, "POLICY")
        against = _load(args.against, "--against") if args.against else None
        since = parse_since(args.since, now)
    except BacktestInputError as exc:
        print(f"escalier backtest: {exc}", file=err)
        return EXIT_USAGE
    progress = Progress(err)
    progress.say(
        f"reading {args.source}/{args.instance}: tickets created since "
        f"{since.astimezone(UTC):%Y-%m-%d %H:%M} UTC", force=True,
    )
    try:
        histories = read_history(
            policy, args.source, instance=args.instance, since=since, until=now,
            environ=environ, progress=lambda text: progress.say(text),
        )
        report = run_backtest(
            histories, policy, until=now, against=against,
            max_differences=args.max_differences, progress=progress,
        )
    except BacktestInputError as exc:
        print(f"escalier backtest: {exc}", file=err)
        return EXIT_USAGE
    except EscalierError as exc:
        print(f"escalier backtest: reading {args.source}/{args.instance} failed: {exc}", file=err)
        return EXIT_FAILED
    report["source"] = {"connector": args.source, "instance": args.instance}
    report["since"] = since.astimezone(UTC).isoformat()
    if args.json:
        json.dump(report, out, indent=2)
        out.write("\n")
    else:
        print_report(report, out)
    return EXIT_OK


def _load(path: str, what: str) -> Policy:
    from escalier.core.config import load_policy

    if not Path(path).is_file():
        raise BacktestInputError(f"{what}: {path}: no such file")
    try:
        return load_policy(path)
    except ConfigError as exc:
        first = exc.problems[0] if exc.problems else exc
        more = f" (and {len(exc.problems) - 1} more problems)" if len(exc.problems) > 1 else ""
        raise BacktestInputError(f"{first}{more}") from None


def parse_since(value: str, now: datetime) -> datetime:
    """``30d`` (back from ``now``), a date (midnight UTC) or an aware time; never after ``now``."""
    text = value.strip()
    if re.fullmatch(r"(\d+\s*[wdhms]\s*)+", text):
        return now - parse_duration(text)
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise BacktestInputError(
            f"--since: '{value}' is neither a duration (30d) nor a date (2026-01-01)"
        ) from None
    if when.utcoffset() is None:
        if re.fullmatch(r"\d{4}-\d{2}-\d{2}", text):
            when = when.replace(tzinfo=UTC)
        else:
            raise BacktestInputError("--since: give a time zone, e.g. 2026-01-01T08:00:00+01:00")
    if when > now:
        raise BacktestInputError(f"--since: {value} is in the future")
    return when


# --- the printed report ---------------------------------------------------------------------------


def print_report(report: Mapping[str, Any], out: TextIO) -> None:
    """The report as text: totals (side by side with --against), then the tickets that differ."""
    first = report["results"]["policy"]
    second = report["results"].get("against")
    source = report.get("source") or {}
    out.write(
        f"Backtest on {source.get('connector', '?')}/{source.get('instance', '?')}: "
        f"{report['tickets']:,} tickets created since {_short_time(report.get('since'))} "
        f"({report['events']:,} events), replayed up to {_short_time(report['until'])} UTC\n\n"
    )
    columns = [first] + ([second] if second else [])
    rows = _summary_rows(columns)
    names = [f"{c['policy']['name']} ({c['policy']['version']})" for c in columns]
    width = max([len(r[0]) for r in rows] + [10])
    cell = max([len(v) for r in rows for v in r[1:]] + [len(n) for n in names]) + 2
    out.write(" " * width + "  " + "".join(n.ljust(cell) for n in names).rstrip() + "\n")
    for label, *values in rows:
        line = label.ljust(width) + "  " + "".join(v.ljust(cell) for v in values)
        out.write(line.rstrip() + "\n")
    differences = report.get("differences")
    if differences is None:
        return
    out.write(
        f"\n{differences['differing']:,} tickets differ, {differences['same']:,} the same"
        + (f" (the first {len(differences['shown'])} shown)" if differences["truncated"] else "")
        + "\n"
    )
    if not differences["shown"]:
        return
    label_width = max(len(d["ticket"]) for d in differences["shown"]) + 2
    first_width = max(
        [len(_outcome_text(d["policy"])) for d in differences["shown"]] + [len(names[0])]
    ) + 2
    out.write("ticket".ljust(label_width) + names[0].ljust(first_width) + names[1] + "\n")
    for difference in differences["shown"]:
        out.write(
            difference["ticket"].ljust(label_width)
            + _outcome_text(difference["policy"]).ljust(first_width)
            + _outcome_text(difference["against"]) + "\n"
        )


def _summary_rows(columns: list[Mapping[str, Any]]) -> list[list[str]]:
    rows: list[list[str]] = [["tickets opened"] + [f"{c['opened']:,} of {c['tickets']:,}" for c in columns]]
    tiers = sorted({t for c in columns for t in c["opened_at_tier"]}, key=int)
    for tier in tiers:
        rows.append([f"  opened at tier {tier}"] + [f"{c['opened_at_tier'].get(tier, 0):,}" for c in columns])
    keys = []
    for column in columns:
        for move in column["escalations"]:
            key = _move_label(move)
            if key not in keys:
                keys.append(key)
    rows.append(["moves"] + [f"{sum(m['count'] for m in c['escalations']):,}" for c in columns])
    for key in keys:
        rows.append([f"  {key}"] + [
            f"{sum(m['count'] for m in c['escalations'] if _move_label(m) == key):,}" for c in columns
        ])
    whoms = []
    for column in columns:
        for whom in list(column["assigned"])[:5]:
            if whom not in whoms:
                whoms.append(whom)
    if whoms:
        rows.append(["assigned to"] + ["" for _ in columns])
        rows.extend([f"  {whom}"] + [f"{c['assigned'].get(whom, 0):,}" for c in columns] for whom in whoms)
    people = []
    for column in columns:
        for who in list(column["notified"])[:5]:
            if who not in people:
                people.append(who)
    if people:
        rows.append(["notified"] + ["" for _ in columns])
        rows.extend([f"  {who}"] + [f"{c['notified'].get(who, 0):,}" for c in columns] for who in people)
    rows.append(["SLA breaches"] + [
        f"{sum(c['sla']['breaches'].values()):,} on {c['sla']['tickets_breached']:,} tickets" for c in columns
    ])
    clocks = sorted({k for c in columns for k in c["sla"]["breaches"]})
    rows.extend([f"  {clock}"] + [f"{c['sla']['breaches'].get(clock, 0):,}" for c in columns] for clock in clocks)
    rows.append(["SLA warnings"] + [f"{c['sla']['warnings']:,}" for c in columns])
    noticed = columns[0]["noticed_by_people"]
    how = ", ".join(f"{n:,} {h}" for h, n in noticed["how"].items()) or "none"
    rows.append([f"escalated by people ({how})"] + [f"{c['noticed_by_people']['tickets']:,}" for c in columns])
    rows.append(["  policy earlier"] + [_lead_text(c["noticed_by_people"]["policy_earlier"]) for c in columns])
    rows.append(["  policy later"] + [_lead_text(c["noticed_by_people"]["policy_later"]) for c in columns])
    rows.append(["  policy never"] + [f"{c['noticed_by_people']['policy_never']:,}" for c in columns])
    rows.append(["escalated by the policy alone"] + [f"{c['noticed_by_people']['policy_only']:,}" for c in columns])
    rows.append(["upstream calls"] + [f"{c['upstream']['calls']:,}" for c in columns])
    rows.append(["  at the busiest hour"] + [_peak_text(c["upstream"]["peak_hour"]) for c in columns])
    return rows


def _move_label(move: Mapping[str, Any]) -> str:
    kind, path = move["kind"], move["path"]
    if path == "functional" or path == "hierarchical":
        return f"{kind} {move['from_tier']} -> {move['place'] or path}"
    return f"{kind} {move['from_tier']} -> {move['to_tier']}" + ("" if path == "internal" else f" ({path})")


def _lead_text(spread: Mapping[str, Any]) -> str:
    if not spread.get("tickets"):
        return "0"
    return (
        f"{spread['tickets']:,}: median {_seconds_text(spread['median_seconds'])}, "
        f"p90 {_seconds_text(spread['p90_seconds'])}, most {_seconds_text(spread['max_seconds'])}"
    )


def _seconds_text(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.0f}s"
    return format_duration(timedelta(minutes=round(seconds / 60)))


def _peak_text(peak: Mapping[str, Any] | None) -> str:
    if not peak:
        return "0"
    return f"{peak['calls']:,} ({_short_time(peak['hour'])} UTC)"


def _short_time(value: str | None) -> str:
    if not value:
        return "?"
    return datetime.fromisoformat(value).astimezone(UTC).strftime("%Y-%m-%d %H:%M")


def _outcome_text(outcome: Mapping[str, Any]) -> str:
    parts = [f"opened {outcome['opened_tier']}" if outcome["opened_tier"] is not None else "not opened"]
    for move in outcome["moves"]:
        where = move["place"] or move["to_tier"]
        parts.append(f"{move['from_tier']}->{where} {_short_time(move['at'])[5:]}")
    if outcome["breaches"]:
        parts.append(f"{len(outcome['breaches'])} breach" + ("es" if len(outcome["breaches"]) > 1 else ""))
    return "; ".join(parts)
