"""One configured mail connection: escalations out over SMTP, the shared mailbox in over IMAP.

This and :mod:`escalier.connectors.email.inbound` are the only code of the mail connector that
touches the network. What each action becomes:

- ``assign``: a mail to the tier's ``address`` (and ``cc``) with the ticket's summary, what it
  carries (severity, customer, attachments, fields) and the customer's own words; the internal
  comments of the same batch (the reason of the move) are folded into it;
- ``comment``: public, a reply to the customer in the thread (``In-Reply-To`` and ``References``
  from the thread's ticket, ``Re: ... [ESC-...]``); internal, a note to the tier's address;
- ``notify``: a mail to the action's recipients (identical notices of one batch, one per
  channel, go out once); a notice the worker routed here from its channel (its ``target`` holds
  ``notice``, see :mod:`escalier.runtime.routing`), of a mail thread or of any other system's
  ticket, is one mail per address: the channel's ``to`` and the people named, each told the
  RACI role they play, with a signed acknowledge link while the step is unacknowledged;
- ``add_tags``, ``remove_tags``: no mail; tags live in Escalier's store and, where the IMAP
  server keeps keywords (``\\*`` in the folder's ``PERMANENTFLAGS``), as keywords on the thread's
  messages in the shared mailbox (its folder, and ``processed_folder`` when one is set):
  ``UID STORE +FLAGS`` / ``-FLAGS`` of :func:`~escalier.connectors.email.inbound.tag_keyword`
  of each tag, on the messages found by their Message-IDs, which are the ticket's own (its
  ``message_id`` and ``references``) and those of the thread's mail in the inbox
  (:func:`~escalier.connectors.email.inbound.thread_message_ids`). On a server without
  keywords, or without ``imap`` settings, the tags stay in the store alone and the detail says
  so;
- ``set_priority``, ``transition``: no mail; they live in Escalier's store (``applied`` with a
  detail saying so);
- ``add_watchers``: not supported for mail threads (``applied=False`` with a detail).

**The acknowledgement.** The escalation's first action (sequence 1 of its keys
``{system}:{instance}:{ticket}:{seq}``, whatever its kind) also sends the customer a reply that
gives them their ticket token. The engine places a new ticket at its first tier without a comment,
so the connector is where a thread's first reply is known.

**Notices of other systems' tickets.** A routed notice of a Jira or Zendesk ticket is a
standalone mail: no thread, no reply headers, no acknowledgement to a customer. Its subject names
the ticket (system, id, subject), its tier and the recipient's role; its ``Message-ID`` comes from
the action key and the address, so each address gets one mail per notice whatever the retries.
With ``acknowledge_links`` set, a notice sent while its step is unacknowledged carries
``<url>/ack/<token>`` (:mod:`escalier.webhooks.ack`), made for that recipient and valid for
``valid_for`` from the notice's decision.

**Our mails.** Each carries a ``Message-ID`` of our own, ``<escalier.{hash of the action key}@
{from domain}>``, the same for the same action whenever it is sent; ``Auto-Submitted:
auto-replied`` (RFC 3834) and ``X-Auto-Response-Suppress: All`` so that responders stay quiet;
threading headers; a ``Date``; and a last line ``escalier:action=<key>``.

**Idempotency.** Every mail sent is recorded by its Message-ID in the store (``mail_sent``,
:mod:`~escalier.connectors.email.marks`) right after the server takes it, and a mail recorded
there is never sent again, by this worker or another. When ``smtp.sent_folder`` (or the
connection's ``sent_folder``) names an IMAP folder, every mail is also appended there, and an
action in ``batch.maybe_applied`` is looked up there too. Only a worker that dies between the
server's answer and the record can send a mail twice, with the same Message-ID, which mail
clients show once.

**Loops.** Mails to customers (acknowledgements and public comments) are never sent to an
address marked as bouncing (:meth:`EmailConnection.mark_bouncing`, which the plugin calls for
each bounce it parses), to our own address, or in reply to a thread whose ticket says it was
automatic; and at most ``auto_replies_per_hour`` (5) go to one address an hour. Bounces and
replies are remembered in the store (:mod:`~escalier.connectors.email.marks`), so a restarted
worker and every node of several honour them. A mail held back this way is reported
``applied=False`` with the reason, never an error: retrying cannot help.

**Errors** are translated in one place (:func:`_smtp_error`): 4xx answers, dropped connections and
timeouts are :class:`TransientError`; 5xx answers :class:`RejectedError` (a refused recipient too:
the address is named); a refused login :class:`AuthError`.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import smtplib
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.headerregistry import Address
from email.message import EmailMessage
from email.policy import SMTP as SMTP_POLICY
from email.utils import format_datetime, getaddresses
from typing import Any

from escalier.connectors.email.config import MailChannelOptions
from escalier.connectors.email.inbound import (
    DEDUPE_WINDOW,
    ImapSession,
    MailboxReader,
    open_imap,
    tag_keyword,
    thread_message_ids,
)
from escalier.connectors.email.marks import AddressMarks
from escalier.connectors.email.message import subject_with_token
from escalier.core.connector import ActionBatch, ActionResult, Changes
from escalier.core.errors import (
    AuthError,
    ConnectorError,
    EscalierError,
    NotFoundError,
    RejectedError,
    StoreError,
    TransientError,
)
from escalier.core.model import Action, ActionKind, Ticket
from escalier.core.policy import Person
from escalier.core.templates import MARKER
from pydantic import ValidationError
from sqlalchemy import Engine

__all__ = [
    "KEY_LINE_PREFIX",
    "EmailConnection",
    "message_id_for",
    "send_notification",
]

log = logging.getLogger("escalier.connectors.email")

SYSTEM = "email"
KEY_LINE_PREFIX = "escalier:action="
# Where the internal notes of a batch go in its assignment mail; no text can contain it.
_NOTES = "\x00notes\x00"
# Ticket fields that are the thread's plumbing, not information about the case.
_PLUMBING = frozenset({"message_id", "references", "reply_to", "to", "cc", "attachments",
                       "thread_subject", "auto_submitted", "kind"})
_NO_MAIL = {
    ActionKind.SET_PRIORITY: "the priority lives in Escalier's store; no mail",
    ActionKind.TRANSITION: "a mail thread has no status upstream; no mail",
}
_TAGS = frozenset({ActionKind.ADD_TAGS, ActionKind.REMOVE_TAGS})
_TAGS_IN_STORE = "tags live in Escalier's store; no mail"
_SYSTEM_NAMES = {"jira": "Jira", "zendesk": "Zendesk", "email": "Mail"}
_ROLE_MEANING = {
    "Responsible": "you work the ticket at this step",
    "Accountable": "you answer for this step",
    "Consulted": "your advice may be asked",
    "Informed": "you are kept informed",
}


def message_id_for(key: str, from_address: str) -> str:
    """Our Message-ID for the mail of action ``key``: the same whenever it is sent."""
    domain = from_address.rpartition("@")[2] or "escalier.invalid"
    return f"<escalier.{hashlib.sha256(key.encode()).hexdigest()[:32]}@{domain}>"


def _sequence(key: str) -> int | None:
    tail = key.rpartition(":")[2]
    return int(tail) if tail.isdigit() else None


def _addresses(values: Iterable[Any]) -> list[str]:
    """Plain addresses from header-style values (``Name <a@b>``), each once, in order."""
    found: list[str] = []
    for _, address in getaddresses([str(v) for v in values if v]):
        address = address.strip()
        if "@" in address and address.lower() not in {a.lower() for a in found}:
            found.append(address)
    return found


def _notice_of(action: Action) -> Mapping[str, Any] | None:
    """What the worker's routing says about a notice (``target.notice``), or None."""
    notice = (action.target or {}).get("notice")
    return notice if isinstance(notice, Mapping) else None


