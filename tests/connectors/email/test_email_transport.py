"""The mail transport against real servers on loopback: the mail sandbox (aiosmtpd and its IMAP
server) and dovecot. Mail in: the mailbox reader stores, then marks; the LMTP and SMTP receivers
store before they answer. Mail out: the headers of what we send, read back over IMAP; loop
protection; and SMTP's answers translated into the error tree.
"""

from __future__ import annotations

import smtplib
import socket
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.parser import BytesParser
from email.policy import default as default_policy
from pathlib import Path

import pytest
from email_rig import (
    PASSWORD,
    Dovecot,
    KeywordlessProxy,
    Mailboxes,
    customer_mail,
    need_dovecot,
)
from escalier.connectors.email import events
from escalier.connectors.email.config import EmailConfig, ImapSettings
from escalier.connectors.email.connection import EmailConnection, message_id_for
from escalier.connectors.email.inbound import (
    DONE_KEYWORD,
    LmtpReceiver,
    MailboxReader,
    SmtpReceiver,
    delivery_id_of,
)
from escalier.connectors.email.message import read_message
from escalier.connectors.email.sandbox import MailSandbox
from escalier.core.connector import ActionBatch, RawEvent
from escalier.core.errors import AuthError, NotFoundError, RejectedError, TransientError
from escalier.core.model import Action, ActionKind
from escalier.store import create_store_engine, inbox, upgrade
from escalier.store.schema import inbox as inbox_table
from sqlalchemy import Engine, select

pytestmark = pytest.mark.timeout(60)

SANDBOX_PASSWORD = "sandbox-password"
USERS = ("support", "escalations", "specialists", "alice")
ENVIRON = {"IMAP_PASSWORD": SANDBOX_PASSWORD, "SMTP_PASSWORD": SANDBOX_PASSWORD}
CUSTOMER = "alice@northwind.example"


# --- servers and the store ------------------------------------------------------------------------


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    url = f"sqlite:///{tmp_path / 'escalier.db'}"
    upgrade(url)
    engine = create_store_engine(url)
    yield engine
    engine.dispose()


@pytest.fixture
def sandbox() -> Iterator[MailSandbox]:
    server = MailSandbox(users={user: SANDBOX_PASSWORD for user in USERS}).start()
    yield server
    server.stop()


@pytest.fixture
def dovecot() -> Iterator[Dovecot]:
    need_dovecot()
    server = Dovecot({user: PASSWORD for user in USERS}).start()
    yield server
    server.stop()


@pytest.fixture(params=["sandbox", "dovecot"])
def mailboxes(request: pytest.FixtureRequest) -> Mailboxes:
    if request.param == "sandbox":
        server: MailSandbox = request.getfixturevalue("sandbox")
        return Mailboxes("sandbox", server.host, server.imap_port, server.users,
                         lambda raw, user: server.deliver(raw, to=user))
    found: Dovecot = request.getfixturevalue("dovecot")
    return Mailboxes("dovecot", found.host, found.port, found.users,
                     lambda raw, user: found.append(raw, user=user))


def imap_settings(host: str, port: int, **extra) -> ImapSettings:
    return ImapSettings(host=host, port=port, security="none", username="support",
                        password="${IMAP_PASSWORD}", **extra)


def reader_for(mailboxes: Mailboxes, engine: Engine, *, host: str | None = None,
               port: int | None = None, **options) -> MailboxReader:
    environ = {"IMAP_PASSWORD": mailboxes.passwords["support"]}
    return MailboxReader(imap_settings(host or mailboxes.host, port or mailboxes.port), environ,
                         store_engine=engine, timeout=5, **options)


def rows(engine: Engine) -> list:
    with engine.connect() as connection:
        return connection.execute(select(inbox_table).order_by(inbox_table.c.id)).all()


def mails(count: int, *, prefix: str = "m") -> list[bytes]:
    return [customer_mail(message_id=f"<{prefix}{n}@customer.example>", subject=f"Problem {n}")
            for n in range(count)]


