"""Write budgets: the token bucket, and a worker that serves a burst of breaches without a 429."""

from __future__ import annotations

from collections.abc import Callable

import pluggy
import pytest
from sqlalchemy import func, select

from escalier.core.config import load_policy
from escalier.core.connector import RateLimit
from escalier.core.errors import TransientError
from escalier.core.model import Action, ActionKind
from escalier.runtime.ratelimit import RateLimiter, TokenBucket, budgets_from_policy
from escalier.runtime.testing import FakeClock, TestDeskConnection, Upstream, deliver, event_body
from escalier.runtime.worker import Worker
from escalier.store import Store, utc
from escalier.store.schema import outbox

# severity and users affected that the desk policy's matrix places in tiers 1, 2 and 3
PLACEMENT = {1: ("low", 1), 2: ("high", 60), 3: ("critical", 60)}


class Seconds:
    """A clock in plain seconds that tests move by hand."""

    def __init__(self, start: float = 1000.0):
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


# --- the bucket ---------------------------------------------------------------------------------


def test_a_full_bucket_spends_its_capacity_then_refills_evenly() -> None:
    clock = Seconds()
    bucket = TokenBucket(60, period=60.0, clock=clock)
    assert [bucket.acquire() for _ in range(60)] == [0.0] * 60
    assert bucket.acquire() == pytest.approx(1.0, abs=1e-5)  # one token a second
    clock.advance(0.5)
    assert bucket.wait_time() == pytest.approx(0.5, abs=1e-5)
    clock.advance(0.5)
    assert bucket.acquire() == 0.0
    clock.advance(3600)
    assert bucket.tokens == 60  # never more than its capacity


def test_writes_charged_after_the_fact_are_paid_back_before_the_next_token() -> None:
    clock = Seconds()
    bucket = TokenBucket(60, period=60.0, clock=clock)  # a token a second
    for _ in range(60):
        assert bucket.acquire() == 0.0
    bucket.charge(2)  # the last call made three writes, not one
    assert bucket.acquire() == pytest.approx(3.0, abs=1e-3)
    clock.advance(3.0)
    assert bucket.acquire() == 0.0
    unlimited = TokenBucket(None, clock=clock)
    unlimited.charge(5)
    assert unlimited.acquire() == 0.0


def test_a_retry_after_pauses_the_bucket_which_then_starts_empty() -> None:
    clock = Seconds()
    bucket = TokenBucket(10, period=1.0, clock=clock, margin=0.05)
    bucket.pause(2.0)
    assert bucket.tokens == 0
    assert bucket.acquire() == pytest.approx(2.0 + 0.05 + 0.1, abs=1e-5)  # the pause, the margin, one token
    clock.advance(2.05)
    assert bucket.tokens == 0
    clock.advance(0.1)
    assert bucket.acquire() == 0.0
    bucket.pause(None)  # no Retry-After: nothing changes
    assert bucket.wait_time() == pytest.approx(0.1, abs=1e-5)


def test_the_reported_remaining_lowers_the_tokens_and_zero_waits_for_the_reset() -> None:
    clock = Seconds()
    bucket = TokenBucket(100, period=60.0, clock=clock, margin=0.0)
    bucket.observe(RateLimit(limit=500, remaining=3, reset_after=40.0))
    assert bucket.tokens == 3
    bucket.observe(RateLimit(limit=500, remaining=50, reset_after=40.0))
    assert bucket.tokens == 3  # an upstream's word never adds tokens beyond our own budget
    bucket.observe(RateLimit(limit=500, remaining=0, reset_after=40.0))
    assert bucket.wait_time() == pytest.approx(40.0 + 0.6, abs=1e-5)
    clock.advance(40.6)
    assert bucket.acquire() == 0.0
    bucket.observe(None)
    bucket.observe(RateLimit(limit=500))  # no remaining reported: nothing to believe
    assert bucket.wait_time() == pytest.approx(0.6, abs=1e-5)


