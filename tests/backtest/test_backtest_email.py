"""``escalier backtest --from email`` on the mail sandbox's mailbox, read over IMAP, read-only."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from email.utils import format_datetime

from escalier import backtest
from escalier.connectors.email.events import event_id
from escalier.connectors.email.sandbox import MailSandbox
from escalier.core.model import ActorRole, EventKind

from backtest_support import Clock, engine_moves, load, run_json, write_policy

START = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)
PASSWORD = "sandbox-password"

POLICY = """\
name: Mail desk
default_calendar: always
calendars:
  always: {{timezone: UTC, hours: 24x7}}
connectors:
  email:
    from_address: support@northwind.example
    agent_domains: [northwind.example]
    smtp: {{host: 127.0.0.1, port: 2525, security: none, username: support, password: "${{MAIL_PASSWORD}}"}}
    imap: {{host: 127.0.0.1, port: {imap_port}, security: none, username: support, password: "${{MAIL_PASSWORD}}"}}
tiers:
  - level: 1
    name: Desk
    targets: {{email: {{address: desk@northwind.example}}}}
  - level: 2
    name: Specialists
    targets: {{email: {{address: specialists@northwind.example}}}}
criteria:
  - id: stale
    when: {{tier: [1], unresolved_for: 1h}}
    then: {{to_tier: 2}}
"""


def mail(sender: str, subject: str, body: str, at: datetime, message_id: str, reply_to: str | None = None) -> EmailMessage:
    message = EmailMessage()
    message["From"] = sender
    message["To"] = "support@northwind.example"
    message["Subject"] = subject
    message["Date"] = format_datetime(at)
    message["Message-ID"] = message_id
    if reply_to:
        message["In-Reply-To"] = reply_to
        message["References"] = reply_to
    message.set_content(body)
    return message


def test_mail_threads_are_replayed_from_the_mailbox(tmp_path):
    clock = Clock(START)
    sandbox = MailSandbox(users={"support": PASSWORD}, clock=clock.now).start()
    try:
        sandbox.deliver(mail("dana@customer.example", "Export fails", "It fails at 2%.", clock.now(), "<a1@customer.example>"))
        clock.advance(minutes=20)
        sandbox.deliver(mail("sam@client.example", "Login loop", "I cannot log in.", clock.now(), "<b1@client.example>"))
        clock.advance(minutes=10)  # 08:30: an agent answers the login loop
        sandbox.deliver(mail("mia@northwind.example", "Re: Login loop", "Clear your cookies.", clock.now(),
                             "<b2@northwind.example>", reply_to="<b1@client.example>"))
        clock.advance(hours=3)
        policy = write_policy(tmp_path, "mail.yaml", POLICY.format(imap_port=sandbox.imap_port))
        environ = {"MAIL_PASSWORD": PASSWORD}
        read = list(backtest.read_history(load(policy), "email", since=START - timedelta(hours=1),
                                          until=clock.now(), environ=environ))
        assert [[e.id for e in events] for events in read] == [
            [event_id("default", "<a1@customer.example>")],
            [event_id("default", "<b1@client.example>"), event_id("default", "<b2@northwind.example>")],
        ]
        reply = read[1][1]
        assert (reply.kind, reply.actor_role, reply.ticket_id) == (EventKind.COMMENTED, ActorRole.AGENT, read[1][0].ticket_id)
        status, report, err = run_json([str(policy), "--from", "email", "--since", "1d"],
                                       environ=environ, now=clock.now())
        assert status == 0, err
        totals = report["results"]["policy"]
        assert totals["tickets"] == 2 and totals["opened_at_tier"] == {"1": 2}
        expected = sum(len(engine_moves(load(policy), events, clock.now())) for events in read)
        assert sum(e["count"] for e in totals["escalations"]) == expected == 2
        # Read-only: nothing was sent, and the mails are still unread.
        assert sandbox.sent() == []
        assert all(not stored.flags for stored in sandbox.mailbox("support"))
    finally:
        sandbox.stop()
