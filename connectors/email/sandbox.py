"""A mail server in memory, on 127.0.0.1: SMTP in, mailboxes read over IMAP, nothing to configure.

``escalier sandbox email`` starts it for the demo and a newcomer's first run; the tests start it
directly. It is pure Python, so it works wherever Escalier installs:

- **SMTP** (aiosmtpd) with ``AUTH PLAIN``/``LOGIN``, ``SIZE``, ``8BITMIME`` and ``SMTPUTF8``. Mail
  for ``user@domain`` (``user+tag@domain`` too) lands in that user's INBOX; with ``catch_all``
  every other recipient gets a mailbox of its own, keyed by address, that a test reads back, so
  what Escalier sends a customer can be checked. Delivery adds ``Return-Path``, ``Delivered-To``
  and ``Received`` as a real delivery agent does, and a ``Message-ID`` where the sender gave none.
- **IMAP4rev1** (RFC 3501), written here, with ``IDLE`` (RFC 2177), ``UIDPLUS`` (RFC 4315),
  ``MOVE`` (RFC 6851), ``LITERAL+``, ``SASL-IR``, ``UNSELECT``, ``NAMESPACE``, ``CHILDREN`` and
  keywords (``$EscalierDone``, and the ``$Esc_`` keywords of tags; up to 50 characters, as
  dovecot allows): enough for :mod:`imaplib` and for a client that polls or idles.
  Fetching MIME parts by number and ``BODYSTRUCTURE`` are not offered.

Both speak plain text without TLS, which is only acceptable on loopback: the policy snippet says
``security: none``. Like the HTTP sandboxes it counts the commands it receives (:meth:`calls`),
fails on purpose (:meth:`MailSandbox.inject_fault`, :meth:`MailSandbox.slow`) and forgets
everything on :meth:`MailSandbox.reset`. It is thread-safe; mail lives in memory only.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import functools
import re
import select
import signal
import socket
import socketserver
import threading
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta, timezone
from email import policy as email_policy
from email.header import decode_header, make_header
from email.message import EmailMessage
from email.parser import BytesHeaderParser, BytesParser
from email.utils import formatdate, getaddresses, parsedate_to_datetime
from typing import Any, Self, TextIO

from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword, Session

__all__ = ["DEFAULT_PASSWORD", "MailFault", "MailSandbox", "SentMail", "StoredMail"]

DEFAULT_PASSWORD = "sandbox-password"
DEFAULT_USERS: Mapping[str, str] = {"support": DEFAULT_PASSWORD, "escalations": DEFAULT_PASSWORD}
INBOX = "INBOX"
DELIMITER = "/"
PROTOCOLS = ("smtp", "imap")
DEFAULT_REPLIES = {
    "smtp": "451 4.3.0 Temporary failure, please try again later",
    "imap": "NO [UNAVAILABLE] Temporary failure, please try again later",
}

_CAPABILITIES = (
    "IMAP4rev1 LITERAL+ SASL-IR IDLE UIDPLUS MOVE UNSELECT NAMESPACE CHILDREN AUTH=PLAIN"
)
_SYSTEM_FLAGS = ("\\Answered", "\\Flagged", "\\Deleted", "\\Seen", "\\Draft")
_SYSTEM_BY_LOWER = {flag.lower(): flag for flag in _SYSTEM_FLAGS}
_KEYWORD = re.compile(r'[^\x00-\x20\x7f(){%*"\\\]]+')
# Dovecot refuses longer keywords (its mail_max_keyword_length); so does the sandbox.
MAX_KEYWORD_LENGTH = 50
_LITERAL_AT_END = re.compile(rb"\{(\d+)(\+?)\}$")
_SEQUENCE_SET = re.compile(r"(\d+|\*)(:(\d+|\*))?(,(\d+|\*)(:(\d+|\*))?)*")
_SECTION = re.compile(
    r"(?P<name>BODY\.PEEK|BODY|BINARY\.PEEK|BINARY)\[(?P<section>[^\]]*)\]"
    r"(?:<(?P<start>\d+)(?:\.(?P<length>\d+))?>)?",
    re.IGNORECASE,
)
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_DATE_TIME = re.compile(
    r"\s?(\d{1,2})-([A-Za-z]{3})-(\d{4}) (\d{2}):(\d{2}):(\d{2}) ([+-])(\d{2})(\d{2})"
)
_SEARCH_DATE = re.compile(r"(\d{1,2})-([A-Za-z]{3})-(\d{4})")
# A line (or literal) longer than these is an attack or a bug, not mail.
_MAX_LINE = 64 * 1024
_MAX_LITERAL = 64 * 1024 * 1024


# --- what a test reads back ----------------------------------------------------------------------


@dataclass(frozen=True)
class StoredMail:
    """One message in a sandbox mailbox, as a test reads it back."""

    uid: int
    flags: frozenset[str]
    keywords: frozenset[str]
    raw: bytes
    internal_date: datetime

    @property
    def headers(self) -> EmailMessage:
        """The header section, parsed (``mail.headers["Subject"]``)."""
        return _parse_headers(self.raw)

    @property
    def message(self) -> EmailMessage:
        """The whole message, parsed."""
        return _parse_message(self.raw)

    @property
    def message_id(self) -> str | None:
        """The ``Message-ID`` header, if there is one."""
        return _header_value(_split(self.raw)[0], "Message-ID")

    @property
    def subject(self) -> str:
        """The decoded ``Subject`` ('' if there is none)."""
        return _decoded(_header_value(_split(self.raw)[0], "Subject") or "")


@dataclass(frozen=True)
class SentMail:
    """One message the SMTP server accepted: the envelope and the bytes as they came."""

    mail_from: str
    rcpt_tos: tuple[str, ...]
    raw: bytes
    message_id: str
    accepted_at: datetime
    authenticated_as: str | None = None
    delivered_to: tuple[str, ...] = ()

    @property
    def headers(self) -> EmailMessage:
        """The header section, parsed."""
        return _parse_headers(self.raw)

    @property
    def message(self) -> EmailMessage:
        """The whole message, parsed."""
        return _parse_message(self.raw)

    @property
    def subject(self) -> str:
        """The decoded ``Subject`` ('' if there is none)."""
        return _decoded(_header_value(_split(self.raw)[0], "Subject") or "")


@dataclass
class MailFault:
    """The next ``count`` matching commands get ``reply`` instead of being carried out.

    ``command`` is an SMTP verb (``DATA``, ``RCPT``...) or an IMAP command (``UID FETCH``,
    ``LOGIN``...), None for any. An SMTP reply starting ``421`` and an IMAP reply starting
    ``BYE`` also close the connection, as a server going away does. An SMTP ``DATA`` fault
    answers after the message was sent, where a real server refuses it.
    """

    protocol: str
    command: str | None
    reply: str
    count: int = 1

    def matches(self, protocol: str, command: str) -> bool:
        """Whether ``command`` spoken in ``protocol`` is one this fault is for."""
        return self.protocol == protocol and (self.command is None or self.command == command)


# --- the state -----------------------------------------------------------------------------------


@dataclass(eq=False)
class _Message:
    uid: int
    raw: bytes
    flags: set[str]
    internal_date: datetime
    recent: bool = True


@dataclass(eq=False)
class _Folder:
    name: str
    uidvalidity: int
    uidnext: int = 1
    messages: list[_Message] = field(default_factory=list)
    # Every keyword used here, by its lower-case form: IMAP keywords are case-insensitive.
    keywords: dict[str, str] = field(default_factory=dict)
    subscribed: bool = True

    def keyword(self, name: str) -> str:
        """The spelling this folder uses for keyword ``name``, adopting it if new."""
        return self.keywords.setdefault(name.lower(), name)

    def add(self, raw: bytes, flags: set[str], when: datetime) -> _Message:
        message = _Message(self.uidnext, raw, flags, when)
        self.uidnext += 1
        self.messages.append(message)
        return message


class MailSandbox:
    """An SMTP server and an IMAP server on loopback sharing mailboxes held in memory."""

    name = "email"

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        smtp_port: int = 0,
        imap_port: int = 0,
        users: Mapping[str, str] | None = None,
        domain: str = "northwind.example",
        catch_all: bool = True,
        require_auth: bool = True,
        max_message_size: int = 32 * 1024 * 1024,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        users = dict(DEFAULT_USERS if users is None else users)
        if not users:
            raise ValueError("the mail sandbox needs at least one user")
        for login in users:
            if not login or "@" in login or any(c.isspace() for c in login):
                raise ValueError(f"a user login is a bare name without '@' or spaces: {login!r}")
        self._host = host
        self._smtp_port = smtp_port
        self._imap_port = imap_port
        self.users: dict[str, str] = users
        self.domain = domain.lower()
        self.catch_all = catch_all
        self.require_auth = require_auth
        self.max_message_size = max_message_size
        self._clock = clock or (lambda: datetime.now(UTC))
        self.lock = threading.RLock()
        self._sent_changed = threading.Condition(self.lock)
        self._stopping = threading.Event()
        self._listeners: list[Callable[[SentMail], None]] = []
        self._sessions: set[_ImapSession] = set()
        self._imap_server: _ImapServer | None = None
        self._imap_thread: threading.Thread | None = None
        self._smtp_loop: asyncio.AbstractEventLoop | None = None
        self._smtp_thread: threading.Thread | None = None
        self._smtp_connections: set[_SandboxSMTP] = set()
        self._next_uidvalidity = int(self._clock().timestamp())
        self._delay = 0.0
        self._clear()

    # --- life ----------------------------------------------------------------------------------

    def start(self) -> Self:
        """Listen for SMTP and IMAP (port 0: a free port each); returns self."""
        if self._imap_server is not None:
            return self
        self._stopping.clear()
        self._imap_server = _ImapServer((self._host, self._imap_port), self)
        self._imap_port = self._imap_server.server_address[1]
        self._imap_thread = threading.Thread(
            target=self._imap_server.serve_forever,
            kwargs={"poll_interval": 0.1},
            name="mail-sandbox-imap",
            daemon=True,
        )
        self._imap_thread.start()
        try:
            self._start_smtp()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop both servers and drop their connections; the mailboxes stay readable."""
        self._stopping.set()
        if self._imap_server is not None:
            self._imap_server.shutdown()
            self._imap_server.server_close()
            self._imap_server = None
        with self.lock:
            sessions = list(self._sessions)
        for session in sessions:
            session.abort()
        if self._imap_thread is not None:
            self._imap_thread.join(timeout=5)
            self._imap_thread = None
        loop, self._smtp_loop = self._smtp_loop, None
        if loop is not None and self._smtp_thread is not None:
            loop.call_soon_threadsafe(loop.stop)
            self._smtp_thread.join(timeout=5)
        self._smtp_thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def host(self) -> str:
        """The address both servers listen on."""
        return self._host

    @property
    def smtp_port(self) -> int:
        """The SMTP port (the one asked for until :meth:`start`)."""
        return self._smtp_port

    @property
    def imap_port(self) -> int:
        """The IMAP port (the one asked for until :meth:`start`)."""
        return self._imap_port

    def now(self) -> datetime:
        """The sandbox's clock (timezone-aware)."""
        return self._clock()

    def address(self, user: str) -> str:
        """The mail address of local ``user``."""
        return f"{user}@{self.domain}"

    # --- what to paste -------------------------------------------------------------------------

    def policy_snippet(self) -> str:
        """The ``connectors: email:`` block pointing at this sandbox, and what to export."""
        user = "support" if "support" in self.users else next(iter(self.users))
        mailboxes = "".join(
            f"  {login:<14} {self.address(login):<32} password: {password}\n"
            for login, password in self.users.items()
        )
        target = next((login for login in self.users if login != user), None)
        target_hint = (
            f"\nA tier's mail target, e.g.:  email: {{address: {self.address(target)}}}\n"
            if target
            else ""
        )
        return (
            "In the policy file:\n"
            "connectors:\n"
            "  email:\n"
            f"    from_address: {self.address(user)}\n"
            "    smtp:\n"
            f"      host: {self._host}\n"
            f"      port: {self._smtp_port}\n"
            "      security: none  # the sandbox speaks plain SMTP, on loopback only\n"
            f"      username: {user}\n"
            "      password: ${SMTP_PASSWORD}\n"
            "    imap:\n"
            f"      host: {self._host}\n"
            f"      port: {self._imap_port}\n"
            "      security: none  # plain IMAP, on loopback only\n"
            f"      username: {user}\n"
            "      password: ${IMAP_PASSWORD}\n"
            "\nand in the shell:\n"
            f"  export SMTP_PASSWORD={self.users[user]}\n"
            f"  export IMAP_PASSWORD={self.users[user]}\n"
            "\nMailboxes on this server (log in over IMAP with the login):\n"
            f"{mailboxes}"
            f"{target_hint}"
        )

    # --- Python helpers ------------------------------------------------------------------------

    def deliver(self, message: bytes | EmailMessage, *, to: str | None = None) -> str:
        """Put ``message`` in a mailbox as if it had arrived; returns its Message-ID.

        ``to`` is a login or an address; by default the message's To and Cc recipients, or the
        first user when it names none. The bytes are kept as given (line ends made CRLF), with a
        ``Message-ID`` added if missing.
        """
        raw = (
            message.as_bytes(policy=email_policy.SMTP)
            if isinstance(message, EmailMessage)
            else message
        )
        raw, message_id = _with_message_id(_crlf(bytes(raw)), self.domain)
        if to is not None:
            owners = [self._owner_of(to, accept_any=True)]
        else:
            headers = _parse_headers(raw)
            named = [
                addr
                for _, addr in getaddresses(
                    [str(v) for v in (headers.get_all("To") or []) + (headers.get_all("Cc") or [])]
                )
                if addr
            ]
            owners = [self._owner_of(addr, accept_any=True) for addr in named]
            owners = [o for o in owners if o] or [next(iter(self.users))]
        with self.lock:
            for owner in dict.fromkeys(o for o in owners if o):
                self._store(owner, INBOX, raw)
        return message_id

    def mailbox(self, user: str, folder: str = INBOX) -> list[StoredMail]:
        """The messages in ``folder`` of ``user`` (a login or any address), oldest first.

        :raises KeyError: when that user has no such folder (an address nobody wrote to has an
            empty INBOX).
        """
        owner = self._owner_of(user, accept_any=True) or user.lower()
        with self.lock:
            folders = self._boxes.get(owner)
            if folders is None and _folder_key(folder) == INBOX:
                return []
            box = (folders or {}).get(_folder_key(folder))
            if box is None:
                raise KeyError(f"{user} has no folder {folder!r}")
            return [_stored(m) for m in box.messages]

    def folders(self, user: str) -> list[str]:
        """The folders of ``user``, sorted."""
        owner = self._owner_of(user, accept_any=True) or user.lower()
        with self.lock:
            return sorted(self._boxes.get(owner, {INBOX: None}))

    def create_folder(self, user: str, folder: str) -> None:
        """Create ``folder`` (and its parents) for ``user`` if it does not exist."""
        owner = self._owner_of(user, accept_any=True) or user.lower()
        with self.lock:
            self._create(owner, folder)

    def sent(self) -> list[SentMail]:
        """Everything the SMTP server accepted, in order."""
        with self.lock:
            return list(self._sent)

    def wait_for_sent(self, count: int, timeout: float = 5.0) -> bool:
        """Block until the SMTP server has accepted ``count`` messages; False on timeout."""
        with self._sent_changed:
            return self._sent_changed.wait_for(lambda: len(self._sent) >= count, timeout)

    def on_message(self, callback: Callable[[SentMail], None]) -> None:
        """Call ``callback`` with each message the SMTP server accepts."""
        self._listeners.append(callback)

    def calls(self) -> dict[str, int]:
        """Commands received, per protocol and command (``{"SMTP DATA": 3, "IMAP UID FETCH": 5}``)."""
        with self.lock:
            return dict(self._calls)

    def inject_fault(
        self,
        protocol: str = "smtp",
        command: str | None = None,
        reply: str | None = None,
        *,
        count: int = 1,
    ) -> MailFault:
        """Answer the next ``count`` matching commands with ``reply`` (see :class:`MailFault`).

        ``reply`` is an SMTP reply line (``451 4.3.0 ...``, ``421 ...``) or an IMAP completion
        (``NO [UNAVAILABLE] ...``, ``BAD ...``, ``BYE ...``); by default a temporary failure.
        """
        protocol = protocol.lower()
        if protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be 'smtp' or 'imap', not {protocol!r}")
        reply = reply or DEFAULT_REPLIES[protocol]
        if protocol == "smtp" and not re.match(r"[45]\d\d[ -]", reply + " "):
            raise ValueError(f"an SMTP fault is a 4xx or 5xx reply, not {reply!r}")
        if protocol == "imap" and reply.split(" ", 1)[0].upper() not in ("NO", "BAD", "BYE"):
            raise ValueError(f"an IMAP fault starts with NO, BAD or BYE, not {reply!r}")
        fault = MailFault(
            protocol, " ".join(command.upper().split()) if command else None, reply, count
        )
        with self.lock:
            self._faults.append(fault)
        return fault

    def clear_faults(self) -> None:
        """Forget every fault not yet used, and answer at full speed again."""
        with self.lock:
            self._faults.clear()
            self._delay = 0.0

    def slow(self, seconds: float) -> None:
        """Wait ``seconds`` before answering every command from now on (0 for full speed)."""
        with self.lock:
            self._delay = max(0.0, float(seconds))

    def reset(self) -> None:
        """Empty every mailbox and forget sent mail, counts, faults and slowness.

        Folders made afresh get a new UIDVALIDITY, so a client that cached UIDs sees the change;
        an IMAP client with a folder selected is told ``BYE`` at its next command, as after a
        server restart.
        """
        with self.lock:
            self._clear()
        self._notify()

    # --- the command line ----------------------------------------------------------------------

    def serve(self, *, out: TextIO) -> int:
        """Serve until Ctrl-C or SIGTERM, saying where, what to paste, and each message accepted."""
        stop = threading.Event()

        def on_term(signum: int, frame: object) -> None:
            stop.set()

        previous = None
        if threading.current_thread() is threading.main_thread():
            previous = signal.signal(signal.SIGTERM, on_term)
        printing = threading.Lock()

        def say(line: str) -> None:
            with printing:
                print(line, file=out, flush=True)

        def accepted(mail: SentMail) -> None:
            subject = mail.subject.replace("\n", " ")
            say(
                f"mail from <{mail.mail_from}> to {', '.join(mail.rcpt_tos)}: accepted, "
                f"{len(mail.raw)} bytes, {subject!r}"
            )

        self.on_message(accepted)
        try:
            self.start()
            say(
                f"{self.name} sandbox listening on smtp://{self._host}:{self.smtp_port} "
                f"and imap://{self._host}:{self.imap_port}"
            )
            say("plain SMTP and IMAP without TLS, for loopback only; mail lives in memory")
            say("")
            say(self.policy_snippet().rstrip())
            say("")
            say("Ctrl-C to stop.")
            while not stop.wait(0.2):
                pass
        except KeyboardInterrupt:
            pass
        finally:
            self.stop()
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)
        say("stopped")
        return 0

    # --- inside --------------------------------------------------------------------------------

    def _clear(self) -> None:
        self._boxes: dict[str, dict[str, _Folder]] = {}
        self._sent: list[SentMail] = []
        self._calls: Counter[str] = Counter()
        self._faults: list[MailFault] = []
        self._delay = 0.0
        for login in self.users:
            self._create(login, INBOX)

    def _create(self, owner: str, name: str) -> _Folder:
        """The folder ``name`` of ``owner``, made with its parents if missing (lock held)."""
        folders = self._boxes.setdefault(owner, {})
        if INBOX not in folders:
            folders[INBOX] = self._new_folder(INBOX)
        key = _folder_key(name)
        parts = key.split(DELIMITER)
        for depth in range(1, len(parts) + 1):
            path = DELIMITER.join(parts[:depth])
            if path not in folders:
                folders[path] = self._new_folder(path)
        return folders[key]

    def _new_folder(self, name: str) -> _Folder:
        self._next_uidvalidity += 1
        return _Folder(name, self._next_uidvalidity)

    def _store(
        self, owner: str, folder: str, raw: bytes, flags: set[str] | None = None
    ) -> _Message:
        message = self._create(owner, folder).add(raw, set(flags or ()), self.now())
        self._notify()
        return message

    def _notify(self) -> None:
        """Wake every idling IMAP session: a mailbox changed."""
        with self.lock:
            sessions = list(self._sessions)
        for session in sessions:
            session.wake()

    def _owner_of(self, address: str, *, accept_any: bool = False) -> str | None:
        """The mailbox mail for ``address`` goes to: a login, an address (catch-all), or None."""
        text = address.strip().strip("<>").strip()
        local, at, domain = text.rpartition("@")
        if not at:
            login = self._login(text)
            return login if login else (text.lower() if accept_any and text else None)
        if domain.lower() == self.domain:
            login = self._login(local) or self._login(local.split("+", 1)[0])
            if login:
                return login
        return text.lower() if (self.catch_all or accept_any) and local else None

    def _login(self, name: str) -> str | None:
        return next((login for login in self.users if login.lower() == name.lower()), None)

    def _check_password(self, login: str, password: str) -> str | None:
        """The login ``login`` (a name or ``name@domain``) stands for, if the password is right."""
        name, at, domain = login.partition("@")
        if at and domain.lower() != self.domain:
            return None
        user = self._login(name)
        return user if user is not None and self.users[user] == password else None

    def _count(
        self, protocol: str, command: str, *, fault: bool = True
    ) -> tuple[MailFault | None, float]:
        """Count one command; the fault it meets (if ``fault``), and how long to wait first."""
        with self.lock:
            self._calls[f"{protocol.upper()} {command}"] += 1
            return (self._take_fault(protocol, command) if fault else None), self._delay

    def _take_fault(self, protocol: str, command: str) -> MailFault | None:
        with self.lock:
            for fault in self._faults:
                if fault.matches(protocol, command):
                    fault.count -= 1
                    if fault.count <= 0:
                        self._faults.remove(fault)
                    return fault
        return None

    def _accept(self, envelope: Any, session: Any) -> SentMail:
        """Keep what SMTP accepted and deliver a copy to each recipient's mailbox."""
        content = envelope.original_content or b""
        raw, message_id = _with_message_id(_crlf(content), self.domain)
        now = self.now()
        queue_id = uuid.uuid4().hex[:12].upper()
        owners: dict[str, str] = {}
        for rcpt in envelope.rcpt_tos:
            owner = self._owner_of(rcpt)
            if owner is not None:
                owners.setdefault(owner, rcpt)
        with self.lock:
            for owner, rcpt in owners.items():
                trace = (
                    f"Return-Path: <{envelope.mail_from or ''}>\r\n"
                    f"Delivered-To: {rcpt}\r\n"
                    f"Received: from {session.host_name or 'unknown'} ({session.peer[0]})\r\n"
                    f"\tby mail.{self.domain} (Escalier mail sandbox) with ESMTP id {queue_id}\r\n"
                    f"\tfor <{rcpt}>; {formatdate(now.timestamp(), localtime=False)}\r\n"
                )
                self._store(owner, INBOX, trace.encode("utf-8") + raw)
            mail = SentMail(
                mail_from=envelope.mail_from or "",
                rcpt_tos=tuple(envelope.rcpt_tos),
                raw=raw,
                message_id=message_id,
                accepted_at=now,
                authenticated_as=session.auth_data if session.authenticated else None,
                delivered_to=tuple(owners),
            )
            self._sent.append(mail)
            self._sent_changed.notify_all()
        for listener in list(self._listeners):
            listener(mail)
        return mail

    # --- SMTP ----------------------------------------------------------------------------------

    def _start_smtp(self) -> None:
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            asyncio.set_event_loop(loop)
            try:
                server = loop.run_until_complete(
                    loop.create_server(
                        lambda: self._smtp_protocol(loop), host=self._host, port=self._smtp_port
                    )
                )
            except OSError as exc:
                failure.append(exc)
                loop.close()
                ready.set()
                return
            self._smtp_port = server.sockets[0].getsockname()[1]
            self._smtp_loop = loop
            ready.set()
            try:
                loop.run_forever()
            finally:
                server.close()
                for connection in list(self._smtp_connections):
                    if connection.transport is not None:
                        connection.transport.close()
                tasks = asyncio.all_tasks(loop)
                for task in tasks:
                    task.cancel()
                loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
                loop.run_until_complete(server.wait_closed())
                loop.close()

        self._smtp_thread = threading.Thread(target=run, name="mail-sandbox-smtp", daemon=True)
        self._smtp_thread.start()
        if not ready.wait(10):
            raise OSError("the SMTP server did not start within 10 seconds")
        if failure:
            self._smtp_thread.join(timeout=5)
            self._smtp_thread = None
            raise failure[0]

    def _smtp_protocol(self, loop: asyncio.AbstractEventLoop) -> _SandboxSMTP:
        return _SandboxSMTP(
            _SmtpHandler(self),
            self,
            loop=loop,
            hostname=f"mail.{self.domain}",
            ident="ESMTP Escalier mail sandbox",
            data_size_limit=self.max_message_size,
            enable_SMTPUTF8=True,
            auth_require_tls=False,
            authenticator=self._smtp_authenticator,
        )

    def _smtp_authenticator(
        self, server: SMTP, session: Any, envelope: Any, mechanism: str, auth_data: Any
    ) -> AuthResult:
        if isinstance(auth_data, LoginPassword):
            login = auth_data.login.decode("utf-8", "replace")
            user = self._check_password(login, auth_data.password.decode("utf-8", "replace"))
            if user is not None:
                return AuthResult(success=True, auth_data=user)
        return AuthResult(success=False, handled=False)


