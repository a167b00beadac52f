"""Worker.run on the real clock: the outbox in its own thread, waking for the next timer, failures raised."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import pluggy
import pytest
from runtime_support import keys_in_store
from sqlalchemy import func, select, update

from escalier.core.engine import decide
from escalier.core.model import Action, Timer
from escalier.core.policy import Policy
from escalier.runtime.testing import TestDeskConnection, Upstream, deliver, event_body
from escalier.runtime.worker import Pass, Worker
from escalier.store import Store, utc
from escalier.store.schema import escalations, outbox, timers


class SlowConnection(TestDeskConnection):
    """An upstream that takes ``delay`` seconds an action, as real ones take 100-300 ms a call."""

    __test__ = False

    def __init__(self, base_url: str, delay: float):
        super().__init__(base_url, timeout=5)
        self.delay = delay

    def apply(self, action: Action) -> Any:
        time.sleep(self.delay)
        return super().apply(action)


class TimedWorker(Worker):
    """A worker noting when each timer's decision was committed."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.decided: dict[str, float] = {}

    def handle(self, stimulus: Any) -> Any:
        decision = super().handle(stimulus)
        if isinstance(stimulus, Timer):
            self.decided[stimulus.ticket_id] = time.time()
        return decision


@pytest.fixture
def live_upstream() -> Iterator[Upstream]:
    with Upstream() as running:
        yield running


@pytest.fixture
def build(
    store: Store, policy: Policy, pm: pluggy.PluginManager, live_upstream: Upstream
) -> Iterator[Callable[..., TimedWorker]]:
    connections: list[TestDeskConnection] = []

    def make(*, delay: float = 0.0, **options: Any) -> TimedWorker:
        connection = SlowConnection(live_upstream.url, delay) if delay else TestDeskConnection(
            live_upstream.url, timeout=5
        )
        connections.append(connection)
        settings: dict[str, Any] = dict(
            decide=decide, policy=policy, connections={("testdesk", "default"): connection},
            plugin_manager=pm, worker_id="threads-1",
        )
        settings.update(options)
        return TimedWorker(store, **settings)

    yield make
    for connection in connections:
        connection.close()


@contextmanager
def running(worker: Worker, **options: Any) -> Iterator[dict[str, Any]]:
    """``worker.run`` in a thread until the block ends; yields what it returned or raised."""
    stop = threading.Event()
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["done"] = worker.run(stop=stop, **options)
        except BaseException as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=target)
    thread.start()
    outcome["thread"] = thread
    try:
        yield outcome
    finally:
        stop.set()
        thread.join(timeout=20)
        assert not thread.is_alive(), "the worker did not stop"
        assert not [t for t in threading.enumerate() if t.name.startswith("escalier-outbox")]


