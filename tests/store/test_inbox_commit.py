"""The inbox's group commit: concurrent deliveries share transactions, each is stored once, and
each request learns what became of its own delivery."""

from __future__ import annotations

import fcntl
import os
import threading
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Engine, select, text

from escalier.core.errors import StoreError
from escalier.store import create_store_engine, upgrade
from escalier.store.inbox import Delivery, GroupCommitter, Stored, commit_batch
from escalier.store.schema import inbox

NOW = datetime(2026, 3, 6, 15, 50, 0, 250000, tzinfo=UTC)
WINDOW = timedelta(minutes=60)


def delivery(n: int, *, body: str | None = None, delivery_id: str | None = "", source: str = "zendesk",
             received_at: datetime = NOW, state: str = "pending") -> Delivery:
    return Delivery(
        source=source,
        instance="default",
        body=(body if body is not None else f'{{"id": "evt-{n}", "note": "café"}}').encode(),
        headers={"Content-Type": "application/json", "X-Zendesk-Webhook-Invocation-Id": f"inv-{n}"},
        received_at=received_at,
        delivery_id=f"inv-{n}" if delivery_id == "" else delivery_id,
        event_type="zen:event-type:ticket.status_changed",
        state=state,
        error="own-change" if state == "ignored" else None,
    )


@pytest.fixture
def engine(store_url: str) -> Iterator[Engine]:
    upgrade(store_url)
    engine = create_store_engine(store_url)
    yield engine
    engine.dispose()


@pytest.fixture
def committer(engine: Engine) -> Iterator[GroupCommitter]:
    committer = GroupCommitter(engine, dedupe_window=WINDOW)
    yield committer
    committer.close()


@pytest.fixture
def sqlite_engine(tmp_path) -> Iterator[Engine]:
    """A SQLite store, whose writer lock file a test can hold to keep a batch back."""
    url = f"sqlite:///{tmp_path / 'escalier.db'}"
    upgrade(url)
    engine = create_store_engine(url)
    yield engine
    engine.dispose()


def stored_rows(engine: Engine) -> list:
    with engine.connect() as conn:
        return conn.execute(select(inbox).order_by(inbox.c.id)).all()