def test_an_unlimited_bucket_still_honours_pauses_and_an_exhausted_upstream() -> None:
    clock = Seconds()
    bucket = TokenBucket(None, clock=clock, margin=0.0)
    assert all(bucket.acquire() == 0.0 for _ in range(10_000))
    bucket.observe(RateLimit(remaining=5, reset_after=10.0))
    assert bucket.acquire() == 0.0
    bucket.observe(RateLimit(remaining=0, reset_after=10.0))
    assert bucket.acquire() == pytest.approx(10.0, abs=1e-5)
    clock.advance(10.0)
    assert bucket.acquire() == 0.0
    bucket.pause(3.0)
    assert bucket.wait_time() == pytest.approx(3.0, abs=1e-5)


def test_buckets_are_per_account_with_budgets_from_the_connector_config(
    pm: pluggy.PluginManager, tmp_path
) -> None:
    policy_file = tmp_path / "desk.yaml"
    policy_file.write_text(
        "name: Budgets\ndefault_calendar: always\n"
        "calendars: {always: {timezone: UTC, hours: 24x7}}\n"
        "people: {ann: {name: Ann, email: ann@example.com}}\n"
        "connectors: {testdesk: {writes_per_minute: 100}}\n"
        "tiers:\n  - level: 1\n    name: First\n    targets: {testdesk: {group: first}}\n"
        "    sla: {acknowledge: 30m}\n    raci: {accountable: [ann]}\n"
    )
    policy = load_policy(policy_file, plugin_manager=pm)
    assert budgets_from_policy(policy, pm) == {("testdesk", "default"): 100}
    clock = Seconds()
    limiter = RateLimiter.from_policy(policy, pm, clock=clock)
    assert limiter.bucket("testdesk", "default").capacity == 100
    assert limiter.bucket("testdesk", "other").capacity is None  # not configured: unlimited
    for _ in range(100):
        assert limiter.acquire("testdesk", "default") == 0.0
    assert limiter.acquire("testdesk", "default") == pytest.approx(0.6, abs=1e-5)
    assert limiter.acquire("testdesk", "other") == 0.0
    limiter.pause("testdesk", "other", 5.0)
    assert limiter.acquire("testdesk", "other") > 5.0
    assert limiter.acquire("testdesk", "default") == pytest.approx(0.6, abs=1e-5)


# --- the worker against the test upstream ---------------------------------------------------------


def open_escalations(store: Store, clock: FakeClock, tiers: list[int]) -> None:
    """Deliver a created event per ticket, placed in the given tiers."""
    bodies = []
    for number, tier in enumerate(tiers):
        severity, users = PLACEMENT[tier]
        bodies.append(event_body(f"T-{number:04d}", "created", clock.now(), id=f"created-{number}",
                                 severity=severity, users_affected=users))
    deliver(store.engine, bodies, received_at=clock.now())


def drain_outbox(worker: Worker, clock: FakeClock, *, limit: int = 10_000) -> None:
    """Apply actions until none is pending, moving the clock to a held account's return."""
    for _ in range(limit):
        if worker.process_outbox():
            continue
        with worker.store.engine.connect() as connection:
            later = connection.execute(
                select(func.min(outbox.c.next_attempt_at)).where(outbox.c.state == "pending")
            ).scalar_one()
        if later is None:
            return
        clock.advance(max(0.0, (utc(later) - clock.now()).total_seconds()))
    raise AssertionError("the outbox never ran dry")


