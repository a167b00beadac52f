"""Reading real mail into a :class:`MailMessage`, and threading it without a store.

Everything here is a pure function of its inputs: no I/O, no clock, no logging. Mail is the most
hostile input there is, so :func:`read_message` reads liberally and refuses only data that is not
mail at all (:class:`~escalier.core.errors.PayloadError`, one sentence):

- the structure comes from the standard library's parser with the ``compat32`` policy, which never
  raises on a broken header; header values are decoded here (RFC 2047 encoded words, raw 8-bit
  text, folded lines), and addresses are read the way mail clients show them: the angle-bracketed
  address wins over a display name that is itself an address;
- a multipart whose declared boundary never occurs is read again with the boundary its body uses;
- text is decoded with its declared charset, falling back through UTF-8 and Windows-1252 when the
  label lies (GB2312 is read as its superset GB18030); HTML becomes text, with ``<blockquote>``
  lines quoted (``> ``) so that quoted history is found in HTML-only mail as in plain text;
- attachments are metadata only: their size is measured from the encoded payload, never decoded;
  a text part larger than ``max_attachment_bytes`` is not decoded either and counts as one;
- ``text`` is the new text of a message: quoted history ("On ... wrote:" in many languages,
  Outlook's "-----Original Message-----" and "From: ... Sent: ..." blocks, ``>`` lines) and the
  signature are cut; a forwarded message is new content and is kept whole;
- ``kind`` says what the message is: a person's ``message``, an ``auto_reply`` (RFC 3834
  ``Auto-Submitted``, ``Precedence``, Exchange's ``X-Auto-Response-Suppress``, list mail, vacation
  subjects), a ``bounce`` (an RFC 3464 DSN with a failed recipient, or a classic bounce from
  MAILER-DAEMON or postmaster) or a ``report`` (a delayed DSN, an MDN read receipt, an ARF
  complaint).

Message ids keep their angle brackets (``<id@host>``), ready for ``In-Reply-To`` and
``References``. A thread's ticket id is stateless: the ``[ESC-XXXXXXXXXX]`` token of its subject,
else :func:`thread_token` of the thread's root message id.
"""

from __future__ import annotations

import base64
import binascii
import codecs
import hashlib
import quopri
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from email import message_from_bytes
from email.message import Message
from email.policy import compat32
from email.utils import collapse_rfc2231_value, parsedate_tz
from html.parser import HTMLParser

from escalier.core.errors import PayloadError
from escalier.core.extensions import OwnIdentity

__all__ = [
    "Attachment",
    "MailMessage",
    "find_token",
    "html_to_text",
    "is_own",
    "message_id_of",
    "read_message",
    "strip_quoted",
    "subject_with_token",
    "thread_of",
    "thread_token",
]

_MAX_TEXT = 1_000_000
_MAX_PARTS = 500
_MAX_DEPTH = 30
_MAX_IDS = 100
_MAX_HEADER = 50_000  # References of a long thread run to a few kilobytes
_MAX_HEADER_TEXT = 10_000
_MAX_SCANNED_LINES = 10_000  # quoted history is looked for in the first lines only
_TOKEN_CHARS = 10
_DERIVED_DOMAIN = "escalier.invalid"
_BODY_TYPES = ("text/plain", "text/html", "text/enriched")


@dataclass(frozen=True)
class Attachment:
    """One attached part, as metadata: its name, media type and decoded size in bytes."""

    filename: str | None
    content_type: str
    size: int


@dataclass(frozen=True)
class MailMessage:
    """One mail as Escalier reads it; ids keep their angle brackets, addresses are bare."""

    message_id: str | None
    in_reply_to: str | None
    references: tuple[str, ...]
    subject: str
    token: str | None
    sender: str | None
    sender_name: str | None
    reply_to: str | None
    to: tuple[str, ...]
    cc: tuple[str, ...]
    date: datetime | None
    text: str
    full_text: str
    attachments: tuple[Attachment, ...]
    kind: str
    bounced: tuple[str, ...]
    importance: str | None
    auto_submitted: str | None


# --- public functions ------------------------------------------------------------------------


def read_message(data: bytes, *, max_attachment_bytes: int = 10 * 2**20) -> MailMessage:
    """Read one RFC 5322 message, liberally.

    :raises PayloadError: when the data is empty, not bytes, or carries no mail header at all.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise PayloadError("the mail is not bytes")
    data = bytes(data)
    if not data.strip():
        raise PayloadError("the mail is empty")
    try:
        msg = message_from_bytes(_trim_leading_blank_lines(data), policy=compat32)
        return _Reader(msg, max(0, int(max_attachment_bytes))).read()
    except RecursionError as exc:
        raise PayloadError("the mail nests its parts too deeply to be read") from exc


def thread_token(root_message_id: str, prefix: str = "ESC") -> str:
    """A thread's ticket token: ``PREFIX-`` and ten base32 characters of a hash of its root id."""
    key = _bare_id(root_message_id) if isinstance(root_message_id, str) else ""
    digest = hashlib.sha256(key.encode("utf-8", "replace")).digest()
    return f"{_prefix(prefix)}-{base64.b32encode(digest).decode('ascii')[:_TOKEN_CHARS]}"


def thread_of(message: MailMessage, prefix: str = "ESC") -> str:
    """A message's ticket id: its subject's token, else the token of its thread's root."""
    found = find_token(message.subject, prefix)
    if found is not None:
        return found
    root = (
        (message.references[0] if message.references else None)
        or message.in_reply_to
        or message_id_of(message)
    )
    return thread_token(root, prefix)


def message_id_of(message: MailMessage) -> str:
    """The message's Message-ID, or one derived from its content (stable) when it has none."""
    if message.message_id:
        return message.message_id
    digest = hashlib.sha256()
    for part in (
        message.date.isoformat() if message.date else "",
        message.sender or "",
        " ".join(message.to),
        message.subject,
        message.full_text,
        " ".join(f"{a.filename}:{a.content_type}:{a.size}" for a in message.attachments),
    ):
        digest.update(part.encode("utf-8", "replace"))
        digest.update(b"\x00")
    return f"<{digest.hexdigest()[:32]}@{_DERIVED_DOMAIN}>"


