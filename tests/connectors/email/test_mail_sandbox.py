"""The mail sandbox: smtplib sends, imaplib (and a raw socket, for IDLE and literals) reads back."""

from __future__ import annotations

import contextlib

import imaplib
import re
import signal
import smtplib
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from email.message import EmailMessage
from pathlib import Path

import pytest
import yaml
from escalier.connectors.email.config import EmailConfig
from escalier.connectors.email.sandbox import (
    DEFAULT_PASSWORD,
    MailFault,
    MailSandbox,
    SentMail,
    StoredMail,
)

pytestmark = pytest.mark.timeout(60)

ROOT = Path(__file__).resolve().parents[3]
PASSWORD = DEFAULT_PASSWORD
SUPPORT = "support@northwind.example"
CUSTOMER = "alice@customer.example"


@pytest.fixture
def sandbox() -> Iterator[MailSandbox]:
    with MailSandbox() as server:
        yield server


@contextmanager
def imap(server: MailSandbox, user: str = "support") -> Iterator[imaplib.IMAP4]:
    client = imaplib.IMAP4(server.host, server.imap_port, timeout=5)
    try:
        client.login(user, server.users[user])
        yield client
    finally:
        with contextlib.suppress(imaplib.IMAP4.error, OSError):
            client.logout()


@contextmanager
def smtp(server: MailSandbox, *, login: bool = True) -> Iterator[smtplib.SMTP]:
    client = smtplib.SMTP(server.host, server.smtp_port, timeout=5)
    try:
        if login:
            client.login("support", PASSWORD)
        yield client
    finally:
        with contextlib.suppress(smtplib.SMTPException, OSError):
            client.quit()


def customer_mail(
    subject: str = "Printer on fire",
    *,
    to: str = SUPPORT,
    body: str = "Help!\n",
    message_id: str | None = "<m1@customer.example>",
) -> EmailMessage:
    message = EmailMessage()
    message["From"] = f"Alice <{CUSTOMER}>"
    message["To"] = to
    message["Subject"] = subject
    if message_id:
        message["Message-ID"] = message_id
    message["Date"] = "Mon, 01 Dec 2025 10:00:00 +0000"
    message.set_content(body)
    return message


def uids(data: list) -> list[int]:
    return [int(part) for part in (data[0] or b"").split()]


class RawImap:
    """A bare IMAP connection: send exactly these bytes, read the answer up to a tagged line."""

    def __init__(self, server: MailSandbox):
        self.sock = socket.create_connection((server.host, server.imap_port), timeout=5)
        self.file = self.sock.makefile("rb")
        self.greeting = self.file.readline()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def line(self) -> bytes:
        line = self.file.readline()
        if not line:
            raise ConnectionError("the server closed the connection")
        return line

    def until(self, tag: bytes) -> list[bytes]:
        """Every response up to the tagged one; a literal and the rest of its line are one item."""
        lines = []
        while True:
            line = self.line()
            while found := re.search(rb"\{(\d+)\}\r\n$", line):
                line += self.file.read(int(found.group(1)))
                line += self.line()
            lines.append(line)
            if line.startswith(tag + b" "):
                return lines

    def command(self, tag: bytes, text: bytes) -> list[bytes]:
        self.send(tag + b" " + text + b"\r\n")
        return self.until(tag)

    def close(self) -> None:
        self.file.close()
        self.sock.close()


# --- SMTP in, IMAP out ----------------------------------------------------------------------------


