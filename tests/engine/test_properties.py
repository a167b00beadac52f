"""Properties of the engine, over generated event histories (hypothesis)."""

from __future__ import annotations

import random
from datetime import datetime, timedelta

from engine_support import berlin, make_ticket
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from escalier.core.engine import decide
from escalier.core.model import (
    ActorRole,
    Comment,
    EscalationState,
    EventKind,
    PathKind,
    StatusCategory,
    TicketEvent,
    Timer,
)

START = berlin(2026, 3, 9, 8, 30)
STATUSES = [StatusCategory.OPEN, StatusCategory.PENDING, StatusCategory.ON_HOLD]


@st.composite
def histories(draw: st.DrawFn, *, spread_minutes: int = 600, manual: bool = True) -> list[TicketEvent]:
    """Events on one ticket: status changes, comments, tags, severity, escalation requests."""
    base = make_ticket(START, fields=draw(st.sampled_from([{}, {"steps": "x"}])))
    count = draw(st.integers(min_value=1, max_value=12))
    events = []
    ticket = base
    kinds = ["status", "comment", "tags", "severity", "ack"] + (["up", "down"] if manual else [])
    for index in range(count):
        minute = draw(st.integers(min_value=1, max_value=spread_minutes))
        kind = draw(st.sampled_from(kinds))
        at = START + timedelta(minutes=minute, seconds=index)
        fields: dict = {}
        if kind == "status":
            category = draw(st.sampled_from(STATUSES))
            ticket = ticket.model_copy(update={"status_category": category, "status": category.value})
            fields = dict(kind=EventKind.STATUS_CHANGED, ticket=ticket)
        elif kind == "comment":
            body = draw(st.sampled_from(["steps to reproduce: click", "any news?", "outage!"]))
            fields = dict(kind=EventKind.COMMENTED, comment=Comment(body=body, public=draw(st.booleans())),
                          actor_role=draw(st.sampled_from([ActorRole.AGENT, ActorRole.CUSTOMER])))
        elif kind == "tags":
            tags = tuple(draw(st.lists(st.sampled_from(["workaround", "bug-confirmed", "x"]), max_size=2)))
            ticket = ticket.model_copy(update={"tags": tags})
            fields = dict(kind=EventKind.UPDATED, ticket=ticket)
        elif kind == "severity":
            ticket = ticket.model_copy(update={
                "severity": draw(st.sampled_from(["critical", "high", None])),
                "users_affected": draw(st.sampled_from([1, 10, 60])),
            })
            fields = dict(kind=EventKind.UPDATED, ticket=ticket)
        elif kind == "ack":
            fields = dict(kind=EventKind.ACKNOWLEDGED, actor="mia")
        elif kind == "up":
            fields = dict(kind=EventKind.ESCALATION_REQUESTED, requested_tier=draw(st.integers(1, 5)),
                          path=draw(st.sampled_from([None, PathKind.HIERARCHICAL])), actor="mia")
        else:
            fields = dict(kind=EventKind.DEESCALATION_REQUESTED, requested_tier=draw(st.integers(1, 5)), actor="mia")
        events.append(TicketEvent(id=f"e{index}", system="zendesk", ticket_id="100", occurred_at=at, **fields))
    events.sort(key=lambda e: (e.occurred_at, e.id))
    return [TicketEvent(id="created", system="zendesk", ticket_id="100", kind=EventKind.CREATED,
                        occurred_at=START, ticket=base), *events]


def deliver(policy, deliveries: list[tuple[datetime, TicketEvent]], end: datetime):
    """Deliver events at their arrival times, with every timer due before each; then run to ``end``."""
    state: EscalationState | None = None
    actions, tiers = [], []

    def timers(until: datetime) -> None:
        nonlocal state
        while state is not None and state.wake_at is not None and state.wake_at <= until:
            due = state.wake_at
            decision = decide(policy, state, Timer(system="zendesk", ticket_id="100", due_at=due), due)
            assert not [h for h in decision.history if h.kind == "deescalated"], "a timer de-escalated"
            state = decision.state
            actions.extend(decision.actions)
            tiers.append(state.tier)

    for arrival, item in deliveries:
        timers(arrival)
        decision = decide(policy, state, item, arrival)
        state = decision.state
        actions.extend(decision.actions)
        tiers.append(state.tier)
    timers(end)
    decision = decide(policy, state, Timer(system="zendesk", ticket_id="100", due_at=end), end)
    state = decision.state
    actions.extend(decision.actions)
    return state, actions, tiers