def subject_with_token(subject: str, token: str) -> str:
    """``subject`` with ``[token]`` appended, unless it carries the token already."""
    subject = " ".join((subject or "").split())
    token = token.strip()
    if not token:
        return subject
    if re.search(r"\[\s*" + re.escape(token) + r"\s*\]", subject, re.IGNORECASE):
        return subject
    return f"{subject} [{token}]" if subject else f"[{token}]"


def find_token(subject: str, prefix: str = "ESC") -> str | None:
    """The ``[PREFIX-...]`` ticket token in a subject, upper-cased, or None."""
    prefix = _prefix(prefix)
    pattern = r"\[\s*" + re.escape(prefix) + r"-([A-Za-z0-9]{4,32})\s*\]"
    match = re.search(pattern, subject, re.IGNORECASE)
    return f"{prefix}-{match.group(1).upper()}" if match else None


def is_own(message: MailMessage, from_address: str) -> bool:
    """True for our own mail coming back: sent from our address, or carrying our marker or key line.

    Only the new text is searched, so a customer quoting one of our mails is not taken for us.
    """
    own = (from_address or "").strip().casefold()
    if own and message.sender and message.sender.casefold() == own:
        return True
    return OwnIdentity().is_marked(message.text)


def strip_quoted(text: str, *, forward: bool = False) -> str:
    """The new text of a mail body: quoted history and the signature cut, a forward kept whole."""
    return _strip_quoted(text, forward=forward)


def html_to_text(html: str) -> str:
    """Readable text of an HTML body; ``<blockquote>`` lines are quoted with ``> ``."""
    return _html_to_text(html)


# --- the reader ------------------------------------------------------------------------------


class _Reader:
    """Reads one parsed message: headers, body text, attachments, reports."""

    def __init__(self, msg: Message, max_attachment_bytes: int):
        self.msg = msg
        self.limit = max_attachment_bytes
        self.headers = _Headers(msg)
        self.plain: list[str] = []
        self.attachments: list[Attachment] = []
        self.dsn: list[tuple[str, str]] = []  # (recipient, action)
        self.report_types: set[str] = set()
        self.parts = 0

    def read(self) -> MailMessage:
        h = self.headers
        if not h.any_of("from", "sender", "to", "cc", "subject", "date", "message-id", "reply-to"):
            raise PayloadError(
                "the data carries no mail header (From, To, Subject, Date or Message-ID)"
            )
        self._walk(self.msg, 0)
        full_text = _clip(_tidy("\n\n".join(t for t in self.plain if t.strip())))
        subject = _clip(h.text("subject"), 2000)
        sender_name, sender = h.first_address("from", "sender")
        if sender is None:
            _, sender = h.first_address("return-path")
        _, reply_to = h.first_address("reply-to")
        message_id = _first_id(h.raw("message-id"))
        references = _ids(" ".join(h.raw_all("references")))
        in_reply_to = _first_id(h.raw("in-reply-to"))
        forward = _is_forward_subject(subject)
        kind, bounced = self._classify(subject, sender, full_text)
        auto = h.text("auto-submitted").strip().lower() or None
        return MailMessage(
            message_id=message_id,
            in_reply_to=in_reply_to,
            references=references,
            subject=subject,
            token=_any_token(subject),
            sender=sender,
            sender_name=sender_name,
            reply_to=reply_to,
            to=h.addresses("to"),
            cc=h.addresses("cc"),
            date=_date(h.raw("date")),
            text=_strip_quoted(full_text, forward=forward),
            full_text=full_text,
            attachments=tuple(self.attachments),
            kind=kind,
            bounced=bounced,
            importance=_importance(h),
            auto_submitted=auto[:200] if auto else None,
        )

    # -- structure --

    def _walk(self, part: Message, depth: int) -> None:
        self.parts += 1
        if self.parts > _MAX_PARTS or depth > _MAX_DEPTH:
            return
        ctype = _content_type(part)
        maintype = ctype.split("/", 1)[0]
        if maintype == "multipart":
            children = _children(part)
            if children is None:
                self._leaf(part, "text/plain")
                return
            if ctype == "multipart/report":
                self.report_types.add(_param(part, "report-type").lower() or "unknown")
            if ctype == "multipart/alternative":
                self._alternative(children, depth)
                return
            if ctype == "multipart/signed":
                children = [c for c in children if not _is_signature(c)]
            for child in children:
                self._walk(child, depth + 1)
            return
        if ctype == "message/delivery-status":
            self.report_types.add("delivery-status")
            self.dsn.extend(_dsn_recipients(part))
            return
        if ctype in ("message/disposition-notification", "message/feedback-report"):
            self.report_types.add(ctype.split("/", 1)[1])
            return
        if ctype in ("text/rfc822-headers", "message/rfc822-headers"):
            return
        if ctype in ("message/rfc822", "message/global"):
            self.attachments.append(self._enclosed(part))
            return
        self._leaf(part, ctype)

    def _alternative(self, children: Sequence[Message], depth: int) -> None:
        # The richest text the sender wrote: plain text first (it carries the sender's own quoting),
        # HTML when the plain part is missing or empty; other alternatives are ignored.
        def rank(child: Message) -> int:
            ctype = _content_type(child)
            if ctype.startswith("multipart/"):
                return 2
            return {"text/plain": 0, "text/html": 1}.get(ctype, 3)

        before = len(self.plain)
        for child in sorted(children, key=rank):
            if rank(child) == 3:
                continue
            self._walk(child, depth + 1)
            if any(t.strip() for t in self.plain[before:]):
                return
            del self.plain[before:]

    def _leaf(self, part: Message, ctype: str) -> None:
        disposition = _disposition(part)
        filename = _filename(part)
        is_body = ctype in _BODY_TYPES and disposition != "attachment"
        raw = _raw_payload(part)
        if not isinstance(raw, str):
            raw = ""
        if is_body and len(raw) <= self.limit:
            text = _decode_text(part, raw)
            if ctype == "text/html":
                text = _html_to_text(text)
            self.plain.append(text)
            return
        size = _size(part, raw, self.limit)
        self.attachments.append(Attachment(filename=filename, content_type=ctype, size=size))

    def _enclosed(self, part: Message) -> Attachment:
        filename = _filename(part)
        inner = _raw_payload(part)
        size = 0
        if isinstance(inner, list):
            for sub in inner:
                if isinstance(sub, Message):
                    if filename is None:
                        subject = _Headers(sub).text("subject").strip()
                        filename = f"{subject[:100]}.eml" if subject else None
                    size += _tree_size(sub)
        return Attachment(filename=filename, content_type=_content_type(part), size=size)

    # -- classification --

    def _classify(self, subject: str, sender: str | None, text: str) -> tuple[str, tuple[str, ...]]:
        h = self.headers
        if "delivery-status" in self.report_types:
            failed = tuple(_unique(r for r, action in self.dsn if action not in _NOT_FAILED))
            if failed:
                return "bounce", failed
            if self.dsn:
                # every recipient delayed, delivered, relayed or expanded: news, not a failure
                return "report", ()
            if _DELAY_SUBJECT.search(subject):
                return "report", ()
            return "bounce", self._guess_bounced(sender, text)
        if self.report_types:
            return "report", ()
        failed_header = _addresses_in(" ".join(h.text_all("x-failed-recipients")))
        daemon = _is_daemon(sender) or _is_daemon(h.text("from"))
        if failed_header:
            return "bounce", failed_header
        if daemon and (_BOUNCE_SUBJECT.search(subject) or _DELAY_SUBJECT.search(subject)):
            if _DELAY_SUBJECT.search(subject) and not _BOUNCE_SUBJECT.search(subject):
                return "report", ()
            return "bounce", self._guess_bounced(sender, text)
        if daemon and _local_part(sender) in ("mailer-daemon", "mail-daemon"):
            return "bounce", self._guess_bounced(sender, text)
        if _is_auto_reply(h, subject):
            return "auto_reply", ()
        return "message", ()

    def _guess_bounced(self, sender: str | None, text: str) -> tuple[str, ...]:
        # The notification names the failed address before the returned message begins.
        head = _ORIGINAL_FOLLOWS.split(text, maxsplit=1)[0]
        ours = {a.casefold() for a in self.headers.addresses("to") + self.headers.addresses("cc")}
        if sender:
            ours.add(sender.casefold())
        return tuple(a for a in _addresses_in(head) if a not in ours and not _is_daemon(a))[:20]


