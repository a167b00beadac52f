"""The Zendesk connector's section of the policy file, and what a tier's Zendesk target may say."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import Field

from escalier.connectors._config import ConnectorSettings, StrictModel, check_person
from escalier.core.policy import SecretRef

__all__ = ["ZendeskAccount", "ZendeskConfig", "ZendeskTarget", "check_target"]


class ZendeskAccount(ConnectorSettings):
    """One Zendesk account."""

    subdomain: str = Field(pattern=r"^[a-z0-9][a-z0-9-]*$", examples=["acme"])
    email: str = Field(description="the agent the API token belongs to")
    token: SecretRef
    webhook_secrets: list[SecretRef] = Field(
        default_factory=list, description="current signing secret first; a previous one during rotation"
    )
    groups: dict[str, int] = Field(
        default_factory=dict, description="group names used in targets -> Zendesk group ids"
    )
    service_user_id: int | None = Field(
        default=None, description="Escalier's own user id, to ignore its own changes"
    )
    # Zendesk's ticket-update budget (about 100 a minute) is shared with the human agents.
    writes_per_minute: int = Field(default=40, ge=1)


class ZendeskConfig(ZendeskAccount):
    """The default Zendesk account, and more accounts by instance name."""

    instances: dict[str, ZendeskAccount] = Field(default_factory=dict)


class ZendeskTarget(StrictModel):
    """Where a tier lives in Zendesk."""

    group: str | None = Field(default=None, description="a name from connectors.zendesk.groups")
    assignee: str | None = Field(default=None, description="a person from people")


def check_target(
    config: ZendeskConfig, target: ZendeskTarget, people: Mapping[str, Any]
) -> list[tuple[str, str]]:
    """Problems with a Zendesk target that the Zendesk config and people can tell."""
    problems = check_person("assignee", target.assignee, people)
    if target.group is not None and target.group not in config.groups:
        known = ", ".join(sorted(config.groups)) or "none defined"
        problems.append(("group", f"'{target.group}' is not a defined group (known: {known})"))
    if not (target.group or target.assignee):
        problems.append(("", "a Zendesk target needs a group or an assignee"))
    return problems
