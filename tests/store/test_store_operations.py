"""The store's operations: optimistic versions, one timer each, leases, and the outbox's order rule."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from threading import Barrier

import pytest

from escalier.core.model import Action, EscalationState, HistoryEntry, Ticket
from escalier.store import StaleStateError, Store, create_store_engine

NOW = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
LEASE = timedelta(minutes=1)


def state(ticket_id: str, *, tier: int = 1, seq: int = 0) -> EscalationState:
    ticket = Ticket(system="testdesk", id=ticket_id, created_at=NOW)
    return EscalationState(
        system="testdesk", ticket_id=ticket_id, ticket=ticket, tier=tier, opened_at=NOW,
        tier_entered_at=NOW, policy_version="v1", action_seq=seq,
    )


def actions(ticket_id: str, first: int, count: int, *, urgency: int = 10) -> list[Action]:
    return [
        Action(kind="add_tags", key=f"testdesk:default:{ticket_id}:{n}", system="testdesk",
               ticket_id=ticket_id, tags=(f"t{n}",), urgency=urgency)
        for n in range(first, first + count)
    ]


def open_escalation(store: Store, ticket_id: str, count: int, *, urgency: int = 10) -> int:
    with store.begin() as tx:
        escalation_id = tx.save_escalation(None, state(ticket_id, seq=count), NOW)
        tx.append_audit(escalation_id, [HistoryEntry(at=NOW, kind="opened", reason="test", policy_version="v1")])
        tx.enqueue_actions(escalation_id, actions(ticket_id, 1, count, urgency=urgency), first_seq=1, now=NOW)
        tx.set_timer(escalation_id, NOW + timedelta(minutes=30))
    return escalation_id


def test_state_round_trips_and_a_stale_version_is_refused(store: Store) -> None:
    open_escalation(store, "T-1", 0)
    loaded = store.load_escalation("testdesk", "default", "T-1")
    assert loaded is not None and loaded.version == 1 and loaded.state == state("T-1")
    with store.begin() as tx:
        tx.save_escalation(loaded, state("T-1", tier=2), NOW)
    with pytest.raises(StaleStateError), store.begin() as tx:
        tx.save_escalation(loaded, state("T-1", tier=3), NOW)
    with pytest.raises(StaleStateError), store.begin() as tx:
        tx.save_escalation(None, state("T-1"), NOW)  # created meanwhile by someone else
    current = store.load_escalation("testdesk", "default", "T-1")
    assert current is not None and current.version == 2 and current.state.tier == 2


def test_one_timer_per_escalation_claimed_when_due_earliest_first(store: Store) -> None:
    first = open_escalation(store, "T-1", 0)
    second = open_escalation(store, "T-2", 0)
    with store.begin() as tx:
        tx.set_timer(first, NOW + timedelta(minutes=20))  # replaces the 30-minute one
        tx.set_timer(second, NOW + timedelta(minutes=10))
    assert store.claim_timers("a", now=NOW, limit=10, lease=LEASE) == []
    later = NOW + timedelta(hours=1)
    claimed = store.claim_timers("a", now=later, limit=10, lease=LEASE)
    assert [t.ticket_id for t in claimed] == ["T-2", "T-1"]
    assert store.claim_timers("b", now=later, limit=10, lease=LEASE) == []  # leased to a
    assert len(store.claim_timers("b", now=later + 2 * LEASE, limit=1, lease=LEASE)) == 1


def test_a_tickets_actions_are_claimable_only_in_seq_order(store: Store) -> None:
    open_escalation(store, "T-1", 3)
    open_escalation(store, "T-2", 2, urgency=30)
    heads = store.claim_actions("a", now=NOW, limit=10, lease=LEASE)
    assert [(a.action.ticket_id, a.seq) for a in heads] == [("T-2", 1), ("T-1", 1)]  # urgent first
    assert store.claim_actions("b", now=NOW, limit=10, lease=LEASE) == []
    store.mark_done("a", [heads[0].id], now=NOW)
    store.retry_later("a", heads[1].id, attempts=3, at=NOW + timedelta(minutes=5), error="503")
    # T-1:1 waits for its retry, and T-1:2 must wait for T-1:1.
    nxt = store.claim_actions("b", now=NOW, limit=10, lease=LEASE)
    assert [(a.action.ticket_id, a.seq) for a in nxt] == [("T-2", 2)]
    store.mark_done("b", [nxt[0].id], now=NOW)
    again = store.claim_actions("c", now=NOW + timedelta(minutes=5), limit=10, lease=LEASE)
    assert [(a.action.ticket_id, a.seq, a.attempts) for a in again] == [("T-1", 1, 3)]


def test_dead_letters_unblock_their_ticket_and_can_be_retried(store: Store) -> None:
    open_escalation(store, "T-1", 2)
    head = store.claim_actions("a", now=NOW, limit=10, lease=LEASE)[0]
    store.dead_letter("a", head.id, attempts=1, now=NOW, error="RejectedError: no")
    letters = store.dead_letters()
    assert [(d.key, d.kind, d.error) for d in letters] == [("testdesk:default:T-1:1", "add_tags", "RejectedError: no")]
    assert [a.seq for a in store.claim_actions("a", now=NOW, limit=10, lease=LEASE)] == [2]
    assert store.retry_dead_letters([letters[0].id], now=NOW) == 1
    assert store.dead_letters() == [] and len(store.dead_letters(include_retried=True)) == 1
    assert store.retry_dead_letters(None, now=NOW) == 0
    counts = store.counts(now=NOW)
    assert counts["open_by_tier"] == {1: 1} and counts["outbox_pending"] == 2 and counts["dead_letters"] == 0


def test_workers_starting_together_claim_each_connection_once(store_url: str, store: Store) -> None:
    """Nodes that start at once all register the new connections; each is claimed by one of them."""
    accounts = [("jira", "cloud"), ("zendesk", "default"), ("email", "support")]
    engines = [create_store_engine(store_url) for _ in range(6)]
    start = Barrier(len(engines))
    lease = timedelta(minutes=5)

    def claim(n: int) -> list[tuple[str, str]]:
        start.wait(timeout=10)
        due = Store(engines[n]).claim_cursors(f"node-{n}", accounts, now=NOW, lease=lease)
        return [(cursor.system, cursor.instance) for cursor in due]

    try:
        with ThreadPoolExecutor(len(engines)) as pool:
            claimed = [account for due in pool.map(claim, range(len(engines))) for account in due]
    finally:
        for engine in engines:
            engine.dispose()
    assert sorted(claimed) == sorted(accounts)
    # Held by its claimant until the lease ends, then anyone's once due.
    assert store.claim_cursors("late", accounts, now=NOW + timedelta(minutes=1), lease=lease) == []
    assert len(store.claim_cursors("late", accounts, now=NOW + lease + timedelta(seconds=1), lease=lease)) == 3