def _own_ticket(action: Action) -> bool:
    """True when the action is of a mail thread's escalation (its key starts ``email:``)."""
    return action.key.partition(":")[0] == SYSTEM


def _notice_subject(prefix: str, ticket: Mapping[str, Any], notice: Mapping[str, Any], role: str,
                    *, own: bool) -> str:
    """``[escalation] Jira SUP-3, tier 3 (Critical response): Outage ... - you are Responsible``."""
    label = _SYSTEM_NAMES.get(str(ticket.get("system")), str(ticket.get("system")))
    named = label if own else f"{label} {ticket.get('id')}"
    subject = " ".join(str(ticket.get("subject") or "(no subject)").split())
    head = f"{prefix} " if prefix else ""
    return (f"{head}{named}, tier {notice.get('tier')} ({notice.get('tier_name')}): {subject}"
            f" - you are {role}")


def _reply_subject(subject: str) -> str:
    return subject if subject[:3].lower() == "re:" else f"Re: {subject}"


def _strip_marker(text: str) -> str:
    text = text.strip()
    return text[len(MARKER):].lstrip() if text.startswith(MARKER) else text


# --- errors ---------------------------------------------------------------------------------------


def _smtp_error(exc: BaseException, *, name: str, what: str) -> ConnectorError:
    """The one place where smtplib's and the socket's exceptions become ours."""
    if isinstance(exc, ConnectorError):
        return exc
    if isinstance(exc, smtplib.SMTPAuthenticationError):
        return AuthError(f"{name}: {what}: the SMTP server refused our credentials "
                         f"({exc.smtp_code})", system=SYSTEM, status=exc.smtp_code)
    if isinstance(exc, smtplib.SMTPNotSupportedError):
        return AuthError(f"{name}: {what}: the SMTP server offers no {exc}", system=SYSTEM)
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        codes = {address: code for address, (code, _) in exc.recipients.items()}
        named = ", ".join(f"{address} ({code})" for address, code in codes.items())
        if any(400 <= code < 500 for code in codes.values()):
            return TransientError(f"{name}: {what}: recipients deferred: {named}", system=SYSTEM,
                                  status=min(codes.values()))
        return RejectedError(f"{name}: {what}: recipients refused: {named}", system=SYSTEM,
                             status=max(codes.values()) if codes else None)
    if isinstance(exc, smtplib.SMTPResponseException):
        code = exc.smtp_code
        said = exc.smtp_error.decode("utf-8", "replace") if isinstance(exc.smtp_error, bytes) \
            else str(exc.smtp_error)
        said = " ".join(said.split())[:200]
        if 500 <= code < 600:
            return RejectedError(f"{name}: {what} was refused ({code} {said})", system=SYSTEM,
                                 status=code)
        return TransientError(f"{name}: {what} was deferred ({code} {said})", system=SYSTEM,
                              status=code if code > 0 else None)
    if isinstance(exc, (TimeoutError, socket.timeout)):
        return TransientError(f"{name}: {what} timed out", system=SYSTEM)
    if isinstance(exc, ssl.SSLCertVerificationError):
        return RejectedError(f"{name}: {what}: the server's certificate is not trusted "
                             f"({exc.verify_message})", system=SYSTEM)
    if isinstance(exc, (smtplib.SMTPException, OSError)):
        return TransientError(f"{name}: {what} failed: the connection broke ({type(exc).__name__})",
                              system=SYSTEM)
    return ConnectorError(f"{name}: {what} failed ({type(exc).__name__})", system=SYSTEM)


# --- SMTP -------------------------------------------------------------------------------------------


def _open_smtp(settings: Any, password: str | None, *, name: str, timeout: float,
               ssl_context: ssl.SSLContext | None) -> smtplib.SMTP:
    """An SMTP session (``ssl``, ``starttls`` or ``none``), logged in when a username is set."""
    context = ssl_context or ssl.create_default_context()
    what = f"connecting to {settings.host}:{settings.port}"
    smtp: smtplib.SMTP | None = None
    try:
        if settings.security == "ssl":
            smtp = smtplib.SMTP_SSL(settings.host, settings.port, timeout=timeout, context=context)
        else:
            smtp = smtplib.SMTP(settings.host, settings.port, timeout=timeout)
        smtp.ehlo()
        if settings.security == "starttls":
            smtp.starttls(context=context)
            smtp.ehlo()
        if settings.username:
            what = f"SMTP login as {settings.username}"
            smtp.login(settings.username, password or "")
    except (smtplib.SMTPException, OSError) as exc:
        if smtp is not None:
            with contextlib.suppress(smtplib.SMTPException, OSError):
                smtp.close()
        raise _smtp_error(exc, name=name, what=what) from exc
    return smtp


