"""The comments and notifications Escalier writes, and how they are rendered.

A policy's ``templates`` (with those plugins register merged in by the config loader) override the
built-in defaults below by name. Every rendered text starts with :data:`MARKER`, so Escalier can
recognise its own comments when a system sends them back as events.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from escalier.core.policy import TemplateSpec

__all__ = ["DEFAULT_TEMPLATES", "MARKER", "is_own_text", "render"]

MARKER = "[escalier]"

DEFAULT_TEMPLATES: dict[str, TemplateSpec] = {
    "opened": TemplateSpec(text="[escalier] Placed at {to_tier_label}: {reason}"),
    "escalated": TemplateSpec(
        text="[escalier] Escalated from {from_tier_label} to {to_tier_label}: {reason}"
    ),
    "deescalated": TemplateSpec(
        text="[escalier] De-escalated from {from_tier_label} to {to_tier_label}: {reason}"
    ),
    "functional": TemplateSpec(text="[escalier] Handed to {to_tier_label}: {reason}"),
    "hierarchical": TemplateSpec(text="[escalier] Raised to {to_tier_label}: {reason}"),
    "corrected": TemplateSpec(
        text="[escalier] Placement corrected to {to_tier_label} after a late update: {reason}"
    ),
    "missing-information": TemplateSpec(
        text="[escalier] Before this ticket can move to {tier_name}, please add: {missing}."
    ),
    "timebox-refused": TemplateSpec(
        text=(
            "[escalier] Not moved to {to_tier_label} yet: the time-box of {timebox} at "
            "{from_tier_label} runs until {timebox_ends} ({reason})."
        )
    ),
    "escalation-refused": TemplateSpec(text="[escalier] Escalation not made: {reason}."),
    "deescalation-refused": TemplateSpec(text="[escalier] De-escalation not made: {reason}."),
    "sla-warning": TemplateSpec(
        text=(
            "[escalier] SLA warning at {tier_label}: {percent}% of the {clock} target of "
            "{target} is used; it is breached at {due}."
        )
    ),
    "sla-breach": TemplateSpec(
        text="[escalier] SLA breached at {tier_label}: the {clock} target of {target} ran out at {due}."
    ),
    "notification": TemplateSpec(
        text="[escalier] {system} ticket {ticket_id} \"{subject}\" at {tier_label}: {reason}"
    ),
    "review-due": TemplateSpec(
        text="[escalier] This escalation has been open since {opened} ({open_for}); please review it."
    ),
    "follow-up": TemplateSpec(
        text="[escalier] Resolved {resolved_for} ago: please follow up with the requester."
    ),
    "closed": TemplateSpec(text="[escalier] Closed {close_after} after resolution."),
}


class _Values(dict[str, Any]):
    """Leaves an unknown ``{placeholder}`` as written, so a typo in a template shows, not crashes."""

    def __missing__(self, key: str) -> str:
        return "{" + key + "}"


def render(
    templates: Mapping[str, TemplateSpec], name: str, values: Mapping[str, Any]
) -> tuple[str, bool]:
    """The text of template ``name`` filled with ``values``, and whether it is public."""
    spec = templates.get(name) or DEFAULT_TEMPLATES.get(name)
    if spec is None:
        spec = TemplateSpec(text="[escalier] {reason}")
    try:
        text = spec.text.format_map(_Values(values)).strip()
    except (ValueError, IndexError, AttributeError):
        # A stray brace in an admin's template: show it unfilled rather than lose the comment.
        text = spec.text.strip()
    if MARKER not in text:
        text = f"{MARKER} {text}"
    return text, spec.public


def is_own_text(text: str | None) -> bool:
    """True when ``text`` is a comment Escalier wrote."""
    return bool(text) and MARKER in text  # type: ignore[operator]
