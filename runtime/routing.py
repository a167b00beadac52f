"""Notices to the connection of their channel's kind: a Jira ticket's escalation notice by mail.

A ``notify`` action names a channel of the policy (``notifications.channels.<name>``, or
``people`` when none is configured). When the channel's ``kind`` is a registered channel kind
that names a connector with a configured connection in this worker (kind ``email`` and a mail
connection, ``options.instance`` or ``default``), the worker rewrites the action before it queues
it: its ``system`` and ``instance`` become that connection's, its key and ticket id stay (so its
idempotency, retries and dead letter are the outbox's as for any action), and its ``target``
describes the notice for that connection::

    {"notice": {"ticket": {"system", "instance", "id", "subject"}, "tier", "tier_name",
                "move", "acknowledge", "issued_at", "channel", "options",
                "to": [{"address", "person", "name", "role"}, ...]}}

``to`` holds the channel's own ``to`` addresses (role ``Informed``, the person being the channel)
and the email addresses of the people the engine named, each address once, with the RACI role
each plays in the escalation's current placement (a manager of the hierarchical path is named by
the rung). ``acknowledge`` is true while the step (``move`` and ``tier``, from the escalation's
state) is unacknowledged: the notice then carries a signed acknowledge link. Without such a
connection a notice stays on the ticket's own system, as before.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from datetime import datetime
from email.utils import getaddresses
from typing import Any

from escalier.core.model import Action, ActionKind, EscalationState, EscalationStatus
from escalier.core.policy import Policy

__all__ = ["notice_account", "route_notices"]

Account = tuple[str, str]

_ROLES = (("responsible", "Responsible"), ("accountable", "Accountable"),
          ("consulted", "Consulted"), ("informed", "Informed"))


def notice_account(policy: Policy, channel: str | None, kinds: Collection[str],
                   accounts: Collection[Account]) -> Account | None:
    """The connection a notice on ``channel`` goes through, or None to stay on the ticket's system.

    :param kinds: the channel kinds plugins registered.
    :param accounts: the configured connections, as (connector, instance).
    """
    config = policy.notifications.channels.get(channel or "")
    if config is None or config.kind not in kinds:
        return None
    instance = str(config.options.get("instance") or "default")
    account = (config.kind, instance)
    return account if account in accounts else None


def route_notices(
    actions: Sequence[Action],
    *,
    policy: Policy,
    state: EscalationState,
    kinds: Collection[str],
    accounts: Collection[Account],
    now: datetime,
) -> list[Action]:
    """``actions`` with each notice whose channel has a connection rewritten for it (see above)."""
    routed: list[Action] = []
    for action in actions:
        account = None
        if action.kind is ActionKind.NOTIFY:
            account = notice_account(policy, action.channel, kinds, accounts)
        if account is None:
            routed.append(action)
            continue
        notice = _notice(action, policy=policy, state=state, now=now)
        routed.append(action.model_copy(update={
            "system": account[0], "instance": account[1], "target": {"notice": notice},
        }))
    return routed


def _notice(action: Action, *, policy: Policy, state: EscalationState, now: datetime) -> dict[str, Any]:
    channel = action.channel or ""
    config = policy.notifications.channels[channel]
    tier = action.tier if action.tier is not None else state.tier
    spec = policy.tiers_by_level.get(tier)
    to: list[dict[str, str]] = []
    seen: set[str] = set()
    for _, address in getaddresses(list(config.to)):
        if "@" in address and address.lower() not in seen:
            seen.add(address.lower())
            to.append({"address": address, "person": channel, "name": f"the {channel} channel",
                       "role": "Informed"})
    by_email = {p.email.lower(): key for key, p in policy.people.items() if p.email}
    roles = _roles(policy, state)
    for ref in action.recipients:
        key = by_email.get(ref.lower()) if "@" in ref else None
        if key is None and ref in policy.people:
            key = ref
        person = policy.people.get(key) if key is not None else None
        address = person.email if person is not None and person.email else (ref if "@" in ref else None)
        if not address or address.lower() in seen:
            continue
        seen.add(address.lower())
        to.append({"address": address, "person": key or address, "name": person.name if person else address,
                   "role": roles.get(key or address, "Informed")})
    unacknowledged = state.status is EscalationStatus.OPEN and state.notification.acknowledged is None
    return {
        "ticket": {"system": state.system, "instance": state.instance, "id": state.ticket_id,
                   "subject": state.ticket.subject},
        "tier": tier,
        "tier_name": spec.name if spec is not None else f"tier {tier}",
        "move": state.moves,
        # A notice of an earlier placement decided along with a later one gets no link: the link
        # could only acknowledge the step the escalation is at now.
        "acknowledge": unacknowledged and tier == state.tier,
        "issued_at": now.isoformat(),
        "channel": channel,
        "options": dict(config.options),
        "to": to,
    }


def _roles(policy: Policy, state: EscalationState) -> dict[str, str]:
    """Each person's role in the current placement: the first of R, A, C, I, then a manager's rung."""
    roles: dict[str, str] = {}
    target = _target(policy, state)
    for field, label in _ROLES:
        for entry in getattr(state.raci, field):
            if entry == "target":
                # The target's person, or its group or address (a mail tier's address).
                who = next((target[k] for k in ("assignee", "group", "address")
                            if target and target.get(k)), None)
                if isinstance(who, str):
                    roles.setdefault(who, label)
            elif not entry.startswith("channel:"):
                roles.setdefault(entry, label)
    for rung in policy.paths.hierarchical:
        for person in rung.people:
            roles.setdefault(person, f"Management ({rung.name})")
    return roles


def _target(policy: Policy, state: EscalationState) -> Mapping[str, Any] | None:
    system = state.system
    if state.department is not None and state.department in policy.paths.functional:
        found = policy.paths.functional[state.department].targets.get(system)
        if found:
            return found
    tier = policy.tiers_by_level.get(state.tier)
    return tier.targets.get(system) if tier is not None else None
