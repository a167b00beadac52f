"""Stepping one ticket through the decision engine: its events and the wake-ups it asks for.

The engine is a pure function of the policy, the state, one stimulus and the time. Replaying a
ticket is calling it in the order the live worker would have: each event at its own
``occurred_at``, and between events each wake-up the state asks for, at its own time. Nothing is
sent anywhere; the caller decides what to make of each decision (``escalier simulate`` prints a
timeline, ``escalier backtest`` adds it up).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from types import MappingProxyType
from typing import Any

from escalier.core.engine import Decision, decide
from escalier.core.model import EscalationState, EscalationStatus, TicketEvent, Timer
from escalier.core.policy import Policy

__all__ = ["Turn", "replay_ticket"]

_EMPTY: Mapping[str, Any] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class Turn:
    """One call of the engine: when, with what, the state before it and what it decided."""

    at: datetime
    stimulus: TicketEvent | Timer
    before: EscalationState | None
    decision: Decision

    @property
    def label(self) -> str:
        """``timer``, or ``event <kind> (<id>)``: what the turn was about."""
        if isinstance(self.stimulus, Timer):
            return "timer"
        return f"event {self.stimulus.kind.value} ({self.stimulus.id})"


def replay_ticket(
    policy: Policy,
    events: Iterable[TicketEvent],
    *,
    until: datetime,
    opening: TicketEvent | None = None,
    stop_when_closed: bool = False,
    policies: Mapping[str, Policy] = _EMPTY,
    extra_criteria: Mapping[str, Any] = _EMPTY,
) -> Iterator[Turn]:
    """Decide a ticket's events in time order, and its wake-ups in between, up to ``until``.

    The first event (in time order) usually opens the escalation (a ``created`` event); an event
    that finds no escalation is still decided, as the worker does, so a reply or a reopening
    that carries the ticket may open it. Each event is decided at its own time; each wake-up at
    the time the state asked for.

    :param events: the ticket's events; sorted here by time, then id.
    :param until: nothing after this time is decided (but ``opening``).
    :param opening: an event to decide first, whatever its time (``escalier simulate``'s
        creation of the ticket); by default the first of ``events`` opens.
    :param stop_when_closed: stop once the escalation is closed (or was never opened by the
        first event), leaving later events undecided.
    """
    queue = deque(sorted(events, key=lambda e: (e.occurred_at, e.id)))
    state: EscalationState | None = None
    first = True
    if opening is not None:
        decision = decide(
            policy, None, opening, opening.occurred_at, policies=policies,
            extra_criteria=extra_criteria,
        )
        yield Turn(opening.occurred_at, opening, None, decision)
        state = decision.state
        first = False
    while True:
        if stop_when_closed and not first and (
            state is None or state.status is EscalationStatus.CLOSED
        ):
            return
        wake = state.wake_at if state is not None else None
        event = queue[0] if queue else None
        if event is not None and (wake is None or event.occurred_at <= wake):
            if event.occurred_at > until:
                return
            queue.popleft()
            at: datetime = event.occurred_at
            stimulus: TicketEvent | Timer = event
        elif wake is not None and wake <= until:
            assert state is not None
            at = wake
            stimulus = Timer(
                system=state.system, instance=state.instance, ticket_id=state.ticket_id, due_at=wake
            )
        else:
            return
        decision = decide(
            policy, state, stimulus, at, policies=policies, extra_criteria=extra_criteria
        )
        yield Turn(at, stimulus, state, decision)
        state = decision.state
        first = False
