"""A ticket's actions go upstream together, land once across partial failures and restarts, and
reconciliation finds what no webhook delivered, deciding it once."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import pluggy
import pytest
from runtime_support import keys_in_store
from sqlalchemy import select

from escalier.core.connector import ActionBatch, ActionResult, Changes
from escalier.core.errors import ConnectorError, RejectedError, TransientError
from escalier.core.hookspecs import hookimpl
from escalier.core.model import EventKind, Ticket, TicketEvent
from escalier.core.policy import Policy
from escalier.plugins import get_plugin_manager
from escalier.runtime.testing import FakeClock, TestDeskConnection, TestDeskPlugin, Upstream, deliver, event_body
from escalier.runtime.worker import Worker
from escalier.store import Store
from escalier.store.schema import inbox as inbox_table
from escalier.store.schema import outbox, sync_cursors

LEASE = timedelta(minutes=5)


@dataclass
class BatchingDesk:
    """The testdesk connector with a batch hook: one "call" per batch, failures on demand.

    It writes without a look, except for the keys the worker says an earlier attempt may have
    applied; the upstream counts a second write of a key as a duplicate.
    """

    calls: list[ActionBatch] = field(default_factory=list)
    # (call number, action index) -> the error that action meets
    failures: dict[tuple[int, int], ConnectorError] = field(default_factory=dict)
    look_first: bool = True

    @hookimpl
    def apply_actions_for_connector(self, batch: ActionBatch, connection: TestDeskConnection):
        if batch.system != "testdesk":
            return None
        self.calls.append(batch)
        call = len(self.calls)
        results = []
        for index, action in enumerate(batch.actions):
            error = self.failures.get((call, index))
            if error is not None:
                if index == 0:
                    raise error
                results.append(ActionResult(False, error=error))
                if isinstance(error, TransientError):
                    # What follows a transient failure is not tried: it waits with it.
                    results.extend(ActionResult(False, error=error) for _ in batch.actions[index + 1:])
                    break
                continue
            if self.look_first and action.key in batch.maybe_applied and connection.has(action.key):
                results.append(ActionResult(False, detail="already applied"))
                continue
            results.append(connection.write(action))
        return results


@dataclass
class ChangeFeed:
    """A connector's list of changes since a cursor: events numbered in the order they happened."""

    events: list[TicketEvent] = field(default_factory=list)
    asked: list[str | None] = field(default_factory=list)

    @hookimpl
    def list_changes_for_connector(self, connection, cursor: str | None, now: datetime):
        self.asked.append(cursor)
        start = int(cursor or 0)
        return Changes(tuple(self.events[start:]), str(len(self.events)))


@pytest.fixture
def desk() -> BatchingDesk:
    return BatchingDesk()


@pytest.fixture
def pm(desk: BatchingDesk) -> pluggy.PluginManager:
    return get_plugin_manager(load_entrypoints=False, plugins=[TestDeskPlugin(), desk])


def open_tickets(store: Store, clock: FakeClock, count: int, *, severity: str = "critical") -> None:
    deliver(store.engine, [
        event_body(f"T-{n}", "created", clock.now(), id=f"created-{n}", severity=severity, users_affected=1)
        for n in range(count)
    ], received_at=clock.now())


def drain(worker: Worker, clock: FakeClock, *, rounds: int = 50) -> None:
    for _ in range(rounds):
        if not worker.run_once().total:
            pending = worker.store.next_action_ready(after=clock.now() - timedelta(days=1))
            if pending is None:
                return
            clock.advance(max(1.0, (pending - clock.now()).total_seconds()))
    raise AssertionError("the worker never ran dry")


def outbox_states(store: Store) -> dict[str, str]:
    with store.engine.connect() as connection:
        return dict(connection.execute(select(outbox.c.idempotency_key, outbox.c.state)).all())


def test_one_escalation_step_is_one_call_per_ticket(
    store: Store, make_worker: Callable[..., Worker], upstream: Upstream, desk: BatchingDesk, clock: FakeClock
) -> None:
    open_tickets(store, clock, 5)
    worker = make_worker()
    worker.process_inbox()
    expected = keys_in_store(store.engine)
    assert all(len(keys) >= 3 for keys in expected.values())  # several actions per step

    worker.process_outbox()

    assert len(desk.calls) == 5
    assert {call.ticket_id: [a.key for a in call.actions] for call in desk.calls} == expected
    assert all(not call.maybe_applied for call in desk.calls)
    assert upstream.keys_by_ticket() == expected and upstream.duplicates == 0
    assert set(outbox_states(store).values()) == {"done"}


