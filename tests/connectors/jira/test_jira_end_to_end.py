"""End to end with the real `jira` client: an issue changed in the Jira sandbox is escalated there.

Every step takes the real path: sandbox API -> signed webhook -> receiver -> store -> engine ->
outbox -> Jira connector -> sandbox. Call counts come from the sandbox, which counts every request
per endpoint and every write per action key (a key written twice is a duplicate).
"""

from __future__ import annotations

import hashlib
import hmac
import json

import pytest
import requests
from jira_rig import SECRET, jira_keys, jira_rig, labels

from escalier.runtime.ratelimit import RateLimiter

pytestmark = pytest.mark.timeout(120)

EDIT = "PUT /rest/api/2/issue/{issueIdOrKey}"
COMMENT = "POST /rest/api/2/issue/{issueIdOrKey}/comment"


def first_edit(sandbox, key: str) -> int:
    """The id of Escalier's first change to an issue: Jira numbers histories site-wide, in order."""
    me = sandbox.user(sandbox.service_account)
    ids = [
        int(history["id"]) for history in sandbox.issue(key)["changelog"]["histories"]
        if any(history["author"].get(f) == me.get(f) for f in ("accountId", "name") if me.get(f))
    ]
    assert ids, f"Escalier never edited {key}"
    return min(ids)


def step_writes(writes: dict[str, int]) -> int:
    """The writes of an escalation step proper: the edit and the comment (not the notification)."""
    return writes.get(EDIT, 0) + writes.get(COMMENT, 0)


@pytest.mark.parametrize("deployment", ["cloud", "datacenter"])
def test_a_critical_issue_is_escalated_in_two_calls_and_its_echo_is_ignored(tmp_path, deployment):
    with jira_rig(tmp_path, deployment=deployment) as rig:
        sandbox = rig.sandbox
        created = sandbox.create_issue("SUP", "Checkout fails for every EU customer", priority="High",
                                       fields=rig.severity("critical"), as_user="dana" if deployment == "cloud" else "jonas")
        key = created["key"]
        rig.settle()

        issue = sandbox.issue(key)
        fields = issue["fields"]
        assert "tier-2" in labels(issue)
        assert [c["name"] for c in fields["components"]] == ["Support L2"]
        assignee = fields["assignee"]
        assert (assignee.get("accountId") or assignee.get("name")) == rig.sandbox.user("priya")[
            "accountId" if deployment == "cloud" else "name"]
        assert fields["priority"]["name"] == "High"
        [comment] = [c for c in sandbox.comments(key) if "escalier:action=" in c["body"]]
        assert "Specialists" in comment["body"]

        writes = rig.writes()
        assert step_writes(writes) == 2, writes  # labels, component, assignee and priority in one edit
        assert sandbox.duplicate_keys() == []
        assert {row.state for row in rig.outbox_rows()} == {"done"}

        # Escalier's own edit and comment came back as webhooks: stored, recognised, not decided.
        own = [row for row in rig.inbox_rows() if row.state == "ignored"]
        assert own and all(row.error == "own-change" for row in own)
        before = len(rig.outbox_rows())
        rig.settle()
        assert len(rig.outbox_rows()) == before and step_writes(rig.writes()) == 2


def test_a_duplicate_delivery_and_the_second_delivery_of_a_comment_change_nothing(tmp_path):
    with jira_rig(tmp_path) as rig:
        sandbox = rig.sandbox
        key = sandbox.create_issue("SUP", "Invoices show the wrong VAT", priority="High",
                                   fields=rig.severity("critical"), as_user="dana")["key"]
        rig.settle()
        keys = jira_keys(rig.outbox_rows())
        calls = sandbox.calls()

        # The first webhook again, as Jira retries it (same identifier), and as a new delivery.
        event, body = sandbox.delivery_bodies()[0]
        raw = json.dumps(body).encode()
        signature = "sha256=" + hmac.new(SECRET.encode(), raw, hashlib.sha256).hexdigest()
        delivered = sandbox.deliveries()[0]
        for identifier in (delivered["id"], "a-new-identifier"):
            answer = requests.post(
                f"{rig.receiver_url}/webhooks/jira", data=raw, timeout=5,
                headers={"Content-Type": "application/json", "X-Hub-Signature": signature,
                         "X-Atlassian-Webhook-Identifier": identifier},
            )
            assert answer.status_code in (200, 202), answer.text
        # A person comments: Jira sends comment_created and jira:issue_updated (issue_commented).
        sandbox.add_comment(key, "Customer confirms it happens on every invoice.", as_user="jonas")
        rig.settle()

        assert event == "jira:issue_created"
        assert jira_keys(rig.outbox_rows()) == keys  # nothing new to do upstream
        assert sandbox.calls().get(EDIT) == calls.get(EDIT)
        assert sandbox.duplicate_keys() == []