def test_mail_sent_with_auth_is_read_back_over_imap_and_marked(sandbox: MailSandbox) -> None:
    with smtp(sandbox) as client:
        assert (
            client.has_extn("auth") and client.has_extn("8bitmime") and client.has_extn("smtputf8")
        )
        assert int(client.esmtp_features["size"]) == sandbox.max_message_size
        assert client.send_message(customer_mail()) == {}
    [sent] = sandbox.sent()
    assert isinstance(sent, SentMail)
    assert (sent.mail_from, sent.rcpt_tos, sent.authenticated_as) == (
        CUSTOMER,
        (SUPPORT,),
        "support",
    )
    assert sent.message_id == "<m1@customer.example>" and sent.subject == "Printer on fire"
    assert sent.delivered_to == ("support",)
    [stored] = sandbox.mailbox("support")
    assert isinstance(stored, StoredMail)
    assert stored.uid == 1 and stored.flags == frozenset() and stored.keywords == frozenset()
    # Delivery adds the trace headers an MDA adds, above the message as it was sent.
    assert stored.raw.startswith(
        b"Return-Path: <alice@customer.example>\r\nDelivered-To: " + SUPPORT.encode()
    )
    assert stored.raw.endswith(sent.raw) and b"\r\nReceived: from " in stored.raw
    assert (
        stored.message_id == "<m1@customer.example>" and stored.headers["Delivered-To"] == SUPPORT
    )

    with imap(sandbox) as client:
        typ, data = client.select("INBOX")
        assert (typ, data) == ("OK", [b"1"])
        assert client.untagged_responses["UIDNEXT"] == [b"2"]
        assert b"\\*" in client.untagged_responses["PERMANENTFLAGS"][0]
        typ, data = client.uid("SEARCH", None, "UNSEEN")
        assert uids(data) == [1]
        typ, data = client.uid("FETCH", "1", "(UID FLAGS BODY.PEEK[])")
        assert typ == "OK" and data[0][1] == stored.raw and b"UID 1" in data[0][0]
        assert b"\\Seen" not in data[0][0]  # PEEK leaves the message unread
        typ, data = client.uid("STORE", "1", "+FLAGS", "(\\Seen $EscalierDone)")
        assert typ == "OK" and b"$EscalierDone" in data[0] and b"\\Seen" in data[0]
        assert uids(client.uid("SEARCH", None, "UNKEYWORD", "$EscalierDone")[1]) == []
        assert uids(client.uid("SEARCH", None, "KEYWORD", "$escalierdone")[1]) == [1]
        assert uids(client.uid("SEARCH", None, "UNSEEN")[1]) == []
    [stored] = sandbox.mailbox("support")
    assert stored.flags == {"\\Seen"} and stored.keywords == {"$EscalierDone"}


def test_smtp_auth_login_plain_wrong_password_and_no_auth(sandbox: MailSandbox) -> None:
    client = smtplib.SMTP(sandbox.host, sandbox.smtp_port, timeout=5)
    try:
        client.ehlo()
        client.user, client.password = "support@northwind.example", PASSWORD
        code, _ = client.auth("LOGIN", client.auth_login)
        assert code == 235
    finally:
        client.quit()
    client = smtplib.SMTP(sandbox.host, sandbox.smtp_port, timeout=5)
    try:
        with pytest.raises(smtplib.SMTPAuthenticationError) as refused:
            client.login("support", "wrong")
        assert refused.value.smtp_code == 535
        # Without AUTH the server refuses to take mail, as a submission server does.
        with pytest.raises(smtplib.SMTPSenderRefused) as unauthenticated:
            client.sendmail(CUSTOMER, [SUPPORT], b"Subject: x\r\n\r\nx\r\n")
        assert unauthenticated.value.smtp_code == 530
    finally:
        client.close()
    assert sandbox.sent() == []

    with MailSandbox(require_auth=False) as open_relay, smtp(open_relay, login=False) as client:
        client.send_message(customer_mail())
        assert [m.authenticated_as for m in open_relay.sent()] == [None]
        assert len(open_relay.mailbox("support")) == 1