# --- mail in: the mailbox reader -------------------------------------------------------------------------


def test_the_reader_stores_each_message_then_marks_it_and_reads_nothing_twice(mailboxes, engine):
    sent = mails(3)
    for raw in sent:
        mailboxes.deliver(raw)
    reader = reader_for(mailboxes, engine)
    try:
        first = reader.poll_once()
        assert (first.stored, first.duplicates, first.marked) == (3, 0, 3)
        assert reader.marks_with == DONE_KEYWORD
        stored = rows(engine)
        assert [r.delivery_id for r in stored] == [f"<m{n}@customer.example>" for n in range(3)]
        assert {(r.source, r.instance, r.state) for r in stored} == {("email", "default", "pending")}
        # The body is the message as the server holds it; the sandbox and dovecot keep the bytes.
        assert [bytes(r.body) for r in stored] == [body for _, body in mailboxes.messages()]
        assert stored[0].headers["Subject"] == "Problem 0"
        assert all(DONE_KEYWORD in flags and "\\Seen" not in flags for flags, _ in mailboxes.messages())
        assert reader.poll_once().marked == 0
        mailboxes.deliver(customer_mail(message_id="<late@customer.example>"))
        assert reader.poll_once().stored == 1
    finally:
        reader.close()
    assert len(rows(engine)) == 4


def test_a_restart_after_a_crash_between_store_and_mark_loses_nothing_and_stores_nothing_twice(
    mailboxes, engine
):
    sent = mails(3, prefix="crash")
    for raw in sent:
        mailboxes.deliver(raw)
    # What a reader killed after its commit and before its mark leaves: rows stored, mail unmarked.
    now = datetime.now(UTC)
    inbox.commit_batch(engine, [
        inbox.Delivery(source="email", instance="default", body=body, headers={},
                       received_at=now, delivery_id=delivery_id_of(body))
        for _, body in mailboxes.messages()
    ], dedupe_window=events_window())
    assert all(DONE_KEYWORD not in flags for flags, _ in mailboxes.messages())
    restarted = reader_for(mailboxes, engine)
    try:
        poll = restarted.poll_once()
    finally:
        restarted.close()
    assert (poll.stored, poll.duplicates, poll.marked) == (0, 3, 3)
    assert len(rows(engine)) == 3
    assert all(DONE_KEYWORD in flags for flags, _ in mailboxes.messages())


def events_window():
    from datetime import timedelta

    return timedelta(days=30)


def test_a_mark_that_fails_after_the_commit_is_made_good_by_the_next_poll(sandbox, engine):
    for raw in mails(2, prefix="fault"):
        sandbox.deliver(raw, to="support")
    reader = MailboxReader(imap_settings(sandbox.host, sandbox.imap_port), ENVIRON,
                           store_engine=engine, timeout=5)
    sandbox.inject_fault("imap", "UID STORE", "BYE server going down")
    try:
        with pytest.raises(TransientError):
            reader.poll_once()
        assert len(rows(engine)) == 2  # stored before the mark failed
        assert not any(DONE_KEYWORD in m.keywords for m in sandbox.mailbox("support"))
        again = reader.poll_once()  # a fresh connection
    finally:
        reader.close()
    assert (again.stored, again.duplicates, again.marked) == (0, 2, 2)
    assert all(DONE_KEYWORD in m.keywords for m in sandbox.mailbox("support"))
    assert len(rows(engine)) == 2


def test_a_server_that_keeps_no_keywords_gets_seen_flags_instead(mailboxes, engine):
    for raw in mails(2, prefix="unseen"):
        mailboxes.deliver(raw)
    proxy = KeywordlessProxy(mailboxes.host, mailboxes.port)
    reader = reader_for(mailboxes, engine, host=proxy.host, port=proxy.port)
    try:
        first = reader.poll_once()
        assert reader.marks_with == "\\Seen"
        assert first.stored == 2
        assert all("\\Seen" in flags and DONE_KEYWORD not in flags for flags, _ in mailboxes.messages())
        # Fetching peeks: a message stored and not yet marked would still be unseen.
        mailboxes.deliver(customer_mail(message_id="<unseen-late@customer.example>"))
        assert reader.poll_once().stored == 1
        assert reader.poll_once().marked == 0
    finally:
        reader.close()
        proxy.close()


