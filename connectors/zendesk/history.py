"""Past Zendesk tickets with their histories, as events, for ``escalier backtest``.

The histories come from the incremental ticket event export (``incremental/ticket_events`` from
the window's start, with the ``comment_events`` sideload): every update of every ticket, oldest
first, up to 1,000 a page, in a handful of requests where reading each ticket's audits took one
request per ticket. Each event of the export is one audit, and becomes the events its webhooks
make:

- the version event (``zendesk:{instance}:{ticket}:v:{epoch}``), built by
  :func:`~escalier.connectors.zendesk.events.events_from_export` from the ticket as it stood after
  that update (the ``Create`` and ``Change`` child events applied in order), with the update's
  author, its kind (``created``, ``resolved``, ``reopened``, ``status_changed``, ``assigned``,
  ``updated``) and its changes named as the event webhooks name them;
- a comment event (``zendesk:{instance}:{ticket}:comment:{id}``) for each comment added after the
  ticket's creation (the first comment is the ticket's description).

A version's time is the update's, kept rising by a second at least as Zendesk keeps
``updated_at`` rising, so that the ids are those the webhooks of the same updates carried.

The export is ordered by time, not by ticket. A ticket is followed from its ``Create`` event (one
created before the window is passed over) and handed on, whole, once it is closed (nothing can
change it after that) or when the export reaches ``until``; a ticket deleted meanwhile is dropped.
What is held at any moment is the updates of the tickets created in the window and not closed
yet, up to the point the export has reached: the tickets open at once, plus those solved and not
yet closed (Zendesk closes a solved ticket after four days by default), plus, towards the end,
every ticket still open. Each update is kept as its changes and comments, without the rest of the
export's record. Nothing is written.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from escalier.connectors.zendesk import events
from escalier.connectors.zendesk.connection import ZendeskConnection
from escalier.core.errors import AuthError, ConnectorError, NotFoundError, PayloadError, TransientError
from escalier.core.extensions import OwnIdentity
from escalier.core.model import (
    ActorRole,
    Comment,
    EventKind,
    FieldChange,
    Ticket,
    TicketEvent,
)

__all__ = ["read_history"]

# Zendesk allows 10 requests a minute to its incremental exports: a long export waits for its
# turn as the 429's Retry-After says, this many times in a row at most.
RATE_LIMIT_WAITS = 6
# Pages of the ticket export and of a ticket's audits, when the event export is refused.
EXPORT_PAGE = 1000
AUDIT_PAGE = 100
_DONE = frozenset({"solved", "closed", "deleted"})
_SYSTEM_ACTOR = "-1"
_REFERENCES = frozenset({"assignee_id", "group_id", "requester_id", "organization_id"})
_TICKET_FIELDS = (
    "subject", "status", "priority", "type", "requester_id", "assignee_id", "group_id",
    "organization_id", "external_id", "due_at",
)
# Keys of a child event of the export that are not the name of the ticket field it sets.
_CHILD_KEYS = frozenset({"id", "via", "via_reference_id", "event_type", "previous_value"})


def read_history(
    connection: ZendeskConnection,
    *,
    since: datetime,
    until: datetime,
    progress: Callable[[str], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> Iterator[list[TicketEvent]]:
    """Each ticket created in ``[since, until]``: its events, oldest first.

    Tickets come as they close, then the rest in the order they were created.

    :raises ConnectorError: when Zendesk cannot be read (the connection's errors, unchanged; a
        rate limit that outlasts :data:`RATE_LIMIT_WAITS` waits).
    """
    return _History(connection, progress, sleep).tickets(since, until)


class _History:
    """Reads one account's ticket event export and replays each ticket's updates into its versions."""

    def __init__(
        self,
        connection: ZendeskConnection,
        progress: Callable[[str], None] | None,
        sleep: Callable[[float], None],
    ):
        self.connection = connection
        self.site = connection.site
        self.instance = connection.instance
        self.progress = progress
        self.sleep = sleep
        own = connection.site.service_user_id
        self.identity = OwnIdentity(user_ids=frozenset({str(own)}) if own else frozenset())

    def tickets(self, since: datetime, until: datetime) -> Iterator[list[TicketEvent]]:
        """The histories, one ticket at a time: as each closes, then those still open.

        Zendesk serves the event export to admins only: for an agent's token (a 403) each
        ticket's audits are read instead, one request a ticket more.
        """
        exported = self._export(since, until)
        try:
            first = next(exported, None)
        except AuthError as exc:
            if exc.status != 403:
                raise
            if self.progress is not None:
                self.progress("the ticket event export is for admins only (403): reading each "
                              "ticket's audits instead, one request a ticket")
            yield from self._by_audits(since, until)
            return
        records = exported if first is None else itertools.chain([first], exported)
        yield from self._followed(records, since, until)

    def _followed(
        self, records: Iterator[Mapping[str, Any]], since: datetime, until: datetime
    ) -> Iterator[list[TicketEvent]]:
        following: dict[int, list[dict[str, Any]]] = {}
        handed = read = 0
        for record in records:
            read += 1
            number = record.get("ticket_id")
            update = _update(record)
            if not isinstance(number, int) or update is None:
                continue
            updates = following.get(number)
            if updates is None:
                if not update["created"] or not since <= update["at"] <= until:
                    continue  # created before the window: its history would start in the middle
                updates = following[number] = []
            updates.append(update)
            if update["status"] == "deleted":
                del following[number]
            elif update["status"] == "closed":
                found = self.events_of(number, following.pop(number))
                handed += 1
                if found:
                    yield found
            if self.progress is not None:
                self.progress(f"read {read:,} Zendesk ticket updates "
                              f"({handed:,} tickets closed, {len(following):,} open)")
        for number in list(following):
            found = self.events_of(number, following.pop(number))
            if found:
                yield found

    def _by_audits(self, since: datetime, until: datetime) -> Iterator[list[TicketEvent]]:
        """The histories from the incremental ticket export and each ticket's audits."""
        seen: set[int] = set()
        read = 0
        for ticket_json in self._ticket_export(since):
            read += 1
            number = ticket_json.get("id")
            created = events._time(ticket_json.get("created_at"))
            if not isinstance(number, int) or number in seen or created is None:
                continue
            if not since <= created <= until or ticket_json.get("status") == "deleted":
                continue
            seen.add(number)
            try:
                audits = self._audits(number)
            except NotFoundError:
                continue  # deleted while we read
            updates = [u for u in map(_audit_update, audits) if u is not None and u["at"] <= until]
            if updates:
                found = self.events_of(number, updates)
                if found:
                    yield found
            if self.progress is not None:
                self.progress(f"read {read:,} Zendesk tickets ({len(seen):,} in the window)")

    # --- reading -------------------------------------------------------------------------------

    def _ticket_export(self, since: datetime) -> Iterator[Mapping[str, Any]]:
        """The cursor-based incremental ticket export from ``since``."""
        start = int(since.timestamp())
        cursor: str | None = None
        while True:
            if cursor:
                what = "GET incremental/tickets/cursor"
                call = lambda z, c=cursor: z.tickets.incremental(cursor=c, per_page=EXPORT_PAGE)  # noqa: E731
            else:
                what = f"GET incremental/tickets/cursor?start_time={start}"
                call = lambda z: z.tickets.incremental(start_time=start, per_page=EXPORT_PAGE)  # noqa: E731
            _, response = self.connection._call(what, call)
            tickets = self.connection._json(what, response, "tickets")
            if not isinstance(tickets, list):
                raise ConnectorError(
                    f"{self.connection.name}: {what} answered tickets that are not a list",
                    system="zendesk",
                )
            assert response is not None  # _json read it
            page = response.json()
            yield from (t for t in tickets if isinstance(t, Mapping))
            cursor = page.get("after_cursor")
            if page.get("end_of_stream") is not False or not cursor or not tickets:
                return

    def _audits(self, number: int) -> list[Mapping[str, Any]]:
        url = f"{self.connection.url}/api/v2/tickets/{number}/audits.json?page[size]={AUDIT_PAGE}"
        audits: list[Mapping[str, Any]] = []
        while url:
            what = f"GET tickets/{number}/audits"
            response, _ = self.connection._call(
                what, lambda z, u=url: z.tickets._get(u, raw_response=True)
            )
            self.connection._json(what, response, "audits")
            page = response.json()
            audits.extend(a for a in page.get("audits") or () if isinstance(a, Mapping))
            meta = page.get("meta") or {}
            links = page.get("links") or {}
            url = links.get("next") if meta.get("has_more") else page.get("next_page")
        return audits


    def _export(self, since: datetime, until: datetime) -> Iterator[Mapping[str, Any]]:
        """The export's events from ``since`` to ``until``, each once, oldest first."""
        start = int(since.timestamp())
        last = until.timestamp()
        seen: set[Any] = set()  # the ids of the previous page's last second, which comes again
        while True:
            page = self._page(start)
            records = [r for r in page["ticket_events"] if isinstance(r, Mapping)]
            for record in records:
                if record.get("id") in seen:
                    continue
                at = record.get("timestamp")
                if isinstance(at, int | float) and at > last:
                    return
                yield record
            end = page.get("end_time")
            if page.get("end_of_stream") is not False:
                return
            if not isinstance(end, int) or end <= start:
                raise ConnectorError(
                    f"{self.connection.name}: GET incremental/ticket_events?start_time={start} "
                    f"answered end_time {end!r}, which does not move the export on",
                    system="zendesk",
                )
            seen = {r.get("id") for r in records if r.get("timestamp") == end}
            start = end

    def _page(self, start: int) -> dict[str, Any]:
        what = f"GET incremental/ticket_events?start_time={start}"
        for wait in range(RATE_LIMIT_WAITS + 1):
            try:
                _, response = self.connection._call(
                    what, lambda z: z.tickets.events(start_time=start, include="comment_events")
                )
                break
            except TransientError as exc:
                if exc.status != 429 or wait == RATE_LIMIT_WAITS:
                    raise
                seconds = exc.retry_after if exc.retry_after is not None else 60.0
                if self.progress is not None:
                    self.progress(f"waiting {seconds:.0f}s: Zendesk allows 10 incremental "
                                  "export requests a minute")
                self.sleep(seconds)
        records = self.connection._json(what, response, "ticket_events")
        if not isinstance(records, list):
            raise ConnectorError(
                f"{self.connection.name}: {what} answered ticket_events that are not a list",
                system="zendesk",
            )
        assert response is not None  # _json read it
        return response.json()

    # --- versions ------------------------------------------------------------------------------

    def events_of(self, number: int, updates: list[dict[str, Any]]) -> list[TicketEvent]:
        """The events of one ticket's updates (as :func:`_update` keeps them), oldest first."""
        ordered = sorted(updates, key=lambda u: (u["at"], _number(u["id"])))
        created = ordered[0]["at"].astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        values: dict[str, Any] = {}
        custom: dict[str, Any] = {}
        description: str | None = None
        version: datetime | None = None
        found: list[TicketEvent] = []
        for index, audit in enumerate(ordered):
            at = audit["at"]
            # updated_at keeps rising, a second at least, from one update to the next.
            version = at if version is None else max(at, version + timedelta(seconds=1))
            changes: list[FieldChange] = []
            comments: list[Mapping[str, Any]] = []
            for item in audit["events"]:
                kind = item.get("type")
                if kind in ("Create", "Change"):
                    change = self._record(item, values, custom, changed=kind == "Change")
                    if change is not None:
                        changes.append(change)
                elif kind == "Comment":
                    comments.append(item)
            if index == 0 and comments and description is None:
                description = str(comments[0].get("plain_body") or comments[0].get("body") or "")
                comments = comments[1:]
            ticket_now = self._version_json(number, created, values, custom, description, version)
            try:
                made = events.events_from_export(ticket_now, self.site, self.instance)
            except PayloadError:
                continue
            author = _text(audit["author_id"])
            requester = _text(values.get("requester_id"))
            role = self._role(author, requester)
            for event in made:
                # The opening keeps its kind, and so does a deletion (resolved, with a reason).
                kept = index == 0 or event.reason is not None
                kind = event.kind if kept else _kind_of(changes)
                found.append(event.model_copy(update={
                    "kind": kind, "actor": author, "actor_role": role, "changes": tuple(changes),
                }))
            ticket = made[0].ticket if made else None
            for comment in comments:
                found.append(self._comment_event(comment, ticket, at, requester))
        return sorted(found, key=lambda e: (e.occurred_at, e.id))

    def _record(
        self, item: Mapping[str, Any], values: dict[str, Any], custom: dict[str, Any], *, changed: bool
    ) -> FieldChange | None:
        """Apply one Create or Change event; the change as the event webhooks name it."""
        name = str(item.get("field_name") or "")
        value = item.get("value")
        if name.isdigit():
            before = custom.get(name)
            custom[name] = value
            field = f"custom_field_{name}"
        else:
            before = values.get(name, item.get("previous_value"))
            values[name] = value
            field = name
        if not changed:
            return None
        before = item.get("previous_value", before)
        if name == "tags":
            old, new = set(_tags(before)), set(_tags(value))
            return FieldChange(field="tags", before=sorted(old - new), after=sorted(new - old))
        if name in ("status", "priority"):
            return FieldChange(field=name, before=_lower(before), after=_lower(value))
        if name in _REFERENCES:
            return FieldChange(field=name, before=_text(before), after=_text(value))
        return FieldChange(field=field, before=before, after=value)

    def _version_json(
        self,
        number: int,
        created: str,
        values: Mapping[str, Any],
        custom: Mapping[str, Any],
        description: str | None,
        version: datetime,
    ) -> dict[str, Any]:
        """The ticket as the REST API would have shown it after one update."""
        shown: dict[str, Any] = {name: values.get(name) for name in _TICKET_FIELDS}
        shown.update(
            id=number,
            created_at=created,
            updated_at=version.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            description=description or "",
            tags=list(_tags(values.get("tags"))),
            custom_fields=[{"id": int(fid), "value": value} for fid, value in custom.items()],
        )
        return shown

    def _role(self, author: str | None, requester: str | None, body: str | None = None) -> ActorRole:
        if self.identity.is_own_user(author) or self.identity.is_marked(body):
            return ActorRole.ESCALIER
        if author == _SYSTEM_ACTOR:
            return ActorRole.SYSTEM
        if author is not None and author == requester:
            return ActorRole.CUSTOMER
        return ActorRole.AGENT

    def _comment_event(
        self, comment: Mapping[str, Any], ticket: Ticket | None, at: datetime, requester: str | None
    ) -> TicketEvent:
        body = str(comment.get("plain_body") or comment.get("body") or "")
        author = _text(comment.get("author_id"))
        role = self._role(author, requester, body)
        ticket_id = ticket.id if ticket is not None else ""
        return TicketEvent(
            id=events.comment_event_id(self.instance, ticket_id, str(comment.get("id"))),
            system=events.SYSTEM,
            instance=self.instance,
            ticket_id=ticket_id,
            kind=EventKind.COMMENTED,
            occurred_at=at,
            actor=author,
            actor_role=role,
            ticket=ticket,
            comment=Comment(body=body, public=comment.get("public") is not False, author=author,
                            author_role=role),
        )


