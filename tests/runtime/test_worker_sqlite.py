"""One worker on SQLite, end to end: deliveries in, decisions committed, actions upstream in order."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import pytest
from runtime_support import keys_in_store
from sqlalchemy import func, select

from escalier.core.hookspecs import hookimpl
from escalier.runtime.testing import FakeClock, Upstream, deliver, event_body
from escalier.runtime.worker import Worker
from escalier.store import Store, utc
from escalier.store.schema import audit, escalations, inbox, outbox, timers


class Recorder:
    """A plugin recording the notifications it receives."""

    def __init__(self) -> None:
        self.decided: list[tuple[str, int]] = []
        self.applied: list[str] = []

    @hookimpl
    def escalation_decided(self, system: str, ticket_id: str, history: Any, actions: Any) -> None:
        self.decided.append((ticket_id, len(actions)))

    @hookimpl
    def action_applied(self, action: Any, result: Any) -> None:
        self.applied.append(action.key)


class Broken:
    """A plugin whose notification fails: the others must still hear."""

    @hookimpl
    def action_applied(self, action: Any, result: Any) -> None:
        raise RuntimeError("broken plugin")


def drain(worker: Worker, clock: FakeClock, *, step: float = 0.0, limit: int = 2000) -> None:
    """Run passes until no action is pending, advancing the clock ``step`` seconds between passes
    and, when only later retries are left, to the next retry; timers not yet due are left alone."""
    for _ in range(limit):
        if worker.run_once().total:
            clock.advance(step)
            continue
        with worker.store.engine.connect() as connection:
            later = connection.execute(
                select(func.min(outbox.c.next_attempt_at)).where(outbox.c.state == "pending")
            ).scalar_one()
        if later is None:
            return
        clock.advance(max(step, (utc(later) - clock.now()).total_seconds()))
    raise AssertionError("the worker never ran dry")


def assert_landed_once_in_order(store: Store, upstream: Upstream) -> None:
    assert upstream.duplicates == 0
    assert upstream.keys_by_ticket() == keys_in_store(store.engine)
    with store.engine.connect() as connection:
        states = dict(connection.execute(select(outbox.c.state, func.count()).group_by(outbox.c.state)).all())
    assert states == {"done": sum(len(v) for v in keys_in_store(store.engine).values())}


def test_deliveries_become_decisions_and_ordered_upstream_writes(
    store: Store, make_worker: Callable[..., Worker], clock: FakeClock, upstream: Upstream, pm: Any
) -> None:
    recorder = Recorder()
    pm.register(recorder)
    pm.register(Broken())
    now = clock.now()
    deliver(
        store.engine,
        [event_body(f"T-{i}", "created", now, severity=["low", "high", "critical"][i % 3],
                    users_affected=i * 7) for i in range(30)],
        received_at=now,
    )
    worker = make_worker()
    drain(worker, clock)

    with store.engine.connect() as connection:
        assert connection.execute(select(func.count()).select_from(escalations)).scalar_one() == 30
        assert connection.execute(select(func.count()).select_from(timers)).scalar_one() == 30
        assert connection.execute(select(func.count()).select_from(audit)).scalar_one() >= 30
        assert set(connection.execute(select(inbox.c.state)).scalars()) == {"done"}
        tiers = set(connection.execute(select(escalations.c.tier)).scalars())
    assert tiers == {1, 2, 3}
    assert_landed_once_in_order(store, upstream)
    assert len(recorder.decided) == 30
    assert sorted(recorder.applied) == sorted(k for ks in upstream.keys_by_ticket().values() for k in ks)


def test_timers_fire_as_time_passes_and_redelivery_changes_nothing(
    store: Store, make_worker: Callable[..., Worker], clock: FakeClock, upstream: Upstream
) -> None:
    now = clock.now()
    body = event_body("T-1", "created", now, severity="low", id="delivery-1")
    deliver(store.engine, [body], received_at=now)
    worker = make_worker()
    drain(worker, clock)
    first = len(upstream.written())

    # The same delivery again (a receiver retry): the engine has seen the event.
    with store.engine.begin() as connection:
        connection.execute(inbox.update().values(state="pending", claimed_by=None, claimed_until=None))
    drain(worker, clock)
    assert len(upstream.written()) == first

    # Two hours later the stale criterion has moved the ticket to tier 2 through timers alone.
    for _ in range(16):
        clock.advance(15 * 60)
        drain(worker, clock)
    state = store.load_escalation("testdesk", "default", "T-1")
    assert state is not None and state.state.tier == 2
    assert len(upstream.written()) > first
    assert_landed_once_in_order(store, upstream)
    with store.engine.connect() as connection:
        due = connection.execute(select(timers.c.due_at)).scalar_one()
    assert due is not None


def test_transient_failures_are_retried_with_logged_sleeps(
    store: Store, make_worker: Callable[..., Worker], clock: FakeClock, upstream: Upstream,
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = clock.now()
    deliver(store.engine, [event_body("T-1", "created", now, severity="low")], received_at=now)
    worker = make_worker()
    worker.process_inbox()
    upstream.unavailable_for(2.5)  # shorter than one pass of three attempts
    with caplog.at_level(logging.WARNING, logger="escalier.runtime.retry"):
        drain(worker, clock)
    assert [r.msg for r in caplog.records].count("runtime.retry.sleeping") >= 1
    assert upstream.unavailable_answers >= 1
    assert_landed_once_in_order(store, upstream)


def test_refused_actions_become_dead_letters_and_later_actions_proceed(
    store: Store, make_worker: Callable[..., Worker], clock: FakeClock, upstream: Upstream
) -> None:
    now = clock.now()
    deliver(
        store.engine,
        [event_body("T-bad", "created", now, severity="low"), event_body("T-ok", "created", now, severity="low")],
        received_at=now,
    )
    upstream.reject_ticket("T-bad")
    worker = make_worker()
    drain(worker, clock)
    letters = store.dead_letters()
    assert {letter.ticket_id for letter in letters} == {"T-bad"}
    assert len(letters) == len(keys_in_store(store.engine)["T-bad"])  # refused at once, each of them
    assert all("RejectedError" in letter.error for letter in letters)
    assert "T-ok" in upstream.keys_by_ticket() and "T-bad" not in upstream.keys_by_ticket()

    # An operator fixes the upstream and retries: the actions land, once, in order.
    upstream._rejected.clear()
    assert store.retry_dead_letters(None, now=clock.now()) == len(letters)
    drain(worker, clock)
    assert store.dead_letters() == []
    assert_landed_once_in_order(store, upstream)


def test_an_upstream_that_stays_down_dead_letters_after_the_total_maximum(
    store: Store, make_worker: Callable[..., Worker], clock: FakeClock, upstream: Upstream
) -> None:
    now = clock.now()
    deliver(store.engine, [event_body("T-1", "created", now, severity="low")], received_at=now)
    worker = make_worker()
    worker.process_inbox()
    upstream.unavailable_for(10 * 24 * 3600)
    drain(worker, clock, step=150)
    letters = store.dead_letters()
    assert letters and all("gave up after 12 attempts" in letter.error for letter in letters)
    assert upstream.written() == []


def test_outage_of_five_minutes_then_every_action_lands_once_in_order(
    store: Store, make_worker: Callable[..., Worker], clock: FakeClock, upstream: Upstream
) -> None:
    now = clock.now()
    deliver(
        store.engine,
        [event_body(f"T-{i}", "created", now, severity=["low", "critical"][i % 2], users_affected=60)
         for i in range(40)],
        received_at=now,
    )
    worker = make_worker()
    worker.process_inbox()
    upstream.unavailable_for(5 * 60)
    outage_ends = clock.time() + 5 * 60
    drain(worker, clock, step=5)
    assert clock.time() > outage_ends  # time really passed through the outage
    assert upstream.unavailable_answers > 0
    assert store.dead_letters() == []
    assert min(w.at for w in upstream.written()) >= outage_ends
    assert_landed_once_in_order(store, upstream)
