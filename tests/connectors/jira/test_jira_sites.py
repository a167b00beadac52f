"""Several Jira sites in one policy: a Cloud site and a Data Center site side by side, each with
its own secret, its own user ids and targets, and its own write budget."""

from __future__ import annotations

import hashlib
import hmac
import json

import pytest
import requests
from jira_rig import SECRET, TOKEN, labels

from escalier.connectors.jira.sandbox import JiraSandbox
from escalier.plugins import get_plugin_manager
from escalier.runtime.local import LocalDeployment

pytestmark = pytest.mark.timeout(120)

EU_SECRET = "eu-dc-webhook-secret"
EU_TOKEN = "eu-dc-personal-access-token"
ENVIRON = {"JIRA_API_TOKEN": TOKEN, "JIRA_WEBHOOK_SECRET": SECRET,
           "JIRA_EU_TOKEN": EU_TOKEN, "JIRA_EU_WEBHOOK_SECRET": EU_SECRET}

POLICY = """\
name: Two Jira sites
default_calendar: always
calendars:
  always: {{timezone: UTC, hours: 24x7}}
people:
  priya: {{name: Priya Raman, email: priya@northwind.example, jira: "{priya}"}}
  tomas: {{name: Tomas Novak, email: tomas@northwind.example, jira: "{tomas}"}}
connectors:
  jira:
    url: {cloud_url}
    deployment: cloud
    user: escalier@example.com
    token: ${{JIRA_API_TOKEN}}
    webhook_secrets: ["${{JIRA_WEBHOOK_SECRET}}"]
    service_account: "{cloud_me}"
    components: [Support L1, Support L2, Platform]
    fields: {{severity: customfield_10050}}
    writes_per_minute: 600
    reconcile_every: "off"
    instances:
      eu-dc:
        url: {dc_url}
        deployment: datacenter
        token: ${{JIRA_EU_TOKEN}}
        webhook_secrets: ["${{JIRA_EU_WEBHOOK_SECRET}}"]
        service_account: escalier
        people: {{priya: priya, tomas: tomas}}
        components: [Support L1, Support L2, Platform]
        fields: {{severity: customfield_10050}}
        writes_per_minute: 30
        reconcile_every: "off"
tiers:
  - level: 1
    name: General support
    targets: {{jira: {{component: Support L1, labels: [tier-1]}}}}
    raci: {{accountable: [priya]}}
  - level: 2
    name: Specialists
    targets:
      jira:
        component: Support L2
        labels: [tier-2]
        assignee: priya
        instances: {{eu-dc: {{component: Platform, assignee: tomas}}}}
    raci: {{accountable: [priya]}}
severities: [critical, high, medium, low]
impact: [{{name: single, users_at_least: 0}}]
matrix:
  critical: {{single: {{tier: 2}}}}
  high: {{single: {{tier: 1}}}}
  medium: {{single: {{tier: 1}}}}
  low: {{single: {{tier: 1}}}}
"""


def test_a_cloud_site_and_a_data_center_site_escalate_side_by_side(tmp_path) -> None:
    cloud = JiraSandbox(deployment="cloud", token=TOKEN, webhook_secret=SECRET,
                        webhook_retry_delays=(0.05,)).start()
    dc = JiraSandbox(deployment="datacenter", token=EU_TOKEN, webhook_secret=EU_SECRET,
                     webhook_retry_delays=(0.05,)).start()
    policy = tmp_path / "escalier.yaml"
    policy.write_text(POLICY.format(
        cloud_url=cloud.url, dc_url=dc.url, cloud_me=cloud.service_account,
        priya=cloud.user("priya")["accountId"], tomas=cloud.user("tomas")["accountId"],
    ))
    try:
        with LocalDeployment(policy, f"sqlite:///{tmp_path / 'escalier.db'}",
                             sandboxes={"jira": cloud, "jira/eu-dc": dc}, environ=ENVIRON,
                             plugin_manager=get_plugin_manager(load_entrypoints=False)) as site:
            severity = {"customfield_10050": {"value": "critical"}}
            in_cloud = cloud.create_issue("SUP", "Checkout fails", fields=severity, as_user="dana")["key"]
            in_dc = dc.create_issue("SUP", "Checkout fails in Frankfurt", fields=severity, as_user="jonas")["key"]
            site.settle()

            moved_cloud, moved_dc = cloud.issue(in_cloud)["fields"], dc.issue(in_dc)["fields"]
            assert [c["name"] for c in moved_cloud["components"]] == ["Support L2"]
            assert moved_cloud["assignee"]["accountId"] == cloud.user("priya")["accountId"]
            assert [c["name"] for c in moved_dc["components"]] == ["Platform"]  # the site's own target
            assert moved_dc["assignee"]["name"] == "tomas"  # the site's own user id
            assert "tier-2" in labels(cloud.issue(in_cloud)) and "tier-2" in labels(dc.issue(in_dc))
            assert cloud.duplicate_keys() == [] and dc.duplicate_keys() == []
            assert {(row.instance, row.ticket_id) for row in site.outbox_rows()} == {
                ("default", in_cloud), ("eu-dc", in_dc)}

            # Each site's budget is its own.
            limiter = site.worker.rate_limiter
            assert limiter.bucket("jira", "default").capacity == 600
            assert limiter.bucket("jira", "eu-dc").capacity == 30

            # Each site's secret is its own: a delivery signed with the Cloud secret is refused
            # on the Data Center site's endpoint.
            _, body = cloud.delivery_bodies()[0]
            raw = json.dumps(body).encode()
            signed = "sha256=" + hmac.new(SECRET.encode(), raw, hashlib.sha256).hexdigest()
            answer = requests.post(f"{site.receiver_url}/webhooks/jira/eu-dc", data=raw, timeout=5,
                                   headers={"Content-Type": "application/json", "X-Hub-Signature": signed,
                                            "X-Atlassian-Webhook-Identifier": "forged-1"})
            assert answer.status_code == 401 and answer.json()["error"] == "bad_signature"
    finally:
        cloud.stop()
        dc.stop()


def test_a_target_for_a_site_that_is_not_configured_is_a_config_error(tmp_path) -> None:
    from escalier.core.config import read_policy

    policy = tmp_path / "escalier.yaml"
    policy.write_text(POLICY.format(cloud_url="https://a.example", dc_url="https://b.example",
                                    cloud_me="x", priya="p", tomas="t").replace(
        "instances: {eu-dc: {component: Platform", "instances: {us-dc: {component: Platform"))
    _, problems = read_policy(policy, environ=ENVIRON, plugin_manager=get_plugin_manager(load_entrypoints=False))
    messages = [str(p) for p in problems if p.severity == "error"]
    assert any("instances.us-dc" in m and "is not a site under connectors.jira.instances (known: eu-dc)" in m
               for m in messages), messages
