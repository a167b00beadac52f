"""The Zendesk connector's section of the policy file, and what a tier's Zendesk target may say."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import Field, model_validator

from escalier.connectors._config import ConnectorSettings, StrictModel, check_person
from escalier.core.policy import SecretRef

__all__ = ["ZendeskAccount", "ZendeskConfig", "ZendeskFields", "ZendeskTarget", "check_target"]


class ZendeskFields(StrictModel):
    """Which Zendesk ticket fields hold what the engine reads: a ticket field id (a number) each."""

    severity: int | None = Field(
        default=None,
        description="a drop-down or text field whose value is one of the policy's severities; "
        "without it, the severity comes from the priority (severities_by_priority)",
    )
    users_affected: int | None = Field(default=None, description="a number field")
    custom: dict[str, int] = Field(
        default_factory=dict,
        description="more fields for criteria and required information: a name the policy uses "
        "-> a Zendesk ticket field id",
        examples=[{"steps_to_reproduce": 360001234567, "business_impact": 360001234568}],
    )


class ZendeskAccount(ConnectorSettings):
    """One Zendesk account."""

    subdomain: str = Field(pattern=r"^[a-z0-9][a-z0-9-]*$", examples=["acme"])
    url: str | None = Field(
        default=None,
        pattern=r"^https?://[^/?#]+/?$",
        description="the API's origin when it is not https://<subdomain>.zendesk.com "
        "(a sandbox, a proxy); normally left out",
        examples=["http://127.0.0.1:8092"],
    )
    email: str = Field(description="the agent the API token belongs to")
    token: SecretRef | None = Field(default=None, description="an API token (with email)")
    oauth_token: SecretRef | None = Field(
        default=None, description="an OAuth access token, instead of an API token"
    )
    webhook_secrets: list[SecretRef] = Field(
        default_factory=list, description="current signing secret first; a previous one during rotation"
    )
    groups: dict[str, int] = Field(
        default_factory=dict, description="group names used in targets -> Zendesk group ids"
    )
    service_user_id: int | None = Field(
        default=None, description="Escalier's own user id, to ignore its own changes"
    )
    fields: ZendeskFields = Field(default_factory=ZendeskFields)
    severities_by_priority: dict[str, str] = Field(
        default_factory=lambda: {
            "urgent": "critical", "high": "high", "normal": "medium", "low": "low",
        },
        description="Zendesk priority -> severity, for accounts with no severity field",
    )
    # Zendesk's ticket-update budget (about 100 a minute) is shared with the human agents.
    writes_per_minute: int = Field(default=40, ge=1)

    @model_validator(mode="after")
    def _one_credential(self) -> ZendeskAccount:
        if (self.token is None) == (self.oauth_token is None):
            raise ValueError("give either token (an API token, with email) or oauth_token")
        return self


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