def wait_for(condition: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def pending(store: Store) -> int:
    with store.engine.connect() as connection:
        return connection.execute(
            select(func.count()).select_from(outbox).where(outbox.c.state == "pending")
        ).scalar_one()


def open_tickets(store: Store, count: int) -> None:
    now = datetime.now(UTC)
    deliver(store.engine, [event_body(f"T-{n}", "created", now, id=f"created-{n}", severity="critical",
                                      users_affected=60) for n in range(count)], received_at=now)


def bring_due(store: Store, ticket_id: str, at: datetime) -> None:
    with store.begin() as tx:
        tx.connection.execute(
            update(timers)
            .where(timers.c.escalation_id == select(escalations.c.id)
                   .where(escalations.c.ticket_id == ticket_id).scalar_subquery())
            .values(due_at=utc(at), claimed_by=None, claimed_until=None)
        )


def test_run_applies_every_action_once_in_order_from_its_own_thread(
    store: Store, build: Callable[..., TimedWorker], live_upstream: Upstream
) -> None:
    open_tickets(store, 20)
    worker = build()
    with running(worker) as outcome:
        wait_for(lambda: pending(store) == 0 and len(live_upstream.written()) > 0, timeout=60)
    assert "error" not in outcome
    done: Pass = outcome["done"]
    expected = keys_in_store(store.engine)
    assert live_upstream.duplicates == 0
    assert live_upstream.keys_by_ticket() == expected
    assert done.deliveries == 20 and done.actions == sum(len(keys) for keys in expected.values())


def test_a_timer_is_decided_on_time_while_the_upstream_is_slow(
    store: Store, build: Callable[..., TimedWorker]
) -> None:
    open_tickets(store, 12)
    worker = build(delay=0.25)  # the outbox holds several seconds of upstream calls
    while worker.process_inbox():
        pass
    backlog = pending(store)
    assert backlog * 0.25 > 5
    with running(worker) as outcome:
        time.sleep(0.5)  # the applier is busy with the backlog now
        due = datetime.now(UTC) + timedelta(seconds=1)
        bring_due(store, "T-3", due)
        wait_for(lambda: "T-3" in worker.decided, timeout=10)
        assert pending(store) > 0  # the outbox was still at it
    assert "error" not in outcome
    assert worker.decided["T-3"] - due.timestamp() < 0.9


def test_an_idle_worker_wakes_when_the_next_timer_is_due_not_after_idle_wait(
    store: Store, build: Callable[..., TimedWorker]
) -> None:
    open_tickets(store, 1)
    worker = build()
    while worker.process_inbox():
        pass
    due = datetime.now(UTC) + timedelta(seconds=1.5)
    bring_due(store, "T-0", due)
    with running(worker, idle_wait=5.0):
        wait_for(lambda: "T-0" in worker.decided, timeout=10)
    lateness = worker.decided["T-0"] - due.timestamp()
    assert 0 <= lateness < 0.5


def test_an_idle_worker_decides_a_stored_delivery_at_once_not_after_idle_wait(
    store: Store, build: Callable[..., TimedWorker]
) -> None:
    worker = build()
    with running(worker, idle_wait=10.0) as outcome:
        time.sleep(0.3)  # the worker found nothing and is waiting
        stored = time.monotonic()
        open_tickets(store, 1)
        wait_for(lambda: "T-0" in keys_in_store(store.engine), timeout=8)
        reaction = time.monotonic() - stored
    assert "error" not in outcome
    assert reaction < 1.0, reaction


class ListeningConnection(TestDeskConnection):
    """A connection that hears of a change upstream (as mail in IMAP IDLE) and stores it itself."""

    __test__ = False

    def __init__(self, base_url: str, store: Store, *, fail: bool = False):
        super().__init__(base_url, timeout=5)
        self.store = store
        self.fail = fail
        self.heard = threading.Event()
        self.stopped = threading.Event()

    def listen(self, halt: threading.Event) -> None:
        try:
            if self.fail:
                raise ConnectionError("IDLE dropped")
            self.heard.wait(5)
            open_tickets(self.store, 1)
            halt.wait()
        finally:
            self.stopped.set()


def test_a_listening_connection_runs_beside_the_worker_and_stops_with_it(
    store: Store, build: Callable[..., TimedWorker], live_upstream: Upstream
) -> None:
    connection = ListeningConnection(live_upstream.url, store)
    worker = build(connections={("testdesk", "default"): connection})
    with running(worker, idle_wait=10.0) as outcome:
        time.sleep(0.3)
        heard = time.monotonic()
        connection.heard.set()
        wait_for(lambda: "T-0" in keys_in_store(store.engine), timeout=8)
        assert time.monotonic() - heard < 1.0
        assert not connection.stopped.is_set()
    assert "error" not in outcome
    assert connection.stopped.is_set()  # halted when the worker stopped
    connection.close()


def test_a_failing_listener_is_logged_and_the_worker_goes_on(
    store: Store, build: Callable[..., TimedWorker], live_upstream: Upstream,
    caplog: pytest.LogCaptureFixture,
) -> None:
    connection = ListeningConnection(live_upstream.url, store, fail=True)
    worker = build(connections={("testdesk", "default"): connection})
    caplog.set_level("ERROR", logger="escalier.runtime.worker")
    with running(worker, idle_wait=0.2) as outcome:
        wait_for(connection.stopped.is_set, timeout=5)
        open_tickets(store, 1)
        wait_for(lambda: "T-0" in keys_in_store(store.engine), timeout=8)
    assert "error" not in outcome
    assert [r.msg for r in caplog.records] == ["runtime.listener.failed"]
    connection.close()


def test_a_failure_in_the_applier_thread_stops_the_worker_and_is_raised(
    store: Store, build: Callable[..., TimedWorker]
) -> None:
    worker = build()

    def broken() -> int:
        raise RuntimeError("the applier broke")

    worker.process_outbox = broken  # type: ignore[method-assign]
    began = time.monotonic()
    with running(worker, idle_wait=0.2) as outcome:
        wait_for(lambda: not outcome["thread"].is_alive(), timeout=5)
    assert isinstance(outcome.get("error"), RuntimeError)
    assert time.monotonic() - began < 3


def test_a_failure_in_the_deciding_thread_stops_the_applier_too(
    store: Store, build: Callable[..., TimedWorker]
) -> None:
    worker = build()

    def broken() -> int:
        raise RuntimeError("the sweep broke")

    worker.process_timers = broken  # type: ignore[method-assign]
    with running(worker) as outcome:
        wait_for(lambda: not outcome["thread"].is_alive(), timeout=5)
    assert isinstance(outcome.get("error"), RuntimeError)
    assert str(outcome["error"]) == "the sweep broke"
