"""Mail in: a shared mailbox read over IMAP, and mail an MTA pushes over LMTP or SMTP.

Every message takes the webhooks' path into the inbox table (source ``email``, ``delivery_id``
the Message-ID, or ``sha256:<hex>`` of the raw bytes for a message without a usable one; the body
is the raw message, byte for byte), and the worker's inbox pass parses it like any delivery.

**Store, then mark.** :meth:`MailboxReader.poll_once` fetches the messages not yet processed
(``UNKEYWORD $EscalierDone``, or ``UNSEEN`` on a server that allows no keywords: its
``PERMANENTFLAGS`` say), fetched with ``BODY.PEEK[]`` so that fetching sets no flag, commits
them to the inbox in one transaction, and only after that commit marks them processed (the
keyword, or ``\\Seen``; then a move to ``processed_folder`` when one is set). A crash between
the commit and the mark leaves them unmarked: the next poll stores them again, the inbox says
"duplicate" (same Message-ID), and they are marked. Nothing is lost, nothing is decided twice.

**Quarantine.** A message that cannot be stored as it is (larger than ``max_message_bytes``, or
one the server will not hand over) is appended to ``quarantine_folder`` with an
``X-Escalier-Quarantine`` header giving the reason (or copied there unchanged when its bytes
cannot be read, or it is larger than 200 MB), and the original is marked; it is never dropped. A message the store cannot take
(the store is down) is not quarantined: it stays unmarked and is read again.

**IDLE.** :meth:`MailboxReader.run` polls, then waits in IDLE where the server offers it (left
and entered again every ``idle_seconds``, 25 minutes by default, under the 30 minutes after which
RFC 2177 lets a server drop an idle client), else sleeps ``poll_seconds``; a failure drops the
connection and tries again after ``poll_seconds``.

**Pushed mail.** :class:`LmtpReceiver` and :class:`SmtpReceiver` (aiosmtpd) listen on a local
port and store each message the same way before they answer ``250``; when the store cannot
commit they answer ``451`` so that the MTA keeps the message and tries again. ``escalier
mail-receiver`` runs one (:mod:`escalier.mail_receiver`).

**Tags as keywords.** A ticket's tags are also kept on its thread's messages in the mailbox, as
IMAP keywords, where the server keeps keywords (``\\*`` in ``PERMANENTFLAGS``):
:func:`tag_keyword` names the keyword of a tag and :func:`thread_message_ids` finds, in the
inbox, the Message-IDs of a thread's messages (the connection sets and removes the keywords).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import imaplib
import logging
import re
import select
import socket
import ssl
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.header import decode_header, make_header
from email.parser import BytesHeaderParser
from email.policy import compat32
from typing import Any, Self

import sqlalchemy
from aiosmtpd.lmtp import LMTP
from aiosmtpd.smtp import SMTP, Envelope, Session
from escalier.connectors.email.message import find_token, thread_token
from escalier.core.errors import (
    AuthError,
    ConnectorError,
    RejectedError,
    StoreError,
    TransientError,
)
from escalier.store import Store, inbox
from escalier.store.schema import inbox as inbox_table
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

__all__ = [
    "DONE_KEYWORD",
    "MAX_KEYWORD_LENGTH",
    "SOURCE",
    "TAG_KEYWORD_PREFIX",
    "ImapSession",
    "LmtpReceiver",
    "MailboxReader",
    "Poll",
    "SmtpReceiver",
    "delivery_for",
    "delivery_id_of",
    "open_imap",
    "tag_keyword",
    "thread_message_ids",
]

log = logging.getLogger("escalier.connectors.email.inbound")

SOURCE = "email"
DONE_KEYWORD = "$EscalierDone"
QUARANTINE_HEADER = "X-Escalier-Quarantine"
# RFC 2177: a server may log an idle client out after 30 minutes; leave and re-enter before.
IDLE_SECONDS = 25 * 60
# The same Message-ID within this window is one delivery, whichever path brought it.
DEDUPE_WINDOW = timedelta(days=30)
MAX_MESSAGE_BYTES = 50 * 1024 * 1024
QUARANTINE_COPY_BYTES = 200 * 1024 * 1024
# Messages fetched and stored per poll; the rest wait for the next one.
BATCH = 50

_MESSAGE_ID = re.compile(r"^<[\x21-\x3b\x3d\x3f-\x7e]{1,253}>$")
_UID = re.compile(rb"UID (\d+)")
_SIZE = re.compile(rb"RFC822\.SIZE (\d+)")
_EXISTS = re.compile(rb"^\* \d+ (EXISTS|RECENT)", re.IGNORECASE)
# References names a reply's thread root (its first id): the thread's messages are found by it.
_KEPT = ("Message-ID", "From", "To", "Subject", "Date", "In-Reply-To", "References")
_IDS = re.compile(r"<([^<>\s]{1,250})>")

# A tag's keyword: this prefix, then the tag with every character but a-z, 0-9, "-" and "."
# written as "_" and the two upper-case hex digits of each of its UTF-8 bytes.
TAG_KEYWORD_PREFIX = "$Esc_"
# Dovecot refuses longer keywords (its mail_max_keyword_length); longer ones end in "~" + a hash.
MAX_KEYWORD_LENGTH = 50
_VERBATIM = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-.")
_DIGEST_CHARS = 8


# --- deliveries ---------------------------------------------------------------------------------


def delivery_id_of(raw: bytes) -> str:
    """The message's Message-ID when it is a usable id, else ``sha256:`` and the hash of the bytes."""
    headers = BytesHeaderParser(policy=compat32).parsebytes(raw, headersonly=True)
    value = headers.get("Message-ID")
    if isinstance(value, str):
        found = " ".join(value.split())
        if _MESSAGE_ID.match(found):
            return found
    return "sha256:" + hashlib.sha256(raw).hexdigest()