class _Outgoing:
    """One SMTP session for a batch, opened at its first mail and closed at the end."""

    def __init__(self, opener: Callable[[], smtplib.SMTP], *, name: str):
        self._opener = opener
        self._smtp: smtplib.SMTP | None = None
        self.name = name

    def send(self, message: EmailMessage, sender: str, recipients: Sequence[str]) -> dict[str, Any]:
        """Send one mail; returns the recipients the server refused while taking the others."""
        if self._smtp is None:
            self._smtp = self._opener()
        try:
            return self._smtp.send_message(message, from_addr=sender, to_addrs=list(recipients))
        except (smtplib.SMTPException, OSError) as exc:
            self.close()
            raise _smtp_error(exc, name=self.name, what=f"sending {message['Message-ID']}") from exc

    def close(self) -> None:
        """QUIT, or drop a session that is already broken."""
        smtp, self._smtp = self._smtp, None
        if smtp is None:
            return
        try:
            smtp.quit()
        except (smtplib.SMTPException, OSError):
            with contextlib.suppress(OSError):
                smtp.close()


# --- the plan of a batch ------------------------------------------------------------------------------


@dataclass
class _Mail:
    """One mail to send, and the actions it serves (their keys, the first one names it)."""

    key: str
    kind: str  # assign, note, reply, ack, notify
    to: list[str]
    cc: list[str]
    subject: str
    body: str
    keys: list[str] = field(default_factory=list)
    in_reply_to: str | None = None
    references: list[str] = field(default_factory=list)
    customer: bool = False  # to a customer: loop protection applies

    def recipients(self) -> list[str]:
        """Every envelope recipient, each once."""
        return _addresses([*self.to, *self.cc])