def test_8bit_utf8_addresses_several_recipients_and_a_large_message(sandbox: MailSandbox) -> None:
    eight_bit = (
        "From: José <josé@cliente.example>\r\nTo: support@northwind.example\r\n"
        "Subject: Überweisung fehlgeschlagen\r\nContent-Type: text/plain; charset=utf-8\r\n"
        "Content-Transfer-Encoding: 8bit\r\nMessage-ID: <u1@cliente.example>\r\n\r\n"
        "Grüße aus Köln — ça ne marche pas\r\n"
    ).encode()
    recipients = [
        SUPPORT,
        "escalations+ESC-12@northwind.example",
        "bob@partner.example",
        "Carol@Partner.Example",
    ]
    large_body = "".join(f"line {n:06d} " + "x" * 60 + "\n" for n in range(40_000))  # ~2.8 MB
    with smtp(sandbox) as client:
        refused = client.sendmail(
            "josé@cliente.example", [SUPPORT], eight_bit, mail_options=["SMTPUTF8", "BODY=8BITMIME"]
        )
        assert refused == {}
        assert (
            client.sendmail(CUSTOMER, recipients, customer_mail(message_id="<many@c>").as_bytes())
            == {}
        )
        client.send_message(customer_mail("big", body=large_body, message_id="<big@c>"))
    utf8, many, big = sandbox.sent()
    assert utf8.mail_from == "josé@cliente.example" and utf8.raw == eight_bit
    assert many.rcpt_tos == tuple(recipients)
    assert many.delivered_to == (
        "support",
        "escalations",
        "bob@partner.example",
        "carol@partner.example",
    )
    assert [m.message_id for m in sandbox.mailbox("escalations")] == ["<many@c>"]
    assert [m.message_id for m in sandbox.mailbox("BOB@partner.example")] == ["<many@c>"]
    assert [m.message_id for m in sandbox.mailbox("carol@partner.example")] == ["<many@c>"]
    assert len(big.raw) > 2_500_000

    with imap(sandbox) as client:
        client.select("INBOX")
        data = client.uid("FETCH", "1:*", "(RFC822.SIZE BODY.PEEK[])")[1]
        bodies = [item[1] for item in data if isinstance(item, tuple)]
        assert [m.raw for m in sandbox.mailbox("support")] == bodies
        assert "Grüße aus Köln".encode() in bodies[0] and bodies[2].endswith(big.raw)
        assert uids(client.uid("SEARCH", "CHARSET", "UTF-8", "BODY", '"KÖLN"'.encode())[1]) == [1]
        assert uids(client.uid("SEARCH", None, "LARGER", "1000000")[1]) == [3]

    with MailSandbox(max_message_size=10_000, catch_all=False) as strict, smtp(strict) as client:
        with pytest.raises(smtplib.SMTPRecipientsRefused) as unknown:
            client.sendmail(CUSTOMER, ["bob@partner.example", "nobody@northwind.example"], b"x\r\n")
        assert {code for code, _ in unknown.value.recipients.values()} == {550}
        with pytest.raises(smtplib.SMTPSenderRefused) as too_big:
            client.send_message(customer_mail(body="y" * 20_000))
        assert too_big.value.smtp_code == 552  # SIZE in MAIL FROM is refused up front
        assert strict.sent() == []


# --- IMAP ------------------------------------------------------------------------------------------


def test_folders_move_append_copy_expunge_and_stable_uids(sandbox: MailSandbox) -> None:
    for n in range(1, 5):
        sandbox.deliver(customer_mail(f"Problem {n}", message_id=f"<p{n}@c>"), to="support")
    with imap(sandbox) as client:
        client.select("INBOX")
        validity = int(client.untagged_responses["UIDVALIDITY"][0])
        assert client.create("Escalier/Quarantine")[0] == "OK"
        typ, data = client.create("Escalier/Quarantine")
        assert typ == "NO" and b"ALREADYEXISTS" in data[0]
        typ, listed = client.list()
        assert listed == [
            b'(\\HasNoChildren) "/" "INBOX"',
            b'(\\HasChildren) "/" "Escalier"',
            b'(\\HasNoChildren) "/" "Escalier/Quarantine"',
        ]
        assert client.list('""', "%")[1] == [
            b'(\\HasNoChildren) "/" "INBOX"',
            b'(\\HasChildren) "/" "Escalier"',
        ]

        typ, data = client.uid("MOVE", "2", '"Escalier/Quarantine"')
        assert typ == "OK"
        assert client.untagged_responses.pop("EXPUNGE") == [b"2"]
        copyuid = client.untagged_responses.pop("COPYUID")[0].split()
        assert copyuid[1:] == [b"2", b"1"]
        assert typ == "OK" and uids(client.uid("SEARCH", None, "ALL")[1]) == [1, 3, 4]

        assert client.uid("COPY", "3:4", '"Escalier/Quarantine"')[0] == "OK"
        assert client.untagged_responses.pop("COPYUID")[0].split()[1:] == [b"3:4", b"2:3"]
        typ, data = client.uid("COPY", "3", "Nowhere")
        assert typ == "NO" and b"TRYCREATE" in data[0]

        when = imaplib.Time2Internaldate(datetime(2025, 12, 1, 9, 30, tzinfo=UTC).timestamp())
        typ, data = client.append(
            "INBOX", "(\\Flagged $Note)", when, b"Subject: appended\r\n\r\nbody\r\n"
        )
        assert typ == "OK" and re.match(rb"\[APPENDUID %d 5\]" % validity, data[0])
        typ, data = client.uid("FETCH", "5", "(FLAGS INTERNALDATE)")
        assert b"\\Flagged" in data[0] and b"$Note" in data[0]
        assert imaplib.Internaldate2tuple(data[0])[:5] == (2025, 12, 1, 9, 30)

        client.uid("STORE", "1,4", "+FLAGS.SILENT", "(\\Deleted)")
        typ, data = client.expunge()
        assert typ == "OK" and data == [b"3", b"1"]  # highest first: each number still valid
        assert uids(client.uid("SEARCH", None, "ALL")[1]) == [3, 5]
        typ, data = client.status('"Escalier/Quarantine"', "(MESSAGES UIDNEXT UNSEEN)")
        assert data == [b'"Escalier/Quarantine" (MESSAGES 3 UIDNEXT 4 UNSEEN 3)']
        typ, data = client.select('"Escalier/Quarantine"')
        assert data == [b"3"]
        assert int(client.untagged_responses["UIDVALIDITY"][0]) != validity
        typ, data = client.fetch("1:*", "(BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])")
        ids = [item[1].strip() for item in data if isinstance(item, tuple)]
        assert ids == [b"Message-ID: <p2@c>", b"Message-ID: <p3@c>", b"Message-ID: <p4@c>"]
        assert client.delete('"Escalier/Quarantine"')[0] == "OK"
    assert [m.uid for m in sandbox.mailbox("support")] == [3, 5]
    assert sandbox.folders("support") == ["Escalier", "INBOX"]
    with pytest.raises(KeyError):
        sandbox.mailbox("support", "Escalier/Quarantine")