_NOT_FAILED = frozenset({"delayed", "delivered", "relayed", "expanded"})
_BOUNCE_SUBJECT = re.compile(
    r"undeliver|undelivered|delivery (status notification \(failure\)|failure|failed|has failed)"
    r"|returned mail|failure notice|mail delivery (failed|failure|system)|could not be delivered"
    r"|delivery problem|non.?delivery|unzustellbar|non remis|no se puede entregar|rejected",
    re.IGNORECASE,
)
_DELAY_SUBJECT = re.compile(
    r"\bdelay(ed)?\b|still being retried|warning: could not send"
    r"|delivery status notification \(delay\)"
    r"|verzögert|retardée",
    re.IGNORECASE,
)
_ORIGINAL_FOLLOWS = re.compile(
    r"^.*(original message|returned message|message follows|message headers follow|"
    r"this is a copy of the message|undelivered message|headers of the original).*$",
    re.IGNORECASE | re.MULTILINE,
)
_DAEMONS = frozenset({"mailer-daemon", "mail-daemon", "postmaster", "mail-delivery-subsystem"})


def _is_daemon(value: str | None) -> bool:
    if not value:
        return False
    text = value.casefold()
    return _local_part(text) in _DAEMONS or "mailer-daemon" in text or "mail delivery" in text


def _local_part(address: str | None) -> str:
    return (address or "").casefold().rsplit("@", 1)[0].strip().strip("<>\"' ")


# --- auto-replies ------------------------------------------------------------------------------

_VACATION = re.compile(
    r"^\s*(?:\[[^\]]*\]\s*)?(?:"
    r"out of (?:the )?office|ooo\b|automatic reply"
    r"|auto(?:matic)?[- ]?(?:reply|response|responder|antwort)"
    r"|autoreply|autoresponse|vacation|on vacation|away from (?:the )?office|i am away|i'm away"
    r"|abwesenheitsnotiz|abwesend|automatische antwort|automatische r[üu]ckantwort|urlaub"
    r"|r[ée]ponse automatique|absence|absent du bureau|message d'absence"
    r"|respuesta autom[áa]tica|fuera de la oficina|ausente"
    r"|risposta automatica|fuori ufficio|assente"
    r"|automatisch antwoord|afwezig|resposta autom[áa]tica|fora do escrit[óo]rio"
    r"|autosvar|fr[åa]nvarande|frav[æe]rende|poza biurem|odpowied[źz] automatyczna"
    r"|automaattinen vastaus"
    r"|автоответ|автоматический ответ|自动回复|自動回覆|自動応答|自動返信|不在"
    r")",
    re.IGNORECASE,
)
_AUTO_HEADERS = (
    "x-autoreply", "x-autorespond", "x-autoresponder", "x-auto-reply-from", "x-mail-autoreply",
    "x-autogenerated", "x-fc-machinegenerated", "list-id", "list-unsubscribe",
)
_SUPPRESS = re.compile(r"\b(all|oof|autoreply)\b", re.IGNORECASE)


def _is_auto_reply(h: _Headers, subject: str) -> bool:
    auto = h.text("auto-submitted").strip().lower()
    if auto and not auto.startswith("no"):
        return True
    if h.text("precedence").strip().lower() in ("bulk", "junk", "list", "auto_reply"):
        return True
    if h.text("x-precedence").strip().lower() in ("bulk", "junk", "list", "auto_reply"):
        return True
    if _SUPPRESS.search(h.text("x-auto-response-suppress")):
        return True
    if h.any_of(*_AUTO_HEADERS):
        return True
    if "autoresponder" in h.text("x-post-messageclass").lower():
        return True
    if h.raw("return-path") is not None and h.raw("return-path").strip() in ("<>", ""):
        # RFC 5321: only notifications travel with a null envelope sender
        return True
    return bool(_VACATION.match(subject))


