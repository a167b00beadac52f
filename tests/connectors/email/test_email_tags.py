"""A mail ticket's tags as IMAP keywords on its thread's messages, against the mail sandbox and a
real dovecot: set by ``add_tags``, cleared by ``remove_tags``, found through the inbox, in the
processed folder too; left in the store alone where the server keeps no keywords; and no mail sent
for them, ever, nor twice for the mails of their batch.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from email_rig import (
    PASSWORD,
    Dovecot,
    KeywordlessProxy,
    Mailboxes,
    customer_mail,
    free_port,
    need_dovecot,
)
from escalier.connectors.email import events
from escalier.connectors.email.config import EmailConfig, ImapSettings
from escalier.connectors.email.connection import EmailConnection
from escalier.connectors.email.inbound import (
    DONE_KEYWORD,
    MAX_KEYWORD_LENGTH,
    TAG_KEYWORD_PREFIX,
    MailboxReader,
    tag_keyword,
    thread_message_ids,
)
from escalier.connectors.email.message import read_message
from escalier.connectors.email.sandbox import MailSandbox
from escalier.core.connector import ActionBatch
from escalier.core.errors import TransientError
from escalier.core.model import Action, ActionKind, Ticket
from escalier.store import create_store_engine, upgrade
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine

pytestmark = pytest.mark.timeout(90)

SANDBOX_PASSWORD = "sandbox-password"
USERS = ("support", "escalations", "alice")
SUBJECT = "Invoices cannot be exported"
ROOT = "<root@customer.example>"
# RFC 3501: atom = 1*ATOM-CHAR; ATOM-CHAR is any CHAR (7-bit) but ( ) { SP CTL % * " \ ]
ATOM = re.compile(r'[^\x00-\x20\x7f-\U0010ffff(){%*"\\\]]+')


# --- servers and the store ------------------------------------------------------------------------


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    url = f"sqlite:///{tmp_path / 'escalier.db'}"
    upgrade(url)
    found = create_store_engine(url)
    yield found
    found.dispose()


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
def mailboxes(request: pytest.FixtureRequest, sandbox: MailSandbox) -> Mailboxes:
    """The shared mailbox, on either server; the sandbox's SMTP takes what is sent either way."""
    if request.param == "sandbox":
        return Mailboxes("sandbox", sandbox.host, sandbox.imap_port, sandbox.users,
                         lambda raw, user: sandbox.deliver(raw, to=user))
    found: Dovecot = request.getfixturevalue("dovecot")
    return Mailboxes("dovecot", found.host, found.port, found.users,
                     lambda raw, user: found.append(raw, user=user))


def environ(mailboxes: Mailboxes) -> dict[str, str]:
    return {"IMAP_PASSWORD": mailboxes.passwords["support"], "SMTP_PASSWORD": SANDBOX_PASSWORD}


def config(mailboxes: Mailboxes, sandbox: MailSandbox, *, port: int | None = None, **imap) -> EmailConfig:
    return EmailConfig.model_validate({
        "from_address": "escalations@northwind.example",
        "timeout_seconds": 5,
        "smtp": {"host": sandbox.host, "port": sandbox.smtp_port, "security": "none",
                 "username": "escalations", "password": "${SMTP_PASSWORD}"},
        "imap": {"host": mailboxes.host, "port": port or mailboxes.port, "security": "none",
                 "username": "support", "password": "${IMAP_PASSWORD}", **imap},
    })


def poll(mailboxes: Mailboxes, engine: Engine, **options) -> None:
    settings_ = ImapSettings(host=mailboxes.host, port=mailboxes.port, security="none",
                             username="support", password="${IMAP_PASSWORD}")
    reader = MailboxReader(settings_, environ(mailboxes), store_engine=engine, timeout=5, **options)
    try:
        reader.poll_once()
    finally:
        reader.close()


