"""The decision engine: what must happen to a ticket now, and when to look again.

:func:`decide` is a pure function of the policy, the escalation's state, one stimulus (a ticket
event or a timer) and the current time. It is a small discrete-event simulation:

* Everything that depends on time alone (SLA warnings and breaches, time-box ends, criteria that
  wait with ``unresolved_for``/``at_tier_for``, notification repeats, reviews, follow-ups) is a
  *deadline* computed from the state. Advancing to a time fires every deadline up to it, each at
  its own instant, so the result does not depend on when timers were actually delivered.
* Events are applied at their own ``occurred_at``. An event that arrives after a later one (Jira
  delivers up to ~30 minutes late) or after a deadline already fired is *replayed*: the state keeps
  a checkpoint from at least :data:`REORDER_WINDOW` ago and the events since it, and the engine
  folds them again in time order. Delivering a set of events in any order therefore ends in the
  same tier, clocks and pause totals.
* Every action belongs to an *effect* with a stable name (``move:3:internal:2``,
  ``warn:3:resolve:75``...). The state remembers recent effects, and a replay never emits an effect
  that was already emitted. Action keys are ``{system}:{instance}:{ticket}:{seq}``, numbered in
  emission order, so replaying the same deliveries from scratch yields the same keys.

Choices the process leaves open, made here:

* Acknowledgement is an ``ACKNOWLEDGED`` event or an agent's first public comment after a move.
  It stops the repeats and the acknowledge clock, never the resolve clock.
* Notification repeats, and so the climb to the next level, are counted in business time of the
  tier's calendar: nobody is paged at night by an office-hours tier, while a 24x7 tier pages
  around the clock. The notification on entering a placement goes out at once, open or not.
* Clocks restart on every move (each tier owes its own targets); a change of matrix cell at the
  same tier re-targets them and keeps elapsed and paused time. ``paused_total`` in the state adds
  up paused time across tiers. Reopening resumes the resolve clock where it stopped.
* ``unresolved_for`` counts business time open and not paused; ``at_tier_for`` and time-boxes count
  business time at the tier, not paused. Both in the current tier's calendar.
* A criterion moves a ticket at most once per escalation; the matrix moves it when its cell asks
  for a higher tier than it last did. So a de-escalated ticket is not pushed straight back up.
  Only events de-escalate; time passing never does.
* On entering the highest tier, or when a move skips a tier, the Accountable are notified at once.
* Policy versions: ``state.policy_version`` names the version an escalation runs under. The runtime
  passes the current policy and, in ``policies``, the versions still in flight (by version); an
  escalation keeps its version until its next move, which the current policy carries out and whose
  version the escalation then adopts. An unknown in-flight version falls back to the current one.
"""

from __future__ import annotations

import operator
import re
import string
import weakref
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from types import MappingProxyType
from typing import Any

from pydantic import BaseModel

from escalier.core.clocks import business_add, business_elapsed, meter_deadline, zone
from escalier.core.durations import format_duration
from escalier.core.extensions import CriterionSpec
from escalier.core.model import (
    RACI,
    Acknowledgement,
    Action,
    ActionKind,
    ActorRole,
    EscalationState,
    EscalationStatus,
    EventKind,
    HistoryEntry,
    NotificationState,
    PathKind,
    SlaClock,
    Ticket,
    TicketEvent,
    Timer,
)
from escalier.core.policy import Conditions, Criterion, Policy, RaciSpec, TierSpec
from escalier.core.templates import DEFAULT_TEMPLATES, is_own_text, render

__all__ = ["Decision", "REORDER_WINDOW", "decide"]

REORDER_WINDOW = timedelta(hours=1)
"""How late an event may arrive and still be applied in its own time order."""

_MAX_LOG = 64
_MAX_SEEN = 256
_MAX_EFFECTS = 256
_MAX_HISTORY = 200
_ZERO = timedelta(0)
_EMPTY: Mapping[str, Any] = MappingProxyType({})
_WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_DAY_NAMES = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
# Fields that describe the escalation itself; the rest is bookkeeping that only the live state has.
_LIVE_ONLY = ("history", "seen_events", "action_seq", "effects", "log", "checkpoint", "checkpoint_next")
_CACHE_LIMIT = 20_000
"""Entries a memo of the engine keeps; past that it starts afresh."""
_MODEL_CACHE_LIMIT = 64
"""The same for a memo that keeps models alive: the garbage collector goes through each of them
(clocks, their fields and warnings) at every full collection, which with thousands kept costs
more than the memo saves. The clocks asked about again are those of the last few decisions."""


@dataclass(frozen=True)
class Decision:
    """What :func:`decide` concluded: the new state, actions to take, the next wake-up, the audit."""

    state: EscalationState | None
    actions: tuple[Action, ...] = ()
    wake_at: datetime | None = None
    history: tuple[HistoryEntry, ...] = ()


def decide(
    policy: Policy,
    state: EscalationState | None,
    stimulus: TicketEvent | Timer,
    now: datetime,
    *,
    extra_criteria: Mapping[str, CriterionSpec] = _EMPTY,
    policies: Mapping[str, Policy] = _EMPTY,
) -> Decision:
    """Decide what a ticket event or a timer means for an escalation at ``now``.

    :param policy: the current policy; moves are carried out under it.
    :param policies: earlier policy versions by :attr:`Policy.version`, for escalations still in
        flight under one of them.
    :returns: the new state (None when there is no escalation to track), the actions, the time to
        call again with a :class:`Timer`, and the new audit entries.
    """
    ctx = _Context(policy, policies, extra_criteria)
    if isinstance(stimulus, Timer):
        if state is None:
            return Decision(None)
        work = _Work.of(state)
        wake = _advance(ctx, work, now)
        return _finish(ctx, state, work, None, now, wake=wake)

    event = stimulus
    if state is None:
        ticket = event.ticket
        if ticket is None or (ticket.is_resolved and event.kind is not EventKind.REOPENED):
            return Decision(None)
        work = _open(ctx, ticket, event)
        checkpoint = _snapshot(work, boundary="")
        log: tuple[TicketEvent, ...] = ()
        if event.kind is not EventKind.CREATED:
            _apply(ctx, work, event, max(event.occurred_at, work.as_of))
            log = (event,)
        wake = _advance(ctx, work, now)
        return _finish(ctx, None, work, event, now, checkpoint=checkpoint, log=log, wake=wake)

    # The state's fields, read once: through pydantic each attribute read costs a lookup chain.
    fields = state.__dict__
    if event.id in fields["seen_events"]:
        return _decision(state, (), fields["wake_at"], ())

    occurred = event.occurred_at
    as_of = fields["as_of"]
    log = fields["log"]
    late = (as_of is not None and _later(as_of, occurred)) or (bool(log) and _key(event) < _key(log[-1]))
    if not late:
        work = _Work.of(state)
        checkpoint, checkpoint_next, log = _rotate(work, event)
        _advance(ctx, work, occurred)
        _apply(ctx, work, event, occurred)
        wake = _advance(ctx, work, now)
        return _finish(
            ctx, state, work, event, now, checkpoint=checkpoint, checkpoint_next=checkpoint_next,
            log=(*log, event), wake=wake,
        )

    # Late: fold the events since the checkpoint again, this one in its place.
    base = state.checkpoint
    if base is None:  # a state built elsewhere, without a log: apply it now, as well as we can
        work = _Work.of(state)
        _apply(ctx, work, event, work.as_of or event.occurred_at)
        wake = _advance(ctx, work, now)
        return _finish(ctx, state, work, event, now, log=(*state.log, event)[-_MAX_LOG:], wake=wake)
    events = sorted((*state.log, event), key=_key)
    work = _Work.of(base)
    for item in events:
        at = max(item.occurred_at, work.as_of or item.occurred_at)
        _advance(ctx, work, at)
        _apply(ctx, work, item, at)
    wake = _advance(ctx, work, now)
    return _finish(
        ctx, state, work, event, now, checkpoint=base, checkpoint_next=None, log=tuple(events),
        replayed=True, wake=wake,
    )


# --- the working state ------------------------------------------------------------------------


class _Work:
    """A mutable copy of an :class:`EscalationState` while one decision is being made."""

    # Plain attributes mirroring the model's fields; built without validation and frozen back
    # into a model once, at the end, because a replay may step it hundreds of times.
    tier: int
    ticket: Ticket

    @classmethod
    def of(cls, state: EscalationState) -> _Work:
        work = cls.__new__(cls)
        work.__dict__.update(state.__dict__)
        return work

    def freeze(self, **live: Any) -> EscalationState:
        # The engine sets model fields only, so the attributes are exactly the state's fields.
        return _construct(EscalationState, {**self.__dict__, **live})


_new = object.__new__
# The setters of the storage every pydantic model has, taken from BaseModel once: calling them
# directly skips the attribute lookup object.__setattr__ repeats for each of them.
_set_dict = BaseModel.__dict__["__dict__"].__set__
_set_fields_set = BaseModel.__dict__["__pydantic_fields_set__"].__set__
_set_extra = BaseModel.__dict__["__pydantic_extra__"].__set__
_set_private = BaseModel.__dict__["__pydantic_private__"].__set__


def _model(cls: Any, values: dict[str, Any], fields_set: set[str]) -> Any:
    """A model with exactly these field values, already valid, as pydantic stores them."""
    obj = _new(cls)
    _set_dict(obj, values)
    _set_fields_set(obj, fields_set)
    _set_extra(obj, None)
    _set_private(obj, None)
    return obj


def _defaults(cls: Any) -> tuple[dict[str, Any], int]:
    """The defaults of ``cls``'s optional fields, in field order, and its number of fields."""
    found = _DEFAULTS.get(cls)
    if found is None:
        found = _DEFAULTS[cls] = (
            {
                name: field.get_default(call_default_factory=True)
                for name, field in cls.model_fields.items()
                if not field.is_required()
            },
            len(cls.model_fields),
        )
    return found


def _construct(cls: Any, data: dict[str, Any]) -> Any:
    """A model from values that are already valid, without pydantic's per-call overhead."""
    # model_construct resolves defaults and fields-set on every call; the engine builds a state
    # per decision, so it fills a precomputed default set instead.
    defaults, count = _DEFAULTS.get(cls) or _defaults(cls)
    return _model(cls, {**defaults, **data} if len(data) < count else data, set(data))


_DEFAULTS: dict[Any, tuple[dict[str, Any], int]] = {}
_ENTRY_DEFAULTS, _ENTRY_FIELDS = _defaults(HistoryEntry)
_ACTION_TEMPLATE = {**_defaults(Action)[0], "key": None, "system": None, "ticket_id": None, "kind": None}


def _replace(model: Any, **changes: Any) -> Any:
    """``model.model_copy(update=changes)`` for the engine's own, already valid, values."""
    return _model(
        model.__class__, {**model.__dict__, **changes}, model.__pydantic_fields_set__ | changes.keys()
    )


def _snapshot(work: _Work, *, boundary: str) -> EscalationState:
    # A checkpoint carries no bookkeeping of its own; ``seen_events`` holds the id of the last
    # event folded into it, so the log can be cut exactly where the checkpoint ends.
    values = {
        **work.__dict__, "history": (), "seen_events": (boundary,), "action_seq": 0, "effects": (),
        "log": (), "checkpoint": None, "checkpoint_next": None,
    }
    return _model(EscalationState, values, _fields_set(values))


def _fields_set(values: dict[str, Any]) -> set[str]:
    """``set(values)`` for a state's values, which always hold every field."""
    # Copying a set is cheaper than building one from the keys.
    return set(_STATE_FIELDS) if len(values) == len(_STATE_FIELDS) else set(values)


def _key(event: TicketEvent) -> tuple[datetime, str]:
    return (event.occurred_at, event.id)