def test_search_keys_and_sequence_sets(sandbox: MailSandbox) -> None:
    for n in range(1, 8):
        sandbox.deliver(
            customer_mail(f"Case {n}", message_id=f"<c{n}@customer.example>"), to="support"
        )
    with imap(sandbox) as client:
        client.select("INBOX")
        client.store("2,4", "+FLAGS", "\\Seen")
        client.store("5:6", "+FLAGS", "($EscalierDone)")

        def search(*criteria: str) -> list[int]:
            typ, data = client.search(None, *criteria)
            assert typ == "OK", data
            return uids(data)

        assert search("ALL") == [1, 2, 3, 4, 5, 6, 7]
        assert search("SEEN") == [2, 4] and search("UNSEEN") == [1, 3, 5, 6, 7]
        assert search("KEYWORD", "$EscalierDone") == [5, 6]
        assert search("UNKEYWORD", "$EscalierDone", "UNSEEN") == [1, 3, 7]
        assert search("1:*") == [1, 2, 3, 4, 5, 6, 7] and search("3,5:7") == [3, 5, 6, 7]
        assert search("*") == [7] and search("6:4") == [4, 5, 6]
        assert search("OR", "SEEN", "KEYWORD", "$EscalierDone") == [2, 4, 5, 6]
        assert search("NOT", "(SEEN UNKEYWORD $EscalierDone)") == [1, 3, 5, 6, 7]
        assert search("HEADER", "Message-ID", "<c3@customer.example>") == [3]
        assert search("SUBJECT", '"case 6"') == [6] and search("FROM", "alice") == [
            1,
            2,
            3,
            4,
            5,
            6,
            7,
        ]
        assert (
            search("SINCE", "1-Jan-2000") == [1, 2, 3, 4, 5, 6, 7]
            and search("BEFORE", "1-Jan-2000") == []
        )
        assert search("SENTON", "1-Dec-2025") == [1, 2, 3, 4, 5, 6, 7]
        assert search("UID", "2:3") == [2, 3] and search("UID", "6:*") == [6, 7]
        data = client.uid("SEARCH", None, "UID", "100:*")[1]
        assert uids(data) == [7]  # * is the largest UID, so 100:* still names it
        with pytest.raises(imaplib.IMAP4.error, match="BAD"):
            client.search(None, "NONSENSE")


