"""Stored mail into ticket events, over tests/payloads/email/."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from escalier.connectors.email.config import EmailConfig
from escalier.connectors.email.events import (
    clean_subject,
    event_id,
    parse_delivery,
    ticket_from_message,
)
from escalier.connectors.email.message import read_message, thread_token
from escalier.core.connector import DeliverySkipped, RawEvent
from escalier.core.errors import NotFoundError, PayloadError, TransientError
from escalier.core.model import ActorRole, EventKind, StatusCategory, Ticket
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

PAYLOADS = Path(__file__).resolve().parents[2] / "payloads" / "email"
RECEIVED = datetime(2026, 3, 8, 16, 0, tzinfo=UTC)
SITE = EmailConfig.model_validate(
    {
        "from_address": "support@acme.example",
        "smtp": {"host": "127.0.0.1", "port": 2525, "security": "none"},
        "agent_domains": ["acme.example"],
        "agent_addresses": ["contractor@partner.example"],
    }
)
ROOT_TOKEN = thread_token("<CAF3x7q1@mail.customer.example>")


def raw(name: str, *, received_at: datetime = RECEIVED, instance: str = "support") -> RawEvent:
    """The corpus message ``name`` as a stored delivery."""
    return RawEvent(source="email", instance=instance, body=(PAYLOADS / name).read_bytes(), headers={},
                    received_at=received_at)


class FakeTickets:
    """A ticket store that knows some threads and records what was asked of it."""

    def __init__(self, known: set[str] | None = None, error: Exception | None = None):
        self.known = known
        self.error = error
        self.asked: list[str] = []

    def __call__(self, ticket_id: str) -> Ticket:
        self.asked.append(ticket_id)
        if self.error is not None:
            raise self.error
        if self.known is not None and ticket_id not in self.known:
            raise NotFoundError(f"no mail thread {ticket_id}", system="email", status=404)
        return Ticket(system="email", id=ticket_id, instance="support", subject="known thread",
                      created_at=datetime(2026, 3, 6, tzinfo=UTC))


# What each corpus message makes: ("created"|"commented", ticket id, actor role) or ("skip", kind).
OUTCOMES: dict[str, tuple] = {
    "first_plain.eml": ("created", ROOT_TOKEN, ActorRole.CUSTOMER),
    "alternative.eml": ("created", thread_token("<alt-0001@mail.customer.example>"), ActorRole.CUSTOMER),
    "html_only.eml": ("created", thread_token("<html-only-77@web.customer.example>"), ActorRole.CUSTOMER),
    "gb2312.eml": ("created", thread_token("<gb-2312-1@mail.customer.example.cn>"), ActorRole.CUSTOMER),
    "mislabelled_latin1.eml": ("created", thread_token("<latin-1-lies@old.customer.example>"), ActorRole.CUSTOMER),
    "utf8_labelled_latin1.eml": ("created", thread_token("<utf8-as-latin1@customer.example>"), ActorRole.CUSTOMER),
    "rfc2047_headers.eml": ("created", thread_token("<enc-words@customer.example>"), ActorRole.CUSTOMER),
    "eight_bit_headers.eml": ("created", thread_token("<raw-8bit@customer.example>"), ActorRole.CUSTOMER),
    "display_name_address.eml": ("created", thread_token("<display-is-address@customer.example>"), ActorRole.CUSTOMER),
    "attachment_small.eml": ("created", thread_token("<att-small-1@customer.example>"), ActorRole.CUSTOMER),
    "attachment_large.eml": ("created", thread_token("<att-large-1@customer.example>"), ActorRole.CUSTOMER),
    "forward_gmail.eml": ("created", thread_token("<fwd-gmail-1@mail.gmail.example>"), ActorRole.CUSTOMER),
    "forward_apple.eml": ("created", thread_token("<4F1A-APPLE-FWD@customer.example>"), ActorRole.CUSTOMER),
    "no_date.eml": ("created", thread_token("<no-date-1@customer.example>"), ActorRole.CUSTOMER),
    "future_date.eml": ("created", thread_token("<future-1@customer.example>"), ActorRole.CUSTOMER),
    "broken_boundary.eml": ("created", thread_token("<broken-boundary-1@customer.example>"), ActorRole.CUSTOMER),
    "missing_final_boundary.eml": ("created", thread_token("<no-final-boundary@customer.example>"), ActorRole.CUSTOMER),
    "reply_gmail_en.eml": ("commented", "ESC-7K2QF9XA4M", ActorRole.CUSTOMER),
    "reply_gmail_de.eml": ("commented", "ESC-ABCDE23456", ActorRole.CUSTOMER),
    "reply_gmail_fr.eml": ("commented", thread_token("<root-fr@client.example>"), ActorRole.CUSTOMER),
    "reply_es.eml": ("commented", thread_token("<root-es@cliente.example>"), ActorRole.CUSTOMER),
    "reply_zh.eml": ("commented", thread_token("<root-zh@customer.example.cn>"), ActorRole.CUSTOMER),
    "reply_outlook_en.eml": ("commented", "ESC-QWERT23456", ActorRole.CUSTOMER),
    "reply_outlook_de.eml": ("commented", thread_token("<ack-olde@acme.example>"), ActorRole.CUSTOMER),
    "reply_outlook_html.eml": ("commented", thread_token("<root-olhtml@customer.example>"), ActorRole.CUSTOMER),
    "reply_apple.eml": ("commented", "ESC-7K2QF9XA4M", ActorRole.CUSTOMER),
    "reply_thunderbird.eml": ("commented", "ESC-ZXCVB23456", ActorRole.CUSTOMER),
    "reply_gmail_html_only.eml": ("commented", "ESC-POIUY23456", ActorRole.CUSTOMER),
    "reply_inline.eml": ("commented", "ESC-LKJHG23456", ActorRole.CUSTOMER),
    "reply_no_token.eml": ("commented", thread_token("<root-no-token@customer.example>"), ActorRole.CUSTOMER),
    "reply_quoting_own.eml": ("commented", "ESC-7K2QF9XA4M", ActorRole.CUSTOMER),
    "agent_reply.eml": ("commented", thread_token("<root-no-token@customer.example>"), ActorRole.AGENT),
    "vacation_outlook.eml": ("skip", "auto_reply"),
    "vacation_de.eml": ("skip", "auto_reply"),
    "vacation_fr.eml": ("skip", "auto_reply"),
    "vacation_es_header.eml": ("skip", "auto_reply"),
    "list_mail.eml": ("skip", "auto_reply"),
    "own_mail.eml": ("skip", "own_change"),
    "own_marker.eml": ("skip", "own_change"),
    "dsn_failed.eml": ("skip", "bounce"),
    "dsn_delayed.eml": ("skip", "report"),
    "bounce_classic_qmail.eml": ("skip", "bounce"),
    "bounce_exchange.eml": ("skip", "bounce"),
    "mdn_read_receipt.eml": ("skip", "report"),
    "arf_complaint.eml": ("skip", "report"),
    "no_message_id.eml": ("created", None, ActorRole.CUSTOMER),
}


def test_every_corpus_file_has_an_outcome():
    assert {path.name for path in PAYLOADS.glob("*.eml")} == set(OUTCOMES)


@pytest.mark.parametrize("name", sorted(OUTCOMES))
def test_parses_corpus_delivery(name):
    expected = OUTCOMES[name]
    tickets = FakeTickets()
    if expected[0] == "skip":
        with pytest.raises(DeliverySkipped) as caught:
            parse_delivery(raw(name), SITE, fetch=tickets)
        assert caught.value.kind == expected[1]
        assert caught.value.reason
        assert tickets.asked == []
        return
    kind, ticket_id, role = expected
    message = read_message((PAYLOADS / name).read_bytes())
    [event] = parse_delivery(raw(name), SITE, fetch=tickets)
    assert event.system == "email" and event.instance == "support"
    assert event.kind == (EventKind.CREATED if kind == "created" else EventKind.COMMENTED)
    if ticket_id is not None:
        assert event.ticket_id == ticket_id
    assert event.actor == message.sender
    assert event.actor_role == role
    assert event.id == f"email:support:{(message.message_id or '').strip('<>')}" or message.message_id is None
    assert event.occurred_at.utcoffset() is not None
    if kind == "created":
        assert tickets.asked == []
        assert event.ticket is not None and event.ticket.id == event.ticket_id
        assert event.ticket.description == message.text
        assert event.comment is None
    else:
        assert tickets.asked == [event.ticket_id]
        assert event.ticket is not None and event.ticket.subject == "known thread"
        assert event.comment is not None
        assert event.comment.body == message.text
        assert event.comment.public is True
        assert event.comment.author == message.sender
        assert event.comment.author_role == role


def test_a_reply_without_fetch_has_no_ticket():
    [event] = parse_delivery(raw("reply_gmail_en.eml"), SITE)
    assert event.kind == EventKind.COMMENTED
    assert event.ticket is None
    assert event.comment.body == "It is still burning. Please send someone."
    assert event.id == "email:support:CAGmail-reply-1@mail.gmail.example"
    assert event.occurred_at == datetime(2026, 3, 7, 9, 30, tzinfo=timezone(timedelta(hours=1)))


def test_a_reply_to_a_thread_nobody_knows_opens_the_ticket():
    tickets = FakeTickets(known=set())
    [event] = parse_delivery(raw("reply_no_token.eml"), SITE, fetch=tickets)
    assert tickets.asked == [thread_token("<root-no-token@customer.example>")]
    assert event.kind == EventKind.CREATED
    assert event.ticket.id == event.ticket_id == tickets.asked[0]
    assert event.ticket.subject == "Password reset mail never arrives"


def test_other_fetch_errors_pass_through():
    with pytest.raises(TransientError):
        parse_delivery(raw("reply_no_token.eml"), SITE, fetch=FakeTickets(error=TransientError("slow")))


def test_the_first_message_makes_the_ticket():
    [event] = parse_delivery(raw("first_plain.eml"), SITE, fetch=FakeTickets())
    ticket = event.ticket
    assert event.id == "email:support:CAF3x7q1@mail.customer.example"
    assert ticket.system == "email" and ticket.instance == "support"
    assert ticket.id == ROOT_TOKEN
    assert ticket.subject == "Printer on fire"
    assert ticket.status == "open" and ticket.status_category == StatusCategory.OPEN
    assert ticket.priority == "high"
    assert ticket.requester == "maria.lopez@customer.example"
    assert ticket.created_at == event.occurred_at == datetime(2026, 3, 6, 16, 50, tzinfo=timezone(timedelta(hours=1)))
    assert ticket.description.startswith("Hello,\n\nthe printer on floor 3 is on fire again.")
    assert "Customer Corp" not in ticket.description
    assert ticket.fields == {
        "message_id": "<CAF3x7q1@mail.customer.example>",
        "references": ["<CAF3x7q1@mail.customer.example>"],
        "reply_to": "maria.lopez@customer.example",
        "to": ["support@acme.example"],
        "cc": ["ops@customer.example", "sam.lee@customer.example"],
        "attachments": [],
        "thread_subject": "Printer on fire",
    }


def test_ticket_from_a_reply_keeps_every_id_and_strips_prefixes_and_token():
    message = read_message((PAYLOADS / "reply_gmail_en.eml").read_bytes())
    ticket = ticket_from_message(message, SITE, "support")
    assert ticket.id == "ESC-7K2QF9XA4M"
    assert ticket.subject == "Printer on fire"
    assert ticket.fields["references"] == [
        "<CAF3x7q1@mail.customer.example>", "<ack-ESC-1@acme.example>", "<CAGmail-reply-1@mail.gmail.example>"
    ]
    assert ticket.fields["thread_subject"] == "Re: Printer on fire [ESC-7K2QF9XA4M]"
    assert ticket.priority is None


def test_ticket_requester_is_the_reply_to_address_and_attachments_are_listed():
    message = read_message((PAYLOADS / "display_name_address.eml").read_bytes())
    ticket = ticket_from_message(message, None, "default")
    assert ticket.requester == ticket.fields["reply_to"] == "billing@customer.example"
    assert ticket.priority == "high"
    message = read_message((PAYLOADS / "attachment_small.eml").read_bytes())
    assert ticket_from_message(message, SITE, "support").fields["attachments"] == [
        {"filename": "Rechnung März.pdf", "content_type": "application/pdf", "size": 2064},
        {"filename": None, "content_type": "image/png", "size": 8},
    ]
    message = read_message((PAYLOADS / "alternative.eml").read_bytes())
    assert ticket_from_message(message, SITE, "support").priority == "low"


def test_ticket_without_any_date_is_refused():
    message = read_message((PAYLOADS / "no_date.eml").read_bytes())
    with pytest.raises(PayloadError, match="no Date"):
        ticket_from_message(message, SITE, "support")
    assert ticket_from_message(message, SITE, "support", received_at=RECEIVED).created_at == RECEIVED


@pytest.mark.parametrize(
    ("subject", "expected"),
    [
        ("Re: AW: WG: Fwd: Printer on fire [ESC-7K2QF9XA4M]", "Printer on fire"),
        ("RE[2]: FW: Printer", "Printer"),
        ("Re:Re:  [esc-7k2qf9xa4m]  Printer  on fire", "Printer on fire"),
        ("回复: 打印机坏了", "打印机坏了"),
        ("Recall of the product", "Recall of the product"),
        ("[ACME-7K2QF9XA4M] Printer", "[ACME-7K2QF9XA4M] Printer"),
    ],
)
def test_clean_subject(subject, expected):
    assert clean_subject(subject) == expected


def test_dates_fall_back_to_the_time_received():
    [event] = parse_delivery(raw("no_date.eml"), SITE)
    assert event.occurred_at == RECEIVED
    assert event.ticket.created_at == RECEIVED
    [event] = parse_delivery(raw("future_date.eml"), SITE)
    assert event.occurred_at == RECEIVED  # 2037 is more than a day ahead
    [event] = parse_delivery(raw("future_date.eml", received_at=datetime(2036, 12, 31, 12, 0, tzinfo=UTC)), SITE)
    assert event.occurred_at == datetime(2037, 1, 1, tzinfo=UTC)  # within a day: a clock a bit ahead
    [event] = parse_delivery(raw("no_date.eml", received_at=datetime(2026, 3, 8, 16, 0)), SITE)
    assert event.occurred_at == RECEIVED  # a naive receipt time is UTC


def test_a_message_without_message_id_gets_a_stable_event_id():
    first = parse_delivery(raw("no_message_id.eml"), SITE)[0]
    again = parse_delivery(raw("no_message_id.eml", received_at=RECEIVED + timedelta(hours=1)), SITE)[0]
    assert first.id == again.id
    assert first.id.startswith("email:support:") and first.id.endswith("@escalier.invalid")
    assert first.ticket_id == again.ticket_id
    assert event_id("support", "<abc@host>") == "email:support:abc@host"


def test_bounces_name_the_failed_addresses():
    with pytest.raises(DeliverySkipped) as caught:
        parse_delivery(raw("dsn_failed.eml"), SITE)
    assert "gone@customer.example" in caught.value.reason
    assert "full.box@other.example" in caught.value.reason
    with pytest.raises(DeliverySkipped) as caught:
        parse_delivery(raw("bounce_classic_qmail.eml"), None)
    assert caught.value.kind == "bounce" and "old.user@customer.example" in caught.value.reason


def test_own_mail_is_recognised_by_address_and_skipped_before_the_auto_reply_check():
    with pytest.raises(DeliverySkipped) as caught:
        parse_delivery(raw("own_mail.eml"), SITE)
    assert caught.value.kind == "own_change"
    # without a site our address is unknown: our auto-replied mail is still never answered
    with pytest.raises(DeliverySkipped) as caught:
        parse_delivery(raw("own_mail.eml"), None)
    assert caught.value.kind == "auto_reply"


def test_roles_follow_the_site_agent_lists():
    assert parse_delivery(raw("agent_reply.eml"), None)[0].actor_role == ActorRole.CUSTOMER
    site = SITE.model_copy(update={"agent_domains": [], "agent_addresses": ["DANA@acme.example"]})
    assert parse_delivery(raw("agent_reply.eml"), site)[0].actor_role == ActorRole.AGENT
    site = SITE.model_copy(update={"agent_domains": ["example"], "agent_addresses": []})
    assert parse_delivery(raw("agent_reply.eml"), site)[0].actor_role == ActorRole.AGENT


def test_token_prefix_comes_from_the_site():
    site = SITE.model_copy(update={"token_prefix": "ACME"})
    [event] = parse_delivery(raw("first_plain.eml"), site)
    assert event.ticket_id == thread_token("<CAF3x7q1@mail.customer.example>", "ACME")
    assert event.ticket_id.startswith("ACME-")
    # an ESC token is not ours under this prefix: the thread's root decides
    [event] = parse_delivery(raw("reply_gmail_en.eml"), site)
    assert event.ticket_id == thread_token("<CAF3x7q1@mail.customer.example>", "ACME")


def test_config_validates_the_new_fields():
    base = {"from_address": "support@acme.example", "smtp": {"host": "localhost"}}
    config = EmailConfig.model_validate(base)
    assert config.token_prefix == "ESC" and config.max_attachment_bytes == 10 * 2**20
    assert config.agent_addresses == [] and config.agent_domains == []
    for bad in ({"token_prefix": "E-S"}, {"agent_addresses": ["nobody"]}, {"agent_domains": ["a@b.c"]},
                {"max_attachment_bytes": -1}):
        with pytest.raises(ValidationError):
            EmailConfig.model_validate({**base, **bad})


def test_not_mail_is_a_payload_error():
    for body in (b"", b"{\"json\": true}", b"\xff\xfe\x00garbage"):
        with pytest.raises(PayloadError):
            parse_delivery(RawEvent(source="email", instance="x", body=body, headers={}, received_at=RECEIVED), SITE)


SEEDS = [path.read_bytes() for path in sorted(PAYLOADS.glob("*.eml"))]


@settings(max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(range(len(SEEDS))), st.integers(min_value=0, max_value=2**32), st.binary(max_size=40))
def test_parse_delivery_is_total(index, seed, noise):
    rng = random.Random(seed)
    data = bytearray(SEEDS[index])
    for _ in range(rng.randint(1, 8)):
        at = rng.randrange(len(data) + 1)
        if rng.random() < 0.5:
            del data[at:at + rng.randint(1, 80)]
        else:
            data[at:at] = noise
    delivery = RawEvent(source="email", instance="fuzz", body=bytes(data), headers={}, received_at=RECEIVED)
    try:
        events = parse_delivery(delivery, SITE, fetch=FakeTickets(known={"ESC-7K2QF9XA4M"}))
    except (PayloadError, DeliverySkipped):
        return
    assert len(events) == 1
    assert events[0].id.startswith("email:fuzz:")
    assert events[0].kind in (EventKind.CREATED, EventKind.COMMENTED)