def _update(record: Mapping[str, Any]) -> dict[str, Any] | None:
    """One event of the export as an audit holds it: its changes and comments, and little else.

    ``created`` says it is the ticket's creation, ``status`` the status it set, if any.
    """
    at = events._time(record.get("created_at"))
    if at is None and isinstance(record.get("timestamp"), int):
        at = datetime.fromtimestamp(record["timestamp"], UTC)
    if at is None:
        return None
    items: list[dict[str, Any]] = []
    created = False
    status: str | None = None
    for child in record.get("child_events") or ():
        if not isinstance(child, Mapping):
            continue
        kind = child.get("event_type")
        if kind == "Comment":
            items.append({"type": "Comment", "id": child.get("id"), "author_id": child.get("author_id"),
                          "body": child.get("body"), "public": child.get("public")})
            continue
        if kind not in ("Create", "Change"):
            continue
        created = created or kind == "Create"
        found = [(k, v) for k, v in child.items() if k not in _CHILD_KEYS]
        if "tags" in child:
            new = list(_tags(child.get("tags")))
            old = sorted((set(new) - set(_tags(child.get("added_tags"))))
                         | set(_tags(child.get("removed_tags"))))
            found = [("tags", new)]
            previous: dict[str, Any] = {"previous_value": old}
        elif isinstance(child.get("custom_ticket_fields"), Mapping):
            found = [(str(k), v) for k, v in child["custom_ticket_fields"].items()]
            previous = {"previous_value": child["previous_value"]} if "previous_value" in child else {}
        else:
            found = found[:1]
            previous = {"previous_value": child["previous_value"]} if "previous_value" in child else {}
        for name, value in found:
            items.append({"type": kind, "field_name": name, "value": value,
                          **(previous if kind == "Change" else {})})
            if name == "status":
                status = _lower(value)
    return {"id": record.get("id"), "at": at, "author_id": record.get("updater_id"),
            "events": items, "created": created, "status": status}