def delivery_for(
    raw: bytes,
    *,
    instance: str,
    received_at: datetime,
    transport: str,
    extra: Mapping[str, str] | None = None,
) -> inbox.Delivery:
    """The inbox row of one raw message: the bytes as received and a few envelope headers."""
    parsed = BytesHeaderParser(policy=compat32).parsebytes(raw, headersonly=True)
    headers: dict[str, str] = {"X-Escalier-Transport": transport}
    for name in _KEPT:
        value = parsed.get(name)
        if value is not None:
            headers[name] = " ".join(str(value).split())[:500]
    headers.update(extra or {})
    return inbox.Delivery(
        source=SOURCE, instance=instance, body=raw, headers=headers,
        received_at=received_at, delivery_id=delivery_id_of(raw),
    )


# --- tags as keywords ---------------------------------------------------------------------------


def tag_keyword(tag: str) -> str:
    """The IMAP keyword that carries ``tag`` on a thread's messages: the same for the same tag.

    A keyword is an RFC 3501 atom: ASCII without spaces, controls, ``( ) { % * " \\ ]``.
    Lower-case letters, digits, ``-`` and ``.`` are kept; every other character becomes ``_``
    and the hex of its UTF-8 bytes (``VIP`` is ``$Esc__56_49_50``), so that two tags never share
    a keyword, not even on a server that compares keywords without regard to case. A keyword
    longer than :data:`MAX_KEYWORD_LENGTH` is cut and ends in ``~`` and 8 hex digits of the
    tag's SHA-256.
    """
    encoded = "".join(c if c in _VERBATIM else "".join(f"_{b:02X}" for b in c.encode("utf-8",
                                                                                     "surrogatepass"))
                      for c in tag)
    keyword = TAG_KEYWORD_PREFIX + encoded
    if len(keyword) <= MAX_KEYWORD_LENGTH:
        return keyword
    room = MAX_KEYWORD_LENGTH - len(TAG_KEYWORD_PREFIX) - 1 - _DIGEST_CHARS
    cut = encoded[:room]
    escape = cut.rfind("_")
    if escape > room - 3:  # never half an escape
        cut = cut[:escape]
    digest = hashlib.sha256(tag.encode("utf-8", "surrogatepass")).hexdigest()[:_DIGEST_CHARS]
    return f"{TAG_KEYWORD_PREFIX}{cut}~{digest}"


def _first_id(value: object) -> str | None:
    found = _IDS.search(value) if isinstance(value, str) else None
    return f"<{found.group(1)}>" if found else None


def _decoded(value: object) -> str:
    if not isinstance(value, str):
        return ""
    try:
        return str(make_header(decode_header(value)))
    except (ValueError, LookupError, UnicodeError):
        return value