def test_fetch_items_sections_and_read_only_examine(sandbox: MailSandbox) -> None:
    mail = customer_mail("=?utf-8?q?Caf=C3=A9?= down", body="0123456789\n")
    sandbox.deliver(mail)
    with imap(sandbox) as client:
        client.select("INBOX", readonly=True)
        typ, data = client.fetch(
            "1", "(BODY[] BODY.PEEK[TEXT]<2.5> RFC822.SIZE INTERNALDATE ENVELOPE)"
        )
        assert typ == "OK"
        response = b"".join(part if isinstance(part, bytes) else part[0] + part[1] for part in data)
        assert b" BODY[TEXT]<2> {5}23456" in response  # imaplib takes the literal's framing off
        assert b"RFC822.SIZE %d" % len(sandbox.mailbox("support")[0].raw) in response
        assert b'ENVELOPE ("Mon, 01 Dec 2025 10:00:00 +0000" ' in response
        assert b'(("Alice" NIL "alice" "customer.example"))' in response
        assert b'"<m1@customer.example>")' in response
        assert sandbox.mailbox("support")[0].flags == frozenset()  # EXAMINE sets no \Seen
        typ, data = client.store("1", "+FLAGS", "\\Flagged")
        assert typ == "NO"
        client.close()
        client.select("INBOX")
        typ, data = client.fetch("1", "(BODY[HEADER.FIELDS (SUBJECT FROM)])")
        assert data[0][1].startswith(b"From: Alice <alice@customer.example>\r\nSubject: ")
        assert data[0][1].endswith(b"\r\n\r\n") and b"Message-ID" not in data[0][1]
        assert b"FLAGS (\\Seen" in data[1] or b"\\Seen" in data[0][0]  # the server says it changed
        typ, data = client.fetch("1", "(BODY.PEEK[HEADER.FIELDS.NOT (SUBJECT FROM DATE)])")
        assert b"Subject" not in data[0][1] and b"Message-ID: <m1@customer.example>" in data[0][1]
        typ, data = client.fetch("1", "RFC822")
        assert data[0][1] == sandbox.mailbox("support")[0].raw
        with pytest.raises(imaplib.IMAP4.error, match="BAD"):
            client.fetch("9", "FLAGS")
    assert sandbox.mailbox("support")[0].flags == {"\\Seen"}
    assert sandbox.mailbox("support")[0].subject == "Café down"


def test_literals_both_ways_and_protocol_errors(sandbox: MailSandbox) -> None:
    raw = RawImap(sandbox)
    try:
        assert raw.greeting.startswith(b"* OK [CAPABILITY IMAP4rev1 ")
        assert raw.command(b"a0", b"SELECT INBOX")[-1].startswith(b"a0 BAD")  # not logged in
        raw.send(b"a1 LOGIN {7}\r\n")
        assert raw.line().startswith(b"+ ")
        raw.send(b"support {16+}\r\nsandbox-password\r\n")  # LITERAL+: no continuation awaited
        assert raw.until(b"a1")[-1].startswith(b"a1 OK")
        message = b"Subject: literal\r\nMessage-ID: <lit@c>\r\n\r\nline one\r\nline two\r\n"
        raw.send(b"a2 APPEND INBOX (\\Seen) {%d}\r\n" % len(message))
        assert raw.line().startswith(b"+ ")
        raw.send(message + b"\r\n")
        assert raw.until(b"a2")[-1].startswith(b"a2 OK [APPENDUID ")
        assert raw.command(b"a3", b'CREATE "With Space"')[-1] == b"a3 OK CREATE completed\r\n"
        assert raw.command(b"a4", b"SELECT INBOX")[-1].startswith(b"a4 OK [READ-WRITE]")
        fetched = raw.command(b"a5", b"FETCH 1 (BODY.PEEK[])")
        assert fetched[0] == b"* 1 FETCH (BODY[] {%d}\r\n" % len(message) + message + b")\r\n"
        assert raw.command(b"a6", b"FROB")[-1].startswith(b"a6 BAD")
        assert raw.command(b"a7", b"UID FROB 1")[-1].startswith(b"a7 BAD")
        assert raw.command(b"a8", b"SELECT Nowhere")[-1].startswith(b"a8 NO")
        assert raw.command(b"a9", b"FETCH 1 FLAGS")[-1].startswith(
            b"a9 BAD"
        )  # nothing selected now
        assert raw.command(b"b1", b'EXAMINE "With Space"')[-1].startswith(b"b1 OK [READ-ONLY]")
        assert raw.command(b"b2", b"FETCH 1:* (FLAGS")[-1].startswith(b"b2 BAD")
        assert (
            raw.command(b"b3", b"STATUS INBOX (MESSAGES)")[0]
            == b'* STATUS "INBOX" (MESSAGES 1)\r\n'
        )
        assert raw.command(b"b4", b"LOGOUT")[0] == b"* BYE Logging out\r\n"
    finally:
        raw.close()
    with pytest.raises(imaplib.IMAP4.error):
        imaplib.IMAP4(sandbox.host, sandbox.imap_port, timeout=5).login("support", "wrong")
    client = imaplib.IMAP4(sandbox.host, sandbox.imap_port, timeout=5)
    try:
        assert (
            client.authenticate("PLAIN", lambda _: b"\0escalations\0" + PASSWORD.encode())[0]
            == "OK"
        )
        assert client.select("INBOX") == ("OK", [b"0"])
    finally:
        client.logout()