def _rotate(
    work: _Work, event: TicketEvent
) -> tuple[EscalationState | None, EscalationState | None, tuple[TicketEvent, ...]]:
    """Move the checkpoint forward so it stays at least :data:`REORDER_WINDOW` behind."""
    # The work still holds the state's checkpoints and log.
    checkpoint, upcoming, log = work.checkpoint, work.checkpoint_next, work.log
    horizon = event.occurred_at - REORDER_WINDOW
    if upcoming is not None:
        upcoming_as_of = upcoming.as_of
        if upcoming_as_of is not None and not _later(upcoming_as_of, horizon):
            seen = upcoming.seen_events
            boundary = seen[0] if seen else ""
            cut = 0
            for index, logged in enumerate(log):
                if logged.id == boundary:
                    cut = index + 1
                    break
            checkpoint, upcoming, log = upcoming, None, log[cut:]
    if len(log) >= _MAX_LOG:
        # A very busy ticket: give up reordering before this event rather than grow without bound.
        checkpoint, upcoming, log = _snapshot(work, boundary=log[-1].id), None, ()
    if upcoming is None and log and (
        checkpoint is None or not _later(checkpoint.as_of or horizon, horizon)
    ):
        upcoming = _snapshot(work, boundary=log[-1].id)
    return checkpoint, upcoming, log


# --- what a policy implies, worked out once per policy object ----------------------------------


class _Derived:
    """Lookups the engine makes on every decision, computed once per :class:`Policy` object.

    A policy is immutable, so everything here is fixed for its lifetime; the per-placement tables
    are filled on first use and hold at most one entry per tier, department, system and level.
    """

    def __init__(self, policy: Policy):
        tiers = policy.tiers_by_level
        self.tiers = tiers
        self.first_tier = min(tiers)
        self.last_tier = max(tiers)
        self.default_calendar = policy.calendar_for(None)
        self.calendars = policy.calendars_built
        self.tier_calendars = {level: policy.calendar_for(level) for level in tiers}
        self.tier_zones = {level: zone(_tz_name(policy, level)) for level in tiers}
        self.tier_labels = {level: f"tier {level} ({spec.name})" for level, spec in tiers.items()}
        self.warn_percents = tuple(sorted(policy.sla.warn_at_percent))
        self.pause_statuses = tuple(policy.sla.pause_statuses)
        self.deescalation_rules = tuple(policy.deescalation.rules)
        self.review_after = policy.follow_up.review_open_after
        self.timeboxes = {level: spec.timebox for level, spec in tiers.items() if spec.timebox is not None}
        self.bands = tuple(
            (band.users_at_least, band.name)
            for band in sorted(policy.impact, key=lambda b: -b.users_at_least)
        )
        self.last_band = policy.impact[-1].name
        self.rungs = tuple(sorted(policy.paths.hierarchical, key=lambda m: m.level))
        self.keywords = _policy_keywords(policy)
        self.repeats = {level: _repeat_settings_of(policy, level) for level in tiers}
        # Per tier, the criteria whose deadlines depend on time alone: (id, unresolved_for,
        # at_tier_for, the conditions when they hold on some days or hours only, else None).
        self.timed: dict[int, tuple[tuple[str, timedelta | None, timedelta | None, Conditions | None], ...]] = {
            level: tuple(
                (
                    c.id,
                    c.when.unresolved_for,
                    c.when.at_tier_for,
                    c.when if (c.when.days or c.when.between) else None,
                )
                for c in policy.criteria
                if (not c.when.tier or level in c.when.tier)
                and (c.when.unresolved_for is not None or c.when.at_tier_for is not None or c.when.days or c.when.between)
            )
            for level in tiers
        }
        self.local_timed = {level: any(t[3] is not None for t in timed) for level, timed in self.timed.items()}
        # Per tier, the criteria that may move a ticket from it, in policy order: those whose
        # tier condition allows the tier, and, for internal moves, that lead to a higher tier.
        screens = {id(c.when): _Screen(c.when) for c in (*policy.criteria, *policy.deescalation.rules)}
        self.all_movers = tuple(_Mover(c, screens[id(c.when)]) for c in policy.criteria)
        by_criterion = {id(m.criterion): m for m in self.all_movers}
        self.movers: dict[int, tuple[_Mover, ...]] = {
            level: tuple(
                by_criterion[id(c)]
                for c in policy.criteria
                if (not c.when.tier or level in c.when.tier)
                and not (
                    c.then.path is PathKind.INTERNAL
                    and (c.then.to_tier is None or c.then.to_tier <= level or c.then.to_tier not in tiers)
                )
            )
            for level in tiers
        }
        # Each criterion's and de-escalation rule's conditions, screened (see _Screen).
        self.screens: dict[int, _Screen] = screens
        self.functional = policy.paths.functional
        # Per tier: whether a criterion that may move a ticket from it looks at the time (or a
        # plugin), and the time-box after which it is forced up, if it is.
        self.timed_movers = {level: any(m.timed for m in movers) for level, movers in self.movers.items()}
        self.forced_after = {
            level: box.duration
            for level, box in self.timeboxes.items()
            if box.mode in ("force", "both") and level + 1 in tiers
        }
        self.placement: dict[tuple[Any, ...], Any] = {}
        self.places: dict[tuple[Any, ...], _Place] = {}
        # Each running clock's next percent and deadline, by clock object (kept in the entry, so
        # the id stays its own): clocks are immutable and a state carries the same ones from
        # decision to decision until something happens to them.
        self.clock_dues: dict[int, tuple[SlaClock, int, datetime | None]] = {}
        # When each opening is due for review, by the opening's datetime object: the same sum is
        # asked for at every step, and one object for it makes the comparisons cheap.
        self.review_dues: dict[int, tuple[datetime, datetime]] = {}
        # The last deadline scan's inputs, the deadlines it found that do not depend on the time
        # it was asked at, and that time with its answer (see _next_due); and the last candidate
        # search whose inputs other than the time found nothing (see _best_candidate).
        # Consecutive decisions on a ticket, and the steps within one, mostly ask about unchanged
        # objects. Both are compared by identity, so a hit is exactly the same question.
        self.dues_memo: tuple[tuple[Any, ...], list[Any], datetime | None, datetime | None] | None = None
        self.quiet: tuple[Any, ...] | None = None
        # The clocks last asked about and their deadlines (see _clock_dues), and the last
        # _tier_due question and its answer, in the same way.
        self.clock_scan: tuple[tuple[SlaClock, ...], list[datetime | None]] | None = None
        self.tier_due: tuple[Any, ...] = (None, None, None, None, None)
        # The placeholders each template uses (None: cannot tell, fill them all).
        self.template_fields: dict[str, frozenset[str] | None] = {}
        # The last ticket asked about and its matrix cell: a decision asks for the same one often.
        self.cell_for: tuple[Ticket | None, Any] = (None, None)

    def review_due(self, opened_at: datetime) -> datetime:
        """``opened_at`` plus the review period."""
        found = self.review_dues.get(id(opened_at))
        if found is not None and found[0] is opened_at:
            return found[1]
        due = opened_at + self.review_after
        if len(self.review_dues) >= _CACHE_LIMIT:
            self.review_dues.clear()
        self.review_dues[id(opened_at)] = (opened_at, due)
        return due

    def impact_of(self, users_affected: int | None) -> str:
        """:meth:`Policy.impact_of`, without sorting the bands each time."""
        users = users_affected or 0
        for at_least, name in self.bands:
            if users >= at_least:
                return name
        return self.last_band


_derived_cache: dict[int, tuple[weakref.ref[Policy], _Derived]] = {}
# The policy asked about last: nearly every call asks about the same one, so check it first.
_last_derived: tuple[weakref.ref[Policy], _Derived] | None = None


def _derived(policy: Policy) -> _Derived:
    """The derived lookups of ``policy``, kept while the policy object lives."""
    global _last_derived
    last = _last_derived
    if last is not None and last[0]() is policy:
        return last[1]
    found = _derived_cache.get(id(policy))
    if found is not None and found[0]() is policy:
        _last_derived = found
        return found[1]
    key = id(policy)

    def forget(ref: weakref.ref[Policy]) -> None:
        entry = _derived_cache.get(key)
        if entry is not None and entry[0] is ref:
            del _derived_cache[key]

    data = _Derived(policy)
    _derived_cache[key] = _last_derived = (weakref.ref(policy, forget), data)
    return data


def _cell(policy: Policy, ticket: Ticket) -> Any:
    """:meth:`Policy.matrix_cell` for a ticket, with the impact bands pre-sorted."""
    data = _derived(policy)
    last = data.cell_for
    if last[0] is ticket:
        return last[1]
    found = _find_cell(policy, ticket)
    data.cell_for = (ticket, found)
    return found


def _find_cell(policy: Policy, ticket: Ticket) -> Any:
    if ticket.severity is None:
        return None
    row = policy.matrix.get(ticket.severity)
    if not row:
        return None
    return row.get(_derived(policy).impact_of(ticket.users_affected))


# --- effects: the unit of idempotence ---------------------------------------------------------


@dataclass(slots=True)
class _Effect:
    name: str
    entry: dict[str, Any]  # the history entry's values, as HistoryEntry holds them
    given: dict[str, Any]  # the entry's values given beyond the required ones (fields-set)
    actions: list[dict[str, Any]]


class _Context:
    """The policies and plugins of one decision, and the effects it produced."""

    __slots__ = ("current", "version", "policies", "extra", "effects", "data")

    def __init__(
        self,
        current: Policy,
        policies: Mapping[str, Policy],
        extra: Mapping[str, CriterionSpec],
    ):
        self.current = current
        # A private attribute: read through pydantic's __getattr__ it costs more than a decision
        # step, so take it from the private-attribute storage when it is there.
        private = current.__pydantic_private__
        self.version = private["_version"] if private else current.version
        self.policies = policies
        self.extra = extra
        self.effects: list[_Effect] = []
        self.data = _derived(current)

    def derived(self, policy: Policy) -> _Derived:
        """:func:`_derived` of ``policy``; the current policy's is at hand."""
        return self.data if policy is self.current else _derived(policy)

    def clock_next(self, policy: Policy, clock: SlaClock) -> tuple[int, datetime | None]:
        """The next percent of ``clock`` to act on (100 is the breach) and when it is reached."""
        data = self.data if policy is self.current else _derived(policy)
        dues = data.clock_dues
        found = dues.get(id(clock))
        if found is not None and found[0] is clock:
            return found[1], found[2]
        warned = clock.warned_at_percent
        percent = 100
        for candidate in data.warn_percents:
            if candidate not in warned:
                percent = candidate
                break
        due = _clock_due(policy, clock, percent)
        if len(dues) >= _MODEL_CACHE_LIMIT:
            dues.clear()
        dues[id(clock)] = (clock, percent, due)
        return percent, due

    def policy_of(self, work: _Work) -> Policy:
        version = work.policy_version
        if version == self.version:
            return self.current
        return self.policies.get(version, self.current)

    def emit(
        self,
        work: _Work,
        name: str,
        at: datetime,
        kind: str,
        reason: str,
        *,
        actions: Iterable[dict[str, Any]] = (),
        policy: Policy | None = None,
        **entry: Any,
    ) -> None:
        policy = policy or self.policy_of(work)
        version = self.version if policy is self.current else policy.version
        # What _construct(HistoryEntry, dict(at=..., kind=..., reason=..., policy_version=...,
        # effect=name, **entry)) holds: the given values in that order when they are all of the
        # fields, else the defaults in field order, then the required fields.
        if len(entry) + 5 >= _ENTRY_FIELDS:
            values = {
                "at": at, "kind": kind, "reason": reason, "policy_version": version, "effect": name,
                **entry,
            }
        else:
            values = {
                **_ENTRY_DEFAULTS, "effect": name, **entry, "at": at, "kind": kind,
                "reason": reason, "policy_version": version,
            }
        self.effects.append(_Effect(name, values, entry, list(actions)))


