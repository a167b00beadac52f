"""A webhook endpoint for systems that cannot sign: a shared secret token in a header.

A token proves less than a signature (it does not bind the body, and anyone who sees one request
can replay it), so prefer a signing scheme where the sender offers one; delivery ids still make a
replay a duplicate.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any

from escalier.core.extensions import OwnIdentity, WebhookSpec
from escalier.webhooks.verification import check_token

__all__ = ["DELIVERY_HEADER", "TOKEN_HEADER", "checked_token", "token_webhook"]

TOKEN_HEADER = "X-Escalier-Token"
DELIVERY_HEADER = "X-Escalier-Delivery"


def checked_token(headers: Mapping[str, str], secrets: Sequence[str]) -> bool:
    """For a signing endpoint's unsigned senders: True when the request carries ``TOKEN_HEADER``
    and it matches a secret, False when it carries none.

    :raises Rejected: when the token matches no secret.
    """
    token = headers.get(TOKEN_HEADER)
    if not token:
        return False
    check_token(token, secrets)
    return True


def token_webhook(
    name: str,
    *,
    handled: frozenset[str] | None = None,
    token_header: str = TOKEN_HEADER,
    delivery_header: str = DELIVERY_HEADER,
    event_field: str = "type",
    id_field: str = "id",
    is_own_change: Callable[[Any, OwnIdentity], bool] | None = None,
) -> WebhookSpec:
    """A :class:`WebhookSpec` that authenticates by a secret token header (compared in constant time).

    :param handled: the event types (``payload[event_field]``) to act on; None acts on any.
    """

    def verify(headers: Mapping[str, str], body: bytes, secrets: Sequence[str], now: datetime) -> None:
        check_token(headers.get(token_header), secrets)

    def delivery_id(headers: Mapping[str, str], payload: Any) -> str | None:
        if headers.get(delivery_header):
            return headers.get(delivery_header)
        value = payload.get(id_field) if isinstance(payload, dict) else None
        valid = isinstance(value, str | int) and not isinstance(value, bool)
        return str(value) if valid and str(value) else None

    def event_type(headers: Mapping[str, str], payload: Any) -> str | None:
        value = payload.get(event_field) if isinstance(payload, dict) else None
        return value if isinstance(value, str) and value else None

    def handles(event: str | None) -> bool:
        return event is not None and (handled is None or event in handled)

    return WebhookSpec(
        name=name,
        verify=verify,
        delivery_id=delivery_id,
        event_type=event_type,
        handles=handles,
        is_own_change=is_own_change,
    )
