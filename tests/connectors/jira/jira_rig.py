"""The whole path on one machine, with the Jira sandbox as the upstream.

sandbox API -> signed webhook -> receiver -> store -> engine -> outbox -> Jira connector (the real
``jira`` client) -> sandbox. Nothing is mocked; the worker's passes are driven by the test.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from escalier.connectors.jira.sandbox import JiraSandbox
from escalier.plugins import get_plugin_manager
from escalier.runtime.local import LocalDeployment
from escalier.runtime.ratelimit import RateLimiter
from escalier.runtime.testing import FakeClock

SECRET = "jira-webhook-secret"
TOKEN = "sandbox-token"
ENVIRON = {"JIRA_API_TOKEN": TOKEN, "JIRA_WEBHOOK_SECRET": SECRET}

POLICY = """\
name: Jira end to end
default_calendar: always
calendars:
  always: {{timezone: UTC, hours: 24x7}}
people:
  mia: {{name: Mia Hoffmann, email: mia@northwind.example, jira: "{mia}"}}
  priya: {{name: Priya Raman, email: priya@northwind.example, jira: "{priya}"}}
  tomas: {{name: Tomas Novak, email: tomas@northwind.example, jira: "{tomas}"}}
connectors:
  jira:
    url: {url}
    deployment: {deployment}
{user}    token: ${{JIRA_API_TOKEN}}
    webhook_secrets: ["${{JIRA_WEBHOOK_SECRET}}"]
    project: SUP
    components: [Support L1, Support L2, Platform]
    jql: project = SUP
    service_account: "{service_account}"
    service_desk_projects: [SUP]
    fields: {{severity: customfield_10050, users_affected: customfield_10051}}
    writes_per_minute: {writes_per_minute}
    reconcile_every: "{reconcile_every}"
    timeout_seconds: 5
tiers:
  - level: 1
    name: General support
    targets: {{jira: {{component: Support L1, labels: [tier-1], assignee: mia}}}}
    sla: {{resolve: 8h}}
    raci: {{accountable: [mia]}}
  - level: 2
    name: Specialists
    targets: {{jira: {{component: Support L2, labels: [tier-2], assignee: priya}}}}
    sla: {{resolve: 8h}}
    raci: {{accountable: [priya]}}
  - level: 3
    name: Critical response
    targets: {{jira: {{component: Platform, labels: [tier-3], assignee: tomas}}}}
    sla: {{resolve: 4h}}
    raci: {{accountable: [tomas]}}
severities: [critical, high, medium, low]
impact:
  - {{name: widespread, users_at_least: 50}}
  - {{name: single, users_at_least: 0}}
notifications: {{repeat_every: 4h, max_repeats: 1}}
criteria:
  - id: high-stale
    when: {{tier: [1], severity: [high], unresolved_for: 30m}}
    then: {{to_tier: 3}}
  - id: stale
    when: {{tier: [1], unresolved_for: 30m}}
    then: {{to_tier: 2}}
matrix:
  critical: {{widespread: {{tier: 3, priority: urgent}}, single: {{tier: 2, priority: high}}}}
  high: {{widespread: {{tier: 2, priority: high}}, single: {{tier: 1, priority: normal}}}}
  medium: {{widespread: {{tier: 1, priority: normal}}, single: {{tier: 1, priority: normal}}}}
  low: {{widespread: {{tier: 1}}, single: {{tier: 1}}}}
"""

class JiraRig(LocalDeployment):
    """The local deployment with the Jira sandbox as its upstream."""

    @property
    def sandbox(self) -> JiraSandbox:
        """The Jira sandbox."""
        return self.sandboxes["jira"]  # type: ignore[return-value]

    def severity(self, value: str) -> dict[str, Any]:
        """The custom-field value that sets an issue's severity."""
        return {"customfield_10050": {"value": value}}

    def writes(self) -> dict[str, int]:
        """The sandbox's counts of write calls per endpoint."""
        return {name: n for name, n in self.sandbox.calls().items() if not name.startswith("GET ")}


@contextmanager
def jira_rig(
    tmp_path: Path,
    *,
    deployment: str = "cloud",
    writes_per_minute: int = 600,
    reconcile_every: str = "off",
    rate_limiter: RateLimiter | None = None,
    clock: FakeClock | None = None,
) -> Iterator[JiraRig]:
    """Start the Jira sandbox and a local deployment on a policy pointing at it.

    With ``clock``, the sandbox, the receiver and the worker share one compressed time: the
    worker's sleeps advance it, and the sandbox's write budget and timestamps follow it.
    """
    sandbox = JiraSandbox(deployment=deployment, token=TOKEN, webhook_secret=SECRET,
                          webhook_retry_delays=(0.05, 0.1, 0.2),
                          clock=clock.now if clock is not None else None).start()
    ids = {handle: sandbox.user(handle) for handle in ("mia", "priya", "tomas")}
    key = "accountId" if deployment == "cloud" else "name"
    policy_path = tmp_path / "escalier.yaml"
    policy_path.write_text(POLICY.format(
        url=sandbox.url, deployment=deployment,
        user="    user: escalier@example.com\n" if deployment == "cloud" else "",
        service_account=sandbox.service_account, writes_per_minute=writes_per_minute,
        reconcile_every=reconcile_every, **{h: user[key] for h, user in ids.items()},
    ))
    try:
        with JiraRig(policy_path, f"sqlite:///{tmp_path / 'escalier.db'}", sandboxes={"jira": sandbox},
                     environ=ENVIRON, clock=clock, rate_limiter=rate_limiter,
                     plugin_manager=get_plugin_manager(load_entrypoints=False)) as rig:
            yield rig
    finally:
        sandbox.stop()


def jira_keys(rows: list[Any]) -> dict[str, list[str]]:
    """The outbox's action keys per ticket."""
    found: dict[str, list[str]] = {}
    for row in rows:
        found.setdefault(row.ticket_id, []).append(row.idempotency_key)
    return found


def labels(issue: Mapping[str, Any]) -> list[str]:
    """An issue's labels as the sandbox holds them."""
    return list(issue["fields"].get("labels") or [])