def test_500_breaches_at_once_get_no_429_and_tier_3_lands_first(
    store: Store, make_worker: Callable[..., Worker], clock: FakeClock
) -> None:
    # 100 writes a 1 s window stands for 100 a minute; the worker's budget has the same period.
    with Upstream(clock=clock.time, writes_per_window=100, window=1.0) as upstream:
        connection = TestDeskConnection(upstream.url, timeout=5)
        limiter = RateLimiter({"testdesk": 100}, period=1.0, clock=clock.time)
        worker = make_worker(connections={("testdesk", "default"): connection}, rate_limiter=limiter,
                             batch_size=100)
        open_escalations(store, clock, [(1, 3, 2)[n % 3] for n in range(500)])
        while worker.process_inbox():
            pass
        drain_outbox(worker, clock)
        opened = len(upstream.written())
        assert opened > 500 and upstream.rate_limited == 0

        # Past every acknowledge target: each escalation breaches, and all the breach actions are
        # ready together before the worker sends any of them.
        clock.advance(31 * 60)
        while worker.process_timers():
            pass
        with store.engine.connect() as connection_:
            ready = connection_.execute(
                select(outbox.c.idempotency_key, outbox.c.urgency).where(outbox.c.state == "pending")
            ).all()
        assert len({key.split(":")[2] for key, _ in ready}) == 500
        began = clock.time()
        drain_outbox(worker, clock)
        connection.close()

    breaches = upstream.written()[opened:]
    assert sorted(write.key for write in breaches) == sorted(key for key, _ in ready)
    assert upstream.rate_limited == 0
    assert upstream.duplicates == 0
    tiers = {write.tier for write in breaches}
    assert tiers == {1, 2, 3}
    last_tier_3 = max(write.order for write in breaches if write.tier == 3)
    first_tier_2 = min(write.order for write in breaches if write.tier == 2)
    first_tier_1 = min(write.order for write in breaches if write.tier == 1)
    assert last_tier_3 < first_tier_1
    # Each ticket's first breach action goes out in urgency order, tier 3 then 2 then 1.
    firsts: dict[str, int] = {}
    for write in breaches:
        firsts.setdefault(write.ticket, write.urgency)
    assert list(firsts.values()) == sorted(firsts.values(), reverse=True)
    assert first_tier_2 < first_tier_1
    # The budget was really short: the burst took as many windows as it needed, not fewer.
    assert clock.time() - began >= len(breaches) / 100 - 1


def test_the_upstream_does_enforce_its_window(clock: FakeClock) -> None:
    """Without a worker's budget the 101st write in a window is a 429: a zero count means something."""
    with Upstream(clock=clock.time, writes_per_window=100, window=1.0) as upstream:
        connection = TestDeskConnection(upstream.url, timeout=5)
        actions = [
            Action(kind=ActionKind.ADD_TAGS, key=f"k-{n}", system="testdesk", ticket_id=f"T-{n}",
                   tags=("breach",))
            for n in range(101)
        ]
        for action in actions[:100]:
            assert connection.apply(action).applied
        with pytest.raises(TransientError) as refused:
            connection.apply(actions[100])
        connection.close()
    assert refused.value.status == 429 and refused.value.retry_after is not None
    assert upstream.rate_limited == 1


def test_an_exhausted_upstream_holds_the_account_until_its_reset(
    store: Store, make_worker: Callable[..., Worker], clock: FakeClock
) -> None:
    # No configured budget at all: what the upstream reports is enough to avoid a 429.
    with Upstream(clock=clock.time, writes_per_window=40, window=60.0) as upstream:
        connection = TestDeskConnection(upstream.url, timeout=5)
        worker = make_worker(connections={("testdesk", "default"): connection},
                             rate_limiter=RateLimiter(clock=clock.time, margin=0.05), batch_size=100)
        open_escalations(store, clock, [(1, 2, 3)[n % 3] for n in range(30)])
        while worker.process_inbox():
            pass
        worker.process_outbox()
        assert len(upstream.written()) == 30  # one action a ticket a pass, within the budget
        worker.process_outbox()
        assert len(upstream.written()) == 40  # the budget is spent; the rest wait for the reset
        with store.engine.connect() as connection_:
            waiting = connection_.execute(
                select(outbox.c.next_attempt_at, outbox.c.claimed_by).where(outbox.c.state == "pending")
            ).all()
        reset = utc(waiting[0].next_attempt_at)
        assert {utc(row.next_attempt_at) for row in waiting} == {reset}  # all ready together
        assert {row.claimed_by for row in waiting} == {None}
        assert 59.0 < (reset - clock.now()).total_seconds() <= 60.05 + 1e-3
        drain_outbox(worker, clock)
        connection.close()
    assert upstream.rate_limited == 0
    assert upstream.duplicates == 0
    assert min(write.at for write in upstream.written()[40:]) >= reset.timestamp() - 1e-3
