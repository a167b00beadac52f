"""Signed acknowledge links: ``<receiver>/ack/<token>`` in a notice that repeats until acknowledged.

A token is ``<payload>.<signature>``, both base64url without padding. The payload is the JSON
array ``[1, system, instance, ticket_id, move, tier, person, expires]``: the ticket, the
escalation's move number and tier the notice was about (so a link from an earlier step cannot
acknowledge a later one), the person (or channel) the link was made for, and its expiry in epoch
seconds. The signature is the HMAC-SHA256 of ``escalier-ack.v1.<payload>`` under the first of the
configured secrets; every configured secret verifies, so a secret can be rotated.

The receiver serves the link (:func:`ack_blueprint`): ``GET`` shows a confirmation page and
changes nothing (mail scanners follow links), ``POST`` stores an inbox row of source ``ack`` in
the same durable path as a webhook, and the worker turns it into an ``acknowledged`` event
(:func:`parse_acknowledgement`). A refused link stores nothing.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import html
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from escalier.core.connector import RawEvent
from escalier.core.errors import PayloadError
from escalier.core.model import ActorRole, EventKind, TicketEvent

__all__ = [
    "ACK_SOURCE",
    "AckClaim",
    "AckRefused",
    "ack_path",
    "delivery_body",
    "delivery_id",
    "page",
    "parse_acknowledgement",
    "read_ack_token",
    "sign_ack_token",
]

ACK_SOURCE = "ack"
_VERSION = 1
_CONTEXT = b"escalier-ack.v1."
# A link in a mail stays well under the lengths mail clients and proxies cut.
_MAX_TOKEN = 2048


class AckRefused(Exception):
    """A link the receiver refuses; ``code`` is stable, ``reason`` a sentence for people."""

    def __init__(self, code: str, reason: str, *, status: int):
        super().__init__(f"{code}: {reason}")
        self.code = code
        self.reason = reason
        self.status = status


@dataclass(frozen=True)
class AckClaim:
    """What an acknowledge link says: who may acknowledge which step of which ticket, until when."""

    system: str
    instance: str
    ticket_id: str
    move: int
    tier: int
    person: str
    expires_at: datetime

    def payload(self) -> list[Any]:
        """The JSON array the token carries."""
        return [_VERSION, self.system, self.instance, self.ticket_id, self.move, self.tier,
                self.person, int(self.expires_at.timestamp())]


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _signature(secret: str, payload: str) -> bytes:
    return hmac.new(secret.encode("utf-8"), _CONTEXT + payload.encode("ascii"), hashlib.sha256).digest()


def sign_ack_token(claim: AckClaim, secret: str) -> str:
    """The token of ``claim``, signed with ``secret``."""
    if not secret:
        raise ValueError("an acknowledge link needs a secret")
    payload = _b64(json.dumps(claim.payload(), separators=(",", ":"), ensure_ascii=False).encode("utf-8"))
    return f"{payload}.{_b64(_signature(secret, payload))}"


def ack_path(token: str) -> str:
    """The receiver's path for ``token``."""
    return f"/ack/{token}"


def read_ack_token(token: str, secrets: Sequence[str], now: datetime) -> AckClaim:
    """The claim of a token signed with one of ``secrets`` and not expired at ``now``.

    :raises AckRefused: malformed (400), not signed by any secret (403), expired (410).
    """
    if not secrets:
        raise AckRefused("not_configured", "acknowledge links are not configured here", status=404)
    if not token or len(token) > _MAX_TOKEN or token.count(".") != 1:
        raise AckRefused("malformed_token", "the link is not an acknowledge link", status=400)
    payload, _, signature = token.partition(".")
    try:
        given = _unb64(signature)
        payload.encode("ascii")
    except (binascii.Error, ValueError, UnicodeEncodeError):
        raise AckRefused("malformed_token", "the link is not an acknowledge link", status=400) from None
    matched = False
    for secret in secrets:  # every one, so the time taken does not tell which matched
        if hmac.compare_digest(_signature(secret, payload), given):
            matched = True
    if not matched:
        raise AckRefused("bad_signature", "the link's signature does not match: it was altered or "
                         "not made here", status=403)
    try:
        values = json.loads(_unb64(payload).decode("utf-8"))
    except (binascii.Error, ValueError, UnicodeDecodeError):
        raise AckRefused("malformed_token", "the link's content cannot be read", status=400) from None
    claim = _claim(values)
    if claim is None:
        raise AckRefused("malformed_token", "the link's content cannot be read", status=400)
    if now >= claim.expires_at:
        raise AckRefused("expired", f"the link expired at {claim.expires_at:%Y-%m-%d %H:%M} UTC",
                         status=410)
    return claim


