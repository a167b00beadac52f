"""``escalier.replay.replay_ticket`` steps a ticket as ``escalier simulate`` does, turn for turn."""

from __future__ import annotations

from pathlib import Path

import pytest

from escalier.core.config import load_policy
from escalier.core.model import EventKind, TicketEvent
from escalier.replay import replay_ticket
from escalier.simulate import DEFAULT_HORIZON, read_events, read_ticket, simulate

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
CASES = [
    (ticket.name, f"{ticket.stem}.jsonl")
    for ticket in sorted((EXAMPLES / "tickets").glob("*.json"))
]


@pytest.mark.parametrize(("ticket_name", "events_name"), CASES)
def test_the_same_decisions_as_simulate(ticket_name, events_name):
    policy = load_policy(EXAMPLES / "escalier.yaml")
    ticket = read_ticket(EXAMPLES / "tickets" / ticket_name)
    events_path = EXAMPLES / "events" / events_name
    events = read_events(events_path, ticket) if events_path.exists() else []
    until = ticket.created_at + DEFAULT_HORIZON
    expected = [(s.at, s.decision.history, s.decision.actions) for s in simulate(policy, ticket, events, until=until)]
    created = TicketEvent(id=f"{ticket.system}:{ticket.id}:created", system=ticket.system,
                          instance=ticket.instance, ticket_id=ticket.id, kind=EventKind.CREATED,
                          occurred_at=ticket.created_at, ticket=ticket)
    got = [
        (turn.at, turn.decision.history, turn.decision.actions)
        for turn in replay_ticket(policy, events, until=until, opening=created, stop_when_closed=True)
        if turn.decision.history or turn.decision.actions
    ]
    assert expected and got == expected


def test_an_event_that_finds_no_escalation_is_still_decided():
    policy = load_policy(EXAMPLES / "escalier.yaml")
    ticket = read_ticket(EXAMPLES / "tickets" / "sync-failure.json")
    solved = ticket.model_copy(update={"status": "solved", "status_category": "solved"})
    opened_later = ticket.model_copy(update={"status": "open"})
    events = [
        TicketEvent(id="a", system=ticket.system, ticket_id=ticket.id, kind=EventKind.CREATED,
                    occurred_at=ticket.created_at, ticket=solved),
        TicketEvent(id="b", system=ticket.system, ticket_id=ticket.id, kind=EventKind.REOPENED,
                    occurred_at=ticket.created_at + DEFAULT_HORIZON / 30, ticket=opened_later),
    ]
    turns = list(replay_ticket(policy, events, until=ticket.created_at + DEFAULT_HORIZON / 10))
    assert turns[0].decision.state is None  # created solved: nothing to track
    assert turns[1].decision.state is not None and turns[1].decision.history[0].kind == "opened"
    stopped = list(replay_ticket(policy, events, until=ticket.created_at + DEFAULT_HORIZON, stop_when_closed=True))
    assert len(stopped) == 1
