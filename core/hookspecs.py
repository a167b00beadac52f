"""Every hook Escalier offers, in one module.

Naming grammar:

- ``register_*`` hooks are called on every plugin and their results are collected into lists;
- ``*_for_*`` hooks are first-result look-ups: the call stops at the first non-None result, so a
  plugin overrides a built-in by answering first (our built-ins are ``trylast``);
- past-tense hooks (``*_decided``, ``*_applied``) are notifications; their results are ignored and
  a failing implementation is logged with its plugin's name and does not stop the others.

Plugins are found through the ``escalier`` entry-point group; a module or object with functions
named like these, decorated with :data:`hookimpl`, is a plugin.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from escalier.core.connector import (
        ActionBatch,
        ActionResult,
        Changes,
        Connection,
        ConnectorSpec,
        RawEvent,
    )
    from escalier.core.extensions import ChannelSpec, CommentTemplate, CriterionSpec, WebhookSpec
    from escalier.core.model import Action, TicketEvent

__all__ = ["PROJECT", "hookimpl", "hookspec"]

PROJECT = "escalier"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def register_connectors() -> list[ConnectorSpec]:
    """Register connectors to ticketing systems.

    Fires once when the plugin manager is built and whenever a policy file is validated.
    Takes no arguments. Returns a list of :class:`~escalier.core.connector.ConnectorSpec`; a
    connector name may be registered only once across all plugins.
    """


@hookspec
def register_webhooks() -> list[WebhookSpec]:
    """Register webhook endpoints for the receiver.

    Fires when the receiver app is created. Takes no arguments. Returns a list of
    :class:`~escalier.core.extensions.WebhookSpec`; each is mounted at ``/webhooks/<name>`` and
    ``/webhooks/<name>/<instance>``.
    """


@hookspec
def register_notification_channels() -> list[ChannelSpec]:
    """Register kinds of notification channel (mail, chat, pager).

    Fires when the policy is validated and when the worker starts. Takes no arguments. Returns a
    list of :class:`~escalier.core.extensions.ChannelSpec`, named by the ``kind`` a policy's
    ``notifications.channels.<name>.kind`` refers to.
    """


@hookspec
def register_comment_templates() -> list[CommentTemplate]:
    """Register named comment templates that policies can refer to.

    Fires when the policy is validated. Takes no arguments. Returns a list of
    :class:`~escalier.core.extensions.CommentTemplate`; a template in the policy file of the same
    name overrides a registered one.
    """


@hookspec
def register_criteria() -> list[CriterionSpec]:
    """Register extra escalation criteria usable in ``criteria[].when.extra``.

    Fires when the policy is validated. Takes no arguments. Returns a list of
    :class:`~escalier.core.extensions.CriterionSpec`: a name, an options model and a pure
    predicate of (ticket, state, now, options).
    """


@hookspec(firstresult=True)
def parse_event_for_connector(
    raw: RawEvent, config: Any, connection: Connection | None
) -> list[TicketEvent] | None:
    """Parse a stored delivery into ticket events.

    Fires in the worker for each inbox row, and in ``escalier parse``. ``raw`` is the delivery as
    received, with ``raw.source`` naming the connector and ``raw.instance`` the instance;
    ``config`` is that instance's validated settings (the connector's ``config_model``, with the
    instance's own values), or None when no policy is at hand; ``connection`` is the instance's
    connection, to read a ticket the payload does not carry, or None (``escalier parse`` runs
    without a network). An implementation may take only the arguments it needs.

    Returns the events, or None to let another plugin answer; raises
    :class:`~escalier.core.connector.DeliverySkipped` for a delivery that carries nothing to act on
    (its ``kind`` says why), and :class:`~escalier.core.errors.PayloadError` for one it cannot
    read. Stops at the first non-None result.
    """


@hookspec
def prepare_deliveries_for_connector(raws: list[RawEvent], config: Any, connection: Connection) -> None:
    """Read ahead what a pass's deliveries will need, in as few calls as the API allows.

    Fires in the worker once per pass and connection, with the deliveries of that connection it
    claimed, before they are parsed one by one with ``parse_event_for_connector``. An
    implementation may read many tickets in one request (Zendesk's ``show_many``) into the
    connection's cache, so that each parse finds its ticket there. Returns nothing; a failure is
    logged and the deliveries are parsed as if it had not fired (each reading what it needs).
    """


@hookspec(firstresult=True)
def apply_action_for_connector(action: Action, connection: Connection) -> ActionResult | None:
    """Apply one action upstream.

    Fires in the worker for each outbox row, inside the retry policy. ``connection`` is the
    configured connection for ``action.system``/``action.instance``. Returns an
    :class:`~escalier.core.connector.ActionResult`, or None to let another plugin answer; raises a
    :class:`~escalier.core.errors.ConnectorError` on failure. Stops at the first non-None result.
    """


@hookspec(firstresult=True)
def apply_actions_for_connector(batch: ActionBatch, connection: Connection) -> list[ActionResult] | None:
    """Apply the ready actions of one ticket upstream together, in as few calls as the API allows.

    Fires in the worker for each ticket with ready actions on a connection, inside the retry
    policy; one call spends one write token of the account, whatever it carries. ``batch`` holds
    the actions in the engine's order, and the keys an earlier attempt may have applied.

    Returns one :class:`~escalier.core.connector.ActionResult` per action, in order; an action
    that failed after others of the batch landed has ``error`` set (those that landed are never
    sent again). Raises a :class:`~escalier.core.errors.ConnectorError` when nothing landed.
    Returns None to let another plugin answer; the worker then applies the actions one by one
    with ``apply_action_for_connector``. Stops at the first non-None result.
    """


@hookspec(firstresult=True)
def apply_sweep_for_connector(
    batches: list[ActionBatch], connection: Connection
) -> list[list[ActionResult]] | None:
    """Apply many tickets' ready actions on one connection at once (a bulk update).

    Fires in the worker when one pass finds at least ``sweep_at_least`` tickets with ready actions
    on one connection (a breach sweep), before each would be applied alone; the call spends one
    write token, and the writes the results report (``ActionResult.calls``) spend theirs. Returns
    one list of results per batch, in order, each as :func:`apply_actions_for_connector` would;
    a ticket the bulk update did not reach gets a :class:`~escalier.core.errors.TransientError`,
    never a result taken for success. Raises a ``ConnectorError`` when nothing landed. Returns
    None to let the worker apply the tickets one by one. Stops at the first non-None result.
    """


@hookspec(firstresult=True)
def list_changes_for_connector(
    connection: Connection, cursor: str | None, now: datetime
) -> Changes | None:
    """List what changed upstream since ``cursor``, to catch up on deliveries that never came.

    Fires in the worker at start-up and every ``reconcile_every`` per connection. ``cursor`` is
    what the previous call returned (None the first time: the connector then looks back a short,
    documented window from ``now``). Returns a :class:`~escalier.core.connector.Changes` whose
    events carry the same ids a webhook of the same change would give, so that a change seen by
    both is decided once; ``more`` asks to be called again at once. Returns None when the
    connector cannot list changes. Stops at the first non-None result.
    """


@hookspec
def escalation_decided(
    system: str, ticket_id: str, history: list[Mapping[str, Any]], actions: list[Action]
) -> None:
    """Notification: the engine made a decision that was committed to the store.

    Fires after the commit. ``history`` holds the new audit entries as dicts, ``actions`` the
    actions queued. Returns nothing; a failure is logged and ignored.
    """


@hookspec
def action_applied(action: Action, result: ActionResult) -> None:
    """Notification: an action reached its upstream.

    Fires after the outbox row is marked done. Returns nothing; a failure is logged and ignored.
    """
