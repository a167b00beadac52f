"""Mail into Escalier's tickets and ticket events.

Everything here is a pure function of its inputs: no I/O, no clock, no logging. The worker hands
:func:`parse_delivery` a stored delivery whose body is one RFC 5322 message (read over IMAP or
pushed by an MTA); :func:`ticket_from_message` makes the ticket snapshot of a thread's first mail.

A thread is one ticket, and its id needs no store: the ``[ESC-XXXXXXXXXX]`` token of the subject,
else the token of the thread's root message id
(:func:`~escalier.connectors.email.message.thread_of`).
The first mail of a thread (no ``In-Reply-To``, no ``References``, no token) is ``created``; every
other mail is ``commented``, with the thread's ticket read through ``fetch`` when one is given. A
reply to a thread ``fetch`` does not know (support was copied into a conversation half-way)
opens the ticket instead.

Nothing is answered that must not be: bounces (RFC 3464 DSNs and classic MAILER-DAEMON mail),
delivery, read and complaint reports, our own mail coming back and automatic replies raise
:class:`~escalier.core.connector.DeliverySkipped` with ``bounce``, ``report``, ``own_change`` or
``auto_reply``. A bounce names the failed addresses, so they can be marked.

Event ids are ``email:{instance}:{message id without angle brackets}``; a message without a
Message-ID gets one derived from its content, so a mail read twice is decided once.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from escalier.connectors._values import first_error as _first_error
from escalier.connectors.email.config import EmailConfig
from escalier.connectors.email.message import (
    MailMessage,
    find_token,
    is_own,
    message_id_of,
    read_message,
    thread_of,
)
from escalier.core.connector import DeliverySkipped, RawEvent
from escalier.core.errors import NotFoundError, PayloadError
from escalier.core.model import ActorRole, Comment, EventKind, StatusCategory, Ticket, TicketEvent
from pydantic import ValidationError

__all__ = ["SYSTEM", "clean_subject", "event_id", "parse_delivery", "ticket_from_message"]

SYSTEM = "email"
_DEFAULT_PREFIX = "ESC"
_DEFAULT_MAX_ATTACHMENT = 10 * 2**20
# A Date header this far ahead of the time the mail arrived is a sender's broken clock.
_FUTURE_SLACK = timedelta(days=1)
_REPLY_PREFIX = re.compile(
    r"^\s*(?:(?:re|fwd?|fw|aw|wg|sv|vs|antw|tr|rv|enc|odp|ynt|ref|rif|i|r|doorst|pd|答复|回复|转发)"
    r"\s*(?:\[\d+\]|\(\d+\))?\s*[:：]\s*)+",
    re.IGNORECASE,
)
_PRIORITIES = {"high": "high", "low": "low"}


def event_id(instance: str, message_id: str) -> str:
    """The id of the event one mail makes: ``email:{instance}:{message id}``, brackets stripped."""
    bare = message_id.strip()
    if bare.startswith("<") and bare.endswith(">"):
        bare = bare[1:-1]
    return f"{SYSTEM}:{instance}:{bare}"


def clean_subject(subject: str, prefix: str = _DEFAULT_PREFIX) -> str:
    """A thread's subject: without its ``Re:``/``Fwd:``/``AW:``/``WG:``... prefixes and token."""
    token = r"\[\s*" + re.escape(prefix) + r"-[A-Za-z0-9]{4,32}\s*\]"
    text = re.sub(token, " ", subject or "", flags=re.IGNORECASE)
    text = " ".join(text.split())
    previous = None
    while previous != text:
        previous = text
        text = _REPLY_PREFIX.sub("", text).strip()
    return text


def ticket_from_message(
    message: MailMessage,
    site: EmailConfig | None,
    instance: str,
    *,
    received_at: datetime | None = None,
) -> Ticket:
    """The ticket a thread's mail opens: its subject, requester, addresses and message ids.

    ``created_at`` is the mail's Date; ``received_at`` stands in when it has none (or one more
    than a day after ``received_at``).

    :raises PayloadError: when the mail has no Date and no ``received_at`` is given.
    """
    created = _occurred_at(message, received_at)
    if created is None:
        raise PayloadError("the mail carries no Date and no time it was received")
    prefix = _prefix(site)
    own_id = message_id_of(message)
    references = list(message.references)
    for extra in (message.in_reply_to, own_id):
        if extra and extra not in references:
            references.append(extra)
    try:
        return Ticket(
            system=SYSTEM,
            id=thread_of(message, prefix),
            instance=instance,
            subject=clean_subject(message.subject, prefix),
            status="open",
            status_category=StatusCategory.OPEN,
            priority=_PRIORITIES.get(message.importance or ""),
            requester=message.reply_to or message.sender,
            created_at=created,
            description=message.text,
            fields={
                "message_id": own_id,
                "references": references,
                "reply_to": message.reply_to or message.sender,
                "to": list(message.to),
                "cc": list(message.cc),
                "attachments": [
                    {"filename": a.filename, "content_type": a.content_type, "size": a.size}
                    for a in message.attachments
                ],
                "thread_subject": message.subject,
            },
        )
    except ValidationError as exc:
        raise PayloadError(f"the mail does not make a valid ticket: {_first_error(exc)}") from exc