def test_idle_announces_new_mail_and_expunges_from_another_session(sandbox: MailSandbox) -> None:
    sandbox.deliver(customer_mail(message_id="<first@c>"))
    raw = RawImap(sandbox)
    try:
        raw.command(b"a1", b"LOGIN support sandbox-password")
        raw.command(b"a2", b"SELECT INBOX")
        raw.send(b"a3 IDLE\r\n")
        assert raw.line().startswith(b"+ ")
        with smtp(sandbox) as client:
            client.send_message(customer_mail(message_id="<second@c>"))
        assert raw.line() == b"* 2 EXISTS\r\n"
        assert raw.line() == b"* 2 RECENT\r\n"
        with imap(sandbox) as other:
            other.select("INBOX")
            other.store("1", "+FLAGS", "(\\Deleted)")
            other.expunge()
        lines = [raw.line() for _ in range(2)]
        assert b"* 1 EXPUNGE\r\n" in lines
        raw.send(b"DONE\r\n")
        assert raw.until(b"a3")[-1] == b"a3 OK IDLE terminated\r\n"
        fetched = raw.command(b"a4", b"UID FETCH 1:* (UID)")
        assert fetched[0] == b"* 1 FETCH (UID 2)\r\n"
    finally:
        raw.close()


def test_a_second_session_hears_of_flag_changes_at_noop(sandbox: MailSandbox) -> None:
    sandbox.deliver(customer_mail())
    with imap(sandbox) as first, imap(sandbox) as second:
        first.select("INBOX")
        second.select("INBOX")
        first.uid("STORE", "1", "+FLAGS", "($EscalierDone)")
        second.noop()
        assert any(b"$EscalierDone" in line for line in second.untagged_responses.get("FETCH", []))


# --- faults, counts, reset ------------------------------------------------------------------------


def test_smtp_faults_refuse_then_recover(sandbox: MailSandbox) -> None:
    fault = sandbox.inject_fault("smtp", "DATA", "451 4.3.0 Try again later")
    assert fault == MailFault("smtp", "DATA", "451 4.3.0 Try again later", 1)
    with smtp(sandbox) as client:
        with pytest.raises(smtplib.SMTPDataError) as deferred:
            client.send_message(customer_mail())
        assert deferred.value.smtp_code == 451
        client.send_message(customer_mail())
    assert len(sandbox.sent()) == 1 and len(sandbox.mailbox("support")) == 1

    sandbox.inject_fault("smtp", "MAIL", "421 4.3.2 Shutting down", count=1)
    with smtp(sandbox) as client:
        with pytest.raises((smtplib.SMTPSenderRefused, smtplib.SMTPServerDisconnected)) as gone:
            client.send_message(customer_mail())
        assert getattr(gone.value, "smtp_code", 421) == 421
    with smtp(sandbox) as client:
        client.send_message(customer_mail())
    assert len(sandbox.sent()) == 2
    with pytest.raises(ValueError):
        sandbox.inject_fault("smtp", "DATA", "250 fine")
    with pytest.raises(ValueError):
        sandbox.inject_fault("pop3")


def test_imap_faults_no_bad_and_bye(sandbox: MailSandbox) -> None:
    sandbox.deliver(customer_mail())
    sandbox.inject_fault("imap", "UID FETCH", count=2)
    with imap(sandbox) as client:
        client.select("INBOX")
        for _ in range(2):
            typ, data = client.uid("FETCH", "1", "(BODY.PEEK[])")
            assert typ == "NO" and b"UNAVAILABLE" in data[0]
        assert client.uid("FETCH", "1", "(BODY.PEEK[])")[0] == "OK"
        sandbox.inject_fault("imap", "NOOP", "BYE Server shutting down")
        with pytest.raises(imaplib.IMAP4.abort):
            client.noop()
    sandbox.inject_fault("imap", "LOGIN", "NO [UNAVAILABLE] Maintenance")
    with pytest.raises(imaplib.IMAP4.error, match="Maintenance"):
        imaplib.IMAP4(sandbox.host, sandbox.imap_port, timeout=5).login("support", PASSWORD)


def test_slow_answers_and_clear_faults(sandbox: MailSandbox) -> None:
    with imap(sandbox) as client:
        sandbox.slow(0.3)
        started = time.monotonic()
        client.noop()
        assert time.monotonic() - started >= 0.3
        sandbox.inject_fault("imap", "NOOP")
        sandbox.clear_faults()
        started = time.monotonic()
        assert client.noop()[0] == "OK"
        assert time.monotonic() - started < 0.3