def test_injected_429s_and_500s_are_ridden_out_and_every_action_lands_once(tmp_path):
    with jira_rig(tmp_path) as rig:
        sandbox = rig.sandbox
        sandbox.inject_fault(status=429, count=2, retry_after=0.2, method="PUT", path="/rest/api/2/issue/*")
        sandbox.inject_fault(status=500, count=1, method="POST", path="/rest/api/2/issue/*/comment")
        key = sandbox.create_issue("SUP", "Login loops back to the start page", priority="High",
                                   fields=rig.severity("critical"), as_user="dana")["key"]
        rig.settle()

        issue = sandbox.issue(key)
        assert "tier-2" in labels(issue)
        assert len([c for c in sandbox.comments(key) if "escalier:action=" in c["body"]]) == 1
        assert sandbox.duplicate_keys() == []
        assert {row.state for row in rig.outbox_rows()} == {"done"}
        assert all(count == 1 for count in sandbox.key_counts().values())
        assert sandbox.calls()[EDIT] == 3  # two 429s, then the edit


def test_reconciliation_escalates_an_issue_whose_webhook_was_dropped_once(tmp_path):
    with jira_rig(tmp_path, reconcile_every="1m") as rig:
        sandbox = rig.sandbox
        rig.worker.run_once()  # the look at start-up: nothing yet
        sandbox.drop_webhooks(1)
        key = sandbox.create_issue("SUP", "Reports export times out", priority="High",
                                   fields=rig.severity("critical"), as_user="dana")["key"]
        rig.settle()
        assert rig.inbox_rows() == [] and "tier-2" not in labels(sandbox.issue(key))

        rig.worker._reconcile_at = None  # the interval has passed
        with rig.store.engine.begin() as connection:
            connection.exec_driver_sql("UPDATE sync_cursors SET due_at = '2000-01-01 00:00:00'")
        rig.settle()
        assert "tier-2" in labels(sandbox.issue(key))
        first = jira_keys(rig.outbox_rows())

        # The next look sees the issue (and Escalier's own edit of it) again: nothing more to do.
        rig.worker._reconcile_at = None
        with rig.store.engine.begin() as connection:
            connection.exec_driver_sql("UPDATE sync_cursors SET due_at = '2000-01-01 00:00:00'")
        rig.settle()
        assert jira_keys(rig.outbox_rows()) == first
        assert sandbox.duplicate_keys() == []


def test_a_burst_on_a_small_budget_lands_every_action_once_most_urgent_first(tmp_path):
    # 100 writes a second stands for Jira's 100 a minute, on both sides.
    with jira_rig(tmp_path, writes_per_minute=100, rate_limiter=RateLimiter({"jira": 100}, period=1.0)) as rig:
        sandbox = rig.sandbox
        sandbox.rate_limit(100, per_seconds=1.0)
        sandbox.inject_fault(status=429, count=3, retry_after=0.3, method="PUT", path="/rest/api/2/issue/*")
        widespread = {"customfield_10051": 500}
        keys = {}
        for n in range(200):
            tier3 = n % 4 == 0
            fields = {**rig.severity("critical"), **(widespread if tier3 else {})}
            keys[sandbox.create_issue("SUP", f"Outage report {n}", priority="High", fields=fields,
                                      as_user="dana")["key"]] = 3 if tier3 else 2
        assert sandbox.wait_for_deliveries(timeout=60)
        while rig.worker.process_inbox():
            pass
        rig.settle(timeout=90)

        assert sandbox.duplicate_keys() == []
        assert {row.state for row in rig.outbox_rows()} == {"done"}
        assert all(count == 1 for count in sandbox.key_counts().values())
        # The order of Escalier's edits: every tier-3 issue before any tier-2 one.
        edited = sorted(keys, key=lambda k: first_edit(sandbox, k))
        assert sorted(edited) == sorted(keys)
        tiers = [keys[key] for key in edited]
        assert tiers == sorted(tiers, reverse=True)
