"""The model: immutable, validated, round-trippable through JSON."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from escalier.core.durations import format_duration, parse_duration
from escalier.core.model import (
    Action,
    ActionKind,
    EscalationState,
    EventKind,
    SlaClock,
    Ticket,
    TicketEvent,
)

NOW = datetime(2026, 3, 6, 15, 50, tzinfo=timezone.utc)


def ticket(**changes) -> Ticket:
    return Ticket(system="zendesk", id="19395", subject="Printer on fire", created_at=NOW, **changes)


def test_naive_times_are_refused():
    with pytest.raises(ValidationError, match="must carry a time zone"):
        Ticket(system="jira", id="SUP-1", created_at=datetime(2026, 3, 6, 15, 50))


def test_objects_are_immutable():
    with pytest.raises(ValidationError):
        ticket().subject = "changed"


@pytest.mark.parametrize(
    ("kind", "needs"),
    [(ActionKind.ADD_TAGS, "tags"), (ActionKind.ASSIGN, "target"), (ActionKind.COMMENT, "body"),
     (ActionKind.NOTIFY, "channel, body"), (ActionKind.TRANSITION, "status")],
)
def test_an_action_needs_what_its_kind_needs(kind, needs):
    with pytest.raises(ValidationError, match=f"a {kind.value} action needs {needs}"):
        Action(kind=kind, key="k", system="jira", ticket_id="SUP-1")


def test_state_round_trips_through_json():
    clock = SlaClock(name="resolve", calendar="berlin", target=timedelta(hours=8), started_at=NOW,
                     running_since=NOW, warned_at_percent=(50,))
    state = EscalationState(system="zendesk", ticket_id="19395", ticket=ticket(tags=("vip",)), tier=2,
                            opened_at=NOW, tier_entered_at=NOW, policy_version="abc123def456",
                            clocks=(clock,))
    again = EscalationState.model_validate_json(state.model_dump_json())
    assert again == state and again.clocks[0].target == timedelta(hours=8)


def test_an_event_carries_its_ticket_and_changes():
    event = TicketEvent(id="d-1", system="jira", ticket_id="SUP-1", kind=EventKind.STATUS_CHANGED,
                        occurred_at=NOW, changes=[{"field": "status", "before": "Open", "after": "Waiting"}])
    assert event.changes[0].after == "Waiting"


@given(st.integers(min_value=1, max_value=10_000_000))
def test_durations_round_trip(seconds):
    value = timedelta(seconds=seconds)
    assert parse_duration(format_duration(value)) == value
