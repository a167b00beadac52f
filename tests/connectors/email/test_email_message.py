"""Reading real-shaped mail into MailMessage, over tests/payloads/email/."""

from __future__ import annotations

import random
import re
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from escalier.connectors.email.message import (
    Attachment,
    MailMessage,
    find_token,
    html_to_text,
    is_own,
    message_id_of,
    read_message,
    strip_quoted,
    subject_with_token,
    thread_of,
    thread_token,
)
from escalier.core.errors import PayloadError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

PAYLOADS = Path(__file__).resolve().parents[2] / "payloads" / "email"
CORPUS = sorted(PAYLOADS.glob("*.eml"))
TOKEN = re.compile(r"^ESC-[A-Z2-7]{10}$")
ANY_TOKEN = re.compile(r"^ESC-[A-Z0-9]{4,32}$")


def read(name: str, **options) -> MailMessage:
    """The corpus message ``name`` read."""
    return read_message((PAYLOADS / name).read_bytes(), **options)


# Each row: the file, then what reading it must give. "text" is the whole new text; "text_has" and
# "text_lacks" are fragments the new text must and must not contain.
EXPECTED: dict[str, dict] = {
    "first_plain.eml": {
        "kind": "message", "sender": "maria.lopez@customer.example", "sender_name": "Maria Lopez",
        "message_id": "<CAF3x7q1@mail.customer.example>", "in_reply_to": None, "references": (),
        "to": ("support@acme.example",), "cc": ("ops@customer.example", "sam.lee@customer.example"),
        "date": datetime(2026, 3, 6, 16, 50, tzinfo=timezone(timedelta(hours=1))), "importance": "high",
        "subject": "Printer on fire", "token": None,
        "text": "Hello,\n\nthe printer on floor 3 is on fire again. Production is down for 40 users.\n\nThanks,\nMaria",
        "full_has": ["Maria Lopez | Customer Corp"],
    },
    "alternative.eml": {
        "kind": "message", "importance": "low", "text": "The VPN drops every hour at :05.\nClient version 4.2.",
    },
    "html_only.eml": {
        "kind": "message", "text_has": ["Hi team,", "March: 1 200€", 'Café & co. says "fix it".'],
        "text_lacks": ["var x", "color: red", "<p>", "mail\n"],
    },
    "gb2312.eml": {
        "kind": "message", "subject": "打印机坏了", "sender_name": "王小明", "text": "您好，\n打印机坏了，请尽快处理。\n谢谢",
    },
    "mislabelled_latin1.eml": {
        "subject": "Grüße aus Köln", "sender_name": "Jürgen Müller",
        "text": "Grüße aus Köln, der Drucker läuft nicht.\nCafé geschlossen.",
    },
    "utf8_labelled_latin1.eml": {"text": "Le problème est réglé? Non, toujours cassé."},
    "rfc2047_headers.eml": {
        "subject": "Réunion annulée 日本語の件名", "sender_name": "López, María",
        "sender": "maria.lopez@customer.example", "to": ("support@acme.example",),
        "reply_to": "tickets@customer.example",
    },
    "eight_bit_headers.eml": {"sender_name": "Zoë Ångström", "subject": "Ünïcödé without encoding"},
    "display_name_address.eml": {
        "sender": "intern@customer.example", "sender_name": "ceo@customer.example",
        "reply_to": "billing@customer.example", "to": ("support@acme.example",), "importance": "high",
    },
    "attachment_small.eml": {
        "text": "Please find the invoice attached.",
        "attachments": (
            Attachment(filename="Rechnung März.pdf", content_type="application/pdf", size=2064),
            Attachment(filename=None, content_type="image/png", size=8),
        ),
    },
    "forward_gmail.eml": {
        "text_has": ["FYI, see below.", "---------- Forwarded message ---------",
                  "From: Shop Monitor <monitor@customer.example>", "Checkout returned 503",
                  "> Is checkout down?"],
    },
    "forward_apple.eml": {
        "text_has": ["Can you renew this?", "Begin forwarded message:", "expires on 14 March"],
    },
    "reply_gmail_en.eml": {
        "text": "It is still burning. Please send someone.", "token": "ESC-7K2QF9XA4M",
        "in_reply_to": "<ack-ESC-1@acme.example>",
        "references": ("<CAF3x7q1@mail.customer.example>", "<ack-ESC-1@acme.example>"),
    },
    "reply_gmail_de.eml": {"text": "Der Drucker funktioniert immer noch nicht. Bitte rückrufen."},
    "reply_gmail_fr.eml": {"text": "Toujours en panne ce matin.", "sender_name": "Amélie Durand"},
    "reply_es.eml": {"text": "El pedido 5521 sigue sin llegar."},
    "reply_zh.eml": {"text": "还是不行。", "subject": "回复: 打印机坏了"},
    "reply_outlook_en.eml": {
        "text": "The backup failed again last night with error 0x80070005.\n\nRegards,\nRobert",
        "token": "ESC-QWERT23456",
    },
    "reply_outlook_de.eml": {
        "text_has": ["der Zugang ist weiterhin gesperrt. Bitte dringend prüfen.", "Mit freundlichen Grüßen"],
        "text_lacks": ["Ursprüngliche", "Wir haben Ihre Anfrage"],
    },
    "reply_outlook_html.eml": {
        "text": "La fattura n. 1234 riporta ancora l'importo sbagliato.",
        "full_has": ["Abbiamo ricevuto la sua richiesta."],
    },
    "reply_apple.eml": {"text": "The fire is out. Thank you!", "full_has": ["A technician is on the way."]},
    "reply_thunderbird.eml": {"text": "Still slow: 30 seconds per message. Logs attached\nnext time."},
    "reply_gmail_html_only.eml": {"text": "Continua bloqueado.\n\nAna", "full_has": ["> Recebemos o seu pedido."]},
    "reply_inline.eml": {"text": "Version 7.1.\n\nAbout 200."},
    "reply_no_token.eml": {"text": "Still nothing in my inbox.", "token": None},
    "reply_quoting_own.eml": {"text": "Thanks, and the scanner too please."},
    "agent_reply.eml": {"kind": "message", "sender": "dana@acme.example"},
    "vacation_outlook.eml": {"kind": "auto_reply", "auto_submitted": "auto-generated"},
    "vacation_de.eml": {"kind": "auto_reply", "auto_submitted": None},
    "vacation_fr.eml": {"kind": "auto_reply", "subject": "Réponse automatique : Imprimante en panne"},
    "vacation_es_header.eml": {"kind": "auto_reply"},
    "list_mail.eml": {"kind": "auto_reply"},
    "own_mail.eml": {"kind": "auto_reply", "auto_submitted": "auto-replied"},
    "own_marker.eml": {"kind": "message"},
    "dsn_failed.eml": {
        "kind": "bounce", "bounced": ("gone@customer.example", "full.box@other.example"),
        "auto_submitted": "auto-replied",
    },
    "dsn_delayed.eml": {"kind": "report", "bounced": ()},
    "bounce_classic_qmail.eml": {"kind": "bounce", "bounced": ("old.user@customer.example",)},
    "bounce_exchange.eml": {"kind": "bounce", "bounced": ("left.company@customer.example",)},
    "mdn_read_receipt.eml": {"kind": "report"},
    "arf_complaint.eml": {"kind": "report"},
    "no_message_id.eml": {"kind": "message", "message_id": None, "text": "No Message-ID header here."},
    "no_date.eml": {"kind": "message", "date": None},
    "future_date.eml": {"date": datetime(2037, 1, 1, tzinfo=UTC)},
    "broken_boundary.eml": {"text": "The boundary in the header is not the one used."},
    "missing_final_boundary.eml": {"text": "The end of this mail was lost in transit."},
    "attachment_large.eml": {"text_has": ["Crash dump and the server log are attached."]},
}


