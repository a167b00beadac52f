"""The Jira connector's section of the policy file, and what a tier's Jira target may say."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import Field

from escalier.connectors._config import ConnectorSettings, StrictModel, check_person
from escalier.core.policy import SecretRef

__all__ = ["JiraConfig", "JiraSite", "JiraTarget", "check_target"]


class JiraSite(ConnectorSettings):
    """One Jira site: Cloud or Data Center."""

    url: str = Field(pattern=r"^https?://", examples=["https://acme.atlassian.net"])
    deployment: Literal["cloud", "datacenter"] = "cloud"
    user: str | None = Field(
        default=None, description="Cloud: the account's email for an API token; Data Center: omit for a PAT"
    )
    token: SecretRef
    webhook_secrets: list[SecretRef] = Field(
        default_factory=list, description="current secret first; a previous one during rotation"
    )
    project: str | None = None
    components: list[str] = Field(default_factory=list, description="component names targets may use")
    # Data Center identifies users by username, Cloud by accountId; either way this is ours.
    service_account: str | None = Field(
        default=None, description="Escalier's own accountId or username, to ignore its own changes"
    )


class JiraConfig(JiraSite):
    """The default Jira site, and more sites by instance name."""

    instances: dict[str, JiraSite] = Field(default_factory=dict)


class JiraTarget(StrictModel):
    """Where a tier lives in Jira."""

    assignee: str | None = Field(default=None, description="a person from people")
    component: str | None = None
    labels: list[str] = Field(default_factory=list)


def check_target(config: JiraConfig, target: JiraTarget, people: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Problems with a Jira target that the Jira config and people can tell."""
    problems = check_person("assignee", target.assignee, people)
    if target.component and config.components and target.component not in config.components:
        problems.append(
            ("component", f"'{target.component}' is not one of connectors.jira.components")
        )
    if not (target.assignee or target.component or target.labels):
        problems.append(("", "a Jira target needs an assignee, a component or labels"))
    return problems