def thread_message_ids(
    engine: Engine,
    *,
    instance: str,
    ticket_id: str,
    prefix: str,
    known: Sequence[str] = (),
    since: datetime | None = None,
) -> list[str]:
    """The Message-IDs of a thread's messages: ``known`` ones, and those the inbox holds.

    A stored mail (source ``email``, received since ``since``) is of the thread when its
    Message-ID is known, when its subject carries the thread's token, when its root (the first
    id of References, else In-Reply-To) makes the thread's token as
    :func:`~escalier.connectors.email.message.thread_of` does, or when it answers one of the
    thread's messages. Only the stored headers are read, and a message's own bytes only for a
    reply stored without its References.

    :raises StoreError: the inbox could not be read.
    """
    found = list(dict.fromkeys(i for i in known if i))
    members = set(found)
    # sqlalchemy.select: the name select is the standard library's module here (IDLE waits with it).
    query = (sqlalchemy.select(inbox_table.c.id, inbox_table.c.delivery_id, inbox_table.c.headers)
             .where(inbox_table.c.source == SOURCE, inbox_table.c.instance == instance,
                    inbox_table.c.delivery_id.like("<%"))
             .order_by(inbox_table.c.id))
    if since is not None:
        query = query.where(inbox_table.c.received_at >= since)
    try:
        with engine.connect() as connection:
            rows = connection.execute(query).all()
            for row in rows:
                message_id = row.delivery_id
                if message_id in members:
                    continue
                headers = row.headers if isinstance(row.headers, Mapping) else {}
                replied = _first_id(headers.get("In-Reply-To"))
                root = _first_id(headers.get("References"))
                if root is None and replied is not None and "References" not in headers:
                    root = _stored_root(connection, row.id)
                token = find_token(_decoded(headers.get("Subject")), prefix)
                if token is not None:
                    mine = token == ticket_id
                else:
                    mine = thread_token(root or replied or message_id, prefix) == ticket_id
                if mine or (token is None and replied in members):
                    members.add(message_id)
                    found.append(message_id)
    except SQLAlchemyError as exc:
        raise StoreError(f"the inbox could not be read: {type(exc).__name__}") from exc
    return found


def _stored_root(connection: Any, row_id: int) -> str | None:
    """The first id of a stored message's References, read from its bytes."""
    body = connection.execute(sqlalchemy.select(inbox_table.c.body).where(inbox_table.c.id == row_id)).scalar()
    if body is None:
        return None
    parsed = BytesHeaderParser(policy=compat32).parsebytes(bytes(body), headersonly=True)
    return _first_id(" ".join(str(v) for v in parsed.get_all("References") or []))


class _Inbox:
    """Commits deliveries to the inbox table, in this process's turn to write."""

    def __init__(self, engine: Engine, dedupe_window: timedelta):
        self.engine = engine
        self.window = dedupe_window
        self._store = Store(engine)

    def commit(self, deliveries: Sequence[inbox.Delivery]) -> list[inbox.Stored]:
        """Store each delivery that is new; raises StoreError when nothing could be stored."""
        with self._store.writing():
            return inbox.commit_batch(self.engine, deliveries, dedupe_window=self.window)


# --- IMAP ---------------------------------------------------------------------------------------


def _quote(name: str) -> str:
    """A mailbox name as an IMAP quoted string (imaplib sends arguments as given)."""
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _imap_error(exc: BaseException, *, name: str, what: str) -> ConnectorError:
    """The one place where imaplib's and the socket's exceptions become ours."""
    if isinstance(exc, ConnectorError):
        return exc
    if isinstance(exc, (TimeoutError, socket.timeout)):
        return TransientError(f"{name}: {what} timed out", system=SOURCE)
    if isinstance(exc, ssl.SSLError):
        return TransientError(f"{name}: {what} failed: TLS error ({exc.reason})", system=SOURCE)
    if isinstance(exc, (OSError, imaplib.IMAP4.abort, EOFError)):
        return TransientError(
            f"{name}: {what} failed: the connection broke ({type(exc).__name__})", system=SOURCE
        )
    said = " ".join(str(exc).split())[:200]
    return RejectedError(f"{name}: {what} was refused: {said}", system=SOURCE)


