"""The linter: a valid policy can still describe a weak process; these are its warnings."""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator
from datetime import timedelta
from itertools import combinations

from escalier.core.durations import format_duration
from escalier.core.model import PathKind
from escalier.core.policy import Conditions, Criterion, Policy

__all__ = ["Report", "lint_policy"]

Report = Callable[[tuple[str | int, ...], str, str | None], None]

# Conditions whose values are sets: two criteria overlap only if each such set intersects.
_SET_CONDITIONS = (
    "tier", "severity", "priority", "status", "days", "organizations", "tags_any", "keywords_any"
)


def lint_policy(policy: Policy, report: Report, *, connectors: Collection[str] | None = None) -> None:
    """Call ``report(location, message, hint)`` once per weak spot in ``policy``.

    :param connectors: the names of the installed connectors; by default the plugins' (a
        notification channel whose kind names one sends through its connection).
    """
    for check in (_accountable, _reachable, _matrix, _late_escalations, _notification_chain,
                  _overlapping_criteria):
        for loc, message, hint in check(policy):
            report(loc, message, hint)
    names = _installed_connectors() if connectors is None else connectors
    for loc, message, hint in _channel_connections(policy, names):
        report(loc, message, hint)


def _installed_connectors() -> frozenset[str]:
    from escalier.plugins import get_plugin_manager

    pm = get_plugin_manager()
    return frozenset(spec.name for specs in pm.hook.register_connectors() for spec in specs or ())


Finding = tuple[tuple[str | int, ...], str, str | None]


def _accountable(policy: Policy) -> Iterator[Finding]:
    for index, tier in enumerate(policy.tiers):
        if not tier.raci.accountable:
            yield (
                ("tiers", index, "raci", "accountable"),
                f"tier {tier.level} ({tier.name}) has no Accountable owner",
                "name the escalation manager who answers for this tier",
            )


def _reachable(policy: Policy) -> Iterator[Finding]:
    reached = {1}
    reached |= {c.then.to_tier for c in policy.criteria if c.then.to_tier}
    reached |= {cell.tier for row in policy.matrix.values() for cell in row.values()}
    reached |= {rule.to_tier for rule in policy.deescalation.rules}
    reached |= {
        tier.level + 1
        for tier in policy.tiers
        if tier.timebox is not None and tier.timebox.mode in ("force", "both")
    }
    for index, tier in enumerate(policy.tiers):
        if tier.level not in reached:
            yield (
                ("tiers", index),
                f"tier {tier.level} ({tier.name}) is reached by no criterion, matrix cell or "
                "time-box; only a manual escalation can bring a ticket there",
                "add a criterion with then.to_tier, a matrix cell, or a forcing time-box below it",
            )


def _matrix(policy: Policy) -> Iterator[Finding]:
    if not policy.matrix:
        yield ((), "there is no decision matrix; every ticket starts at tier 1", None)
        return
    bands = [band.name for band in policy.impact]
    for severity in policy.severities:
        row = policy.matrix.get(severity)
        if row is None:
            yield (("matrix",), f"the matrix has no row for severity '{severity}'", None)
            continue
        missing = [band for band in bands if band not in row]
        if missing:
            yield (
                ("matrix", severity),
                f"no cell for {severity} x {', '.join(missing)}; such tickets start at tier 1",
                None,
            )


def _late_escalations(policy: Policy) -> Iterator[Finding]:
    for index, tier in enumerate(policy.tiers):
        resolve = tier.sla.resolve
        box = tier.timebox
        if resolve and box and box.mode in ("force", "both") and box.duration >= resolve:
            yield (
                ("tiers", index, "timebox", "duration"),
                f"tier {tier.level} forces escalation after {format_duration(box.duration)}, "
                f"not before its resolve target of {format_duration(resolve)} is breached",
                "shorten the time-box or lengthen the target",
            )
    for index, criterion in enumerate(policy.criteria):
        wait = _wait(criterion.when)
        if wait is None:
            continue
        for level in criterion.when.tier or [t.level for t in policy.tiers]:
            tier = policy.tiers_by_level.get(level)
            if tier and tier.sla.resolve and wait >= tier.sla.resolve:
                yield (
                    ("criteria", index, "when"),
                    f"criterion '{criterion.id}' escalates from tier {level} after "
                    f"{format_duration(wait)}, at or after its resolve target of "
                    f"{format_duration(tier.sla.resolve)}: the SLA is breached first",
                    None,
                )


def _wait(when: Conditions) -> timedelta | None:
    waits = [w for w in (when.unresolved_for, when.at_tier_for) if w is not None]
    return max(waits) if waits else None


def _notification_chain(policy: Policy) -> Iterator[Finding]:
    for index, tier in enumerate(policy.tiers):
        acknowledge = tier.sla.acknowledge
        if not acknowledge or not tier.raci.accountable:
            continue
        every = tier.notify.repeat_every or policy.notifications.repeat_every
        repeats = (
            tier.notify.max_repeats
            if tier.notify.max_repeats is not None
            else policy.notifications.max_repeats
        )
        until_accountable = every * (repeats + 1)
        if until_accountable > acknowledge:
            yield (
                ("tiers", index, "notify"),
                f"at tier {tier.level} the Accountable owner hears of an unacknowledged "
                f"escalation only after {format_duration(until_accountable)}, past the "
                f"acknowledge target of {format_duration(acknowledge)}",
                "repeat more often or fewer times before climbing a level",
            )


def _channel_connections(policy: Policy, connectors: Collection[str]) -> Iterator[Finding]:
    # A channel whose kind is a connector's sends through that connector's connection (mail for
    # every ticket's notices); without one, its notices stay on each ticket's own system and its
    # `to` addresses hear nothing.
    for name, channel in policy.notifications.channels.items():
        if channel.kind in connectors and channel.kind not in (policy.connectors or {}):
            yield (
                ("notifications", "channels", name, "kind"),
                f"channel '{name}' is of kind '{channel.kind}' but no {channel.kind} connection is "
                f"configured: its notices stay on each ticket's own system"
                + (f" and {', '.join(channel.to)} hear nothing" if channel.to else ""),
                f"configure connectors.{channel.kind}, or choose a channel kind that is",
            )


def _overlapping_criteria(policy: Policy) -> Iterator[Finding]:
    # Two criteria built on the same conditions, whose values overlap, but that send the ticket
    # to different places: the order of the list silently decides.
    for (i, a), (j, b) in combinations(enumerate(policy.criteria), 2):
        if _destination(a) == _destination(b):
            continue
        if _used(a.when) != _used(b.when) or not _intersect(a.when, b.when):
            continue
        yield (
            ("criteria", j),
            f"criteria '{a.id}' and '{b.id}' test the same conditions with overlapping values "
            "but move the ticket to different places",
            f"make their values disjoint; as written '{a.id}' (listed first) wins",
        )


def _destination(criterion: Criterion) -> tuple[object, ...]:
    then = criterion.then
    if then.path is PathKind.INTERNAL:
        return (then.path, then.to_tier)
    return (then.path, then.department, then.level)


def _used(when: Conditions) -> frozenset[str]:
    return frozenset(
        name for name in type(when).model_fields if getattr(when, name) not in (None, [], {})
    )


def _intersect(a: Conditions, b: Conditions) -> bool:
    for name in _SET_CONDITIONS:
        left, right = getattr(a, name), getattr(b, name)
        if left and right and not set(left) & set(right):
            return False
    return a.vip is None or b.vip is None or a.vip == b.vip
