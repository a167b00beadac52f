"""The inbox: every webhook stored raw and durably before it is acknowledged, and its consumers.

The receiver side is :func:`accept` (one delivery, one transaction) and :class:`GroupCommitter`
(concurrent requests in one process hand their rows to one writer thread, which commits a batch in
one transaction and then wakes each waiter; a request returns only after its own row is
committed, so an fsync is shared instead of paid per request). Both de-duplicate on the delivery
id and on the same body within a window.

The worker side is :func:`claim` (a lease on pending rows), :func:`complete`, :func:`fail`, and
:func:`counts`.

Rows are ``pending`` until the worker finishes them (``done``), gives up (``failed``), or the
receiver stores them already finished as ``ignored`` (an event type no connector acts on, or
Escalier's own change; ``error`` says which).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import queue
import sqlite3
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

from sqlalchemy import Engine, func, insert, literal, null, select, text, union_all, update
from sqlalchemy.exc import SQLAlchemyError

from escalier.core.connector import RawEvent
from escalier.core.errors import StoreError
from escalier.store.schema import inbox

__all__ = [
    "Delivery",
    "GroupCommitter",
    "Stored",
    "accept",
    "claim",
    "commit_batch",
    "complete",
    "counts",
    "fail",
    "oldest_pending",
]

log = logging.getLogger("escalier.store.inbox")

# os.getpid() is a system call; every request asks which process it is in.
_pid = os.getpid()


def _forked() -> None:
    global _pid
    _pid = os.getpid()


os.register_at_fork(after_in_child=_forked)

# Any constant will do: it only has to be the same in every receiver process sharing a database.
_PG_INBOX_LOCK = 0x65736361


def _utc(value: datetime) -> datetime:
    # SQLite gives back naive datetimes; everything in the store is UTC.
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value


def _now() -> datetime:
    return datetime.now(timezone.utc)


@dataclass(frozen=True, slots=True)
class Delivery:
    """One delivery to store: the raw body, the headers worth keeping, and what it is."""

    source: str
    instance: str
    body: bytes
    headers: Mapping[str, str]
    received_at: datetime
    delivery_id: str | None = None
    event_type: str | None = None
    state: str = "pending"
    error: str | None = None
    body_sha256: str = field(default="")
    # A sender whose timestamp is unsigned (Jira) has a body accepted while its own timestamp is
    # fresh, so an earlier copy received as early as this still makes this one a duplicate.
    body_seen_since: datetime | None = None

    def __post_init__(self) -> None:
        if not self.body_sha256:
            object.__setattr__(self, "body_sha256", hashlib.sha256(self.body).hexdigest())


@dataclass(frozen=True, slots=True)
class Stored:
    """What became of a delivery: ``stored`` with its row id, or ``duplicate`` of what."""

    status: str
    id: int | None = None
    duplicate_of: str | None = None


def _begin_write(conn) -> None:
    # Check-then-insert must not interleave with another process doing the same.
    conn.begin()
    if conn.dialect.name == "sqlite":
        # The store's engine may already begin every transaction IMMEDIATE; if not, we do.
        if not conn.connection.dbapi_connection.in_transaction:
            conn.exec_driver_sql("BEGIN IMMEDIATE")
    elif conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_INBOX_LOCK})


def _grouped(deliveries: Sequence[Delivery]) -> dict[tuple[str, str], list[Delivery]]:
    groups: dict[tuple[str, str], list[Delivery]] = {}
    for delivery in deliveries:
        groups.setdefault((delivery.source, delivery.instance), []).append(delivery)
    return groups


def _existing(conn, groups: Mapping[tuple[str, str], list[Delivery]], window: timedelta):
    """Delivery ids and recent body hashes already stored, per (source, instance), in one query."""
    parts = []
    for (source, instance), members in groups.items():
        wanted_ids = sorted({d.delivery_id for d in members if d.delivery_id})
        if wanted_ids:
            parts.append(
                select(
                    literal("id").label("kind"),
                    inbox.c.source,
                    inbox.c.instance,
                    inbox.c.delivery_id.label("value"),
                    null().label("latest"),
                ).where(
                    inbox.c.source == source,
                    inbox.c.instance == instance,
                    inbox.c.delivery_id.in_(wanted_ids),
                )
            )
        parts.append(
            select(
                literal("body").label("kind"),
                inbox.c.source,
                inbox.c.instance,
                inbox.c.body_sha256.label("value"),
                func.max(inbox.c.received_at).label("latest"),
            )
            .where(
                inbox.c.source == source,
                inbox.c.instance == instance,
                inbox.c.body_sha256.in_(sorted({d.body_sha256 for d in members})),
                inbox.c.received_at >= min(_seen_since(d, window) for d in members),
            )
            .group_by(inbox.c.source, inbox.c.instance, inbox.c.body_sha256)
        )
    query = parts[0] if len(parts) == 1 else union_all(*parts)
    return _found(conn.execute(query))


def _found(rows: Iterable[Sequence[Any]]):
    ids: set[tuple[str, str, str]] = set()
    bodies: dict[tuple[str, str, str], datetime] = {}
    for kind, source, instance, value, latest in rows:
        if kind == "id":
            ids.add((source, instance, value))
        else:
            bodies[(source, instance, value)] = _as_utc(latest)
    return ids, bodies


def _as_utc(value: datetime | str) -> datetime:
    # Through a UNION (and always through the raw driver) SQLite hands back the stored text.
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return _utc(value)


def _seen_since(delivery: Delivery, window: timedelta) -> datetime:
    """The earliest receipt of the same body that makes ``delivery`` a duplicate."""
    since = delivery.received_at - window
    if delivery.body_seen_since is not None:
        since = min(since, delivery.body_seen_since)
    return since


def _insert(conn, rows: list[dict[str, Any]]) -> list[int]:
    """Insert ``rows`` and return their ids, in order (any dialect)."""
    result = conn.execute(insert(inbox).returning(inbox.c.id, sort_by_parameter_order=True), rows)
    return [row[0] for row in result]


_COLUMNS = (
    "source", "instance", "delivery_id", "body_sha256", "event_type", "headers", "body",
    "received_at", "state", "attempts", "error", "processed_at",
)


class _SqliteWriter:
    """The batch's two statements as plain SQL on the driver's cursor, for SQLite.

    The writer runs them while its process holds the database's only write lock, and it competes
    for the GIL with the request threads: SQLAlchemy's per-statement work (and RETURNING, which
    SQLite can only order row by row) made each batch several times slower under load. Values are
    still bound through the columns' own SQLAlchemy types, so rows look exactly as Core writes them.
    """

    def __init__(self, dialect) -> None:
        self._bind = {
            name: inbox.c[name].type.dialect_impl(dialect).bind_processor(dialect) for name in _COLUMNS
        }
        self._placeholders = "(" + ", ".join("?" * len(_COLUMNS)) + ")"
        self._insert = f"INSERT INTO inbox ({', '.join(_COLUMNS)}) VALUES "

    def existing(self, cursor, groups: Mapping[tuple[str, str], list[Delivery]], window: timedelta):
        """As :func:`_existing`, in one statement."""
        time = self._bind["received_at"]
        parts: list[str] = []
        params: list[Any] = []
        for (source, instance), members in groups.items():
            wanted_ids = sorted({d.delivery_id for d in members if d.delivery_id})
            if wanted_ids:
                parts.append(
                    "SELECT 'id', source, instance, delivery_id, NULL FROM inbox "
                    "WHERE source = ? AND instance = ? AND delivery_id IN "
                    f"({', '.join('?' * len(wanted_ids))})"
                )
                params += [source, instance, *wanted_ids]
            hashes = sorted({d.body_sha256 for d in members})
            parts.append(
                "SELECT 'body', source, instance, body_sha256, max(received_at) FROM inbox "
                f"WHERE source = ? AND instance = ? AND body_sha256 IN ({', '.join('?' * len(hashes))}) "
                "AND received_at >= ? GROUP BY source, instance, body_sha256"
            )
            cutoff = min(_seen_since(d, window) for d in members)
            params += [source, instance, *hashes, time(cutoff) if time else cutoff]
        return _found(cursor.execute(" UNION ALL ".join(parts), params).fetchall())

    def insert(self, cursor, rows: list[dict[str, Any]]) -> list[int]:
        """Insert ``rows`` in one multi-row statement; their ids, in order."""
        params: list[Any] = []
        for row in rows:
            for name in _COLUMNS:
                bind = self._bind[name]
                value = row[name]
                params.append(bind(value) if bind is not None and value is not None else value)
        cursor.execute(self._insert + ", ".join([self._placeholders] * len(rows)), params)
        # Under the write lock we hold, one statement's rows get consecutive rowids (each one
        # above the largest), and lastrowid is the last of them.
        last = cursor.lastrowid
        return list(range(last - len(rows) + 1, last + 1))


_SQLITE_WRITERS: dict[int, _SqliteWriter] = {}


def _sqlite_writer(dialect) -> _SqliteWriter:
    writer = _SQLITE_WRITERS.get(id(dialect))
    if writer is None:
        writer = _SQLITE_WRITERS[id(dialect)] = _SqliteWriter(dialect)
    return writer


def _decide(deliveries: Sequence[Delivery], ids, bodies, window: timedelta):
    """Which deliveries are duplicates, and the rows of the others, in the order given."""
    outcomes: list[Stored | None] = []
    rows: list[dict[str, Any]] = []
    for delivery in deliveries:
        key = (delivery.source, delivery.instance)
        if delivery.delivery_id and (*key, delivery.delivery_id) in ids:
            outcomes.append(Stored("duplicate", duplicate_of="delivery"))
            continue
        seen = bodies.get((*key, delivery.body_sha256))
        if seen is not None and seen >= _seen_since(delivery, window):
            outcomes.append(Stored("duplicate", duplicate_of="body"))
            continue
        # Later members of the same batch see this one as already stored.
        if delivery.delivery_id:
            ids.add((*key, delivery.delivery_id))
        bodies[(*key, delivery.body_sha256)] = delivery.received_at
        outcomes.append(None)
        rows.append(_row(delivery))
    return outcomes, rows


def commit_batch(
    engine: Engine, deliveries: Sequence[Delivery], *, dedupe_window: timedelta
) -> list[Stored]:
    """Store each new delivery in one transaction; the outcomes are in the order given.

    :raises StoreError: the store could not be reached or could not commit; nothing was stored.
    """
    if not deliveries:
        return []
    try:
        with engine.connect() as conn:
            return _store(conn, deliveries, dedupe_window)
    except (SQLAlchemyError, sqlite3.Error) as exc:
        raise _store_error(exc) from exc


def _store_error(exc: Exception) -> StoreError:
    cause = getattr(exc, "orig", None) or exc
    return StoreError(f"the inbox could not commit: {type(cause).__name__}")


def _store(conn, deliveries: Sequence[Delivery], window: timedelta) -> list[Stored]:
    """:func:`commit_batch` on an open connection; the driver's and SQLAlchemy's errors pass."""
    groups = _grouped(deliveries)
    _begin_write(conn)
    if conn.dialect.name == "sqlite":
        writer = _sqlite_writer(conn.dialect)
        cursor = conn.connection.dbapi_connection.cursor()
        try:
            ids, bodies = writer.existing(cursor, groups, window)
            outcomes, rows = _decide(deliveries, ids, bodies, window)
            new_ids = writer.insert(cursor, rows) if rows else []
        finally:
            cursor.close()
    else:
        ids, bodies = _existing(conn, groups, window)
        outcomes, rows = _decide(deliveries, ids, bodies, window)
        new_ids = _insert(conn, rows) if rows else []
    conn.commit()
    fresh = iter(new_ids)
    return [outcome or Stored("stored", id=next(fresh)) for outcome in outcomes]


def _row(delivery: Delivery) -> dict[str, Any]:
    finished = delivery.state != "pending"
    return {
        "source": delivery.source,
        "instance": delivery.instance,
        "delivery_id": delivery.delivery_id,
        "body_sha256": delivery.body_sha256,
        "event_type": delivery.event_type,
        "headers": dict(delivery.headers),
        "body": delivery.body,
        "received_at": delivery.received_at,
        "state": delivery.state,
        "attempts": 0,
        "error": delivery.error,
        "processed_at": delivery.received_at if finished else None,
    }


def accept(engine: Engine, delivery: Delivery, *, dedupe_window: timedelta) -> Stored:
    """Store one delivery durably in its own transaction, unless it is a duplicate."""
    return commit_batch(engine, [delivery], dedupe_window=dedupe_window)[0]


class _Waiter:
    """One request waiting for its row; :meth:`finish` wakes it, once."""

    __slots__ = ("delivery", "_latch", "finished", "outcome", "error")

    def __init__(self, delivery: Delivery) -> None:
        self.delivery = delivery
        # A held lock that the writer releases: waking it is one C call, where a threading.Event
        # costs the writer a Condition's Python-level notify per row while it holds the GIL.
        self._latch = threading.Lock()
        self._latch.acquire()
        self.finished = False
        self.outcome: Stored | None = None
        self.error: StoreError | None = None

    def wait(self, timeout: float) -> bool:
        """Block until finished; False if ``timeout`` seconds passed first."""
        return self._latch.acquire(timeout=timeout)

    def finish(self, outcome: Stored | None = None, error: StoreError | None = None) -> None:
        """Record the outcome (or the error) and wake the request; only the writer calls this."""
        if self.finished:
            return
        self.finished = True
        self.outcome = outcome
        self.error = error
        self._latch.release()


class GroupCommitter:
    """One writer thread per process that commits the deliveries of concurrent requests together.

    There is no artificial delay: while one batch is being committed the next requests queue up.
    The writer first waits for its turn at the database (another receiver process may be
    committing) and only then takes everything queued (up to ``max_batch``), so the rows that
    arrived during that wait share this transaction and its fsync instead of waiting for another.
    """

    def __init__(
        self, engine: Engine, *, dedupe_window: timedelta, max_batch: int = 256, timeout: float = 25.0
    ) -> None:
        self.engine = engine
        self.dedupe_window = dedupe_window
        self.max_batch = max_batch
        self.timeout = timeout
        self.batches = 0
        self.rows = 0
        self.largest_batch = 0
        self._lock = threading.Lock()
        self._pid: int | None = None
        self._queue: queue.SimpleQueue[_Waiter | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        database = engine.url.database if engine.dialect.name == "sqlite" else None
        # SQLite's busy handler sleeps up to 100 ms when another process holds the write lock;
        # a blocking file lock around each batch hands the turn over at once instead.
        self._lock_path = f"{database}.writer-lock" if database and database != ":memory:" else None
        self._lock_file: Any = None
        self._conn: Any = None
        self._lock_file_pid: int | None = None

    @contextlib.contextmanager
    def _turn(self):
        """Hold the writer lock shared by every receiver process on this SQLite file."""
        if self._lock_path is None:
            yield
            return
        if self._lock_file is None or self._lock_file_pid != _pid:
            try:
                # Kept open by the writer thread: one open() per batch is a syscall for nothing.
                self._lock_file = open(self._lock_path, "a+b")  # noqa: SIM115 - closed in close()
            except OSError as exc:
                raise StoreError(f"the inbox writer lock cannot be opened: {exc.strerror}") from exc
            self._lock_file_pid = _pid
        fcntl.flock(self._lock_file, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(self._lock_file, fcntl.LOCK_UN)

    def _ensure_writer(self) -> None:
        # A writer started before a fork (gunicorn --preload) does not exist in the child.
        if self._pid == _pid and self._thread is not None and self._thread.is_alive():
            return
        with self._lock:
            if self._pid == _pid and self._thread is not None and self._thread.is_alive():
                return
            if self._pid != _pid:
                # The parent's connection and lock file are the parent's: never used here.
                self._conn = None
                self._lock_file = None
            self._queue = queue.SimpleQueue()
            self._thread = threading.Thread(target=self._run, name="inbox-writer", daemon=True)
            self._pid = _pid
            self._thread.start()

    def accept(self, delivery: Delivery) -> Stored:
        """Queue ``delivery`` and return once the batch holding it is committed.

        :raises StoreError: the batch could not be committed, or the writer did not answer in time.
        """
        self._ensure_writer()
        waiter = _Waiter(delivery)
        self._queue.put(waiter)
        if not waiter.wait(self.timeout):
            raise StoreError("the inbox writer did not commit in time")
        if waiter.error is not None:
            raise waiter.error
        assert waiter.outcome is not None
        return waiter.outcome

    def close(self) -> None:
        """Stop the writer after it has committed what is queued."""
        if self._thread is not None and self._pid == _pid:
            self._queue.put(None)
            self._thread.join(self.timeout)
            self._thread = None
        if self._lock_file is not None and self._lock_file_pid == _pid:
            self._lock_file.close()
            self._lock_file = None

    def _run(self) -> None:
        try:
            self._write(self._queue)
        finally:
            self._drop_connection()

    def _write(self, pending: queue.SimpleQueue[_Waiter | None]) -> None:
        while True:
            first = pending.get()
            if first is None:
                return
            batch = [first]
            stopping = False
            try:
                with self._turn():
                    while len(batch) < self.max_batch:
                        try:
                            item = pending.get_nowait()
                        except queue.Empty:
                            break
                        if item is None:
                            stopping = True
                            break
                        batch.append(item)
                    self._commit(batch)
            except StoreError as exc:
                # The turn itself could not be taken: nothing was written.
                self._fail(batch, exc)
            except Exception as exc:  # the writer must never die with waiters asleep
                log.exception("inbox.writer.failed")
                self._fail(batch, StoreError(f"the inbox writer failed: {type(exc).__name__}"))
            if stopping:
                return

    @staticmethod
    def _fail(batch: list[_Waiter], error: StoreError) -> None:
        for waiter in batch:
            waiter.finish(error=error)

    def _commit(self, batch: list[_Waiter]) -> None:
        """Commit ``batch`` and wake its waiters; the caller holds the turn."""
        try:
            outcomes = self._store([w.delivery for w in batch])
        except StoreError as exc:
            if len(batch) > 1:
                # One unstorable row must not fail its neighbours: retry each on its own.
                for waiter in batch:
                    self._commit([waiter])
                return
            self._fail(batch, exc)
            return
        self.batches += 1
        self.rows += len(batch)
        self.largest_batch = max(self.largest_batch, len(batch))
        for waiter, outcome in zip(batch, outcomes, strict=True):
            waiter.finish(outcome)

    def _store(self, deliveries: list[Delivery]) -> list[Stored]:
        # The writer keeps one connection: a pool checkout and reset per batch is pure overhead
        # on the one thread every request of this process waits for.
        try:
            if self._conn is None:
                self._conn = self.engine.connect()
            return _store(self._conn, deliveries, self.dedupe_window)
        except (SQLAlchemyError, sqlite3.Error) as exc:
            self._drop_connection()
            raise _store_error(exc) from exc

    def _drop_connection(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(SQLAlchemyError, sqlite3.Error):
                conn.invalidate()
                conn.close()


def _event(row) -> RawEvent:
    return RawEvent(
        source=row.source,
        instance=row.instance,
        body=bytes(row.body),
        headers=dict(row.headers or {}),
        received_at=_utc(row.received_at),
        delivery_id=row.delivery_id,
        event_type=row.event_type,
        inbox_id=row.id,
    )


def claim(
    engine: Engine,
    worker_id: str,
    *,
    limit: int = 50,
    lease: timedelta = timedelta(minutes=5),
    now: datetime | None = None,
) -> list[RawEvent]:
    """Lease up to ``limit`` pending rows to ``worker_id``, oldest first; expired leases count as free."""
    now = now or _now()
    candidates = (
        select(inbox.c.id)
        .where(
            inbox.c.state == "pending",
            (inbox.c.claimed_until.is_(None)) | (inbox.c.claimed_until < now),
        )
        .order_by(inbox.c.id)
        .limit(limit)
    )
    if engine.dialect.name == "postgresql":
        # Several workers on several nodes each take different rows instead of queueing.
        candidates = candidates.with_for_update(skip_locked=True)
    statement = (
        update(inbox)
        .where(inbox.c.id.in_(candidates.scalar_subquery()))
        .values(claimed_by=worker_id, claimed_until=now + lease, attempts=inbox.c.attempts + 1)
        .returning(
            inbox.c.id,
            inbox.c.source,
            inbox.c.instance,
            inbox.c.delivery_id,
            inbox.c.event_type,
            inbox.c.headers,
            inbox.c.body,
            inbox.c.received_at,
        )
    )
    try:
        with engine.begin() as conn:
            rows = conn.execute(statement).all()
    except SQLAlchemyError as exc:
        raise StoreError(f"could not claim inbox rows: {type(exc.orig or exc).__name__}") from exc
    return [_event(row) for row in sorted(rows, key=lambda row: row.id)]


def complete(engine: Engine, ids: Iterable[int], *, now: datetime | None = None) -> int:
    """Mark rows done and release their lease; returns how many changed."""
    ids = list(ids)
    if not ids:
        return 0
    with engine.begin() as conn:
        result = conn.execute(
            update(inbox)
            .where(inbox.c.id.in_(ids))
            .values(state="done", processed_at=now or _now(), claimed_by=None, claimed_until=None)
        )
    return result.rowcount


def fail(
    engine: Engine,
    id: int,
    error: str,
    *,
    max_attempts: int = 5,
    now: datetime | None = None,
) -> str:
    """Record a failed attempt: back to ``pending`` for another try, or ``failed`` after the last.

    :returns: the row's new state.
    """
    now = now or _now()
    with engine.begin() as conn:
        attempts = conn.execute(select(inbox.c.attempts).where(inbox.c.id == id)).scalar_one()
        state = "failed" if attempts >= max_attempts else "pending"
        conn.execute(
            update(inbox)
            .where(inbox.c.id == id)
            .values(
                state=state,
                error=error[:2000],
                claimed_by=None,
                claimed_until=None,
                processed_at=now if state == "failed" else None,
            )
        )
    return state


def counts(engine: Engine) -> dict[str, int]:
    """How many rows are in each state."""
    with engine.connect() as conn:
        rows = conn.execute(select(inbox.c.state, func.count()).group_by(inbox.c.state)).all()
    return {state: total for state, total in rows}


def oldest_pending(engine: Engine) -> datetime | None:
    """When the oldest pending row was received; None if nothing is pending."""
    with engine.connect() as conn:
        value = conn.execute(
            select(func.min(inbox.c.received_at)).where(inbox.c.state == "pending")
        ).scalar()
    return _utc(value) if value is not None else None