class _SmtpHandler:
    """aiosmtpd's hooks: who may receive mail, and what happens to a message."""

    def __init__(self, sandbox: MailSandbox) -> None:
        self._sandbox = sandbox

    async def handle_RCPT(
        self, server: SMTP, session: Any, envelope: Any, address: str, rcpt_options: list[str]
    ) -> str:
        if self._sandbox._owner_of(address) is None:
            return f"550 5.1.1 <{address}>: Recipient address rejected: User unknown"
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTP, session: Any, envelope: Any) -> str:
        fault = self._sandbox._take_fault("smtp", "DATA")
        if fault is not None:
            if fault.reply.startswith("421") and server.transport is not None:
                # aiosmtpd writes the reply synchronously once this returns; close after it.
                asyncio.get_running_loop().call_soon(server.transport.close)
            return fault.reply
        mail = self._sandbox._accept(envelope, session)
        return f"250 2.0.0 OK: queued as {mail.message_id}"


class _SmtpSession(Session):
    """aiosmtpd's session without the deprecation warning it logs itself on every AUTH."""

    @property
    def login_data(self) -> Any:
        return self._login_data

    @login_data.setter
    def login_data(self, value: Any) -> None:
        self._login_data = value


class _SandboxSMTP(SMTP):
    """aiosmtpd's SMTP, counting each command and failing on purpose before carrying it out."""

    def __init__(self, handler: _SmtpHandler, sandbox: MailSandbox, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self._sandbox = sandbox
        self._smtp_methods = {
            name: self._guarded(name, method) for name, method in self._smtp_methods.items()
        }

    def _create_session(self) -> Session:
        return _SmtpSession(self.loop)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._sandbox._smtp_connections.add(self)
        super().connection_made(transport)

    def connection_lost(self, error: Exception | None) -> None:
        self._sandbox._smtp_connections.discard(self)
        super().connection_lost(error)

    def _guarded(self, name: str, method: Callable[[str], Any]) -> Callable[[str], Any]:
        @functools.wraps(method)
        async def guarded(arg: str) -> None:
            # A DATA fault is answered after the message (see _SmtpHandler.handle_DATA).
            fault, delay = self._sandbox._count("smtp", name, fault=name != "DATA")
            if delay:
                await asyncio.sleep(delay)
            if fault is not None:
                await self.push(fault.reply)
                if fault.reply.startswith("421"):
                    self._close()
                return
            if (
                name in ("MAIL", "RCPT", "DATA")
                and self._sandbox.require_auth
                and not (self.session and self.session.authenticated)
            ):
                await self.push("530 5.7.0 Authentication required")
                return
            await method(arg)

        return guarded

    def _close(self) -> None:
        if self._handler_coroutine is not None:
            self._handler_coroutine.cancel()
        if self.transport is not None:
            self.transport.close()


# --- IMAP ----------------------------------------------------------------------------------------


class _ImapServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], sandbox: MailSandbox) -> None:
        self.sandbox = sandbox
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, _ImapHandler)


