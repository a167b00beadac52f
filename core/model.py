"""The escalation model: tickets, change events, escalation state and the neutral action vocabulary.

Every object here is immutable and free of I/O. Connectors translate their system's payloads into
:class:`Ticket` and :class:`TicketEvent`, and translate :class:`Action` back into API calls; the
engine reads and writes :class:`EscalationState`. All times are timezone-aware.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

__all__ = [
    "Action",
    "ActionKind",
    "ActorRole",
    "Acknowledgement",
    "Comment",
    "EscalationState",
    "EscalationStatus",
    "EventKind",
    "FieldChange",
    "HistoryEntry",
    "NotificationState",
    "PathKind",
    "RACI",
    "SlaClock",
    "StatusCategory",
    "Ticket",
    "TicketEvent",
    "Timer",
]


def _aware(value: datetime | None) -> datetime | None:
    if value is not None and value.utcoffset() is None:
        raise ValueError("must carry a time zone (e.g. 2026-03-06T16:50:00+01:00 or ...Z)")
    return value


AwareDatetime = Annotated[datetime, AfterValidator(_aware)]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class StatusCategory(StrEnum):
    """The neutral status every system's statuses map onto."""

    NEW = "new"
    OPEN = "open"
    PENDING = "pending"  # waiting on the customer
    ON_HOLD = "on_hold"  # waiting on a third party
    SOLVED = "solved"
    CLOSED = "closed"


class Ticket(_Frozen):
    """A snapshot of a ticket as its system last described it."""

    system: str
    id: str = Field(description="Jira issue key, Zendesk ticket id, or mail thread id")
    instance: str = "default"
    subject: str = ""
    status: str = Field(default="open", description="the system's own status name")
    status_category: StatusCategory = StatusCategory.OPEN
    priority: str | None = None
    severity: str | None = None
    users_affected: int | None = Field(default=None, ge=0)
    tags: tuple[str, ...] = ()
    assignee: str | None = None
    group: str | None = None
    requester: str | None = None
    organization: str | None = None
    created_at: AwareDatetime
    updated_at: AwareDatetime | None = None
    first_response_at: AwareDatetime | None = None
    solved_at: AwareDatetime | None = None
    fields: dict[str, Any] = Field(default_factory=dict, description="custom fields by name")
    description: str = ""

    @property
    def is_resolved(self) -> bool:
        """True once the ticket is solved or closed."""
        return self.status_category in (StatusCategory.SOLVED, StatusCategory.CLOSED)


class EventKind(StrEnum):
    """What happened to a ticket."""

    CREATED = "created"
    UPDATED = "updated"
    COMMENTED = "commented"
    STATUS_CHANGED = "status_changed"
    ASSIGNED = "assigned"
    ACKNOWLEDGED = "acknowledged"
    RESOLVED = "resolved"
    REOPENED = "reopened"
    ESCALATION_REQUESTED = "escalation_requested"
    DEESCALATION_REQUESTED = "deescalation_requested"


class ActorRole(StrEnum):
    """Who caused an event; ``escalier`` marks our own changes coming back."""

    AGENT = "agent"
    CUSTOMER = "customer"
    SYSTEM = "system"
    ESCALIER = "escalier"


class PathKind(StrEnum):
    """The three escalation paths."""

    INTERNAL = "internal"  # tier to tier
    FUNCTIONAL = "functional"  # to a department: engineering, product, sales
    HIERARCHICAL = "hierarchical"  # to management


class FieldChange(_Frozen):
    """One changed field, before and after, in the system's own terms."""

    field: str
    before: Any = None
    after: Any = None


class Comment(_Frozen):
    """A comment added to a ticket."""

    body: str
    public: bool = True
    author: str | None = None
    author_role: ActorRole = ActorRole.AGENT


class TicketEvent(_Frozen):
    """A change to a ticket, as a connector parsed it from a webhook, a poll or a mail."""

    id: str = Field(description="unique per system: the delivery id or one derived from the payload")
    system: str
    instance: str = "default"
    ticket_id: str
    kind: EventKind
    occurred_at: AwareDatetime
    actor: str | None = None
    actor_role: ActorRole = ActorRole.AGENT
    ticket: Ticket | None = Field(default=None, description="the ticket after the change, if known")
    changes: tuple[FieldChange, ...] = ()
    comment: Comment | None = None
    requested_tier: int | None = Field(default=None, ge=1)
    path: PathKind | None = None
    department: str | None = None
    reason: str | None = None


class Timer(_Frozen):
    """A wake-up the engine asked for; the runtime delivers it at or after ``due_at``."""

    system: str
    instance: str = "default"
    ticket_id: str
    due_at: AwareDatetime


class RACI(_Frozen):
    """Who is Responsible, Accountable, Consulted and Informed for one escalation."""

    responsible: tuple[str, ...] = ()
    accountable: tuple[str, ...] = ()
    consulted: tuple[str, ...] = ()
    informed: tuple[str, ...] = ()


class SlaClock(_Frozen):
    """One SLA target measured in business time, pausable, with warnings already given."""

    name: Literal["acknowledge", "resolve", "follow_up"]
    calendar: str
    target: timedelta
    started_at: AwareDatetime
    elapsed_before: timedelta = timedelta(0)
    running_since: AwareDatetime | None = None
    warned_at_percent: tuple[int, ...] = ()
    breached_at: AwareDatetime | None = None
    stopped_at: AwareDatetime | None = None
    paused_total: timedelta = Field(
        default=timedelta(0), description="wall-clock time this clock spent paused"
    )

    @property
    def paused(self) -> bool:
        """True while the clock is neither running nor stopped."""
        return self.running_since is None and self.stopped_at is None


class Acknowledgement(_Frozen):
    """Who acknowledged the current tier's notification, and when."""

    by: str
    at: AwareDatetime


