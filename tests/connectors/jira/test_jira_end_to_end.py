"""End to end with the real `jira` client: an issue changed in the Jira sandbox is escalated there.

Every step takes the real path: sandbox API -> signed webhook -> receiver -> store -> engine ->
outbox -> Jira connector -> sandbox. Call counts come from the sandbox, which counts every request
per endpoint and every write per action key (a key written twice is a duplicate).
"""

from __future__ import annotations

import hashlib
import hmac
import json
from datetime import UTC, datetime

import pytest
import requests
from jira_rig import SECRET, TOKEN, jira_keys, jira_rig, labels

from escalier.runtime.testing import FakeClock

pytestmark = pytest.mark.timeout(120)

EDIT = "PUT /rest/api/2/issue/{issueIdOrKey}"
COMMENT = "POST /rest/api/2/issue/{issueIdOrKey}/comment"


def first_edit(sandbox, key: str, *, label: str | None = None) -> int:
    """The id of Escalier's first change to an issue (that added ``label``, if given).

    Jira numbers histories site-wide, in order.
    """
    me = sandbox.user(sandbox.service_account)
    ids = [
        int(history["id"]) for history in sandbox.issue(key)["changelog"]["histories"]
        if any(history["author"].get(f) == me.get(f) for f in ("accountId", "name") if me.get(f))
        and (label is None or any(item.get("field") == "labels" and label in (item.get("toString") or "")
                                  for item in history["items"]))
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


def test_200_breaches_on_a_100_a_minute_budget_land_once_most_urgent_first(tmp_path):
    clock = FakeClock(datetime.now(UTC).replace(microsecond=0))
    with jira_rig(tmp_path, writes_per_minute=100, clock=clock) as rig:
        sandbox = rig.sandbox
        sandbox.rate_limit(100, per_seconds=60.0)  # Jira Cloud's order of magnitude, on both sides
        urgent = {}
        for n in range(200):
            severity = "high" if n % 4 == 0 else "medium"
            key = sandbox.create_issue("SUP", f"Slow dashboard {n}", priority="Medium",
                                       fields=rig.severity(severity), as_user="dana")["key"]
            urgent[key] = severity == "high"
        rig.settle()
        before = sandbox.calls()

        # Half an hour later every one of them breaches its time frame at once.
        clock.advance(31 * 60)
        breached = clock.now()
        sandbox.inject_fault(status=429, count=3, retry_after=5, method="PUT", path="/rest/api/2/issue/*")
        # Decisions go first, as the worker's deciding thread takes them before the outbox's.
        decided = sum(iter(rig.worker.process_timers, 0))
        assert decided >= 200  # every issue's time frame ran out
        rig.settle(timeout=110)

        assert sandbox.duplicate_keys() == []
        assert {row.state for row in rig.outbox_rows()} == {"done"}
        assert all(count == 1 for count in sandbox.key_counts().values())
        tiers = {key: (3 if "tier-3" in labels(sandbox.issue(key)) else 2) for key in urgent}
        assert tiers == {key: 3 if high else 2 for key, high in urgent.items()}
        calls = {name: n - before.get(name, 0) for name, n in sandbox.calls().items()}
        # One edit and one comment per breach, the three injected 429s, and few of the budget's own
        # (Jira's window slides where our bucket refills evenly; its headers keep them rare).
        assert 200 + 3 <= calls[EDIT] <= 200 + 3 + 5 and 200 <= calls[COMMENT] <= 205, calls
        # Escalier's edits in order: every tier-3 move before any tier-2 one.
        order = sorted(urgent, key=lambda key: first_edit(sandbox, key, label=f"tier-{tiers[key]}"))
        moved = [3 if urgent[key] else 2 for key in order]
        assert moved == sorted(moved, reverse=True)
        # It took the budget's time and no more: about the writes over 100 a minute.
        writes = sum(n for name, n in calls.items() if not name.startswith("GET ")) - 3
        minutes = (clock.now() - breached).total_seconds() / 60
        # (the upper bound leaves room for the pauses that the sandbox's own 429s ask for).
        assert (writes - 100) / 100 - 0.1 <= minutes <= writes / 100 * 1.5 + 2, (writes, minutes)


def test_an_automation_rules_request_escalates_an_issue_without_a_webhook(tmp_path):
    """Jira Automation's "Send web request" with the issue data and the secret in a header."""
    with jira_rig(tmp_path) as rig:
        sandbox = rig.sandbox
        sandbox.drop_webhooks(1)
        key = sandbox.create_issue("SUP", "Reports export times out", priority="High",
                                   fields=rig.severity("critical"), as_user="dana")["key"]
        rig.settle()
        assert rig.inbox_rows() == []

        # What the rule sends: the issue as Jira's REST API gives it.
        issue = requests.get(f"{sandbox.url}/rest/api/2/issue/{key}", auth=("escalier@example.com", TOKEN),
                             timeout=10).json()
        body = json.dumps(issue).encode()
        url = f"{rig.receiver_url}/webhooks/jira"
        headers = {"Content-Type": "application/json", "X-Escalier-Token": SECRET}
        assert requests.post(url, data=body, headers={**headers, "X-Escalier-Token": "wrong"},
                             timeout=10).status_code == 401
        assert requests.post(url, data=body, headers=headers, timeout=10).status_code == 202
        rig.settle()

        assert "tier-2" in labels(sandbox.issue(key))
        # The rule firing twice on the same update changes nothing.
        assert requests.post(url, data=body, headers=headers, timeout=10).json() == {"status": "duplicate"}
        rig.settle()
        assert sandbox.duplicate_keys() == []
        assert len([row for row in rig.inbox_rows() if row.event_type == "automation"]) == 1