# --- headers ---------------------------------------------------------------------------------


class _Headers:
    """A message's headers by lower-case name, raw (as received) and decoded."""

    def __init__(self, msg: Message):
        self.values: dict[str, list[str]] = {}
        try:
            items = msg.raw_items()
            for name, value in items:
                if isinstance(name, str) and isinstance(value, str):
                    self.values.setdefault(name.strip().lower(), []).append(value)
        except (TypeError, ValueError):
            pass

    def raw(self, name: str) -> str | None:
        values = self.values.get(name)
        return _unfold(values[0][:_MAX_HEADER]) if values else None

    def raw_all(self, name: str) -> list[str]:
        return [_unfold(v[:_MAX_HEADER]) for v in self.values.get(name, [])[:_MAX_IDS]]

    def text(self, name: str) -> str:
        raw = self.raw(name)
        return _decode_words(_raw_text(raw[:_MAX_HEADER_TEXT])).strip() if raw is not None else ""

    def text_all(self, name: str) -> list[str]:
        return [_decode_words(_raw_text(v[:_MAX_HEADER_TEXT])) for v in self.raw_all(name)]

    def any_of(self, *names: str) -> bool:
        return any(name in self.values for name in names)

    def addresses(self, name: str) -> tuple[str, ...]:
        found: list[str] = []
        for raw in self.raw_all(name):
            found.extend(address for _, address in _parse_addresses(raw))
        return tuple(_unique(found))[:_MAX_IDS]

    def first_address(self, *names: str) -> tuple[str | None, str | None]:
        for name in names:
            for raw in self.raw_all(name):
                for display, address in _parse_addresses(raw):
                    return display or None, address
        return None, None


def _unfold(value: str) -> str:
    return re.sub(r"\r?\n[ \t]*", " ", value).replace("\r", " ").replace("\x00", "")


def _raw_text(value: str) -> str:
    """A header value with raw 8-bit bytes (kept as surrogates by the parser) decoded."""
    if not any("\udc80" <= c <= "\udcff" for c in value):
        return value
    data = _bytes_of(value)
    return _decode_bytes(data, None)


_ENCODED_WORD = re.compile(r"=\?([^?\s]+)\?([bBqQ])\?([^?\s]*)\?=")


def _decode_words(value: str) -> str:
    """RFC 2047 encoded words decoded; adjacent words of one charset are joined before decoding."""
    if "=?" not in value:
        return value
    out: list[str] = []
    pending: list[tuple[str, bytes]] = []
    pos = 0

    def flush() -> None:
        while pending:
            charset = pending[0][0]
            chunk = b""
            while pending and pending[0][0] == charset:
                chunk += pending.pop(0)[1]
            out.append(_decode_bytes(chunk, charset))

    for match in _ENCODED_WORD.finditer(value):
        between = value[pos:match.start()]
        if between and (between.strip() or not pending):
            flush()
            out.append(between)
        charset = match.group(1).split("*", 1)[0]
        pending.append((charset, _word_bytes(match.group(2), match.group(3))))
        pos = match.end()
    flush()
    out.append(value[pos:])
    return "".join(out)


def _word_bytes(encoding: str, text: str) -> bytes:
    if encoding in "bB":
        cleaned = re.sub(r"[^A-Za-z0-9+/]", "", text)
        cleaned += "=" * (-len(cleaned) % 4)
        try:
            return base64.b64decode(cleaned)
        except (binascii.Error, ValueError):
            return text.encode("ascii", "replace")
    return quopri.decodestring(text.replace("_", " ").encode("ascii", "replace"), header=True)


_LAST_ANGLE = re.compile(r"<([^<>]*)>\s*(?:\([^()]*\)\s*)*$")
_ANGLE = re.compile(r"<([^<>]*)>")
_ADDRESS_IN_TEXT = re.compile(
    r"[A-Za-z0-9._%+\-=!#$&'*/?^`{|}~]+@[A-Za-z0-9\-]+(?:\.[A-Za-z0-9\-]+)+"
)


def _parse_addresses(raw: str) -> list[tuple[str, str]]:
    """``(display name, address)`` pairs of an address header, as mail clients read them."""
    pairs: list[tuple[str, str]] = []
    for item in _split_addresses(raw[:_MAX_HEADER_TEXT]):
        item = item.strip()
        if ":" in item and "<" not in item.split(":", 1)[0] and "@" not in item.split(":", 1)[0]:
            item = item.split(":", 1)[1]  # a group: "team: a@x, b@y;"
        item = item.strip().rstrip(";").strip()
        if not item:
            continue
        angle = _LAST_ANGLE.search(item) or _ANGLE.search(item)
        comment = None
        if angle:
            address = angle.group(1)
            display = item[: angle.start()]
        else:
            comments = re.findall(r"\(([^()]*)\)", item)
            comment = comments[0] if comments else None
            bare = re.sub(r"\([^()]*\)", " ", item)
            words = [w for w in bare.split() if "@" in w]
            address = words[-1] if words else bare.strip()
            display = comment or ""
        address = _clean_address(address)
        if address is None:
            continue
        display = _decode_words(_raw_text(display)).strip().strip('"').replace('\\"', '"').strip()
        pairs.append((_clip(" ".join(display.split()), 200), address))
    return pairs


def _split_addresses(raw: str) -> list[str]:
    items, current, depth, quoted, angle = [], [], 0, False, False
    escaped = False
    for c in raw:
        if escaped:
            current.append(c)
            escaped = False
            continue
        if c == "\\" and quoted:
            escaped = True
        elif c == '"':
            quoted = not quoted
        elif not quoted and c == "(":
            depth += 1
        elif not quoted and c == ")" and depth:
            depth -= 1
        elif not quoted and not depth and c == "<":
            angle = True
        elif not quoted and not depth and c == ">":
            angle = False
        elif c in ",;" and not quoted and not depth and not angle:
            items.append("".join(current))
            current = []
            continue
        current.append(c)
    items.append("".join(current))
    return items


