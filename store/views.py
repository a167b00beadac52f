"""Read-only views of the store for people: what is escalated, what waits to go upstream.

The dashboard reads these; nothing here writes. Every time comes back in UTC. An escalation's
state is read without its event log and checkpoints (what only the engine needs), so a page of
escalations parses quickly however long they have been open.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, func, select

from escalier.core.model import EscalationState
from escalier.store._store import utc
from escalier.store.schema import audit, dead_letters, escalations, outbox

__all__ = [
    "MOVES",
    "AuditEntry",
    "Backlog",
    "DeadLetterSummary",
    "EscalationDetail",
    "HeldAccount",
    "OpenEscalation",
    "Overview",
    "UpstreamCall",
    "read_escalation",
    "read_overview",
]

# The audit kinds that put an escalation where it is (the others note what happened there).
MOVES = frozenset({"deescalated", "escalated", "functional", "hierarchical", "opened", "reopened"})
# Kept by the engine for itself; a view never needs them and they can be most of a state's size.
_ENGINE_ONLY = ("log", "checkpoint", "checkpoint_next", "history", "seen_events", "effects")


@dataclass(frozen=True)
class AuditEntry:
    """One row of an escalation's audit trail."""

    at: datetime
    kind: str
    from_tier: int | None
    to_tier: int | None
    criteria: tuple[str, ...]
    reason: str
    actor: str | None
    event_id: str | None


@dataclass(frozen=True)
class OpenEscalation:
    """An open escalation with the entry of its last move and the latest entry of its trail."""

    id: int
    state: EscalationState
    updated_at: datetime
    last_move: AuditEntry | None
    latest: AuditEntry | None


@dataclass(frozen=True)
class Backlog:
    """The outbox by state: ``ready`` is the part of ``pending`` whose time has come."""

    pending: int
    ready: int
    done: int
    dead: int


@dataclass(frozen=True)
class HeldAccount:
    """An upstream account whose pending actions wait for a later moment (a rate limit, a retry)."""

    system: str
    instance: str
    held: int
    until: datetime
    last_error: str | None


@dataclass(frozen=True)
class DeadLetterSummary:
    """A dead letter not retried yet, with the action it holds."""

    id: int
    escalation_id: int
    system: str
    instance: str
    ticket_id: str
    kind: str
    key: str
    failed_at: datetime
    error: str


@dataclass(frozen=True)
class Overview:
    """Everything the dashboard's first page shows, read at one moment."""

    escalations: tuple[OpenEscalation, ...]
    open_by_tier: Mapping[int, int]
    backlog: Backlog
    held: tuple[HeldAccount, ...]
    dead_letters: int
    latest_dead: tuple[DeadLetterSummary, ...]

    @property
    def shown_all(self) -> bool:
        """False when more escalations are open than the page lists."""
        return len(self.escalations) >= sum(self.open_by_tier.values())


@dataclass(frozen=True)
class UpstreamCall:
    """One outbox row of an escalation: an action sent, waiting, or given up on."""

    id: int
    seq: int
    kind: str
    key: str
    state: str
    attempts: int
    last_error: str | None
    created_at: datetime
    next_attempt_at: datetime
    applied_at: datetime | None


@dataclass(frozen=True)
class EscalationDetail:
    """One escalation, its whole audit trail and every upstream call made for it."""

    id: int
    status: str
    state: EscalationState
    opened_at: datetime
    updated_at: datetime
    audit: tuple[AuditEntry, ...]
    calls: tuple[UpstreamCall, ...]


def _state(value: Mapping[str, Any]) -> EscalationState:
    return EscalationState.model_validate({k: v for k, v in value.items() if k not in _ENGINE_ONLY})


def _maybe_entry(row: Mapping[str, Any], prefix: str) -> AuditEntry | None:
    return None if row[f"{prefix}id"] is None else _entry(row, prefix)


def _entry(row: Mapping[str, Any], prefix: str = "") -> AuditEntry:
    return AuditEntry(
        at=utc(row[f"{prefix}at"]), kind=row[f"{prefix}kind"], from_tier=row[f"{prefix}from_tier"],
        to_tier=row[f"{prefix}to_tier"], criteria=tuple(row[f"{prefix}criteria"] or ()),
        reason=row[f"{prefix}reason"], actor=row[f"{prefix}actor"],
        event_id=row[f"{prefix}event_id"],
    )


def _maybe(value: datetime | None) -> datetime | None:
    return None if value is None else utc(value)