def test_a_message_too_large_to_store_is_quarantined_with_its_reason(mailboxes, engine):
    small = customer_mail(message_id="<small@customer.example>")
    large = customer_mail(message_id="<large@customer.example>", body="x" * 5000)
    mailboxes.deliver(small)
    mailboxes.deliver(large)
    reader = reader_for(mailboxes, engine, max_message_bytes=2000, quarantine_folder="Quarantine")
    try:
        poll = reader.poll_once()
    finally:
        reader.close()
    assert (poll.stored, poll.quarantined, poll.marked) == (1, 1, 2)
    assert [r.delivery_id for r in rows(engine)] == ["<small@customer.example>"]
    [(_, kept)] = mailboxes.messages(folder="Quarantine")
    headers = BytesParser(policy=default_policy).parsebytes(kept, headersonly=True)
    assert "larger than 2000 bytes" in headers["X-Escalier-Quarantine"]
    assert headers["Message-ID"] == "<large@customer.example>"
    assert all(DONE_KEYWORD in flags for flags, _ in mailboxes.messages())


def test_processed_mail_can_be_moved_to_a_folder_of_its_own(mailboxes, engine):
    for raw in mails(2, prefix="move"):
        mailboxes.deliver(raw)
    reader = reader_for(mailboxes, engine, processed_folder="Processed")
    try:
        assert reader.poll_once().stored == 2
    finally:
        reader.close()
    assert mailboxes.messages() == []
    assert len(mailboxes.messages(folder="Processed")) == 2