def _clean_address(value: str) -> str | None:
    text = _raw_text(value).strip().strip("\"'").strip()
    if text.lower().startswith("mailto:"):
        text = text[7:]
    text = text.strip("<>").strip()
    if "@" not in text or any(c.isspace() for c in text) or len(text) > 320:
        return None
    local, _, domain = text.rpartition("@")
    if not local or not domain or "<" in text or ">" in text:
        return None
    return text


def _addresses_in(text: str) -> tuple[str, ...]:
    found = _ADDRESS_IN_TEXT.findall(text)
    return tuple(_unique(a.strip(".").casefold() for a in found))


# --- ids, dates, importance, tokens ----------------------------------------------------------


def _bare_id(value: str) -> str:
    text = value.strip()
    match = re.search(r"<([^<>]+)>", text)
    return "".join((match.group(1) if match else text).split())


def _ids(raw: str | None) -> tuple[str, ...]:
    if not raw:
        return ()
    raw = raw[:50000]
    found = re.findall(r"<([^<>\s]{1,250})>", raw)
    if not found:
        found = [w for w in raw.split() if "@" in w and len(w) <= 250]
    ids = tuple(_unique(f"<{i.strip('<>')}>" for i in found if i.strip("<>")))
    # The root (first) and the most recent ids are the ones threading needs.
    return ids if len(ids) <= _MAX_IDS else ids[:1] + ids[-(_MAX_IDS - 1):]


def _first_id(raw: str | None) -> str | None:
    ids = _ids(raw)
    return ids[0] if ids else None


def _date(raw: str | None) -> datetime | None:
    if not raw:
        return None
    text = re.sub(r"\([^()]*\)", " ", raw[:200])
    try:
        parsed = parsedate_tz(" ".join(text.split()))
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if parsed is None:
        return None
    try:
        zone = timezone(timedelta(seconds=parsed[9])) if parsed[9] is not None else UTC
        return datetime(*parsed[:6], tzinfo=zone)
    except (TypeError, ValueError, OverflowError):
        return None


def _importance(h: _Headers) -> str | None:
    for name in ("importance", "priority", "x-msmail-priority"):
        value = h.text(name).strip().lower()
        if value.startswith(("high", "urgent")):
            return "high"
        if value.startswith(("low", "non-urgent")):
            return "low"
    match = re.match(r"\s*(\d)", h.text("x-priority"))
    if match:
        level = int(match.group(1))
        if level in (1, 2):
            return "high"
        if level in (4, 5):
            return "low"
    return None


def _prefix(prefix: str) -> str:
    cleaned = re.sub(r"[^A-Za-z0-9]", "", prefix or "") or "ESC"
    return cleaned.upper()


def _any_token(subject: str) -> str | None:
    match = re.search(r"\[\s*([A-Za-z][A-Za-z0-9]{0,15})-([A-Za-z0-9]{4,32})\s*\]", subject)
    return f"{match.group(1).upper()}-{match.group(2).upper()}" if match else None


_FORWARD_SUBJECT = re.compile(
    r"^\s*(?:\[[^\]]*\]\s*)?(?:fwd?|fw|wg|tr|rv|enc|i|vs|vb|doorst|pd|rif)\s*:", re.IGNORECASE
)


def _is_forward_subject(subject: str) -> bool:
    return bool(_FORWARD_SUBJECT.match(subject))


# --- parts -----------------------------------------------------------------------------------


def _trim_leading_blank_lines(data: bytes) -> bytes:
    # Some stores prepend a blank or space-filled line; the parser would take every header for body.
    stripped = data.lstrip(b" \t\r\n")
    if stripped is not data and re.match(rb"[!-9;-~]+:", stripped[:200]):
        return stripped
    return data


def _content_type(part: Message) -> str:
    try:
        ctype = part.get_content_type()
    except (TypeError, ValueError, AttributeError, IndexError):
        return "text/plain"
    return ctype if isinstance(ctype, str) and "/" in ctype else "text/plain"


def _param(part: Message, name: str) -> str:
    try:
        value = part.get_param(name)
    except (TypeError, ValueError, AttributeError, IndexError):
        return ""
    if isinstance(value, tuple):
        try:
            value = collapse_rfc2231_value(value)
        except (LookupError, TypeError, ValueError):
            value = value[-1] if value else ""
    return _raw_text(value) if isinstance(value, str) else ""


def _disposition(part: Message) -> str:
    raw = part.get("Content-Disposition")
    if not isinstance(raw, str):
        return ""
    return raw.split(";", 1)[0].strip().lower()


def _filename(part: Message) -> str | None:
    try:
        name = part.get_filename() or part.get_param("name")
    except (TypeError, ValueError, AttributeError, IndexError, LookupError):
        return None
    if isinstance(name, tuple):
        name = name[-1] if name else None
    if not isinstance(name, str):
        return None
    name = _decode_words(_raw_text(_unfold(name))).strip().strip('"')
    return _clip(name, 255) or None


def _is_signature(part: Message) -> bool:
    return _content_type(part) in (
        "application/pkcs7-signature", "application/x-pkcs7-signature", "application/pgp-signature"
    )


def _raw_payload(part: Message) -> list[Message] | str | None:
    # get_payload() re-decodes an 8-bit payload with the declared charset (and raises on a
    # malformed charset name); the parts and their bytes are wanted as the parser kept them.
    payload = getattr(part, "_payload", None)
    return payload if isinstance(payload, (list, str)) else None


