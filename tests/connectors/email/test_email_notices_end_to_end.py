"""End to end: a Jira ticket's notices go by mail to its channel, with a signed acknowledge link.

Jira sandbox -> signed webhook -> receiver -> store -> engine -> outbox (the notice routed to the
mail connection) -> SMTP -> mail sandbox; then the link's POST -> receiver -> inbox -> worker ->
engine: acknowledged, the repeats stop. Nothing is mocked; the sandboxes, the receiver and the
worker share one fake clock.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import pytest
import requests
from sqlalchemy import select

from escalier.connectors.email.connection import message_id_for
from escalier.connectors.email.sandbox import MailSandbox
from escalier.connectors.jira.sandbox import JiraSandbox
from escalier.plugins import get_plugin_manager
from escalier.runtime.local import LocalDeployment
from escalier.runtime.testing import FakeClock
from escalier.store.schema import audit, outbox

pytestmark = pytest.mark.timeout(120)

SECRET = "jira-webhook-secret"
ACK_SECRET = "ack-secret-for-the-tests-0123456789"
FROM = "escalations@northwind.example"
LEADS = "support-leads@northwind.example"
ENVIRON = {"JIRA_API_TOKEN": "sandbox-token", "JIRA_WEBHOOK_SECRET": SECRET,
           "SMTP_PASSWORD": "sandbox-password", "ACK_SECRET": ACK_SECRET}

POLICY = """\
name: Notices by mail
default_calendar: always
calendars:
  always: {{timezone: UTC, hours: 24x7}}
people:
  mia: {{name: Mia Hoffmann, email: mia@northwind.example, jira: "{mia}"}}
  priya: {{name: Priya Raman, email: priya@northwind.example, jira: "{priya}"}}
connectors:
  jira:
    url: {url}
    deployment: cloud
    user: escalier@example.com
    token: ${{JIRA_API_TOKEN}}
    webhook_secrets: ["${{JIRA_WEBHOOK_SECRET}}"]
    project: SUP
    components: [Support L1, Support L2]
    jql: project = SUP
    service_account: "{service_account}"
    fields: {{severity: customfield_10050, users_affected: customfield_10051}}
    reconcile_every: "off"
    timeout_seconds: 5
  email:
    from_address: {from_address}
    reconcile_every: "off"
    timeout_seconds: 5
    smtp: {{host: {host}, port: {smtp_port}, security: none, username: escalations, password: "${{SMTP_PASSWORD}}"}}
    acknowledge_links: {{url: "http://receiver.invalid", secrets: ["${{ACK_SECRET}}"], valid_for: 2h}}
tiers:
  - level: 1
    name: General support
    targets: {{jira: {{component: Support L1, labels: [tier-1], assignee: mia}}}}
    sla: {{resolve: 8h}}
    raci: {{accountable: [mia], informed: [channel:support-leads]}}
    notify: {{channels: [support-leads], repeat_every: 10m, max_repeats: 5}}
  - level: 2
    name: Specialists
    targets: {{jira: {{component: Support L2, labels: [tier-2], assignee: priya}}}}
    sla: {{resolve: 8h}}
    raci: {{accountable: [priya], informed: [channel:support-leads]}}
    notify: {{channels: [support-leads], repeat_every: 10m, max_repeats: 5}}
notifications:
  channels:
    support-leads: {{kind: email, to: ["{leads}"], options: {{subject_prefix: "[NW]"}}}}
criteria:
  - id: stale
    when: {{tier: [1], unresolved_for: 45m}}
    then: {{to_tier: 2}}
matrix:
  medium: {{widespread: {{tier: 1}}, many: {{tier: 1}}, some: {{tier: 1}}, single: {{tier: 1}}}}