def parse_delivery(
    raw: RawEvent, site: EmailConfig | None, *, fetch: Callable[[str], Ticket] | None = None
) -> list[TicketEvent]:
    """The event one stored mail makes: ``created`` for a thread's first mail, else ``commented``.

    ``fetch(ticket id)`` is called at most once, for a reply; a
    :class:`~escalier.core.errors.NotFoundError` from it makes the reply open the ticket.

    :raises PayloadError: when the body is not mail this parser can read.
    :raises DeliverySkipped: for ``bounce``, ``report``, ``own_change`` and ``auto_reply`` mail.
    :raises ConnectorError: whatever else ``fetch`` raises, unchanged.
    """
    limit = site.max_attachment_bytes if site is not None else _DEFAULT_MAX_ATTACHMENT
    message = read_message(raw.body, max_attachment_bytes=limit)
    _skip_unanswerable(message, site)
    prefix = _prefix(site)
    received = _aware(raw.received_at)
    occurred = _occurred_at(message, received) or received
    ticket_id = thread_of(message, prefix)
    role = _role(message.sender, site)
    key = event_id(raw.instance, message_id_of(message))
    first = (
        not message.in_reply_to and not message.references
        and find_token(message.subject, prefix) is None
    )
    ticket: Ticket | None = None
    if not first and fetch is not None:
        try:
            ticket = fetch(ticket_id)
        except NotFoundError:
            first = True
    try:
        if first:
            return [TicketEvent(
                id=key, system=SYSTEM, instance=raw.instance, ticket_id=ticket_id,
                kind=EventKind.CREATED, occurred_at=occurred, actor=message.sender, actor_role=role,
                ticket=ticket_from_message(message, site, raw.instance, received_at=received),
            )]
        return [TicketEvent(
            id=key, system=SYSTEM, instance=raw.instance, ticket_id=ticket_id,
            kind=EventKind.COMMENTED, occurred_at=occurred, actor=message.sender, actor_role=role,
            ticket=ticket,
            comment=Comment(
                body=message.text, public=True, author=message.sender, author_role=role
            ),
        )]
    except ValidationError as exc:
        raise PayloadError(f"the mail does not make a valid event: {_first_error(exc)}") from exc


# --- helpers ---------------------------------------------------------------------------------


def _skip_unanswerable(message: MailMessage, site: EmailConfig | None) -> None:
    # Bounces first: a bounce of our own mail returns our text, and must still mark the address.
    if message.kind == "bounce":
        to = ", ".join(message.bounced) or "an address the report does not name"
        raise DeliverySkipped(
            "bounce", f"a delivery failure report: mail to {to} could not be delivered"
        )
    sender = message.sender or "an unknown sender"
    if message.kind == "report":
        raise DeliverySkipped("report", f"a delivery, read or complaint report from {sender}")
    if is_own(message, site.from_address if site is not None else ""):
        raise DeliverySkipped("own_change", "Escalier's own mail came back")
    if message.kind == "auto_reply":
        why = f" (Auto-Submitted: {message.auto_submitted})" if message.auto_submitted else ""
        raise DeliverySkipped(
            "auto_reply",
            f"an automatic reply from {sender}{why} is never answered",
        )


def _role(sender: str | None, site: EmailConfig | None) -> ActorRole:
    if sender is None or site is None:
        return ActorRole.CUSTOMER
    address = sender.casefold()
    if address in {a.casefold() for a in site.agent_addresses}:
        return ActorRole.AGENT
    domain = address.rpartition("@")[2]
    for agent_domain in site.agent_domains:
        agent_domain = agent_domain.casefold()
        if domain == agent_domain or domain.endswith("." + agent_domain):
            return ActorRole.AGENT
    return ActorRole.CUSTOMER


def _prefix(site: EmailConfig | None) -> str:
    return site.token_prefix.upper() if site is not None else _DEFAULT_PREFIX


def _occurred_at(message: MailMessage, received: datetime | None) -> datetime | None:
    received = _aware(received) if received is not None else None
    date = message.date
    if date is None:
        return received
    if received is not None and date > received + _FUTURE_SLACK:
        return received
    return date


def _aware(value: datetime) -> datetime:
    return value if value.utcoffset() is not None else value.replace(tzinfo=UTC)


