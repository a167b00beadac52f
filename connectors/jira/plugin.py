"""The built-in Jira connector plugin: its spec, and the hooks routing Jira's work to a connection.

Every hook here is ``trylast`` so that a third-party plugin can answer first, and answers None for
anything that is not Jira's (another source, another kind of connection).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from escalier.connectors.jira import events
from escalier.connectors.jira.config import JiraConfig, JiraSite, JiraTarget, check_target
from escalier.connectors.jira.connection import JiraConnection
from escalier.connectors.jira.sandbox import JiraSandbox
from escalier.connectors.jira.webhook import register_webhooks  # noqa: F401
from escalier.core.connector import ActionBatch, ActionResult, Changes, ConnectorSpec, RawEvent
from escalier.core.errors import EscalierError
from escalier.core.hookspecs import hookimpl
from escalier.core.model import Action, TicketEvent
from escalier.core.policy import Person

__all__ = [
    "apply_action_for_connector",
    "apply_actions_for_connector",
    "connect",
    "list_changes_for_connector",
    "parse_event_for_connector",
    "register_connectors",
    "register_webhooks",
]


def _site(settings: JiraSite, instance: str) -> JiraSite:
    """An instance's settings: the section itself for ``default``, else ``instances.<name>``."""
    if instance == "default" or not isinstance(settings, JiraConfig):
        return settings
    try:
        return settings.instances[instance]
    except KeyError:
        known = ", ".join(["default", *sorted(settings.instances)])
        raise EscalierError(
            f"jira/{instance}: no such instance under connectors.jira.instances (known: {known})"
        ) from None


def connect(
    settings: JiraConfig, instance: str, environ: Mapping[str, str], people: Mapping[str, Person]
) -> JiraConnection:
    """A connection to the Jira site of ``instance``; no network call until it is used."""
    return JiraConnection(_site(settings, instance), instance, environ, people)


@hookimpl(trylast=True)
def register_connectors() -> list[ConnectorSpec]:
    """The Jira connector: Cloud and Data Center sites."""
    return [
        ConnectorSpec(
            name="jira",
            title="Jira (Cloud and Data Center)",
            config_model=JiraConfig,
            target_model=JiraTarget,
            check_target=check_target,
            connect=connect,
            sandbox=JiraSandbox,
        )
    ]


@hookimpl(trylast=True)
def parse_event_for_connector(
    raw: RawEvent, config: Any, connection: Any
) -> list[TicketEvent] | None:
    """Parse a Jira webhook delivery, reading the issue through the connection if it is partial."""
    if raw.source != "jira":
        return None
    site = _site(config, raw.instance) if config is not None else None
    fetch = connection.fetch_ticket if isinstance(connection, JiraConnection) else None
    return events.parse_delivery(raw, site, fetch=fetch)


@hookimpl(trylast=True)
def apply_actions_for_connector(batch: ActionBatch, connection: Any) -> list[ActionResult] | None:
    """Apply a ticket's ready Jira actions in as few calls as Jira allows."""
    if not isinstance(connection, JiraConnection):
        return None
    return connection.apply_batch(batch)


@hookimpl(trylast=True)
def apply_action_for_connector(action: Action, connection: Any) -> ActionResult | None:
    """Apply one Jira action."""
    if not isinstance(connection, JiraConnection):
        return None
    return connection.apply(action)


@hookimpl(trylast=True)
def list_changes_for_connector(
    connection: Any, cursor: str | None, now: datetime
) -> Changes | None:
    """The Jira issues changed since ``cursor``, within the site's JQL."""
    if not isinstance(connection, JiraConnection):
        return None
    return connection.changes_since(cursor, now)