def summary(state: EscalationState) -> dict:
    """What must not depend on delivery order."""
    return dict(
        tier=state.tier, department=state.department, level=state.management_level,
        status=state.status, paused_total=state.paused_total, paused_since=state.paused_since,
        open_elapsed=state.open_elapsed, tier_elapsed=state.tier_elapsed,
        clocks=[(c.name, c.target, c.elapsed_before, c.running_since, c.stopped_at, c.breached_at,
                 tuple(sorted(c.warned_at_percent)), c.paused_total) for c in state.clocks],
    )


FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FAST
@given(events=histories(), seed=st.integers(0, 2**32))
def test_late_delivery_ends_like_time_ordered_delivery(desk, events, seed):
    end = START + timedelta(hours=30)
    in_order = [(e.occurred_at, e) for e in events]
    rng = random.Random(seed)
    # Jira delivers up to 30 minutes late, so arrival order is not time order.
    late = [(e.occurred_at + timedelta(minutes=rng.randint(0, 30)) if i else e.occurred_at, e)
            for i, e in enumerate(events)]
    late.sort(key=lambda pair: (pair[0], pair[1].id))
    a, actions_a, _ = deliver(desk, in_order, end)
    b, actions_b, _ = deliver(desk, late, end)
    assert summary(a) == summary(b)
    keys_b = [x.key for x in actions_b]
    assert len(keys_b) == len(set(keys_b))
    effects = [x for x in b.effects]
    assert len(effects) == len(set(effects)), "an effect was emitted twice"


@FAST
@given(events=histories(spread_minutes=50), seed=st.integers(0, 2**32))
def test_any_shuffle_within_the_window_ends_like_time_order(desk, events, seed):
    end = START + timedelta(hours=30)
    shuffled = events[1:]
    random.Random(seed).shuffle(shuffled)
    arrival = START + timedelta(minutes=51)
    a, _, _ = deliver(desk, [(e.occurred_at, e) for e in events], end)
    b, actions_b, _ = deliver(desk, [(START, events[0])] + [(arrival, e) for e in shuffled], end)
    assert summary(a) == summary(b)
    assert len({x.key for x in actions_b}) == len(actions_b)


@FAST
@given(events=histories())
def test_never_a_tier_outside_the_policy(desk, events):
    state, actions, tiers = deliver(desk, [(e.occurred_at, e) for e in events], START + timedelta(days=3))
    assert set(tiers) <= set(desk.tiers_by_level)
    assert all(a.tier in desk.tiers_by_level for a in actions)


@FAST
@given(events=histories(), pick=st.integers(0, 100))
def test_a_duplicate_event_is_a_no_op(desk, events, pick):
    state, _, _ = deliver(desk, [(e.occurred_at, e) for e in events], START + timedelta(hours=12))
    again = events[pick % len(events)]
    decision = decide(desk, state, again, START + timedelta(hours=12))
    assert decision.state is state and decision.actions == () and decision.history == ()


@FAST
@given(events=histories(manual=False))
def test_timers_alone_never_move_a_ticket_down(desk, events):
    state, _, _ = deliver(desk, [(e.occurred_at, e) for e in events], START + timedelta(hours=12))
    now = START + timedelta(hours=12)
    tier = state.tier
    for _ in range(40):
        if state.wake_at is None:
            break
        now = state.wake_at
        state = decide(desk, state, Timer(system="zendesk", ticket_id="100", due_at=now), now).state
        assert state.tier >= tier
        tier = state.tier