def _finish(
    ctx: _Context,
    previous: EscalationState | None,
    work: _Work,
    event: TicketEvent | None,
    now: datetime,
    *,
    checkpoint: EscalationState | None = None,
    checkpoint_next: EscalationState | None = None,
    log: tuple[TicketEvent, ...] | None = None,
    replayed: bool = False,
    wake: datetime | None = None,
) -> Decision:
    prior = previous.__dict__ if previous is not None else None
    seq = prior["action_seq"] if prior is not None else 0
    new_entries: list[HistoryEntry] = []
    names: list[str] = []
    actions: list[Action] = []
    # Most timers and many events make no effect: then there is nothing to sort out.
    if ctx.effects or replayed:
        done = set(prior["effects"]) if prior is not None else set()
        fresh = [effect for effect in ctx.effects if effect.name not in done]
        if replayed and previous is not None:
            fresh.extend(_correction(ctx, previous, work, event, fresh))
        system, instance, ticket_id = work.system, work.instance, work.ticket_id
        prefix = f"{system}:{instance}:{ticket_id}"
        for effect in fresh:
            name = effect.name
            if name in done:
                continue  # made again later in the same decision, e.g. at an event and a deadline
            done.add(name)
            names.append(name)
            new_entries.append(
                _model(HistoryEntry, effect.entry, {"at", "kind", "reason", "policy_version", "effect", *effect.given})
            )
            for spec in effect.actions:
                seq += 1
                # Built without validation: _action and its callers always give what a kind needs.
                # The same values, order and fields-set as _construct(Action, {key..., **spec}):
                # the template holds the defaults in field order and then the required fields.
                values = _ACTION_TEMPLATE.copy()
                values.update(spec)
                values["key"] = f"{prefix}:{seq}"
                values["system"] = system
                values["instance"] = instance
                values["ticket_id"] = ticket_id
                actions.append(_model(Action, values, {"key", "system", "instance", "ticket_id", *spec}))
    # The work is spent after this: its attributes become the new state's fields.
    if prior is None:
        work.history = tuple(new_entries[-_MAX_HISTORY:])
        work.effects = tuple(names[-_MAX_EFFECTS:])
    elif new_entries:
        work.history = (*prior["history"], *new_entries)[-_MAX_HISTORY:]
        work.effects = (*prior["effects"], *names)[-_MAX_EFFECTS:]
    else:  # nothing new: keep the previous tuples rather than copy them
        work.history = prior["history"]
        work.effects = prior["effects"]
    work.action_seq = seq
    work.wake_at = wake
    if event is not None:
        seen = prior["seen_events"] if prior is not None else ()
        work.seen_events = (*seen, event.id)[-_MAX_SEEN:]
        work.log = log if log is not None else ()
        work.checkpoint = checkpoint
        work.checkpoint_next = checkpoint_next
        if work.last_event_at is None or _later(event.occurred_at, work.last_event_at):
            work.last_event_at = event.occurred_at
    elif prior is not None:
        work.seen_events = prior["seen_events"]
        work.log = prior["log"]
        work.checkpoint = prior["checkpoint"]
        work.checkpoint_next = prior["checkpoint_next"]
    values = work.__dict__
    state = _model(EscalationState, values, _fields_set(values))
    return _decision(state, tuple(actions), wake, tuple(new_entries))


def _decision(
    state: EscalationState | None,
    actions: tuple[Action, ...],
    wake: datetime | None,
    history: tuple[HistoryEntry, ...],
) -> Decision:
    """``Decision(state, actions, wake, history)``, filled the way its frozen __init__ fills it."""
    decision = _new(Decision)
    _set_object_dict(decision, {"state": state, "actions": actions, "wake_at": wake, "history": history})
    return decision


_set_object_dict = Decision.__dict__["__dict__"].__set__


def _correction(
    ctx: _Context,
    previous: EscalationState,
    work: _Work,
    event: TicketEvent | None,
    fresh: list[_Effect],
) -> list[_Effect]:
    """After a replay ends somewhere the upstream was never told about, tell it."""
    where = (work.tier, work.department, work.management_level)
    if where == (previous.tier, previous.department, previous.management_level):
        return []
    if any(e.name.startswith("move:") for e in fresh):
        return []
    policy = ctx.policy_of(work)
    reason = "a late update changed what the policy calls for"
    before = len(ctx.effects)
    ctx.emit(
        work,
        f"correct:{event.id if event else work.as_of}",
        work.as_of or previous.opened_at,
        "corrected",
        reason,
        actions=_entry_actions(
            policy, work, previous.tier, previous.department, "corrected", reason,
            notify_accountable=False,
        ),
        from_tier=previous.tier,
        to_tier=work.tier,
        path=work.path,
        event_id=event.id if event else None,
    )
    return ctx.effects[before:]


# --- opening ----------------------------------------------------------------------------------


def _opened_work(ctx: _Context, ticket: Ticket) -> _Work:
    at = ticket.created_at
    given = dict(
        system=ticket.system,
        instance=ticket.instance,
        ticket_id=ticket.id,
        ticket=ticket,
        tier=ctx.data.first_tier,
        opened_at=at,
        tier_entered_at=at,
        policy_version=ctx.version,
        as_of=at,
        active_since=at,
    )
    # The fields of EscalationState(**given), without validating values that are valid already
    # (a validated ticket, its aware creation time, a tier of the policy): every field in field
    # order. The work needs no model of them, only the values.
    work = _Work.__new__(_Work)
    values = work.__dict__
    values.update(_fresh_state())
    values.update(given)
    return work


def _fresh_state() -> dict[str, Any]:
    """Every field of EscalationState in field order, with its default (None if it has none)."""
    global _FRESH_STATE
    if _FRESH_STATE is None:
        defaults, _ = _defaults(EscalationState)
        _FRESH_STATE = {name: defaults.get(name) for name in EscalationState.model_fields}
    return _FRESH_STATE


_FRESH_STATE: dict[str, Any] | None = None
_STATE_FIELDS = frozenset(EscalationState.model_fields)


def _open(ctx: _Context, ticket: Ticket, event: TicketEvent) -> _Work:
    """Start tracking a ticket: place it where the matrix says, or at the first tier."""
    policy = ctx.current
    work = _opened_work(ctx, ticket)
    work.last_event_at = event.occurred_at
    cell = _cell(policy, ticket)
    tier = work.tier
    reason = f"new ticket, placed at the first tier ({_tier_label(policy, tier)})"
    criteria: tuple[str, ...] = ()
    if cell is not None and cell.tier in policy.tiers_by_level:
        tier = cell.tier
        work.matrix_tier = cell.tier
        reason = _matrix_reason(policy, ticket, cell.tier)
        criteria = (_matrix_id(policy, ticket),)
    if policy.sla.pause_statuses and ticket.status_category in policy.sla.pause_statuses:
        work.active_since = None
        work.paused_since = ticket.created_at
    _enter(
        ctx, work, ticket.created_at, tier=tier, path=PathKind.INTERNAL, department=None,
        level=None, reason=reason, criteria=criteria, kind="opened", event_id=event.id,
        priority=cell.priority if cell is not None else None,
    )
    _ask_missing_information(ctx, work, ticket.created_at, tier, event.id)
    _evaluate(ctx, work, ticket.created_at, event_id=event.id)
    return work


# --- applying one event -----------------------------------------------------------------------


def _apply(ctx: _Context, work: _Work, event: TicketEvent, at: datetime) -> None:
    """Apply one ticket event at ``at`` (its own time, unless it is older than the checkpoint)."""
    # The event's fields, read once (each read through pydantic costs a lookup chain).
    kind = event.kind
    ticket = event.ticket
    comment = event.comment
    occurred = event.occurred_at
    if work.as_of is None or _later(at, work.as_of):
        work.as_of = at
    if work.last_event_at is None or _later(occurred, work.last_event_at):
        work.last_event_at = occurred
    policy = ctx.policy_of(work)
    if ticket is not None:
        work.ticket = ticket
    body = comment.body if comment is not None else None
    role = event.actor_role
    own = role is ActorRole.ESCALIER or (comment is not None and is_own_text(body))
    if comment is not None and not own:
        _note_keywords(policy, work, body)

    status = work.status
    if status is EscalationStatus.CLOSED:
        if kind is EventKind.REOPENED or (ticket is not None and not ticket.is_resolved):
            _reopen(ctx, work, at, event)
        return
    resolved = kind is EventKind.RESOLVED or (
        ticket is not None and kind is not EventKind.REOPENED and ticket.is_resolved
    )
    if status is EscalationStatus.OPEN and resolved:
        _resolve(ctx, work, at, event)
        return
    if status is EscalationStatus.RESOLVED:
        if kind is EventKind.REOPENED or (ticket is not None and not ticket.is_resolved):
            _reopen(ctx, work, at, event)
        else:
            return

    paused = work.ticket.status_category in ctx.derived(policy).pause_statuses
    if paused and work.paused_since is None:
        _pause(ctx, work, at, event)
    elif not paused and work.paused_since is not None:
        _resume(ctx, work, at, event)

    if not own and work.notification.acknowledged is None and (
        kind is EventKind.ACKNOWLEDGED
        or (
            kind is EventKind.COMMENTED
            and role is ActorRole.AGENT
            and comment is not None
            and comment.public
        )
    ):
        _acknowledge(ctx, work, at, event)

    if kind is EventKind.ESCALATION_REQUESTED and not own:
        _requested_escalation(ctx, work, at, event)
    elif kind is EventKind.DEESCALATION_REQUESTED and not own:
        _requested_deescalation(ctx, work, at, event)
    elif not own:
        _deescalation_rules(ctx, work, at, event)
    _evaluate(ctx, work, at, event_id=event.id, actor=event.actor)


def _note_keywords(policy: Policy, work: _Work, text: str) -> None:
    words = _derived(policy).keywords
    if not words:
        return
    lowered = text.lower()
    found = [w for w in words if w in lowered and w not in work.found_keywords]
    if found:
        work.found_keywords = (*work.found_keywords, *found)


def _policy_keywords(policy: Policy) -> tuple[str, ...]:
    words: set[str] = set()
    for criterion in policy.criteria:
        words.update(k.lower() for k in criterion.when.keywords_any)
    for rule in policy.deescalation.rules:
        words.update(k.lower() for k in rule.when.keywords_any)
    for tier in policy.tiers:
        for item in tier.required_information:
            words.update(k.lower() for k in item.keywords)
    return tuple(sorted(words))


# --- business time ----------------------------------------------------------------------------


def _calendar(policy: Policy, work: _Work) -> Any:
    found = _derived(policy).tier_calendars.get(work.tier)
    return found if found is not None else policy.calendar_for(work.tier)


def _bank(policy: Policy, work: _Work, at: datetime) -> None:
    """Add the running stretch up to ``at`` to the meters and clocks; they keep running."""
    if work.active_since is not None and at > work.active_since:
        gained = business_elapsed(_calendar(policy, work), work.active_since, at)
        work.open_elapsed += gained
        work.tier_elapsed += gained
        work.active_since = at


def _clock_calendar(policy: Policy, clock: SlaClock) -> Any:
    data = _derived(policy)
    return data.calendars.get(clock.calendar) or data.default_calendar


def _stop_clock(policy: Policy, clock: SlaClock, at: datetime, *, stop: bool) -> SlaClock:
    update: dict[str, Any] = {}
    if clock.running_since is not None:
        update["elapsed_before"] = clock.elapsed_before + business_elapsed(
            _clock_calendar(policy, clock), clock.running_since, at
        )
        update["running_since"] = None
    if stop:
        update["stopped_at"] = at
    return _replace(clock, **update) if update else clock


def _clock_due(policy: Policy, clock: SlaClock, percent: int) -> datetime | None:
    key = (clock.target, percent)
    threshold = _THRESHOLDS.get(key)
    if threshold is None:
        if len(_THRESHOLDS) >= _CACHE_LIMIT:
            _THRESHOLDS.clear()
        threshold = _THRESHOLDS[key] = clock.target * percent / 100
    return meter_deadline(_clock_calendar(policy, clock), clock.running_since, clock.elapsed_before, threshold)


# ``target * percent / 100`` by (target, percent): a handful of values, asked for at every step.
_THRESHOLDS: dict[tuple[timedelta, int], timedelta] = {}


def _open_due(policy: Policy, work: _Work, threshold: timedelta) -> datetime | None:
    return meter_deadline(_calendar(policy, work), work.active_since, work.open_elapsed, threshold)


def _tier_due(policy: Policy, work: _Work, threshold: timedelta) -> datetime | None:
    # Asked at every step for the time-box, from the same objects until the ticket moves or
    # pauses: the last answer is kept, and compared by identity.
    data = _derived(policy)
    since, banked, tier = work.active_since, work.tier_elapsed, work.tier
    last = data.tier_due
    if last[0] is since and last[1] is banked and last[2] is threshold and last[3] == tier:
        return last[4]
    calendar = data.tier_calendars.get(tier) or data.default_calendar
    due = meter_deadline(calendar, since, banked, threshold)
    data.tier_due = (since, banked, threshold, tier, due)
    return due


def _reached(due: datetime | None, at: datetime) -> bool:
    return due is not None and not _later(due, at)