class _ImapHandler(socketserver.BaseRequestHandler):
    server: _ImapServer

    def handle(self) -> None:
        _ImapSession(self.server.sandbox, self.request).run()


class _Bad(Exception):
    """The command is malformed or not valid now: answer BAD."""


class _No(Exception):
    """The command is well formed but cannot be carried out: answer NO."""


class _Closed(Exception):
    """The client went away."""


class _Atom(str):
    """An IMAP atom, as opposed to a quoted string (NIL, flags and keywords are atoms)."""


Token = Any  # _Atom, str (quoted), bytes (literal) or a list of tokens


@dataclass(frozen=True)
class _FetchItem:
    name: str  # what the response calls it
    kind: str
    section: str = ""
    fields: tuple[str, ...] = ()
    start: int | None = None
    length: int | None = None
    peek: bool = True


class _ImapSession:
    """One IMAP connection: reads commands (literals too), answers them, idles."""

    def __init__(self, sandbox: MailSandbox, sock: socket.socket) -> None:
        self.sandbox = sandbox
        self.sock = sock
        self._buffer = bytearray()
        self._out: list[bytes] = []
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_w.setblocking(False)
        self.closed = False
        self.user: str | None = None
        self.folder: _Folder | None = None
        self.readonly = False
        self.view: list[int] = []  # the UIDs this client knows, by sequence number - 1
        self._seen_flags: dict[int, frozenset[str]] = {}
        self._recent: set[int] = set()
        self._max_uid = 0
        self._keywords_known = 0

    # --- connection ----------------------------------------------------------------------------

    def run(self) -> None:
        with self.sandbox.lock:
            self.sandbox._sessions.add(self)
        try:
            self._send(
                f"* OK [CAPABILITY {_CAPABILITIES}] Escalier mail sandbox ready.\r\n".encode()
            )
            while not self.closed:
                command = self._read_command()
                if command is None:
                    break
                self._handle(*command)
        except (OSError, _Closed):
            pass
        finally:
            with self.sandbox.lock:
                self.sandbox._sessions.discard(self)
            self.closed = True
            for sock in (self.sock, self._wake_r, self._wake_w):
                try:
                    sock.close()
                except OSError:
                    pass

    def wake(self) -> None:
        """Tell an idling session to look at its mailbox again."""
        try:
            self._wake_w.send(b"!")
        except OSError:  # full (already woken) or closed: nothing to do
            pass

    def abort(self) -> None:
        """Drop the connection (the server is stopping)."""
        self.closed = True
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.wake()

    def _send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _flush(self) -> None:
        if self._out:
            data, self._out = b"".join(self._out), []
            self._send(data)

    def _emit(self, line: bytes | str) -> None:
        """Queue an untagged response (``line`` without ``* `` and CRLF)."""
        self._out.append(b"* " + (line.encode() if isinstance(line, str) else line) + b"\r\n")

    def _fill(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise _Closed
        self._buffer += chunk

    def _read_line(self) -> bytes:
        while True:
            end = self._buffer.find(b"\n")
            if end >= 0:
                line = bytes(self._buffer[:end])
                del self._buffer[: end + 1]
                return line[:-1] if line.endswith(b"\r") else line
            if len(self._buffer) > _MAX_LINE:
                self._send(b"* BYE Command line too long\r\n")
                raise _Closed
            self._fill()

    def _read_exact(self, size: int) -> bytes:
        while len(self._buffer) < size:
            self._fill()
        data = bytes(self._buffer[:size])
        del self._buffer[:size]
        return data

    def _read_command(self) -> tuple[str, list[bytes]] | None:
        """One command's text, each literal replaced by a NUL-fenced index, and the literals."""
        text = bytearray()
        literals: list[bytes] = []
        try:
            while True:
                line = self._read_line()
                found = _LITERAL_AT_END.search(line)
                if not found:
                    text += line
                    return text.decode("utf-8", "surrogateescape"), literals
                size = int(found.group(1))
                if size > _MAX_LITERAL:
                    self._send(b"* BYE Literal too large\r\n")
                    raise _Closed
                text += line[: found.start()] + b"\x00%d\x00" % len(literals)
                if not found.group(2):
                    self._send(b"+ Ready for literal data\r\n")
                literals.append(self._read_exact(size))
        except _Closed:
            return None

    # --- dispatch ------------------------------------------------------------------------------

    def _handle(self, text: str, literals: list[bytes]) -> None:
        if not text.strip():
            return
        tag, _, rest = text.partition(" ")
        if not tag or any(c in tag for c in '(){%*"\\+\x00') or not rest.strip():
            self._send(b"* BAD Missing tag or command\r\n")
            return
        try:
            tokens = _Parser(rest, literals).parse()
        except _Bad as exc:
            self._send(f"{tag} BAD {exc}\r\n".encode())
            return
        if not tokens or not isinstance(tokens[0], _Atom):
            self._send(f"{tag} BAD Missing command\r\n".encode())
            return
        name = tokens[0].upper()
        args = tokens[1:]
        if name == "UID":
            if not args or not isinstance(args[0], _Atom):
                self._send(f"{tag} BAD UID needs a command\r\n".encode())
                return
            name = f"UID {args[0].upper()}"
            args = args[1:]
        handler = _COMMANDS.get(name)
        fault, delay = self.sandbox._count("imap", name)
        if delay and self.sandbox._stopping.wait(delay):
            raise _Closed
        if fault is not None:
            if fault.reply.upper().startswith("BYE"):
                self._send(f"* {fault.reply}\r\n".encode())
                raise _Closed
            self._send(f"{tag} {fault.reply}\r\n".encode())
            return
        if handler is None:
            self._send(f"{tag} BAD Unknown command {name}\r\n".encode())
            return
        method, state = handler
        if state == "auth" and self.user is None or state == "selected" and self.folder is None:
            need = "LOGIN" if self.user is None else "SELECT"
            self._send(f"{tag} BAD {name} is not valid before {need}\r\n".encode())
            return
        try:
            if name in ("IDLE", "AUTHENTICATE"):
                # These talk with the client mid-command: no lock held while waiting for it.
                outcome = method(self, tag, args)
            else:
                with self.sandbox.lock:
                    outcome = self._locked(name, method, tag, args)
        except _Bad as exc:
            outcome = f"BAD {exc}"
        except _No as exc:
            outcome = f"NO {exc}"
        if outcome is not None:
            self._out.append(f"{tag} {outcome}\r\n".encode())
        self._flush()

    def _locked(
        self, name: str, method: Callable[..., str | None], tag: str, args: list[Token]
    ) -> str | None:
        """Run a command with the mailboxes locked, telling the client what changed meanwhile."""
        if self.folder is not None and name not in _FRESH_VIEW:
            # New mail is announced first, so that a UID SEARCH sees what NOOP would show.
            self._updates(expunge=False, flags=False)
        try:
            return method(self, tag, args)
        finally:
            if self.folder is not None and not self.closed:
                # No EXPUNGE while answering FETCH, STORE or SEARCH (RFC 3501 7.4.1).
                quiet = name in ("FETCH", "STORE", "SEARCH")
                self._updates(expunge=not quiet, flags=not quiet)

    # --- mailbox view --------------------------------------------------------------------------

    def _live(self) -> _Folder | None:
        """The selected folder if it still exists."""
        if self.folder is None or self.user is None:
            return None
        folders = self.sandbox._boxes.get(self.user, {})
        return self.folder if folders.get(self.folder.name) is self.folder else None

    def _updates(self, *, expunge: bool, flags: bool) -> None:
        """Queue what changed in the selected folder since the client last heard (lock held)."""
        folder = self._live()
        if folder is None:
            self._emit("BYE The selected mailbox was deleted or renamed")
            self.closed = True
            return
        current = {m.uid: m for m in folder.messages}
        if expunge:
            recent = len(self._recent)
            for index in range(len(self.view) - 1, -1, -1):
                uid = self.view[index]
                if uid not in current:
                    del self.view[index]
                    self._seen_flags.pop(uid, None)
                    self._recent.discard(uid)
                    self._emit(f"{index + 1} EXPUNGE")
            if len(self._recent) != recent:
                self._emit(f"{len(self._recent)} RECENT")
        if len(folder.keywords) != self._keywords_known:
            self._keywords_known = len(folder.keywords)
            self._emit(f"FLAGS ({_folder_flags(folder)})")
            if not self.readonly:
                permanent = " ".join([*_SYSTEM_FLAGS, *sorted(folder.keywords.values()), "\\*"])
                self._emit(f"OK [PERMANENTFLAGS ({permanent})] Flags permitted")
        new = [m for m in folder.messages if m.uid > self._max_uid]
        if new:
            for message in new:
                self.view.append(message.uid)
                self._seen_flags[message.uid] = frozenset(message.flags)
                if message.recent and not self.readonly:
                    message.recent = False
                    self._recent.add(message.uid)
            self._max_uid = new[-1].uid
            self._emit(f"{len(self.view)} EXISTS")
            self._emit(f"{len(self._recent)} RECENT")
        if flags:
            for seq, uid in enumerate(self.view, 1):
                message = current.get(uid)
                if message is not None and frozenset(message.flags) != self._seen_flags.get(uid):
                    self._seen_flags[uid] = frozenset(message.flags)
                    self._emit(f"{seq} FETCH (UID {uid} FLAGS ({self._flags(message)}))")

    def _select(self, folder: _Folder, readonly: bool) -> None:
        self.folder = folder
        self.readonly = readonly
        self.view = [m.uid for m in folder.messages]
        self._seen_flags = {m.uid: frozenset(m.flags) for m in folder.messages}
        self._max_uid = folder.messages[-1].uid if folder.messages else 0
        self._keywords_known = len(folder.keywords)
        if readonly:
            self._recent = {m.uid for m in folder.messages if m.recent}
        else:
            self._recent = set()
            for message in folder.messages:
                if message.recent:
                    message.recent = False
                    self._recent.add(message.uid)

    def _deselect(self) -> None:
        self.folder = None
        self.view = []
        self._seen_flags = {}
        self._recent = set()
        self._max_uid = 0

    def _flags(self, message: _Message) -> str:
        flags = _sorted_flags(message.flags)
        if message.uid in self._recent:
            flags.append("\\Recent")
        return " ".join(flags)

    def _messages(self, spec: Token, *, uid: bool) -> list[tuple[int, _Message]]:
        """The ``(sequence number, message)`` pairs a sequence or UID set names."""
        text = _string(spec)
        if not _SEQUENCE_SET.fullmatch(text):
            raise _Bad(f"Invalid message set {text!r}")
        folder = self.folder
        assert folder is not None
        current = {m.uid: m for m in folder.messages}
        if uid:
            largest = self.view[-1] if self.view else 0
            ranges = _ranges(text, largest)
            return [
                (seq, current[u])
                for seq, u in enumerate(self.view, 1)
                if u in current and _in_ranges(u, ranges)
            ]
        if not self.view:
            raise _Bad("No messages: the mailbox is empty")
        ranges = _ranges(text, len(self.view))
        if any(hi > len(self.view) for _, hi in ranges):
            raise _Bad("Invalid message sequence number")
        return [
            (seq, current[u])
            for seq, u in enumerate(self.view, 1)
            if u in current and _in_ranges(seq, ranges)
        ]

    def _mailbox(self, token: Token, *, create: bool = False) -> _Folder:
        assert self.user is not None
        name = _folder_key(_string(token))
        folder = self.sandbox._boxes.get(self.user, {}).get(name)
        if folder is None:
            raise _No(
                "[TRYCREATE] Mailbox does not exist"
                if create
                else "[NONEXISTENT] Mailbox does not exist"
            )
        return folder

    # --- any state -----------------------------------------------------------------------------

    def _capability(self, tag: str, args: list[Token]) -> str:
        self._emit(f"CAPABILITY {_CAPABILITIES}")
        return "OK CAPABILITY completed"

    def _noop(self, tag: str, args: list[Token]) -> str:
        return "OK NOOP completed"

    def _logout(self, tag: str, args: list[Token]) -> str:
        self._emit("BYE Logging out")
        self.closed = True
        return "OK LOGOUT completed"

    # --- not authenticated ---------------------------------------------------------------------

    def _login_command(self, tag: str, args: list[Token]) -> str:
        if len(args) != 2:
            raise _Bad("LOGIN needs a user name and a password")
        return self._log_in(_string(args[0]), _string(args[1]))

    def _log_in(self, login: str, password: str) -> str:
        if self.user is not None:
            raise _Bad("Already logged in")
        user = self.sandbox._check_password(login, password)
        if user is None:
            return "NO [AUTHENTICATIONFAILED] Authentication failed."
        self.user = user
        return f"OK [CAPABILITY {_CAPABILITIES}] Logged in"

    def _authenticate(self, tag: str, args: list[Token]) -> str:
        if not args or _string(args[0]).upper() != "PLAIN" or len(args) > 2:
            return "NO [CANNOT] Only AUTHENTICATE PLAIN is offered"
        if len(args) == 2:
            answer = _string(args[1]).encode()
        else:
            self._send(b"+ \r\n")
            answer = self._read_line()
        if answer.strip() == b"*":
            return "BAD Authentication cancelled"
        try:
            decoded = base64.b64decode(answer.strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return "BAD Invalid base64 in the response"
        parts = decoded.split("\x00")
        if len(parts) != 3:
            return "BAD Invalid PLAIN response"
        with self.sandbox.lock:
            return self._log_in(parts[1], parts[2])

    # --- authenticated -------------------------------------------------------------------------

    def _select_command(self, tag: str, args: list[Token], *, readonly: bool = False) -> str:
        if len(args) != 1:
            raise _Bad("SELECT needs one mailbox name")
        self._deselect()
        folder = self._mailbox(args[0])
        self._select(folder, readonly)
        self._emit(f"FLAGS ({_folder_flags(folder)})")
        keywords = sorted(folder.keywords.values())
        permanent = "" if readonly else " ".join([*_SYSTEM_FLAGS, *keywords, "\\*"])
        self._emit(f"OK [PERMANENTFLAGS ({permanent})] Flags permitted")
        self._emit(f"{len(self.view)} EXISTS")
        self._emit(f"{len(self._recent)} RECENT")
        unseen = next(
            (seq for seq, m in enumerate(folder.messages, 1) if "\\Seen" not in m.flags), None
        )
        if unseen is not None:
            self._emit(f"OK [UNSEEN {unseen}] First unseen")
        self._emit(f"OK [UIDVALIDITY {folder.uidvalidity}] UIDs valid")
        self._emit(f"OK [UIDNEXT {folder.uidnext}] Predicted next UID")
        mode = "READ-ONLY" if readonly else "READ-WRITE"
        return f"OK [{mode}] {'EXAMINE' if readonly else 'SELECT'} completed"

    def _examine(self, tag: str, args: list[Token]) -> str:
        return self._select_command(tag, args, readonly=True)

    def _create_command(self, tag: str, args: list[Token]) -> str:
        if len(args) != 1:
            raise _Bad("CREATE needs one mailbox name")
        assert self.user is not None
        name = _string(args[0]).rstrip(DELIMITER)
        if not name or DELIMITER * 2 in name or name.startswith(DELIMITER):
            raise _No("[CANNOT] Invalid mailbox name")
        if _folder_key(name) in self.sandbox._boxes.get(self.user, {}):
            raise _No("[ALREADYEXISTS] Mailbox exists")
        self.sandbox._create(self.user, name)
        return "OK CREATE completed"

    def _delete(self, tag: str, args: list[Token]) -> str:
        if len(args) != 1:
            raise _Bad("DELETE needs one mailbox name")
        assert self.user is not None
        folder = self._mailbox(args[0])
        if folder.name == INBOX:
            raise _No("[CANNOT] INBOX cannot be deleted")
        if folder is self.folder:
            self._deselect()
        del self.sandbox._boxes[self.user][folder.name]
        self.sandbox._notify()
        return "OK DELETE completed"

    def _rename(self, tag: str, args: list[Token]) -> str:
        if len(args) != 2:
            raise _Bad("RENAME needs two mailbox names")
        assert self.user is not None
        folders = self.sandbox._boxes[self.user]
        folder = self._mailbox(args[0])
        new = _string(args[1]).rstrip(DELIMITER)
        if folder.name == INBOX or _folder_key(new) == INBOX:
            raise _No("[CANNOT] INBOX cannot be renamed here")
        if not new or _folder_key(new) in folders:
            raise _No("[ALREADYEXISTS] Mailbox exists")
        old = folder.name
        for name in [n for n in folders if n == old or n.startswith(old + DELIMITER)]:
            moved = folders.pop(name)
            renamed = _Folder(
                new + name[len(old) :],
                moved.uidvalidity,
                moved.uidnext,
                moved.messages,
                moved.keywords,
                moved.subscribed,
            )
            folders[renamed.name] = renamed
        self.sandbox._create(self.user, new)
        self.sandbox._notify()
        return "OK RENAME completed"

    def _subscribe(self, tag: str, args: list[Token], *, on: bool = True) -> str:
        if len(args) != 1:
            raise _Bad("SUBSCRIBE needs one mailbox name")
        self._mailbox(args[0]).subscribed = on
        return "OK Done"

    def _unsubscribe(self, tag: str, args: list[Token]) -> str:
        return self._subscribe(tag, args, on=False)

    def _list(self, tag: str, args: list[Token], *, subscribed: bool = False) -> str:
        if len(args) != 2:
            raise _Bad("LIST needs a reference and a pattern")
        assert self.user is not None
        verb = "LSUB" if subscribed else "LIST"
        reference, pattern = _string(args[0]), _string(args[1])
        if not pattern:
            self._emit(f'{verb} (\\Noselect) "{DELIMITER}" ""')
            return f"OK {verb} completed"
        matcher = _list_pattern(reference + pattern)
        folders = self.sandbox._boxes.get(self.user, {})
        for name in sorted(folders, key=lambda n: (n != INBOX, n)):
            if subscribed and not folders[name].subscribed:
                continue
            if not (matcher.fullmatch(name) or name == INBOX and matcher.fullmatch("inbox")):
                continue
            children = any(other.startswith(name + DELIMITER) for other in folders)
            attributes = "\\HasChildren" if children else "\\HasNoChildren"
            self._out.append(
                f'* {verb} ({attributes}) "{DELIMITER}" '.encode() + _astring(name) + b"\r\n"
            )
        return f"OK {verb} completed"

    def _lsub(self, tag: str, args: list[Token]) -> str:
        return self._list(tag, args, subscribed=True)

    def _namespace(self, tag: str, args: list[Token]) -> str:
        self._emit(f'NAMESPACE (("" "{DELIMITER}")) NIL NIL')
        return "OK NAMESPACE completed"

    def _status(self, tag: str, args: list[Token]) -> str:
        if len(args) != 2 or not isinstance(args[1], list):
            raise _Bad("STATUS needs a mailbox name and a list of items")
        folder = self._mailbox(args[0])
        values = {
            "MESSAGES": len(folder.messages),
            "RECENT": sum(1 for m in folder.messages if m.recent),
            "UIDNEXT": folder.uidnext,
            "UIDVALIDITY": folder.uidvalidity,
            "UNSEEN": sum(1 for m in folder.messages if "\\Seen" not in m.flags),
        }
        items = []
        for item in args[1]:
            key = _string(item).upper()
            if key not in values:
                raise _Bad(f"Unknown STATUS item {key}")
            items.append(f"{key} {values[key]}")
        self._out.append(
            b"* STATUS " + _astring(folder.name) + f" ({' '.join(items)})\r\n".encode()
        )
        return "OK STATUS completed"

    def _append(self, tag: str, args: list[Token]) -> str:
        if len(args) < 2 or not isinstance(args[-1], bytes):
            raise _Bad("APPEND needs a mailbox name and the message as a literal")
        assert self.user is not None
        folder = self._mailbox(args[0], create=True)
        flags: set[str] = set()
        when = self.sandbox.now()
        for extra in args[1:-1]:
            if isinstance(extra, list):
                flags = {self._flag(folder, f) for f in extra}
            else:
                when = _parse_date_time(_string(extra))
        if not args[-1]:
            raise _Bad("An empty message cannot be appended")
        message = folder.add(args[-1], flags, when)
        self.sandbox._notify()
        return f"OK [APPENDUID {folder.uidvalidity} {message.uid}] APPEND completed"

    # --- selected ------------------------------------------------------------------------------

    def _check(self, tag: str, args: list[Token]) -> str:
        return "OK CHECK completed"

    def _close(self, tag: str, args: list[Token]) -> str:
        folder = self._live()
        if folder is not None and not self.readonly:
            folder.messages = [m for m in folder.messages if "\\Deleted" not in m.flags]
            self.sandbox._notify()
        self._deselect()
        return "OK CLOSE completed"

    def _unselect(self, tag: str, args: list[Token]) -> str:
        self._deselect()
        return "OK UNSELECT completed"

    def _expunge(self, tag: str, args: list[Token], *, uid: bool = False) -> str:
        if self.readonly:
            raise _No("[READ-ONLY] The mailbox is read-only")
        folder = self.folder
        assert folder is not None
        chosen: set[int] | None = None
        if uid:
            if len(args) != 1:
                raise _Bad("UID EXPUNGE needs a UID set")
            chosen = {m.uid for _, m in self._messages(args[0], uid=True)}
        folder.messages = [
            m
            for m in folder.messages
            if "\\Deleted" not in m.flags or (chosen is not None and m.uid not in chosen)
        ]
        self.sandbox._notify()
        return "OK EXPUNGE completed"

    def _uid_expunge(self, tag: str, args: list[Token]) -> str:
        return self._expunge(tag, args, uid=True)

    def _search(self, tag: str, args: list[Token], *, uid: bool = False) -> str:
        folder = self.folder
        assert folder is not None
        if len(args) >= 2 and isinstance(args[0], _Atom) and args[0].upper() == "CHARSET":
            if _string(args[1]).upper() not in ("UTF-8", "US-ASCII"):
                raise _No("[BADCHARSET (UTF-8 US-ASCII)] Unsupported charset")
            args = args[2:]
        if not args:
            raise _Bad("SEARCH needs criteria")
        test = _SearchParser(self, args, folder).parse()
        current = {m.uid: m for m in folder.messages}
        found = [
            str(u if uid else seq)
            for seq, u in enumerate(self.view, 1)
            if u in current and test(current[u], seq)
        ]
        self._emit(" ".join(["SEARCH", *found]))
        return "OK SEARCH completed"

    def _uid_search(self, tag: str, args: list[Token]) -> str:
        return self._search(tag, args, uid=True)

    def _fetch(self, tag: str, args: list[Token], *, uid: bool = False) -> str:
        if len(args) != 2:
            raise _Bad("FETCH needs a message set and the items to fetch")
        items = _fetch_items(args[1])
        if uid and not any(item.kind == "UID" for item in items):
            items.insert(0, _FetchItem("UID", "UID"))
        for seq, message in self._messages(args[0], uid=uid):
            self._out.append(b"* %d FETCH (" % seq + self._fetch_one(message, items) + b")\r\n")
        return "OK FETCH completed"

    def _uid_fetch(self, tag: str, args: list[Token]) -> str:
        return self._fetch(tag, args, uid=True)

    def _fetch_one(self, message: _Message, items: list[_FetchItem]) -> bytes:
        parts: list[bytes] = []
        marks_seen = any(not item.peek for item in items)
        flags_asked = any(item.kind == "FLAGS" for item in items)
        if marks_seen and not self.readonly and "\\Seen" not in message.flags:
            message.flags.add("\\Seen")
            self._seen_flags[message.uid] = frozenset(message.flags)
            if not flags_asked:
                items = [*items, _FetchItem("FLAGS", "FLAGS")]
            self.sandbox._notify()
        header, body = _split(message.raw)
        for item in items:
            name = item.name.encode()
            if item.kind == "UID":
                parts.append(b"UID %d" % message.uid)
            elif item.kind == "FLAGS":
                parts.append(f"FLAGS ({self._flags(message)})".encode())
            elif item.kind == "INTERNALDATE":
                parts.append(f'INTERNALDATE "{_format_date_time(message.internal_date)}"'.encode())
            elif item.kind == "RFC822.SIZE":
                parts.append(b"RFC822.SIZE %d" % len(message.raw))
            elif item.kind == "ENVELOPE":
                parts.append(b"ENVELOPE " + _envelope(header))
            else:
                data = _section(message.raw, header, body, item)
                if item.start is not None:
                    data = data[
                        item.start : None if item.length is None else item.start + item.length
                    ]
                parts.append(name + b" " + _literal(data))
        return b" ".join(parts)

    def _store(self, tag: str, args: list[Token], *, uid: bool = False) -> str:
        if self.readonly:
            raise _No("[READ-ONLY] The mailbox is read-only")
        if len(args) < 3:
            raise _Bad("STORE needs a message set, an action and flags")
        folder = self.folder
        assert folder is not None
        action = _string(args[1]).upper()
        silent = action.endswith(".SILENT")
        mode = action.removesuffix(".SILENT")
        if mode not in ("FLAGS", "+FLAGS", "-FLAGS"):
            raise _Bad(f"Unknown STORE action {action}")
        given = args[2] if len(args) == 3 and isinstance(args[2], list) else args[2:]
        flags = {self._flag(folder, token) for token in given}
        chosen = self._messages(args[0], uid=uid)
        for seq, message in chosen:
            if mode == "FLAGS":
                message.flags = set(flags)
            elif mode == "+FLAGS":
                message.flags |= flags
            else:
                message.flags -= flags
            self._seen_flags[message.uid] = frozenset(message.flags)
            if not silent:
                uid_part = f"UID {message.uid} " if uid else ""
                self._emit(f"{seq} FETCH ({uid_part}FLAGS ({self._flags(message)}))")
        if chosen:
            self.sandbox._notify()
        return "OK STORE completed"

    def _uid_store(self, tag: str, args: list[Token]) -> str:
        return self._store(tag, args, uid=True)

    def _copy(self, tag: str, args: list[Token], *, uid: bool = False, move: bool = False) -> str:
        verb = "MOVE" if move else "COPY"
        if len(args) != 2:
            raise _Bad(f"{verb} needs a message set and a mailbox name")
        if move and self.readonly:
            raise _No("[READ-ONLY] The mailbox is read-only")
        chosen = self._messages(args[0], uid=uid)
        if not chosen:
            return "OK No messages found"
        target = self._mailbox(args[1], create=True)
        source = self.folder
        assert source is not None
        pairs = []
        for _, message in chosen:
            flags = {f if f.startswith("\\") else target.keyword(f) for f in message.flags}
            copy = target.add(message.raw, flags, message.internal_date)
            pairs.append((message.uid, copy.uid))
        code = ""
        if pairs:
            code = (
                f"[COPYUID {target.uidvalidity} {_uid_set(p[0] for p in pairs)} "
                f"{_uid_set(p[1] for p in pairs)}] "
            )
        if move and pairs:
            self._emit(f"OK {code}Moved")
            moved = {id(m) for _, m in chosen}
            source.messages = [m for m in source.messages if id(m) not in moved]
            self._updates(expunge=True, flags=False)
            code = ""
        self.sandbox._notify()
        return f"OK {code}{verb} completed"

    def _uid_copy(self, tag: str, args: list[Token]) -> str:
        return self._copy(tag, args, uid=True)

    def _move(self, tag: str, args: list[Token]) -> str:
        return self._copy(tag, args, move=True)

    def _uid_move(self, tag: str, args: list[Token]) -> str:
        return self._copy(tag, args, uid=True, move=True)

    def _idle(self, tag: str, args: list[Token]) -> str | None:
        with self.sandbox.lock:
            self._updates(expunge=True, flags=True)
        self._out.append(b"+ idling\r\n")
        self._flush()
        while not self.closed:
            if b"\n" not in self._buffer:
                readable, _, _ = select.select([self.sock, self._wake_r], [], [])
                if self._wake_r in readable:
                    try:
                        self._wake_r.recv(4096)
                    except OSError:
                        pass
                    with self.sandbox.lock:
                        self._updates(expunge=True, flags=True)
                    self._flush()
                if self.sock not in readable:
                    continue
                self._fill()
                if b"\n" not in self._buffer:
                    continue
            line = self._read_line()
            if line.strip().upper() == b"DONE":
                return "OK IDLE terminated"
            return "BAD Expected DONE"
        return None

    def _flag(self, folder: _Folder, token: Token) -> str:
        text = _string(token)
        if text.startswith("\\"):
            flag = _SYSTEM_BY_LOWER.get(text.lower())
            if flag is None:
                raise _Bad(f"Invalid system flag {text}")
            return flag
        if not _KEYWORD.fullmatch(text):
            raise _Bad(f"Invalid keyword {text!r}")
        if len(text) > MAX_KEYWORD_LENGTH:
            raise _No("[CANNOT] Keyword length too long")
        return folder.keyword(text)


_FRESH_VIEW = frozenset({"SELECT", "EXAMINE", "CLOSE", "UNSELECT", "LOGOUT"})
_COMMANDS: dict[str, tuple[Callable[..., str | None], str]] = {
    "CAPABILITY": (_ImapSession._capability, "any"),
    "NOOP": (_ImapSession._noop, "any"),
    "LOGOUT": (_ImapSession._logout, "any"),
    "LOGIN": (_ImapSession._login_command, "any"),
    "AUTHENTICATE": (_ImapSession._authenticate, "any"),
    "SELECT": (_ImapSession._select_command, "auth"),
    "EXAMINE": (_ImapSession._examine, "auth"),
    "CREATE": (_ImapSession._create_command, "auth"),
    "DELETE": (_ImapSession._delete, "auth"),
    "RENAME": (_ImapSession._rename, "auth"),
    "SUBSCRIBE": (_ImapSession._subscribe, "auth"),
    "UNSUBSCRIBE": (_ImapSession._unsubscribe, "auth"),
    "LIST": (_ImapSession._list, "auth"),
    "LSUB": (_ImapSession._lsub, "auth"),
    "NAMESPACE": (_ImapSession._namespace, "auth"),
    "STATUS": (_ImapSession._status, "auth"),
    "APPEND": (_ImapSession._append, "auth"),
    "IDLE": (_ImapSession._idle, "selected"),
    "CHECK": (_ImapSession._check, "selected"),
    "CLOSE": (_ImapSession._close, "selected"),
    "UNSELECT": (_ImapSession._unselect, "selected"),
    "EXPUNGE": (_ImapSession._expunge, "selected"),
    "SEARCH": (_ImapSession._search, "selected"),
    "FETCH": (_ImapSession._fetch, "selected"),
    "STORE": (_ImapSession._store, "selected"),
    "COPY": (_ImapSession._copy, "selected"),
    "MOVE": (_ImapSession._move, "selected"),
    "UID EXPUNGE": (_ImapSession._uid_expunge, "selected"),
    "UID SEARCH": (_ImapSession._uid_search, "selected"),
    "UID FETCH": (_ImapSession._uid_fetch, "selected"),
    "UID STORE": (_ImapSession._uid_store, "selected"),
    "UID COPY": (_ImapSession._uid_copy, "selected"),
    "UID MOVE": (_ImapSession._uid_move, "selected"),
}


# --- IMAP syntax ---------------------------------------------------------------------------------


class _Parser:
    """A command's arguments as tokens: atoms, quoted strings, literals and parenthesised lists."""

    def __init__(self, text: str, literals: list[bytes]) -> None:
        self.text = text
        self.literals = literals
        self.at = 0

    def parse(self) -> list[Token]:
        tokens = self._tokens(closing=None)
        if self.at < len(self.text):
            raise _Bad("Unexpected ')'")
        return tokens

    def _tokens(self, closing: str | None) -> list[Token]:
        tokens: list[Token] = []
        text = self.text
        while True:
            while self.at < len(text) and text[self.at] == " ":
                self.at += 1
            if self.at >= len(text):
                if closing:
                    raise _Bad("Missing ')'")
                return tokens
            char = text[self.at]
            if char == ")":
                if not closing:
                    return tokens
                self.at += 1
                return tokens
            if char == "(":
                self.at += 1
                tokens.append(self._tokens(closing=")"))
            elif char == '"':
                tokens.append(self._quoted())
            elif char == "\x00":
                end = text.index("\x00", self.at + 1)
                tokens.append(self.literals[int(text[self.at + 1 : end])])
                self.at = end + 1
            else:
                tokens.append(self._atom())

    def _quoted(self) -> str:
        out = []
        self.at += 1
        while self.at < len(self.text):
            char = self.text[self.at]
            if char == "\\" and self.at + 1 < len(self.text):
                out.append(self.text[self.at + 1])
                self.at += 2
                continue
            if char == '"':
                self.at += 1
                return "".join(out)
            out.append(char)
            self.at += 1
        raise _Bad("Unterminated quoted string")

    def _atom(self) -> _Atom:
        start = self.at
        text = self.text
        while self.at < len(text) and text[self.at] not in ' ()"\x00':
            if text[self.at] == "[":
                # BODY[HEADER.FIELDS (A B)] is one token, spaces and parentheses included.
                end = text.find("]", self.at)
                if end < 0:
                    raise _Bad("Missing ']'")
                self.at = end
            self.at += 1
        return _Atom(text[start : self.at])


class _SearchParser:
    """SEARCH criteria into one test of ``(message, sequence number)``."""

    def __init__(self, session: _ImapSession, tokens: list[Token], folder: _Folder) -> None:
        self.session = session
        self.tokens = tokens
        self.folder = folder
        self.at = 0

    def parse(self) -> Callable[[_Message, int], bool]:
        tests = []
        while self.at < len(self.tokens):
            tests.append(self._key())
        return lambda m, seq: all(test(m, seq) for test in tests)

    def _next(self) -> Token:
        if self.at >= len(self.tokens):
            raise _Bad("Missing search argument")
        token = self.tokens[self.at]
        self.at += 1
        return token

    def _key(self) -> Callable[[_Message, int], bool]:
        token = self._next()
        if isinstance(token, list):
            inner = _SearchParser(self.session, token, self.folder).parse()
            return inner
        key = _string(token).upper()
        flag_keys = {
            "ANSWERED": ("\\Answered", True),
            "UNANSWERED": ("\\Answered", False),
            "DELETED": ("\\Deleted", True),
            "UNDELETED": ("\\Deleted", False),
            "DRAFT": ("\\Draft", True),
            "UNDRAFT": ("\\Draft", False),
            "FLAGGED": ("\\Flagged", True),
            "UNFLAGGED": ("\\Flagged", False),
            "SEEN": ("\\Seen", True),
            "UNSEEN": ("\\Seen", False),
        }
        recent = self.session._recent
        if key == "ALL":
            return lambda m, seq: True
        if key in flag_keys:
            flag, present = flag_keys[key]
            return lambda m, seq: (flag in m.flags) == present
        if key == "RECENT":
            return lambda m, seq: m.uid in recent
        if key == "OLD":
            return lambda m, seq: m.uid not in recent
        if key == "NEW":
            return lambda m, seq: m.uid in recent and "\\Seen" not in m.flags
        if key in ("KEYWORD", "UNKEYWORD"):
            name = self.folder.keywords.get(_string(self._next()).lower())
            present = key == "KEYWORD"
            return lambda m, seq: (name is not None and name in m.flags) == present
        if key == "NOT":
            inner = self._key()
            return lambda m, seq: not inner(m, seq)
        if key == "OR":
            left, right = self._key(), self._key()
            return lambda m, seq: left(m, seq) or right(m, seq)
        if key in ("BEFORE", "ON", "SINCE", "SENTBEFORE", "SENTON", "SENTSINCE"):
            day = _parse_search_date(_string(self._next()))
            sent = key.startswith("SENT")
            compare = {
                "BEFORE": lambda d: d < day,
                "ON": lambda d: d == day,
                "SINCE": lambda d: d >= day,
            }[key.removeprefix("SENT")]

            def dated(m: _Message, seq: int) -> bool:
                when = _sent_date(m.raw) if sent else m.internal_date.date()
                return when is not None and compare(when)

            return dated
        if key in ("LARGER", "SMALLER"):
            size = _number(self._next())
            if key == "LARGER":
                return lambda m, seq: len(m.raw) > size
            return lambda m, seq: len(m.raw) < size
        if key in ("FROM", "TO", "CC", "BCC", "SUBJECT"):
            needle = _string(self._next()).lower()
            return lambda m, seq: _header_contains(m.raw, key, needle)
        if key == "HEADER":
            name, needle = _string(self._next()), _string(self._next()).lower()
            return lambda m, seq: _header_contains(m.raw, name, needle)
        if key in ("BODY", "TEXT"):
            needle = _string(self._next()).lower()
            return lambda m, seq: _text_contains(m.raw, needle, headers=key == "TEXT")
        if key == "UID":
            text = _string(self._next())
            if not _SEQUENCE_SET.fullmatch(text):
                raise _Bad(f"Invalid UID set {text!r}")
            view = self.session.view
            ranges = _ranges(text, view[-1] if view else 0)
            return lambda m, seq: _in_ranges(m.uid, ranges)
        if _SEQUENCE_SET.fullmatch(key):
            ranges = _ranges(key, len(self.session.view))
            return lambda m, seq: _in_ranges(seq, ranges)
        raise _Bad(f"Unknown search key {key}")


def _string(token: Token) -> str:
    """An astring argument as text."""
    if isinstance(token, bytes):
        return token.decode("utf-8", "surrogateescape")
    if isinstance(token, list):
        raise _Bad("A string was expected, not a list")
    return str(token)


def _number(token: Token) -> int:
    text = _string(token)
    if not text.isdigit():
        raise _Bad(f"A number was expected, not {text!r}")
    return int(text)


def _ranges(text: str, star: int) -> list[tuple[int, int]]:
    """``1:3,5:*`` as ranges; ``*`` is ``star`` (0 in an empty mailbox, matching nothing)."""
    ranges = []
    for part in text.split(","):
        first, _, last = part.partition(":")
        if first.strip("0") == "" or last and last.strip("0") == "":
            raise _Bad("Message numbers start at 1")
        lo = star if first == "*" else int(first)
        hi = lo if not last else star if last == "*" else int(last)
        ranges.append((min(lo, hi), max(lo, hi)))
    return ranges


def _in_ranges(number: int, ranges: list[tuple[int, int]]) -> bool:
    return any(lo <= number <= hi for lo, hi in ranges)


def _uid_set(uids: Iterable[int]) -> str:
    """UIDs in the compact ``1:3,7`` form, in the order given."""
    runs: list[list[int]] = []
    for uid in uids:
        if runs and uid == runs[-1][1] + 1:
            runs[-1][1] = uid
        else:
            runs.append([uid, uid])
    return ",".join(str(a) if a == b else f"{a}:{b}" for a, b in runs)


def _fetch_items(token: Token) -> list[_FetchItem]:
    macros = {
        "ALL": ["FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE"],
        "FAST": ["FLAGS", "INTERNALDATE", "RFC822.SIZE"],
    }
    names = token if isinstance(token, list) else [token]
    if len(names) == 1 and _string(names[0]).upper() in macros:
        names = macros[_string(names[0]).upper()]
    items = []
    for name in names:
        text = _string(name)
        upper = text.upper()
        if upper in ("UID", "FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE"):
            items.append(_FetchItem(upper, upper))
        elif upper == "RFC822":
            items.append(_FetchItem("RFC822", "BODY", "", peek=False))
        elif upper == "RFC822.HEADER":
            items.append(_FetchItem("RFC822.HEADER", "BODY", "HEADER"))
        elif upper == "RFC822.TEXT":
            items.append(_FetchItem("RFC822.TEXT", "BODY", "TEXT", peek=False))
        else:
            items.append(_section_item(text))
    return items


def _section_item(text: str) -> _FetchItem:
    found = _SECTION.fullmatch(text)
    if not found:
        raise _Bad(f"Unknown or unsupported FETCH item {text}")
    base = found["name"].upper()
    section = " ".join(found["section"].split())
    upper = section.upper()
    fields: tuple[str, ...] = ()
    if upper.startswith(("HEADER.FIELDS.NOT ", "HEADER.FIELDS ")):
        kind, _, listed = upper.partition(" ")
        listed = listed.strip()
        if not (listed.startswith("(") and listed.endswith(")")):
            raise _Bad("HEADER.FIELDS needs a parenthesised list")
        fields = tuple(listed[1:-1].replace('"', "").split())
        if not fields:
            raise _Bad("HEADER.FIELDS needs at least one field name")
        section = f"{kind} ({' '.join(fields)})"
    elif upper in ("", "HEADER", "TEXT"):
        section = upper
    else:
        raise _Bad(f"Sections by MIME part are not supported by the sandbox: {text}")
    name = ("BINARY" if base.startswith("BINARY") else "BODY") + f"[{section}]"
    start = int(found["start"]) if found["start"] is not None else None
    if start is not None:
        name += f"<{start}>"
    return _FetchItem(
        name,
        "BODY",
        section.split(" ")[0],
        fields,
        start,
        int(found["length"]) if found["length"] is not None else None,
        peek=base.endswith(".PEEK"),
    )


def _section(raw: bytes, header: bytes, body: bytes, item: _FetchItem) -> bytes:
    if item.section == "":
        return raw
    if item.section == "HEADER":
        return header
    if item.section == "TEXT":
        return body
    wanted = {name.lower() for name in item.fields}
    keep = item.section == "HEADER.FIELDS"
    lines = [lines for name, _, lines in _header_fields(header) if (name.lower() in wanted) == keep]
    return b"".join(lines) + b"\r\n"


def _list_pattern(pattern: str) -> re.Pattern[str]:
    regex = "".join(
        ".*" if c == "*" else f"[^{re.escape(DELIMITER)}]*" if c == "%" else re.escape(c)
        for c in pattern
    )
    return re.compile(regex)


def _astring(text: str) -> bytes:
    """A mailbox name as a quoted string (a literal when it cannot be quoted)."""
    return _nstring(text)


def _nstring(text: str | None) -> bytes:
    if text is None:
        return b"NIL"
    data = text.encode("utf-8", "surrogateescape")
    if all(0x20 <= b < 0x7F for b in data):
        return b'"' + data.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'
    return _literal(data)


def _literal(data: bytes) -> bytes:
    return b"{%d}\r\n" % len(data) + data


def _folder_flags(folder: _Folder) -> str:
    return " ".join([*_SYSTEM_FLAGS, *sorted(folder.keywords.values())])


def _sorted_flags(flags: set[str]) -> list[str]:
    return [f for f in _SYSTEM_FLAGS if f in flags] + sorted(
        f for f in flags if not f.startswith("\\")
    )


def _folder_key(name: str) -> str:
    """INBOX is case-insensitive; every other name is as written."""
    name = name.rstrip(DELIMITER) or name
    return INBOX if name.upper() == INBOX else name


def _format_date_time(when: datetime) -> str:
    when = when if when.tzinfo else when.replace(tzinfo=UTC)
    offset = when.utcoffset() or timedelta(0)
    minutes = int(offset.total_seconds() // 60)
    sign = "-" if minutes < 0 else "+"
    minutes = abs(minutes)
    return (
        f"{when.day:2d}-{_MONTHS[when.month - 1]}-{when.year:04d} "
        f"{when.hour:02d}:{when.minute:02d}:{when.second:02d} {sign}{minutes // 60:02d}{minutes % 60:02d}"
    )


def _month(name: str) -> int:
    try:
        return [m.lower() for m in _MONTHS].index(name.lower()) + 1
    except ValueError:
        raise _Bad(f"Unknown month {name!r}") from None


def _parse_date_time(text: str) -> datetime:
    found = _DATE_TIME.fullmatch(text)
    if not found:
        raise _Bad(f"Invalid date-time {text!r}")
    day, month, year, hour, minute, second, sign, oh, om = found.groups()
    offset = timedelta(hours=int(oh), minutes=int(om)) * (-1 if sign == "-" else 1)
    return datetime(
        int(year),
        _month(month),
        int(day),
        int(hour),
        int(minute),
        int(second),
        tzinfo=timezone(offset),
    )


def _parse_search_date(text: str) -> date:
    found = _SEARCH_DATE.fullmatch(text.strip())
    if not found:
        raise _Bad(f"Invalid date {text!r}")
    return date(int(found[3]), _month(found[2]), int(found[1]))


# --- message bytes -------------------------------------------------------------------------------


def _crlf(raw: bytes) -> bytes:
    """Line ends as CRLF, as IMAP serves them."""
    return re.sub(rb"\r?\n", b"\r\n", raw)


def _split(raw: bytes) -> tuple[bytes, bytes]:
    """The header section (with its blank line) and the body."""
    if raw.startswith(b"\r\n"):
        return b"\r\n", raw[2:]
    end = raw.find(b"\r\n\r\n")
    if end < 0:
        return raw + (b"" if raw.endswith(b"\r\n") else b"\r\n") + b"\r\n", b""
    return raw[: end + 4], raw[end + 4 :]


def _header_fields(header: bytes) -> list[tuple[str, str, bytes]]:
    """Each header field: its name, its unfolded value and its lines as they are."""
    fields: list[tuple[str, str, bytes]] = []
    for line in header.split(b"\r\n")[:-1]:
        if not line:
            continue
        if line[:1] in (b" ", b"\t") and fields:
            name, value, lines = fields[-1]
            fields[-1] = (
                name,
                value + " " + line.strip().decode("utf-8", "surrogateescape"),
                lines + line + b"\r\n",
            )
            continue
        name, colon, value = line.partition(b":")
        if not colon:
            continue
        fields.append(
            (
                name.strip().decode("ascii", "replace"),
                value.strip().decode("utf-8", "surrogateescape"),
                line + b"\r\n",
            )
        )
    return fields


def _header_value(header: bytes, name: str) -> str | None:
    return next((v for n, v, _ in _header_fields(header) if n.lower() == name.lower()), None)


def _envelope(header: bytes) -> bytes:
    def text(name: str) -> bytes:
        return _nstring(_header_value(header, name))

    def addresses(name: str, fallback: str | None = None) -> bytes:
        value = _header_value(header, name) or (
            _header_value(header, fallback) if fallback else None
        )
        parsed = [(n, a) for n, a in getaddresses([value]) if a] if value else []
        if not parsed:
            return b"NIL"
        out = []
        for display, address in parsed:
            local, at, host = address.rpartition("@")
            if not at:
                local, host = address, ""
            out.append(
                b"("
                + _nstring(display or None)
                + b" NIL "
                + _nstring(local)
                + b" "
                + _nstring(host or None)
                + b")"
            )
        return b"(" + b"".join(out) + b")"

    parts = [
        text("Date"),
        text("Subject"),
        addresses("From"),
        addresses("Sender", "From"),
        addresses("Reply-To", "From"),
        addresses("To"),
        addresses("Cc"),
        addresses("Bcc"),
        text("In-Reply-To"),
        text("Message-ID"),
    ]
    return b"(" + b" ".join(parts) + b")"


def _decoded(value: str) -> str:
    try:
        return str(make_header(decode_header(value)))
    except (ValueError, LookupError, UnicodeError):
        return value


def _header_contains(raw: bytes, name: str, needle: str) -> bool:
    header, _ = _split(raw)
    for field_name, value, _ in _header_fields(header):
        if field_name.lower() == name.lower() and (
            not needle or needle in value.lower() or needle in _decoded(value).lower()
        ):
            return True
    return False


def _text_contains(raw: bytes, needle: str, *, headers: bool) -> bool:
    header, body = _split(raw)
    if headers and any(
        needle in f"{n}: {v}".lower() or needle in _decoded(v).lower()
        for n, v, _ in _header_fields(header)
    ):
        return True
    if needle in body.decode("utf-8", "replace").lower():
        return True
    for part in _parse_message(raw).walk():
        if part.get_content_maintype() != "text":
            continue
        try:
            content = part.get_content()
        except (LookupError, ValueError, UnicodeError, KeyError):
            continue
        if isinstance(content, str) and needle in content.lower():
            return True
    return False


def _sent_date(raw: bytes) -> date | None:
    value = _header_value(_split(raw)[0], "Date")
    if not value:
        return None
    try:
        return parsedate_to_datetime(value).date()
    except (TypeError, ValueError):
        return None


def _with_message_id(raw: bytes, domain: str) -> tuple[bytes, str]:
    """``raw`` with a Message-ID (added at the top if missing), and that Message-ID."""
    header, _ = _split(raw)
    found = _header_value(header, "Message-ID")
    if found:
        return raw, found
    message_id = f"<{uuid.uuid4().hex}@{domain}>"
    return f"Message-ID: {message_id}\r\n".encode() + raw, message_id


def _parse_headers(raw: bytes) -> EmailMessage:
    return BytesHeaderParser(policy=email_policy.default).parsebytes(raw)  # type: ignore[return-value]


def _parse_message(raw: bytes) -> EmailMessage:
    return BytesParser(policy=email_policy.default).parsebytes(raw)  # type: ignore[return-value]


def _stored(message: _Message) -> StoredMail:
    return StoredMail(
        uid=message.uid,
        flags=frozenset(f for f in message.flags if f.startswith("\\")),
        keywords=frozenset(f for f in message.flags if not f.startswith("\\")),
        raw=message.raw,
        internal_date=message.internal_date,
    )