def thread_ticket() -> Ticket:
    raw = customer_mail(message_id=ROOT, sender="Alice <alice@customer.example>", subject=SUBJECT)
    return events.ticket_from_message(read_message(raw), None, "default")


def tags(kind: ActionKind, seq: int, ticket: Ticket, *names: str) -> Action:
    return Action(kind=kind, key=f"email:default:{ticket.id}:{seq}", system="email",
                  ticket_id=ticket.id, tier=2, tags=names)


def batch(ticket: Ticket, *actions: Action, maybe: bool = False) -> ActionBatch:
    return ActionBatch("email", "default", ticket.id, actions,
                       frozenset(a.key for a in actions) if maybe else frozenset(), ticket)


def flags_by_id(mailboxes: Mailboxes, folder: str = "INBOX") -> dict[str, set[str]]:
    """Each message's flags, by its Message-ID, read over IMAP."""
    found = {}
    for flags, raw in mailboxes.messages(folder=folder):
        message_id = re.search(rb"^Message-ID: (\S+)", raw, re.MULTILINE | re.IGNORECASE)
        assert message_id is not None
        found[message_id.group(1).decode()] = flags
    return found


def deliver_thread(mailboxes: Mailboxes, ticket: Ticket) -> None:
    """The thread's first mail, a reply with the token, a reply by References alone, and a stranger."""
    mailboxes.deliver(customer_mail(message_id=ROOT, sender="Alice <alice@customer.example>",
                                    subject=SUBJECT))
    # Its Message-ID holds the root's, but it is another thread: the search must not take it.
    mailboxes.deliver(customer_mail(message_id="<xroot@customer.example>", subject="Other matter"))
    mailboxes.deliver(customer_mail(
        message_id="<reply-1@customer.example>", subject=f"Re: {SUBJECT} [{ticket.id}]",
        headers={"In-Reply-To": "<escalier.0123@northwind.example>"}))
    mailboxes.deliver(customer_mail(
        message_id="<reply-2@customer.example>", subject=f"Re: {SUBJECT}",
        headers={"In-Reply-To": ROOT, "References": ROOT}))


THREAD = {ROOT, "<reply-1@customer.example>", "<reply-2@customer.example>"}
LONG_TAG = "escalier-dept-customer-success-and-renewals-emea-north"


# --- the keyword of a tag ---------------------------------------------------------------------------


@pytest.mark.parametrize(("tag", "keyword"), [
    ("escalier-tier-2", "$Esc_escalier-tier-2"),
    ("vip", "$Esc_vip"),
    ("VIP", "$Esc__56_49_50"),
    ("needs info", "$Esc_needs_20info"),
    ("a_b", "$Esc_a_5Fb"),
    ("100%(*)", "$Esc_100_25_28_2A_29"),
    ("größe", "$Esc_gr_C3_B6_C3_9Fe"),
    ("x" * 45, "$Esc_" + "x" * 45),
    ("x" * 46, "$Esc_" + "x" * 36 + "~" + hashlib.sha256(b"x" * 46).hexdigest()[:8]),
])
def test_a_tag_maps_to_one_keyword(tag, keyword):
    assert tag_keyword(tag) == keyword
    assert ATOM.fullmatch(keyword) and len(keyword) <= MAX_KEYWORD_LENGTH


@settings(max_examples=300, deadline=None)
@given(st.text(min_size=1, max_size=80), st.text(min_size=1, max_size=80))
def test_every_tag_makes_a_valid_keyword_and_two_tags_never_share_one(first, second):
    one, other = tag_keyword(first), tag_keyword(second)
    for keyword in (one, other):
        assert keyword.startswith(TAG_KEYWORD_PREFIX)
        assert ATOM.fullmatch(keyword), keyword
        assert len(keyword) <= MAX_KEYWORD_LENGTH
        assert not keyword.startswith(DONE_KEYWORD)
    assert tag_keyword(first) == one  # the same tag, the same keyword
    if first != second:
        # Servers may compare keywords without regard to case.
        assert one.casefold() != other.casefold()