def _pause(ctx: _Context, work: _Work, at: datetime, event: TicketEvent) -> None:
    policy = ctx.policy_of(work)
    _bank(policy, work, at)
    work.active_since = None
    work.paused_since = at
    work.clocks = tuple(_stop_clock(policy, c, at, stop=False) for c in work.clocks)
    status = work.ticket.status_category.value.replace("_", " ")
    ctx.emit(
        work, f"pause:{event.id}", at, "paused",
        f"SLA clocks paused: the ticket is {status} ({work.ticket.status}).", event_id=event.id,
        actor=event.actor,
    )


def _resume(ctx: _Context, work: _Work, at: datetime, event: TicketEvent | None) -> None:
    paused_for = at - work.paused_since if work.paused_since is not None else _ZERO
    work.paused_total += paused_for
    work.paused_since = None
    work.active_since = at
    work.clocks = tuple(
        c
        if c.stopped_at is not None
        else _replace(c, running_since=at, paused_total=c.paused_total + paused_for)
        for c in work.clocks
    )
    if event is not None:
        ctx.emit(
            work, f"resume:{event.id}", at, "resumed",
            f"SLA clocks running again after {format_duration(paused_for)} paused.",
            event_id=event.id, actor=event.actor,
        )


def _acknowledge(ctx: _Context, work: _Work, at: datetime, event: TicketEvent) -> None:
    policy = ctx.policy_of(work)
    who = event.actor or (event.comment.author if event.comment else None) or "unknown"
    work.notification = _replace(
        work.notification, acknowledged=_construct(Acknowledgement, {"by": who, "at": at}), next_at=None
    )
    work.clocks = tuple(
        _stop_clock(policy, c, at, stop=True) if c.name == "acknowledge" and c.stopped_at is None else c
        for c in work.clocks
    )
    how = "acknowledged" if event.kind is EventKind.ACKNOWLEDGED else "answered publicly"
    ctx.emit(
        work, f"ack:{work.moves}", at, "acknowledged",
        f"{who} {how} at {_tier_label(policy, work.tier)}; notifications stop, the resolve clock runs on.",
        actor=who, event_id=event.id,
    )


def _resolve(ctx: _Context, work: _Work, at: datetime, event: TicketEvent) -> None:
    policy = ctx.policy_of(work)
    _bank(policy, work, at)
    work.active_since = None
    if work.paused_since is not None:
        work.paused_total += at - work.paused_since
        work.paused_since = None
    work.clocks = tuple(
        _stop_clock(policy, c, at, stop=True) if c.stopped_at is None else c for c in work.clocks
    )
    work.status = EscalationStatus.RESOLVED
    work.resolved_at = at
    work.followed_up_at = None
    work.pending_move = None
    work.notification = _replace(work.notification, next_at=None)
    ctx.emit(
        work, f"resolved:{event.id}", at, "resolved",
        f"Resolved at {_tier_label(policy, work.tier)}; the resolve clock stops.",
        event_id=event.id, actor=event.actor, from_tier=work.tier,
    )


def _reopen(ctx: _Context, work: _Work, at: datetime, event: TicketEvent) -> None:
    policy = ctx.policy_of(work)
    work.status = EscalationStatus.OPEN
    work.resolved_at = None
    work.followed_up_at = None
    paused = work.ticket.status_category in policy.sla.pause_statuses
    if paused:
        work.paused_since = at
    else:
        work.active_since = at
    work.clocks = tuple(
        _replace(c, stopped_at=None, running_since=None if paused else at)
        if c.name == "resolve"
        else c
        for c in work.clocks
    )
    ctx.emit(
        work, f"reopened:{event.id}", at, "reopened",
        f"Reopened at {_tier_label(policy, work.tier)}; the resolve clock runs again.",
        event_id=event.id, actor=event.actor, to_tier=work.tier,
    )


# --- comparing times --------------------------------------------------------------------------
# Deadlines come from the calendars in UTC; events carry their sender's zone. Python compares two
# datetimes of different zones by asking both zones for their offsets, twice, which cost more than
# the rest of a deadline scan. These helpers decide exactly as datetime does (the same tzinfo
# object: wall-clock fields; different ones: instants), taking the instant of a value outside UTC
# from a memo keyed by the object. Values are never converted: they keep their zone in the state.

_UTC_OF: dict[int, tuple[datetime, datetime]] = {}


def _utc(at: datetime) -> datetime:
    """The same instant as ``at``, in UTC."""
    if at.tzinfo is UTC:
        return at
    found = _UTC_OF.get(id(at))
    if found is not None and found[0] is at:
        return found[1]
    if len(_UTC_OF) >= _CACHE_LIMIT:
        _UTC_OF.clear()
    utc = at.astimezone(UTC)
    _UTC_OF[id(at)] = (at, utc)  # the entry keeps ``at`` alive, so its id is not reused
    return utc


def _later(a: datetime, b: datetime) -> bool:
    """``a > b``, decided as datetime decides it."""
    if a.tzinfo is b.tzinfo:
        return a > b
    return _utc(a) > _utc(b)


# --- time passing -----------------------------------------------------------------------------


def _advance(ctx: _Context, work: _Work, until: datetime) -> datetime | None:
    """Fire every deadline after ``work.as_of`` up to ``until``, each at its own instant.

    :returns: the next deadline after ``until`` (None if there is none), i.e. the wake-up time as
        long as nothing else changes the work.
    """
    until_zone = until.tzinfo
    until_utc = _utc(until)
    for _ in range(10_000):
        due = _next_due(ctx, work)
        if due is None or (due > until if due.tzinfo is until_zone else _utc(due) > until_utc):
            return due
        _fire(ctx, work, due)
    raise RuntimeError("the engine fired 10,000 deadlines in one step; the policy loops")


def _next_due(ctx: _Context, work: _Work) -> datetime | None:
    """The earliest instant after ``work.as_of`` when something may happen by itself."""
    status = work.status
    if status is EscalationStatus.CLOSED:
        return None
    policy = ctx.policy_of(work)
    after = work.as_of
    candidates: list[datetime | None] = []
    if status is EscalationStatus.RESOLVED:
        follow = policy.follow_up
        if work.resolved_at is not None:
            if follow.follow_up_after_resolved and work.followed_up_at is None:
                candidates.append(work.resolved_at + follow.follow_up_after_resolved)
            candidates.append(work.resolved_at + follow.close_after_resolved)
        return _earliest(candidates, after)

    data = ctx.derived(policy)
    since = work.active_since
    level = work.tier
    # Everything the deadlines below are computed from, but the time asked at.
    facts = (
        work.clocks, work.notification, work.reviewed_at, work.opened_at, since, level,
        work.tier_elapsed, work.open_elapsed, work.fired_criteria,
    )
    memo = data.dues_memo
    if memo is not None and _same(memo[0], facts):
        if memo[2] is after:
            return memo[3]  # the very same question as last time
        facts, candidates = memo[0], memo[1]
    else:
        candidates = _clock_dues(ctx, policy, data, work.clocks).copy()
        notification = work.notification
        if notification.acknowledged is None:
            candidates.append(notification.next_at)
        if work.reviewed_at is None:
            candidates.append(data.review_due(work.opened_at))
        if since is not None:
            timebox = data.timeboxes.get(level)
            timed = data.timed.get(level)
            if timebox is not None or timed:
                calendar = data.tier_calendars.get(level) or data.default_calendar
                if timebox is not None:
                    candidates.append(meter_deadline(calendar, since, work.tier_elapsed, timebox.duration))
                fired = work.fired_criteria
                for criterion_id, unresolved_for, at_tier_for, when in timed or ():
                    if criterion_id in fired:
                        continue
                    if unresolved_for is not None:
                        candidates.append(meter_deadline(calendar, since, work.open_elapsed, unresolved_for))
                    if at_tier_for is not None:
                        candidates.append(meter_deadline(calendar, since, work.tier_elapsed, at_tier_for))
                    if when is not None:
                        # Depends on the time asked at: worked out below, in its place.
                        candidates.append(_LocalBoundary(when))
    found = candidates
    if since is not None and data.local_timed.get(level):
        found = [
            _next_local_boundary(policy, work, c.when, after) if type(c) is _LocalBoundary else c
            for c in candidates
            if type(c) is not _LocalBoundary or after is not None
        ]
    due = _earliest(found, after)
    data.dues_memo = (facts, candidates, after, due)
    return due


def _clock_dues(
    ctx: _Context, policy: Policy, data: _Derived, clocks: tuple[SlaClock, ...]
) -> list[datetime | None]:
    """When each running clock that has not breached next needs acting on, in order."""
    # Clocks change less often than the rest of the state (a repeat changes the notification
    # only), so the last clocks' answer is kept.
    found = data.clock_scan
    if found is None or found[0] is not clocks:
        found = data.clock_scan = (clocks, [
            ctx.clock_next(policy, clock)[1]
            for clock in clocks
            if clock.running_since is not None and clock.breached_at is None
        ])
    return found[1]


@dataclass(frozen=True)
class _LocalBoundary:
    """In a remembered deadline scan: the next local boundary of ``when``, asked anew each time."""

    when: Conditions


def _same(these: tuple[Any, ...], those: tuple[Any, ...]) -> bool:
    """True if the two tuples hold the very same objects."""
    return all(map(operator.is_, these, those))


def _earliest(candidates: list[datetime | None], after: datetime | None) -> datetime | None:
    """The earliest candidate later than ``after``; of equal ones, the first."""
    # _later written out: this runs at every step, over every deadline, and the bound is the
    # same for all of them.
    best: datetime | None = None
    best_utc: datetime | None = None
    if after is not None:
        after_zone = after.tzinfo
        after_utc = _utc(after)
    for when in candidates:
        if when is None:
            continue
        zone = when.tzinfo
        when_utc = when if zone is UTC else _utc(when)
        if after is not None and not (when > after if zone is after_zone else when_utc > after_utc):
            continue
        if best is None or (best > when if best.tzinfo is zone else best_utc > when_utc):
            best, best_utc = when, when_utc
    return best


def _next_local_boundary(policy: Policy, work: _Work, when: Conditions, after: datetime) -> datetime:
    """The next local midnight or ``between`` start: when a day/time condition may start to hold."""
    tz = zone(_tz_name(policy, work.tier))
    local = after.astimezone(tz)
    candidates = []
    midnight = datetime(local.year, local.month, local.day, tzinfo=tz) + timedelta(days=1)
    candidates.append(midnight)
    if when.between:
        hour, minute = (int(x) for x in when.between[:5].split(":"))
        start = datetime(local.year, local.month, local.day, hour, minute, tzinfo=tz)
        if start <= local:
            start += timedelta(days=1)
        candidates.append(start)
    return min(c for c in candidates).astimezone(after.tzinfo)


def _fire(ctx: _Context, work: _Work, at: datetime) -> None:
    """Everything due at ``at``: warnings, breaches, repeats, reviews, follow-ups, moves."""
    work.as_of = at
    policy = ctx.policy_of(work)
    if work.status is EscalationStatus.RESOLVED:
        _follow_up(ctx, work, at)
        return
    # Each step fires one or two things: test cheaply which before doing them.
    data = ctx.derived(policy)
    for due in _clock_dues(ctx, policy, data, work.clocks):
        if _reached(due, at):
            _check_clocks(ctx, work, at)
            break
    notification = work.notification
    if (
        notification.acknowledged is None
        and notification.next_at is not None
        and not _later(notification.next_at, at)
    ):
        _repeat_notification(ctx, work, at)
    if work.reviewed_at is None and not _later(data.review_due(work.opened_at), at):
        work.reviewed_at = at
        values = _values(policy, work)
        values.update(opened=_when(policy, work.tier, work.opened_at), open_for=format_duration(at - work.opened_at))
        body, public = _render(policy, work, at, "review-due", values)
        reason = f"open for {format_duration(at - work.opened_at)}: review due"
        actions = [_comment(policy, work, body, public, "review-due")]
        actions.extend(_notify(policy, work, _level_recipients(policy, work, 1), body))
        ctx.emit(work, "review", at, "review-due", reason.capitalize() + ".", actions=actions)
    _evaluate(ctx, work, at)