class ImapSession:
    """One logged-in IMAP connection, and the few commands Escalier needs, errors translated."""

    def __init__(self, imap: imaplib.IMAP4, *, name: str, timeout: float):
        self.imap = imap
        self.name = name
        self.timeout = timeout
        self.selected: str | None = None
        # Processed mail can be marked with our keyword ($EscalierDone among PERMANENTFLAGS will do).
        self.keywords = False
        # Any new keyword sticks (\* among PERMANENTFLAGS): tags can be kept as keywords.
        self.any_keyword = False

    @property
    def capabilities(self) -> frozenset[str]:
        """What the server said it can do, upper case."""
        return frozenset(str(c).upper() for c in self.imap.capabilities)

    def call(self, what: str, command: Callable[[], tuple[str, list[Any]]]) -> list[Any]:
        """Run one imaplib command; NO and BAD answers and broken connections raise ours."""
        try:
            typ, data = command()
        except (imaplib.IMAP4.error, OSError, EOFError) as exc:
            raise _imap_error(exc, name=self.name, what=what) from exc
        if typ != "OK":
            said = b" ".join(d for d in data if isinstance(d, bytes)).decode("utf-8", "replace")
            raise RejectedError(f"{self.name}: {what} was refused: {said[:200]}", system=SOURCE)
        return data

    def uid(self, command: str, *args: str) -> list[Any]:
        """``UID <command> ...``, including the commands imaplib does not know (MOVE, EXPUNGE)."""
        what = f"UID {command}"
        if command in imaplib.Commands and command not in ("EXPUNGE",):
            return self.call(what, lambda: self.imap.uid(command, *args))
        # imaplib's uid() refuses commands it does not list; the protocol layer below does not.
        return self.call(what, lambda: self.imap._simple_command("UID", command, *args))

    def select(self, folder: str, *, readonly: bool = False) -> int:
        """Select ``folder``; returns how many messages it holds, and learns whether keywords stick."""
        data = self.call(f"SELECT {folder}", lambda: self.imap.select(_quote(folder), readonly=readonly))
        self.selected = folder
        flags = b" ".join(f for f in (self.imap.untagged_responses.get("PERMANENTFLAGS") or [])
                          if isinstance(f, bytes))
        self.any_keyword = b"\\*" in flags
        self.keywords = self.any_keyword or DONE_KEYWORD.encode() in flags
        try:
            return int(data[0]) if data and data[0] else 0
        except (TypeError, ValueError):
            return 0

    def has_folder(self, folder: str) -> bool:
        """True when ``folder`` exists."""
        # The reference is an empty quoted string: imaplib sends an empty one as nothing at all.
        typ, found = self._quiet(lambda: self.imap.list('""', _quote(folder)))
        return typ == "OK" and any(item for item in found or () if item)

    def ensure_folder(self, folder: str) -> None:
        """Create ``folder`` unless it exists."""
        if not self.has_folder(folder):
            self._quiet(lambda: self.imap.create(_quote(folder)))

    def _quiet(self, command: Callable[[], tuple[str, list[Any]]]) -> tuple[str, list[Any]]:
        try:
            return command()
        except imaplib.IMAP4.abort as exc:
            raise _imap_error(exc, name=self.name, what="IMAP") from exc
        except imaplib.IMAP4.error as exc:
            return "NO", [str(exc).encode()]
        except OSError as exc:
            raise _imap_error(exc, name=self.name, what="IMAP") from exc

    def append(self, folder: str, message: bytes, *, flags: str = "(\\Seen)") -> None:
        """Append ``message`` to ``folder``, creating the folder when the server asks to."""
        what = f"APPEND to {folder}"
        typ, _ = self._quiet(lambda: self.imap.append(_quote(folder), flags, None, message))
        if typ != "OK":
            self.ensure_folder(folder)
            self.call(what, lambda: self.imap.append(_quote(folder), flags, None, message))

    def search_header(self, name: str, value: str) -> list[str]:
        """UIDs of the selected folder's messages whose header ``name`` contains ``value``."""
        data = self.uid("SEARCH", "HEADER", name, _quote(value))
        return [part.decode() for part in (data[0] or b"").split()] if data else []

    def store_keywords(self, uids: Sequence[str], keywords: Sequence[str], *, add: bool) -> None:
        """Set (``add``) or clear ``keywords`` on the selected folder's messages ``uids``.

        Either way the same command twice leaves the same flags: a retry needs no look first.
        """
        if uids and keywords:
            self.uid("STORE", ",".join(uids), "+FLAGS.SILENT" if add else "-FLAGS.SILENT",
                     f"({' '.join(keywords)})")

    def close(self) -> None:
        """Log out; a connection already broken is just dropped."""
        with contextlib.suppress(imaplib.IMAP4.error, OSError, EOFError):
            self.imap.logout()
        with contextlib.suppress(OSError):
            self.imap.shutdown()


