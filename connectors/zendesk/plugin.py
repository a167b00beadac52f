"""The built-in Zendesk connector plugin: its spec, and the hooks routing Zendesk's work to a connection.

Every hook here is ``trylast`` so that a third-party plugin can answer first, and answers None for
anything that is not Zendesk's (another source, another kind of connection).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from escalier.connectors.zendesk import events
from escalier.connectors.zendesk.config import (
    ZendeskAccount,
    ZendeskConfig,
    ZendeskTarget,
    check_target,
)
from escalier.connectors.zendesk.connection import ZendeskConnection
from escalier.connectors.zendesk.sandbox import ZendeskSandbox
from escalier.connectors.zendesk.webhook import register_webhooks
from escalier.core.connector import ActionBatch, ActionResult, Changes, ConnectorSpec, RawEvent
from escalier.core.errors import EscalierError
from escalier.core.hookspecs import hookimpl
from escalier.core.model import Action, Ticket, TicketEvent
from escalier.core.policy import Person

__all__ = [
    "apply_action_for_connector",
    "apply_actions_for_connector",
    "apply_sweep_for_connector",
    "connect",
    "list_changes_for_connector",
    "parse_event_for_connector",
    "prepare_deliveries_for_connector",
    "register_connectors",
    "register_webhooks",
]


def _account(settings: ZendeskAccount, instance: str) -> ZendeskAccount:
    """An instance's settings: the section itself for ``default``, else ``instances.<name>``."""
    if instance == "default" or not isinstance(settings, ZendeskConfig):
        return settings
    try:
        return settings.instances[instance]
    except KeyError:
        known = ", ".join(["default", *sorted(settings.instances)])
        raise EscalierError(
            f"zendesk/{instance}: no such instance under connectors.zendesk.instances "
            f"(known: {known})"
        ) from None


def connect(
    settings: ZendeskConfig,
    instance: str,
    environ: Mapping[str, str],
    people: Mapping[str, Person],
) -> ZendeskConnection:
    """A connection to the Zendesk account of ``instance``; no network call until it is used."""
    return ZendeskConnection(_account(settings, instance), instance, environ, people)


@hookimpl(trylast=True)
def register_connectors() -> list[ConnectorSpec]:
    """The Zendesk connector: Support tickets through the REST API and webhooks."""
    return [
        ConnectorSpec(
            name="zendesk",
            title="Zendesk Support",
            config_model=ZendeskConfig,
            target_model=ZendeskTarget,
            check_target=check_target,
            connect=connect,
            sandbox=ZendeskSandbox,
        )
    ]


@hookimpl(trylast=True)
def parse_event_for_connector(
    raw: RawEvent, config: Any, connection: Any
) -> list[TicketEvent] | None:
    """Parse a Zendesk webhook delivery, reading the ticket through the connection if needed."""
    if raw.source != "zendesk":
        return None
    site = _account(config, raw.instance) if config is not None else None
    fetch = connection.fetch_ticket if isinstance(connection, ZendeskConnection) else None
    return events.parse_delivery(raw, site, fetch=fetch)


class _ReadAhead(Exception):
    """Raised by the look-ahead's fetch: the parse would read this ticket."""

    def __init__(self, ticket_id: str, newer_than: datetime | None):
        super().__init__(ticket_id)
        self.ticket_id = ticket_id
        self.newer_than = newer_than


def _would_read(ticket_id: str, *, newer_than: datetime | None = None) -> Ticket:
    raise _ReadAhead(str(ticket_id), newer_than)


@hookimpl(trylast=True)
def prepare_deliveries_for_connector(raws: list[RawEvent], config: Any, connection: Any) -> None:
    """Read the tickets a pass's deliveries need with ``show_many``: one request, not one each.

    Each delivery is parsed with a fetch that only notes which ticket, as of which update, the
    parse would read; a delivery that reads nothing, or cannot be parsed, is left to its own
    parse, which says why.
    """
    if not isinstance(connection, ZendeskConnection):
        return
    wanted: dict[str, datetime | None] = {}
    for raw in raws:
        if raw.source != "zendesk":
            continue
        site = _account(config, raw.instance) if config is not None else None
        try:
            events.parse_delivery(raw, site, fetch=_would_read)
        except _ReadAhead as read:
            known = wanted.get(read.ticket_id)
            if read.ticket_id not in wanted or (
                read.newer_than is not None and (known is None or known < read.newer_than)
            ):
                wanted[read.ticket_id] = read.newer_than
        except Exception:  # noqa: BLE001 - its own parse reports it
            continue
    if len(wanted) > 1:
        connection.read_ahead(wanted)


@hookimpl(trylast=True)
def apply_actions_for_connector(batch: ActionBatch, connection: Any) -> list[ActionResult] | None:
    """Apply a ticket's ready Zendesk actions in one ticket update."""
    if not isinstance(connection, ZendeskConnection):
        return None
    return connection.apply_batch(batch)


@hookimpl(trylast=True)
def apply_sweep_for_connector(
    batches: list[ActionBatch], connection: Any
) -> list[list[ActionResult]] | None:
    """Apply many tickets' ready actions with bulk updates (up to 100 tickets a job)."""
    if not isinstance(connection, ZendeskConnection):
        return None
    return connection.apply_many(batches)


@hookimpl(trylast=True)
def apply_action_for_connector(action: Action, connection: Any) -> ActionResult | None:
    """Apply one Zendesk action."""
    if not isinstance(connection, ZendeskConnection):
        return None
    return connection.apply(action)


@hookimpl(trylast=True)
def list_changes_for_connector(
    connection: Any, cursor: str | None, now: datetime
) -> Changes | None:
    """The Zendesk tickets changed since ``cursor``, from the incremental ticket export."""
    if not isinstance(connection, ZendeskConnection):
        return None
    return connection.changes_since(cursor, now)
