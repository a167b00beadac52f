"""The inbox: every webhook stored raw and durably before it is acknowledged, and its consumers.

The receiver side is :func:`accept` (one delivery, one transaction) and :class:`GroupCommitter`
(concurrent requests in one process share one transaction, and so one fsync; a request returns
only after its own row is committed). Both de-duplicate on the delivery id and on the same body
within a window.

The worker side is :func:`claim` (a lease on pending rows), :func:`complete`, :func:`fail`, and
:func:`counts`.

Rows are ``pending`` until the worker finishes them (``done``), gives up (``failed``), or the
receiver stores them already finished as ``ignored`` (an event type no connector acts on, or
Escalier's own change; ``error`` says which).
"""

from __future__ import annotations

import collections
import contextlib
import fcntl
import hashlib
import logging
import os
import sqlite3
import threading
import time
import weakref
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

from sqlalchemy import Engine, case, func, insert, literal, null, select, text, union_all, update
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

# Every committer of this process, so that a forked child starts each one over.
_COMMITTERS: weakref.WeakSet[GroupCommitter] = weakref.WeakSet()


def _forked() -> None:
    # The child has one thread: nothing can be mid-commit here while the committers start over.
    for committer in list(_COMMITTERS):
        committer._reset()


os.register_at_fork(after_in_child=_forked)

# Any constant will do: it only has to be the same in every receiver process sharing a database.
_PG_INBOX_LOCK = 0x65736361


def _utc(value: datetime) -> datetime:
    # SQLite gives back naive datetimes; everything in the store is UTC.
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _storable(text: str | None) -> str | None:
    """``text`` as a database can store it: a lone surrogate (which JSON's ``"\\ud800"`` escape
    gives) cannot be encoded as UTF-8, and is kept as its escape instead."""
    if text is None or text.isascii():
        return text
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


@dataclass(frozen=True, slots=True)
class Delivery:
    """One delivery to store: the raw body, the headers worth keeping, and what it is.

    The body is stored as the bytes received, whatever they contain. The text fields taken from
    a payload (``event_type``, ``delivery_id``) and the header values are made storable here, so
    that no content can fail the commit it shares with other deliveries. ``body_sha256`` is the
    same-body de-duplication key: the body's SHA-256 unless the caller gives one (the receiver
    hashes a signed timestamp in with the body).
    """

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
        for name in ("source", "instance", "delivery_id", "event_type", "error"):
            value = getattr(self, name)
            if value is not None and not value.isascii():
                object.__setattr__(self, name, _storable(value))
        headers = self.headers
        if not all(isinstance(v, str) and v.isascii() and k.isascii() for k, v in headers.items()):
            object.__setattr__(
                self, "headers", {_storable(str(k)): _storable(str(v)) for k, v in headers.items()}
            )


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