def _claim(values: Any) -> AckClaim | None:
    if not isinstance(values, list) or len(values) != 8 or values[0] != _VERSION:
        return None
    _, system, instance, ticket_id, move, tier, person, expires = values
    texts = (system, instance, ticket_id, person)
    numbers = (move, tier, expires)
    if not all(isinstance(v, str) and v for v in texts):
        return None
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in numbers):
        return None
    try:
        expires_at = datetime.fromtimestamp(expires, UTC)
    except (OverflowError, OSError, ValueError):
        return None
    return AckClaim(system, instance, ticket_id, move, tier, person, expires_at)


# --- the stored click and its event ------------------------------------------------------------


def delivery_body(claim: AckClaim) -> bytes:
    """The inbox row's body for an accepted click: the claim, without the signature."""
    return json.dumps({
        "system": claim.system, "instance": claim.instance, "ticket_id": claim.ticket_id,
        "move": claim.move, "tier": claim.tier, "person": claim.person,
    }, sort_keys=True).encode("utf-8")


def delivery_id(token: str) -> str:
    """One id per link: a second click of the same link is a duplicate."""
    return "ack-" + hashlib.sha256(token.encode("utf-8")).hexdigest()[:40]


def parse_acknowledgement(raw: RawEvent) -> list[TicketEvent]:
    """The ``acknowledged`` event of a stored click, at the time it was received.

    The time is the click's, so that the engine, which applies events in time order, applies it
    to the step the link was for even when a later move was decided before the click was.

    :raises PayloadError: the row is not a click the receiver stored.
    """
    try:
        values = json.loads(raw.body.decode("utf-8"))
        system, instance = str(values["system"]), str(values["instance"])
        ticket_id, person = str(values["ticket_id"]), str(values["person"])
        move, tier = int(values["move"]), int(values["tier"])
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
        raise PayloadError(f"ack: the stored click cannot be read ({type(exc).__name__})") from exc
    event_id = raw.delivery_id or f"ack-{raw.inbox_id}"
    return [TicketEvent(
        id=event_id, system=system, instance=instance, ticket_id=ticket_id,
        kind=EventKind.ACKNOWLEDGED, occurred_at=raw.received_at, actor=person,
        actor_role=ActorRole.AGENT,
        reason=f"acknowledge link of move {move} at tier {tier}",
    )]


# --- pages ---------------------------------------------------------------------------------------


def page(title: str, text: str, *, form_action: str | None = None, button: str = "Acknowledge") -> str:
    """A small self-contained HTML page; with ``form_action``, a button that POSTs to it."""
    form = ""
    if form_action is not None:
        form = (f'<form method="post" action="{html.escape(form_action)}">'
                f'<button type="submit">{html.escape(button)}</button></form>')
    return (
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">"
        "<meta name=\"robots\" content=\"noindex\">"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
        f"<title>{html.escape(title)}</title>"
        "<style>body{font-family:system-ui,sans-serif;max-width:36rem;margin:3rem auto;padding:0 1rem;"
        "line-height:1.5}button{font-size:1rem;padding:.5rem 1.25rem}</style></head><body>"
        f"<h1>{html.escape(title)}</h1><p>{html.escape(text)}</p>{form}</body></html>"
    )
