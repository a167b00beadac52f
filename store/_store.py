"""The worker's view of the store: escalation state, audit, timers, the outbox and dead letters.

Every time is passed in by the caller (the worker owns the clock), converted to UTC on the way in
and read back as UTC: SQLite keeps no offset, PostgreSQL keeps ``timestamptz``.

Claims are leases: a claimed row carries ``claimed_by`` and ``claimed_until`` and may be claimed
again once the lease has run out, or at once by the same worker id (a restarted worker takes back
what it held when it died). Worker ids must therefore be unique among live processes. Each claim is
a single ``UPDATE ... WHERE id IN (SELECT ... FOR UPDATE SKIP LOCKED) RETURNING`` so that concurrent
workers on PostgreSQL never wait on one another and SQLite never upgrades a read lock.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Engine, delete, exists, func, insert, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import aliased

from escalier.core.errors import StoreError
from escalier.core.model import Action, EscalationState, HistoryEntry
from escalier.store.schema import audit, dead_letters, escalations, outbox, timers

__all__ = [
    "ClaimedAction",
    "ClaimedTimer",
    "DeadLetter",
    "StaleStateError",
    "Store",
    "StoredEscalation",
    "Transaction",
]


class StaleStateError(StoreError):
    """Another worker saved the escalation first; reload it and decide again."""


def utc(value: datetime) -> datetime:
    """``value`` in UTC; a naive value (as SQLite returns them) is taken to be UTC already."""
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def _maybe_utc(value: datetime | None) -> datetime | None:
    return None if value is None else utc(value)


@dataclass(frozen=True)
class StoredEscalation:
    """An escalation as stored: its row id, its optimistic-lock version and its state."""

    id: int
    version: int
    state: EscalationState


@dataclass(frozen=True)
class ClaimedTimer:
    """A due wake-up this worker now holds."""

    escalation_id: int
    due_at: datetime
    system: str
    instance: str
    ticket_id: str


@dataclass(frozen=True)
class ClaimedAction:
    """An outbox row this worker now holds."""

    id: int
    escalation_id: int
    seq: int
    urgency: int
    attempts: int
    action: Action


@dataclass(frozen=True)
class DeadLetter:
    """An action that exhausted its attempts or was refused upstream."""

    id: int
    outbox_id: int
    key: str
    system: str
    instance: str
    ticket_id: str
    kind: str
    attempts: int
    failed_at: datetime
    error: str
    retried_at: datetime | None


class Transaction:
    """Operations that belong in the same transaction as a decision."""

    def __init__(self, connection: Connection):
        self.connection = connection

    def load_escalation(self, system: str, instance: str, ticket_id: str) -> StoredEscalation | None:
        """The stored escalation of a ticket, or None."""
        row = self.connection.execute(
            select(escalations.c.id, escalations.c.version, escalations.c.state).where(
                escalations.c.system == system,
                escalations.c.instance == instance,
                escalations.c.ticket_id == ticket_id,
            )
        ).first()
        if row is None:
            return None
        return StoredEscalation(row.id, row.version, EscalationState.model_validate(row.state))

    def save_escalation(
        self, previous: StoredEscalation | None, state: EscalationState, now: datetime
    ) -> int:
        """Insert or update the escalation; raises :class:`StaleStateError` if it changed meanwhile."""
        values = dict(
            tier=state.tier,
            status=state.status.value,
            policy_version=state.policy_version,
            state=state.model_dump(mode="json"),
            updated_at=utc(now),
            wake_at=_maybe_utc(state.wake_at),
        )
        if previous is None:
            try:
                # A savepoint, so a lost race leaves the caller's transaction usable for the rollback.
                with self.connection.begin_nested():
                    result = self.connection.execute(
                        insert(escalations).values(
                            system=state.system,
                            instance=state.instance,
                            ticket_id=state.ticket_id,
                            opened_at=utc(state.opened_at),
                            version=1,
                            **values,
                        )
                    )
            except IntegrityError as exc:
                raise StaleStateError(f"escalation of {state.ticket_id} was created meanwhile") from exc
            return int(result.inserted_primary_key[0])
        result = self.connection.execute(
            update(escalations)
            .where(escalations.c.id == previous.id, escalations.c.version == previous.version)
            .values(version=previous.version + 1, **values)
        )
        if result.rowcount != 1:
            raise StaleStateError(f"escalation {previous.id} changed since version {previous.version}")
        return previous.id

    def append_audit(self, escalation_id: int, entries: Iterable[HistoryEntry]) -> None:
        """Add the decision's audit entries."""
        rows = [
            dict(
                escalation_id=escalation_id,
                at=utc(entry.at),
                kind=entry.kind,
                from_tier=entry.from_tier,
                to_tier=entry.to_tier,
                reason=entry.reason,
                criteria=list(entry.criteria),
                actor=entry.actor,
                policy_version=entry.policy_version,
                event_id=entry.event_id,
            )
            for entry in entries
        ]
        if rows:
            self.connection.execute(insert(audit), rows)

    def enqueue_actions(
        self, escalation_id: int, actions: Sequence[Action], *, first_seq: int, now: datetime
    ) -> None:
        """Queue actions for the upstream, numbered ``first_seq``, ``first_seq + 1``... per ticket."""
        rows = [
            dict(
                idempotency_key=action.key,
                escalation_id=escalation_id,
                system=action.system,
                instance=action.instance,
                ticket_id=action.ticket_id,
                seq=first_seq + offset,
                urgency=action.urgency,
                action=action.model_dump(mode="json"),
                state="pending",
                attempts=0,
                next_attempt_at=utc(now),
                created_at=utc(now),
            )
            for offset, action in enumerate(actions)
        ]
        if rows:
            self.connection.execute(insert(outbox), rows)

    def set_timer(self, escalation_id: int, due_at: datetime | None) -> None:
        """Make ``due_at`` the escalation's only wake-up (None removes it) and release any claim."""
        self.connection.execute(delete(timers).where(timers.c.escalation_id == escalation_id))
        if due_at is not None:
            self.connection.execute(
                insert(timers).values(escalation_id=escalation_id, due_at=utc(due_at))
            )