"""

LINK = re.compile(r"(http://127\.0\.0\.1:\d+/ack/[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+)")


@contextmanager
def notice_rig(tmp_path: Path, clock: FakeClock) -> Iterator[tuple[LocalDeployment, JiraSandbox, MailSandbox]]:
    """A Jira sandbox, a mail sandbox, and a local deployment whose notices go by mail."""
    jira = JiraSandbox(deployment="cloud", token="sandbox-token", webhook_secret=SECRET,
                       webhook_retry_delays=(0.05, 0.1, 0.2), clock=clock.now).start()
    mail = MailSandbox(users={"escalations": "sandbox-password"}, clock=clock.now).start()
    policy_path = tmp_path / "escalier.yaml"
    policy_path.write_text(POLICY.format(
        url=jira.url, service_account=jira.service_account, from_address=FROM, host=mail.host,
        smtp_port=mail.smtp_port, leads=LEADS,
        mia=jira.user("mia")["accountId"], priya=jira.user("priya")["accountId"],
    ))
    try:
        with LocalDeployment(policy_path, f"sqlite:///{tmp_path / 'escalier.db'}",
                             sandboxes={"jira": jira}, environ=ENVIRON, clock=clock,
                             plugin_manager=get_plugin_manager(load_entrypoints=False)) as rig:
            yield rig, jira, mail
    finally:
        mail.stop()
        jira.stop()


def to(mail: MailSandbox, address: str) -> list:
    """The mails the SMTP server accepted for ``address``, in order."""
    return [m for m in mail.sent() if address in m.rcpt_tos]


def link_in(sent) -> str:
    [found] = LINK.findall(sent.message.get_content())
    return found


def audit_kinds(rig: LocalDeployment) -> list[tuple[str, str | None]]:
    with rig.store.engine.connect() as connection:
        return [(row.kind, row.actor) for row in connection.execute(select(audit).order_by(audit.c.id))]


def notice_rows(rig: LocalDeployment) -> list:
    return [row for row in rig.outbox_rows() if row.action["kind"] == "notify"]


def test_a_jira_notice_goes_by_mail_repeats_and_stops_when_its_link_is_posted(tmp_path):
    clock = FakeClock(datetime(2026, 3, 3, 9, 0, tzinfo=UTC))
    with notice_rig(tmp_path, clock) as (rig, jira, mail):
        key = jira.create_issue("SUP", "Invoice PDF shows the wrong VAT rate", as_user="dana",
                                fields={"customfield_10050": {"value": "medium"}})["key"]
        rig.settle()

        # The notice left through the mail connection: its outbox row says so, its key is Jira's.
        [row] = notice_rows(rig)
        assert (row.system, row.instance, row.ticket_id) == ("email", "default", key)
        assert row.idempotency_key.startswith(f"jira:default:{key}:")
        assert row.state == "done"
        assert jira.notifications() == []  # not Jira's /notify any more

        [leads] = to(mail, LEADS)
        assert leads.message_id == message_id_for(f"{row.idempotency_key}/{LEADS}", FROM)
        assert leads.subject == (f"[NW] Jira {key}, tier 1 (General support): Invoice PDF shows the "
                                 "wrong VAT rate - you are Informed")
        assert "In-Reply-To" not in leads.headers and "References" not in leads.headers
        [mia] = to(mail, "mia@northwind.example")
        assert mia.subject.endswith("- you are Responsible")
        first_link = link_in(mia)
        assert link_in(leads) != first_link  # each link names the one it was made for

        # Unacknowledged, the notice repeats 10 minutes later: one more mail each, a new key.
        clock.advance(10 * 60 + 1)
        rig.settle()
        assert len(to(mail, LEADS)) == 2 and len(to(mail, "mia@northwind.example")) == 2
        rows = notice_rows(rig)
        assert len({r.idempotency_key for r in rows}) == 2
        # One mail per key and address, over SMTP.
        per_message = Counter(m.message_id for m in mail.sent())
        assert set(per_message.values()) == {1}

        # A GET (a mail scanner following the link) shows a page and changes nothing.
        link = link_in(to(mail, "mia@northwind.example")[-1])
        before = len(rig.inbox_rows())
        page = requests.get(link, timeout=5)
        assert page.status_code == 200 and "text/html" in page.headers["Content-Type"]
        assert "<form method=\"post\"" in page.text and key in page.text
        assert len(rig.inbox_rows()) == before

        # POST: stored before the answer, then the worker acknowledges as Mia.
        answer = requests.post(link, timeout=5)
        assert answer.status_code == 202, answer.text
        assert answer.json()["status"] == "accepted"
        [click] = [r for r in rig.inbox_rows() if r.source == "ack"]
        assert click.state == "pending"
        rig.settle()
        assert ("acknowledged", "mia") in audit_kinds(rig)

        # The repeats stop (the ticket stays at tier 1 until 09:45).
        sent = len(mail.sent())
        clock.advance(25 * 60)
        rig.settle()
        assert len(mail.sent()) == sent
        assert len(notice_rows(rig)) == 2

        # A second click of the same link (or another recipient's) is harmless.
        again = requests.post(link, timeout=5)
        assert again.status_code == 200 and again.json()["status"] == "already_acknowledged"
        assert requests.post(link_in(to(mail, LEADS)[-1]), timeout=5).status_code == 200
        assert len([r for r in rig.inbox_rows() if r.source == "ack"]) == 1
        assert [k for k, _ in audit_kinds(rig)].count("acknowledged") == 1

        # Two hours after the first notice its link has expired.
        clock.advance(90 * 60)
        expired = requests.post(first_link, timeout=5)
        assert expired.status_code == 410
        assert expired.json()["error"] == "expired"
        shown = requests.get(first_link, timeout=5)
        assert shown.status_code == 410 and "text/html" in shown.headers["Content-Type"]


def test_a_forged_or_altered_link_is_refused_and_nothing_is_stored(tmp_path):
    clock = FakeClock(datetime(2026, 3, 3, 9, 0, tzinfo=UTC))
    with notice_rig(tmp_path, clock) as (rig, jira, mail):
        jira.create_issue("SUP", "Reports export times out", as_user="dana",
                          fields={"customfield_10050": {"value": "medium"}})
        rig.settle()
        link = link_in(to(mail, LEADS)[0])
        payload, signature = link.rpartition("/")[2].split(".")
        base = link.rpartition("/")[0]
        forged_signature = ("A" if signature[0] != "A" else "B") + signature[1:]
        before = len(rig.inbox_rows())
        for token, code in ((f"{payload}.{forged_signature}", "bad_signature"),
                            (f"{payload[:-2]}x{payload[-1]}.{signature}", "bad_signature"),
                            ("not-a-token", "malformed_token")):
            answer = requests.post(f"{base}/{token}", timeout=5)
            assert 400 <= answer.status_code < 500, token
            assert answer.json()["error"] == code
            assert answer.json()["reason"]
        assert len(rig.inbox_rows()) == before
        assert "acknowledged" not in [k for k, _ in audit_kinds(rig)]


def test_an_old_link_cannot_acknowledge_a_later_move(tmp_path):
    clock = FakeClock(datetime(2026, 3, 3, 9, 0, tzinfo=UTC))
    with notice_rig(tmp_path, clock) as (rig, jira, mail):
        key = jira.create_issue("SUP", "Data sync is slow", as_user="dana",
                                fields={"customfield_10050": {"value": "medium"}})["key"]
        rig.settle()
        tier_1 = link_in(to(mail, LEADS)[0])
        clock.advance(46 * 60)  # unresolved for 45 minutes: tier 2
        rig.settle()
        assert "escalated" in [k for k, _ in audit_kinds(rig)]
        stale = requests.post(tier_1, timeout=5)
        assert stale.status_code == 409 and stale.json()["error"] == "superseded"
        assert not [r for r in rig.inbox_rows() if r.source == "ack"]
        tier_2 = to(mail, LEADS)[-1]
        assert f"Jira {key}, tier 2 (Specialists)" in tier_2.subject
        assert requests.post(link_in(tier_2), timeout=5).status_code == 202
        rig.settle()
        assert ("acknowledged", "support-leads") in audit_kinds(rig)


def test_a_deferred_mail_is_retried_through_the_outbox_and_still_sent_once(tmp_path):
    clock = FakeClock(datetime(2026, 3, 3, 9, 0, tzinfo=UTC))
    with notice_rig(tmp_path, clock) as (rig, jira, mail):
        mail.inject_fault("smtp", "DATA", "451 4.3.0 try again later", count=4)
        jira.create_issue("SUP", "Login page is slow", as_user="dana",
                          fields={"customfield_10050": {"value": "medium"}})
        rig.settle()
        [row] = notice_rows(rig)
        with rig.store.engine.connect() as connection:
            attempts = connection.execute(select(outbox.c.attempts, outbox.c.state)
                                          .where(outbox.c.id == row.id)).one()
        assert attempts.state == "done" and attempts.attempts > 1
        assert len(to(mail, LEADS)) == 1
        assert set(Counter(m.message_id for m in mail.sent()).values()) == {1}


def test_a_refused_group_address_is_a_dead_letter_not_a_silent_loss(tmp_path):
    clock = FakeClock(datetime(2026, 3, 3, 9, 0, tzinfo=UTC))
    with notice_rig(tmp_path, clock) as (rig, jira, mail):
        mail.inject_fault("smtp", "DATA", "554 5.7.1 refused by policy", count=10)
        jira.create_issue("SUP", "Export is empty", as_user="dana",
                          fields={"customfield_10050": {"value": "medium"}})
        rig.settle()
        [row] = notice_rows(rig)
        assert row.state == "dead"
        assert "refused" in (row.last_error or "")
        # The ticket's own actions reached Jira all the same.
        assert any(r.system == "jira" and r.state == "done" for r in rig.outbox_rows())


def test_a_mail_tickets_tier_address_is_told_it_is_responsible():
    from escalier.core.model import RACI, Action, ActionKind, EscalationState, Ticket
    from escalier.core.policy import Policy
    from escalier.runtime.routing import route_notices

    policy = Policy.model_validate({
        "name": "Roles", "default_calendar": "always",
        "calendars": {"always": {"timezone": "UTC", "hours": "24x7"}},
        "people": {"mia": {"name": "Mia Hoffmann", "email": "mia@northwind.example"},
                   "amara": {"name": "Amara Okafor", "email": "amara@northwind.example"}},
        "tiers": [{"level": 1, "name": "General support",
                   "targets": {"email": {"address": "tier1@northwind.example"}},
                   "raci": {"accountable": ["mia"], "informed": ["channel:leads"]}}],
        "paths": {"hierarchical": [{"level": 1, "name": "Head of Support", "people": ["amara"]}]},
        "notifications": {"channels": {"leads": {"kind": "email", "to": ["Leads <leads@northwind.example>"]}}},
    })
    now = datetime(2026, 3, 3, 9, 0, tzinfo=UTC)
    ticket = Ticket(system="email", id="ESC-1", subject="Invoices", created_at=now)
    state = EscalationState(system="email", ticket_id="ESC-1", ticket=ticket, tier=1, opened_at=now,
                            tier_entered_at=now, policy_version="v1", moves=1,
                            raci=RACI(responsible=("target",), accountable=("mia",), informed=("channel:leads",)))
    notice = Action(kind=ActionKind.NOTIFY, key="email:default:ESC-1:3", system="email", ticket_id="ESC-1",
                    tier=1, channel="leads", body="Waiting",
                    recipients=("tier1@northwind.example", "mia@northwind.example",
                                "amara@northwind.example", "nobody-without-mail"))
    other = notice.model_copy(update={"channel": "people", "key": "email:default:ESC-1:4"})
    [routed, kept] = route_notices([notice, other], policy=policy, state=state, kinds={"email"},
                                   accounts={("email", "default")}, now=now)
    assert kept == other  # no such channel: stays as it was
    assert (routed.system, routed.instance, routed.key) == ("email", "default", notice.key)
    found = routed.target["notice"]
    assert [(t["address"], t["role"]) for t in found["to"]] == [
        ("leads@northwind.example", "Informed"), ("tier1@northwind.example", "Responsible"),
        ("mia@northwind.example", "Accountable"), ("amara@northwind.example", "Management (Head of Support)"),
    ]
    assert (found["move"], found["tier"], found["acknowledge"]) == (1, 1, True)
    # Without a mail connection in this worker the notice is not routed.
    assert route_notices([notice], policy=policy, state=state, kinds={"email"}, accounts=set(),
                         now=now) == [notice]