def accept_all(committer: GroupCommitter, deliveries: list[Delivery]) -> list[Stored | StoreError]:
    """Accept each delivery from its own thread, all at once; the outcomes in the given order."""
    outcomes: list[Stored | StoreError | None] = [None] * len(deliveries)
    start = threading.Barrier(len(deliveries))

    def send(n: int) -> None:
        start.wait()
        try:
            outcomes[n] = committer.accept(deliveries[n])
        except StoreError as exc:
            outcomes[n] = exc

    threads = [threading.Thread(target=send, args=(n,)) for n in range(len(deliveries))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert all(outcome is not None for outcome in outcomes)
    return outcomes  # type: ignore[return-value]


def test_concurrent_deliveries_and_their_retries_are_each_stored_once(engine, committer):
    fresh = [delivery(n) for n in range(40)]
    retries = [delivery(n) for n in range(0, 40, 2)]  # the same delivery ids, sent again
    resent = [delivery(100 + n, body=f'{{"id": "evt-{n}", "note": "café"}}') for n in range(1, 40, 4)]
    outcomes = accept_all(committer, fresh + retries + resent)

    rows = stored_rows(engine)
    assert len(rows) == 40
    assert Counter(row.delivery_id for row in rows).most_common(1)[0][1] == 1
    by_id = {row.id: row for row in rows}
    first = outcomes[:40]
    # One copy of each was stored, whichever thread won; the ids given out are the rows' ids.
    for n, outcome in enumerate(first):
        if outcome.status == "stored":
            assert by_id[outcome.id].delivery_id == f"inv-{n}"
    copies = Counter()
    for outcome in outcomes:
        copies[outcome.status, outcome.duplicate_of] += 1
    assert copies["stored", None] == 40
    assert copies["duplicate", "delivery"] == 20
    assert copies["duplicate", "body"] == 10
    assert committer.rows == 70 and committer.batches < committer.rows


def test_a_batch_mixing_new_rows_with_stored_ones_answers_each_with_its_own_row(sqlite_engine):
    engine = sqlite_engine
    committer = GroupCommitter(engine, dedupe_window=WINDOW)
    before = [delivery(1), delivery(2, body='{"same": "body"}')]
    assert [o.status for o in commit_batch(engine, before, dedupe_window=WINDOW)] == ["stored"] * 2

    lock = open(f"{engine.url.database}.writer-lock", "a+b")  # noqa: SIM115 - closed below
    fcntl.flock(lock, fcntl.LOCK_EX)
    first = threading.Thread(target=committer.accept, args=(delivery(10),))
    first.start()
    # The first request leads and waits for the lock; these queue behind it, and once it has the
    # lock it takes them all into its batch.
    wanted = [
        delivery(11),
        delivery(1),                                    # a stored delivery id
        delivery(12, body='{"same": "body"}'),          # a stored body, in its window
        delivery(13),
        delivery(13),                                   # the batch's own duplicate id
        delivery(14, body='{"id": "evt-13", "note": "café"}'),  # ... and its own duplicate body
        delivery(15, state="ignored"),
        delivery(16, delivery_id=None),
    ]
    outcomes: list[Stored | None] = [None] * len(wanted)

    def send(n: int) -> None:
        outcomes[n] = committer.accept(wanted[n])

    threads = [threading.Thread(target=send, args=(n,)) for n in range(len(wanted))]
    for n, thread in enumerate(threads):
        thread.start()
        deadline = time.monotonic() + 10
        while len(committer._queue) < n + 2 and time.monotonic() < deadline:
            time.sleep(0.005)
    assert len(committer._queue) == 1 + len(wanted)
    fcntl.flock(lock, fcntl.LOCK_UN)
    lock.close()
    for thread in [first, *threads]:
        thread.join(10)

    assert committer.batches == 1 and committer.largest_batch == 1 + len(wanted)
    assert [(o.status, o.duplicate_of) for o in outcomes] == [
        ("stored", None), ("duplicate", "delivery"), ("duplicate", "body"), ("stored", None),
        ("duplicate", "delivery"), ("duplicate", "body"), ("stored", None), ("stored", None),
    ]
    rows = {row.id: row for row in stored_rows(engine)}
    for n in (0, 3, 6, 7):
        row = rows[outcomes[n].id]
        assert (row.body, row.delivery_id, row.state) == (
            wanted[n].body, wanted[n].delivery_id, wanted[n].state
        )
    assert len(rows) == 2 + 1 + 4
    committer.close()


def test_the_one_statement_path_writes_the_rows_sqlalchemy_writes(tmp_path):
    urls = [f"sqlite:///{tmp_path / name}" for name in ("batch.db", "core.db")]
    for url in urls:
        upgrade(url)
    engines = [create_store_engine(url) for url in urls]
    deliveries = [delivery(1), delivery(2, state="ignored"), delivery(3, delivery_id=None)]
    committer = GroupCommitter(engines[0], dedupe_window=WINDOW)
    try:
        assert [committer.accept(d).id for d in deliveries] == [1, 2, 3]
        assert [o.id for o in commit_batch(engines[1], deliveries, dedupe_window=WINDOW)] == [1, 2, 3]
        written = []
        for engine in engines:
            with engine.connect() as conn:
                written.append(conn.execute(text("SELECT * FROM inbox ORDER BY id")).all())
        assert written[0] == written[1]
        # And SQLAlchemy reads them back as it wrote them.
        back = stored_rows(engines[0])
        assert [row.received_at.replace(tzinfo=UTC) for row in back] == [NOW] * 3
        assert back[0].headers == deliveries[0].headers and back[1].processed_at is not None
    finally:
        committer.close()
        for engine in engines:
            engine.dispose()


def test_a_request_that_waits_too_long_is_told_and_stores_nothing(sqlite_engine):
    engine = sqlite_engine
    committer = GroupCommitter(engine, dedupe_window=WINDOW, timeout=0.3)
    lock = open(f"{engine.url.database}.writer-lock", "a+b")  # noqa: SIM115 - closed below
    fcntl.flock(lock, fcntl.LOCK_EX)
    try:
        leader = threading.Thread(target=committer.accept, args=(delivery(1),))
        leader.start()
        deadline = time.monotonic() + 10
        while not committer._leading and time.monotonic() < deadline:
            time.sleep(0.005)
        with pytest.raises(StoreError, match="in time"):
            committer.accept(delivery(2))
    finally:
        fcntl.flock(lock, fcntl.LOCK_UN)
        lock.close()
    leader.join(10)
    assert [row.delivery_id for row in stored_rows(engine)] == ["inv-1"]
    # Nothing is left stuck: the next request leads its own commit.
    assert committer.accept(delivery(3)).status == "stored"
    committer.close()
    with pytest.raises(StoreError, match="closed"):
        committer.accept(delivery(4))


def test_an_unstorable_delivery_does_not_fail_its_batch(engine, committer):
    bad = Delivery(source="x" * 65, instance="default", body=b"{}", headers={}, received_at=NOW,
                   delivery_id="bad")
    outcomes = accept_all(committer, [delivery(n) for n in range(6)] + [bad])
    if engine.dialect.name == "sqlite":
        # SQLite does not enforce VARCHAR lengths: the row is as storable as any other.
        assert all(isinstance(o, Stored) for o in outcomes)
    else:
        assert isinstance(outcomes[-1], StoreError)
        assert all(o.status == "stored" for o in outcomes[:-1])
    assert len(stored_rows(engine)) == 6 + (engine.dialect.name == "sqlite")


def test_a_forked_child_commits_with_its_own_connection(engine, committer):
    assert committer.accept(delivery(1)).status == "stored"
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # a gunicorn worker forked from a master that had already committed
        status = 1
        try:
            outcome = committer.accept(delivery(2))
            os.write(write, f"{outcome.status} {outcome.id}".encode())
            status = 0
        finally:
            os._exit(status)
    os.close(write)
    answer = os.read(read, 100).decode()
    os.close(read)
    _, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert answer == "stored 2"
    assert committer.accept(delivery(3)).id == 3
    assert [row.delivery_id for row in stored_rows(engine)] == ["inv-1", "inv-2", "inv-3"]


def test_sqlite_stores_durably_and_checkpoints_in_small_steps(sqlite_engine):
    committer = GroupCommitter(sqlite_engine, dedupe_window=WINDOW)
    try:
        committer.accept(delivery(1))
        for conn in (committer._conn, sqlite_engine.raw_connection().driver_connection):
            # WAL with FULL: NORMAL could lose an acknowledged delivery if the power fails.
            assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
            assert conn.execute("PRAGMA synchronous").fetchone() == (2,)
            assert conn.execute("PRAGMA wal_autocheckpoint").fetchone() == (200,)
        # The committer's connection commits each statement on its own.
        assert committer._conn.isolation_level is None and not committer._conn.in_transaction
    finally:
        committer.close()


def test_text_no_database_can_encode_is_stored_and_fails_no_neighbour(engine, committer):
    # JSON's "\ud800" escape parses to a lone surrogate, which has no UTF-8 form.
    poison = Delivery(source="jira", instance="default", body=b'{"webhookEvent": "\\ud800"}',
                      headers={"User-Agent": "x\udc80"}, received_at=NOW, delivery_id="poison",
                      event_type="\ud800")
    outcomes = accept_all(committer, [delivery(n) for n in range(6)] + [poison])
    assert all(isinstance(o, Stored) and o.status == "stored" for o in outcomes)
    [row] = [row for row in stored_rows(engine) if row.delivery_id == "poison"]
    assert (row.event_type, row.headers, bytes(row.body)) == (
        "\\ud800", {"User-Agent": "x\\udc80"}, b'{"webhookEvent": "\\ud800"}'
    )


def test_any_failure_of_one_row_fails_that_row_alone(sqlite_engine):
    committer = GroupCommitter(sqlite_engine, dedupe_window=WINDOW)
    # Not a time: binding it raises TypeError, not a database error.
    bad = Delivery(source="zendesk", instance="default", body=b"{}", headers={},
                   received_at="yesterday", delivery_id="bad")  # type: ignore[arg-type]
    wanted = [delivery(n) for n in range(5)] + [bad] + [delivery(n) for n in range(5, 9)]
    lock = open(f"{sqlite_engine.url.database}.writer-lock", "a+b")  # noqa: SIM115 - closed below
    fcntl.flock(lock, fcntl.LOCK_EX)
    try:
        outcomes: list = [None] * len(wanted)

        def send(n: int) -> None:
            try:
                outcomes[n] = committer.accept(wanted[n])
            except StoreError as exc:
                outcomes[n] = exc

        threads = [threading.Thread(target=send, args=(n,)) for n in range(len(wanted))]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 10
        while len(committer._queue) < len(wanted) and time.monotonic() < deadline:
            time.sleep(0.005)
        assert len(committer._queue) == len(wanted)  # one batch, all of them
    finally:
        fcntl.flock(lock, fcntl.LOCK_UN)
        lock.close()
    for thread in threads:
        thread.join(10)
    committer.close()
    assert isinstance(outcomes[5], StoreError) and "TypeError" in str(outcomes[5])
    assert [o.status for n, o in enumerate(outcomes) if n != 5] == ["stored"] * 9
    assert len(stored_rows(sqlite_engine)) == 9