class EmailConnection:
    """One configured mail connection: SMTP out, the shared mailbox in."""

    system = SYSTEM

    def __init__(
        self,
        config: Any,
        instance: str,
        environ: Mapping[str, str],
        people: Mapping[str, Person],
        *,
        store_engine: Engine | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        monotonic: Callable[[], float] = time.monotonic,
        ssl_context: ssl.SSLContext | None = None,
        auto_replies_per_hour: int | None = None,
        sent_folder: str | None = None,
    ):
        self.config = config
        self.instance = instance
        self.name = f"{SYSTEM}/{instance}"
        self.from_address: str = config.from_address
        self._people = dict(people)
        self._clock = clock
        self._monotonic = monotonic
        self._ssl_context = ssl_context
        self.timeout = config.timeout_seconds
        self.auto_replies_per_hour = (
            auto_replies_per_hour if auto_replies_per_hour is not None else config.auto_replies_per_hour
        )
        self._smtp_password = self._secret(config.smtp.password, environ)
        imap = config.imap
        self._imap_environ: dict[str, str] = {}
        if imap is not None:
            self._imap_environ[imap.password.env] = self._secret(imap.password, environ) or ""
        self.sent_folder: str | None = sent_folder or (imap.sent_folder if imap is not None else None)
        # The store that mail read from the mailbox goes into: given, attached, or ESCALIER_DB's.
        self._store_engine = store_engine
        self._store_url = environ.get("ESCALIER_DB")
        self._own_engine: Engine | None = None
        self._reader: MailboxReader | None = None
        self._lock = threading.Lock()
        self._marks_in_memory = AddressMarks(None, instance, clock=clock, monotonic=monotonic)
        self._marks_in_store: AddressMarks | None = None
        links = getattr(config, "acknowledge_links", None)
        # The receiver's public address; a deployment that learns its address only once it
        # listens (a local one on a free port) sets it before the first notice.
        self.acknowledge_url: str | None = links.url.rstrip("/") if links is not None else None
        self._ack_secret = self._secret(links.secrets[0], environ) if links is not None else None
        self._ack_valid_for: timedelta | None = links.valid_for if links is not None else None

    def _secret(self, secret: Any, environ: Mapping[str, str]) -> str | None:
        if secret is None:
            return None
        try:
            return secret.reveal(environ)
        except KeyError:
            raise EscalierError(f"{self.name}: environment variable {secret.env} is not set") from None

    def __repr__(self) -> str:
        return f"EmailConnection({self.name}, {self.from_address})"

    # --- the connection protocol ------------------------------------------------------------------

    def apply(self, action: Action) -> ActionResult:
        """Apply one action: a batch of one."""
        batch = ActionBatch(action.system, action.instance, action.ticket_id, (action,))
        return self.apply_batch(batch)[0]

    def fetch_ticket(self, ticket_id: str) -> Ticket:
        """Mail keeps no ticket upstream: always raises :class:`NotFoundError`.

        A thread's ticket is what its messages said; a reply's event carries no ticket and the
        engine keeps the escalation's own.
        """
        raise NotFoundError(
            f"{self.name}: mail has no ticket store to read {ticket_id} from; a thread's ticket is "
            "what its messages said, and Escalier's store keeps it", system=SYSTEM,
        )

    def check(self) -> str:
        """Log in to SMTP (and to IMAP when configured, selecting the folder); say what was found."""
        smtp = self.config.smtp
        session = _open_smtp(smtp, self._smtp_password, name=self.name, timeout=self.timeout,
                             ssl_context=self._ssl_context)
        try:
            session.noop()
        except (smtplib.SMTPException, OSError) as exc:
            raise _smtp_error(exc, name=self.name, what="NOOP") from exc
        finally:
            with contextlib.suppress(smtplib.SMTPException, OSError):
                session.quit()
        who = f" as {smtp.username}" if smtp.username else ""
        said = [f"SMTP {smtp.host}:{smtp.port} ({smtp.security}) accepted us{who}"]
        imap = self.config.imap
        if imap is not None:
            imap_session = open_imap(imap, self._imap_environ, name=self.name, timeout=self.timeout,
                                     ssl_context=self._ssl_context)
            try:
                count = imap_session.select(imap.folder)
                idle = "IDLE" in imap_session.capabilities
                marks = "$EscalierDone" if imap_session.keywords else "\\Seen"
            finally:
                imap_session.close()
            said.append(f"IMAP {imap.host}:{imap.port} as {imap.username}: {imap.folder} holds "
                        f"{count} messages, processed ones are marked {marks}, "
                        f"IDLE {'offered' if idle else 'not offered (polling)'}")
        return "; ".join(said)

    def close(self) -> None:
        """Log out of the mailbox and release the store engine the connection opened."""
        with self._lock:
            if self._reader is not None:
                self._reader.close()
                self._reader = None
            if self._own_engine is not None:
                self._own_engine.dispose()
                self._own_engine = None

    # --- mail in ---------------------------------------------------------------------------------

    def attach_store(self, engine: Engine) -> None:
        """Read the mailbox into this store (the worker's), instead of one opened from ESCALIER_DB."""
        with self._lock:
            self._store_engine = engine
            if self._reader is not None:
                self._reader.close()
                self._reader = None

    def reader(self) -> MailboxReader | None:
        """The mailbox reader (None without ``imap`` settings); built on first use.

        :raises ConnectorError: there is no store to read mail into.
        """
        imap = self.config.imap
        if imap is None:
            return None
        with self._lock:
            if self._reader is None:
                self._reader = self._new_reader(imap)
            return self._reader

    def listen(self, halt: threading.Event) -> None:
        """Store new mail as it comes, until ``halt``: in IMAP IDLE, or polling every ``poll_seconds``.

        The worker runs this in a thread of its own, on an IMAP connection of its own; the
        reconciliation's poll stays as the safety net (both store, then mark, so a message both
        see is stored once). Without ``imap`` settings it returns at once.
        """
        imap = self.config.imap
        if imap is None:
            return
        with self._lock:
            reader = self._new_reader(imap)
        reader.run(halt)

    def _engine(self) -> Engine | None:
        """The attached store, or one opened from ESCALIER_DB, or None; call with the lock."""
        if self._store_engine is None and self._store_url and self._own_engine is None:
            from escalier.store import create_store_engine

            self._own_engine = create_store_engine(self._store_url)
        return self._store_engine if self._store_engine is not None else self._own_engine

    def _new_reader(self, imap: Any) -> MailboxReader:
        """A reader into the attached store (or one opened from ESCALIER_DB); call with the lock."""
        engine = self._engine()
        if engine is None:
            raise ConnectorError(
                f"{self.name}: no store to read mail into: set ESCALIER_DB, or attach the "
                "worker's store", system=SYSTEM,
            )
        return MailboxReader(imap, self._imap_environ, store_engine=engine, instance=self.instance,
                             timeout=self.timeout, ssl_context=self._ssl_context)

    def changes_since(self, cursor: str | None, now: datetime) -> Changes | None:
        """Poll the mailbox into the inbox; the worker's inbox pass parses what was stored.

        The events come through the inbox, so the answer carries none; ``more`` asks for another
        poll when the mailbox held more than one batch.
        """
        reader = self.reader()
        if reader is None:
            return None
        try:
            poll = reader.poll_once()
        except StoreError as exc:
            raise TransientError(f"{self.name}: the inbox could not store mail: {exc}",
                                 system=SYSTEM) from exc
        if poll.stored or poll.quarantined:
            log.info("email.mailbox.polled",
                     extra={"instance": self.instance, "stored": poll.stored,
                            "duplicates": poll.duplicates, "quarantined": poll.quarantined})
        return Changes(events=(), cursor=now.isoformat(), more=poll.more, stored=poll.stored)

    # --- loop protection ---------------------------------------------------------------------------

    def _marks(self) -> AddressMarks:
        """Bounces and replies per address: in the store when there is one, else in memory."""
        with self._lock:
            engine = self._engine()
            if engine is None:
                return self._marks_in_memory
            if self._marks_in_store is None or self._marks_in_store.engine is not engine:
                self._marks_in_store = AddressMarks(engine, self.instance, clock=self._clock,
                                                    monotonic=self._monotonic)
            return self._marks_in_store

    def mark_bouncing(self, addresses: Iterable[str]) -> None:
        """Send no more automatic mail to ``addresses`` (a bounce named them), on any worker."""
        found = {a.lower() for a in _addresses(addresses)}
        if found:
            self._marks().mark_bouncing(found)
            log.info("email.address.bouncing", extra={"instance": self.instance,
                                                      "addresses": sorted(found)})

    def _held_back(self, mail: _Mail, ticket: Ticket | None) -> str | None:
        """Why a mail to a customer must not go out now, or None."""
        if not mail.customer:
            return None
        recipients = [a.lower() for a in mail.recipients()]
        if not recipients:
            return "the thread has no customer address to reply to"
        own = self.from_address.lower()
        if own in recipients:
            return f"{own} is our own address; a reply would loop"
        marks = self._marks()
        bouncing = sorted(marks.bouncing(recipients))
        if bouncing:
            return f"{', '.join(bouncing)} bounces; no automatic mail is sent to it"
        fields = ticket.fields if ticket is not None else {}
        auto = fields.get("auto_submitted")
        if (auto and str(auto).lower() != "no") or fields.get("kind") in ("auto_reply", "bounce", "report"):
            return "the thread's message was automatic; automatic mail is never answered"
        for address in recipients:
            sent = marks.replies_in_the_last_hour(address)
            if sent >= self.auto_replies_per_hour:
                return (f"rate limited: {sent} automatic mails to {address} in the last hour "
                        f"(at most {self.auto_replies_per_hour})")
        return None

    def _count_reply(self, mail: _Mail) -> None:
        if mail.customer:
            self._marks().count_reply(mail.recipients())

    # --- mail out ----------------------------------------------------------------------------------

    def apply_batch(self, batch: ActionBatch) -> list[ActionResult]:
        """Send the mails of one ticket's ready actions, one SMTP session for the batch.

        :raises ConnectorError: when nothing was sent and the failure concerns the whole batch
            (the server is unreachable, refuses our login).
        """
        ticket = batch.ticket
        results: dict[str, ActionResult] = {}
        mails = self._plan(batch, ticket, results)
        # Before the mails: a tag action whose keywords fail is retried, and the acknowledgement
        # it carries (the escalation's first action is often its tags) must wait for that retry.
        tagged = self._keep_tags(batch, [a for a in batch.actions if a.kind in _TAGS])
        found = self._already_sent(mails, batch.maybe_applied)
        marks = self._marks()
        ledger = marks.sent(message_id_for(mail.key, self.from_address) for mail in mails)
        outgoing = _Outgoing(self._smtp_opener(), name=self.name)
        sent = 0
        failure: ConnectorError | None = None
        served: dict[str, list[_Mail]] = {}
        for mail in mails:
            for key in mail.keys:
                served.setdefault(key, []).append(mail)
        outcome: dict[str, tuple[bool, str, ConnectorError | None]] = {}  # mail key -> result
        try:
            for mail in mails:
                if failure is not None and isinstance(failure, (TransientError, AuthError)):
                    outcome[mail.key] = (False, "", failure)
                    continue
                if mail.keys[0] in tagged and tagged[mail.keys[0]].error is not None:
                    outcome[mail.key] = (False, "not sent: the action failed", None)
                    continue
                message_id = message_id_for(mail.key, self.from_address)
                if mail.key in found or message_id in ledger:
                    outcome[mail.key] = (False, f"already sent as {message_id}", None)
                    continue
                reason = self._held_back(mail, ticket)
                if reason is not None:
                    log.warning("email.mail.held_back",
                                extra={"instance": self.instance, "ticket_id": batch.ticket_id,
                                       "key": mail.key, "kind": mail.kind, "reason": reason})
                    outcome[mail.key] = (False, reason, None)
                    continue
                try:
                    refused = self._send(outgoing, mail, batch.ticket_id)
                except ConnectorError as exc:
                    failure = exc
                    outcome[mail.key] = (False, "", exc)
                    continue
                sent += 1
                marks.record_sent(message_id)
                self._count_reply(mail)
                note = f"; refused by the server: {', '.join(refused)}" if refused else ""
                outcome[mail.key] = (True, f"{mail.kind} mail to {', '.join(mail.recipients())}{note}", None)
        finally:
            outgoing.close()
        if sent == 0 and failure is not None and isinstance(failure, (TransientError, AuthError)):
            raise failure
        ordered: list[ActionResult] = []
        counted: set[str] = set()
        for action in batch.actions:
            if action.key in results:
                ordered.append(results[action.key])
                continue
            mailed = self._result(action.key, served.get(action.key, []), outcome, counted)
            tags = tagged.get(action.key)
            if tags is None:
                ordered.append(mailed)
            elif tags.error is not None:
                ordered.append(tags)
            elif mailed.error is not None:  # its acknowledgement failed: retried with the tags
                ordered.append(mailed)
            elif served.get(action.key):
                ordered.append(ActionResult(applied=True, detail=f"{tags.detail}; {mailed.detail}",
                                            calls=tags.calls + mailed.calls))
            else:
                ordered.append(tags)
        return ordered

    def _result(self, key: str, mails: list[_Mail],
                outcome: Mapping[str, tuple[bool, str, ConnectorError | None]],
                counted: set[str]) -> ActionResult:
        """One action's result from the mails serving it: an error if one failed."""
        details: list[str] = []
        applied = False
        calls = 0
        refused: RejectedError | None = None
        for mail in mails:
            done, detail, error = outcome.get(mail.key, (False, "not sent", None))
            if error is not None and mail.kind == "ack" and isinstance(error, RejectedError):
                # The customer's server refused the acknowledgement: the action itself stands.
                details.append(f"acknowledgement refused: {error}")
                continue
            if error is not None and mail.kind == "notice" and isinstance(error, RejectedError):
                # One refused address does not make the others' notices unsent.
                details.append(f"refused: {error}")
                refused = refused or error
                continue
            if error is not None:
                return ActionResult(applied=False, detail=str(error), error=error)
            applied = applied or done
            if detail:
                details.append(detail if mail.key == key or mail.kind == "ack"
                               else f"in the mail of {mail.key}: {detail}")
            if done and mail.key not in counted:
                counted.add(mail.key)
                calls += 1
        if refused is not None and not applied and not any(
                outcome.get(m.key, (False, "", None))[1].startswith("already sent") for m in mails):
            return ActionResult(applied=False, detail=str(refused), error=refused)
        return ActionResult(applied=applied, detail="; ".join(details), calls=calls)

    def _smtp_opener(self) -> Callable[[], smtplib.SMTP]:
        return lambda: _open_smtp(self.config.smtp, self._smtp_password, name=self.name,
                                  timeout=self.timeout, ssl_context=self._ssl_context)

    def _send(self, outgoing: _Outgoing, mail: _Mail, ticket_id: str) -> list[str]:
        message = self._message(mail)
        refused = outgoing.send(message, self.from_address, mail.recipients())
        log.info("email.mail.sent",
                 extra={"instance": self.instance, "ticket_id": ticket_id, "key": mail.key,
                        "kind": mail.kind, "message_id": message["Message-ID"],
                        "recipients": len(mail.recipients())})
        if self.sent_folder:
            self._keep_copy(message)
        return sorted(refused)

    def _keep_copy(self, message: EmailMessage) -> None:
        """A copy in the Sent folder, where a maybe-applied action is looked for; best effort."""
        imap = self.config.imap
        if imap is None or not self.sent_folder:
            return
        try:
            session = open_imap(imap, self._imap_environ, name=self.name, timeout=self.timeout,
                                ssl_context=self._ssl_context)
            try:
                session.append(self.sent_folder, message.as_bytes(policy=SMTP_POLICY))
            finally:
                session.close()
        except ConnectorError as exc:
            # The mail went out; a missing copy costs at most one duplicate after a crash.
            log.warning("email.sent_copy.failed", extra={"instance": self.instance,
                                                         "message_id": message["Message-ID"],
                                                         "error": str(exc)})

    def _already_sent(self, mails: Sequence[_Mail], maybe: frozenset[str]) -> set[str]:
        """The mails of maybe-applied actions found in the Sent folder (none without one)."""
        wanted = [m for m in mails if maybe & set(m.keys)]
        imap = self.config.imap
        if not wanted or not self.sent_folder or imap is None:
            return set()
        found: set[str] = set()
        session = open_imap(imap, self._imap_environ, name=self.name, timeout=self.timeout,
                            ssl_context=self._ssl_context)
        try:
            session.ensure_folder(self.sent_folder)
            session.select(self.sent_folder, readonly=True)
            for mail in wanted:
                if session.search_header("Message-ID", message_id_for(mail.key, self.from_address)):
                    found.add(mail.key)
        finally:
            session.close()
        return found

    def _message(self, mail: _Mail) -> EmailMessage:
        message = EmailMessage(policy=SMTP_POLICY)
        name = self.config.from_name
        message["From"] = Address(display_name=name, addr_spec=self.from_address) if name \
            else self.from_address
        message["To"] = ", ".join(mail.to)
        if mail.cc:
            message["Cc"] = ", ".join(mail.cc)
        message["Subject"] = mail.subject
        message["Date"] = format_datetime(self._clock())
        message["Message-ID"] = message_id_for(mail.key, self.from_address)
        if mail.in_reply_to:
            message["In-Reply-To"] = mail.in_reply_to
        if mail.references:
            message["References"] = " ".join(mail.references)
        message["Auto-Submitted"] = "auto-replied"
        message["X-Auto-Response-Suppress"] = "All"
        message.set_content(f"{mail.body.rstrip()}\n\n{KEY_LINE_PREFIX}{mail.key}\n")
        return message

    # --- tags as IMAP keywords ---------------------------------------------------------------------

    def _keep_tags(self, batch: ActionBatch, actions: Sequence[Action]) -> dict[str, ActionResult]:
        """Each tag action's result: its tags set or cleared as keywords on the thread's messages.

        A failure is the tag actions' error (transient ones are retried by the outbox), never the
        batch's: the other actions' mails go out, and are not sent again at the retry.
        """
        if not actions:
            return {}
        imap = self.config.imap
        if imap is None:
            return self._tags_in_store(actions, "no mailbox is configured to keep them as keywords")
        error: ConnectorError
        try:
            ids = self._thread_messages(batch)
            if not ids:
                return self._tags_in_store(actions, "no message of the thread is known")
            return self._store_keywords(imap, batch.ticket_id, ids, actions)
        except StoreError as exc:
            error = TransientError(f"{self.name}: the thread's messages could not be looked up "
                                   f"in the inbox: {exc}", system=SYSTEM)
        except ConnectorError as exc:
            error = exc
        log.warning("email.tags.failed", extra={"instance": self.instance, "ticket_id": batch.ticket_id,
                                                "error": str(error)})
        return {a.key: ActionResult(applied=False, detail=str(error), error=error) for a in actions}

    @staticmethod
    def _tags_in_store(actions: Sequence[Action], why: str) -> dict[str, ActionResult]:
        return {a.key: ActionResult(applied=True, detail=f"{_TAGS_IN_STORE}; {why}") for a in actions}

    def _thread_messages(self, batch: ActionBatch) -> list[str]:
        """The Message-IDs of the thread: the ticket's own, and its mail in the inbox."""
        ticket = batch.ticket
        fields = ticket.fields if ticket is not None else {}
        references = fields.get("references") or []
        if isinstance(references, str):
            references = references.split()
        known = [str(i) for i in [fields.get("message_id"), *references] if i]
        with self._lock:
            engine = self._engine()
        if engine is None:
            return list(dict.fromkeys(known))
        # A thread's mail arrives after its first message, whose Date may run a day ahead.
        since = (ticket.created_at - timedelta(days=1) if ticket is not None
                 else self._clock() - DEDUPE_WINDOW)
        return thread_message_ids(engine, instance=self.instance, ticket_id=batch.ticket_id,
                                  prefix=self.config.token_prefix.upper(), known=known, since=since)

    def _store_keywords(self, imap: Any, ticket_id: str, ids: Sequence[str],
                        actions: Sequence[Action]) -> dict[str, ActionResult]:
        """Set or clear each action's keywords, in order, on the thread's messages of each folder."""
        folders = list(dict.fromkeys(f for f in (imap.folder, imap.processed_folder) if f))
        counted = {a.key: [0, 0] for a in actions}  # messages, STORE commands
        session = open_imap(imap, self._imap_environ, name=self.name, timeout=self.timeout,
                            ssl_context=self._ssl_context)
        try:
            for folder in folders:
                if folder != imap.folder and not session.has_folder(folder):
                    continue  # nothing was moved there yet
                session.select(folder)
                if not session.any_keyword:
                    if folder == imap.folder:
                        return self._tags_in_store(
                            actions, f"{imap.host} keeps no IMAP keywords in {folder} (its "
                            "PERMANENTFLAGS lack \\*)")
                    continue
                uids = self._uids_of(session, ids)
                for action in actions if uids else ():
                    # Setting a keyword a message has, or clearing one it lacks, changes nothing:
                    # an action retried after a timeout is stored again without a look first.
                    session.store_keywords(uids, [tag_keyword(t) for t in dict.fromkeys(action.tags)],
                                           add=action.kind is ActionKind.ADD_TAGS)
                    counted[action.key][0] += len(uids)
                    counted[action.key][1] += 1
        finally:
            session.close()
        results: dict[str, ActionResult] = {}
        for action in actions:
            messages, calls = counted[action.key]
            keywords = ", ".join(tag_keyword(t) for t in dict.fromkeys(action.tags))
            if not messages:
                detail = f"no message of the thread is in {' or '.join(folders)} to keep them as keywords"
            elif action.kind is ActionKind.ADD_TAGS:
                detail = f"kept as IMAP keywords {keywords} on {messages} message(s) of the thread"
            else:
                detail = f"IMAP keywords {keywords} cleared from {messages} message(s) of the thread"
            results[action.key] = ActionResult(applied=True, detail=f"{_TAGS_IN_STORE}; {detail}",
                                               calls=calls)
            log.info("email.tags.kept", extra={"instance": self.instance, "ticket_id": ticket_id,
                                               "key": action.key, "kind": action.kind.value,
                                               "messages": messages})
        return results

    @staticmethod
    def _uids_of(session: ImapSession, ids: Sequence[str]) -> list[str]:
        """The UIDs of the selected folder's messages with one of the Message-IDs ``ids``."""
        found = {uid for message_id in ids for uid in session.search_header("Message-ID", message_id)}
        return sorted(found, key=int)

    # --- planning ------------------------------------------------------------------------------------

    def _plan(self, batch: ActionBatch, ticket: Ticket | None,
              results: dict[str, ActionResult]) -> list[_Mail]:
        """The mails of a batch, in the order of the actions they serve; no-mail results filled in."""
        thread = _Thread.of(batch.ticket_id, ticket, self.from_address)
        mails: list[_Mail] = []
        group_mails: dict[tuple[str, ...], _Mail] = {}  # an assign mail per group address
        notices: dict[tuple[tuple[str, ...], str], _Mail] = {}
        internal: list[Action] = []
        notify: list[Action] = []
        routed: list[Action] = []
        for action in batch.actions:
            if _sequence(action.key) == 1 and _own_ticket(action):
                mails.append(self._acknowledgement(action, thread))
            if action.kind is ActionKind.NOTIFY and _notice_of(action) is not None:
                routed.append(action)
            elif action.kind in _TAGS:
                continue  # no mail: kept as keywords once the mails are out (_keep_tags)
            elif action.kind in _NO_MAIL:
                results[action.key] = ActionResult(applied=True, detail=_NO_MAIL[action.kind])
            elif action.kind is ActionKind.ADD_WATCHERS:
                results[action.key] = ActionResult(
                    applied=False, detail="watchers are not supported for mail threads")
            elif action.kind is ActionKind.ASSIGN:
                to, cc = self._group(action)
                if not to:
                    results[action.key] = ActionResult(
                        applied=False, detail="the tier's email target has no address")
                    continue
                mail = self._assignment(action, thread, to, cc)
                group_mails[tuple(a.lower() for a in to)] = mail
                mails.append(mail)
            elif action.kind is ActionKind.COMMENT and action.public:
                mails.append(self._reply(action, thread))
            elif action.kind is ActionKind.COMMENT:
                internal.append(action)
            elif action.kind is ActionKind.NOTIFY:
                notify.append(action)
            else:
                results[action.key] = ActionResult(applied=False, detail=f"{action.kind.value} is not "
                                                   "supported for mail threads")
        for action in internal:
            to, cc = self._group(action)
            host = group_mails.get(tuple(a.lower() for a in to)) if to else None
            if host is not None:
                host.body = host.body.replace(_NOTES, f"{_strip_marker(action.body or '')}\n\n{_NOTES}", 1)
                host.keys.append(action.key)
                continue
            if not to:
                results[action.key] = ActionResult(
                    applied=False, detail="the tier's email target has no address for an internal note")
                continue
            mails.append(_Mail(key=action.key, kind="note", to=to, cc=cc,
                               subject=subject_with_token(f"Note: {thread.subject}", thread.token),
                               body=_strip_marker(action.body or ""), keys=[action.key],
                               references=thread.references_all()))
        assigned = {a.lower(): mail for mail in group_mails.values() for a in mail.recipients()}
        for action in notify:
            body = _strip_marker(action.body or "")
            everyone = _addresses(action.recipients)
            # Whoever the batch's assignment mail reaches has the news already.
            recipients = [a for a in everyone if a.lower() not in assigned]
            if not everyone:
                results[action.key] = ActionResult(
                    applied=False, detail="no recipient has an email address")
                continue
            if not recipients:
                host = assigned[everyone[0].lower()]
                host.keys.append(action.key)
                continue
            same = notices.get((tuple(a.lower() for a in recipients), body))
            if same is not None:
                same.keys.append(action.key)
                continue
            mail = _Mail(key=action.key, kind="notify", to=recipients, cc=[],
                         subject=subject_with_token(f"Escalation notice: {thread.subject}", thread.token),
                         body=body, keys=[action.key], references=thread.references_all())
            notices[(tuple(a.lower() for a in recipients), body)] = mail
            mails.append(mail)
        by_address: dict[tuple[str, str], _Mail] = {}
        for action in routed:
            mails.extend(self._notice_mails(action, thread, by_address, results))
        for mail in mails:
            mail.body = mail.body.replace("\n\n" + _NOTES, "").replace(_NOTES, "")
        order = {action.key: n for n, action in enumerate(batch.actions)}
        mails.sort(key=lambda m: (order.get(m.keys[0], 0), m.kind != "ack"))
        return mails

    def _notice_mails(self, action: Action, thread: _Thread, by_address: dict[tuple[str, str], _Mail],
                      results: dict[str, ActionResult]) -> list[_Mail]:
        """One mail per address of a routed notice; an address the batch already tells the same
        thing (another channel's copy of the notice) gets no second mail."""
        notice = _notice_of(action) or {}
        try:
            options = MailChannelOptions.model_validate(notice.get("options") or {})
        except ValidationError:
            options = MailChannelOptions()
        ticket = notice.get("ticket") or {}
        own = _own_ticket(action)
        body = _strip_marker(action.body or "")
        found: list[_Mail] = []
        for entry in notice.get("to") or ():
            address = str(entry.get("address") or "")
            if "@" not in address:
                continue
            same = by_address.get((address.lower(), body))
            if same is not None:
                same.keys.append(action.key)
                continue
            role = str(entry.get("role") or "Informed")
            subject = _notice_subject(options.subject_prefix, ticket, notice, role, own=own)
            text = self._notice_body(body, entry, ticket, notice, role)
            mail = _Mail(key=f"{action.key}/{address.lower()}", kind="notice", to=[address], cc=[],
                         subject=subject_with_token(subject, thread.token) if own else subject,
                         body=text, keys=[action.key],
                         references=thread.references_all() if own else [])
            by_address[(address.lower(), body)] = mail
            found.append(mail)
        if not found and not any(action.key in m.keys for m in by_address.values()):
            results[action.key] = ActionResult(applied=False, detail="no recipient has an email address")
        return found

    def _notice_body(self, body: str, entry: Mapping[str, Any], ticket: Mapping[str, Any],
                     notice: Mapping[str, Any], role: str) -> str:
        label = _SYSTEM_NAMES.get(str(ticket.get("system")), str(ticket.get("system")))
        tier = notice.get("tier")
        place = f"tier {tier} ({notice.get('tier_name')})"
        meaning = _ROLE_MEANING.get(role, "you are kept informed")
        lines = [body, "", f"You receive this as {role} ({meaning}) for {label} {ticket.get('id')} "
                 f"\"{ticket.get('subject') or ''}\", now at {place}."]
        link = self._acknowledge_link(entry, ticket, notice)
        if link is not None:
            url, expires = link
            lines += ["", f"Acknowledge it, as {entry.get('name') or entry.get('person')}, to stop the "
                      "repeated notices:", f"  {url}",
                      f"The link works until {expires:%Y-%m-%d %H:%M} UTC, for this step of the "
                      "escalation only."]
        elif notice.get("acknowledge"):
            lines += ["", "A public answer on the ticket acknowledges it and stops the repeated notices."]
        return "\n".join(lines)

    def _acknowledge_link(self, entry: Mapping[str, Any], ticket: Mapping[str, Any],
                          notice: Mapping[str, Any]) -> tuple[str, datetime] | None:
        """The signed link for one recipient of a notice, and when it expires; None without one."""
        if not notice.get("acknowledge") or not self.acknowledge_url or not self._ack_secret:
            return None
        from escalier.webhooks.ack import AckClaim, ack_path, sign_ack_token

        try:
            issued = datetime.fromisoformat(str(notice["issued_at"]))
            claim = AckClaim(
                system=str(ticket["system"]), instance=str(ticket.get("instance") or "default"),
                ticket_id=str(ticket["id"]), move=int(notice["move"]), tier=int(notice["tier"]),
                person=str(entry.get("person") or entry["address"]),
                expires_at=(issued + (self._ack_valid_for or timedelta(days=3))).astimezone(UTC)
                .replace(microsecond=0),
            )
        except (KeyError, TypeError, ValueError):
            log.warning("email.notice.no_link", extra={"instance": self.instance,
                                                       "reason": "the notice does not say its step"})
            return None
        return f"{self.acknowledge_url}{ack_path(sign_ack_token(claim, self._ack_secret))}", claim.expires_at

    def _group(self, action: Action) -> tuple[list[str], list[str]]:
        target = action.target or {}
        to = _addresses([target.get("address")])
        cc = [a for a in _addresses(target.get("cc") or []) if a.lower() not in {t.lower() for t in to}]
        return to, cc

    def _acknowledgement(self, action: Action, thread: _Thread) -> _Mail:
        text = self.config.acknowledgement
        key = f"{action.key}/ack"
        return _Mail(key=key, kind="ack", to=thread.customer, cc=[],
                     subject=subject_with_token(_reply_subject(thread.subject), thread.token),
                     body=text.replace("{token}", thread.token), keys=[action.key],
                     in_reply_to=thread.message_id, references=thread.references_all(),
                     customer=True)

    def _reply(self, action: Action, thread: _Thread) -> _Mail:
        return _Mail(key=action.key, kind="reply", to=thread.customer, cc=thread.customer_cc,
                     subject=subject_with_token(_reply_subject(thread.subject), thread.token),
                     body=_strip_marker(action.body or ""), keys=[action.key],
                     in_reply_to=thread.message_id, references=thread.references_all(),
                     customer=True)

    def _assignment(self, action: Action, thread: _Thread, to: list[str], cc: list[str]) -> _Mail:
        tier = f"tier {action.tier}" if action.tier else "your tier"
        subject = subject_with_token(f"Escalation to {tier}: {thread.subject}", thread.token)
        return _Mail(key=action.key, kind="assign", to=to, cc=cc, subject=subject,
                     body=_summary(thread, tier), keys=[action.key],
                     references=thread.references_all())


