"""The built-in Zendesk connector plugin."""

from __future__ import annotations

from escalier.connectors.zendesk import config
from escalier.connectors.zendesk.webhook import register_webhooks  # noqa: F401
from escalier.core.connector import ConnectorSpec
from escalier.core.hookspecs import hookimpl

__all__ = ["register_connectors", "register_webhooks"]


@hookimpl(trylast=True)
def register_connectors() -> list[ConnectorSpec]:
    """The Zendesk connector: Support tickets through the REST API and event webhooks."""
    return [
        ConnectorSpec(
            name="zendesk",
            title="Zendesk Support",
            config_model=config.ZendeskConfig,
            target_model=config.ZendeskTarget,
            check_target=config.check_target,
        )
    ]