def _audit_update(audit: Mapping[str, Any]) -> dict[str, Any] | None:
    """One audit (``GET tickets/{id}/audits``) kept as :func:`_update` keeps an export's event."""
    at = events._time(audit.get("created_at"))
    if at is None:
        return None
    items: list[dict[str, Any]] = []
    created = False
    status: str | None = None
    for event in audit.get("events") or ():
        if not isinstance(event, Mapping):
            continue
        kind = event.get("type")
        if kind == "Comment":
            items.append({"type": "Comment", "id": event.get("id"), "author_id": event.get("author_id"),
                          "body": event.get("body"), "public": event.get("public")})
        elif kind in ("Create", "Change"):
            created = created or kind == "Create"
            item = {"type": kind, "field_name": str(event.get("field_name")), "value": event.get("value")}
            if kind == "Change" and "previous_value" in event:
                item["previous_value"] = event["previous_value"]
            items.append(item)
            if item["field_name"] == "status":
                status = _lower(event.get("value"))
    return {"id": audit.get("id"), "at": at, "author_id": audit.get("author_id"),
            "events": items, "created": created, "status": status}


def _kind_of(changes: list[FieldChange]) -> EventKind:
    """What an update was, as the event webhook of its most telling change says."""
    for change in changes:
        if change.field == "status":
            if change.after in _DONE:
                return EventKind.RESOLVED
            if change.before in _DONE:
                return EventKind.REOPENED
            return EventKind.STATUS_CHANGED
    if changes and all(c.field == "assignee_id" for c in changes):
        return EventKind.ASSIGNED
    return EventKind.UPDATED


def _tags(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        return tuple(t for t in value.split() if t)
    if isinstance(value, list):
        return tuple(str(t) for t in value if t)
    return ()


def _text(value: Any) -> str | None:
    if value is None or isinstance(value, bool):
        return None
    text = str(value).strip()
    return text or None


def _lower(value: Any) -> str | None:
    text = _text(value)
    return text.lower() if text else None


def _number(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0

