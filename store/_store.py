"""The worker's view of the store: escalation state, audit, timers, the outbox and dead letters.

Every time is passed in by the caller (the worker owns the clock), converted to UTC on the way in
and read back as UTC: SQLite keeps no offset, PostgreSQL keeps ``timestamptz``.

Claims are leases: a claimed row carries ``claimed_by`` and ``claimed_until`` and may be claimed
again once the lease has run out, or at once by the same worker id (a restarted worker takes back
what it held when it died). Worker ids must therefore be unique among live processes. Each claim is
a single ``UPDATE ... WHERE id IN (SELECT ... FOR UPDATE SKIP LOCKED) RETURNING`` so that concurrent
workers on PostgreSQL never wait on one another and SQLite never upgrades a read lock.

A decision is the hot path (a worker makes hundreds a second): its statements are built once per
store, and on SQLite they run on the driver's own cursor inside the SQLAlchemy transaction,
bound as SQLAlchemy would bind them. Threads sharing a store take turns to write to SQLite
(:meth:`Store.writing`) instead of meeting in SQLite's busy handler.
"""

from __future__ import annotations

import json
import threading
import weakref
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, ContextManager

from sqlalchemy import (
    JSON,
    Connection,
    Engine,
    Integer,
    Text,
    bindparam,
    cast,
    delete,
    exists,
    func,
    insert,
    or_,
    select,
    type_coerce,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.orm import aliased

from escalier.core.errors import StoreError
from escalier.core.model import Action, EscalationState, HistoryEntry, Ticket
from escalier.store.schema import (
    audit,
    dead_letters,
    escalations,
    inbox,
    outbox,
    sync_cursors,
    timers,
)

__all__ = [
    "ClaimedAction",
    "ClaimedBatch",
    "ClaimedCursor",
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
    """An outbox row this worker now holds.

    ``maybe_applied`` is True when an earlier attempt may have reached the upstream: it failed
    (a timeout can fail after the write landed), or a worker claimed it and never gave it back
    (it died, or its lease ran out, mid-call).
    """

    id: int
    escalation_id: int
    seq: int
    urgency: int
    attempts: int
    action: Action
    maybe_applied: bool = False


@dataclass(frozen=True)
class ClaimedBatch:
    """The ready actions of one ticket, claimed together, in the engine's order."""

    escalation_id: int
    items: tuple[ClaimedAction, ...]

    @property
    def system(self) -> str:
        """The upstream system of the ticket."""
        return self.items[0].action.system

    @property
    def instance(self) -> str:
        """The upstream instance of the ticket."""
        return self.items[0].action.instance

    @property
    def ticket_id(self) -> str:
        """The ticket the actions change."""
        return self.items[0].action.ticket_id

    @property
    def urgency(self) -> int:
        """The batch is served as urgently as its most urgent action."""
        return max(item.urgency for item in self.items)


@dataclass(frozen=True)
class ClaimedCursor:
    """A connection whose look for missed changes is due, and where the last one got to."""

    system: str
    instance: str
    cursor: str | None


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


def _json_in(name: str, postgres: bool) -> Any:
    """A bind for a JSON column that takes text already serialised (pydantic's ``model_dump_json``).

    Serialising in pydantic's core is several times faster than ``model_dump`` plus ``json.dumps``.
    SQLite keeps JSON as text; PostgreSQL is told the text is JSON.
    """
    if postgres:
        return cast(bindparam(name, type_=Text), JSON)
    return type_coerce(bindparam(name), Text)


class _Statements:
    """The statements of the hot paths, built once per store.

    Building a statement and deriving its cache key costs more than executing it once it is
    compiled; built once, with bind parameters, SQLAlchemy compiles each a single time and a
    decision pays only for binding and executing.
    """

    def __init__(self, dialect: Dialect):
        postgres = dialect.name == "postgresql"
        self.sqlite = dialect.name == "sqlite"
        if self.sqlite:
            self.driver = _SqliteDecisions(dialect)
        c = escalations.c
        self.load = select(c.id, c.version, cast(c.state, Text).label("state")).where(
            c.system == bindparam("system"),
            c.instance == bindparam("instance"),
            c.ticket_id == bindparam("ticket_id"),
        )
        columns = dict(
            tier=bindparam("tier", type_=c.tier.type),
            status=bindparam("status", type_=c.status.type),
            policy_version=bindparam("policy_version", type_=c.policy_version.type),
            state=_json_in("state", postgres),
            updated_at=bindparam("updated_at", type_=c.updated_at.type),
            wake_at=bindparam("wake_at", type_=c.wake_at.type),
        )
        self.create = insert(escalations).values(
            system=bindparam("system", type_=c.system.type),
            instance=bindparam("instance", type_=c.instance.type),
            ticket_id=bindparam("ticket_id", type_=c.ticket_id.type),
            opened_at=bindparam("opened_at", type_=c.opened_at.type),
            version=1,
            **columns,
        )
        self.save = (
            update(escalations)
            .where(c.id == bindparam("b_id"), c.version == bindparam("b_version"))
            .values(version=c.version + 1, **columns)
        )
        self.audit = insert(audit)
        o = outbox.c
        self.enqueue = insert(outbox).values(
            idempotency_key=bindparam("idempotency_key", type_=o.idempotency_key.type),
            escalation_id=bindparam("escalation_id", type_=o.escalation_id.type),
            system=bindparam("system", type_=o.system.type),
            instance=bindparam("instance", type_=o.instance.type),
            ticket_id=bindparam("ticket_id", type_=o.ticket_id.type),
            seq=bindparam("seq", type_=o.seq.type),
            urgency=bindparam("urgency", type_=o.urgency.type),
            action=_json_in("action", postgres),
            state="pending",
            attempts=0,
            next_attempt_at=bindparam("now", type_=o.next_attempt_at.type),
            created_at=bindparam("now", type_=o.created_at.type),
        )
        t = timers.c
        self.clear_timer = delete(timers).where(t.escalation_id == bindparam("escalation_id"))
        # One statement whether or not the escalation has a timer yet: replace it, drop its claim.
        upsert = (postgresql.insert if postgres else sqlite.insert)(timers).values(
            escalation_id=bindparam("escalation_id", type_=t.escalation_id.type),
            due_at=bindparam("due_at", type_=t.due_at.type),
        )
        self.set_timer = upsert.on_conflict_do_update(
            index_elements=[t.escalation_id],
            set_=dict(due_at=upsert.excluded.due_at, claimed_by=None, claimed_until=None),
        )

        worker = bindparam("worker_id", type_=t.claimed_by.type)
        now = bindparam("now", type_=t.due_at.type)
        until = bindparam("until", type_=t.claimed_until.type)
        limit = bindparam("limit", type_=Integer)
        due = (
            select(t.escalation_id)
            .where(t.due_at <= now, _claimable(timers, worker, now))
            .order_by(t.due_at)
            .limit(limit)
        )
        if postgres:
            due = due.with_for_update(skip_locked=True)
        self.claim_timers = (
            update(timers)
            .where(t.escalation_id.in_(due.scalar_subquery()))
            .values(claimed_by=worker, claimed_until=until)
            .returning(t.escalation_id, t.due_at)
        )
        self.names = select(c.id, c.system, c.instance, c.ticket_id).where(
            c.id.in_(bindparam("ids", expanding=True))
        )
        self.next_timer = select(func.min(t.due_at)).where(
            t.due_at > bindparam("after", type_=t.due_at.type)
        )

        earlier = aliased(outbox)
        o_now = bindparam("now", type_=o.next_attempt_at.type)
        o_worker = bindparam("worker_id", type_=o.claimed_by.type)
        ready = (
            select(o.id)
            .where(
                o.state == "pending",
                o.next_attempt_at <= o_now,
                _claimable(outbox, o_worker, o_now),
                ~exists().where(
                    earlier.c.escalation_id == o.escalation_id,
                    earlier.c.state == "pending",
                    earlier.c.seq < o.seq,
                ),
            )
            .order_by(o.urgency.desc(), o.created_at, o.id)
            .limit(limit)
        )
        heads = (
            select(o.id, o.escalation_id)
            .where(*ready.whereclause.clauses)  # the same readiness rule, for whole tickets
            .order_by(o.urgency.desc(), o.created_at, o.id)
            .limit(limit)
        )
        siblings = (
            select(
                o.id, o.escalation_id, o.seq, o.urgency, o.attempts, o.next_attempt_at,
                o.claimed_by, o.claimed_until, cast(o.action, Text).label("action"),
            )
            .where(o.escalation_id.in_(bindparam("escalations", expanding=True)), o.state == "pending")
            .order_by(o.escalation_id, o.seq)
        )
        if postgres:
            ready = ready.with_for_update(skip_locked=True, of=outbox)
            heads = heads.with_for_update(skip_locked=True, of=outbox)
            siblings = siblings.with_for_update(skip_locked=True)
        self.ready_heads = heads
        self.ticket_actions = siblings
        self.claim_ids = (
            update(outbox)
            .where(o.id.in_(bindparam("ids", expanding=True)))
            .values(
                claimed_by=o_worker, claimed_until=bindparam("until", type_=o.claimed_until.type)
            )
        )
        self.claim_actions = (
            update(outbox)
            .where(o.id.in_(ready.scalar_subquery()))
            .values(
                claimed_by=o_worker, claimed_until=bindparam("until", type_=o.claimed_until.type)
            )
            .returning(
                o.id, o.escalation_id, o.seq, o.urgency, o.attempts,
                cast(o.action, Text).label("action"),
            )
        )
        self.mark_done = (
            update(outbox)
            .where(o.id.in_(bindparam("ids", expanding=True)), o.state == "pending")
            .values(
                state="done", applied_at=bindparam("now", type_=o.applied_at.type),
                attempts=o.attempts + bindparam("attempts", type_=Integer),
                claimed_by=None, claimed_until=None,
            )
        )
        self.next_action = select(func.min(o.next_attempt_at)).where(
            o.state == "pending",
            o.next_attempt_at > bindparam("after", type_=o.next_attempt_at.type),
        )


class _SqliteDecisions:
    """A decision's statements as SQLite SQL, for the driver's cursor.

    The values are bound exactly as SQLAlchemy binds them for these tables: the times through
    the columns' own bind processors (so they compare as the rest of the store writes them), JSON
    as text. The columns are all the NOT NULL ones of :mod:`escalier.store.schema`, with the
    values its defaults would give; ``tests/store`` checks that rows read back alike either way.
    """

    load = (
        "SELECT id, version, CAST(state AS TEXT) FROM escalations"
        " WHERE system = ? AND instance = ? AND ticket_id = ?"
    )
    save = (
        "UPDATE escalations SET version = version + 1, tier = ?, status = ?, policy_version = ?,"
        " state = ?, updated_at = ?, wake_at = ? WHERE id = ? AND version = ?"
    )
    audit = (
        "INSERT INTO audit (escalation_id, at, kind, from_tier, to_tier, reason, criteria, actor,"
        " policy_version, event_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
    )
    enqueue = (
        "INSERT INTO outbox (idempotency_key, escalation_id, system, instance, ticket_id, seq,"
        " urgency, action, state, attempts, next_attempt_at, created_at)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'pending', 0, ?, ?)"
    )
    set_timer = (
        "INSERT INTO timers (escalation_id, due_at) VALUES (?, ?) ON CONFLICT (escalation_id)"
        " DO UPDATE SET due_at = excluded.due_at, claimed_by = NULL, claimed_until = NULL"
    )
    clear_timer = "DELETE FROM timers WHERE escalation_id = ?"

    def __init__(self, dialect: Dialect):
        def processor(column: Any) -> Any:
            process = column.type.dialect_impl(dialect).bind_processor(dialect)
            return process or (lambda value: value)

        self.time = processor(escalations.c.updated_at)
        self.criteria = processor(audit.c.criteria)
        self._dialect = dialect
        self._error = dialect.loaded_dbapi.Error

    def execute(self, driver: Any, sql: str, params: Any, *, many: bool = False) -> Any:
        """Run ``sql`` on the driver's connection; its errors raised as SQLAlchemy's, as ever."""
        try:
            return driver.executemany(sql, params) if many else driver.execute(sql, params)
        except self._error as exc:
            raise DBAPIError.instance(
                sql, params, exc, self._error, dialect=self._dialect, ismulti=many
            ) from exc


# SQLite has one writer at a time. Threads of one process that share an engine take turns on this
# lock before they ask SQLite, so the write lock passes between them at once instead of through
# SQLite's busy handler, which polls with sleeps of up to 100 ms. Other processes still meet the
# busy handler. PostgreSQL locks rows, and needs nothing of the kind.
_write_locks: weakref.WeakKeyDictionary[Engine, threading.RLock] = weakref.WeakKeyDictionary()
_write_locks_guard = threading.Lock()


def _write_lock(engine: Engine) -> ContextManager[Any]:
    """Hold the process's turn to write to ``engine``'s database (SQLite); a no-op elsewhere."""
    if engine.dialect.name != "sqlite":
        return nullcontext()
    lock = _write_locks.get(engine)
    if lock is None:
        with _write_locks_guard:
            lock = _write_locks.setdefault(engine, threading.RLock())
    return lock


class Transaction:
    """Operations that belong in the same transaction as a decision."""

    def __init__(self, connection: Connection, statements: _Statements | None = None):
        self.connection = connection
        self._sql = statements or _Statements(connection.dialect)
        # On SQLite a decision's statements run on the driver's connection, in this same
        # transaction: SQLAlchemy's execution machinery costs more than SQLite's work there.
        self._fast: _SqliteDecisions | None = None
        self._driver: Any = None
        if self._sql.sqlite:
            self._fast = self._sql.driver
            self._driver = connection.connection.driver_connection

    def _run(self, sql: str, params: Any, *, many: bool = False) -> Any:
        assert self._fast is not None
        return self._fast.execute(self._driver, sql, params, many=many)

    def load_escalation(self, system: str, instance: str, ticket_id: str) -> StoredEscalation | None:
        """The stored escalation of a ticket, or None."""
        if self._fast is not None:
            row = self._run(self._fast.load, (system, instance, ticket_id)).fetchone()
        else:
            row = self.connection.execute(
                self._sql.load, {"system": system, "instance": instance, "ticket_id": ticket_id}
            ).first()
        if row is None:
            return None
        escalation_id, version, state = row
        return StoredEscalation(escalation_id, version, EscalationState.model_validate_json(state))

    def save_escalation(
        self, previous: StoredEscalation | None, state: EscalationState, now: datetime
    ) -> int:
        """Insert or update the escalation; raises :class:`StaleStateError` if it changed meanwhile."""
        values = dict(
            tier=state.tier,
            status=state.status.value,
            policy_version=state.policy_version,
            state=state.model_dump_json(),
            updated_at=utc(now),
            wake_at=_maybe_utc(state.wake_at),
        )
        if previous is None:
            try:
                # A savepoint, so a lost race leaves the caller's transaction usable for the rollback.
                with self.connection.begin_nested():
                    result = self.connection.execute(
                        self._sql.create,
                        dict(
                            system=state.system,
                            instance=state.instance,
                            ticket_id=state.ticket_id,
                            opened_at=utc(state.opened_at),
                            **values,
                        ),
                    )
            except IntegrityError as exc:
                raise StaleStateError(f"escalation of {state.ticket_id} was created meanwhile") from exc
            return int(result.inserted_primary_key[0])
        if self._fast is not None:
            time = self._fast.time
            rowcount = self._run(
                self._fast.save,
                (values["tier"], values["status"], values["policy_version"], values["state"],
                 time(values["updated_at"]), time(values["wake_at"]), previous.id,
                 previous.version),
            ).rowcount
        else:
            rowcount = self.connection.execute(
                self._sql.save, dict(b_id=previous.id, b_version=previous.version, **values)
            ).rowcount
        if rowcount != 1:
            raise StaleStateError(f"escalation {previous.id} changed since version {previous.version}")
        return previous.id

    def append_audit(self, escalation_id: int, entries: Iterable[HistoryEntry]) -> None:
        """Add the decision's audit entries."""
        if self._fast is not None:
            time, criteria = self._fast.time, self._fast.criteria
            self._run(
                self._fast.audit,
                [
                    (escalation_id, time(utc(entry.at)), entry.kind, entry.from_tier,
                     entry.to_tier, entry.reason, criteria(list(entry.criteria)), entry.actor,
                     entry.policy_version, entry.event_id)
                    for entry in entries
                ],
                many=True,
            )
            return
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
            self.connection.execute(self._sql.audit, rows)

    def enqueue_actions(
        self, escalation_id: int, actions: Sequence[Action], *, first_seq: int, now: datetime
    ) -> None:
        """Queue actions for the upstream, numbered ``first_seq``, ``first_seq + 1``... per ticket."""
        now = utc(now)
        if self._fast is not None:
            at = self._fast.time(now)
            self._run(
                self._fast.enqueue,
                [
                    (action.key, escalation_id, action.system, action.instance, action.ticket_id,
                     first_seq + offset, action.urgency, action.model_dump_json(), at, at)
                    for offset, action in enumerate(actions)
                ],
                many=True,
            )
            return
        rows = [
            dict(
                idempotency_key=action.key,
                escalation_id=escalation_id,
                system=action.system,
                instance=action.instance,
                ticket_id=action.ticket_id,
                seq=first_seq + offset,
                urgency=action.urgency,
                action=action.model_dump_json(),
                now=now,
            )
            for offset, action in enumerate(actions)
        ]
        if rows:
            self.connection.execute(self._sql.enqueue, rows)

    def set_timer(self, escalation_id: int, due_at: datetime | None) -> None:
        """Make ``due_at`` the escalation's only wake-up (None removes it) and release any claim."""
        if self._fast is not None:
            if due_at is None:
                self._run(self._fast.clear_timer, (escalation_id,))
            else:
                self._run(self._fast.set_timer, (escalation_id, self._fast.time(utc(due_at))))
            return
        if due_at is None:
            self.connection.execute(self._sql.clear_timer, {"escalation_id": escalation_id})
        else:
            self.connection.execute(
                self._sql.set_timer, {"escalation_id": escalation_id, "due_at": utc(due_at)}
            )


class Store:
    """The durable state of the runtime, on one SQLAlchemy engine.

    Safe to share between threads: each operation checks out its own connection, and on SQLite
    write transactions take turns on :meth:`writing`.
    """

    def __init__(self, engine: Engine):
        self.engine = engine
        self._postgres = engine.dialect.name == "postgresql"
        self._sql = _Statements(engine.dialect)

    def writing(self) -> ContextManager[Any]:
        """This process's turn to write (on SQLite; a no-op on PostgreSQL).

        Every write transaction of the store takes it; hold it around other writes to the same
        database (the inbox's) made from a thread that shares the engine with others.
        """
        return _write_lock(self.engine)

    @contextmanager
    def _write(self) -> Iterator[Connection]:
        """A write transaction, in this process's turn; commits, or rolls back on an exception."""
        with self.writing(), self.engine.begin() as connection:
            yield connection

    @contextmanager
    def begin(self) -> Iterator[Transaction]:
        """One transaction: commits on success, rolls back on any exception."""
        with self._write() as connection:
            if connection.dialect.name == "sqlite":
                # Take the write lock before the first read, as store/inbox.py does: the sqlite3
                # module would otherwise run the read outside any transaction, and a SAVEPOINT
                # opened outside one commits on its own when released.
                driver = connection.connection.driver_connection
                self._sql.driver.execute(driver, "BEGIN IMMEDIATE", ())
            yield Transaction(connection, self._sql)

    def load_escalation(self, system: str, instance: str, ticket_id: str) -> StoredEscalation | None:
        """The stored escalation of a ticket, or None."""
        with self.begin() as tx:
            return tx.load_escalation(system, instance, ticket_id)

    def ticket_of(self, escalation_id: int) -> Ticket | None:
        """The ticket an escalation last saw, read alone from its state; None if there is none."""
        with self.engine.connect() as connection:
            value = connection.execute(
                select(escalations.c.state["ticket"]).where(escalations.c.id == escalation_id)
            ).scalar()
        if value is None:
            return None
        return Ticket.model_validate(json.loads(value) if isinstance(value, str) else value)

    # --- timers ---------------------------------------------------------------------------------

    def claim_timers(
        self, worker_id: str, *, now: datetime, limit: int, lease: timedelta
    ) -> list[ClaimedTimer]:
        """Claim up to ``limit`` due wake-ups, earliest first."""
        now = utc(now)
        with self._write() as connection:
            claimed = connection.execute(
                self._sql.claim_timers,
                {"worker_id": worker_id, "now": now, "until": now + lease, "limit": limit},
            ).all()
            if not claimed:
                return []
            names = {
                row.id: row
                for row in connection.execute(
                    self._sql.names, {"ids": [row.escalation_id for row in claimed]}
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

    def next_timer_due(self, *, after: datetime) -> datetime | None:
        """The earliest wake-up due strictly after ``after``, or None: one probe of the index."""
        with self.engine.connect() as connection:
            value = connection.execute(self._sql.next_timer, {"after": utc(after)}).scalar()
        return _maybe_utc(value)

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
        with self._write() as connection:
            rows = connection.execute(
                self._sql.claim_actions,
                {"worker_id": worker_id, "now": now, "until": now + lease, "limit": limit},
            ).all()
        claimed = [
            ClaimedAction(
                row.id, row.escalation_id, row.seq, row.urgency, row.attempts,
                Action.model_validate_json(row.action),
            )
            for row in rows
        ]
        return sorted(claimed, key=lambda a: (-a.urgency, a.id))

    def claim_batches(
        self, worker_id: str, *, now: datetime, limit: int, lease: timedelta, per_batch: int = 20
    ) -> list[ClaimedBatch]:
        """Claim the ready actions of up to ``limit`` tickets, most urgent ticket first.

        A ticket is ready when its first pending action is (see :meth:`claim_actions`); with it
        come the actions after it that are ready too, in ``seq`` order up to the first that is not
        (a retry waiting out its backoff, another worker's claim) and at most ``per_batch``, so
        that a connector can apply one escalation step in one upstream call.
        """
        now = utc(now)
        params = {"worker_id": worker_id, "now": now, "limit": limit}
        with self.begin() as tx:
            connection = tx.connection
            heads = connection.execute(self._sql.ready_heads, params).all()
            if not heads:
                return []
            order = {row.escalation_id: rank for rank, row in enumerate(heads)}
            rows = connection.execute(self._sql.ticket_actions, {"escalations": list(order)}).all()
            chosen: dict[int, list[Any]] = {}
            stopped: set[int] = set()
            for row in rows:
                escalation = row.escalation_id
                taken = chosen.setdefault(escalation, [])
                if escalation in stopped or len(taken) >= per_batch:
                    continue
                free = row.claimed_until is None or utc(row.claimed_until) < now or row.claimed_by == worker_id
                if not free or utc(row.next_attempt_at) > now:
                    stopped.add(escalation)
                    continue
                taken.append(row)
            ids = [row.id for taken in chosen.values() for row in taken]
            if not ids:
                return []
            connection.execute(
                self._sql.claim_ids, {"ids": ids, "worker_id": worker_id, "until": now + lease}
            )
        batches = [
            ClaimedBatch(
                escalation,
                tuple(
                    ClaimedAction(
                        row.id, row.escalation_id, row.seq, row.urgency, row.attempts,
                        Action.model_validate_json(row.action),
                        maybe_applied=row.attempts > 0 or row.claimed_by is not None,
                    )
                    for row in taken
                ),
            )
            for escalation, taken in chosen.items()
            if taken
        ]
        return sorted(batches, key=lambda batch: order[batch.escalation_id])

    def next_action_ready(self, *, after: datetime) -> datetime | None:
        """The earliest ``next_attempt_at`` of a pending action after ``after``, or None."""
        with self.engine.connect() as connection:
            value = connection.execute(self._sql.next_action, {"after": utc(after)}).scalar()
        return _maybe_utc(value)

    def mark_done(self, worker_id: str, ids: Sequence[int], *, now: datetime, attempts: int = 1) -> None:
        """Record actions as applied upstream."""
        if not ids:
            return
        with self._write() as connection:
            connection.execute(
                self._sql.mark_done, {"ids": list(ids), "now": utc(now), "attempts": attempts}
            )

    def retry_later(
        self, worker_id: str, action_id: int, *, attempts: int, at: datetime, error: str
    ) -> None:
        """Give an action back with ``attempts`` more spent, to be tried again at ``at``."""
        with self._write() as connection:
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
        with self._write() as connection:
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
        with self._write() as connection:
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
        with self._write() as connection:
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

    # --- reconciliation cursors -----------------------------------------------------------------

    def claim_cursors(
        self, worker_id: str, accounts: Sequence[tuple[str, str]], *, now: datetime, lease: timedelta
    ) -> list[ClaimedCursor]:
        """Claim the connections among ``accounts`` whose look for missed changes is due.

        A connection seen for the first time is due at once (a worker looks at start-up).
        """
        if not accounts:
            return []
        now = utc(now)
        c = sync_cursors.c
        dialect = postgresql if self._postgres else sqlite
        with self.begin() as tx:
            connection = tx.connection
            # Workers on other nodes start together: the first insert wins, the rest add nothing.
            connection.execute(
                dialect.insert(sync_cursors).on_conflict_do_nothing(),
                [{"system": system, "instance": instance, "due_at": now}
                 for system, instance in accounts],
            )
            due = []
            for system, instance in accounts:
                # One conditional update per account: of two workers, one gets the row back.
                claimed = connection.execute(
                    update(sync_cursors)
                    .where(
                        c.system == system,
                        c.instance == instance,
                        c.due_at <= now,
                        _claimable(sync_cursors, worker_id, now),
                    )
                    .values(claimed_by=worker_id, claimed_until=now + lease)
                    .returning(c.cursor)
                ).first()
                if claimed is not None:
                    due.append(ClaimedCursor(system, instance, claimed.cursor))
        return due

    def save_cursor(
        self, system: str, instance: str, cursor: str | None, *, due_at: datetime, now: datetime,
        error: str | None = None,
    ) -> None:
        """Record where a look for missed changes got to and when the next is due; release it."""
        c = sync_cursors.c
        values: dict[str, Any] = {
            "due_at": utc(due_at), "claimed_by": None, "claimed_until": None,
            "last_error": error[:2000] if error else None,
        }
        if error is None:
            values.update(cursor=cursor, synced_at=utc(now))
        with self._write() as connection:
            connection.execute(
                update(sync_cursors).where(c.system == system, c.instance == instance).values(**values)
            )

    def next_cursor_due(self) -> datetime | None:
        """The earliest moment a look for missed changes is due, or None."""
        with self.engine.connect() as connection:
            value = connection.execute(select(func.min(sync_cursors.c.due_at))).scalar()
        return _maybe_utc(value)

    def ignore_delivery(self, inbox_id: int, reason: str, *, now: datetime) -> None:
        """Mark a stored delivery as carrying nothing to act on, with the reason."""
        with self._write() as connection:
            connection.execute(
                update(inbox)
                .where(inbox.c.id == inbox_id)
                .values(state="ignored", error=reason[:2000], processed_at=utc(now),
                        claimed_by=None, claimed_until=None)
            )

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

