"""Past mail threads, as events, for ``escalier backtest``.

The shared mailbox is read over IMAP, read-only (``EXAMINE``, ``BODY.PEEK``: no flag is set, no
message moved): the folder and, when one is set, the folder processed mail is moved to. Two
passes keep memory bounded: the first fetches the headers of every message since the window's
start and groups their UIDs by thread (the ticket token of the subject, else the thread's root
message id, as the connector names tickets); the second fetches one thread's messages at a time
and parses each as the worker parses a stored delivery
(:func:`~escalier.connectors.email.events.parse_delivery`: ``created`` for the thread's first
mail, ``commented`` for the others, the same ids), with the time the server received it. Bounces,
reports, automatic replies and Escalier's own mail are left out as the worker leaves them out.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta

from escalier.connectors.email import events
from escalier.connectors.email.connection import EmailConnection
from escalier.connectors.email.inbound import ImapSession, open_imap
from escalier.connectors.email.message import read_message, thread_of
from escalier.core.connector import DeliverySkipped, RawEvent
from escalier.core.errors import EscalierError, NotFoundError, PayloadError
from escalier.core.model import Ticket, TicketEvent

__all__ = ["read_history"]

BATCH = 200
_UID = re.compile(rb"UID (\d+)")
_INTERNALDATE = re.compile(rb'INTERNALDATE "([^"]+)"')
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def read_history(
    connection: EmailConnection,
    *,
    since: datetime,
    until: datetime,
    progress: Callable[[str], None] | None = None,
) -> Iterator[list[TicketEvent]]:
    """Each thread whose first mail arrived in ``[since, until]``: its events, oldest first.

    :raises EscalierError: when the connection has no ``imap`` settings.
    :raises ConnectorError: when the mailbox cannot be read.
    """
    imap = connection.config.imap
    if imap is None:
        raise EscalierError(
            f"{connection.name}: connectors.email has no imap settings, so there is no mailbox "
            "to read the history from"
        )
    session = open_imap(imap, connection._imap_environ, name=connection.name,
                        timeout=connection.timeout)
    try:
        folders = [imap.folder] + ([imap.processed_folder] if imap.processed_folder else [])
        threads = _threads(session, connection, folders, since, progress)
        for count, (_, places) in enumerate(threads.items(), start=1):
            found = _thread_events(session, connection, places)
            if found and since <= found[0].occurred_at <= until:
                yield found
            if progress is not None:
                progress(f"read {count:,} of {len(threads):,} mail threads")
    finally:
        session.close()


def _threads(
    session: ImapSession,
    connection: EmailConnection,
    folders: list[str],
    since: datetime,
    progress: Callable[[str], None] | None,
) -> dict[str, list[tuple[str, str]]]:
    """Thread id -> the (folder, UID) of its messages, from the headers alone."""
    prefix = connection.config.token_prefix.upper()
    # SINCE compares dates, in the server's zone: a day early, then the replies' own times.
    day = since - timedelta(days=1)
    criterion = f"{day.day}-{_MONTHS[day.month - 1]}-{day.year}"
    threads: dict[str, list[tuple[str, str]]] = {}
    for folder in folders:
        session.select(folder, readonly=True)
        data = session.uid("SEARCH", "SINCE", criterion)
        uids = [u.decode() for u in (data[0] or b"").split()] if data else []
        for start in range(0, len(uids), BATCH):
            chunk = uids[start:start + BATCH]
            for uid, _, raw in _fetch(session, chunk, "BODY.PEEK[HEADER]"):
                try:
                    message = read_message(raw)
                except PayloadError:
                    continue
                threads.setdefault(thread_of(message, prefix), []).append((folder, uid))
            if progress is not None:
                progress(f"read the headers of {start + len(chunk):,} mails in {folder}")
    return threads


def _thread_events(
    session: ImapSession, connection: EmailConnection, places: list[tuple[str, str]]
) -> list[TicketEvent]:
    """One thread's events, parsed as the worker parses stored mail, oldest first."""
    messages: list[tuple[datetime, bytes]] = []
    by_folder: dict[str, list[str]] = {}
    for folder, uid in places:
        by_folder.setdefault(folder, []).append(uid)
    for folder, uids in by_folder.items():
        session.select(folder, readonly=True)
        messages.extend((at, raw) for _, at, raw in _fetch(session, uids, "BODY.PEEK[]") if at)
    messages.sort(key=lambda m: m[0])
    opened: dict[str, Ticket] = {}

    def fetch(ticket_id: str) -> Ticket:
        # A reply finds the thread's ticket as the mail that opened it made it.
        if ticket_id not in opened:
            raise NotFoundError(f"{connection.name}: no thread {ticket_id} yet", system="email")
        return opened[ticket_id]

    found: dict[str, TicketEvent] = {}
    for received, raw in messages:
        delivery = RawEvent(source="email", instance=connection.instance, body=raw, headers={},
                            received_at=received)
        try:
            parsed = events.parse_delivery(delivery, connection.config, fetch=fetch)
        except (DeliverySkipped, PayloadError):
            continue
        for event in parsed:
            if event.ticket is not None and event.ticket_id not in opened:
                opened[event.ticket_id] = event.ticket
            found.setdefault(event.id, event)
    ordered = sorted(found.values(), key=lambda e: (e.occurred_at, e.id))
    first = next((e.ticket_id for e in ordered if e.ticket is not None), None)
    return [e for e in ordered if e.ticket_id == first]


def _fetch(session: ImapSession, uids: list[str], part: str) -> Iterator[tuple[str, datetime | None, bytes]]:
    """(UID, internal date, bytes) of each message of ``uids`` that the server hands over."""
    if not uids:
        return
    data = session.uid("FETCH", ",".join(uids), f"(UID INTERNALDATE {part})")
    for item in data:
        if not isinstance(item, tuple) or len(item) < 2:
            continue
        head, body = item[0], item[1]
        uid = _UID.search(head)
        if uid is None or not isinstance(body, bytes):
            continue
        yield uid.group(1).decode(), _internal_date(head), body


def _internal_date(head: bytes) -> datetime | None:
    match = _INTERNALDATE.search(head)
    if match is None:
        return None
    try:
        return datetime.strptime(match.group(1).decode().strip(), "%d-%b-%Y %H:%M:%S %z").astimezone(UTC)
    except ValueError:
        return None