def read_overview(
    engine: Engine, *, now: datetime, limit: int = 500, dead_letter_limit: int = 5
) -> Overview:
    """The open escalations (highest tier first, oldest first within a tier; at most ``limit``),
    the outbox backlog, the accounts whose actions are held, and the latest dead letters."""
    now = utc(now)
    moved, noted = audit.alias("moved"), audit.alias("noted")
    last_move = (
        select(audit.c.escalation_id, func.max(audit.c.id).label("audit_id"))
        .where(audit.c.kind.in_(sorted(MOVES)))
        .group_by(audit.c.escalation_id)
        .subquery()
    )
    latest = (
        select(audit.c.escalation_id, func.max(audit.c.id).label("audit_id"))
        .group_by(audit.c.escalation_id)
        .subquery()
    )
    query = (
        select(
            escalations.c.id, escalations.c.state, escalations.c.updated_at,
            *[c.label(f"moved_{c.name}") for c in moved.c],
            *[c.label(f"noted_{c.name}") for c in noted.c],
        )
        .select_from(escalations)
        .outerjoin(last_move, last_move.c.escalation_id == escalations.c.id)
        .outerjoin(moved, moved.c.id == last_move.c.audit_id)
        .outerjoin(latest, latest.c.escalation_id == escalations.c.id)
        .outerjoin(noted, noted.c.id == latest.c.audit_id)
        .where(escalations.c.status == "open")
        .order_by(escalations.c.tier.desc(), escalations.c.opened_at, escalations.c.id)
        .limit(limit)
    )
    with engine.connect() as connection:
        rows = connection.execute(query).all()
        open_by_tier = {
            int(row.tier): int(row.n)
            for row in connection.execute(
                select(escalations.c.tier, func.count().label("n"))
                .where(escalations.c.status == "open")
                .group_by(escalations.c.tier)
            )
        }
        by_state = {
            row.state: int(row.n)
            for row in connection.execute(
                select(outbox.c.state, func.count().label("n")).group_by(outbox.c.state)
            )
        }
        ready = connection.execute(
            select(func.count()).select_from(outbox)
            .where(outbox.c.state == "pending", outbox.c.next_attempt_at <= now)
        ).scalar_one()
        held = connection.execute(
            select(
                outbox.c.system, outbox.c.instance, func.count().label("n"),
                func.max(outbox.c.next_attempt_at).label("until"),
                func.max(outbox.c.last_error).label("last_error"),
            )
            .where(outbox.c.state == "pending", outbox.c.next_attempt_at > now)
            .group_by(outbox.c.system, outbox.c.instance)
            .order_by(outbox.c.system, outbox.c.instance)
        ).all()
        waiting = dead_letters.c.retried_at.is_(None)
        dead_count = connection.execute(
            select(func.count()).select_from(dead_letters).where(waiting)
        ).scalar_one()
        dead = connection.execute(
            select(
                dead_letters.c.id, dead_letters.c.failed_at, dead_letters.c.error,
                outbox.c.escalation_id, outbox.c.system, outbox.c.instance, outbox.c.ticket_id,
                outbox.c.action, outbox.c.idempotency_key,
            )
            .join(outbox, outbox.c.id == dead_letters.c.outbox_id)
            .where(waiting)
            .order_by(dead_letters.c.failed_at.desc(), dead_letters.c.id.desc())
            .limit(dead_letter_limit)
        ).all()
    return Overview(
        escalations=tuple(
            OpenEscalation(
                id=int(row.id), state=_state(row.state), updated_at=utc(row.updated_at),
                last_move=_maybe_entry(row._mapping, "moved_"),
                latest=_maybe_entry(row._mapping, "noted_"),
            )
            for row in rows
        ),
        open_by_tier=dict(sorted(open_by_tier.items())),
        backlog=Backlog(
            pending=by_state.get("pending", 0), ready=int(ready), done=by_state.get("done", 0),
            dead=by_state.get("dead", 0),
        ),
        held=tuple(
            HeldAccount(row.system, row.instance, int(row.n), utc(row.until), row.last_error)
            for row in held
        ),
        dead_letters=int(dead_count),
        latest_dead=tuple(
            DeadLetterSummary(
                id=int(row.id), escalation_id=int(row.escalation_id), system=row.system,
                instance=row.instance, ticket_id=row.ticket_id, kind=str(row.action.get("kind")),
                key=row.idempotency_key, failed_at=utc(row.failed_at), error=row.error,
            )
            for row in dead
        ),
    )


def read_escalation(engine: Engine, escalation_id: int) -> EscalationDetail | None:
    """One escalation with its audit trail and outbox rows, in order; None if there is none."""
    with engine.connect() as connection:
        row = connection.execute(
            select(escalations).where(escalations.c.id == escalation_id)
        ).first()
        if row is None:
            return None
        trail = connection.execute(
            select(audit)
            .where(audit.c.escalation_id == escalation_id)
            .order_by(audit.c.at, audit.c.id)
        ).all()
        calls = connection.execute(
            select(outbox)
            .where(outbox.c.escalation_id == escalation_id)
            .order_by(outbox.c.seq, outbox.c.id)
        ).all()
    return EscalationDetail(
        id=int(row.id),
        status=row.status,
        state=_state(row.state),
        opened_at=utc(row.opened_at),
        updated_at=utc(row.updated_at),
        audit=tuple(_entry(entry._mapping) for entry in trail),
        calls=tuple(
            UpstreamCall(
                id=int(call.id), seq=int(call.seq), kind=str(call.action.get("kind")),
                key=call.idempotency_key, state=call.state, attempts=int(call.attempts),
                last_error=call.last_error, created_at=utc(call.created_at),
                next_attempt_at=utc(call.next_attempt_at), applied_at=_maybe(call.applied_at),
            )
            for call in calls
        ),
    )