@dataclass
class _Thread:
    """What a batch's ticket says about its mail thread."""

    token: str
    subject: str
    customer: list[str]
    customer_cc: list[str]
    message_id: str | None
    references: list[str]
    ticket: Ticket | None

    @classmethod
    def of(cls, ticket_id: str, ticket: Ticket | None, own: str) -> _Thread:
        fields = ticket.fields if ticket is not None else {}
        subject = str(fields.get("thread_subject") or (ticket.subject if ticket else "") or "(no subject)")
        reply_to = fields.get("reply_to")
        customer = _addresses(reply_to if isinstance(reply_to, list) else [reply_to]) if reply_to else []
        if not customer and ticket is not None and ticket.requester:
            customer = _addresses([ticket.requester])
        own_domain = own.rpartition("@")[2].lower()
        cc_values = fields.get("cc") or []
        cc = [a for a in _addresses(cc_values if isinstance(cc_values, list) else [cc_values])
              if a.rpartition("@")[2].lower() != own_domain
              and a.lower() not in {c.lower() for c in customer}]
        references = fields.get("references") or []
        if isinstance(references, str):
            references = references.split()
        message_id = fields.get("message_id")
        return cls(token=ticket_id, subject=subject, customer=customer, customer_cc=cc,
                   message_id=str(message_id) if message_id else None,
                   references=[str(r) for r in references], ticket=ticket)

    def references_all(self) -> list[str]:
        """The thread's References, ending with the message we answer."""
        found = list(dict.fromkeys(self.references))
        if self.message_id and self.message_id not in found:
            found.append(self.message_id)
        return found