class Store:
    """The durable state of the runtime, on one SQLAlchemy engine."""

    def __init__(self, engine: Engine):
        self.engine = engine
        self._postgres = engine.dialect.name == "postgresql"

    @contextmanager
    def begin(self) -> Iterator[Transaction]:
        """One transaction: commits on success, rolls back on any exception."""
        with self.engine.begin() as connection:
            if connection.dialect.name == "sqlite":
                # Take the write lock before the first read, as store/inbox.py does: the sqlite3
                # module would otherwise run the read outside any transaction, and a SAVEPOINT
                # opened outside one commits on its own when released.
                connection.exec_driver_sql("BEGIN IMMEDIATE")
            yield Transaction(connection)

    def load_escalation(self, system: str, instance: str, ticket_id: str) -> StoredEscalation | None:
        """The stored escalation of a ticket, or None."""
        with self.begin() as tx:
            return tx.load_escalation(system, instance, ticket_id)

    # --- timers ---------------------------------------------------------------------------------

    def claim_timers(
        self, worker_id: str, *, now: datetime, limit: int, lease: timedelta
    ) -> list[ClaimedTimer]:
        """Claim up to ``limit`` due wake-ups, earliest first."""
        now = utc(now)
        due = (
            select(timers.c.escalation_id)
            .where(timers.c.due_at <= now, _claimable(timers, worker_id, now))
            .order_by(timers.c.due_at)
            .limit(limit)
        )
        if self._postgres:
            due = due.with_for_update(skip_locked=True)
        with self.engine.begin() as connection:
            claimed = connection.execute(
                update(timers)
                .where(timers.c.escalation_id.in_(due.scalar_subquery()))
                .values(claimed_by=worker_id, claimed_until=now + lease)
                .returning(timers.c.escalation_id, timers.c.due_at)
            ).all()
            if not claimed:
                return []
            names = {
                row.id: row
                for row in connection.execute(
                    select(
                        escalations.c.id, escalations.c.system, escalations.c.instance,
                        escalations.c.ticket_id,
                    ).where(escalations.c.id.in_([row.escalation_id for row in claimed]))
                )
            }
        found = [
            ClaimedTimer(
                row.escalation_id, utc(row.due_at), names[row.escalation_id].system,
                names[row.escalation_id].instance, names[row.escalation_id].ticket_id,
            )
            for row in claimed
            if row.escalation_id in names
        ]
        return sorted(found, key=lambda timer: timer.due_at)

    # --- the outbox -----------------------------------------------------------------------------

    def claim_actions(
        self, worker_id: str, *, now: datetime, limit: int, lease: timedelta
    ) -> list[ClaimedAction]:
        """Claim up to ``limit`` ready actions, most urgent first, at most one per ticket.

        An action is ready when it is pending, its ``next_attempt_at`` has come, and no action of
        its ticket with a lower ``seq`` is still pending: so a ticket's actions reach the upstream in
        the order the engine issued them, even across workers. Among equally urgent actions the
        oldest goes first; a retry keeps its place.
        """
        now = utc(now)
        earlier = aliased(outbox)
        ready = (
            select(outbox.c.id)
            .where(
                outbox.c.state == "pending",
                outbox.c.next_attempt_at <= now,
                _claimable(outbox, worker_id, now),
                ~exists().where(
                    earlier.c.escalation_id == outbox.c.escalation_id,
                    earlier.c.state == "pending",
                    earlier.c.seq < outbox.c.seq,
                ),
            )
            .order_by(outbox.c.urgency.desc(), outbox.c.created_at, outbox.c.id)
            .limit(limit)
        )
        if self._postgres:
            ready = ready.with_for_update(skip_locked=True, of=outbox)
        with self.engine.begin() as connection:
            rows = connection.execute(
                update(outbox)
                .where(outbox.c.id.in_(ready.scalar_subquery()))
                .values(claimed_by=worker_id, claimed_until=now + lease)
                .returning(
                    outbox.c.id, outbox.c.escalation_id, outbox.c.seq, outbox.c.urgency,
                    outbox.c.attempts, outbox.c.action,
                )
            ).all()
        claimed = [
            ClaimedAction(
                row.id, row.escalation_id, row.seq, row.urgency, row.attempts,
                Action.model_validate(row.action),
            )
            for row in rows
        ]
        return sorted(claimed, key=lambda a: (-a.urgency, a.id))

    def mark_done(self, worker_id: str, ids: Sequence[int], *, now: datetime, attempts: int = 1) -> None:
        """Record actions as applied upstream."""
        if not ids:
            return
        with self.engine.begin() as connection:
            connection.execute(
                update(outbox)
                .where(outbox.c.id.in_(list(ids)), outbox.c.state == "pending")
                .values(
                    state="done", applied_at=utc(now), attempts=outbox.c.attempts + attempts,
                    claimed_by=None, claimed_until=None,
                )
            )

    def retry_later(
        self, worker_id: str, action_id: int, *, attempts: int, at: datetime, error: str
    ) -> None:
        """Give an action back with ``attempts`` more spent, to be tried again at ``at``."""
        with self.engine.begin() as connection:
            connection.execute(
                update(outbox)
                .where(outbox.c.id == action_id, outbox.c.state == "pending")
                .values(
                    attempts=outbox.c.attempts + attempts, next_attempt_at=utc(at),
                    last_error=error[:2000], claimed_by=None, claimed_until=None,
                )
            )

    def release_actions(self, worker_id: str, ids: Sequence[int], *, attempts: int = 0) -> None:
        """Give claimed actions back unsent and still ready, ``attempts`` more spent on each."""
        if not ids:
            return
        with self.engine.begin() as connection:
            connection.execute(
                update(outbox)
                .where(outbox.c.id.in_(list(ids)), outbox.c.state == "pending",
                       outbox.c.claimed_by == worker_id)
                .values(attempts=outbox.c.attempts + attempts, claimed_by=None, claimed_until=None)
            )

    def hold_actions(
        self, worker_id: str, system: str, instance: str, *, until: datetime, now: datetime
    ) -> int:
        """Make the pending actions of one upstream account wait until ``until``; returns how many.

        All of them wait for the same moment, so when it comes the most urgent is claimed first.
        Actions another worker holds a live claim on are left to it.
        """
        now = utc(now)
        with self.engine.begin() as connection:
            result = connection.execute(
                update(outbox)
                .where(
                    outbox.c.system == system,
                    outbox.c.instance == instance,
                    outbox.c.state == "pending",
                    outbox.c.next_attempt_at < utc(until),
                    _claimable(outbox, worker_id, now),
                )
                .values(next_attempt_at=utc(until), claimed_by=None, claimed_until=None)
            )
        return int(result.rowcount)

    def dead_letter(
        self, worker_id: str, action_id: int, *, attempts: int, now: datetime, error: str
    ) -> None:
        """Give up on an action: it stops blocking its ticket and waits in the dead letters."""
        with self.engine.begin() as connection:
            connection.execute(
                update(outbox)
                .where(outbox.c.id == action_id)
                .values(
                    state="dead", attempts=outbox.c.attempts + attempts, last_error=error[:2000],
                    claimed_by=None, claimed_until=None,
                )
            )
            connection.execute(delete(dead_letters).where(dead_letters.c.outbox_id == action_id))
            connection.execute(
                insert(dead_letters).values(outbox_id=action_id, failed_at=utc(now), error=error[:2000])
            )

    def dead_letters(self, *, include_retried: bool = False) -> list[DeadLetter]:
        """Dead letters, oldest first; by default only those not retried yet."""
        query = (
            select(
                dead_letters.c.id, dead_letters.c.outbox_id, dead_letters.c.failed_at,
                dead_letters.c.error, dead_letters.c.retried_at, outbox.c.idempotency_key,
                outbox.c.system, outbox.c.instance, outbox.c.ticket_id, outbox.c.action,
                outbox.c.attempts,
            )
            .join(outbox, outbox.c.id == dead_letters.c.outbox_id)
            .order_by(dead_letters.c.failed_at, dead_letters.c.id)
        )
        if not include_retried:
            query = query.where(dead_letters.c.retried_at.is_(None))
        with self.engine.connect() as connection:
            rows = connection.execute(query).all()
        return [
            DeadLetter(
                row.id, row.outbox_id, row.idempotency_key, row.system, row.instance, row.ticket_id,
                str(row.action.get("kind")), row.attempts, utc(row.failed_at), row.error,
                _maybe_utc(row.retried_at),
            )
            for row in rows
        ]

    def retry_dead_letters(self, ids: Sequence[int] | None, *, now: datetime) -> int:
        """Queue dead letters again (all of them when ``ids`` is None); returns how many."""
        now = utc(now)
        chosen = select(dead_letters.c.outbox_id).where(dead_letters.c.retried_at.is_(None))
        if ids is not None:
            chosen = chosen.where(dead_letters.c.id.in_(list(ids)))
        with self.begin() as tx:
            connection = tx.connection
            outbox_ids = list(connection.execute(chosen).scalars())
            if not outbox_ids:
                return 0
            connection.execute(
                update(outbox)
                .where(outbox.c.id.in_(outbox_ids), outbox.c.state == "dead")
                .values(state="pending", attempts=0, next_attempt_at=now, claimed_by=None,
                        claimed_until=None)
            )
            connection.execute(
                update(dead_letters)
                .where(dead_letters.c.outbox_id.in_(outbox_ids))
                .values(retried_at=now)
            )
        return len(outbox_ids)

    # --- what operators look at -----------------------------------------------------------------

    def counts(self, *, now: datetime) -> dict[str, Any]:
        """Open escalations per tier, timers due, outbox backlog by state, dead letters."""
        now = utc(now)
        with self.engine.connect() as connection:
            tiers = {
                int(row.tier): int(row.n)
                for row in connection.execute(
                    select(escalations.c.tier, func.count().label("n"))
                    .where(escalations.c.status == "open")
                    .group_by(escalations.c.tier)
                )
            }
            timers_due = connection.execute(
                select(func.count()).select_from(timers).where(timers.c.due_at <= now)
            ).scalar_one()
            backlog = {
                row.state: int(row.n)
                for row in connection.execute(
                    select(outbox.c.state, func.count().label("n")).group_by(outbox.c.state)
                )
            }
            ready = connection.execute(
                select(func.count())
                .select_from(outbox)
                .where(outbox.c.state == "pending", outbox.c.next_attempt_at <= now)
            ).scalar_one()
            dead = connection.execute(
                select(func.count()).select_from(dead_letters).where(dead_letters.c.retried_at.is_(None))
            ).scalar_one()
        return {
            "open_by_tier": dict(sorted(tiers.items())),
            "timers_due": int(timers_due),
            "outbox_pending": backlog.get("pending", 0),
            "outbox_ready": int(ready),
            "outbox_done": backlog.get("done", 0),
            "dead_letters": int(dead),
        }


def _claimable(table: Any, worker_id: str, now: datetime) -> Any:
    return or_(
        table.c.claimed_until.is_(None),
        table.c.claimed_until < now,
        table.c.claimed_by == worker_id,
    )

