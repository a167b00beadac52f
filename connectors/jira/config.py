"""The Jira connector's section of the policy file, and what a tier's Jira target may say."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import Field

from escalier.connectors._config import ConnectorSettings, StrictModel, check_person
from escalier.core.policy import SecretRef

__all__ = ["JiraConfig", "JiraFields", "JiraPlace", "JiraSite", "JiraTarget", "check_target"]


class JiraFields(StrictModel):
    """Which Jira fields hold what the engine reads: a field id (``customfield_10050``) each."""

    severity: str | None = Field(
        default=None,
        description="a select or text field whose value is one of the policy's severities; "
        "without it, the priority's name (lower-cased) is taken as the severity",
    )
    users_affected: str | None = Field(default=None, description="a number field")
    organization: str | None = Field(
        default=None, description="a field naming the customer organization (Service Management: "
        "its Organizations field)"
    )
    custom: dict[str, str] = Field(
        default_factory=dict,
        description="more fields for criteria and required information: a name the policy uses "
        "-> a Jira field id",
        examples=[{"steps_to_reproduce": "customfield_10060", "business_impact": "customfield_10061"}],
    )


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
    components: list[str] = Field(
        default_factory=list,
        description="component names targets may use; moving a ticket to a tier's component "
        "removes the others of this list and keeps any other component a person set",
    )
    jql: str | None = Field(
        default=None,
        description="the issues Escalier governs, as JQL (e.g. 'project = SUP'); reconciliation "
        "searches within it, and the webhook's own JQL filter should say the same",
        examples=["project = SUP AND issuetype != Epic"],
    )
    fields: JiraFields = Field(default_factory=JiraFields)
    priorities: dict[str, str] = Field(
        default_factory=lambda: {"urgent": "Highest", "high": "High", "normal": "Medium", "low": "Low"},
        description="the policy's priorities -> Jira priority names; read back the other way",
    )
    severities_by_priority: dict[str, str] = Field(
        default_factory=lambda: {
            "Highest": "critical", "High": "high", "Medium": "medium", "Low": "low", "Lowest": "low",
        },
        description="Jira priority name -> severity, for sites with no severity field",
    )
    pending_statuses: list[str] = Field(
        default_factory=lambda: ["Waiting for customer", "Pending"],
        description="status names that mean waiting on the customer (SLA clocks pause)",
    )
    on_hold_statuses: list[str] = Field(
        # Not "Waiting for support": in Service Management that is the support team's turn.
        default_factory=lambda: ["On hold", "Blocked", "Waiting for vendor", "Waiting for third party"],
        description="status names that mean waiting on a third party",
    )
    service_desk_projects: list[str] = Field(
        default_factory=list,
        description="keys of Service Management projects: only there are internal comments "
        "sent with the sd.public.comment property (elsewhere it breaks some Jira versions)",
    )
    # Data Center identifies users by username, Cloud by accountId; either way this is ours.
    service_account: str | None = Field(
        default=None, description="Escalier's own accountId or username, to ignore its own changes"
    )
    people: dict[str, str] = Field(
        default_factory=dict,
        description="this site's user ids (accountId on Cloud, username on Data Center) of people "
        "whose id here differs from their people.<name>.jira",
        examples=[{"mia": "mhoffmann", "priya": "praman"}],
    )


class JiraConfig(JiraSite):
    """The default Jira site, and more sites by instance name."""

    instances: dict[str, JiraSite] = Field(default_factory=dict)


class JiraPlace(StrictModel):
    """Where a tier lives on one Jira site."""

    assignee: str | None = Field(default=None, description="a person from people")
    component: str | None = None
    labels: list[str] = Field(default_factory=list)


class JiraTarget(JiraPlace):
    """Where a tier lives in Jira; ``instances`` says it differently for other sites."""

    instances: dict[str, JiraPlace] = Field(
        default_factory=dict,
        description="per site under connectors.jira.instances: its assignee, component and labels "
        "where they differ (what is not given comes from the target itself)",
    )

    def for_instance(self, instance: str) -> JiraPlace:
        """The target on one site: its own values over the target's."""
        own = self.instances.get(instance)
        if own is None:
            return self
        return JiraPlace(**{**self.model_dump(exclude={"instances"}), **own.model_dump(exclude_unset=True)})


def check_target(config: JiraConfig, target: JiraTarget, people: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Problems with a Jira target that the Jira config and people can tell."""
    problems = _check_place("", config, target, people)
    if not (target.assignee or target.component or target.labels) and not target.instances:
        problems.append(("", "a Jira target needs an assignee, a component or labels"))
    for instance, place in target.instances.items():
        site = config.instances.get(instance)
        if site is None:
            known = ", ".join(sorted(config.instances)) or "none defined"
            problems.append((f"instances.{instance}", f"is not a site under connectors.jira.instances "
                                                      f"(known: {known})"))
            continue
        problems.extend(_check_place(f"instances.{instance}.", site, place, people))
    return problems


def _check_place(prefix: str, site: JiraSite, place: JiraPlace, people: Mapping[str, Any]) -> list[tuple[str, str]]:
    problems = [(prefix + path, message) for path, message in check_person("assignee", place.assignee, people)]
    if place.component and site.components and place.component not in site.components:
        problems.append((f"{prefix}component", f"'{place.component}' is not one of the site's components"))
    return problems