def test_a_long_keyword_never_ends_in_half_an_escape():
    for count in range(1, 40):
        keyword = tag_keyword("x" * count + "é" * 20)
        head = keyword.removeprefix(TAG_KEYWORD_PREFIX).split("~")[0]
        assert re.fullmatch(r"(?:[a-z0-9.-]|_[0-9A-F]{2})*", head), keyword


# --- the thread's messages ----------------------------------------------------------------------------


def test_the_thread_s_messages_are_found_in_the_inbox_by_token_by_root_and_by_answer(sandbox, engine):
    ticket = thread_ticket()
    mailboxes = Mailboxes("sandbox", sandbox.host, sandbox.imap_port, sandbox.users,
                          lambda raw, user: sandbox.deliver(raw, to=user))
    deliver_thread(mailboxes, ticket)
    # Answers the token-less reply-2: of the thread through what it answers.
    mailboxes.deliver(customer_mail(message_id="<reply-3@customer.example>", subject="Re: Re:",
                                    headers={"In-Reply-To": "<reply-2@customer.example>"}))
    # Another thread's token wins over what it answers, as the connector names tickets.
    mailboxes.deliver(customer_mail(message_id="<moved@customer.example>", subject="Re: [ESC-AAAAAAAAAA]",
                                    headers={"In-Reply-To": ROOT, "References": ROOT}))
    poll(mailboxes, engine)
    found = thread_message_ids(engine, instance="default", ticket_id=ticket.id, prefix="ESC")
    assert set(found) == THREAD | {"<reply-3@customer.example>"}
    assert thread_message_ids(engine, instance="other", ticket_id=ticket.id, prefix="ESC") == []
    known = thread_message_ids(engine, instance="other", ticket_id=ticket.id, prefix="ESC",
                               known=[ROOT, "<elsewhere@customer.example>"])
    assert known == [ROOT, "<elsewhere@customer.example>"]


# --- keywords set and cleared --------------------------------------------------------------------------


def test_tags_become_keywords_on_the_thread_s_messages_and_remove_tags_clears_them(mailboxes, sandbox, engine):
    ticket = thread_ticket()
    deliver_thread(mailboxes, ticket)
    poll(mailboxes, engine)
    connection = EmailConnection(config(mailboxes, sandbox), "default", environ(mailboxes), {},
                                 store_engine=engine)
    try:
        add = tags(ActionKind.ADD_TAGS, 2, ticket, "escalier-tier-2", "VIP")
        [result] = connection.apply_batch(batch(ticket, add))
        assert result.applied and result.error is None and result.calls == 1
        assert "$Esc_escalier-tier-2, $Esc__56_49_50 on 3 message(s)" in result.detail
        wanted = {"$Esc_escalier-tier-2", "$Esc__56_49_50"}
        found = flags_by_id(mailboxes)
        for message_id in THREAD:
            assert wanted <= found[message_id], (message_id, found[message_id])
            assert DONE_KEYWORD in found[message_id]  # the reader's mark stays
        assert not any(f.startswith(TAG_KEYWORD_PREFIX) for f in found["<xroot@customer.example>"])

        # Applied again (a retry after a timeout): the same flags, and still no mail.
        [again] = connection.apply_batch(batch(ticket, add, maybe=True))
        assert again.applied and again.error is None
        assert flags_by_id(mailboxes) == found

        [removed] = connection.apply_batch(batch(ticket, tags(ActionKind.REMOVE_TAGS, 3, ticket, "VIP")))
        assert removed.applied and removed.calls == 1 and "cleared from 3 message(s)" in removed.detail
        after = flags_by_id(mailboxes)
        for message_id in THREAD:
            assert "$Esc_escalier-tier-2" in after[message_id]
            assert "$Esc__56_49_50" not in after[message_id]
    finally:
        connection.close()
    assert sandbox.sent() == []