def test_idle_wakes_the_reader_when_mail_arrives(mailboxes, engine):
    reader = reader_for(mailboxes, engine, poll_seconds=60)
    stop = threading.Event()
    thread = threading.Thread(target=reader.run, args=(stop,), daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 5
        while reader.marks_with is None and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(0.3)  # in IDLE by now
        began = time.monotonic()
        mailboxes.deliver(customer_mail(message_id="<idle@customer.example>"))
        while not rows(engine) and time.monotonic() - began < 10:
            time.sleep(0.05)
        waited = time.monotonic() - began
    finally:
        stop.set()
        thread.join(timeout=10)
    assert [r.delivery_id for r in rows(engine)] == ["<idle@customer.example>"]
    assert waited < 10  # long before the 60 s poll: IDLE said so
    assert not thread.is_alive()


# --- mail in: pushed by an MTA --------------------------------------------------------------------------


@pytest.mark.parametrize("receiver_class", [SmtpReceiver, LmtpReceiver])
def test_a_pushed_message_is_stored_before_the_receiver_answers_250(engine, receiver_class):
    raw = customer_mail(message_id="<pushed@customer.example>")
    with receiver_class(store_engine=engine) as receiver:
        client_class = smtplib.LMTP if receiver_class is LmtpReceiver else smtplib.SMTP
        with client_class("127.0.0.1", receiver.port, timeout=5) as client:
            refused = client.sendmail("alice@customer.example", ["support@northwind.example"], raw)
            assert refused == {}
            [row] = rows(engine)  # stored by the time the 250 came back
        assert row.delivery_id == "<pushed@customer.example>"
        assert bytes(row.body) == raw
        assert row.headers["X-Envelope-From"] == "alice@customer.example"
        assert row.headers["X-Escalier-Transport"] == receiver.transport


def test_lmtp_answers_once_per_recipient(engine):
    raw = customer_mail(message_id="<two@customer.example>")
    with LmtpReceiver(store_engine=engine) as receiver, \
            socket.create_connection(("127.0.0.1", receiver.port), timeout=5) as sock:
        stream = sock.makefile("rwb")

        def say(line: bytes) -> None:
            stream.write(line + b"\r\n")
            stream.flush()

        def reply() -> bytes:
            lines = [stream.readline()]
            while lines[-1][3:4] == b"-":
                lines.append(stream.readline())
            return lines[-1]

        assert reply().startswith(b"220")
        for command in (b"LHLO mta", b"MAIL FROM:<alice@customer.example>",
                        b"RCPT TO:<support@northwind.example>", b"RCPT TO:<billing@northwind.example>"):
            say(command)
            assert reply().startswith(b"250"), command
        say(b"DATA")
        assert reply().startswith(b"354")
        stream.write(raw + b".\r\n")
        stream.flush()
        assert [reply()[:3], reply()[:3]] == [b"250", b"250"]
        say(b"QUIT")
    assert [r.delivery_id for r in rows(engine)] == ["<two@customer.example>"]


@pytest.mark.parametrize("receiver_class", [SmtpReceiver, LmtpReceiver])
def test_a_store_failure_answers_451_so_that_the_mta_keeps_the_message(tmp_path, receiver_class):
    broken = create_store_engine(f"sqlite:///{tmp_path / 'no-schema.db'}")  # no inbox table
    try:
        with receiver_class(store_engine=broken) as receiver:
            client_class = smtplib.LMTP if receiver_class is LmtpReceiver else smtplib.SMTP
            with client_class("127.0.0.1", receiver.port, timeout=5) as client, \
                    pytest.raises(smtplib.SMTPDataError) as refused:
                client.sendmail("alice@customer.example", ["support@northwind.example"],
                                customer_mail(message_id="<lost@customer.example>"))
        assert refused.value.smtp_code == 451
    finally:
        broken.dispose()


# --- mail out -----------------------------------------------------------------------------------------------


def email_config(sandbox: MailSandbox, *, imap_port: int | None = None, **imap_extra) -> EmailConfig:
    return EmailConfig.model_validate({
        "from_address": "escalations@northwind.example",
        "timeout_seconds": 5,
        "smtp": {"host": sandbox.host, "port": sandbox.smtp_port, "security": "none",
                 "username": "escalations", "password": "${SMTP_PASSWORD}"},
        "imap": {"host": sandbox.host, "port": imap_port or sandbox.imap_port, "security": "none",
                 "username": "escalations", "password": "${IMAP_PASSWORD}", **imap_extra},
    })


def customer_ticket(*, message_id: str = "<first@customer.example>"):
    raw = customer_mail(message_id=message_id, sender=f"Alice <{CUSTOMER}>",
                        subject="Invoices cannot be exported",
                        body="The export fails.\nAccount number: 4711\n")
    return events.ticket_from_message(read_message(raw), None, "default")


def action(kind: ActionKind, seq: int, ticket_id: str, **fields) -> Action:
    return Action(kind=kind, key=f"email:default:{ticket_id}:{seq}", system="email",
                  ticket_id=ticket_id, tier=fields.pop("tier", 2), **fields)


TIER_2 = {"address": "specialists@northwind.example", "cc": ["escalations-log@northwind.example"]}


def read_back(sandbox: MailSandbox, user: str) -> list:
    """The messages in ``user``'s INBOX, read over IMAP, parsed."""
    box = Mailboxes("sandbox", sandbox.host, sandbox.imap_port, sandbox.users, lambda raw, user: None)
    return [BytesParser(policy=default_policy).parsebytes(body) for _, body in box.messages(user)]


@pytest.fixture
def connection(sandbox: MailSandbox) -> Iterator[EmailConnection]:
    found = EmailConnection(email_config(sandbox), "default", ENVIRON, {})
    yield found
    found.close()


def test_an_escalation_mails_the_group_its_summary_and_acknowledges_the_customer(sandbox, connection):
    ticket = customer_ticket()
    tid = ticket.id
    batch = ActionBatch("email", "default", tid, (
        action(ActionKind.ASSIGN, 1, tid, target=TIER_2),
        action(ActionKind.ADD_TAGS, 2, tid, tags=("tier-2",)),
        action(ActionKind.COMMENT, 3, tid, body="[escalier] Escalated from Tier 1 to Tier 2: time-box ended",
               public=False, target=TIER_2),
        action(ActionKind.NOTIFY, 4, tid, channel="people", recipients=("priya@northwind.example",),
               body="[escalier] email ticket at Tier 2"),
        action(ActionKind.ADD_WATCHERS, 5, tid, watchers=("priya@northwind.example",)),
    ), ticket=ticket)
    results = connection.apply_batch(batch)
    assert [r.applied for r in results] == [True, True, True, True, False]
    assert [r.calls for r in results] == [2, 0, 0, 1, 0]  # the acknowledgement and the assignment
    assert all(r.error is None for r in results)

    [assignment] = read_back(sandbox, "specialists")
    assert assignment["Message-ID"] == message_id_for(f"email:default:{tid}:1", "escalations@northwind.example")
    assert assignment["Auto-Submitted"] == "auto-replied"
    assert assignment["X-Auto-Response-Suppress"] == "All"
    assert assignment["Precedence"] is None
    assert f"[{tid}]" in assignment["Subject"] and "Invoices cannot be exported" in assignment["Subject"]
    assert assignment["Cc"] == "escalations-log@northwind.example"
    assert "<first@customer.example>" in assignment["References"]
    text = assignment.get_content()
    assert "Escalated from Tier 1 to Tier 2: time-box ended" in text  # the folded internal note
    assert "Account number: 4711" in text and CUSTOMER in text
    assert text.rstrip().splitlines()[-1] == f"escalier:action=email:default:{tid}:1"

    [ack] = read_back(sandbox, "alice")
    assert ack["In-Reply-To"] == "<first@customer.example>"
    assert ack["References"] == "<first@customer.example>"
    assert ack["Subject"] == f"Re: Invoices cannot be exported [{tid}]"
    assert tid in ack.get_content() and ack["Auto-Submitted"] == "auto-replied"
    assert ack["Message-ID"] != assignment["Message-ID"]
    notices = [m for m in sandbox.sent() if "priya@northwind.example" in m.rcpt_tos]
    assert len(notices) == 1


def test_a_public_comment_replies_in_the_thread_and_an_internal_one_notes_the_group(sandbox, connection):
    ticket = customer_ticket(message_id="<thread@customer.example>")
    tid = ticket.id
    results = connection.apply_batch(ActionBatch("email", "default", tid, (
        action(ActionKind.COMMENT, 7, tid, body="[escalier] We are on it.", public=True, target=TIER_2),
        action(ActionKind.COMMENT, 8, tid, body="Internal: check the export job", public=False,
               target=TIER_2),
    ), ticket=ticket))
    assert [(r.applied, r.calls) for r in results] == [(True, 1), (True, 1)]
    [reply] = read_back(sandbox, "alice")
    assert reply["In-Reply-To"] == "<thread@customer.example>"
    assert reply["Subject"] == f"Re: Invoices cannot be exported [{tid}]"
    assert reply.get_content().startswith("We are on it.")
    [note] = read_back(sandbox, "specialists")
    assert "check the export job" in note.get_content() and f"[{tid}]" in note["Subject"]


def test_automatic_mail_to_one_address_is_rate_limited_and_never_goes_to_a_bouncing_one(sandbox):
    now = [0.0]
    connection = EmailConnection(email_config(sandbox), "default", ENVIRON, {},
                                 monotonic=lambda: now[0], auto_replies_per_hour=5)
    try:
        ticket = customer_ticket()
        tid = ticket.id
        results = [connection.apply_batch(ActionBatch("email", "default", tid, (
            action(ActionKind.COMMENT, 10 + n, tid, body=f"update {n}", public=True),
        ), ticket=ticket))[0] for n in range(6)]
        assert [r.applied for r in results] == [True] * 5 + [False]
        assert "rate limited" in results[5].detail and results[5].error is None
        assert len(read_back(sandbox, "alice")) == 5
        now[0] += 3601
        [later] = connection.apply_batch(ActionBatch("email", "default", tid, (
            action(ActionKind.COMMENT, 20, tid, body="an hour later", public=True),), ticket=ticket))
        assert later.applied
        connection.mark_bouncing([CUSTOMER])
        [held] = connection.apply_batch(ActionBatch("email", "default", tid, (
            action(ActionKind.COMMENT, 21, tid, body="after the bounce", public=True),), ticket=ticket))
        assert (held.applied, held.error) == (False, None) and "bounces" in held.detail
        assert len(read_back(sandbox, "alice")) == 6
    finally:
        connection.close()


def test_smtp_answers_become_the_error_tree(sandbox, connection):
    ticket = customer_ticket()
    tid = ticket.id

    def one(seq: int) -> ActionBatch:
        return ActionBatch("email", "default", tid, (
            action(ActionKind.COMMENT, seq, tid, body="note", public=False,
                   target={"address": "specialists@northwind.example"}),), ticket=ticket)

    sandbox.inject_fault("smtp", "DATA", "451 4.3.0 try again later")
    with pytest.raises(TransientError) as deferred:
        connection.apply_batch(one(30))
    assert deferred.value.status == 451
    sandbox.inject_fault("smtp", "RCPT", "550 5.1.1 no such mailbox")
    [refused] = connection.apply_batch(one(31))
    assert isinstance(refused.error, RejectedError) and refused.error.status == 550
    assert "specialists@northwind.example" in str(refused.error)
    [landed] = connection.apply_batch(one(32))
    assert landed.applied and landed.error is None
    wrong = EmailConnection(email_config(sandbox), "default",
                            {**ENVIRON, "SMTP_PASSWORD": "not-the-password"}, {})
    with pytest.raises(AuthError):
        wrong.apply_batch(one(33))
    with pytest.raises(AuthError):
        wrong.check()


def test_a_maybe_applied_action_is_looked_up_in_the_sent_folder_before_it_is_sent_again(sandbox):
    connection = EmailConnection(email_config(sandbox), "default", ENVIRON, {}, sent_folder="Sent")
    try:
        ticket = customer_ticket()
        tid = ticket.id
        actions = (action(ActionKind.COMMENT, 40, tid, body="once only", public=False, target=TIER_2),)
        [first] = connection.apply_batch(ActionBatch("email", "default", tid, actions, ticket=ticket))
        assert first.applied
        [again] = connection.apply_batch(ActionBatch("email", "default", tid, actions,
                                                     frozenset({actions[0].key}), ticket))
        assert (again.applied, again.calls) == (False, 0) and "already sent" in again.detail
        assert len(read_back(sandbox, "specialists")) == 1
        [kept] = sandbox.mailbox("escalations", "Sent")
        assert kept.message_id == message_id_for(actions[0].key, "escalations@northwind.example")
    finally:
        connection.close()


def test_without_a_sent_folder_the_store_remembers_each_mail_that_went_out(sandbox, engine):
    ticket = customer_ticket()
    tid = ticket.id
    actions = (action(ActionKind.COMMENT, 41, tid, body="once only", public=False, target=TIER_2),)
    first = EmailConnection(email_config(sandbox), "default", ENVIRON, {}, store_engine=engine)
    [sent] = first.apply_batch(ActionBatch("email", "default", tid, actions, ticket=ticket))
    first.close()
    assert sent.applied
    # A worker that took the action over after a crash (another connection on the same store).
    second = EmailConnection(email_config(sandbox), "default", ENVIRON, {}, store_engine=engine)
    [again] = second.apply_batch(ActionBatch("email", "default", tid, actions,
                                             frozenset({actions[0].key}), ticket))
    second.close()
    assert (again.applied, again.calls) == (False, 0) and "already sent" in again.detail
    ids = [m["Message-ID"] for m in read_back(sandbox, "specialists")]
    assert ids == [message_id_for(actions[0].key, "escalations@northwind.example")]


def test_check_logs_in_to_both_servers_and_fetch_ticket_says_mail_keeps_none(sandbox, connection):
    said = connection.check()
    assert f"SMTP {sandbox.host}:{sandbox.smtp_port}" in said and "accepted us as escalations" in said
    assert "INBOX holds 0 messages" in said and "$EscalierDone" in said and "IDLE offered" in said
    with pytest.raises(NotFoundError, match="no ticket store"):
        connection.fetch_ticket("ESC-ABCDEFGHIJ")


def test_a_parsed_bounce_marks_the_address_as_bouncing(sandbox, connection):
    from escalier.connectors.email import plugin
    from escalier.core.connector import DeliverySkipped

    bounce = (
        b"From: MAILER-DAEMON@mx.customer.example\r\nTo: escalations@northwind.example\r\n"
        b"Subject: Undelivered Mail Returned to Sender\r\nMessage-ID: <b1@mx.customer.example>\r\n"
        b"Date: Mon, 02 Mar 2026 09:05:00 +0000\r\nMIME-Version: 1.0\r\n"
        b"Content-Type: multipart/report; report-type=delivery-status; boundary=XX\r\n\r\n"
        b"--XX\r\nContent-Type: text/plain\r\n\r\nYour message could not be delivered.\r\n"
        b"--XX\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx.customer.example\r\n\r\n"
        b"Final-Recipient: rfc822; alice@northwind.example\r\nAction: failed\r\nStatus: 5.1.1\r\n"
        b"--XX--\r\n"
    )
    raw = RawEvent(source="email", instance="default", body=bounce, headers={},
                   received_at=datetime.now(UTC), delivery_id="<b1@mx.customer.example>")
    with pytest.raises(DeliverySkipped) as skipped:
        plugin.parse_event_for_connector(raw=raw, config=None, connection=connection)
    assert skipped.value.kind == "bounce"
    ticket = customer_ticket()
    [held] = connection.apply_batch(ActionBatch("email", "default", ticket.id, (
        action(ActionKind.COMMENT, 50, ticket.id, body="hello?", public=True),), ticket=ticket))
    assert not held.applied and "bounces" in held.detail


@pytest.fixture

def store_engine(tmp_path):
    url = f"sqlite:///{tmp_path / 'escalier.db'}"
    upgrade(url)
    engine = create_store_engine(url)
    yield engine
    engine.dispose()


def reply(connection: EmailConnection, ticket, seq: int):
    [result] = connection.apply_batch(ActionBatch("email", "default", ticket.id, (
        action(ActionKind.COMMENT, seq, ticket.id, body=f"update {seq}", public=True),
    ), ticket=ticket))
    return result


def test_the_reply_limit_and_a_bounce_outlive_the_connection_that_saw_them(sandbox, store_engine):
    now = [datetime(2026, 3, 2, 9, 0, tzinfo=UTC)]
    ticket = customer_ticket()

    def connect() -> EmailConnection:
        return EmailConnection(email_config(sandbox), "default", ENVIRON, {}, store_engine=store_engine,
                               clock=lambda: now[0], auto_replies_per_hour=3)

    first = connect()
    results = [reply(first, ticket, n) for n in range(4)]
    first.close()
    # The first replies (and the acknowledgement the store's thread asks for) spend the limit.
    assert not results[-1].applied and "rate limited: 3" in results[-1].detail
    assert len(read_back(sandbox, "alice")) == 3
    # A restarted worker (or another node) knows the three automatic mails of the last hour.
    second = connect()
    held = reply(second, ticket, 10)
    assert (held.applied, held.error) == (False, None) and "rate limited: 3" in held.detail
    now[0] += timedelta(minutes=61)
    assert reply(second, ticket, 11).applied
    second.mark_bouncing([CUSTOMER.upper()])
    second.close()
    third = connect()
    bounced = reply(third, ticket, 12)
    assert (bounced.applied, bounced.error) == (False, None) and "bounces" in bounced.detail
    third.close()
    assert len(read_back(sandbox, "alice")) == 4