def test_calls_are_counted_per_protocol_command_and_reset_forgets_everything(
    sandbox: MailSandbox,
) -> None:
    with smtp(sandbox) as client:
        client.send_message(customer_mail())
        client.send_message(customer_mail())
    with imap(sandbox) as client:
        client.select("INBOX")
        client.uid("FETCH", "1:*", "(FLAGS)")
        client.uid("FETCH", "1:*", "(FLAGS)")
        validity = client.untagged_responses["UIDVALIDITY"][0]
    calls = sandbox.calls()
    assert calls["SMTP DATA"] == 2 and calls["SMTP RCPT"] == 2 and calls["SMTP AUTH"] == 1
    assert calls["IMAP UID FETCH"] == 2 and calls["IMAP LOGIN"] == 1 and calls["IMAP SELECT"] == 1
    sandbox.inject_fault("imap", "SELECT")
    sandbox.reset()
    assert sandbox.calls() == {} and sandbox.sent() == [] and sandbox.mailbox("support") == []
    with imap(sandbox) as client:
        assert client.select("INBOX") == ("OK", [b"0"])  # the fault went with the reset
        assert client.untagged_responses["UIDVALIDITY"][0] != validity
        assert client.untagged_responses["UIDNEXT"] == [b"1"]


def test_deliver_puts_mail_where_its_headers_say_and_adds_a_message_id(
    sandbox: MailSandbox,
) -> None:
    message_id = sandbox.deliver(customer_mail(to="escalations@northwind.example", message_id=None))
    assert re.fullmatch(r"<[0-9a-f]+@northwind\.example>", message_id)
    [kept] = sandbox.mailbox("escalations")
    assert kept.message_id == message_id and sandbox.mailbox("support") == []
    assert sandbox.deliver(b"Subject: bare\n\nLF only\n", to="support") != message_id
    [bare] = sandbox.mailbox("support")
    assert bare.raw.endswith(b"Subject: bare\r\n\r\nLF only\r\n")  # CRLF, as IMAP serves it
    sandbox.deliver(customer_mail(message_id="<x@c>"), to="someone@else.example")
    assert [m.message_id for m in sandbox.mailbox("someone@else.example")] == ["<x@c>"]
    assert sandbox.mailbox("never@written.example") == []
    sandbox.create_folder("support", "Archive/2025")
    assert sandbox.folders("support") == ["Archive", "Archive/2025", "INBOX"]
    assert sandbox.wait_for_sent(1, timeout=0.05) is False
    clock = MailSandbox(clock=lambda: datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC))
    clock.deliver(customer_mail())
    assert clock.mailbox("support")[0].internal_date == datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)


def test_the_policy_snippet_is_a_valid_email_config(sandbox: MailSandbox) -> None:
    snippet = sandbox.policy_snippet()
    block = snippet.split("In the policy file:\n", 1)[1].split("\n\n", 1)[0]
    config = EmailConfig.model_validate(yaml.safe_load(block)["connectors"]["email"])
    assert config.from_address == SUPPORT
    assert (config.smtp.host, config.smtp.port, config.smtp.security) == (
        "127.0.0.1",
        sandbox.smtp_port,
        "none",
    )
    assert config.imap is not None and config.imap.port == sandbox.imap_port
    assert (config.imap.username, config.imap.password.env) == ("support", "IMAP_PASSWORD")
    assert (
        f"export SMTP_PASSWORD={PASSWORD}" in snippet
        and f"export IMAP_PASSWORD={PASSWORD}" in snippet
    )
    with pytest.raises(ValueError):
        MailSandbox(users={})
    with pytest.raises(ValueError):
        MailSandbox(users={"a@b": "x"})


def test_stop_drops_idling_clients_and_frees_the_ports() -> None:
    server = MailSandbox().start()
    raw = RawImap(server)
    raw.command(b"a1", b"LOGIN support sandbox-password")
    raw.command(b"a2", b"SELECT INBOX")
    raw.send(b"a3 IDLE\r\n")
    raw.line()
    done = threading.Event()
    threading.Thread(target=lambda: (server.stop(), done.set()), daemon=True).start()
    assert done.wait(10)
    assert raw.file.readline() == b""  # the idling client is disconnected
    raw.close()
    for port in (server.smtp_port, server.imap_port):
        with pytest.raises(OSError):
            socket.create_connection((server.host, port), timeout=1).close()
    assert server.mailbox("support") == []  # still readable after stop


