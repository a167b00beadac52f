"""The built-in Jira connector plugin."""

from __future__ import annotations

from escalier.connectors.jira import config
from escalier.connectors.jira.webhook import register_webhooks  # noqa: F401
from escalier.core.connector import ConnectorSpec
from escalier.core.hookspecs import hookimpl

__all__ = ["register_connectors", "register_webhooks"]


@hookimpl(trylast=True)
def register_connectors() -> list[ConnectorSpec]:
    """The Jira connector: Cloud and Data Center sites."""
    return [
        ConnectorSpec(
            name="jira",
            title="Jira (Cloud and Data Center)",
            config_model=config.JiraConfig,
            target_model=config.JiraTarget,
            check_target=config.check_target,
        )
    ]