def test_the_corpus_is_large_and_every_file_has_expectations():
    names = {path.name for path in CORPUS}
    assert len(names) >= 30
    assert names == set(EXPECTED), names ^ set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_reads_corpus_message(name):
    message = read(name)
    expected = dict(EXPECTED[name])
    for fragment in expected.pop("text_has", []):
        assert fragment in message.text, (fragment, message.text)
    for fragment in expected.pop("text_lacks", []):
        assert fragment not in message.text, (fragment, message.text)
    for fragment in expected.pop("full_has", []):
        assert fragment in message.full_text, (fragment, message.full_text)
    for field, value in expected.items():
        assert getattr(message, field) == value, (field, getattr(message, field))
    assert message.kind in ("message", "auto_reply", "bounce", "report")
    assert message.date is None or message.date.utcoffset() is not None
    assert len(message.text) <= len(message.full_text)


def test_kind_is_message_unless_the_table_says_otherwise():
    for name, expected in EXPECTED.items():
        if "kind" not in expected:
            assert read(name).kind == "message", name


def test_large_parts_are_measured_not_decoded():
    message = read("attachment_large.eml", max_attachment_bytes=50_000)
    by_type = {a.content_type: a for a in message.attachments}
    assert by_type["application/octet-stream"] == Attachment("core.dmp", "application/octet-stream", 150_000)
    # the 96 000-byte log part is above the limit: counted as an attachment, its text not read
    assert by_type["text/plain"].size == 96_000
    assert "log line" not in message.full_text
    assert message.text == "Crash dump and the server log are attached."
    # under the default limit the log is text
    assert "log line 0123456789" in read("attachment_large.eml").full_text


