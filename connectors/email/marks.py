"""What the mail connector remembers: which addresses bounce, its automatic replies to each, and
the mails it sent.

Kept in the store when the connection has one (``mail_bounces``, ``mail_replies``, ``mail_sent``),
so a restart or another worker node keeps honouring a bounce and the hourly limit of automatic
replies to one address, and never sends a mail again; in memory otherwise (a connection used
without a store, as ``escalier parse`` does).
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta

from sqlalchemy import Engine, delete, func, insert, select
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from escalier.core.errors import TransientError
from escalier.store.schema import mail_bounces, mail_replies, mail_sent

__all__ = ["AddressMarks"]

log = logging.getLogger("escalier.connectors.email")

HOUR = timedelta(hours=1)


class AddressMarks:
    """Bouncing addresses and automatic replies per address, for one mail connection instance.

    :param engine: the store; None keeps the marks in memory, for this process only.
    :param clock: the time of a reply (the store's marks) ...
    :param monotonic: ... and of a reply kept in memory.
    """

    def __init__(
        self,
        engine: Engine | None,
        instance: str,
        *,
        clock: Callable[[], datetime],
        monotonic: Callable[[], float],
    ):
        self.engine = engine
        self.instance = instance
        self._clock = clock
        self._monotonic = monotonic
        self._lock = threading.Lock()
        self._bouncing: set[str] = set()
        self._replies: dict[str, deque[float]] = {}
        self._sent: set[str] = set()

    def mark_bouncing(self, addresses: Iterable[str]) -> set[str]:
        """Remember ``addresses`` (lower case) as bouncing; returns those newly marked."""
        found = {a.lower() for a in addresses}
        if not found:
            return set()
        with self._lock:
            new = found - self._bouncing
            self._bouncing |= found
        if self.engine is None:
            return new
        try:
            with self.engine.begin() as conn:
                known = set(conn.execute(
                    select(mail_bounces.c.address).where(mail_bounces.c.instance == self.instance,
                                                         mail_bounces.c.address.in_(found))
                ).scalars())
                missing = sorted(found - known)
                if missing:
                    conn.execute(insert(mail_bounces), [
                        {"instance": self.instance, "address": a, "marked_at": self._clock()}
                        for a in missing
                    ])
            return set(missing)
        except IntegrityError:
            return set()  # another worker marked them in the meantime
        except SQLAlchemyError as exc:
            raise _unavailable(exc) from exc

    def bouncing(self, addresses: Iterable[str]) -> set[str]:
        """Those of ``addresses`` (lower case) marked as bouncing."""
        wanted = {a.lower() for a in addresses}
        with self._lock:
            found = wanted & self._bouncing
        if self.engine is None or not wanted - found:
            return found
        try:
            with self.engine.connect() as conn:
                found |= set(conn.execute(
                    select(mail_bounces.c.address).where(
                        mail_bounces.c.instance == self.instance,
                        mail_bounces.c.address.in_(wanted - found))
                ).scalars())
        except SQLAlchemyError as exc:
            raise _unavailable(exc) from exc
        return found

    def replies_in_the_last_hour(self, address: str) -> int:
        """How many automatic replies went to ``address`` in the last hour."""
        address = address.lower()
        if self.engine is None:
            with self._lock:
                sent = self._replies.get(address)
                now = self._monotonic()
                while sent and now - sent[0] >= HOUR.total_seconds():
                    sent.popleft()
                return len(sent) if sent else 0
        try:
            with self.engine.connect() as conn:
                return conn.execute(
                    select(func.count()).select_from(mail_replies).where(
                        mail_replies.c.instance == self.instance, mail_replies.c.address == address,
                        mail_replies.c.sent_at > self._clock() - HOUR)
                ).scalar_one()
        except SQLAlchemyError as exc:
            raise _unavailable(exc) from exc

    def count_reply(self, addresses: Iterable[str]) -> None:
        """Note an automatic reply to each of ``addresses``; forget replies older than an hour."""
        found = sorted({a.lower() for a in addresses})
        if not found:
            return
        if self.engine is None:
            now = self._monotonic()
            with self._lock:
                for address in found:
                    self._replies.setdefault(address, deque()).append(now)
            return
        now = self._clock()
        try:
            with self.engine.begin() as conn:
                conn.execute(delete(mail_replies).where(
                    mail_replies.c.instance == self.instance, mail_replies.c.address.in_(found),
                    mail_replies.c.sent_at <= now - HOUR))
                conn.execute(insert(mail_replies), [
                    {"instance": self.instance, "address": a, "sent_at": now} for a in found
                ])
        except SQLAlchemyError as exc:
            raise _unavailable(exc) from exc


    def sent(self, message_ids: Iterable[str]) -> set[str]:
        """Those of ``message_ids`` sent already, by this worker or another."""
        wanted = set(message_ids)
        with self._lock:
            found = wanted & self._sent
        if self.engine is None or not wanted - found:
            return found
        try:
            with self.engine.connect() as conn:
                found |= set(conn.execute(
                    select(mail_sent.c.message_id).where(mail_sent.c.message_id.in_(wanted - found))
                ).scalars())
        except SQLAlchemyError as exc:
            raise _unavailable(exc) from exc
        return found

    def record_sent(self, message_id: str) -> None:
        """Note that the mail ``message_id`` went out: it is never sent again."""
        with self._lock:
            self._sent.add(message_id)
        if self.engine is None:
            return
        try:
            with self.engine.begin() as conn:
                conn.execute(insert(mail_sent).values(message_id=message_id, instance=self.instance,
                                                      sent_at=self._clock()))
        except IntegrityError:
            return  # recorded already
        except SQLAlchemyError as exc:
            # The mail went out: a missing record costs at most one duplicate, never a lost mail.
            log.warning("email.sent_record.failed", extra={"instance": self.instance,
                                                           "message_id": message_id,
                                                           "error": str(_unavailable(exc))})


def _unavailable(exc: SQLAlchemyError) -> TransientError:
    return TransientError(
        f"email: the store could not be read for bounces and reply limits: "
        f"{type(getattr(exc, 'orig', None) or exc).__name__}", system="email",
    )
