"""End to end by mail: a customer writes to the shared mailbox and is escalated by email.

customer mail -> sandbox mailbox -> IMAP reader (the worker's reconciliation) -> inbox -> parser ->
engine -> outbox -> mail connection -> SMTP -> sandbox mailboxes, read back over IMAP. Nothing is
mocked; time is a fake clock that the worker and the engine share.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from email.message import Message
from email.parser import BytesParser
from email.policy import default as default_policy
from pathlib import Path

import pytest
from email_rig import Mailboxes, customer_mail
from escalier.connectors.email.sandbox import MailSandbox
from escalier.runtime.local import LocalDeployment
from escalier.runtime.testing import FakeClock

from escalier.plugins import get_plugin_manager

pytestmark = pytest.mark.timeout(120)

PASSWORD = "sandbox-password"
USERS = ("support", "escalations", "tier1", "specialists", "alice", "mia", "priya")

POLICY = """\
name: Mail end to end
default_calendar: always
calendars:
  always: {{timezone: UTC, hours: 24x7}}
people:
  mia: {{name: Mia Hoffmann, email: mia@northwind.example}}
  priya: {{name: Priya Raman, email: priya@northwind.example}}
connectors:
  email:
    from_address: escalations@northwind.example
    reconcile_every: 1m
    timeout_seconds: 5
    smtp: {{host: {host}, port: {smtp_port}, security: none, username: escalations, password: "${{SMTP_PASSWORD}}"}}
    imap: {{host: {host}, port: {imap_port}, security: none, username: support, password: "${{IMAP_PASSWORD}}"}}
tiers:
  - level: 1
    name: General support
    targets: {{email: {{address: tier1@northwind.example}}}}
    sla: {{resolve: 8h}}
    timebox: {{duration: 30m, mode: force}}
    raci: {{accountable: [mia]}}
  - level: 2
    name: Specialists
    targets: {{email: {{address: specialists@northwind.example}}}}
    sla: {{resolve: 8h}}
    raci: {{accountable: [priya]}}
    required_information:
      - {{id: account, label: Account number, keywords: [account number]}}
notifications: {{repeat_every: 4h, max_repeats: 1}}
matrix:
  critical: {{widespread: {{tier: 2}}, many: {{tier: 2}}, some: {{tier: 2}}, single: {{tier: 2}}}}
  high: {{widespread: {{tier: 2}}, many: {{tier: 1}}, some: {{tier: 1}}, single: {{tier: 1}}}}
  medium: {{widespread: {{tier: 1}}, many: {{tier: 1}}, some: {{tier: 1}}, single: {{tier: 1}}}}
  low: {{widespread: {{tier: 1}}, many: {{tier: 1}}, some: {{tier: 1}}, single: {{tier: 1}}}}
"""


@contextmanager
def mail_rig(tmp_path: Path, clock: FakeClock) -> Iterator[tuple[LocalDeployment, MailSandbox, Mailboxes]]:
    """The mail sandbox, and a local deployment on a policy whose email connector points at it."""
    sandbox = MailSandbox(users={user: PASSWORD for user in USERS}).start()
    store_url = f"sqlite:///{tmp_path / 'escalier.db'}"
    policy_path = tmp_path / "escalier.yaml"
    policy_path.write_text(POLICY.format(host=sandbox.host, smtp_port=sandbox.smtp_port,
                                         imap_port=sandbox.imap_port))
    # No webhooks for mail: the worker's reconciliation reads the mailbox into this store.
    environ = {"SMTP_PASSWORD": PASSWORD, "IMAP_PASSWORD": PASSWORD}
    mailboxes = Mailboxes("sandbox", sandbox.host, sandbox.imap_port, sandbox.users,
                          lambda raw, user: sandbox.deliver(raw, to=user))
    try:
        with LocalDeployment(policy_path, store_url, sandboxes={}, environ=environ, clock=clock,
                             plugin_manager=get_plugin_manager(load_entrypoints=False)) as rig:
            yield rig, sandbox, mailboxes
    finally:
        sandbox.stop()


def inbox_of(mailboxes: Mailboxes, user: str) -> list[Message]:
    """``user``'s INBOX, read over IMAP."""
    return [BytesParser(policy=default_policy).parsebytes(body) for _, body in mailboxes.messages(user)]