def test_thread_token_is_stable_short_and_case_insensitive():
    token = thread_token("<CAF3x7q1@mail.customer.example>")
    assert TOKEN.match(token)
    assert token == thread_token("CAF3x7q1@mail.customer.example")
    assert token == thread_token("  <CAF3x7q1@mail.customer.example> ")
    assert token != thread_token("<CAF3x7q2@mail.customer.example>")
    assert thread_token("<a@b>", "acme").startswith("ACME-")
    assert find_token(f"Re: x [{token.lower()}]") == token


def test_thread_of_prefers_the_subject_token_then_the_root():
    assert thread_of(read("reply_gmail_en.eml")) == "ESC-7K2QF9XA4M"
    # no token: the first of References is the root
    assert thread_of(read("reply_no_token.eml")) == thread_token("<root-no-token@customer.example>")
    assert thread_of(read("agent_reply.eml")) == thread_token("<root-no-token@customer.example>")
    # only In-Reply-To
    assert thread_of(read("reply_outlook_de.eml")) == thread_token("<ack-olde@acme.example>")
    # a first message is its own root
    first = read("first_plain.eml")
    assert thread_of(first) == thread_token("<CAF3x7q1@mail.customer.example>")
    # a token of another prefix is not ours
    assert thread_of(read("reply_gmail_en.eml"), "ACME") == thread_token(
        "<CAF3x7q1@mail.customer.example>", "ACME"
    )


def test_a_message_without_message_id_gets_a_stable_derived_one():
    data = (PAYLOADS / "no_message_id.eml").read_bytes()
    first, again = read_message(data), read_message(data)
    assert first.message_id is None
    derived = message_id_of(first)
    assert derived == message_id_of(again)
    assert re.fullmatch(r"<[0-9a-f]{32}@escalier\.invalid>", derived)
    assert thread_of(first) == thread_token(derived)
    other = read_message(data.replace(b"No Message-ID", b"Still no Message-ID"))
    assert message_id_of(other) != derived
    assert message_id_of(read("first_plain.eml")) == "<CAF3x7q1@mail.customer.example>"


