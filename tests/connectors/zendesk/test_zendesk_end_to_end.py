"""End to end with the real `zenpy` client: a ticket changed in the Zendesk sandbox is escalated there.

sandbox API -> signed webhook (event subscriptions, or the recommended trigger body) -> receiver
-> store -> engine -> outbox -> Zendesk connector -> sandbox. Call counts come from the sandbox,
which counts every request per endpoint and every write per action key.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
import requests
from zendesk_rig import SECRET, SEVERITY_FIELD, USERS_FIELD, zendesk_rig

from escalier.runtime.testing import FakeClock

pytestmark = pytest.mark.timeout(120)

UPDATE = "PUT /api/v2/tickets/{ticket_id}.json"


def marked_comments(sandbox, ticket_id: int) -> list[dict]:
    return [c for c in sandbox.comments(ticket_id) if "escalier:action=" in (c.get("body") or "")]


@pytest.mark.parametrize("webhook_mode", ["events", "trigger"])
def test_a_critical_ticket_is_escalated_in_one_call_and_its_echo_is_ignored(tmp_path, webhook_mode):
    with zendesk_rig(tmp_path, webhook_mode=webhook_mode) as rig:
        sandbox = rig.sandbox
        created = sandbox.create_ticket("Checkout fails for every EU customer", tags=["checkout"],
                                        custom_fields={SEVERITY_FIELD: "severity_critical"})
        ticket_id = created["id"]
        rig.settle()

        ticket = sandbox.ticket(ticket_id)
        assert ticket["group_id"] == 360000102 and ticket["assignee_id"] == 360003
        assert ticket["priority"] == "high"
        assert {"checkout", "escalier-tier-2"} <= set(ticket["tags"]) and "escalier-tier-1" not in ticket["tags"]
        assert len(marked_comments(sandbox, ticket_id)) == 1
        writes = rig.writes()
        assert writes == {UPDATE: 1}, writes  # group, assignee, tags, priority and comment at once
        assert sandbox.duplicate_keys() == []
        assert {row.state for row in rig.outbox_rows()} == {"done"}

        # Escalier's own update came back as webhooks: recognised and not decided again.
        assert any(row.state == "ignored" and row.error == "own-change" for row in rig.inbox_rows())
        before = len(rig.outbox_rows())
        rig.settle()
        assert len(rig.outbox_rows()) == before and rig.writes() == {UPDATE: 1}


def test_a_persons_tags_survive_and_their_next_change_is_decided(tmp_path):
    with zendesk_rig(tmp_path, webhook_mode="trigger") as rig:
        sandbox = rig.sandbox
        ticket_id = sandbox.create_ticket("Invoices show the wrong VAT",
                                          custom_fields={SEVERITY_FIELD: "severity_critical"})["id"]
        rig.settle()
        # A person adds a tag after Escalier's comment, whose marker the trigger body still shows
        # as the latest comment: the change is theirs all the same.
        sandbox.update_ticket(ticket_id, additional_tags=["billing"], as_user="priya")
        rig.settle()
        ticket = sandbox.ticket(ticket_id)
        assert {"billing", "escalier-tier-2"} <= set(ticket["tags"])
        stored = [row for row in rig.inbox_rows() if row.state != "ignored"]
        assert len(stored) >= 2  # the creation and the person's update were decided
        assert sandbox.duplicate_keys() == []


def test_injected_429_and_500_are_ridden_out_and_every_action_lands_once(tmp_path):
    with zendesk_rig(tmp_path) as rig:
        sandbox = rig.sandbox
        sandbox.inject_fault(status=429, count=2, retry_after=0.2, method="PUT", path="/api/v2/tickets/*")
        sandbox.inject_fault(status=500, count=1, method="PUT", path="/api/v2/tickets/*")
        ticket_id = sandbox.create_ticket("Login loops back to the start page",
                                          custom_fields={SEVERITY_FIELD: "severity_critical"})["id"]
        rig.settle()

        assert sandbox.ticket(ticket_id)["group_id"] == 360000102
        assert len(marked_comments(sandbox, ticket_id)) == 1
        assert sandbox.duplicate_keys() == [] and all(n == 1 for n in sandbox.key_counts().values())
        assert {row.state for row in rig.outbox_rows()} == {"done"}
        assert rig.writes()[UPDATE] == 4  # two 429s, a 500, then the update


def test_reconciliation_escalates_a_ticket_whose_webhook_was_dropped_once(tmp_path):
    with zendesk_rig(tmp_path, reconcile_every="1m") as rig:
        sandbox = rig.sandbox
        rig.worker.run_once()  # the look at start-up: nothing yet
        sandbox.drop_webhooks(100)
        ticket_id = sandbox.create_ticket("Reports export times out",
                                          custom_fields={SEVERITY_FIELD: "severity_critical"})["id"]
        rig.settle()
        assert rig.inbox_rows() == [] and sandbox.ticket(ticket_id)["group_id"] != 360000102

        for _ in range(2):  # two looks: the second sees the ticket (and our update) again
            rig.worker._reconcile_at = None
            with rig.store.engine.begin() as connection:
                connection.exec_driver_sql("UPDATE sync_cursors SET due_at = '2000-01-01 00:00:00'")
            rig.settle()
        assert sandbox.ticket(ticket_id)["group_id"] == 360000102
        assert len(marked_comments(sandbox, ticket_id)) == 1
        assert sandbox.duplicate_keys() == []


def test_a_breach_half_an_hour_later_moves_the_ticket_in_one_call(tmp_path):
    clock = FakeClock(datetime.now(UTC).replace(microsecond=0))
    with zendesk_rig(tmp_path, clock=clock) as rig:
        sandbox = rig.sandbox
        ticket_id = sandbox.create_ticket("Dashboard is slow",
                                          custom_fields={SEVERITY_FIELD: "severity_medium"})["id"]
        rig.settle()
        assert sandbox.ticket(ticket_id)["group_id"] == 360000101
        opened = rig.writes().get(UPDATE, 0)

        clock.advance(31 * 60)
        rig.settle()
        ticket = sandbox.ticket(ticket_id)
        assert ticket["group_id"] == 360000102 and ticket["assignee_id"] == 360003
        assert rig.writes()[UPDATE] == opened + 1
        assert sandbox.duplicate_keys() == []


BULK = "PUT /api/v2/tickets/update_many.json"


def test_a_sweep_of_500_breached_tickets_goes_in_bulk_jobs(tmp_path):
    clock = FakeClock(datetime.now(UTC).replace(microsecond=0))
    with zendesk_rig(tmp_path, clock=clock) as rig:
        sandbox = rig.sandbox
        rig.worker.batch_size = 100  # tickets a pass: a job takes up to 100
        tickets = [sandbox.create_ticket(f"Dashboard is slow ({n})",
                                         custom_fields={SEVERITY_FIELD: "severity_medium"})["id"]
                   for n in range(500)]
        rig.settle(timeout=100)
        opened = dict(sandbox.calls())
        assert all(sandbox.ticket(t)["group_id"] == 360000101 for t in tickets[:5])

        clock.advance(31 * 60)  # every one of them is unresolved past its time frame
        rig.settle(timeout=100)

        calls = {name: n - opened.get(name, 0) for name, n in sandbox.calls().items()}
        assert calls.get(BULK) == 5, calls  # 500 tickets, 100 a job
        assert calls.get(UPDATE, 0) == 0, calls  # none of them alone
        assert all(sandbox.ticket(t)["group_id"] == 360000102 for t in tickets)
        assert sandbox.duplicate_keys() == []
        assert {row.state for row in rig.outbox_rows()} == {"done"}


@pytest.mark.parametrize("webhook_mode", ["events", "trigger"])
def test_a_change_right_after_a_read_is_decided_on_the_changed_ticket(tmp_path, webhook_mode):
    with zendesk_rig(tmp_path, webhook_mode=webhook_mode) as rig:
        sandbox = rig.sandbox
        ticket_id = sandbox.create_ticket("Exports are slow",
                                          custom_fields={SEVERITY_FIELD: "severity_medium"})["id"]
        rig.settle()  # read once: the connection keeps that copy for a while
        assert sandbox.ticket(ticket_id)["group_id"] == 360000101

        # Seconds later a person raises the severity: the delivery is newer than the copy.
        sandbox.update_ticket(ticket_id, custom_fields={SEVERITY_FIELD: "severity_critical"},
                              as_user="mia")
        rig.settle()
        assert sandbox.ticket(ticket_id)["group_id"] == 360000102


def test_a_burst_goes_upstream_most_urgent_first_whatever_the_order_it_came_in(tmp_path):
    clock = FakeClock(datetime.now(UTC).replace(microsecond=0))
    with zendesk_rig(tmp_path, clock=clock) as rig:
        sandbox = rig.sandbox
        tickets = [sandbox.create_ticket(f"Exports fail ({n})",
                                         custom_fields={SEVERITY_FIELD: "severity_medium"})["id"]
                   for n in range(150)]
        rig.settle(timeout=100)
        # People raise them to critical: the 100 single-user ones (tier 2) first, then the 50
        # widespread ones (tier 3, more urgent).
        single, widespread = tickets[:100], tickets[100:]
        for ticket_id in single:
            sandbox.update_ticket(ticket_id, custom_fields={SEVERITY_FIELD: "severity_critical"},
                                  as_user="mia")
        for ticket_id in widespread:
            sandbox.update_ticket(ticket_id, custom_fields={SEVERITY_FIELD: "severity_critical",
                                                            USERS_FIELD: 300}, as_user="mia")
        assert sandbox.wait_for_deliveries(timeout=30)
        # The deciding thread takes every change before the outbox's next pass.
        decided = sum(iter(rig.worker.process_inbox, 0))
        assert decided >= 150
        # One pass of the outbox, as far as its batch goes: the 50 most urgent tickets.
        rig.worker.process_outbox()
        groups = {t: sandbox.ticket(t)["group_id"] for t in tickets}
        assert all(groups[t] == 360000103 for t in widespread), "a tier-3 move waited"
        assert all(groups[t] == 360000101 for t in single), "a tier-2 move went first"
        rig.settle(timeout=100)
        assert all(sandbox.ticket(t)["group_id"] == 360000102 for t in single)
        assert sandbox.duplicate_keys() == []


def test_an_eventbridge_event_escalates_a_ticket_without_a_webhook(tmp_path):
    """Zendesk's Events Connector through an EventBridge API destination (the secret as its API
    key header): the same escalation as the webhook's, once."""
    with zendesk_rig(tmp_path) as rig:
        sandbox = rig.sandbox
        sandbox.drop_webhooks(100)
        ticket = sandbox.create_ticket("Reports export times out",
                                       custom_fields={SEVERITY_FIELD: "severity_critical"})
        rig.settle()
        assert rig.inbox_rows() == []

        fields = ("id", "created_at", "updated_at", "type", "priority", "status", "requester_id",
                  "submitter_id", "assignee_id", "organization_id", "group_id", "brand_id",
                  "external_id", "tags", "via")
        event = {
            "version": "0", "id": "0b7a1c2d-0001-4e00-9000-00000000e001",
            "detail-type": "Support Ticket: Ticket Created",
            "source": "aws.partner/zendesk.com/acme/default", "account": "123456789012",
            "time": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"), "region": "eu-west-1",
            "resources": ["Support Ticket"],
            "detail": {"ticket_event": {
                "meta": {"version": "1.0", "occurred_at": ticket["updated_at"],
                         "actor_id": ticket["requester_id"]},
                "type": "Ticket Created",
                "ticket": {name: ticket.get(name) for name in fields},
            }},
        }
        url = f"{rig.receiver_url}/webhooks/zendesk"
        headers = {"Content-Type": "application/json", "X-Escalier-Token": SECRET}
        assert requests.post(url, json=event, headers=headers, timeout=10).status_code == 202
        rig.settle()
        assert sandbox.ticket(ticket["id"])["group_id"] == 360000102
        assert len(marked_comments(sandbox, ticket["id"])) == 1
        # EventBridge delivering the event again changes nothing.
        again = requests.post(url, json=event, headers=headers, timeout=10)
        assert again.json() == {"status": "duplicate"}
        rig.settle()
        assert sandbox.duplicate_keys() == [] and rig.writes() == {UPDATE: 1}
