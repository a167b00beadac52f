"""Zendesk's webhook: authentication, delivery ids, event types, and our own changes coming back.

Zendesk signs every webhook request: ``X-Zendesk-Webhook-Signature`` is
base64(HMAC-SHA256(secret, TIMESTAMP + BODY)), where TIMESTAMP is the
``X-Zendesk-Webhook-Signature-Timestamp`` header exactly as sent (ISO 8601) and the key is the
signing secret's UTF-8 bytes (it looks like base64 but is not decoded). An older revision of
Zendesk's documentation gives BODY + TIMESTAMP; the current documentation and independent
implementations use TIMESTAMP + BODY, which is what we verify. Webhooks tested before they exist
are signed with Zendesk's fixed test secret, which an instance may list among its secrets.

Two kinds of body arrive: event webhooks (``"type": "zen:event-type:ticket.status_changed"``,
ids as strings, upper-case statuses) and trigger or automation webhooks, whose JSON body is
whatever the admin's template renders. For loop detection a trigger template should carry
``"current_user_id": "{{current_user.id}}"``.

Events of Zendesk's Events Connector (Amazon EventBridge), forwarded by an API destination, are
not signed: they authenticate with the secret in ``X-Escalier-Token`` (compared in constant time,
the API destination's "API key" header), and their own ``time`` bounds their age. They are read as
the event webhook of the same change; a token is accepted for nothing else.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from escalier.connectors.zendesk.events import (
    eventbridge_event_type,
    from_eventbridge,
    is_eventbridge,
)
from escalier.core.connector import DeliverySkipped
from escalier.core.errors import EscalierError
from escalier.core.extensions import OwnIdentity, WebhookSpec
from escalier.core.hookspecs import hookimpl
from escalier.webhooks.token import checked_token
from escalier.webhooks.verification import (
    Rejected,
    check_base64_hmac,
    parse_iso_timestamp,
)

__all__ = [
    "HANDLED_EVENTS",
    "TEST_SIGNING_SECRET",
    "TRIGGER_EVENT",
    "delivery_id",
    "event_type",
    "handles",
    "is_own_change",
    "register_webhooks",
    "sent_at",
    "verify",
    "webhook_spec",
]

SIGNATURE_HEADER = "X-Zendesk-Webhook-Signature"
TIMESTAMP_HEADER = "X-Zendesk-Webhook-Signature-Timestamp"
INVOCATION_HEADER = "X-Zendesk-Webhook-Invocation-Id"
EVENT_PREFIX = "zen:event-type:"
TRIGGER_EVENT = "trigger"
# Zendesk signs "Test webhook" requests for webhooks not yet created with this published value.
TEST_SIGNING_SECRET = "dGhpc19zZWNyZXRfaXNfZm9yX3Rlc3Rpbmdfb25seQ=="

_TICKET_EVENTS = (
    "agent_assignment_changed",
    "comment_added",
    "created",
    "custom_field_changed",
    "custom_status_changed",
    "group_assignment_changed",
    "merged",
    "permanently_deleted",
    "priority_changed",
    "soft_deleted",
    "status_changed",
    "subject_changed",
    "tags_changed",
    "type_changed",
    "undeleted",
)
# Ticket changes drive escalations; user, organisation, article and attachment events do not.
HANDLED_EVENTS = frozenset(f"{EVENT_PREFIX}ticket.{name}" for name in _TICKET_EVENTS) | {
    TRIGGER_EVENT
}

# Keys a trigger template may use to say who made the change, and where comment text may sit.
_TRIGGER_ACTOR_KEYS = ("current_user_id", "updater_id", "actor_id", "author_id")
_TRIGGER_COMMENT_KEYS = ("comment", "latest_comment", "latest_public_comment", "comment_body")


def verify(
    headers: Mapping[str, str], body: bytes, secrets: Sequence[str], now: datetime
) -> datetime | None:
    """Check the signature over timestamp + body; returns the signed timestamp.

    An unsigned request with ``X-Escalier-Token`` (an EventBridge API destination's) is checked by
    its token; its body must then carry its own time (:func:`sent_at`).
    """
    signature = headers.get(SIGNATURE_HEADER)
    if not signature and checked_token(headers, secrets):
        return None
    if not signature:
        raise Rejected("missing_signature", f"the request carries no {SIGNATURE_HEADER} header")
    timestamp = headers.get(TIMESTAMP_HEADER)
    if not timestamp:
        raise Rejected("missing_timestamp", f"the request carries no {TIMESTAMP_HEADER} header")
    # Headers arrive as latin-1 text (PEP 3333); these bytes are the ones Zendesk signed.
    check_base64_hmac(signature, timestamp.encode("latin-1", "replace") + body, secrets)
    return parse_iso_timestamp(timestamp)


def sent_at(headers: Mapping[str, str], payload: Any) -> datetime | None:
    """An EventBridge event's ``time``; None for webhooks, whose signed timestamp is checked."""
    if not is_eventbridge(payload) or not isinstance(payload.get("time"), str):
        return None
    try:
        return parse_iso_timestamp(payload["time"])
    except Rejected:
        return None


def delivery_id(headers: Mapping[str, str], payload: Any) -> str | None:
    """``X-Zendesk-Webhook-Invocation-Id`` (kept across retries), else an event webhook's id.

    An EventBridge event's ``id`` is the same on EventBridge's retries.
    """
    invocation = headers.get(INVOCATION_HEADER)
    if invocation:
        return invocation
    if is_eventbridge(payload):
        event_id = payload.get("id")
        return f"eventbridge:{event_id}" if isinstance(event_id, str) and event_id else None
    event_id = payload.get("id") if _is_event(payload) else None
    return f"event:{event_id}" if isinstance(event_id, str) and event_id else None


def _is_event(payload: Any) -> bool:
    return (
        isinstance(payload, dict)
        and isinstance(payload.get("type"), str)
        and payload["type"].startswith(EVENT_PREFIX)
    )


def event_type(headers: Mapping[str, str], payload: Any) -> str | None:
    """An event webhook's ``type``; ``trigger`` for a trigger or automation body.

    An EventBridge ticket event gets its webhook's type; another EventBridge event its
    ``detail-type``, which is not handled.
    """
    if is_eventbridge(payload):
        return eventbridge_event_type(payload) or f"eventbridge:{payload['detail-type'][:100]}"
    return payload["type"] if _is_event(payload) else TRIGGER_EVENT


def handles(event: str | None) -> bool:
    """True for ticket events (any ``zen:event-type:ticket.*``, new kinds too) and trigger webhooks.

    The parser says which of them carry nothing to act on; the receiver keeps them all.
    """
    return event in HANDLED_EVENTS or (
        isinstance(event, str) and event.startswith(f"{EVENT_PREFIX}ticket.")
    )


def is_own_change(payload: Any, identity: OwnIdentity) -> bool:
    """True when Escalier's own user made the change, or the comment carries its marker."""
    if not isinstance(payload, dict):
        return False
    if is_eventbridge(payload):
        try:
            payload = dict(from_eventbridge(payload))
        except (DeliverySkipped, EscalierError):
            return False
    if _is_event(payload):
        detail = payload.get("detail") if isinstance(payload.get("detail"), dict) else {}
        event = payload.get("event") if isinstance(payload.get("event"), dict) else {}
        comment = event.get("comment") if isinstance(event.get("comment"), dict) else {}
        author = comment.get("author") if isinstance(comment.get("author"), dict) else {}
        if identity.is_own_user(detail.get("actor_id"), author.get("id")):
            return True
        return identity.is_marked(comment.get("body"))
    current_user = payload.get("current_user")
    nested = current_user.get("id") if isinstance(current_user, dict) else None
    actors = [nested, *(payload.get(key) for key in _TRIGGER_ACTOR_KEYS)]
    if identity.is_own_user(*actors):
        return True
    if any(actor not in (None, "") for actor in actors):
        # Someone else made this update: the latest comment may be ours from an earlier one.
        return False
    return any(identity.is_marked(payload.get(key)) for key in _TRIGGER_COMMENT_KEYS)


def webhook_spec() -> WebhookSpec:
    """The Zendesk webhook endpoint."""
    return WebhookSpec(
        name="zendesk",
        verify=verify,
        delivery_id=delivery_id,
        event_type=event_type,
        handles=handles,
        is_own_change=is_own_change,
        sent_at=sent_at,
    )


@hookimpl(trylast=True)
def register_webhooks() -> list[WebhookSpec]:
    """The Zendesk webhook, served at ``/webhooks/zendesk[/<instance>]``."""
    return [webhook_spec()]