def open_imap(
    settings: Any,
    environ: Mapping[str, str],
    *,
    name: str,
    timeout: float,
    ssl_context: ssl.SSLContext | None = None,
) -> ImapSession:
    """Connect (``ssl``, ``starttls`` or ``none``) and log in to the server of ``settings``.

    :raises AuthError: the server refused the credentials.
    :raises TransientError: the server could not be reached, timed out or broke the connection.
    """
    password = settings.password.reveal(environ) if settings.password is not None else ""
    what = f"connecting to {settings.host}:{settings.port}"
    context = ssl_context or ssl.create_default_context()
    try:
        if settings.security == "ssl":
            imap: imaplib.IMAP4 = imaplib.IMAP4_SSL(settings.host, settings.port,
                                                    ssl_context=context, timeout=timeout)
        else:
            imap = imaplib.IMAP4(settings.host, settings.port, timeout=timeout)
            if settings.security == "starttls":
                imap.starttls(ssl_context=context)
    except (imaplib.IMAP4.error, OSError, EOFError) as exc:
        raise _imap_error(exc, name=name, what=what) from exc
    session = ImapSession(imap, name=name, timeout=timeout)
    try:
        imap.login(settings.username, password)
    except imaplib.IMAP4.abort as exc:
        session.close()
        raise _imap_error(exc, name=name, what="LOGIN") from exc
    except imaplib.IMAP4.error as exc:
        session.close()
        # The server's words, never the password: imaplib quotes only the server's answer.
        said = " ".join(str(exc).split())[:200]
        raise AuthError(f"{name}: IMAP login as {settings.username} was refused: {said}",
                        system=SOURCE) from exc
    except OSError as exc:
        session.close()
        raise _imap_error(exc, name=name, what="LOGIN") from exc
    # Servers announce more after login (MOVE, UIDPLUS); imaplib keeps what it heard before.
    data = session.call("CAPABILITY", imap.capability)
    if data and isinstance(data[-1], bytes):
        imap.capabilities = tuple(data[-1].decode("ascii", "replace").upper().split())
    return session


# --- the reader ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Poll:
    """What one poll of the mailbox did."""

    stored: int = 0
    duplicates: int = 0
    quarantined: int = 0
    marked: int = 0
    more: bool = False