def _check_clocks(ctx: _Context, work: _Work, at: datetime) -> None:
    policy = ctx.policy_of(work)
    changed = False
    clocks = list(work.clocks)
    for index, clock in enumerate(clocks):
        if clock.running_since is None or clock.breached_at is not None:
            continue
        if not _reached(ctx.clock_next(policy, clock)[1], at):
            # Deadlines grow with the percent, so neither a warning nor the breach is due.
            continue
        for percent in _derived(policy).warn_percents:
            if percent in clock.warned_at_percent:
                continue
            due = _clock_due(policy, clock, percent)
            if not _reached(due, at):
                break
            clock = _replace(clock, warned_at_percent=(*clock.warned_at_percent, percent))
            breach = _clock_due(policy, clock, 100)
            values = _clock_values(policy, work, clock, breach)
            values["percent"] = percent
            body, public = _render(policy, work, at, "sla-warning", values)
            actions = [_comment(policy, work, body, public, "sla-warning")]
            actions.extend(_notify(policy, work, _level_recipients(policy, work, 0), body))
            ctx.emit(
                work, f"warn:{work.moves}:{clock.name}:{percent}", at, "sla-warning",
                f"{percent}% of the {clock.name} target of {format_duration(clock.target)} used at "
                f"{_tier_label(policy, work.tier)}; breach at {_when(policy, work.tier, breach)}.",
                actions=actions, to_tier=work.tier,
            )
            changed = True
        due = _clock_due(policy, clock, 100)
        if _reached(due, at):
            clock = _replace(clock, breached_at=due)
            values = _clock_values(policy, work, clock, due)
            body, public = _render(policy, work, at, "sla-breach", values)
            actions = [_comment(policy, work, body, public, "sla-breach")]
            recipients = _level_recipients(policy, work, 0) + _level_recipients(policy, work, 1)
            actions.extend(_notify(policy, work, recipients, body))
            ctx.emit(
                work, f"breach:{work.moves}:{clock.name}", at, "sla-breach",
                f"The {clock.name} target of {format_duration(clock.target)} at "
                f"{_tier_label(policy, work.tier)} is breached.",
                actions=actions, to_tier=work.tier,
            )
            changed = True
        clocks[index] = clock
    if changed:
        work.clocks = tuple(clocks)


def _repeat_notification(ctx: _Context, work: _Work, at: datetime) -> None:
    """Notify again, or the next level up; :func:`_fire` calls it when the repeat is due."""
    policy = ctx.policy_of(work)
    state = work.notification
    data = ctx.derived(policy)
    repeat_every, max_repeats = data.repeats[work.tier]
    level, sent = state.level, state.sent
    if sent - 1 < max_repeats:
        sent += 1
        what = f"repeat {sent - 1} of {max_repeats}"
    else:
        level, sent = level + 1, 1
        what = "not acknowledged; raised to the next level"
    recipients = _level_recipients(policy, work, level)
    if not recipients and level > state.level:
        work.notification = _replace(state, next_at=None)
        ctx.emit(
            work, f"notify:{work.moves}:{level}:end", at, "notification-exhausted",
            f"Nobody acknowledged {_tier_label(policy, work.tier)} and no level is left to notify.",
        )
        return
    due = state.next_at
    heard = _level_name(policy, level)
    reason = (
        f"waiting for acknowledgement since {_when(policy, work.tier, work.tier_entered_at)} "
        f"({heard}, {what})"
    )
    values = _values(policy, work)
    values["reason"] = reason
    body, _ = _render(policy, work, at, "notification", values)
    calendar = data.tier_calendars.get(work.tier) or data.default_calendar
    work.notification = _replace(
        state, level=level, sent=sent, last_sent_at=due,
        next_at=business_add(calendar, due, repeat_every) if repeat_every else None,
    )
    ctx.emit(
        work, f"notify:{work.moves}:{level}:{sent}", at, "notified",
        f"Notified {heard} ({', '.join(recipients)}): {reason}.",
        actions=_notify(policy, work, recipients, body, urgency_bonus=level),
    )


def _follow_up(ctx: _Context, work: _Work, at: datetime) -> None:
    policy = ctx.policy_of(work)
    follow = policy.follow_up
    resolved_at = work.resolved_at
    if resolved_at is None:
        return
    if follow.follow_up_after_resolved and work.followed_up_at is None and resolved_at + follow.follow_up_after_resolved <= at:
        work.followed_up_at = at
        values = _values(policy, work)
        values["resolved_for"] = format_duration(follow.follow_up_after_resolved)
        body, public = _render(policy, work, at, "follow-up", values)
        ctx.emit(
            work, f"followup:{resolved_at.isoformat()}", at, "follow-up",
            f"Resolved {format_duration(follow.follow_up_after_resolved)} ago: follow-up due.",
            actions=[_comment(policy, work, body, public, "follow-up")],
        )
    if resolved_at + follow.close_after_resolved <= at:
        work.status = EscalationStatus.CLOSED
        values = _values(policy, work)
        values["close_after"] = format_duration(follow.close_after_resolved)
        body, public = _render(policy, work, at, "closed", values)
        ctx.emit(
            work, f"close:{resolved_at.isoformat()}", at, "closed",
            f"Closed {format_duration(follow.close_after_resolved)} after resolution.",
            actions=[
                _comment(policy, work, body, public, "closed"),
                _action(policy, work, ActionKind.TRANSITION, status="closed"),
            ],
        )


# --- moves ------------------------------------------------------------------------------------


@dataclass
class _Candidate:
    path: PathKind
    to_tier: int
    department: str | None
    level: int | None
    reasons: list[str]
    criteria: list[str]
    priority: str | None = None
    bypass_timebox: bool = False
    bypass_required_information: bool = False
    source: str = ""
    event_id: str | None = None
    actor: str | None = None
    mark: str | None = None  # the fired-criteria entry a successful move records
    template: str | None = None  # the criterion's own comment template, instead of the move's


def _evaluate(
    ctx: _Context, work: _Work, at: datetime, *, event_id: str | None = None, actor: str | None = None
) -> None:
    """Make every move the policy calls for at ``at``, one after another."""
    if work.status is not EscalationStatus.OPEN:
        return
    for _ in range(8):
        policy = ctx.policy_of(work)
        candidate = _best_candidate(ctx, policy, work, at)
        if candidate is None:
            _matrix_priority(ctx, policy, work, at, event_id)
            return
        if candidate.event_id is None:
            candidate.event_id = event_id
        if not _try_move(ctx, policy, work, at, candidate):
            return


def _best_candidate(ctx: _Context, policy: Policy, work: _Work, at: datetime) -> _Candidate | None:
    data = ctx.derived(policy)
    ticket = work.ticket
    level = work.tier
    fired = work.fired_criteria
    # The pending move, the criteria that do not look at the time and the matrix decide from
    # these alone. When they found nothing for these very objects before, they find nothing now,
    # and only the candidates that depend on the time (or on plugins) are looked at again.
    facts = (
        ticket, level, fired, work.department, work.management_level, work.matrix_tier,
        work.found_keywords, work.pending_move,
    )
    quiet = data.quiet is not None and _same(data.quiet, facts)
    forced_after = data.forced_after.get(level)
    if quiet and data.timed_movers.get(level) is False:
        # Only the time-box can move it now (the same test as at the end, alone).
        if forced_after is None or f"timebox:{work.moves}" in fired:
            return None
        if not _reached(_tier_due(policy, work, forced_after), at):
            return None
    found: list[_Candidate] = []
    timeless = 0  # candidates found that do not depend on the time
    pending = work.pending_move
    if not quiet and pending is not None and (
        pending["to_tier"] > level or PathKind(pending["path"]) is not PathKind.INTERNAL
    ):
        found.append(_Candidate(**{**pending, "path": PathKind(pending["path"])}))
        timeless += 1
    movers = data.movers.get(level)
    tiers = data.tiers
    for mover in data.all_movers if movers is None else movers:
        if quiet and not mover.timed:
            continue
        if mover.id in fired:
            continue
        path = mover.path
        if path is PathKind.INTERNAL:
            to_tier = mover.to_tier
            if to_tier is None or to_tier <= level or to_tier not in tiers:
                continue
        elif path is PathKind.FUNCTIONAL:
            if mover.department == work.department or mover.department not in data.functional:
                continue
        elif (mover.level or 0) <= (work.management_level or 0):
            continue
        if not mover.screen.may_hold(policy, work):
            continue
        said = _match(ctx, policy, work, mover.when, at)
        if said is None:
            continue
        if not mover.timed:
            timeless += 1
        move = mover.then
        found.append(
            _Candidate(
                path=path,
                to_tier=move.to_tier or level,
                department=move.department,
                level=move.level,
                reasons=[f"{said} (criterion {mover.id})"],
                criteria=[mover.id],
                priority=move.priority,
                bypass_timebox=move.bypass_timebox,
                bypass_required_information=move.bypass_required_information,
                source=mover.id,
                mark=mover.id,
                template=move.template,
            )
        )
    cell = None if quiet else _cell(policy, ticket)
    if (
        cell is not None
        and cell.tier > level
        and cell.tier > (work.matrix_tier or 0)
        and cell.tier in tiers
    ):
        found.append(
            _Candidate(
                path=PathKind.INTERNAL,
                to_tier=cell.tier,
                department=None,
                level=None,
                reasons=[_matrix_reason(policy, ticket, cell.tier)],
                criteria=[_matrix_id(policy, ticket)],
                priority=cell.priority,
                source="matrix",
                mark=f"matrix:{cell.tier}",
            )
        )
        timeless += 1
    if not quiet:
        data.quiet = facts if not timeless else None
    if forced_after is not None:
        forced = f"timebox:{work.moves}"
        if forced not in fired and _reached(_tier_due(policy, work, forced_after), at):
            found.append(
                _Candidate(
                    path=PathKind.INTERNAL,
                    to_tier=level + 1,
                    department=None,
                    level=None,
                    reasons=[
                        f"the time-box of {format_duration(forced_after)} at tier {level} "
                        "ended with the ticket unresolved"
                    ],
                    criteria=[f"timebox-tier-{level}"],
                    source=f"timebox-tier-{level}",
                    mark=forced,
                )
            )
    if not found:
        return None
    internal = [c for c in found if c.path is PathKind.INTERNAL]
    if internal:
        top = max(c.to_tier for c in internal)
        chosen = [c for c in internal if c.to_tier == top]
        best = chosen[0]
        for other in chosen[1:]:
            best.reasons.extend(other.reasons)
            best.criteria.extend(other.criteria)
            best.bypass_timebox = best.bypass_timebox or other.bypass_timebox
            best.priority = best.priority or other.priority
            best.template = best.template or other.template
        return best
    return found[0]