def test_keywords_follow_the_messages_into_the_processed_folder(mailboxes, sandbox, engine):
    ticket = thread_ticket()
    deliver_thread(mailboxes, ticket)
    poll(mailboxes, engine, processed_folder="Processed")
    assert mailboxes.messages() == []
    connection = EmailConnection(config(mailboxes, sandbox, processed_folder="Processed"), "default",
                                 environ(mailboxes), {}, store_engine=engine)
    try:
        # Dovecot refuses a keyword over 50 characters: the long tag's is cut to fit, with a hash.
        [result] = connection.apply_batch(batch(ticket, tags(ActionKind.ADD_TAGS, 2, ticket, "billing",
                                                             LONG_TAG)))
    finally:
        connection.close()
    assert result.applied and result.error is None and "on 3 message(s)" in result.detail
    found = flags_by_id(mailboxes, "Processed")
    assert {m for m, flags in found.items() if "$Esc_billing" in flags} == THREAD
    assert {m for m, flags in found.items() if tag_keyword(LONG_TAG) in flags} == THREAD
    assert len(tag_keyword(LONG_TAG)) == MAX_KEYWORD_LENGTH


def test_without_a_store_the_ticket_s_own_message_ids_are_tagged(mailboxes, sandbox, engine):
    ticket = thread_ticket()
    deliver_thread(mailboxes, ticket)
    # No store attached and no ESCALIER_DB: only the ids the ticket holds are known.
    connection = EmailConnection(config(mailboxes, sandbox), "default", environ(mailboxes), {})
    try:
        [result] = connection.apply_batch(batch(ticket, tags(ActionKind.ADD_TAGS, 2, ticket, "vip")))
    finally:
        connection.close()
    assert result.applied and "on 1 message(s)" in result.detail
    assert {m for m, flags in flags_by_id(mailboxes).items() if "$Esc_vip" in flags} == {ROOT}


def test_a_server_without_keywords_keeps_the_tags_in_the_store_alone(mailboxes, sandbox, engine):
    ticket = thread_ticket()
    deliver_thread(mailboxes, ticket)
    poll(mailboxes, engine)
    before = flags_by_id(mailboxes)
    proxy = KeywordlessProxy(mailboxes.host, mailboxes.port)
    connection = EmailConnection(config(mailboxes, sandbox, port=proxy.port), "default",
                                 environ(mailboxes), {}, store_engine=engine)
    try:
        [result] = connection.apply_batch(batch(ticket, tags(ActionKind.ADD_TAGS, 2, ticket, "vip")))
    finally:
        connection.close()
        proxy.close()
    assert (result.applied, result.error, result.calls) == (True, None, 0)
    assert "tags live in Escalier's store" in result.detail and "keeps no IMAP keywords" in result.detail
    assert flags_by_id(mailboxes) == before


def test_without_imap_settings_the_tags_stay_in_the_store(sandbox):
    ticket = thread_ticket()
    settings_ = EmailConfig.model_validate({
        "from_address": "escalations@northwind.example", "timeout_seconds": 5,
        "smtp": {"host": sandbox.host, "port": sandbox.smtp_port, "security": "none"},
    })
    connection = EmailConnection(settings_, "default", {}, {})
    try:
        [result] = connection.apply_batch(batch(ticket, tags(ActionKind.REMOVE_TAGS, 4, ticket, "vip")))
    finally:
        connection.close()
    assert (result.applied, result.calls) == (True, 0)
    assert "no mailbox is configured" in result.detail