@pytest.mark.parametrize(
    ("subject", "expected"),
    [
        ("Printer on fire", "Printer on fire [ESC-7K2QF9XA4M]"),
        ("Re: Printer on fire [ESC-7K2QF9XA4M]", "Re: Printer on fire [ESC-7K2QF9XA4M]"),
        ("Re: Printer on fire [esc-7k2qf9xa4m]", "Re: Printer on fire [esc-7k2qf9xa4m]"),
        ("  Re:   Printer\ton fire ", "Re: Printer on fire [ESC-7K2QF9XA4M]"),
        ("", "[ESC-7K2QF9XA4M]"),
    ],
)
def test_subject_with_token_is_idempotent(subject, expected):
    once = subject_with_token(subject, "ESC-7K2QF9XA4M")
    assert once == expected
    assert subject_with_token(once, "ESC-7K2QF9XA4M") == once


def test_is_own_by_address_or_marker_in_new_text_only():
    assert is_own(read("own_mail.eml"), "support@acme.example")  # case differs
    assert not is_own(read("own_mail.eml"), "helpdesk@acme.example")
    assert is_own(read("own_marker.eml"), "support@acme.example")
    assert is_own(read("own_marker.eml"), "")
    # the customer quotes our marked mail: the quote is history, not new text
    assert not is_own(read("reply_quoting_own.eml"), "support@acme.example")
    assert not is_own(read("first_plain.eml"), "support@acme.example")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Hi\n\nOn Mon, 2 Mar 2026 at 10:00, Bob <b@x.example> wrote:\n> old", "Hi"),
        ("Hi\n\nOp ma 2 mrt. 2026 om 10:00 schreef Bob <b@x.example>:\n> oud", "Hi"),
        ("Hi\n\nDen mån 2 mars 2026 kl 10:00 skrev Bob <b@x.example>:\n> gammal", "Hi"),
        ("Hi\n\nIl giorno lun 2 mar 2026 alle ore 10:00 Bob <b@x.example> ha scritto:\n> vecchio", "Hi"),
        ("Hi\n\nпн, 2 мар. 2026 г. в 10:00, Bob <b@x.example>:\n> старое", "Hi"),
        ("Hi\n\n-----Original Message-----\nFrom: Bob\nSent: Monday\nTo: Us\n\nold", "Hi"),
        ("Hi\n\n----- Mensaje original -----\nDe: Bob\n\nold", "Hi"),
        ("Hi\n\nDe : Bob <b@x.example>\nEnvoyé : lundi 2 mars 2026 10:00\nÀ : Nous\nObjet : vieux\n\nold", "Hi"),
        ("Hi\n-- \nBob\nPhone 1", "Hi"),
        ("Hi\n\nSent from my iPhone", "Hi"),
        ("Hi\n> quoted\n> more", "Hi"),
        ("My colleague wrote to you yesterday.\nFrom: our side, nothing changed.", None),
        ("Bob wrote:\n> quoted", ""),
    ],
)
def test_strip_quoted_many_clients(text, expected):
    assert strip_quoted(text) == (text if expected is None else expected)


def test_strip_quoted_keeps_forwards():
    text = "See below\n-- \nBob\n\n---------- Forwarded message ---------\nFrom: X <x@y.example>\n\nbody"
    assert strip_quoted(text) == text.replace("-- \n", "--\n")  # trailing spaces are trimmed
    assert strip_quoted("note\n\nFrom: X\nSent: today\nTo: me\n\nold", forward=True).endswith("old")


def test_html_to_text_quotes_blockquotes_and_skips_scripts():
    html = (
        "<html><head><style>x{}</style></head><body><p>New&nbsp;text</p><script>alert(1)</script>"
        "<blockquote type='cite'><div>old line</div><blockquote>older</blockquote></blockquote>"
        "<pre>  keep   spaces</pre></body></html>"
    )
    assert html_to_text(html) == "New text\n\n> old line\n> > older\n\nkeep   spaces"
    assert html_to_text("<p>unclosed <b>tags <![weird").startswith("unclosed tags")


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "empty"),
        (b"  \r\n\t ", "empty"),
        (b"\x00\x01\x02 binary junk without headers", "no mail header"),
        (b"just a line of text\nand another\n", "no mail header"),
        ("not bytes", "not bytes"),
    ],
)
def test_unusable_data_is_a_payload_error(data, reason):
    with pytest.raises(PayloadError, match=reason):
        read_message(data)