def _try_move(ctx: _Context, policy: Policy, work: _Work, at: datetime, move: _Candidate) -> bool:
    """Carry out a move unless the time-box or the required information holds it back."""
    tier = policy.tiers_by_level.get(work.tier)
    timebox = tier.timebox if tier is not None else None
    leaving_tier = move.path is PathKind.INTERNAL or move.path is PathKind.FUNCTIONAL
    timebox_note = ""
    if timebox is not None and leaving_tier:
        ends = _tier_due(policy, work, timebox.duration)
        over = _reached(ends, at)
        if timebox.mode in ("gate", "both") and not over and not move.bypass_timebox:
            target = _place_label(policy, move.to_tier, move.department, move.level)
            values = _values(policy, work)
            values.update(
                to_tier_label=target,
                from_tier_label=_tier_label(policy, work.tier),
                timebox=format_duration(timebox.duration),
                timebox_ends=_when(policy, work.tier, ends) if ends else "the ticket runs again",
                reason="; ".join(move.reasons),
            )
            body, public = _render(policy, work, at, "timebox-refused", values)
            ctx.emit(
                work, f"gate:{work.moves}:{move.source or move.event_id}", at, "move-refused",
                f"Not moved to {target}: the time-box of {format_duration(timebox.duration)} at tier "
                f"{work.tier} runs until {values['timebox_ends']}; {'; '.join(move.reasons)}.",
                actions=[_comment(policy, work, body, public, "timebox-refused")],
                from_tier=work.tier, to_tier=move.to_tier, criteria=tuple(move.criteria),
                event_id=move.event_id, actor=move.actor,
            )
            if move.source.startswith("manual:"):
                work.pending_move = None
            return False
        if timebox.mode in ("gate", "both"):
            timebox_note = (
                f"time-box bypassed ({'; '.join(move.criteria)})"
                if not over
                else f"time-box of {format_duration(timebox.duration)} at tier {work.tier} is over"
            )
    if move.path is PathKind.INTERNAL and not move.bypass_required_information:
        missing = _missing_information(policy, work, move.to_tier)
        if missing:
            target_tier = policy.tiers_by_level[move.to_tier]
            labels = ", ".join(item.label for item in missing)
            values = _values(policy, work)
            values.update(tier_name=target_tier.name, missing=labels, to_tier_label=_tier_label(policy, move.to_tier))
            body, public = _render(policy, work, at, target_tier.missing_information_template, values)
            ids = ",".join(item.id for item in missing)
            ctx.emit(
                work, f"missing:{work.moves}:{move.to_tier}:{ids}", at, "missing-information",
                f"Not moved to {_tier_label(policy, move.to_tier)} yet: {labels} missing; "
                f"{'; '.join(move.reasons)}.",
                actions=[_comment(policy, work, body, public, target_tier.missing_information_template)],
                from_tier=work.tier, to_tier=move.to_tier, criteria=tuple(move.criteria),
                event_id=move.event_id, actor=move.actor,
            )
            work.pending_move = {
                "path": move.path.value, "to_tier": move.to_tier, "department": move.department,
                "level": move.level, "reasons": list(move.reasons), "criteria": list(move.criteria),
                "priority": move.priority, "bypass_timebox": True, "source": move.source,
                "event_id": move.event_id, "actor": move.actor, "mark": move.mark,
                "template": move.template,
            }
            return False
    if move.mark:
        work.fired_criteria = (*work.fired_criteria, move.mark)
    reason = "; ".join(move.reasons)
    if timebox_note:
        reason = f"{reason}; {timebox_note}"
    if move.path is PathKind.INTERNAL:
        kind = "escalated"
    elif move.path is PathKind.FUNCTIONAL:
        kind = "functional"
    else:
        kind = "hierarchical"
    _enter(
        ctx, work, at, tier=move.to_tier, path=move.path, department=move.department,
        level=move.level, reason=reason, criteria=tuple(move.criteria), kind=kind,
        event_id=move.event_id, priority=move.priority, actor=move.actor, template=move.template,
    )
    if move.source == "matrix":
        work.matrix_tier = move.to_tier
    return True


def _requested_escalation(ctx: _Context, work: _Work, at: datetime, event: TicketEvent) -> None:
    policy = ctx.policy_of(work)
    who = event.actor or "an agent"
    why = f"requested by {who}" + (f": {event.reason}" if event.reason else "")
    path = event.path or (PathKind.FUNCTIONAL if event.department else PathKind.INTERNAL)
    problem = None
    to_tier, department, level = work.tier, None, None
    if path is PathKind.FUNCTIONAL:
        department = event.department
        if department not in policy.paths.functional:
            known = ", ".join(sorted(policy.paths.functional)) or "none"
            problem = f"'{department}' is not a department of the policy (known: {known})"
        elif department == work.department:
            problem = f"the ticket is already with {policy.paths.functional[department].name}"
    elif path is PathKind.HIERARCHICAL:
        level = event.requested_tier or (work.management_level or 0) + 1
        levels = {m.level for m in policy.paths.hierarchical}
        if level not in levels:
            problem = f"there is no management level {level}"
        elif level <= (work.management_level or 0):
            problem = f"management level {work.management_level} is already involved"
    else:
        to_tier = event.requested_tier or work.tier + 1
        if to_tier not in policy.tiers_by_level:
            problem = f"there is no tier {to_tier} (tiers: {', '.join(map(str, sorted(policy.tiers_by_level)))})"
        elif to_tier <= work.tier:
            problem = (
                f"the ticket is already at {_tier_label(policy, work.tier)}; "
                "ask for a de-escalation to move it down"
            )
    if problem is not None:
        values = _values(policy, work)
        values["reason"] = problem
        body, public = _render(policy, work, at, "escalation-refused", values)
        ctx.emit(
            work, f"refuse:{event.id}", at, "move-refused", f"Escalation not made: {problem}.",
            actions=[_comment(policy, work, body, public, "escalation-refused")],
            event_id=event.id, actor=event.actor, from_tier=work.tier,
        )
        return
    candidate = _Candidate(
        path=path, to_tier=to_tier, department=department, level=level, reasons=[why],
        criteria=["manual"], source=f"manual:{event.id}", event_id=event.id, actor=event.actor,
    )
    _try_move(ctx, policy, work, at, candidate)


def _requested_deescalation(ctx: _Context, work: _Work, at: datetime, event: TicketEvent) -> None:
    policy = ctx.policy_of(work)
    who = event.actor or "an agent"
    why = f"requested by {who}" + (f": {event.reason}" if event.reason else "")
    leave_department = work.department is not None and (
        event.path is PathKind.FUNCTIONAL or event.requested_tier is None
    )
    to_tier = work.tier if leave_department else (event.requested_tier or work.tier - 1)
    problem = None
    if not leave_department and (to_tier not in policy.tiers_by_level or to_tier >= work.tier):
        problem = f"tier {to_tier} is not below {_tier_label(policy, work.tier)}"
    else:
        problem = _hysteresis(policy, work, at)
    if problem is not None:
        values = _values(policy, work)
        values["reason"] = problem
        body, public = _render(policy, work, at, "deescalation-refused", values)
        ctx.emit(
            work, f"dnrefuse:{event.id}", at, "move-refused", f"De-escalation not made: {problem}.",
            actions=[_comment(policy, work, body, public, "deescalation-refused")],
            event_id=event.id, actor=event.actor, from_tier=work.tier, to_tier=to_tier,
        )
        return
    _deescalate(ctx, work, at, to_tier, why, ("manual",), event, leave_department=leave_department)


def _deescalation_rules(ctx: _Context, work: _Work, at: datetime, event: TicketEvent) -> None:
    policy = ctx.policy_of(work)
    data = ctx.derived(policy)
    screens = data.screens
    for rule in data.deescalation_rules:
        if rule.to_tier >= work.tier or rule.to_tier not in policy.tiers_by_level:
            continue
        if not screens[id(rule.when)].may_hold(policy, work):
            continue
        said = _match(ctx, policy, work, rule.when, at)
        if said is None:
            continue
        if _hysteresis(policy, work, at) is not None:
            return  # the next update after the hysteresis will try again
        _deescalate(ctx, work, at, rule.to_tier, f"{said} (rule {rule.id})", (rule.id,), event, leave_department=False)
        return


def _hysteresis(policy: Policy, work: _Work, at: datetime) -> str | None:
    wait = policy.deescalation.min_time_at_tier
    if at - work.tier_entered_at < wait:
        return (
            f"it has been at {_tier_label(policy, work.tier)} only since "
            f"{_when(policy, work.tier, work.tier_entered_at)}; a move down needs {format_duration(wait)} "
            f"there (possible from {_when(policy, work.tier, work.tier_entered_at + wait)})"
        )
    return None


def _deescalate(
    ctx: _Context, work: _Work, at: datetime, to_tier: int, why: str, criteria: tuple[str, ...],
    event: TicketEvent, *, leave_department: bool,
) -> None:
    work.pending_move = None
    _enter(
        ctx, work, at, tier=to_tier, path=PathKind.INTERNAL,
        department=None if leave_department else work.department, level=None, reason=why,
        criteria=criteria, kind="deescalated", event_id=event.id, priority=None, actor=event.actor,
        leaving_department=leave_department,
    )


def _enter(
    ctx: _Context,
    work: _Work,
    at: datetime,
    *,
    tier: int,
    path: PathKind,
    department: str | None,
    level: int | None,
    reason: str,
    criteria: tuple[str, ...],
    kind: str,
    event_id: str | None,
    priority: str | None,
    actor: str | None = None,
    leaving_department: bool = False,
    template: str | None = None,
) -> None:
    """Enter a placement: restart clocks and notifications, say so upstream, adopt the policy.

    :param template: the comment template to write instead of the one named after ``kind``
        (a criterion's ``then.template``).
    """
    decided_by = ctx.policy_of(work)
    policy = ctx.current
    opening = kind == "opened"
    from_tier, from_department = work.tier, work.department
    if tier not in policy.tiers_by_level:
        tier = max(t for t in policy.tiers_by_level if t <= max(tier, min(policy.tiers_by_level)))
    _bank(decided_by, work, at)
    adopted = ""
    if work.policy_version != ctx.version:
        adopted = f" Policy version {ctx.version} adopted (was {work.policy_version})."
    work.policy_version = ctx.version
    hierarchical = path is PathKind.HIERARCHICAL
    if not hierarchical:
        work.tier = tier
        work.tier_elapsed = _ZERO
        work.tier_entered_at = at
        if path is PathKind.FUNCTIONAL:
            work.department = department
        elif leaving_department:
            work.department = None
    else:
        work.management_level = level
    work.path = path if not leaving_department else PathKind.INTERNAL
    work.moves += 1
    if not opening:
        work.last_move_at = at
    work.pending_move = None
    cell = _cell(policy, work.ticket)
    new_priority = priority or (cell.priority if cell is not None else None)
    if new_priority:
        work.priority = new_priority
    if not hierarchical:
        work.clocks = _new_clocks(policy, work, at)
        repeat_every, _ = _repeat_settings(policy, work)
        work.notification = _construct(NotificationState, dict(
            level=0, sent=1, last_sent_at=at,
            next_at=business_add(_calendar(policy, work), at, repeat_every) if repeat_every else None,
        ))
        work.raci = _raci(policy, work)
    top = tier == ctx.data.last_tier and kind in ("escalated", "opened") and tier > 1
    skipped = kind == "escalated" and tier - from_tier > 1
    notify_accountable = not hierarchical and (top or skipped)
    if opening and tier == ctx.data.first_tier:
        template = None
    else:
        template = template or kind
    actions = _entry_actions(
        policy, work, None if opening else from_tier, None if opening else from_department, template,
        reason, notify_accountable=notify_accountable, new_priority=new_priority,
        assign=not hierarchical,
    )
    if hierarchical:
        label = _place_label(policy, work.tier, None, level)
        sentence = f"Raised to {label}: {reason}."
    elif kind == "deescalated":
        sentence = f"De-escalated from {_tier_label(policy, from_tier)} to {_tier_label(policy, tier)}: {reason}."
    elif path is PathKind.FUNCTIONAL:
        sentence = f"Handed from {_tier_label(policy, from_tier)} to {_place_label(policy, tier, department, None)}: {reason}."
    elif opening:
        sentence = f"Opened at {_tier_label(policy, tier)}: {reason}."
    else:
        sentence = f"Escalated from {_tier_label(policy, from_tier)} to {_tier_label(policy, tier)}: {reason}."
    if notify_accountable and work.raci.accountable:
        sentence += f" Accountable notified ({', '.join(work.raci.accountable)})."
    ctx.emit(
        work,
        f"move:{work.moves}:{path.value}:{work.tier}:{work.department or ''}:{work.management_level or ''}",
        at, kind, sentence + adopted, actions=actions, policy=decided_by,
        from_tier=None if opening else from_tier, to_tier=tier, path=path, criteria=criteria,
        actor=actor, event_id=event_id,
    )