def test_an_unreachable_mailbox_fails_the_tags_alone_and_their_retry_sends_no_mail_again(
        mailboxes, sandbox, engine):
    ticket = thread_ticket()
    deliver_thread(mailboxes, ticket)
    poll(mailboxes, engine)
    reply = Action(kind=ActionKind.COMMENT, key=f"email:default:{ticket.id}:5", system="email",
                   ticket_id=ticket.id, tier=2, body="We are on it.", public=True)
    add = tags(ActionKind.ADD_TAGS, 6, ticket, "vip")
    down = EmailConnection(config(mailboxes, sandbox, port=free_port()), "default", environ(mailboxes),
                           {}, store_engine=engine)
    try:
        sent, failed = down.apply_batch(batch(ticket, reply, add))
    finally:
        down.close()
    assert sent.applied and sent.error is None
    assert not failed.applied and isinstance(failed.error, TransientError)
    assert len(sandbox.sent()) == 1
    # The outbox retries the failed action alone, as possibly applied.
    up = EmailConnection(config(mailboxes, sandbox), "default", environ(mailboxes), {}, store_engine=engine)
    try:
        [retried] = up.apply_batch(batch(ticket, add, maybe=True))
    finally:
        up.close()
    assert retried.applied and retried.error is None and "on 3 message(s)" in retried.detail
    assert len(sandbox.sent()) == 1
    assert {m for m, flags in flags_by_id(mailboxes).items() if "$Esc_vip" in flags} == THREAD


def test_the_acknowledgement_a_failed_tag_action_carries_waits_for_its_retry(mailboxes, sandbox, engine):
    ticket = thread_ticket()
    deliver_thread(mailboxes, ticket)
    poll(mailboxes, engine)
    first = tags(ActionKind.ADD_TAGS, 1, ticket, "escalier-tier-1")  # the escalation's first action
    down = EmailConnection(config(mailboxes, sandbox, port=free_port()), "default", environ(mailboxes),
                           {}, store_engine=engine)
    try:
        [failed] = down.apply_batch(batch(ticket, first))
    finally:
        down.close()
    assert not failed.applied and isinstance(failed.error, TransientError)
    assert sandbox.sent() == []  # the acknowledgement went nowhere
    up = EmailConnection(config(mailboxes, sandbox), "default", environ(mailboxes), {}, store_engine=engine)
    try:
        [retried] = up.apply_batch(batch(ticket, first, maybe=True))
    finally:
        up.close()
    assert retried.applied and retried.error is None and retried.calls == 2  # one STORE, one mail
    assert "on 3 message(s)" in retried.detail and "ack mail to alice@customer.example" in retried.detail
    [ack] = sandbox.sent()
    assert list(ack.rcpt_tos) == ["alice@customer.example"] and ticket.id in ack.subject
    assert {m for m, flags in flags_by_id(mailboxes).items() if "$Esc_escalier-tier-1" in flags} == THREAD


def test_the_sandbox_keeps_keywords_as_dovecot_does(sandbox):
    """What the tags use of IMAP, answered by the sandbox as dovecot answers it."""
    sandbox.deliver(customer_mail(message_id=ROOT), to="support")
    sandbox.deliver(customer_mail(message_id="<xroot@customer.example>"), to="support")
    box = Mailboxes("sandbox", sandbox.host, sandbox.imap_port, sandbox.users, lambda raw, user: None)
    with box.imap() as client:
        client.select("INBOX")
        assert b"\\*" in client.untagged_responses["PERMANENTFLAGS"][0]
        typ, data = client.uid("SEARCH", "HEADER", "Message-ID", f'"{ROOT}"')
        assert (typ, data) == ("OK", [b"1"])
        fits = "$Esc_" + "x" * (MAX_KEYWORD_LENGTH - 5)
        typ, _ = client.uid("STORE", "1", "+FLAGS.SILENT", f"($Esc_VIP {fits})")
        assert typ == "OK"
        typ, data = client.uid("STORE", "1", "+FLAGS", f"({fits}x)")
        assert typ == "NO" and b"too long" in data[0]
        typ, _ = client.uid("STORE", "1", "-FLAGS.SILENT", "($esc_vip)")  # keywords ignore case
        assert typ == "OK"
    [first, second] = sandbox.mailbox("support")
    assert first.keywords == {fits} and second.keywords == set()