class _SqliteInsert:
    """A batch as one ``INSERT ... SELECT`` that SQLite runs in a single call, for the committer.

    In autocommit mode that one statement takes the write lock, skips the rows already stored
    (same delivery id, or same body inside its window: the same rules as :func:`_existing`),
    inserts the rest and commits, fsync included, while Python's sqlite3 module has released the
    GIL. Request threads of the process run meanwhile, and none of them can delay the commit by
    holding the GIL while the database is locked. Values are bound through the columns' own
    SQLAlchemy types, so rows look exactly as Core writes them.
    """

    def __init__(self, dialect) -> None:
        self._bind = {
            name: inbox.c[name].type.dialect_impl(dialect).bind_processor(dialect) for name in _COLUMNS
        }
        count = len(_COLUMNS)
        # A VALUES row is the columns, then the earliest receipt that makes the body a duplicate,
        # then its place in the batch; SQLite names them column1, column2, ...
        since, place = f"v.column{count + 1}", f"v.column{count + 2}"
        self._row = "(" + ", ".join("?" * (count + 2)) + ")"
        self._head = (
            f"INSERT INTO inbox ({', '.join(_COLUMNS)}) "
            f"SELECT {', '.join(f'v.column{n + 1}' for n in range(count))} FROM (VALUES "
        )
        self._tail = (
            ") AS v WHERE NOT EXISTS (SELECT 1 FROM inbox AS i WHERE i.source = v.column1 "
            "AND i.instance = v.column2 AND i.delivery_id = v.column3) "
            "AND NOT EXISTS (SELECT 1 FROM inbox AS i WHERE i.source = v.column1 "
            f"AND i.instance = v.column2 AND i.body_sha256 = v.column4 AND i.received_at >= {since}) "
            # Rows are inserted, and given rowids, in the batch's order.
            f"ORDER BY {place}"
        )
        # SQLite binds at most 32766 parameters in one statement.
        self.max_rows = 32766 // (count + 2)

    def statement(self, deliveries: Sequence[Delivery], window: timedelta) -> tuple[str, list[Any]]:
        """The statement and its parameters for ``deliveries`` (no two alike; see :func:`_decide`)."""
        stamp = self._bind["received_at"]
        params: list[Any] = []
        for place, delivery in enumerate(deliveries):
            row = _row(delivery)
            for name in _COLUMNS:
                bind = self._bind[name]
                value = row[name]
                params.append(bind(value) if bind is not None and value is not None else value)
            since = _seen_since(delivery, window)
            params += (stamp(since) if stamp else since, place)
        return self._head + ", ".join([self._row] * len(deliveries)) + self._tail, params

    @staticmethod
    def outcomes(db, deliveries: Sequence[Delivery], inserted: int, last_id: int) -> list[Stored]:
        """What became of each of ``deliveries``, ``inserted`` of which were stored up to ``last_id``."""
        if inserted == len(deliveries):
            # All new (the usual case): consecutive rowids, in the batch's order.
            first = last_id - inserted + 1
            return [Stored("stored", id=first + n) for n in range(inserted)]
        # Some were already stored: find which rows are ours among the committed ones.
        ids = {}
        if inserted:
            found = db.execute(
                "SELECT id, source, instance, body_sha256 FROM inbox WHERE id BETWEEN ? AND ?",
                (last_id - inserted + 1, last_id),
            )
            ids = {(source, instance, sha): id_ for id_, source, instance, sha in found}
        outcomes = []
        for d in deliveries:
            id_ = ids.get((d.source, d.instance, d.body_sha256))
            if id_ is not None:
                outcomes.append(Stored("stored", id=id_))
            elif d.delivery_id and db.execute(
                "SELECT 1 FROM inbox WHERE source = ? AND instance = ? AND delivery_id = ?",
                (d.source, d.instance, d.delivery_id),
            ).fetchone():
                outcomes.append(Stored("duplicate", duplicate_of="delivery"))
            else:
                outcomes.append(Stored("duplicate", duplicate_of="body"))
        return outcomes


def _decide(deliveries: Sequence[Delivery], ids, bodies, window: timedelta):
    """Which deliveries are duplicates, and the others, in the order given."""
    outcomes: list[Stored | None] = []
    fresh: list[Delivery] = []
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
        fresh.append(delivery)
    return outcomes, fresh


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
    """:func:`commit_batch` on an open connection; SQLAlchemy's errors pass."""
    groups = _grouped(deliveries)
    _begin_write(conn)
    ids, bodies = _existing(conn, groups, window)
    outcomes, fresh = _decide(deliveries, ids, bodies, window)
    new_ids = _insert(conn, [_row(d) for d in fresh]) if fresh else []
    conn.commit()
    stored = iter(new_ids)
    return [outcome or Stored("stored", id=next(stored)) for outcome in outcomes]


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
    """One request waiting for its row: woken, once, when it is finished or when it is to lead."""

    __slots__ = ("_latch", "delivery", "error", "finished", "leads", "outcome")

    def __init__(self, delivery: Delivery) -> None:
        self.delivery = delivery
        # A held lock that is released to wake it: one C call, where a threading.Event costs a
        # Condition's Python-level notify.
        self._latch = threading.Lock()
        self._latch.acquire()
        self.finished = False
        self.leads = False
        self.outcome: Stored | None = None
        self.error: StoreError | None = None

    def wait(self, timeout: float) -> bool:
        """Block until woken; False if ``timeout`` seconds passed first."""
        return self._latch.acquire(timeout=timeout)

    def finish(self, outcome: Stored | None = None, error: StoreError | None = None) -> None:
        """Record the outcome (or the error) and wake the request."""
        if self.finished:
            return
        self.outcome = outcome
        self.error = error
        self.finished = True  # last: a request that timed out reads the outcome once this is set
        self._latch.release()

    def lead(self) -> None:
        """Wake the request to commit the next batch (the caller holds the committer's mutex)."""
        self.leads = True
        self._latch.release()