def _entry_actions(
    policy: Policy,
    work: _Work,
    from_tier: int | None,
    from_department: str | None,
    template: str | None,
    reason: str,
    *,
    notify_accountable: bool,
    new_priority: str | None = None,
    assign: bool = True,
) -> list[dict[str, Any]]:
    """Assign, re-tag, prioritise, add watchers, notify and comment for the current placement."""
    actions: list[dict[str, Any]] = []
    if _target(policy, work) and assign:
        actions.append(_action(policy, work, ActionKind.ASSIGN))
    wanted = _placement_tags(policy, work.tier, work.department, work.management_level)
    if from_tier is not None:
        old = _placement_tags(policy, from_tier, from_department, None)
        removed = tuple(t for t in old if t not in wanted)
        if removed:
            actions.append(_action(policy, work, ActionKind.REMOVE_TAGS, tags=removed))
    actions.append(_action(policy, work, ActionKind.ADD_TAGS, tags=wanted))
    if new_priority and new_priority != work.ticket.priority:
        actions.append(_action(policy, work, ActionKind.SET_PRIORITY, priority=new_priority))
    watchers = _consulted_refs(policy, work.raci.consulted, work.ticket.system)
    if work.management_level is not None:
        watchers += tuple(
            _person_ref(policy, name, work.ticket.system)
            for name in _management_people(policy, work.management_level)
        )
    if watchers:
        actions.append(_action(policy, work, ActionKind.ADD_WATCHERS, watchers=tuple(dict.fromkeys(watchers))))
    recipients = _level_recipients(policy, work, 0)
    if notify_accountable:
        recipients = (*recipients, *[r for r in _level_recipients(policy, work, 1) if r not in recipients])
    if work.management_level is not None and work.path is PathKind.HIERARCHICAL:
        recipients = _management_people(policy, work.management_level)
    values = _values(policy, work)
    values.update(
        from_tier_label=_tier_label(policy, from_tier) if from_tier is not None else "",
        to_tier_label=_place_label(policy, work.tier, work.department, work.management_level if work.path is PathKind.HIERARCHICAL else None),
        reason=reason,
    )
    body, public = _render(policy, work, work.as_of, "notification", values)
    actions.extend(_notify(policy, work, recipients, body))
    if template is not None:
        text, public = _render(policy, work, work.as_of, template, values)
        actions.append(_comment(policy, work, text, public, template))
    return actions


def _matrix_priority(
    ctx: _Context, policy: Policy, work: _Work, at: datetime, event_id: str | None
) -> None:
    """A new matrix cell at the same tier: set its priority and re-target the clocks."""
    cell = _cell(policy, work.ticket)
    if cell is None or not cell.priority or cell.priority == work.priority or cell.tier > work.tier:
        return
    work.priority = cell.priority
    work.clocks = _retarget(policy, work)
    ctx.emit(
        work, f"priority:{work.moves}:{cell.priority}", at, "priority",
        f"Priority set to {cell.priority}: {_matrix_reason(policy, work.ticket, cell.tier)}.",
        actions=[_action(policy, work, ActionKind.SET_PRIORITY, priority=cell.priority)]
        if cell.priority != work.ticket.priority
        else [],
        criteria=(_matrix_id(policy, work.ticket),), event_id=event_id,
    )


# --- conditions -------------------------------------------------------------------------------


def _match(ctx: _Context, policy: Policy, work: _Work, when: Conditions, at: datetime) -> str | None:
    """Why ``when`` holds at ``at``, in words; None if it does not."""
    ticket = work.ticket
    said: list[str] = []
    if when.tier and work.tier not in when.tier:
        return None
    if when.severity:
        if ticket.severity not in when.severity:
            return None
        said.append(f"severity {ticket.severity}")
    if when.priority:
        if ticket.priority not in when.priority:
            return None
        said.append(f"priority {ticket.priority}")
    if when.status:
        if ticket.status_category not in when.status:
            return None
        said.append(f"status {ticket.status_category.value}")
    if when.users_affected_at_least is not None:
        users = ticket.users_affected or 0
        if users < when.users_affected_at_least:
            return None
        said.append(f"{users} users affected")
    if when.organizations:
        if ticket.organization not in when.organizations:
            return None
        said.append(f"customer {ticket.organization}")
    if when.tags_any:
        tags = [t for t in when.tags_any if t in ticket.tags]
        if not tags:
            return None
        said.append("tagged " + ", ".join(tags))
    if when.vip is not None:
        vip = _vip(policy, ticket)
        if bool(vip) != when.vip:
            return None
        said.append(f"VIP customer ({vip})" if vip else "not a VIP customer")
    if when.keywords_any:
        words = _keywords_present(work, when.keywords_any)
        if not words:
            return None
        said.append("mentions " + ", ".join(f"'{w}'" for w in words))
    if when.days or when.between:
        local = at.astimezone(zone(_tz_name(policy, work.tier)))
        if when.days:
            day = _WEEKDAYS[local.weekday()]
            if day not in when.days:
                return None
            said.append(f"on a {day}")
        if when.between:
            start, end = when.between.split("-")
            now = local.strftime("%H:%M")
            inside = start <= now < end if start <= end else (now >= start or now < end)
            if not inside:
                return None
            said.append(f"between {when.between} local time")
    if when.unresolved_for is not None:
        if not _reached(_open_due(policy, work, when.unresolved_for), at):
            return None
        said.append(f"unresolved for {format_duration(when.unresolved_for)} of business time")
    if when.at_tier_for is not None:
        if not _reached(_tier_due(policy, work, when.at_tier_for), at):
            return None
        said.append(f"at tier {work.tier} for {format_duration(when.at_tier_for)} of business time")
    for name, options in when.extra.items():
        spec = ctx.extra.get(name)
        if spec is None:
            return None  # a criterion whose plugin is not installed never matches
        parsed = spec.options_model.model_validate(options)
        if not spec.matches(ticket, work.freeze(), at, parsed):
            return None
        said.append(spec.describe(parsed) if spec.describe else name)
    return " and ".join(said) if said else "always"


def _keywords_present(work: _Work, keywords: Iterable[str]) -> list[str]:
    text = _ticket_text(work.ticket)
    return [k for k in keywords if k.lower() in text or k.lower() in work.found_keywords]


def _ticket_text(ticket: Ticket) -> str:
    """The subject and description of ``ticket``, lowercased, for keyword searches."""
    global _last_text
    if _last_text[0] is not ticket:  # a decision searches the same ticket again and again
        _last_text = (ticket, f"{ticket.subject}\n{ticket.description}".lower())
    return _last_text[1]


_last_text: tuple[Ticket | None, str] = (None, "")


class _Mover:
    """A criterion as the candidate search reads it: its parts taken out of the models once."""

    __slots__ = (
        "criterion", "id", "when", "then", "path", "to_tier", "department", "level", "screen",
        "timed",
    )

    def __init__(self, criterion: Criterion, screen: _Screen):
        self.criterion = criterion
        self.id = criterion.id
        self.when = criterion.when
        self.then = move = criterion.then
        self.path = move.path
        self.to_tier = move.to_tier
        self.department = move.department
        self.level = move.level
        self.screen = screen
        self.timed = screen.timed


class _Screen:
    """The conditions of a criterion that the ticket alone decides, to check before :func:`_match`.

    :func:`_match` tells in words why conditions hold, which costs more than the test itself, and
    nearly every test fails. This checks the same conditions the same way without the words: if
    one fails, :func:`_match` would return None before reaching plugin conditions, so skipping it
    changes nothing. Conditions on time are left to :func:`_match`.
    """

    __slots__ = (
        "tier", "severity", "priority", "status", "users", "organizations", "tags", "vip", "keywords",
        "timed",
    )

    def __init__(self, when: Conditions):
        self.tier = tuple(when.tier) or None
        self.severity = tuple(when.severity) or None
        self.priority = tuple(when.priority) or None
        self.status = tuple(when.status) or None
        self.users = when.users_affected_at_least
        self.organizations = tuple(when.organizations) or None
        self.tags = frozenset(when.tags_any) or None
        self.vip = when.vip
        self.keywords = tuple(k.lower() for k in when.keywords_any) or None
        # Whether the conditions may hold at one time and not at another, or need a plugin.
        self.timed = bool(
            when.days or when.between or when.unresolved_for is not None
            or when.at_tier_for is not None or when.extra
        )

    def may_hold(self, policy: Policy, work: _Work) -> bool:
        ticket = work.ticket
        if self.tier is not None and work.tier not in self.tier:
            return False
        if self.severity is not None and ticket.severity not in self.severity:
            return False
        if self.priority is not None and ticket.priority not in self.priority:
            return False
        if self.status is not None and ticket.status_category not in self.status:
            return False
        if self.users is not None and (ticket.users_affected or 0) < self.users:
            return False
        if self.organizations is not None and ticket.organization not in self.organizations:
            return False
        if self.tags is not None and self.tags.isdisjoint(ticket.tags):
            return False
        if self.vip is not None and bool(_vip(policy, ticket)) != self.vip:
            return False
        if self.keywords is not None:
            # What _keywords_present finds, with the keywords lowercased beforehand.
            text = _ticket_text(ticket)
            found = work.found_keywords
            for word in self.keywords:
                if word in text or word in found:
                    return True
            return False
        return True


def _vip(policy: Policy, ticket: Ticket) -> str | None:
    customers = policy.customers
    if ticket.organization and ticket.organization in customers.vip_organizations:
        return ticket.organization
    tags = [t for t in customers.vip_tags if t in ticket.tags]
    if tags:
        return f"tag {tags[0]}"
    if customers.value_field and customers.vip_value_at_least is not None:
        value = ticket.fields.get(customers.value_field)
        if isinstance(value, int | float) and value >= customers.vip_value_at_least:
            return f"{customers.value_field} {value}"
    return None


def _missing_information(policy: Policy, work: _Work, tier: int) -> list[Any]:
    spec = policy.tiers_by_level.get(tier)
    if spec is None:
        return []
    ticket = work.ticket
    missing = []
    for item in spec.required_information:
        if item.field and ticket.fields.get(item.field) not in (None, "", [], {}):
            continue
        if item.tag and item.tag in ticket.tags:
            continue
        if item.keywords and _keywords_present(work, item.keywords):
            continue
        missing.append(item)
    return missing


def _ask_missing_information(ctx: _Context, work: _Work, at: datetime, tier: int, event_id: str) -> None:
    policy = ctx.current
    missing = _missing_information(policy, work, tier)
    if not missing:
        return
    spec = policy.tiers_by_level[tier]
    labels = ", ".join(item.label for item in missing)
    values = _values(policy, work)
    values.update(tier_name=spec.name, missing=labels, to_tier_label=_tier_label(policy, tier))
    body, public = _render(policy, work, at, spec.missing_information_template, values)
    ids = ",".join(item.id for item in missing)
    ctx.emit(
        work, f"missing:{work.moves}:{tier}:{ids}", at, "missing-information",
        f"{_tier_label(policy, tier)} needs: {labels}.",
        actions=[_comment(policy, work, body, public, spec.missing_information_template)],
        to_tier=tier, event_id=event_id,
    )


def _matrix_id(policy: Policy, ticket: Ticket) -> str:
    return f"matrix:{ticket.severity}/{_derived(policy).impact_of(ticket.users_affected)}"


def _matrix_reason(policy: Policy, ticket: Ticket, tier: int) -> str:
    impact = _derived(policy).impact_of(ticket.users_affected)
    users = ticket.users_affected or 0
    return (
        f"severity {ticket.severity} with {impact} impact ({users} users affected) calls for tier "
        f"{tier} in the matrix"
    )


# --- clocks, RACI, notifications --------------------------------------------------------------


def _sla_targets(policy: Policy, work: _Work) -> tuple[timedelta | None, timedelta | None]:
    tier = policy.tiers_by_level[work.tier]
    ack, resolve = tier.sla.acknowledge, tier.sla.resolve
    cell = _cell(policy, work.ticket)
    if cell is not None:
        ack = cell.sla.acknowledge or ack
        resolve = cell.sla.resolve or resolve
    if work.department is not None and work.department in policy.paths.functional:
        sla = policy.paths.functional[work.department].sla
        ack = sla.acknowledge or ack
        resolve = sla.resolve or resolve
    return ack, resolve


def _new_clocks(policy: Policy, work: _Work, at: datetime) -> tuple[SlaClock, ...]:
    calendar = policy.tiers_by_level[work.tier].calendar or policy.default_calendar
    running = at if work.active_since is not None else None
    clocks = []
    for name, target in zip(("acknowledge", "resolve"), _sla_targets(policy, work), strict=True):
        if target is not None:
            clocks.append(
                _construct(SlaClock, dict(
                    name=name, calendar=calendar, target=target, started_at=at,
                    elapsed_before=_ZERO, running_since=running, warned_at_percent=(),
                    breached_at=None, stopped_at=None, paused_total=_ZERO,
                ))
            )
    return tuple(clocks)


def _retarget(policy: Policy, work: _Work) -> tuple[SlaClock, ...]:
    targets = dict(zip(("acknowledge", "resolve"), _sla_targets(policy, work), strict=True))
    return tuple(
        _replace(c, target=targets[c.name]) if targets.get(c.name) else c for c in work.clocks
    )


def _repeat_settings(policy: Policy, work: _Work) -> tuple[timedelta | None, int]:
    return _derived(policy).repeats[work.tier]