class NotificationState(_Frozen):
    """Repeated notification of the current tier until somebody acknowledges it."""

    level: int = 0  # 0 Responsible and Informed, 1 Accountable, 2+ the hierarchical path
    sent: int = 0
    last_sent_at: AwareDatetime | None = None
    next_at: AwareDatetime | None = None
    acknowledged: Acknowledgement | None = None


class HistoryEntry(_Frozen):
    """One decision in the audit trail of an escalation."""

    at: AwareDatetime
    kind: str
    reason: str
    from_tier: int | None = None
    to_tier: int | None = None
    path: PathKind | None = None
    criteria: tuple[str, ...] = ()
    actor: str | None = None
    policy_version: str
    event_id: str | None = None
    effect: str | None = Field(
        default=None, description="what the entry's actions achieve; a replay never repeats it"
    )


class EscalationStatus(StrEnum):
    """Where an escalation stands."""

    OPEN = "open"
    RESOLVED = "resolved"
    CLOSED = "closed"


class EscalationState(_Frozen):
    """Everything the engine knows about one ticket's escalation."""

    system: str
    instance: str = "default"
    ticket_id: str
    ticket: Ticket
    tier: int = Field(ge=1)
    path: PathKind = PathKind.INTERNAL
    department: str | None = None
    status: EscalationStatus = EscalationStatus.OPEN
    opened_at: AwareDatetime
    tier_entered_at: AwareDatetime
    last_move_at: AwareDatetime | None = None
    resolved_at: AwareDatetime | None = None
    policy_version: str
    raci: RACI = RACI()
    clocks: tuple[SlaClock, ...] = ()
    notification: NotificationState = NotificationState()
    history: tuple[HistoryEntry, ...] = ()
    seen_events: tuple[str, ...] = Field(default=(), description="recent event ids, newest last")
    last_event_at: AwareDatetime | None = None
    action_seq: int = Field(default=0, description="actions issued so far; keys the next one")
    wake_at: AwareDatetime | None = None
    # What the engine needs to measure business time, order late events and stay idempotent.
    as_of: AwareDatetime | None = Field(default=None, description="the time the state is decided up to")
    moves: int = Field(default=0, description="placements so far, the first one included")
    management_level: int | None = None
    priority: str | None = Field(default=None, description="the priority Escalier last set")
    matrix_tier: int | None = Field(default=None, description="the tier the matrix last asked for")
    active_since: AwareDatetime | None = Field(
        default=None, description="start of the current running stretch; None while paused or resolved"
    )
    open_elapsed: timedelta = Field(
        default=timedelta(0), description="business time open and running, before active_since"
    )
    tier_elapsed: timedelta = Field(
        default=timedelta(0), description="business time running at this tier, before active_since"
    )
    paused_since: AwareDatetime | None = None
    paused_total: timedelta = Field(default=timedelta(0), description="wall-clock time paused, all tiers")
    fired_criteria: tuple[str, ...] = Field(default=(), description="criteria that already moved it")
    found_keywords: tuple[str, ...] = Field(
        default=(), description="policy keywords seen in comments so far"
    )
    pending_move: dict[str, Any] | None = Field(
        default=None, description="a move waiting for required information"
    )
    reviewed_at: AwareDatetime | None = None
    followed_up_at: AwareDatetime | None = None
    effects: tuple[str, ...] = Field(default=(), description="recent effects already emitted")
    log: tuple[TicketEvent, ...] = Field(
        default=(), description="events since the checkpoint, in time order, for late arrivals"
    )
    checkpoint: EscalationState | None = Field(
        default=None, description="the state before the oldest event in log"
    )
    checkpoint_next: EscalationState | None = Field(
        default=None, description="the checkpoint-to-be, once it is old enough"
    )


class ActionKind(StrEnum):
    """The neutral action vocabulary every connector translates."""

    ADD_TAGS = "add_tags"
    REMOVE_TAGS = "remove_tags"
    ASSIGN = "assign"
    COMMENT = "comment"
    SET_PRIORITY = "set_priority"
    ADD_WATCHERS = "add_watchers"
    NOTIFY = "notify"
    TRANSITION = "transition"


_REQUIRED: dict[ActionKind, tuple[str, ...]] = {
    ActionKind.ADD_TAGS: ("tags",),
    ActionKind.REMOVE_TAGS: ("tags",),
    ActionKind.ASSIGN: ("target",),
    ActionKind.COMMENT: ("body",),
    ActionKind.SET_PRIORITY: ("priority",),
    ActionKind.ADD_WATCHERS: ("watchers",),
    ActionKind.NOTIFY: ("channel", "body"),
    ActionKind.TRANSITION: ("status",),
}


class Action(_Frozen):
    """One change to make upstream. ``key`` is stable, so applying it twice can be detected."""

    kind: ActionKind
    key: str = Field(description="idempotency key: the same action always has the same key")
    system: str
    instance: str = "default"
    ticket_id: str
    tier: int | None = None
    urgency: int = Field(default=0, description="higher is served first when upstream budget is short")
    tags: tuple[str, ...] = ()
    target: dict[str, Any] | None = Field(
        default=None, description="the tier's target in this system, e.g. {'group': 'tier-2'}"
    )
    body: str | None = None
    public: bool = False
    template: str | None = None
    priority: str | None = None
    watchers: tuple[str, ...] = ()
    channel: str | None = None
    recipients: tuple[str, ...] = ()
    status: str | None = None

    @model_validator(mode="after")
    def _has_what_its_kind_needs(self) -> Action:
        missing = [name for name in _REQUIRED[self.kind] if not getattr(self, name)]
        if missing:
            raise ValueError(f"a {self.kind.value} action needs {', '.join(missing)}")
        return self