def test_a_transient_failure_part_way_sends_only_what_had_not_landed(
    store: Store, make_worker: Callable[..., Worker], upstream: Upstream, desk: BatchingDesk, clock: FakeClock
) -> None:
    open_tickets(store, clock, 1)
    worker = make_worker()
    worker.process_inbox()
    keys = keys_in_store(store.engine)["T-0"]
    desk.failures[(1, 1)] = TransientError("timed out", system="testdesk")

    drain(worker, clock)

    first, second = desk.calls[0], desk.calls[1]
    assert [a.key for a in first.actions] == keys
    assert [a.key for a in second.actions] == keys[1:]  # the first landed and is not sent again
    assert keys[1] in second.maybe_applied and keys[0] not in second.maybe_applied
    assert upstream.keys_by_ticket() == {"T-0": keys} and upstream.duplicates == 0


def test_a_refusal_part_way_dead_letters_that_action_alone(
    store: Store, make_worker: Callable[..., Worker], upstream: Upstream, desk: BatchingDesk, clock: FakeClock
) -> None:
    open_tickets(store, clock, 1)
    worker = make_worker()
    worker.process_inbox()
    keys = keys_in_store(store.engine)["T-0"]
    desk.failures[(1, 1)] = RejectedError("field is not on the screen", system="testdesk", status=400)

    drain(worker, clock)

    assert len(desk.calls) == 1
    states = outbox_states(store)
    assert states[keys[1]] == "dead" and all(states[k] == "done" for k in keys if k != keys[1])
    assert [letter.key for letter in store.dead_letters()] == [keys[1]]
    assert "field is not on the screen" in store.dead_letters()[0].error
    assert upstream.keys_by_ticket() == {"T-0": [k for k in keys if k != keys[1]]}
    assert upstream.duplicates == 0


@pytest.mark.parametrize("look_first", [True, False], ids=["guarded", "guard-broken"])
def test_a_worker_that_died_mid_batch_is_taken_over_without_a_second_write(
    store: Store, make_worker: Callable[..., Worker], upstream: Upstream, desk: BatchingDesk,
    clock: FakeClock, look_first: bool,
) -> None:
    open_tickets(store, clock, 1)
    make_worker().process_inbox()
    keys = keys_in_store(store.engine)["T-0"]
    # The first worker claims the ticket's actions, writes two, and dies before recording them.
    [claimed] = store.claim_batches("dead-worker", now=clock.now(), limit=10, lease=LEASE)
    assert [item.action.key for item in claimed.items] == keys
    dying = TestDeskConnection(upstream.url)
    try:
        for item in claimed.items[:2]:
            dying.write(item.action)
    finally:
        dying.close()
    desk.look_first = look_first

    clock.advance(LEASE.total_seconds() + 1)
    drain(make_worker(worker_id="worker-2"), clock)

    [taken_over] = desk.calls
    assert taken_over.maybe_applied == frozenset(keys)  # never given back: any of them may have landed
    assert set(outbox_states(store).values()) == {"done"}
    assert upstream.keys_by_ticket() == {"T-0": keys}
    if look_first:
        assert upstream.duplicates == 0
    else:
        # Without the look, the fake upstream catches the second writes: the guard is what keeps them out.
        assert upstream.duplicates == 2


def test_reconciliation_decides_a_missed_change_once_even_when_its_webhook_comes_too(
    store: Store, policy: Policy, make_worker: Callable[..., Worker], upstream: Upstream,
    desk: BatchingDesk, clock: FakeClock, pm: pluggy.PluginManager,
) -> None:
    feed = ChangeFeed()
    pm.register(feed)
    ticket = Ticket(system="testdesk", id="T-7", severity="critical", users_affected=1,
                    created_at=clock.now())
    feed.events.append(TicketEvent(id="created-7", system="testdesk", ticket_id="T-7",
                                   kind=EventKind.CREATED, occurred_at=clock.now(), ticket=ticket))
    worker = make_worker(reconcile={("testdesk", "default"): timedelta(minutes=5)})

    drain(worker, clock)  # no webhook came: the look at start-up finds the ticket
    assert feed.asked == [None]
    assert [call.ticket_id for call in desk.calls] == ["T-7"]

    # The webhook of the same change arrives late; the next look finds it again too.
    deliver(store.engine, [event_body("T-7", "created", ticket.created_at, id="created-7",
                                      severity="critical", users_affected=1)],
            received_at=clock.now())
    drain(worker, clock)
    assert feed.asked == [None]  # not due again before its interval
    clock.advance(5 * 60)
    feed.events.append(feed.events[0])
    drain(worker, clock)

    assert feed.asked == [None, "1"]
    assert len(desk.calls) == 1  # decided once
    assert upstream.keys_by_ticket() == keys_in_store(store.engine) and upstream.duplicates == 0
    with store.engine.connect() as connection:
        row = connection.execute(select(sync_cursors)).one()
    assert (row.cursor, row.last_error) == ("2", None)