class MailboxReader:
    """Reads the shared mailbox into the inbox: store first, then mark; IDLE or polling in :meth:`run`.

    Options not given here come from ``settings`` when it defines them (``processed_folder``,
    ``quarantine_folder``, ``poll_seconds``, ``max_message_bytes``), else the defaults below.
    One reader uses one IMAP connection: call it from one thread at a time.
    """

    def __init__(
        self,
        settings: Any,
        environ: Mapping[str, str],
        *,
        store_engine: Engine,
        instance: str = "default",
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        timeout: float = 30.0,
        poll_seconds: float | None = None,
        idle_seconds: float = IDLE_SECONDS,
        processed_folder: str | None = None,
        quarantine_folder: str | None = None,
        max_message_bytes: int | None = None,
        batch: int = BATCH,
        dedupe_window: timedelta = DEDUPE_WINDOW,
        ssl_context: ssl.SSLContext | None = None,
    ):
        self.settings = settings
        self.instance = instance
        self.name = f"{SOURCE}/{instance}"
        self._environ = environ
        self._inbox = _Inbox(store_engine, dedupe_window)
        self._clock = clock
        self.timeout = timeout
        self.poll_seconds = float(poll_seconds if poll_seconds is not None else settings.poll_seconds)
        self.idle_seconds = idle_seconds
        self.processed_folder = processed_folder or settings.processed_folder
        self.quarantine_folder = quarantine_folder or settings.quarantine_folder
        self.max_message_bytes = int(max_message_bytes or settings.max_message_bytes)
        self.batch = batch
        self._ssl_context = ssl_context
        self._session: ImapSession | None = None
        self._lock = threading.RLock()
        # Which way processed messages are marked, learned from the folder's PERMANENTFLAGS.
        self.marks_with: str | None = None

    def __repr__(self) -> str:
        return f"MailboxReader({self.name}, {self.settings.host}:{self.settings.port}/{self.settings.folder})"

    # the connection

    def _open(self) -> ImapSession:
        if self._session is None:
            session = open_imap(self.settings, self._environ, name=self.name, timeout=self.timeout,
                                ssl_context=self._ssl_context)
            try:
                session.select(self.settings.folder)
            except ConnectorError:
                session.close()
                raise
            self.marks_with = DONE_KEYWORD if session.keywords else "\\Seen"
            self._session = session
            log.info("email.inbound.connected",
                     extra={"instance": self.instance, "folder": self.settings.folder,
                            "marks_with": self.marks_with,
                            "idle": "IDLE" in session.capabilities})
        return self._session

    def close(self) -> None:
        """Log out of the mailbox."""
        with self._lock:
            if self._session is not None:
                self._session.close()
                self._session = None

    def _drop(self) -> None:
        if self._session is not None:
            with contextlib.suppress(OSError):
                self._session.imap.shutdown()
            self._session = None

    # polling

    def poll_once(self) -> Poll:
        """Store every unprocessed message (up to ``batch``), then mark them processed.

        :raises ConnectorError: the mailbox could not be read or marked (what was stored stays).
        :raises StoreError: the inbox could not commit; nothing was marked.
        """
        with self._lock:
            try:
                return self._poll()
            except (ConnectorError, StoreError):
                self._drop()  # a fresh connection next time; the unmarked messages are read again
                raise

    def _poll(self) -> Poll:
        session = self._open()
        # A selected folder's view moves on only at a command that syncs it: dovecot's SEARCH
        # does not see mail delivered since the last one, NOOP does.
        session.call("NOOP", session.imap.noop)
        criteria = ("UNKEYWORD", DONE_KEYWORD) if self.marks_with == DONE_KEYWORD else ("UNSEEN",)
        data = session.uid("SEARCH", *criteria, "UNDELETED")
        uids = [part.decode() for part in (data[0] or b"").split()] if data else []
        more = len(uids) > self.batch
        uids = uids[: self.batch]
        if not uids:
            return Poll()
        sizes = self._sizes(session, uids)
        fetched: dict[str, bytes] = {}
        refused: dict[str, str] = {}
        for uid in uids:
            size = sizes.get(uid)
            if size is not None and size > self.max_message_bytes:
                refused[uid] = f"larger than {self.max_message_bytes} bytes ({size})"
                continue
            raw = self._fetch(session, uid)
            if raw is None:
                refused[uid] = "the server did not hand over its content"
            else:
                fetched[uid] = raw
        now = self._clock()
        order = list(fetched)
        deliveries = [
            delivery_for(fetched[uid], instance=self.instance, received_at=now, transport="imap",
                         extra={"X-Escalier-Folder": self.settings.folder[:200],
                                "X-Escalier-Uid": uid})
            for uid in order
        ]
        outcomes = self._inbox.commit(deliveries)  # StoreError: nothing is marked
        stored = sum(1 for o in outcomes if o.status == "stored")
        duplicates = len(outcomes) - stored
        for uid, delivery, outcome in zip(order, deliveries, outcomes, strict=True):
            log.info("email.inbound.stored" if outcome.status == "stored" else "email.inbound.duplicate",
                     extra={"instance": self.instance, "uid": uid, "delivery_id": delivery.delivery_id,
                            "inbox_id": outcome.id})
        for uid, reason in refused.items():
            size = sizes.get(uid)
            # A copy with the reason in a header needs the bytes once; past this, copied as it is.
            raw = self._fetch(session, uid) if size is not None and size <= QUARANTINE_COPY_BYTES else None
            self._quarantine(session, uid, raw, reason)
        self._mark(session, [*order, *refused])
        return Poll(stored=stored, duplicates=duplicates, quarantined=len(refused),
                    marked=len(order) + len(refused), more=more)

    def _sizes(self, session: ImapSession, uids: Sequence[str]) -> dict[str, int]:
        data = session.uid("FETCH", ",".join(uids), "(UID RFC822.SIZE)")
        sizes: dict[str, int] = {}
        for item in data:
            line = item[0] if isinstance(item, tuple) else item
            if not isinstance(line, bytes):
                continue
            uid, size = _UID.search(line), _SIZE.search(line)
            if uid and size:
                sizes[uid.group(1).decode()] = int(size.group(1))
        return sizes

    def _fetch(self, session: ImapSession, uid: str) -> bytes | None:
        # PEEK: fetching must not set \Seen, which marks a message processed where keywords are refused.
        try:
            data = session.uid("FETCH", uid, "(UID BODY.PEEK[])")
        except RejectedError as exc:
            log.warning("email.inbound.unfetchable", extra={"instance": self.instance, "uid": uid,
                                                           "error": str(exc)})
            return None
        for item in data:
            if isinstance(item, tuple) and len(item) == 2 and isinstance(item[1], bytes):
                found = _UID.search(item[0])
                if found is None or found.group(1).decode() == uid:
                    return item[1]
        return None

    def _quarantine(self, session: ImapSession, uid: str, raw: bytes | None, reason: str) -> None:
        """Put a copy of the message in the quarantine folder with the reason; it is marked after."""
        folder = self.quarantine_folder
        if raw is not None:
            header = f"{QUARANTINE_HEADER}: {' '.join(reason.split())[:900]}\r\n".encode()
            session.append(folder, header + raw)
        else:
            session.ensure_folder(folder)
            session.uid("COPY", uid, _quote(folder))
        log.warning("email.inbound.quarantined",
                    extra={"instance": self.instance, "uid": uid, "folder": folder, "reason": reason})

    def _mark(self, session: ImapSession, uids: Sequence[str]) -> None:
        if not uids:
            return
        uid_set = ",".join(uids)
        flag = DONE_KEYWORD if self.marks_with == DONE_KEYWORD else "\\Seen"
        session.uid("STORE", uid_set, "+FLAGS.SILENT", f"({flag})")
        if self.processed_folder:
            self._move(session, uid_set, self.processed_folder)

    def _move(self, session: ImapSession, uid_set: str, folder: str) -> None:
        session.ensure_folder(folder)
        if "MOVE" in session.capabilities:
            session.uid("MOVE", uid_set, _quote(folder))
            return
        session.uid("COPY", uid_set, _quote(folder))
        session.uid("STORE", uid_set, "+FLAGS.SILENT", "(\\Deleted)")
        if "UIDPLUS" in session.capabilities:
            session.uid("EXPUNGE", uid_set)
        else:
            # Without UIDPLUS an EXPUNGE also removes what someone else marked deleted: rare in a
            # mailbox Escalier owns, and the copy is in the processed folder already.
            session.call("EXPUNGE", session.imap.expunge)

    # waiting

    def run(self, stop: threading.Event) -> None:
        """Poll, then wait in IDLE (or ``poll_seconds``), until ``stop`` is set; failures retry."""
        log.info("email.inbound.started", extra={"instance": self.instance})
        try:
            while not stop.is_set():
                try:
                    result = self.poll_once()
                    if result.more:
                        continue
                    self.wait(stop)
                except (ConnectorError, StoreError) as exc:
                    log.warning("email.inbound.failed",
                                extra={"instance": self.instance, "error": str(exc),
                                       "retry_in": self.poll_seconds})
                    stop.wait(self.poll_seconds)
        finally:
            self.close()
            log.info("email.inbound.stopped", extra={"instance": self.instance})

    def wait(self, stop: threading.Event) -> bool:
        """Wait for new mail: IDLE where offered (up to ``idle_seconds``), else ``poll_seconds``.

        :returns: True when the server announced mail, False after a timeout or a stop.
        """
        with self._lock:
            session = self._open()
            if "IDLE" in session.capabilities:
                return self._idle(session, stop)
        stop.wait(self.poll_seconds)
        return False

    def _idle(self, session: ImapSession, stop: threading.Event) -> bool:
        imap = session.imap
        deadline = time.monotonic() + self.idle_seconds
        woke = False
        try:
            tag = imap._new_tag()
            imap.send(tag + b" IDLE\r\n")
            first = imap._get_line()
            if not first.startswith(b"+"):
                raise RejectedError(f"{self.name}: IDLE was refused: {first[:200]!r}", system=SOURCE)
            while not stop.is_set() and time.monotonic() < deadline:
                if not self._readable(imap, min(1.0, max(0.0, deadline - time.monotonic()))):
                    continue
                line = imap._get_line()
                if _EXISTS.match(line):
                    woke = True
                    break
            imap.send(b"DONE\r\n")
            while True:
                line = imap._get_line()
                if line.startswith(tag):
                    break
        except (imaplib.IMAP4.error, OSError, EOFError) as exc:
            self._drop()
            raise _imap_error(exc, name=self.name, what="IDLE") from exc
        log.debug("email.inbound.idle_ended", extra={"instance": self.instance, "woke": woke})
        return woke

    @staticmethod
    def _readable(imap: imaplib.IMAP4, timeout: float) -> bool:
        sock = imap.sock
        if isinstance(sock, ssl.SSLSocket) and sock.pending():
            return True
        ready, _, _ = select.select([sock], [], [], timeout)
        return bool(ready)


