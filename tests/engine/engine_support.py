"""Helpers for the engine tests: the test desk policy, tickets, events, and stepping time."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import yaml

from escalier.core.engine import Decision, decide
from escalier.core.model import (
    Action,
    ActionKind,
    EscalationState,
    EventKind,
    HistoryEntry,
    Ticket,
    TicketEvent,
    Timer,
)
from escalier.core.policy import Policy

HERE = Path(__file__).resolve().parent
BERLIN = ZoneInfo("Europe/Berlin")
UTC = ZoneInfo("UTC")


def load(name: str = "desk.yaml", *, version: str = "v1", **changes: Any) -> Policy:
    """A policy from tests/engine/policies, with top-level keys replaced by ``changes``."""
    data = yaml.safe_load((HERE / "policies" / name).read_text())
    data.update(changes)
    return Policy.model_validate(data).with_version(version, name)


def berlin(*parts: int) -> datetime:
    """A Berlin wall-clock time."""
    return datetime(*parts, tzinfo=BERLIN)


def make_ticket(created_at: datetime, **fields: Any) -> Ticket:
    """A Zendesk ticket with sensible defaults."""
    values: dict[str, Any] = dict(
        system="zendesk", id="100", subject="Export fails", severity="high", users_affected=1,
        fields={"steps": "run the export"},
    )
    values.update(fields)
    return Ticket(created_at=created_at, **values)


def event(
    base: Ticket, kind: EventKind, at: datetime, event_id: str, **fields: Any
) -> TicketEvent:
    """An event on ``base``; ``ticket_changes`` gives the snapshot after it ({} for unchanged)."""
    changes = fields.pop("ticket_changes", None)
    snapshot = base.model_copy(update=changes) if changes is not None else fields.pop("ticket", None)
    return TicketEvent(
        id=event_id, system=base.system, ticket_id=base.id, kind=kind, occurred_at=at,
        ticket=snapshot, **fields,
    )


class Run:
    """A ticket's escalation stepped through the engine, remembering everything it emitted."""

    def __init__(self, policy: Policy, ticket: Ticket, **options: Any):
        self.policy = policy
        self.ticket = ticket
        self.options = options
        self.actions: list[Action] = []
        self.history: list[HistoryEntry] = []
        self.state: EscalationState | None = None
        self.last: Decision | None = None
        self._take(decide(policy, None, event(ticket, EventKind.CREATED, ticket.created_at, "created", ticket=ticket), ticket.created_at, **options))

    def _take(self, decision: Decision) -> Decision:
        self.state = decision.state
        self.last = decision
        self.actions.extend(decision.actions)
        self.history.extend(decision.history)
        return decision

    def send(self, stimulus: TicketEvent, now: datetime | None = None, *, policy: Policy | None = None) -> Decision:
        """Deliver an event at ``now`` (its own time by default), after the timers due before."""
        now = now or stimulus.occurred_at
        self.until(now, policy=policy)
        return self._take(decide(policy or self.policy, self.state, stimulus, now, **self.options))

    def until(self, end: datetime, *, policy: Policy | None = None) -> None:
        """Deliver every timer the engine asks for up to ``end``."""
        while self.state is not None and self.state.wake_at is not None and self.state.wake_at <= end:
            due = self.state.wake_at
            timer = Timer(system=self.state.system, ticket_id=self.state.ticket_id, due_at=due)
            self._take(decide(policy or self.policy, self.state, timer, due, **self.options))

    def entries(self, kind: str) -> list[HistoryEntry]:
        """The audit entries of one kind."""
        return [h for h in self.history if h.kind == kind]

    def of_kind(self, kind: ActionKind) -> list[Action]:
        """The actions of one kind."""
        return [a for a in self.actions if a.kind is kind]


def keys(actions: Iterable[Action]) -> list[str]:
    """The keys of some actions."""
    return [a.key for a in actions]


__all__ = ["BERLIN", "UTC", "Run", "berlin", "event", "keys", "load", "make_ticket", "timedelta"]
