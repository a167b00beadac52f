"""On SQLite a decision's statements run on the driver's cursor: the rows must be those SQLAlchemy writes."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select, text
from sqlalchemy.exc import IntegrityError

from escalier.core.model import Action, EscalationState, HistoryEntry, Ticket
from escalier.store import Store, create_store_engine, upgrade
from escalier.store.schema import audit, escalations, outbox, timers

NOW = datetime(2026, 3, 2, 9, 0, 0, 123456, tzinfo=UTC)


def state(ticket_id: str, *, tier: int = 1, seq: int = 0) -> EscalationState:
    ticket = Ticket(system="testdesk", id=ticket_id, subject="Export échoue", created_at=NOW)
    return EscalationState(
        system="testdesk", ticket_id=ticket_id, ticket=ticket, tier=tier, opened_at=NOW,
        tier_entered_at=NOW, policy_version="v1", action_seq=seq, wake_at=NOW + timedelta(minutes=7),
    )


def decide_into(store: Store, ticket_id: str, *, fast: bool) -> int:
    """Open, then update, an escalation with audit rows, actions and a timer, by either path."""
    with store.begin() as tx:
        if not fast:
            tx._fast = None  # the SQLAlchemy statements, as on PostgreSQL
        escalation_id = tx.save_escalation(None, state(ticket_id), NOW)
    with store.begin() as tx:
        if not fast:
            tx._fast = None
        current = tx.load_escalation("testdesk", "default", ticket_id)
        assert current is not None and current.state == state(ticket_id)
        later = NOW + timedelta(seconds=90)
        assert tx.save_escalation(current, state(ticket_id, tier=2, seq=2), later) == escalation_id
        tx.append_audit(escalation_id, [
            HistoryEntry(at=later, kind="moved", from_tier=1, to_tier=2, reason="breach: é",
                         criteria=("sla",), policy_version="v1"),
            HistoryEntry(at=later, kind="notified", reason="told", policy_version="v1", actor="ann"),
        ])
        tx.enqueue_actions(escalation_id, [
            Action(kind="add_tags", key=f"testdesk:default:{ticket_id}:{n}", system="testdesk",
                   ticket_id=ticket_id, tags=(f"t{n}",), urgency=20)
            for n in (1, 2)
        ], first_seq=1, now=later)
        tx.set_timer(escalation_id, later + timedelta(minutes=30))
        tx.set_timer(escalation_id, later + timedelta(minutes=20))  # replaces the one before
    return escalation_id


def rows(store: Store, escalation_id: int) -> dict[str, list[dict]]:
    """Every stored column but the ids and ticket, as SQLite holds them."""
    found = {}
    with store.engine.connect() as connection:
        for table, key, document in ((escalations, "id", "state"), (audit, "escalation_id", "criteria"),
                                     (outbox, "escalation_id", "action"), (timers, "escalation_id", None)):
            raw = connection.execute(
                text(f"SELECT * FROM {table.name} WHERE {key} = :id ORDER BY rowid"), {"id": escalation_id}
            ).mappings().all()
            found[table.name] = [
                {name: json.loads(value) if name == document else value
                 for name, value in row.items()
                 if name not in ("id", "escalation_id", "ticket_id", "idempotency_key")}
                for row in raw
            ]
    # The ticket's id is inside the JSON too.
    for row in found["escalations"]:
        row["state"]["ticket_id"] = row["state"]["ticket"]["id"] = None
    for row in found["outbox"]:
        row["action"]["ticket_id"] = row["action"]["key"] = None
    return found


@pytest.fixture
def store(tmp_path: Path):
    url = f"sqlite:///{tmp_path / 'escalier.db'}"
    upgrade(url)
    engine = create_store_engine(url)
    yield Store(engine)
    engine.dispose()


def test_the_driver_path_writes_the_rows_sqlalchemy_writes(store: Store) -> None:
    fast = decide_into(store, "T-fast", fast=True)
    slow = decide_into(store, "T-slow", fast=False)
    written = rows(store, fast)
    assert written == rows(store, slow)
    assert [len(written[name]) for name in ("escalations", "audit", "outbox", "timers")] == [1, 2, 2, 1]
    # And what SQLAlchemy reads back from them is the same, times as aware UTC.
    with store.engine.connect() as connection:
        due = dict(connection.execute(select(timers.c.escalation_id, timers.c.due_at)).all())
    assert due[fast] == due[slow]
    claimed = store.claim_timers("w", now=NOW + timedelta(hours=1), limit=10, lease=timedelta(minutes=1))
    assert {t.ticket_id for t in claimed} == {"T-fast", "T-slow"}
    assert {t.due_at for t in claimed} == {NOW + timedelta(seconds=90, minutes=20)}


def test_the_driver_path_raises_sqlalchemy_errors(store: Store) -> None:
    escalation_id = decide_into(store, "T-1", fast=True)
    duplicate = Action(kind="add_tags", key="testdesk:default:T-1:1", system="testdesk",
                       ticket_id="T-1", tags=("x",))
    with pytest.raises(IntegrityError), store.begin() as tx:
        tx.enqueue_actions(escalation_id, [duplicate], first_seq=9, now=NOW)


def test_a_decision_that_fails_after_its_statements_leaves_nothing_behind(store: Store) -> None:
    escalation_id = decide_into(store, "T-1", fast=True)
    before = rows(store, escalation_id)
    with pytest.raises(RuntimeError), store.begin() as tx:
        current = tx.load_escalation("testdesk", "default", "T-1")
        assert current is not None
        tx.save_escalation(current, state("T-1", tier=3, seq=3), NOW + timedelta(hours=1))
        tx.append_audit(escalation_id, [HistoryEntry(at=NOW, kind="moved", reason="x",
                                                     policy_version="v1")])
        tx.enqueue_actions(escalation_id, [
            Action(kind="add_tags", key="testdesk:default:T-1:3", system="testdesk",
                   ticket_id="T-1", tags=("y",))
        ], first_seq=3, now=NOW)
        tx.set_timer(escalation_id, None)
        raise RuntimeError("the worker died before the commit")
    assert rows(store, escalation_id) == before
    loaded = store.load_escalation("testdesk", "default", "T-1")
    assert loaded is not None and loaded.version == 2 and loaded.state.tier == 2