# --- the command line ------------------------------------------------------------------------------


def _email_sandbox_registered() -> bool:
    from escalier.plugins import get_plugin_manager

    specs = [s for found in get_plugin_manager().hook.register_connectors() for s in found]
    return any(s.name == "email" and getattr(s, "sandbox", None) is MailSandbox for s in specs)


def _serve(command: list[str]) -> tuple[subprocess.Popen[str], int, int, list[str]]:
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT
    )
    assert process.stdout is not None
    seen: list[str] = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        seen.append(line)
        found = re.search(
            r"listening on smtp://127\.0\.0\.1:(\d+) and imap://127\.0\.0\.1:(\d+)", line
        )
        if found:
            return process, int(found.group(1)), int(found.group(2)), seen
        if not line and process.poll() is not None:
            break
    process.kill()
    raise AssertionError(f"the mail sandbox did not start: {seen} {process.communicate()}")


def _finish(process: subprocess.Popen[str]) -> tuple[str, str]:
    """Wait for the process to exit; the rest of what it printed (buffered reads included)."""
    process.wait(timeout=15)
    assert process.stdout is not None and process.stderr is not None
    return process.stdout.read(), process.stderr.read()


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM])
def test_serve_prints_where_the_snippet_each_message_and_stops_cleanly(
    stop: signal.Signals,
) -> None:
    script = (
        "import sys\n"
        "from escalier.connectors.email.sandbox import MailSandbox\n"
        "sys.exit(MailSandbox().serve(out=sys.stdout))\n"
    )
    process, smtp_port, imap_port, _ = _serve([sys.executable, "-c", script])
    try:
        with smtplib.SMTP("127.0.0.1", smtp_port, timeout=5) as client:
            client.login("support", PASSWORD)
            client.send_message(customer_mail("Hello from the CLI"))
        assert process.stdout is not None
        line = process.stdout.readline()
        while line and not line.startswith("mail from"):
            line = process.stdout.readline()
        assert (
            line.startswith(f"mail from <{CUSTOMER}> to {SUPPORT}: accepted")
            and "Hello from the CLI" in line
        )
        client = imaplib.IMAP4("127.0.0.1", imap_port, timeout=5)
        client.login("support", PASSWORD)
        assert client.select("INBOX") == ("OK", [b"1"])
        client.logout()
    finally:
        process.send_signal(stop)
        out, err = _finish(process)
    assert process.returncode == 0, err
    assert "Traceback" not in err and out.rstrip().endswith("stopped")


@pytest.mark.skipif(
    not _email_sandbox_registered(),
    reason="the email ConnectorSpec does not register MailSandbox yet",
)
def test_escalier_sandbox_email_starts_on_free_ports_and_exits_cleanly_on_sigint() -> None:
    command = [
        sys.executable,
        "-m",
        "escalier",
        "sandbox",
        "email",
        "--smtp-port",
        "0",
        "--imap-port",
        "0",
    ]
    process, smtp_port, imap_port, first = _serve(command)
    try:
        assert smtp_port and imap_port and smtp_port != imap_port
        with smtplib.SMTP("127.0.0.1", smtp_port, timeout=5) as client:
            assert client.noop()[0] == 250
    finally:
        process.send_signal(signal.SIGINT)
        out, err = _finish(process)
    assert process.returncode == 0 and "Traceback" not in err, err
    out = "".join(first) + out
    assert "connectors:\n  email:\n" in out and "security: none" in out
    assert f"      port: {imap_port}\n" in out and "export IMAP_PASSWORD=" in out


@pytest.mark.skipif(
    not _email_sandbox_registered(),
    reason="the email ConnectorSpec does not register MailSandbox yet",
)
@pytest.mark.parametrize(
    "option",
    [
        ["--port", "1"],
        ["--webhook-url", "http://127.0.0.1:1/"],
        ["--webhook-secret", "s"],
        ["--deployment", "cloud"],
    ],
)
def test_escalier_sandbox_email_refuses_http_options(
    option: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    from escalier.cli import main

    assert main(["sandbox", "email", *option]) == 2
    err = capsys.readouterr().err
    assert f"the email sandbox does not take {option[0]}" in err and "--smtp-port" in err


def test_http_sandboxes_refuse_the_mail_options(capsys: pytest.CaptureFixture[str]) -> None:
    from escalier.cli import main

    assert main(["sandbox", "jira", "--smtp-port", "2525"]) == 2
    assert "the jira sandbox does not take --smtp-port; it takes --port" in capsys.readouterr().err