def _children(part: Message) -> list[Message] | None:
    """The parts of a multipart, recovering a body whose boundary differs from the declared one."""
    payload = _raw_payload(part)
    if isinstance(payload, list):
        return [p for p in payload if isinstance(p, Message)]
    if not isinstance(payload, str):
        return None
    boundary = _used_boundary(payload)
    if boundary is None:
        return None
    header = f'Content-Type: {_content_type(part)}; boundary="{boundary}"\r\n\r\n'
    try:
        reparsed = message_from_bytes(
            _bytes_of(header) + _bytes_of(payload),
            policy=compat32,
        )
    except (UnicodeError, ValueError, TypeError):
        return None
    inner = _raw_payload(reparsed)
    if not isinstance(inner, list) or not inner:
        return None
    return [p for p in inner if isinstance(p, Message)]


def _used_boundary(body: str) -> str | None:
    # The first "--token" line followed by what looks like part headers names the boundary used.
    lines = body.splitlines()
    for index, line in enumerate(lines[:2000]):
        match = re.fullmatch(r"--([^\s]{1,200}?)\s*", line)
        if not match:
            continue
        following = lines[index + 1] if index + 1 < len(lines) else ""
        if re.match(r"[A-Za-z-]+:", following):
            token = match.group(1)
            return token
    return None