def test_a_failing_look_is_tried_again_soon_and_keeps_its_cursor(
    store: Store, make_worker: Callable[..., Worker], clock: FakeClock, pm: pluggy.PluginManager,
) -> None:
    class Down:
        @hookimpl
        def list_changes_for_connector(self, connection, cursor, now):
            raise TransientError("search answered 503", system="testdesk", status=503)

    pm.register(Down())
    worker = make_worker(reconcile={("testdesk", "default"): timedelta(hours=1)})
    worker.process_reconciliation()
    with store.engine.connect() as connection:
        row = connection.execute(select(sync_cursors)).one()
    assert row.cursor is None and "503" in row.last_error
    assert row.due_at.replace(tzinfo=None) == (clock.now() + timedelta(minutes=1)).replace(tzinfo=None)


def test_a_pass_lets_the_connection_read_ahead_once_and_survives_a_failing_look(
    store: Store, make_worker: Callable[..., Worker], clock: FakeClock, pm: pluggy.PluginManager,
    caplog: pytest.LogCaptureFixture,
) -> None:
    class ReadAhead:
        def __init__(self) -> None:
            self.passes: list[list[str | None]] = []
            self.fail = False

        @hookimpl
        def prepare_deliveries_for_connector(self, raws, config, connection):
            assert isinstance(connection, TestDeskConnection)
            self.passes.append([raw.delivery_id for raw in raws])
            if self.fail:
                raise ConnectorError("show_many answered what it cannot read", system="testdesk")

    ahead = ReadAhead()
    pm.register(ahead)
    open_tickets(store, clock, 3)
    worker = make_worker()
    assert worker.process_inbox() == 3
    assert ahead.passes == [["created-0", "created-1", "created-2"]]
    # A failed look ahead costs nothing but a log line: each delivery is still decided.
    ahead.fail = True
    deliver(store.engine, [event_body("T-9", "created", clock.now(), id="created-9", severity="critical",
                                      users_affected=1)], received_at=clock.now())
    caplog.set_level("WARNING", logger="escalier.runtime.worker")
    assert worker.process_inbox() == 1
    assert [r.msg for r in caplog.records] == ["runtime.inbox.prepare_failed"]
    assert "T-9" in keys_in_store(store.engine)


def test_a_read_answered_429_makes_the_accounts_deliveries_wait_without_spending_attempts(
    store: Store, make_worker: Callable[..., Worker], clock: FakeClock, pm: pluggy.PluginManager,
) -> None:
    class Throttled:
        def __init__(self) -> None:
            self.reads: list[str | None] = []
            self.limited = True

        @hookimpl(tryfirst=True)
        def parse_event_for_connector(self, raw):
            self.reads.append(raw.delivery_id)
            if self.limited:
                raise TransientError("GET ticket answered 429", system="testdesk", status=429,
                                     retry_after=30)
            return None

    throttled = Throttled()
    pm.register(throttled)
    open_tickets(store, clock, 3)
    worker = make_worker()
    assert worker.process_inbox() == 3
    # The first read met the limit; the other two waited without a read of their own.
    assert throttled.reads == ["created-0"] and keys_in_store(store.engine) == {}
    with store.engine.connect() as connection:
        rows = connection.execute(select(inbox_table.c.state, inbox_table.c.attempts,
                                         inbox_table.c.claimed_until)).all()
    assert {(row.state, row.attempts) for row in rows} == {("pending", 0)}
    assert worker.process_inbox() == 0  # nothing is claimable before the upstream's time
    clock.advance(31)
    throttled.limited = False
    assert worker.process_inbox() == 3
    assert sorted(keys_in_store(store.engine)) == ["T-0", "T-1", "T-2"]


