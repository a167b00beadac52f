"""End to end: the tiers' tags of a mail ticket, as keywords on its thread in the shared mailbox.

customer mail -> sandbox mailbox -> IMAP reader -> inbox -> engine -> outbox -> mail connection ->
``UID STORE`` on the thread's messages, read back over IMAP. Nothing is mocked; time is a fake clock.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from email_rig import customer_mail
from escalier.connectors.email.inbound import TAG_KEYWORD_PREFIX
from escalier.runtime.testing import FakeClock
from test_email_end_to_end import mail_rig

pytestmark = pytest.mark.timeout(120)


def keywords(mailboxes, message_id: str) -> set[str]:
    """The tag keywords of one message of the shared mailbox."""
    for flags, raw in mailboxes.messages("support"):
        if f"Message-ID: {message_id}".encode() in raw:
            return {f for f in flags if f.startswith(TAG_KEYWORD_PREFIX)}
    raise AssertionError(f"{message_id} is not in the shared mailbox")


def test_the_thread_carries_its_tier_s_tag_and_changes_it_with_the_tier(tmp_path):
    clock = FakeClock(datetime(2026, 3, 2, 9, 0, tzinfo=UTC))
    with mail_rig(tmp_path, clock) as (rig, sandbox, mailboxes):
        mailboxes.deliver(customer_mail(
            message_id="<order-7@customer.example>", sender="Alice Customer <alice@northwind.example>",
            subject="Invoices cannot be exported", date=clock.now(),
            body="Hello,\n\nthe export fails.\nAccount number: 4711\n"))
        rig.settle()
        assert keywords(mailboxes, "<order-7@customer.example>") == {"$Esc_escalier-tier-1"}
        sent = len(sandbox.sent())

        # The customer writes again in the thread, then tier 1's time-box runs out.
        token = next(m for m in sandbox.sent() if "alice@northwind.example" in m.rcpt_tos).subject
        token = token.rpartition("[")[2].rstrip("]")
        mailboxes.deliver(customer_mail(
            message_id="<order-7-again@customer.example>", sender="Alice Customer <alice@northwind.example>",
            subject=f"Re: Invoices cannot be exported [{token}]", date=clock.now(),
            body="Any news?\n"))
        clock.advance(31 * 60)
        rig.settle()
        assert keywords(mailboxes, "<order-7@customer.example>") == {"$Esc_escalier-tier-2"}
        assert keywords(mailboxes, "<order-7-again@customer.example>") == {"$Esc_escalier-tier-2"}
        # The escalation's mails went out once each: the tags added none.
        keys = [m.message.get_content().rstrip().splitlines()[-1] for m in sandbox.sent()[sent:]]
        assert keys and len(keys) == len(set(keys))
        assert all(row.state == "done" for row in rig.outbox_rows())