def _repeat_settings_of(policy: Policy, level: int) -> tuple[timedelta | None, int]:
    notify = policy.tiers_by_level[level].notify
    every = notify.repeat_every or policy.notifications.repeat_every
    repeats = notify.max_repeats if notify.max_repeats is not None else policy.notifications.max_repeats
    return every, repeats


def _raci_spec(policy: Policy, work: _Work) -> RaciSpec:
    if work.department is not None and work.department in policy.paths.functional:
        return policy.paths.functional[work.department].raci
    return policy.tiers_by_level[work.tier].raci


def _raci(policy: Policy, work: _Work) -> RACI:
    table = _derived(policy).placement
    key = ("raci", work.tier, work.department)
    found = table.get(key)
    if found is None:
        spec = _raci_spec(policy, work)
        found = table[key] = RACI(
            responsible=tuple(spec.responsible),
            accountable=tuple(spec.accountable),
            consulted=tuple(spec.consulted),
            informed=tuple(spec.informed),
        )
    return found


class _Place:
    """Where one placement's actions go and who hears of it: fixed per tier, department and
    ticket system, so worked out once per policy (see :func:`_place`)."""

    __slots__ = ("target", "channels", "recipients", "people")

    def __init__(self, policy: Policy, work: _Work):
        self.target = _find_target(policy, work)
        self.channels = tuple(_find_channels(policy, work))
        self.recipients: dict[int, tuple[str, ...]] = {}  # by notification level, on first use
        self.people: dict[tuple[str, ...], tuple[str, ...]] = {}  # recipients -> their addresses


def _place(policy: Policy, work: _Work) -> _Place:
    """The :class:`_Place` of the work's current placement under ``policy``."""
    global _last_place
    data = _derived(policy)
    ticket = work.ticket
    tier, department = work.tier, work.department
    last = _last_place
    if last[0] is data and last[1] is ticket and last[2] == tier and last[3] == department:
        return last[4]  # a decision asks about the same placement again and again
    key = (tier, department, ticket.system)
    place = data.places.get(key)
    if place is None:
        place = data.places[key] = _Place(policy, work)
    _last_place = (data, ticket, tier, department, place)
    return place


_last_place: tuple[Any, ...] = (None, None, None, None, None)


def _target(policy: Policy, work: _Work) -> dict[str, Any] | None:
    return _place(policy, work).target


def _find_target(policy: Policy, work: _Work) -> dict[str, Any] | None:
    system = work.ticket.system
    if work.department is not None and work.department in policy.paths.functional:
        found = policy.paths.functional[work.department].targets.get(system)
        if found:
            return found
    return policy.tiers_by_level[work.tier].targets.get(system)


def _management_people(policy: Policy, level: int) -> tuple[str, ...]:
    for rung in policy.paths.hierarchical:
        if rung.level == level:
            return tuple(rung.people)
    return ()


def _level_recipients(policy: Policy, work: _Work, level: int) -> tuple[str, ...]:
    """Who hears at notification ``level``: 0 Responsible and Informed, 1 Accountable, 2+ managers."""
    table = _place(policy, work).recipients
    found = table.get(level)
    if found is None:
        found = table[level] = tuple(_find_recipients(policy, work, level))
    return found


def _find_recipients(policy: Policy, work: _Work, level: int) -> list[str]:
    spec = _raci_spec(policy, work)
    if level == 0:
        names: list[str] = []
        for entry in (*spec.responsible, *spec.informed):
            if entry.startswith("channel:"):
                continue
            if entry == "target":
                target = _target(policy, work) or {}
                who = target.get("assignee") or target.get("group") or target.get("address")
                if who:
                    names.append(str(who))
                continue
            names.append(entry)
        return list(dict.fromkeys(names))
    if level == 1:
        return list(spec.accountable)
    rungs = _derived(policy).rungs
    if level - 2 < len(rungs):
        return list(rungs[level - 2].people)
    return []


def _level_name(policy: Policy, level: int) -> str:
    if level == 0:
        return "Responsible and Informed"
    if level == 1:
        return "Accountable"
    rungs = _derived(policy).rungs
    return rungs[level - 2].name if level - 2 < len(rungs) else f"level {level}"


def _channels(policy: Policy, work: _Work) -> tuple[str, ...]:
    return _place(policy, work).channels


def _find_channels(policy: Policy, work: _Work) -> list[str]:
    spec = _raci_spec(policy, work)
    channels = list(policy.tiers_by_level[work.tier].notify.channels or policy.notifications.default_channels)
    channels.extend(e.removeprefix("channel:") for e in spec.informed if e.startswith("channel:"))
    # "people" means: no channel is configured, reach the recipients directly.
    return list(dict.fromkeys(channels)) or ["people"]


def _notify(
    policy: Policy, work: _Work, recipients: Iterable[str], body: str, *, urgency_bonus: int = 0
) -> list[dict[str, Any]]:
    place = _place(policy, work)
    recipients = tuple(recipients)
    people = place.people.get(recipients)
    if people is None:
        people = place.people[recipients] = tuple(_person_ref(policy, name, "email") for name in recipients)
    target = place.target
    tier = work.tier
    urgency = tier * 10 + urgency_bonus
    actions = []
    for channel in place.channels:
        actions.append({
            "kind": ActionKind.NOTIFY, "tier": tier, "urgency": urgency, "target": target,
            "channel": channel, "recipients": people, "body": body,
        })
    return actions


def _comment(policy: Policy, work: _Work, body: str, public: bool, template: str) -> dict[str, Any]:
    return _action(policy, work, ActionKind.COMMENT, body=body, public=public, template=template)


def _action(policy: Policy, work: _Work, kind: ActionKind, *, urgency_bonus: int = 0, **fields: Any) -> dict[str, Any]:
    tier = work.tier
    return {
        "kind": kind, "tier": tier, "urgency": tier * 10 + urgency_bonus,
        "target": _target(policy, work), **fields,
    }


def _consulted_refs(policy: Policy, consulted: tuple[str, ...], system: str) -> tuple[str, ...]:
    """:func:`_person_ref` of each of ``consulted``; the same few lists come up at every move."""
    table = _derived(policy).placement
    key = ("consulted", consulted, system)
    found = table.get(key)
    if found is None:
        found = table[key] = tuple(_person_ref(policy, name, system) for name in consulted)
    return found


def _person_ref(policy: Policy, name: str, system: str) -> str:
    person = policy.people.get(name)
    if person is None:
        return name
    if system == "jira" and person.jira:
        return person.jira
    if system == "zendesk" and person.zendesk is not None:
        return str(person.zendesk)
    if system == "email" and person.email:
        return person.email
    return name


def _placement_tags(policy: Policy, tier: int, department: str | None, level: int | None) -> tuple[str, ...]:
    table = _derived(policy).placement
    key = ("tags", tier, department, level)
    found = table.get(key)
    if found is None:
        found = table[key] = _find_placement_tags(policy, tier, department, level)
    return found


def _find_placement_tags(
    policy: Policy, tier: int, department: str | None, level: int | None
) -> tuple[str, ...]:
    prefix = policy.tag_prefix
    tags = [f"{prefix}-tier-{tier}"]
    spec = policy.tiers_by_level.get(tier)
    if spec is not None:
        tags.extend(spec.tags)
    if department:
        tags.append(f"{prefix}-dept-{department}")
    if level:
        tags.append(f"{prefix}-mgmt-{level}")
    return tuple(dict.fromkeys(tags))


# --- words ------------------------------------------------------------------------------------


def _tier_label(policy: Policy, tier: int | None) -> str:
    if tier is None:
        return "no tier"
    found = _derived(policy).tier_labels.get(tier)
    if found is not None:
        return found
    spec: TierSpec | None = policy.tiers_by_level.get(tier)
    return f"tier {tier} ({spec.name})" if spec is not None else f"tier {tier}"


def _place_label(policy: Policy, tier: int, department: str | None, level: int | None) -> str:
    if level:
        rung = next((m for m in policy.paths.hierarchical if m.level == level), None)
        return f"management level {level} ({rung.name})" if rung else f"management level {level}"
    if department and department in policy.paths.functional:
        return f"{policy.paths.functional[department].name} ({department})"
    return _tier_label(policy, tier)


def _tz_name(policy: Policy, tier: int) -> str:
    spec = policy.tiers_by_level.get(tier)
    name = (spec.calendar if spec is not None else None) or policy.default_calendar
    return policy.calendars[name].timezone


def _when(policy: Policy, tier: int, at: datetime | None) -> str:
    """A time as people at ``tier`` read it: their local day, time and zone."""
    if at is None:
        return "never"
    tz = _derived(policy).tier_zones.get(tier) or zone(_tz_name(policy, tier))
    # The same instants are written again and again (a breach time in every warning, the tier's
    # entry in every repeat), so the text is remembered per datetime object and zone; the entry
    # keeps the object, so its id is not reused while it is there.
    key = (id(at), tz)
    found = _WRITTEN.get(key)
    if found is not None and found[0] is at:
        return found[1]
    local = at.astimezone(tz)
    # strftime("%a %Y-%m-%d %H:%M %Z") in the C locale, which is what Escalier writes, at a
    # fraction of the cost.
    text = (
        f"{_DAY_NAMES[local.weekday()]} {local.year}-{local.month:02d}-{local.day:02d} "
        f"{local.hour:02d}:{local.minute:02d} {local.tzname() or ''}"
    )
    if len(_WRITTEN) >= _CACHE_LIMIT:
        _WRITTEN.clear()
    _WRITTEN[key] = (at, text)
    return text


_WRITTEN: dict[tuple[int, Any], tuple[datetime, str]] = {}


def _values(policy: Policy, work: _Work) -> dict[str, Any]:
    """The placeholders every template may use; ``now`` is added by :func:`_render`."""
    global _last_values
    data = _derived(policy)  # compared rather than the policy, which the slot must not keep alive
    ticket, tier, priority = work.ticket, work.tier, work.priority
    last = _last_values
    if last[0] is data and last[1] is ticket and last[2] == tier and last[3] == priority:
        return last[4].copy()  # the same ticket at the same tier fills the same values
    spec = policy.tiers_by_level.get(tier)
    values = {
        "system": ticket.system,
        "ticket_id": ticket.id,
        "subject": ticket.subject,
        "tier": tier,
        "tier_name": spec.name if spec is not None else "",
        "tier_label": _tier_label(policy, tier),
        "priority": priority or ticket.priority or "",
        "severity": ticket.severity or "",
        "reason": "",
    }
    _last_values = (data, ticket, tier, priority, values)
    return values.copy()


_last_values: tuple[Any, ...] = (None, None, None, None, None)


def _render(
    policy: Policy, work: _Work, at: datetime | None, name: str, values: dict[str, Any]
) -> tuple[str, bool]:
    """:func:`render` template ``name`` with ``values`` and ``now``, the time ``at`` at the tier."""
    # Writing a time is the dearest placeholder and few templates show it: fill it only for those.
    fields = _template_fields(policy, name)
    if fields is None or "now" in fields:
        values["now"] = _when(policy, work.tier, at)
    return render(policy.templates, name, values)


def _template_fields(policy: Policy, name: str) -> frozenset[str] | None:
    """The placeholders template ``name`` fills, by their first name; None when unsure."""
    known = _derived(policy).template_fields
    try:
        return known[name]
    except KeyError:
        pass
    spec = policy.templates.get(name) or DEFAULT_TEMPLATES.get(name)
    text = spec.text if spec is not None else "[escalier] {reason}"
    found: frozenset[str] | None
    try:
        names = set()
        for _, field, spec_text, _ in _FORMATTER.parse(text):
            if field is None:
                continue
            if spec_text and "{" in spec_text:
                raise ValueError("a placeholder inside a format spec")
            names.add(_FIELD_ROOT.split(field, 1)[0])
        found = frozenset(names)
    except ValueError:  # whatever render makes of it, it may use any value
        found = None
    known[name] = found
    return found


_FORMATTER = string.Formatter()
_FIELD_ROOT = re.compile(r"[.\[]")


def _clock_values(
    policy: Policy, work: _Work, clock: SlaClock, due: datetime | None
) -> dict[str, Any]:
    values = _values(policy, work)
    values.update(clock=clock.name, target=format_duration(clock.target), due=_when(policy, work.tier, due))
    return values