def _summary(thread: _Thread, tier: str) -> str:
    """An assignment mail's text: the case, what it carries, and the customer's words."""
    ticket = thread.ticket
    lines = [f"Ticket {thread.token} is assigned to {tier}.", "", _NOTES, "", "Ticket", ""]
    lines.append(f"  Subject:   {thread.subject}")
    if ticket is not None:
        lines.append(f"  Customer:  {ticket.requester or 'unknown'}")
        lines.append(f"  Opened:    {ticket.created_at.isoformat(timespec='minutes')}")
        for label, value in (("Severity", ticket.severity), ("Priority", ticket.priority),
                             ("Users affected", ticket.users_affected),
                             ("Organization", ticket.organization)):
            if value not in (None, ""):
                lines.append(f"  {label + ':':<10} {value}")
        if ticket.tags:
            lines.append(f"  Tags:      {', '.join(ticket.tags)}")
        attachments = ticket.fields.get("attachments") or []
        if attachments:
            lines.append("  Attachments:")
            for item in attachments:
                if isinstance(item, Mapping):
                    size = item.get("size")
                    lines.append(f"    - {item.get('filename') or item.get('name') or 'unnamed'}"
                                 f" ({item.get('content_type', '?')}"
                                 f"{f', {size} bytes' if size is not None else ''})")
                else:
                    lines.append(f"    - {item}")
        information = {k: v for k, v in ticket.fields.items()
                       if k not in _PLUMBING and v not in (None, "", [], {})}
        lines += ["", "Required information on the ticket", ""]
        if information:
            lines += [f"  {name}: {value}" for name, value in sorted(information.items())]
        else:
            lines.append("  (no fields; see the customer's message below)")
        if ticket.description:
            lines += ["", "The customer wrote", ""]
            text = ticket.description.strip()
            if len(text) > 8000:
                text = text[:8000] + "\n[...]"
            lines += [f"> {line}" if line else ">" for line in text.splitlines()]
    return "\n".join(lines)