def test_a_customer_mail_is_acknowledged_escalated_by_its_time_box_and_a_vacation_reply_is_ignored(tmp_path):
    clock = FakeClock(datetime(2026, 3, 2, 9, 0, tzinfo=UTC))
    with mail_rig(tmp_path, clock) as (rig, sandbox, mailboxes):
        mailboxes.deliver(customer_mail(
            message_id="<order-42@customer.example>", sender="Alice Customer <alice@northwind.example>",
            subject="Invoices cannot be exported", date=clock.now(),
            body="Hello,\n\nthe invoice export fails with error 500.\nAccount number: 4711\n",
        ))
        rig.settle()

        [stored] = rig.inbox_rows()
        assert (stored.source, stored.delivery_id, stored.state) == ("email", "<order-42@customer.example>", "done")
        [ack] = inbox_of(mailboxes, "alice")
        token = ack["Subject"].rpartition("[")[2].rstrip("]")
        assert token.startswith("ESC-")
        assert ack["Subject"] == f"Re: Invoices cannot be exported [{token}]"
        assert ack["In-Reply-To"] == "<order-42@customer.example>"
        assert ack["Auto-Submitted"] == "auto-replied"
        assert f"[{token}]" in ack.get_content()
        [placed] = inbox_of(mailboxes, "tier1")
        assert f"[{token}]" in placed["Subject"] and "tier 1" in placed["Subject"]
        assert inbox_of(mailboxes, "specialists") == []
        # Marked processed in the shared mailbox, never to be read again.
        assert all("$EscalierDone" in flags for flags, _ in mailboxes.messages("support"))

        # The time-box of tier 1 (30 minutes, force) runs out with the ticket unresolved.
        clock.advance(31 * 60)
        rig.settle()
        [escalation] = inbox_of(mailboxes, "specialists")
        assert escalation["Subject"] == f"Escalation to tier 2: Invoices cannot be exported [{token}]"
        text = escalation.get_content()
        assert "Escalated from" in text  # the engine's reason, folded in from its internal note
        assert "Account number: 4711" in text  # the required information, in the customer's words
        assert "alice@northwind.example" in text
        assert "<order-42@customer.example>" in escalation["References"]
        assert len(inbox_of(mailboxes, "alice")) == 1  # the customer is not written to again

        # The customer's vacation responder answers our acknowledgement.
        sent_before, outbox_before = len(sandbox.sent()), len(rig.outbox_rows())
        mailboxes.deliver(customer_mail(
            message_id="<vacation-1@customer.example>", sender="Alice Customer <alice@northwind.example>",
            subject=f"Automatic reply: Re: Invoices cannot be exported [{token}]", date=clock.now(),
            body="I am out of the office until Monday.\n",
            headers={"Auto-Submitted": "auto-replied", "In-Reply-To": ack["Message-ID"],
                     "References": f"<order-42@customer.example> {ack['Message-ID']}"},
        ))
        clock.advance(2 * 60)  # the next look into the mailbox
        rig.settle()
        vacation = rig.inbox_rows()[-1]
        assert vacation.delivery_id == "<vacation-1@customer.example>"
        assert vacation.state == "ignored" and vacation.error.startswith("auto_reply")
        assert len(rig.outbox_rows()) == outbox_before
        assert len(sandbox.sent()) == sent_before
        assert len(inbox_of(mailboxes, "alice")) == 1


def test_the_running_worker_hears_new_mail_in_idle_before_its_next_look(tmp_path):
    # The fake clock stands still: the worker's look into the mailbox (every minute) happens only
    # at start-up, so a mail stored later came through the listener in IMAP IDLE.
    clock = FakeClock(datetime(2026, 3, 2, 9, 0, tzinfo=UTC))
    with mail_rig(tmp_path, clock) as (rig, sandbox, mailboxes):
        rig.run_worker()
        time.sleep(1.0)  # the start-up look found an empty mailbox; the listener waits in IDLE
        assert rig.inbox_rows() == []
        sent = time.monotonic()
        mailboxes.deliver(customer_mail(
            message_id="<idle-1@customer.example>", sender="Alice Customer <alice@northwind.example>",
            subject="Login loops back to the start page", date=clock.now(),
            body="Hello,\n\nafter the update the login page loops.\n",
        ))
        deadline = sent + 10
        while not [r for r in rig.inbox_rows() if r.state == "done"]:
            assert time.monotonic() < deadline, "the mail was not read within 10 s"
            time.sleep(0.05)
        heard_in = time.monotonic() - sent
        rig.stop_worker()
        [stored] = rig.inbox_rows()
        assert stored.delivery_id == "<idle-1@customer.example>"
        assert heard_in < 5.0, heard_in
        assert all("$EscalierDone" in flags for flags, _ in mailboxes.messages("support"))
