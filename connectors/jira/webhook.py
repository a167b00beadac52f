"""Jira's webhook: how a delivery is authenticated, named, classified, and recognised as our own.

Jira signs admin webhooks that have a secret with ``X-Hub-Signature: <method>=<hex HMAC of the raw
body>`` (the WebSub format, ``sha256`` in practice). The signature covers no timestamp, so replays
are bounded by the payload's own ``timestamp`` (epoch milliseconds, checked by the receiver against
its payload age limit) and by ``X-Atlassian-Webhook-Identifier``, which stays the same on every
retry of one delivery.

A rule of Jira Automation (*Send web request*) cannot sign: it authenticates with the secret in an
``X-Escalier-Token`` header, compared in constant time. Its body (the issue, or Service
Management's ``{"timestamp", "issue", ...}``) names no ``webhookEvent``; its event type is
``automation``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from escalier.connectors.jira.events import AUTOMATION_EVENT, issue_updated_at
from escalier.core.extensions import OwnIdentity, WebhookSpec
from escalier.core.hookspecs import hookimpl
from escalier.webhooks.token import TOKEN_HEADER, checked_token
from escalier.webhooks.verification import Rejected, check_hex_hmac

__all__ = [
    "HANDLED_EVENTS",
    "delivery_id",
    "event_type",
    "handles",
    "is_own_change",
    "register_webhooks",
    "sent_at",
    "verify",
    "webhook_spec",
]

SIGNATURE_HEADER = "X-Hub-Signature"
DELIVERY_HEADER = "X-Atlassian-Webhook-Identifier"

# Issue and comment changes drive escalations; worklogs, sprints, versions, projects and users
# do not, and are acknowledged without being stored.
HANDLED_EVENTS = frozenset(
    {
        "jira:issue_created",
        "jira:issue_updated",
        "jira:issue_deleted",
        "comment_created",
        "comment_updated",
        "comment_deleted",
        AUTOMATION_EVENT,
    }
)


def verify(
    headers: Mapping[str, str], body: bytes, secrets: Sequence[str], now: datetime
) -> datetime | None:
    """Check ``X-Hub-Signature`` against the raw body; Jira signs no timestamp, so returns None.

    A request without a signature but with ``X-Escalier-Token`` (an automation rule's) is checked
    by its token instead.
    """
    header = headers.get(SIGNATURE_HEADER)
    if not header and checked_token(headers, secrets):
        return None
    if not header:
        raise Rejected(
            "missing_signature",
            f"the request carries no {SIGNATURE_HEADER} header (nor, from an automation rule, "
            f"{TOKEN_HEADER})",
        )
    algorithm, sep, signature = header.partition("=")
    if not sep or not signature:
        raise Rejected("bad_signature", f"{SIGNATURE_HEADER} is not '<method>=<hex digest>'")
    check_hex_hmac(algorithm.strip(), signature, body, secrets)
    return None


def sent_at(headers: Mapping[str, str], payload: Any) -> datetime | None:
    """The payload's ``timestamp`` (epoch milliseconds) as a UTC time, if it carries a sane one.

    For an automation rule's issue data, which has none, the issue's ``fields.updated``.
    """
    stamp = payload.get("timestamp") if isinstance(payload, dict) else None
    if stamp is None and event_type(headers, payload) == AUTOMATION_EVENT:
        # An automation rule's issue data carries no timestamp: a rule fires on a change, so the
        # issue's last update bounds the request's age.
        nested = payload.get("issue")
        return issue_updated_at(nested if isinstance(nested, dict) else payload)
    if isinstance(stamp, bool) or not isinstance(stamp, (int, float)):
        return None
    try:
        return datetime.fromtimestamp(stamp / 1000, tz=UTC)
    except (OverflowError, OSError, ValueError):
        # A timestamp no clock can show is as good as a stale one.
        return datetime.min.replace(tzinfo=UTC)


def delivery_id(headers: Mapping[str, str], payload: Any) -> str | None:
    """``X-Atlassian-Webhook-Identifier``: the same on every retry of one delivery."""
    return headers.get(DELIVERY_HEADER) or None


def event_type(headers: Mapping[str, str], payload: Any) -> str | None:
    """The payload's ``webhookEvent`` (``jira:issue_updated``, ``comment_created``, ...).

    ``automation`` for a body without one that carries an issue (an automation rule's request).
    """
    if not isinstance(payload, dict):
        return None
    value = payload.get("webhookEvent")
    if isinstance(value, str) and value:
        return value
    if "webhookEvent" not in payload and (
        isinstance(payload.get("issue"), dict) or isinstance(payload.get("fields"), dict)
    ):
        return AUTOMATION_EVENT
    return None


def handles(event: str | None) -> bool:
    """True for the issue and comment events escalations follow."""
    return event in HANDLED_EVENTS


def _user_ids(user: Any) -> tuple[object, ...]:
    # Cloud names people by accountId; Data Center by username (name) and key.
    if not isinstance(user, dict):
        return ()
    return tuple(user.get(field) for field in ("accountId", "name", "key"))


def is_own_change(payload: Any, identity: OwnIdentity) -> bool:
    """True when Escalier's own account made the change, or the comment carries its marker."""
    if not isinstance(payload, dict):
        return False
    event = payload.get("webhookEvent")
    comment = payload.get("comment") if isinstance(payload.get("comment"), dict) else {}
    # Cloud comment events carry no top-level user; Server comment_created carries none either.
    # The comment's updateAuthor is who edited it, its author who wrote it.
    if "user" in payload:
        actor = _user_ids(payload.get("user"))
    elif event == "comment_updated":
        actor = _user_ids(comment.get("updateAuthor"))
    else:
        actor = _user_ids(comment.get("author"))
    if identity.is_own_user(*actor):
        return True
    commented = event in ("comment_created", "comment_updated") or (
        event == "jira:issue_updated" and payload.get("issue_event_type_name") == "issue_commented"
    )
    return commented and identity.is_marked(comment.get("body"))


def webhook_spec() -> WebhookSpec:
    """The Jira webhook endpoint."""
    return WebhookSpec(
        name="jira",
        verify=verify,
        delivery_id=delivery_id,
        event_type=event_type,
        handles=handles,
        is_own_change=is_own_change,
        sent_at=sent_at,
    )


@hookimpl(trylast=True)
def register_webhooks() -> list[WebhookSpec]:
    """The Jira webhook, served at ``/webhooks/jira[/<instance>]``."""
    return [webhook_spec()]