class GroupCommitter:
    """Concurrent requests of one process share transactions, and so their fsyncs.

    A request queues its delivery; if no commit is in progress in this process, it leads one:
    it waits for its turn at the database (another receiver process may be committing), takes
    what is queued by then (itself first, up to ``max_batch``), commits it in one transaction,
    finishes each request with its outcome, and hands the lead to the oldest request that queued
    meanwhile. A request returns only after its own row is committed. There is no writer thread
    and no artificial delay: the rows that arrive during one commit form the next one, and the
    thread that commits is one that already runs, so a quiet receiver commits with no hand-off.

    Receiver processes on one SQLite file take turns through a blocking file lock, which hands
    the turn over at once (SQLite's busy handler sleeps up to 100 ms); on SQLite the batch is one
    statement (:class:`_SqliteInsert`). On PostgreSQL each batch is a transaction that holds an
    advisory lock, so check-then-insert cannot interleave across nodes.
    """

    def __init__(
        self, engine: Engine, *, dedupe_window: timedelta, max_batch: int = 256, timeout: float = 25.0
    ) -> None:
        self.engine = engine
        self.dedupe_window = dedupe_window
        self.timeout = timeout
        self.batches = 0
        self.rows = 0
        self.largest_batch = 0
        self._sqlite = _SqliteInsert(engine.dialect) if engine.dialect.name == "sqlite" else None
        self.max_batch = min(max_batch, self._sqlite.max_rows) if self._sqlite else max_batch
        database = engine.url.database if self._sqlite else None
        self._lock_path = f"{database}.writer-lock" if database and database != ":memory:" else None
        self._closed = False
        self._reset()
        _COMMITTERS.add(self)

    def _reset(self) -> None:
        # Also in the child of a fork (gunicorn --preload): the parent's connection, lock file and
        # queue are the parent's, never used here (closing a SQLite connection opened before a
        # fork is unsafe in the child, so they are only dropped).
        self._mutex = threading.Lock()
        self._queue: collections.deque[_Waiter] = collections.deque()
        self._leading = False
        self._conn: Any = None
        self._lock_file: Any = None

    @contextlib.contextmanager
    def _turn(self):
        """Hold the writer lock shared by every receiver process on this SQLite file."""
        if self._lock_path is None:
            yield
            return
        if self._lock_file is None:
            try:
                # Kept open: one open() per batch is a syscall for nothing.
                self._lock_file = open(self._lock_path, "a+b")  # noqa: SIM115 - closed in close()
            except OSError as exc:
                raise StoreError(f"the inbox writer lock cannot be opened: {exc.strerror}") from exc
        fcntl.flock(self._lock_file, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(self._lock_file, fcntl.LOCK_UN)

    def accept(self, delivery: Delivery) -> Stored:
        """Return once ``delivery`` is committed (or found to be a duplicate).

        :raises StoreError: its batch could not be committed, or not within ``timeout`` seconds.
        """
        waiter = _Waiter(delivery)
        with self._mutex:
            if self._closed:
                raise StoreError("the inbox is closed")
            self._queue.append(waiter)
            leads = not self._leading
            self._leading = True
        if not leads and not waiter.wait(self.timeout):
            with self._mutex:
                # Handed the lead just as the wait ran out: it must still lead, or nobody will.
                leads = waiter.leads
                if leads:
                    waiter.wait(0)  # take the wake-up it missed, so that finishing it can wake it
                elif not waiter.finished:
                    with contextlib.suppress(ValueError):
                        self._queue.remove(waiter)
                    raise StoreError("the inbox did not commit in time")
        if leads or waiter.leads:
            self._lead()
        if waiter.error is not None:
            raise waiter.error
        if waiter.outcome is None:
            raise StoreError("the inbox did not commit in time")
        return waiter.outcome

    def close(self) -> None:
        """Refuse new deliveries and close the connection and lock file (once idle)."""
        with self._mutex:
            self._closed = True
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            with self._mutex:
                if not self._leading:
                    break
            time.sleep(0.01)
        self._drop_connection()
        if self._lock_file is not None:
            self._lock_file.close()
            self._lock_file = None

    def _lead(self) -> None:
        batch: list[_Waiter] = []
        try:
            # The turn first, then the batch: the requests that queued while another process
            # was committing share this transaction instead of waiting for the next one.
            with self._turn():
                batch = self._take()
                self._commit(batch)
        except StoreError as exc:
            # The turn itself could not be taken: nothing was written.
            self._fail(batch or self._take(), exc)
        except Exception as exc:  # never leave a request asleep, whatever went wrong
            log.exception("inbox.commit.failed")
            self._fail(batch or self._take(), StoreError(f"the inbox commit failed: {type(exc).__name__}"))
        with self._mutex:
            if self._queue:
                self._queue[0].lead()
            else:
                self._leading = False

    def _take(self) -> list[_Waiter]:
        with self._mutex:
            return [self._queue.popleft() for _ in range(min(self.max_batch, len(self._queue)))]

    @staticmethod
    def _fail(batch: list[_Waiter], error: StoreError) -> None:
        for waiter in batch:
            waiter.finish(error=error)

    def _commit(self, batch: list[_Waiter]) -> None:
        """Commit ``batch`` and finish its requests; the caller holds the turn."""
        try:
            outcomes = self._store([w.delivery for w in batch])
        except Exception as exc:  # whatever one row did, it is retried alone; see below
            if len(batch) > 1:
                # One unstorable row must not fail its neighbours: retry each on its own. On
                # SQLite a failed statement stored nothing (it is one autocommit statement).
                for waiter in batch:
                    self._commit([waiter])
                return
            if not isinstance(exc, StoreError):
                log.exception("inbox.commit.failed")
                exc = StoreError(f"the inbox commit failed: {type(exc).__name__}")
            self._fail(batch, exc)
            return
        self.batches += 1
        self.rows += len(batch)
        self.largest_batch = max(self.largest_batch, len(batch))
        for waiter, outcome in zip(batch, outcomes, strict=True):
            waiter.finish(outcome)

    def _store(self, deliveries: list[Delivery]) -> list[Stored]:
        # One connection, kept: a pool checkout and reset per batch is pure overhead.
        try:
            if self._sqlite is None:
                if self._conn is None:
                    self._conn = self.engine.connect()
                return _store(self._conn, deliveries, self.dedupe_window)
            return self._store_sqlite(deliveries)
        except (SQLAlchemyError, sqlite3.Error) as exc:
            self._drop_connection()
            raise _store_error(exc) from exc
        except Exception:
            if self._sqlite is None:
                # A transaction may be left open on the kept connection: start the next afresh.
                self._drop_connection()
            raise

    def _store_sqlite(self, deliveries: list[Delivery]) -> list[Stored]:
        assert self._sqlite is not None
        # Duplicates inside the batch are settled here; the statement settles those already stored.
        outcomes, fresh = _decide(deliveries, set(), {}, self.dedupe_window)
        stored: list[Stored] = []
        if fresh:
            sql, params = self._sqlite.statement(fresh, self.dedupe_window)
            db = self._sqlite_connection()
            cursor = db.execute(sql, params)  # the caller holds the turn
            stored = self._sqlite.outcomes(db, fresh, cursor.rowcount, cursor.lastrowid or 0)
        new = iter(stored)
        return [outcome or next(new) for outcome in outcomes]

    def _sqlite_connection(self):
        if self._conn is None:
            # The engine's own connection (its pragmas: WAL, synchronous=FULL), taken out of the
            # pool for good and switched to autocommit: each statement is its own transaction.
            pooled = self.engine.raw_connection()
            conn = pooled.driver_connection
            pooled.detach()
            conn.isolation_level = None
            self._conn = conn
        return self._conn

    def _drop_connection(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        with contextlib.suppress(SQLAlchemyError, sqlite3.Error):
            if self._sqlite is None:
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
    candidates = select(inbox.c.id).where(*_claimable(now)).order_by(inbox.c.id).limit(limit)
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


def has_claimable(engine: Engine, *, now: datetime | None = None) -> bool:
    """Whether :func:`claim` would find a row now: one indexed read, cheap enough to poll."""
    now = now or _now()
    with engine.connect() as conn:
        return conn.execute(select(inbox.c.id).where(*_claimable(now)).limit(1)).first() is not None


def _claimable(now: datetime) -> tuple[Any, ...]:
    """Pending, and not leased (or the lease expired, or the wait asked for is over)."""
    return (
        inbox.c.state == "pending",
        (inbox.c.claimed_until.is_(None)) | (inbox.c.claimed_until < now),
    )


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


def defer(engine: Engine, ids: Iterable[int], until: datetime, reason: str) -> int:
    """Give rows back untried until ``until``: their upstream asked to wait (a 429, a 5xx).

    The claim's attempt is not counted, so a long upstream outage delays deliveries but never
    fails them; returns how many rows changed.
    """
    ids = list(ids)
    if not ids:
        return 0
    with engine.begin() as conn:
        result = conn.execute(
            update(inbox)
            .where(inbox.c.id.in_(ids), inbox.c.state == "pending")
            .values(
                claimed_by=None,
                claimed_until=until,
                attempts=case((inbox.c.attempts > 0, inbox.c.attempts - 1), else_=0),
                error=reason[:2000],
            )
        )
    return result.rowcount


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
