"""Past Zendesk tickets with their histories, as events, for ``escalier backtest``.

The tickets come from the cursor-based incremental ticket export from the window's start (1,000 a
page), and each ticket's history from its audits (``tickets/{id}/audits``, 100 a page). Every
audit is one update of the ticket, and becomes the events its webhooks make:

- the version event (``zendesk:{instance}:{ticket}:v:{epoch}``), built by
  :func:`~escalier.connectors.zendesk.events.events_from_export` from the ticket as it stood after
  that update (the audits' ``Create`` and ``Change`` events applied in order), with the update's
  author, its kind (``created``, ``resolved``, ``reopened``, ``status_changed``, ``assigned``,
  ``updated``) and its changes named as the event webhooks name them;
- a comment event (``zendesk:{instance}:{ticket}:comment:{id}``) for each comment added after the
  ticket's creation (the first comment is the ticket's description).

A version's time is the audit's, kept rising by a second at least as Zendesk keeps ``updated_at``
rising, so that the ids are those the webhooks of the same updates carried. Nothing is written.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from escalier.connectors.zendesk import events
from escalier.connectors.zendesk.connection import ZendeskConnection
from escalier.core.errors import ConnectorError, NotFoundError, PayloadError
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

EXPORT_PAGE = 1000
AUDIT_PAGE = 100
_DONE = frozenset({"solved", "closed", "deleted"})
_SYSTEM_ACTOR = "-1"
_REFERENCES = frozenset({"assignee_id", "group_id", "requester_id", "organization_id"})
_TICKET_FIELDS = (
    "subject", "status", "priority", "type", "requester_id", "assignee_id", "group_id",
    "organization_id", "external_id", "due_at",
)


def read_history(
    connection: ZendeskConnection,
    *,
    since: datetime,
    until: datetime,
    progress: Callable[[str], None] | None = None,
) -> Iterator[list[TicketEvent]]:
    """Each ticket created in ``[since, until]``: its events, oldest first.

    :raises ConnectorError: when Zendesk cannot be read (the connection's errors, unchanged).
    """
    return _History(connection, progress).tickets(since, until)


class _History:
    """Reads one account's tickets and replays each one's audits into its versions."""

    def __init__(self, connection: ZendeskConnection, progress: Callable[[str], None] | None):
        self.connection = connection
        self.site = connection.site
        self.instance = connection.instance
        self.progress = progress
        own = connection.site.service_user_id
        self.identity = OwnIdentity(user_ids=frozenset({str(own)}) if own else frozenset())

    def tickets(self, since: datetime, until: datetime) -> Iterator[list[TicketEvent]]:
        """The histories, one ticket at a time, in the export's order."""
        seen: set[int] = set()
        read = 0
        for ticket_json in self._export(since):
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
            found = self.events_of(ticket_json, audits)
            if found:
                yield found
            if self.progress is not None:
                self.progress(f"read {read:,} Zendesk tickets ({len(seen):,} in the window)")

    # --- reading -------------------------------------------------------------------------------

    def _export(self, since: datetime) -> Iterator[Mapping[str, Any]]:
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

    # --- versions ------------------------------------------------------------------------------

    def events_of(
        self, ticket_json: Mapping[str, Any], audits: list[Mapping[str, Any]]
    ) -> list[TicketEvent]:
        """The events of one ticket's audits, oldest first."""
        ordered = sorted(
            (a for a in audits if events._time(a.get("created_at")) is not None),
            key=lambda a: (events._time(a.get("created_at")), _number(a.get("id"))),
        )
        values: dict[str, Any] = {}
        custom: dict[str, Any] = {}
        description: str | None = None
        version: datetime | None = None
        found: list[TicketEvent] = []
        for index, audit in enumerate(ordered):
            at = events._time(audit.get("created_at"))
            assert at is not None
            # updated_at keeps rising, a second at least, from one update to the next.
            version = at if version is None else max(at, version + timedelta(seconds=1))
            changes: list[FieldChange] = []
            comments: list[Mapping[str, Any]] = []
            for item in audit.get("events") or ():
                if not isinstance(item, Mapping):
                    continue
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
            ticket_now = self._version_json(ticket_json, values, custom, description, version)
            try:
                made = events.events_from_export(ticket_now, self.site, self.instance)
            except PayloadError:
                continue
            author = _text(audit.get("author_id"))
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
        ticket_json: Mapping[str, Any],
        values: Mapping[str, Any],
        custom: Mapping[str, Any],
        description: str | None,
        version: datetime,
    ) -> dict[str, Any]:
        """The ticket as the REST API would have shown it after one update."""
        shown: dict[str, Any] = {name: values.get(name) for name in _TICKET_FIELDS}
        shown.update(
            id=ticket_json.get("id"),
            created_at=ticket_json.get("created_at"),
            updated_at=version.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            description=description if description is not None else ticket_json.get("description"),
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

