"""The built-in mail connector plugin: tickets by email, and mail as a notification channel.

Every hook here is ``trylast`` so that a third-party plugin can answer first, and answers None for
anything that is not the mail connector's (another source, another kind of connection).

Mail comes in two ways, both into the inbox table as source ``email``: the shared mailbox, read
over IMAP by the worker's reconciliation of each mail connection
(``list_changes_for_connector`` stores the unprocessed messages and marks them; the inbox pass
then parses them), and mail an MTA pushes to :class:`~escalier.connectors.email.inbound.LmtpReceiver`.

Mail as a notification channel (kind ``email``): the worker routes a notice on such a channel to
the mail connection, whatever the ticket's system; a notice that repeats until acknowledged
carries a signed acknowledge link, which the receiver serves at ``/ack/<token>`` and stores as an
inbox row of source ``ack``. This plugin parses those rows too
(:func:`escalier.webhooks.ack.parse_acknowledgement`): the links are the mail channel's.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from escalier.connectors.email import config, events
from escalier.connectors.email.config import EmailConfig, MailChannelOptions
from escalier.connectors.email.connection import EmailConnection, send_notification
from escalier.connectors.email.message import read_message
from escalier.connectors.email.sandbox import MailSandbox
from escalier.core.connector import (
    ActionBatch,
    ActionResult,
    Changes,
    ConnectorSpec,
    DeliverySkipped,
    RawEvent,
)
from escalier.core.errors import EscalierError, PayloadError
from escalier.core.extensions import ChannelSpec
from escalier.core.hookspecs import hookimpl
from escalier.core.model import Action, TicketEvent
from escalier.core.policy import Person
from escalier.webhooks.ack import ACK_SOURCE, parse_acknowledgement

__all__ = [
    "MailChannelOptions",
    "apply_action_for_connector",
    "apply_actions_for_connector",
    "connect",
    "list_changes_for_connector",
    "parse_event_for_connector",
    "register_connectors",
    "register_notification_channels",
]


def _settings(settings: Any, instance: str) -> Any:
    """An instance's settings: the section itself for ``default``, else ``instances.<name>``."""
    instances = getattr(settings, "instances", None)
    if instance == "default" or not instances:
        return settings
    try:
        return instances[instance]
    except KeyError:
        known = ", ".join(["default", *sorted(instances)])
        raise EscalierError(
            f"email/{instance}: no such instance under connectors.email.instances (known: {known})"
        ) from None


def connect(
    settings: EmailConfig,
    instance: str,
    environ: Mapping[str, str],
    people: Mapping[str, Person],
) -> EmailConnection:
    """A mail connection for ``instance``; no network call until it is used."""
    return EmailConnection(_settings(settings, instance), instance, environ, people)


@hookimpl(trylast=True)
def register_connectors() -> list[ConnectorSpec]:
    """The mail connector: SMTP out, IMAP (or an MTA over LMTP) in."""
    return [
        ConnectorSpec(
            name="email",
            title="Email (SMTP and IMAP)",
            config_model=config.EmailConfig,
            target_model=config.EmailTarget,
            check_target=config.check_target,
            connect=connect,
            sandbox=MailSandbox,
        )
    ]


@hookimpl(trylast=True)
def register_notification_channels() -> list[ChannelSpec]:
    """Mail as a notification channel, sent through the mail connector's SMTP server.

    ``send(config, recipients, subject, body)`` takes the mail connector's validated settings
    (:func:`~escalier.connectors.email.connection.send_notification`).
    """
    return [ChannelSpec(kind="email", options_model=MailChannelOptions, send=send_notification)]


@hookimpl(trylast=True)
def parse_event_for_connector(
    raw: RawEvent, config: Any, connection: Any
) -> list[TicketEvent] | None:
    """Parse a stored mail (a bounce marks its failed addresses on the connection), or the click
    of an acknowledge link (source ``ack``)."""
    if raw.source == ACK_SOURCE:
        return parse_acknowledgement(raw)
    if raw.source != "email":
        return None
    site = _settings(config, raw.instance) if config is not None else None
    try:
        return events.parse_delivery(raw, site)
    except DeliverySkipped as skipped:
        if skipped.kind == "bounce" and isinstance(connection, EmailConnection):
            try:
                connection.mark_bouncing(read_message(
                    raw.body, max_attachment_bytes=connection.config.max_attachment_bytes
                ).bounced)
            except PayloadError:
                pass  # the parser read it as a bounce; an unreadable copy marks nothing
        raise


@hookimpl(trylast=True)
def apply_actions_for_connector(batch: ActionBatch, connection: Any) -> list[ActionResult] | None:
    """Send the mails of a ticket's ready actions in one SMTP session."""
    if not isinstance(connection, EmailConnection):
        return None
    return connection.apply_batch(batch)


@hookimpl(trylast=True)
def apply_action_for_connector(action: Action, connection: Any) -> ActionResult | None:
    """Send the mail of one action."""
    if not isinstance(connection, EmailConnection):
        return None
    return connection.apply(action)


@hookimpl(trylast=True)
def list_changes_for_connector(
    connection: Any, cursor: str | None, now: datetime
) -> Changes | None:
    """Read the shared mailbox into the inbox (store, then mark); the events follow from there."""
    if not isinstance(connection, EmailConnection):
        return None
    return connection.changes_since(cursor, now)