# --- mail as a notification channel ---------------------------------------------------------------------


def send_notification(
    config: Any,
    recipients: Sequence[str],
    subject: str,
    body: str,
    *,
    environ: Mapping[str, str] | None = None,
    ssl_context: ssl.SSLContext | None = None,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> None:
    """Send one notification mail through the mail connector's SMTP settings (``config``).

    :raises ConnectorError: as the connection's own sending does (transient, refused, auth).
    """
    import os

    environ = os.environ if environ is None else environ
    addresses = _addresses(recipients)
    if not addresses:
        raise RejectedError("email: a notification needs at least one address", system=SYSTEM)
    password = config.smtp.password.reveal(environ) if config.smtp.password is not None else None
    name = "email/notifications"
    message = EmailMessage(policy=SMTP_POLICY)
    message["From"] = config.from_address
    message["To"] = ", ".join(addresses)
    message["Subject"] = subject
    message["Date"] = format_datetime(clock())
    digest = hashlib.sha256("\n".join([subject, body, *addresses]).encode()).hexdigest()[:32]
    message["Message-ID"] = f"<escalier.notice.{digest}@{config.from_address.rpartition('@')[2]}>"
    message["Auto-Submitted"] = "auto-generated"
    message["X-Auto-Response-Suppress"] = "All"
    message.set_content(body)
    outgoing = _Outgoing(
        lambda: _open_smtp(config.smtp, password, name=name,
                           timeout=config.timeout_seconds,
                           ssl_context=ssl_context),
        name=name,
    )
    try:
        outgoing.send(message, config.from_address, addresses)
    finally:
        outgoing.close()