def test_headers_only_and_odd_headers_are_read_liberally():
    message = read_message(
        b"From: \"Broken <quote\" <x@y.example>\nSubject: =?unknown-charset?Q?caf=E9?= =?utf-8?B?!!!?=\n"
        b"Date: Mon, 99 Foo 2026 99:99:99 +9999\nMessage-ID: no-brackets@host.example\n"
        b"References: <a@b> junk <c@d>\nContent-Type: multipart/mixed\n\nbody without boundary\n"
    )
    assert message.sender == "x@y.example"
    assert message.date is None
    assert message.message_id == "<no-brackets@host.example>"
    assert message.references == ("<a@b>", "<c@d>")
    assert "caf" in message.subject
    assert message.text == "body without boundary"


def test_a_crlf_and_a_bare_lf_message_read_the_same():
    data = (PAYLOADS / "reply_gmail_en.eml").read_bytes()
    assert read_message(data) == read_message(data.replace(b"\r\n", b"\n"))


def test_deeply_nested_multiparts_are_read_or_refused_cleanly():
    depth = 400
    head = b"From: a@b.example\nSubject: nest\nMIME-Version: 1.0\n"
    parts = b"".join(f'Content-Type: multipart/mixed; boundary="b{i}"\n\n--b{i}\n'.encode() for i in range(depth))
    data = head + parts + b"Content-Type: text/plain\n\ndeep\n"
    try:
        message = read_message(data)
    except PayloadError as exc:
        assert "nest" in str(exc)
    else:
        assert message.sender == "a@b.example"


# --- fuzzing -----------------------------------------------------------------------------------


SEEDS = [path.read_bytes() for path in CORPUS]


def _mutate(data: bytes, seed: int) -> bytes:
    rng = random.Random(seed)
    out = bytearray(data)
    for _ in range(rng.randint(1, 12)):
        op = rng.randrange(6)
        at = rng.randrange(len(out) + 1)
        if op == 0 and out:
            del out[at:at + rng.randint(1, 200)]
        elif op == 1:
            out[at:at] = rng.choice([b"\r\n", b"\n--", b"=?utf-8?B?", b"?=", b"\xff\xfe", b"<", b">", b":",
                                     b"\nContent-Type: multipart/mixed; boundary=x\n", b"\n\n", b"\x00",
                                     b"=\r\n", b"charset=gb2312", b"\tfolded"])
        elif op == 2 and out:
            out[min(at, len(out) - 1)] = rng.randrange(256)
        elif op == 3:
            out = out[:at]
        elif op == 4 and out:
            piece = out[rng.randrange(len(out)):][:300]
            out[at:at] = piece
        else:
            out = out.replace(b"boundary=", b"boundary=X", 1)
    return bytes(out)


@settings(max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=3000))
def test_random_bytes_are_read_or_refused(data):
    try:
        message = read_message(data)
    except PayloadError as exc:
        assert str(exc)
        return
    assert isinstance(message, MailMessage)
    assert ANY_TOKEN.match(thread_of(message))


@settings(max_examples=400, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(range(len(SEEDS))), st.integers(min_value=0, max_value=2**32))
def test_mutated_real_shaped_messages_are_read_or_refused(index, seed):
    data = _mutate(SEEDS[index], seed)
    try:
        message = read_message(data, max_attachment_bytes=4096)
    except PayloadError as exc:
        assert str(exc)
        return
    assert message.kind in ("message", "auto_reply", "bounce", "report")
    assert all(a.size >= 0 for a in message.attachments)
    assert message.date is None or message.date.utcoffset() is not None
    assert ANY_TOKEN.match(thread_of(message))
    subject_with_token(message.subject, thread_of(message))
    is_own(message, "support@acme.example")