# --- pushed mail ----------------------------------------------------------------------------------


class _Handler:
    """aiosmtpd's handler: store the message, then answer; 451 when the store cannot commit."""

    def __init__(self, receiver: _Receiver):
        self.receiver = receiver

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        raw = envelope.original_content or b""
        if isinstance(raw, str):
            raw = raw.encode("utf-8", "surrogateescape")
        loop = asyncio.get_running_loop()
        answer = await loop.run_in_executor(
            None, self.receiver.store, raw, envelope.mail_from or "", list(envelope.rcpt_tos)
        )
        # LMTP answers once per recipient (RFC 2033 section 4.2); SMTP once.
        count = len(envelope.rcpt_tos) if self.receiver.lmtp else 1
        return "\r\n".join([answer] * max(1, count))


class _Receiver:
    """A local LMTP or SMTP listener, on its own event loop in a thread."""

    lmtp = False
    transport = "smtp"

    def __init__(
        self,
        *,
        store_engine: Engine,
        instance: str = "default",
        host: str = "127.0.0.1",
        port: int = 0,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        data_size_limit: int = MAX_MESSAGE_BYTES,
        dedupe_window: timedelta = DEDUPE_WINDOW,
    ):
        self.instance = instance
        self.host = host
        self.port = port
        self._inbox = _Inbox(store_engine, dedupe_window)
        self._clock = clock
        self._limit = data_size_limit
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.AbstractServer | None = None
        self._thread: threading.Thread | None = None
        # What the MTA was answered since the start: 250 (stored, or a duplicate), 451.
        self.stored = 0
        self.duplicates = 0
        self.deferred = 0
        self._counting = threading.Lock()  # messages are stored on the loop's executor threads

    def store(self, raw: bytes, mail_from: str, rcpt_tos: list[str]) -> str:
        """Store one message; the answer to give the MTA."""
        delivery = delivery_for(
            raw, instance=self.instance, received_at=self._clock(), transport=self.transport,
            extra={"X-Envelope-From": mail_from[:255], "X-Envelope-To": ", ".join(rcpt_tos)[:500]},
        )
        try:
            [outcome] = self._inbox.commit([delivery])
        except StoreError as exc:
            log.error("email.receiver.store_failed",
                      extra={"instance": self.instance, "transport": self.transport,
                             "delivery_id": delivery.delivery_id, "error": str(exc)})
            with self._counting:
                self.deferred += 1
            return "451 4.3.0 Could not store the message; try again later"
        with self._counting:
            if outcome.status == "stored":
                self.stored += 1
            else:
                self.duplicates += 1
        log.info("email.receiver.stored",
                 extra={"instance": self.instance, "transport": self.transport,
                        "delivery_id": delivery.delivery_id, "status": outcome.status,
                        "inbox_id": outcome.id})
        return "250 2.0.0 Stored"

    def _protocol(self) -> SMTP:
        kind = LMTP if self.lmtp else SMTP
        return kind(_Handler(self), data_size_limit=self._limit, enable_SMTPUTF8=True,
                    decode_data=False, hostname="escalier", ident="Escalier mail receiver")

    def start(self) -> Self:
        """Listen on ``host:port`` (a free port when 0; :attr:`port` then says which)."""
        loop = asyncio.new_event_loop()
        try:
            server = loop.run_until_complete(loop.create_server(self._protocol, self.host, self.port))
        except BaseException:
            loop.close()  # OSError: the address is taken or not this machine's
            raise
        self.port = server.sockets[0].getsockname()[1]
        self._loop, self._server = loop, server
        self._thread = threading.Thread(target=loop.run_forever, name=f"escalier-{self.transport}",
                                        daemon=True)
        self._thread.start()
        log.info("email.receiver.listening",
                 extra={"instance": self.instance, "transport": self.transport,
                        "host": self.host, "port": self.port})
        return self

    def stop(self) -> None:
        """Stop listening and end the loop's thread."""
        loop, server, thread = self._loop, self._server, self._thread
        if loop is None or server is None or thread is None:
            return

        async def shut() -> None:
            server.close()
            await server.wait_closed()

        with contextlib.suppress(RuntimeError, TimeoutError):
            asyncio.run_coroutine_threadsafe(shut(), loop).result(timeout=5)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=5)
        loop.close()
        self._loop = self._server = self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class LmtpReceiver(_Receiver):
    """Mail an MTA delivers over LMTP (Postfix's ``mailbox_transport = lmtp:inet:host:port``)."""

    lmtp = True
    transport = "lmtp"


class SmtpReceiver(_Receiver):
    """Mail an MTA relays over SMTP to a local port."""