def _size(part: Message, raw: str, limit: int) -> int:
    """A part's decoded size, from its encoded length; only small quoted-printable is decoded."""
    encoding = str(part.get("Content-Transfer-Encoding", "")).strip().lower()
    if encoding == "base64":
        spaces = sum(raw.count(c) for c in " \t\r\n")
        length = len(raw) - spaces
        padding = len(raw.rstrip(" \t\r\n")) - len(raw.rstrip(" \t\r\n").rstrip("="))
        return max(0, (length * 3) // 4 - min(padding, 2))
    if encoding == "quoted-printable" and len(raw) <= limit:
        return len(quopri.decodestring(_bytes_of(raw)))
    # 7bit, 8bit, binary: the parser keeps one character per byte
    return len(raw)


def _tree_size(msg: Message) -> int:
    payload = _raw_payload(msg)
    if isinstance(payload, list):
        return sum(_tree_size(p) for p in payload if isinstance(p, Message))
    return len(payload) if isinstance(payload, str) else 0


def _dsn_recipients(part: Message) -> list[tuple[str, str]]:
    """``(recipient, action)`` for each recipient block of a ``message/delivery-status`` part."""
    blocks: list[list[tuple[str, str]]] = []
    payload = _raw_payload(part)
    if isinstance(payload, list):
        for block in payload:
            if isinstance(block, Message):
                try:
                    items = block.raw_items()
                    blocks.append([(k.lower(), _unfold(v)) for k, v in items if isinstance(v, str)])
                except (TypeError, ValueError):
                    continue
    elif isinstance(payload, str):
        for chunk in re.split(r"\r?\n\s*\r?\n", payload):
            fields = re.findall(r"^([A-Za-z-]+):[ \t]*(.*)$", chunk, re.MULTILINE)
            blocks.append([(k.lower(), v) for k, v in fields])
    found: list[tuple[str, str]] = []
    for block in blocks:
        fields = dict(reversed(block))
        recipient = fields.get("final-recipient") or fields.get("original-recipient")
        if not recipient:
            continue
        address = recipient.split(";", 1)[-1].strip().strip("<>").strip()
        address = _clean_address(address)
        if address is None:
            continue
        words = fields.get("action", "").strip().lower().split()
        action = words[0] if words else "failed"
        found.append((address.casefold(), action))
    return found


# --- text ------------------------------------------------------------------------------------

_CHARSET_ALIASES = {
    "gb2312": "gb18030", "gbk": "gb18030", "x-gbk": "gb18030", "gb_2312-80": "gb18030",
    "euc-cn": "gb18030",
    "cp936": "gb18030", "ks_c_5601-1987": "cp949", "euc-kr": "cp949", "big5": "big5hkscs",
    "shift_jis": "cp932", "shift-jis": "cp932", "sjis": "cp932", "x-sjis": "cp932",
    "iso-8859-1": "cp1252", "iso8859-1": "cp1252", "latin1": "cp1252", "latin-1": "cp1252",
    "us-ascii": "cp1252", "ascii": "cp1252", "ansi_x3.4-1968": "cp1252", "windows-1252": "cp1252",
    "iso-8859-8-i": "iso-8859-8", "utf8": "utf-8",
}
_SINGLE_BYTE = frozenset({"cp1252", "iso8859-15", "cp1250", "iso8859-2"})
# Charsets whose bytes are not ASCII-compatible or are stateful: never try UTF-8 on them first.
_NOT_ASCII_BASED = ("utf-16", "utf-32", "utf-7", "iso2022", "hz")


def _codec(charset: str | None) -> str | None:
    if not charset:
        return None
    name = charset.strip().strip("\"'").lower()
    name = _CHARSET_ALIASES.get(name, name)
    try:
        return codecs.lookup(name).name
    except (LookupError, ValueError, TypeError):
        return None


def _decode_bytes(data: bytes, charset: str | None) -> str:
    """Text of ``data``: the declared charset, unless it lies; then UTF-8, then Windows-1252."""
    codec = _codec(charset)
    candidates: list[str] = []
    if codec is None or not codec.startswith(_NOT_ASCII_BASED):
        # Text that decodes as UTF-8 with multi-byte sequences is almost never text in another
        # charset that happens to decode: mail labelled GB2312 or Latin-1 is often UTF-8.
        candidates.append("utf-8")
    if codec is not None:
        candidates.append(codec)
    for name in candidates:
        try:
            return data.decode(name)
        except (UnicodeError, LookupError):
            continue
    if codec is None or codec in _SINGLE_BYTE or codec == "utf-8":
        # UTF-8 with a stray broken byte, else a Windows-1252 (Latin-1) text labelled otherwise
        loose = data.decode("utf-8", "replace")
        broken = loose.count("\ufffd")
        if broken <= 3 and broken * 20 <= sum(1 for byte in data if byte > 127):
            return loose
        try:
            return data.decode("cp1252")
        except UnicodeError:
            pass
    return data.decode(codec or "latin-1", "replace")


def _decode_text(part: Message, raw: str) -> str:
    try:
        data = part.get_payload(decode=True)
    except (TypeError, ValueError, AttributeError, IndexError, LookupError, binascii.Error,
            UnicodeError):
        data = None
    if not isinstance(data, bytes):
        data = _bytes_of(raw)
    try:
        charset = part.get_content_charset()
    except (TypeError, ValueError, AttributeError, IndexError, LookupError):
        charset = None
    text = _decode_bytes(data[: _MAX_TEXT * 4], charset)
    return text.replace("\r\n", "\n").replace("\r", "\n").replace("\x00", "")


def _bytes_of(text: str) -> bytes:
    """The bytes the parser read as ``text`` (it keeps undecodable bytes as lone surrogates)."""
    try:
        return text.encode("utf-8", "surrogateescape")
    except UnicodeError:
        return text.encode("utf-8", "replace")


def _tidy(text: str) -> str:
    lines = [line.rstrip() for line in text.replace("\xa0", " ").splitlines()]
    out: list[str] = []
    for line in lines:
        if not line and (not out or not out[-1]):
            continue
        out.append(line)
    return "\n".join(out).strip("\n")


def _clip(text: str, limit: int = _MAX_TEXT) -> str:
    return text if len(text) <= limit else text[:limit]


def _unique(items: Iterable[str]) -> Iterator[str]:
    seen: set[str] = set()
    for item in items:
        key = item.casefold()
        if key not in seen:
            seen.add(key)
            yield item


# --- HTML ------------------------------------------------------------------------------------

_BLOCKS = frozenset({
    "p", "div", "br", "tr", "li", "ul", "ol", "table", "h1", "h2", "h3", "h4", "h5", "h6", "pre",
    "dt", "dd", "dl", "section", "article", "header", "footer", "center", "address", "form", "hr",
    "blockquote", "tbody", "thead", "body", "html",
})
_SKIP = frozenset({"script", "style", "head", "title", "template", "svg", "xml"})
_QUOTE_OPEN, _QUOTE_CLOSE = "\x01", "\x02"
_SIGNATURE_CLASSES = re.compile(r"\b(gmail_signature|moz-signature)\b|^signature$", re.IGNORECASE)


class _TextOfHtml(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.out: list[str] = []
        self.skip = 0
        self.pre = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _SKIP:
            self.skip += 1
            return
        if tag == "pre":
            self.pre += 1
        if tag == "blockquote":
            self.out.append(f"\n{_QUOTE_OPEN}\n")
        elif tag == "hr":
            self.out.append("\n________________________________\n")
        elif tag in _BLOCKS:
            self.out.append("\n")
        elif tag in ("td", "th"):
            self.out.append(" ")
        values = dict(attrs)
        marks = f"{values.get('class') or ''} {values.get('id') or ''}".strip()
        if marks and _SIGNATURE_CLASSES.search(marks):
            self.out.append("\n-- \n")

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in ("br", "hr", "p", "div"):
            self.handle_starttag(tag, attrs)

    def handle_endtag(self, tag: str) -> None:
        if tag in _SKIP:
            self.skip = max(0, self.skip - 1)
            return
        if tag == "pre":
            self.pre = max(0, self.pre - 1)
        if tag == "blockquote":
            self.out.append(f"\n{_QUOTE_CLOSE}\n")
        elif tag in _BLOCKS and tag != "br":
            self.out.append("\n")

    def handle_data(self, data: str) -> None:
        if self.skip:
            return
        if self.pre:
            self.out.append(data)
        else:
            self.out.append(re.sub(r"[ \t\r\n\f]+", " ", data))


def _html_to_text(html: str) -> str:
    parser = _TextOfHtml()
    try:
        parser.feed(html[: _MAX_TEXT * 4])
        parser.close()
        raw = "".join(parser.out)
    except (AssertionError, ValueError, IndexError, TypeError):
        # html.parser gives up on a few malformed declarations; tags stripped is the next best.
        raw = re.sub(r"<[^>]*>", " ", html)
    depth = 0
    rows: list[tuple[int, str]] = []
    for line in raw.split("\n"):
        if line.strip() == _QUOTE_OPEN:
            depth += 1
            continue
        if line.strip() == _QUOTE_CLOSE:
            depth = max(0, depth - 1)
            continue
        rows.append((depth, line.replace(_QUOTE_OPEN, "").replace(_QUOTE_CLOSE, "").strip(" ")))
    # Blank lines at the edges of a quote are layout, not content.
    kept = [
        (d, text) for i, (d, text) in enumerate(rows)
        if text or not d or (0 < i < len(rows) - 1 and rows[i - 1][0] == d == rows[i + 1][0])
    ]
    return _tidy("\n".join(("> " * d + text).rstrip() if d else text for d, text in kept))


# --- quoted history --------------------------------------------------------------------------

_WROTE_VERBS = (
    r"wrote|writes|schrieb|a [ée]crit|escribi[óo]|ha scritto|scrisse|schreef|escreveu|skrev"
    r"|kirjoitti|napisa[łl](?:\(a\))?|написал(?:\(а\))?|писал|yazd[ıi]|[íi]rta|pisze|napsal"
)
_WROTE = re.compile(
    r"(?:(?:" + _WROTE_VERBS + r")\s*[:：]|(?:写道|寫道|が書きました)\s*[:：]?)\s*$", re.IGNORECASE
)
# German, Dutch, Swedish, Portuguese, French and Spanish Gmail put the verb before the name.
_WROTE_INSIDE = re.compile(
    r"^\s*(?:am|op|den|em|le|el|il)\b.{0,250}"
    r"\b(?:schrieb|schreef|skrev|escreveu|a [ée]crit|escribi[óo])\b.{0,250}[:：]\s*$",
    re.IGNORECASE,
)
# Russian and Japanese Gmail name no verb at all: a date, an address in brackets and a colon.
_DATED_ADDRESS = re.compile(r"^.{0,120}\b\d{4}\b.{0,200}<[^<>\s]+@[^<>\s]+>\s*[:：]\s*$")
_LEADS = re.compile(
    r"^\s*(?:on|am|le|el|il|op|em|den|dne|w dniu|в|---|\d)", re.IGNORECASE
)
_ORIGINAL_MESSAGE = re.compile(
    r"^\s*-{2,}\s*(?:original message|original-nachricht|urspr[üu]ngliche nachricht"
    r"|message d'origine|mensaje original|messaggio originale|oorspronkelijk bericht"
    r"|mensagem original|ursprungligt meddelande|oprindelig meddelelse|opprinnelig melding"
    r"|wiadomo[śs][ćc] oryginalna|исходное сообщение|原始邮件)\s*-{2,}\s*$",
    re.IGNORECASE,
)
_FORWARD_MARK = re.compile(
    r"^\s*(?:-{2,}\s*(?:forwarded message|forwarded message follows|weitergeleitete nachricht"
    r"|message transf[ée]r[ée]|mensaje reenviado|messaggio inoltrato|doorgestuurd bericht"
    r"|mensagem encaminhada|vidarebefordrat meddelande|videresendt meddelelse"
    r"|wiadomo[śs][ćc] przekazana|пересылаемое сообщение|转发的邮件|forwarded)\s*-*"
    r"|begin forwarded message\s*:|anfang der weitergeleiteten nachricht\s*:"
    r"|d[ée]but du message r[ée]exp[ée]di[ée]\s*:|inicio del mensaje reenviado\s*:)\s*$",
    re.IGNORECASE,
)
_HEADER_FROM = re.compile(
    r"^\s*\*?(?:from|von|de|da|van|fr[åa]n|fra|od|от|发件人|寄件者|差出人)\s*\*?\s*[:：]",
    re.IGNORECASE,
)
_HEADER_OTHER = re.compile(
    r"^\s*\*?(?:sent|date|to|cc|subject|gesendet|datum|an|betreff|envoy[ée]|[àa]|objet"
    r"|enviado|fecha|para|asunto|inviato|data|a|oggetto|verzonden|aan|onderwerp|skickat|till"
    r"|[äa]mne|sendt|til|emne|wys[łl]ano|do|temat|отправлено|кому|тема|发送时间|收件人|主题"
    r"|日付|宛先|件名)\s*\*?\s*[:：]",
    re.IGNORECASE,
)
_SENT_FROM = re.compile(
    r"^\s*(?:sent from my|sent from (?:mail|outlook|yahoo)|get outlook for|envoy[ée] de mon"
    r"|von meinem .* gesendet|enviado desde mi|inviato da(?:l mio)?|verzonden (?:vanaf|met) mijn"
    r"|skickat fr[åa]n min)\b.*$",
    re.IGNORECASE,
)


def _strip_quoted(text: str, *, forward: bool) -> str:
    lines = text.split("\n")
    cut = len(lines)
    kind = ""
    for index in range(min(len(lines), _MAX_SCANNED_LINES)):
        found = _history_starts(lines, index)
        if found:
            cut, kind = index, found
            break
    if forward or kind == "forward" or (
        kind == "signature" and any(_FORWARD_MARK.match(line) for line in lines[cut:])
    ):
        # A forwarded thread is new content, the forwarder's note and signature included.
        return _tidy(text)
    head = lines[:cut]
    if kind == "wrote" and _answers_inline(lines[cut + 1:]):
        head += lines[cut + 1:]
    head = [line for line in head if not _quoted(line)]
    while head and (not head[-1].strip() or _SENT_FROM.match(head[-1])
                    or set(head[-1].strip()) <= set("_-=*")):
        head.pop()
    return _tidy("\n".join(head))


def _quoted(line: str) -> bool:
    return line.lstrip().startswith(">")


def _answers_inline(rest: Sequence[str]) -> bool:
    """True when answers are written between the quoted lines after an attribution."""
    first_quote = next((i for i, line in enumerate(rest) if _quoted(line)), None)
    if first_quote is None:
        return False
    if not any(line.strip() and not _quoted(line) for line in rest[first_quote:]):
        return False
    return not any(_history_starts(rest, i) for i in range(min(len(rest), _MAX_SCANNED_LINES)))


def _history_starts(lines: Sequence[str], index: int) -> str:
    """What starts at line ``index``: ``wrote``, ``original``, ``header``, ``signature``,
    ``forward``, ``quote`` or ''."""
    line = lines[index]
    stripped = line.strip()
    if not stripped:
        return ""
    if line.rstrip() in ("--", "-- ") or line == "-- ":
        return "signature" if index > 0 else ""
    if _FORWARD_MARK.match(line):
        return "forward"
    if _ORIGINAL_MESSAGE.match(line):
        return "original"
    if stripped.startswith(">"):
        # A block of quoted lines after the new text, without an attribution line
        return "quote" if index > 0 and all(
            not other.strip() or _quoted(other) for other in lines[index:index + 50]
        ) else ""
    if _HEADER_FROM.match(line) or (set(stripped) <= set("_") and len(stripped) >= 10):
        start = index + 1 if set(stripped) <= set("_") else index
        window = [other for other in lines[start:start + 8] if other.strip()]
        if window and _HEADER_FROM.match(window[0]) and any(
            _HEADER_OTHER.match(other) for other in window[1:6]
        ):
            return "header"
    if len(stripped) > 400:
        return ""
    # An attribution may wrap over three lines; it starts with a lead word or a date.
    starts = bool(_LEADS.match(stripped) or re.search(r"\d", stripped))
    for span in (1, 2, 3):
        window = lines[index:index + span]
        if len(window) < span or (
            span > 1 and (not starts or any(not other.strip() for other in window))
        ):
            break
        candidate = " ".join(other.strip() for other in window)
        if len(candidate) > 500:
            break
        if _WROTE_INSIDE.match(candidate) or _DATED_ADDRESS.match(candidate):
            return "wrote"
        if _WROTE.search(candidate) and (
            starts or "@" in candidate or _quote_follows(lines, index + span)
        ):
            return "wrote"
    return ""


def _quote_follows(lines: Sequence[str], index: int) -> bool:
    for line in lines[index:index + 3]:
        if line.strip():
            return line.lstrip().startswith(">")
    return False