def test_one_delivery_can_be_followed_through_the_worker_log_by_its_fields(
    store: Store, make_worker: Callable[..., Worker], clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    open_tickets(store, clock, 1)
    caplog.set_level("INFO", logger="escalier.runtime.worker")
    worker = make_worker()
    worker.process_inbox()
    worker.process_outbox()

    [decided] = [r for r in caplog.records if r.msg == "runtime.event.decided"]
    assert (decided.source, decided.instance, decided.delivery_id, decided.ticket_id) == (
        "testdesk", "default", "created-0", "T-0")
    assert decided.inbox_id and decided.event_id == "created-0" and decided.actions >= 3
    applied = [r for r in caplog.records if r.msg == "runtime.action.applied"]
    assert applied and {(r.system, r.instance, r.ticket_id) for r in applied} == {("testdesk", "default", "T-0")}


def test_a_batch_carries_the_ticket_as_the_escalation_last_saw_it(
    store: Store, make_worker: Callable[..., Worker], desk: BatchingDesk, clock: FakeClock
) -> None:
    open_tickets(store, clock, 1, severity="high")
    worker = make_worker()
    worker.process_inbox()
    worker.process_outbox()
    [call] = desk.calls
    assert call.ticket is not None and (call.ticket.id, call.ticket.severity) == ("T-0", "high")


@pytest.mark.postgres
def test_the_ticket_of_a_batch_reads_alike_on_postgresql(
    postgres_url: str, policy: Policy, pm: pluggy.PluginManager, clock: FakeClock, upstream: Upstream,
    desk: BatchingDesk,
) -> None:
    from escalier.core.engine import decide
    from escalier.store import create_store_engine

    engine = create_store_engine(postgres_url)
    connection = TestDeskConnection(upstream.url)
    try:
        store = Store(engine)
        open_tickets(store, clock, 1, severity="high")
        worker = Worker(store, decide=decide, policy=policy, plugin_manager=pm, clock=clock.now,
                        connections={("testdesk", "default"): connection}, worker_id="pg-worker")
        worker.process_inbox()
        worker.process_outbox()
    finally:
        connection.close()
        engine.dispose()
    [call] = desk.calls
    assert call.ticket is not None and (call.ticket.id, call.ticket.severity) == ("T-0", "high")


@dataclass
class SweepingDesk:
    """A bulk update for the testdesk: many tickets in one call; some may not be reached."""

    desk: BatchingDesk
    calls: list[list[ActionBatch]] = field(default_factory=list)
    unreached: set[str] = field(default_factory=set)  # tickets the first sweep's job stops before
    decline: bool = False

    @hookimpl
    def apply_sweep_for_connector(self, batches: list[ActionBatch], connection: TestDeskConnection):
        if self.decline:
            return None
        self.calls.append(batches)
        answered = []
        for batch in batches:
            if len(self.calls) == 1 and batch.ticket_id in self.unreached:
                stopped = TransientError("the job stopped before this ticket", system="testdesk")
                answered.append([ActionResult(False, error=stopped) for _ in batch.actions])
                continue
            answered.append([
                ActionResult(False, detail="already applied")
                if action.key in batch.maybe_applied and connection.has(action.key)
                else connection.write(action)
                for action in batch.actions
            ])
        return answered


@pytest.mark.parametrize("unreached", [set(), {"T-3", "T-17"}], ids=["all-reached", "job-stopped"])
def test_many_tickets_ready_at_once_go_in_one_sweep(
    store: Store, make_worker: Callable[..., Worker], upstream: Upstream, desk: BatchingDesk,
    clock: FakeClock, pm: pluggy.PluginManager, unreached: set[str],
) -> None:
    sweeper = SweepingDesk(desk, unreached=unreached)
    pm.register(sweeper)
    open_tickets(store, clock, 30)
    worker = make_worker(batch_size=100)
    worker.process_inbox()

    drain(worker, clock)

    assert [len(call) for call in sweeper.calls] == [30]
    # What the stopped job never reached was tried again, alone, and looked up first.
    assert sorted(call.ticket_id for call in desk.calls) == sorted(unreached)
    assert all(set(call.maybe_applied) == {a.key for a in call.actions} for call in desk.calls)
    assert upstream.keys_by_ticket() == keys_in_store(store.engine) and upstream.duplicates == 0
    assert set(outbox_states(store).values()) == {"done"}


def test_a_sweep_declined_falls_back_to_one_call_per_ticket(
    store: Store, make_worker: Callable[..., Worker], upstream: Upstream, desk: BatchingDesk,
    clock: FakeClock, pm: pluggy.PluginManager,
) -> None:
    pm.register(SweepingDesk(desk, decline=True))
    open_tickets(store, clock, 12)
    worker = make_worker(batch_size=100)
    worker.process_inbox()
    worker.process_outbox()
    assert len(desk.calls) == 12
    assert upstream.keys_by_ticket() == keys_in_store(store.engine) and upstream.duplicates == 0
