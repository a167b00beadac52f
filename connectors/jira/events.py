"""Jira webhooks and REST issues into Escalier's tickets and ticket events.

Everything here is a pure function of its inputs: no I/O, no clock, no logging. The worker hands
:func:`parse_delivery` a stored delivery; reconciliation hands :func:`events_from_issue` an issue it
fetched with ``expand=changelog``. A change seen both ways gets the same event id, so it is decided
once: ids are built from the issue's numeric id (stable when an issue moves project and changes
key) and the changelog history id, or the comment id and the time it was last edited.

Jira payloads vary with the deployment, the version and the site's configuration; the parser
reads what the platform documents for Cloud and Data Center (and Service Management's fields
where present), takes what it can from shapes it half knows, and refuses the rest with a
:class:`~escalier.core.errors.PayloadError` whose message says why in one sentence.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Any

from pydantic import ValidationError

from escalier.connectors._values import json_object
from escalier.connectors._values import first_error as _first_error
from escalier.connectors._values import whole_count as _count
from escalier.connectors.jira.config import JiraSite
from escalier.core.connector import DeliverySkipped, RawEvent
from escalier.core.errors import PayloadError
from escalier.core.extensions import OwnIdentity
from escalier.core.model import (
    ActorRole,
    Comment,
    EventKind,
    FieldChange,
    StatusCategory,
    Ticket,
    TicketEvent,
)

__all__ = [
    "AUTOMATION_EVENT",
    "SYSTEM",
    "changelog_event_id",
    "comment_event_id",
    "created_event_id",
    "deleted_event_id",
    "events_from_issue",
    "is_complete",
    "issue_updated_at",
    "parse_delivery",
    "ticket_from_issue",
    "updated_event_id",
]

SYSTEM = "jira"
# The event type given to an automation rule's request, which names none of its own.
AUTOMATION_EVENT = "automation"

_ISSUE_EVENTS = frozenset({"jira:issue_created", "jira:issue_updated", "jira:issue_deleted"})
_COMMENT_EVENTS = frozenset({"comment_created", "comment_updated"})
# An issue_updated that only reports a deleted comment or a worklog carries nothing to act on;
# the same change arrives (or is refused) as its own comment_deleted / worklog_* event.
_SKIPPED_UPDATE_TYPES = frozenset(
    {"issue_comment_deleted", "issue_worklog_deleted", "issue_work_logged", "issue_worklog_updated"}
)
_CATEGORIES = {
    "new": StatusCategory.NEW,
    "indeterminate": StatusCategory.OPEN,
    "done": StatusCategory.SOLVED,
}
# Status names of Jira's shipped workflows that sit in the done category; used only when a
# payload does not say the category (a REST v2 status without statusCategory, or a changelog
# item, which names statuses but never their category).
_DONE_NAMES = frozenset(
    {"done", "closed", "resolved", "cancelled", "canceled", "completed", "declined", "rejected",
     "won't do", "won't fix"}
)
# Server comment events carry no issue: its id is only in the comment's REST link.
_ISSUE_IN_LINK = re.compile(r"/issue/([^/?#]+)/comment(?:/|$)")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MILLISECOND = timedelta(milliseconds=1)
# Deep enough for any real rich-text document or field value, shallow enough for the stack.
_MAX_DEPTH = 40
_ADF_BLOCKS = frozenset(
    # list items and table cells hold paragraphs, which end their own lines
    {"paragraph", "heading", "codeBlock", "rule", "mediaGroup", "mediaSingle", "decisionItem",
     "taskItem"}
)
_SD_PUBLIC_COMMENT = "sd.public.comment"


# --- ids -------------------------------------------------------------------------------------


def created_event_id(instance: str, issue_id: str) -> str:
    """The id of an issue's creation, the same from a webhook and from a search."""
    return f"jira:{instance}:{issue_id}:created"


def changelog_event_id(instance: str, issue_id: str, changelog_id: str) -> str:
    """The id of one changelog entry: a webhook's ``changelog.id`` is the REST history's ``id``."""
    return f"jira:{instance}:{issue_id}:changelog:{changelog_id}"


def updated_event_id(instance: str, issue_id: str, at_ms: int) -> str:
    """The id of an update that carries no changelog id, keyed by its epoch-millisecond time."""
    return f"jira:{instance}:{issue_id}:updated:{at_ms}"


def deleted_event_id(instance: str, issue_id: str) -> str:
    """The id of an issue's deletion."""
    return f"jira:{instance}:{issue_id}:deleted"


def comment_event_id(instance: str, issue_id: str, comment: Mapping[str, Any]) -> str:
    """The id of a comment as last edited; both deliveries of one comment share it.

    :raises PayloadError: when the comment carries no id or no created/updated time.
    """
    comment_id = _id(comment.get("id")) if isinstance(comment, Mapping) else None
    if comment_id is None:
        raise PayloadError("the comment carries no id")
    at = _comment_time(comment)
    if at is None:
        raise PayloadError(f"comment {comment_id} carries no created or updated time")
    return f"jira:{instance}:{issue_id}:comment:{comment_id}:{_epoch_ms(at)}"


# --- tickets ---------------------------------------------------------------------------------


def is_complete(issue: Mapping[str, Any]) -> bool:
    """True when the issue's fields hold enough for a snapshot: ``created`` and ``status``."""
    fields = _mapping(issue.get("fields")) if isinstance(issue, Mapping) else {}
    return _time(fields.get("created")) is not None and isinstance(fields.get("status"), Mapping)


def ticket_from_issue(issue: Mapping[str, Any], site: JiraSite | None, instance: str) -> Ticket:
    """A ticket snapshot from a webhook's ``issue`` or a REST issue (v2 strings or v3 documents).

    A partial issue (no ``created``) falls back to its ``updated`` time for ``created_at``.

    :raises PayloadError: when the issue is not an object, names no issue, or carries no date.
    """
    if not isinstance(issue, Mapping):
        raise PayloadError("the issue is not a JSON object")
    fields = _mapping(issue.get("fields"))
    site = site or _default_site(_guess_deployment(_issue_users(issue)))
    key = _id(issue.get("key")) or _id(issue.get("id"))
    if key is None:
        raise PayloadError("the issue carries neither a key nor an id")
    created = _time(fields.get("created"))
    updated = _time(fields.get("updated"))
    solved = _time(fields.get("resolutiondate"))
    created_at = created or updated or solved
    if created_at is None:
        raise PayloadError(f"issue {key} carries no created or updated date")
    status = _mapping(fields.get("status"))
    status_name = _text(status.get("name"))
    priority_name = _text(_mapping(fields.get("priority")).get("name"))
    components = _component_names(fields.get("components"))
    mapped = site.fields
    try:
        return Ticket(
            system=SYSTEM,
            id=key,
            instance=instance,
            subject=_text(fields.get("summary")) or "",
            status=status_name or "open",
            status_category=_status_category(status, fields.get("resolution"), site),
            priority=_policy_priority(priority_name, site),
            severity=_severity(fields, priority_name, site),
            users_affected=(
                _count(fields.get(mapped.users_affected)) if mapped.users_affected else None
            ),
            tags=tuple(label for label in _list(fields.get("labels")) if isinstance(label, str)),
            assignee=_user_id(fields.get("assignee"), site.deployment),
            group=_group(components, site),
            requester=_user_id(fields.get("reporter"), site.deployment),
            organization=(
                _organization(fields.get(mapped.organization)) if mapped.organization else None
            ),
            created_at=created_at,
            updated_at=updated,
            solved_at=solved,
            fields=_ticket_fields(fields, components, site),
            description=_plain_text(fields.get("description")),
        )
    except ValidationError as exc:
        raise PayloadError(
            f"issue {key} does not make a valid ticket: {_first_error(exc)}"
        ) from exc


# --- events ----------------------------------------------------------------------------------


def parse_delivery(
    raw: RawEvent, site: JiraSite | None, *, fetch: Callable[[str], Ticket] | None = None
) -> list[TicketEvent]:
    """The ticket events one stored Jira webhook delivery carries.

    ``fetch(issue key or id)`` is called at most once, only when the payload's issue is partial
    (Cloud comment events, Server comment events that carry no issue at all).

    :raises PayloadError: when the body is not a Jira webhook this parser can read.
    :raises DeliverySkipped: for events escalations do not follow (``unsupported_event``).
    :raises ConnectorError: whatever ``fetch`` raises, unchanged.
    """
    payload = _load(raw.body)
    event = payload.get("webhookEvent")
    if not isinstance(event, str) or not event:
        payload = _automation_request(payload)
        event = AUTOMATION_EVENT
    if event not in _ISSUE_EVENTS and event not in _COMMENT_EVENTS and event != AUTOMATION_EVENT:
        raise DeliverySkipped(
            "unsupported_event", f"Jira's {event} event carries nothing escalations follow"
        )
    issue = payload.get("issue")
    comment = payload.get("comment")
    if not isinstance(issue, Mapping) and not isinstance(comment, Mapping):
        raise PayloadError(f"the {event} delivery carries neither an issue nor a comment")
    if event in _ISSUE_EVENTS and not isinstance(issue, Mapping):
        raise PayloadError(f"the {event} delivery carries no issue")
    if event in _COMMENT_EVENTS and not isinstance(comment, Mapping):
        raise PayloadError(f"the {event} delivery carries no comment")
    if site is None:
        site = _default_site(_guess_deployment(_payload_users(payload)))
    delivery = _Delivery(
        reader=_Reader.of(site, raw.instance),
        payload=payload,
        event=event,
        issue=_mapping(issue),
        comment=comment if isinstance(comment, Mapping) else None,
        received_at=_aware(raw.received_at),
        fetch=fetch,
    )
    try:
        return delivery.events()
    except ValidationError as exc:
        raise PayloadError(
            f"the {event} delivery does not make a valid event: {_first_error(exc)}"
        ) from exc


def issue_updated_at(issue: Any) -> datetime | None:
    """When the issue was last updated (``fields.updated``), if it says so readably."""
    return _time(_mapping(_mapping(issue).get("fields")).get("updated"))


def _automation_request(payload: Mapping[str, Any]) -> Mapping[str, Any]:
    """An automation rule's request as the ``issue_updated`` webhook of the issue it carries.

    Jira Automation's *Send web request* with *Issue data* (Jira or Automation format) sends the
    issue itself (``{"id", "key", "fields", ...}``); Service Management's automation webhook
    sends ``{"timestamp", "issue", "comment"?, "user"?}``. Neither says what changed: the event
    is the issue as it now is, keyed by the request's ``timestamp`` or the issue's ``updated``.
    """
    nested = payload.get("issue")
    issue = nested if isinstance(nested, Mapping) else payload
    if not isinstance(issue.get("fields"), Mapping) or not (
        _id(issue.get("id")) or _id(issue.get("key"))
    ):
        raise PayloadError(
            "the delivery carries no webhookEvent and no issue with its fields, so it is neither "
            "a Jira webhook nor an automation rule's request"
        )
    request: dict[str, Any] = {"issue": issue}
    if isinstance(nested, Mapping):
        request.update({k: payload[k] for k in ("timestamp", "comment", "user") if k in payload})
    return request


def events_from_issue(
    issue: Mapping[str, Any], site: JiraSite | None, instance: str, *, since: datetime
) -> list[TicketEvent]:
    """Events found in a REST issue (``expand=changelog``, ``comment`` in its fields) since a time.

    The same changes get the same ids and kinds as their webhooks, so reconciliation and the
    webhook decide each change once; sorted by time, then id.

    :raises PayloadError: when the issue cannot make a ticket snapshot.
    """
    if not isinstance(issue, Mapping):
        raise PayloadError("the issue is not a JSON object")
    site = site or _default_site(_guess_deployment(_issue_users(issue)))
    reader = _Reader.of(site, instance)
    snapshot = ticket_from_issue(issue, site, instance)
    since = _aware(since)
    fields = _mapping(issue.get("fields"))
    target = _Target.of(_id(issue.get("id")) or snapshot.id, snapshot, snapshot.id, issue, reader)
    events: list[TicketEvent] = []
    if snapshot.created_at >= since:
        creator = fields.get("creator")
        creator = creator if isinstance(creator, Mapping) else fields.get("reporter")
        events.append(reader.created(target, snapshot.created_at, creator))
    for history in _list(_mapping(issue.get("changelog")).get("histories")):
        if not isinstance(history, Mapping):
            continue
        history_id = _id(history.get("id"))
        at = _time(history.get("created"))
        if history_id is None or at is None or at < since:
            continue
        event_id = changelog_event_id(instance, target.issue_id, history_id)
        items = _list(history.get("items"))
        events.append(reader.changed(target, event_id, at, items, history.get("author")))
    for comment in _comments(issue):
        at = _comment_time(comment)
        if at is None or at < since or _id(comment.get("id")) is None:
            continue
        events.append(reader.commented(target, at, comment, None))
    return sorted(events, key=lambda e: (e.occurred_at, e.id))


# --- one delivery ----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Target:
    """The issue an event is about: its ids, its ticket if known, and what kinds and roles need."""

    issue_id: str  # what event ids use
    ticket_id: str
    ticket: Ticket | None
    statuses: Mapping[str, bool]  # status name (lower) or id -> in the done category
    reporter: str | None
    service_desk: bool

    @classmethod
    def of(
        cls,
        issue_id: str,
        ticket: Ticket | None,
        ticket_id: str,
        issue: Mapping[str, Any],
        reader: _Reader,
    ) -> _Target:
        """The target for ``issue`` as the payload or the fetched ticket describes it."""
        fields = _mapping(issue.get("fields"))
        status = _mapping(fields.get("status"))
        statuses: dict[str, bool] = {}
        name = _text(status.get("name"))
        if name:
            category = _text(_mapping(status.get("statusCategory")).get("key"))
            done = category == "done" if category else name.lower() in _DONE_NAMES
            statuses[name.lower()] = done
            if (status_id := _id(status.get("id"))) is not None:
                statuses[status_id] = done
        elif ticket is not None:
            statuses[ticket.status.lower()] = ticket.is_resolved
        project = _mapping(fields.get("project"))
        project_key = _text(project.get("key"))
        if project_key is None and ticket is not None:
            project_key = _text(ticket.fields.get("project"))
        service_desk = project.get("projectTypeKey") == "service_desk" or (
            project_key is not None and project_key in reader.site.service_desk_projects
        )
        reporter = _user_id(fields.get("reporter"), reader.site.deployment)
        if reporter is None and ticket is not None:
            reporter = ticket.requester
        return cls(issue_id, ticket_id, ticket, statuses, reporter, service_desk)


@dataclass(frozen=True)
class _Reader:
    """Builds events for one site and instance; the same code serves webhooks and searches."""

    site: JiraSite
    instance: str
    identity: OwnIdentity

    @classmethod
    def of(cls, site: JiraSite, instance: str) -> _Reader:
        """A reader that knows the site's own account by its service_account."""
        own = frozenset({site.service_account}) if site.service_account else frozenset()
        return cls(site=site, instance=instance, identity=OwnIdentity(user_ids=own))

    def user_id(self, user: Any) -> str | None:
        """The id this deployment names ``user`` by."""
        return _user_id(user, self.site.deployment)

    def role(
        self, user: Any, *, body: str | None = None, target: _Target | None = None
    ) -> ActorRole:
        """ESCALIER for our own account or marked comments, CUSTOMER for portal customers."""
        user = _mapping(user)
        if self.identity.is_own_user(*(user.get(k) for k in ("accountId", "name", "key"))):
            return ActorRole.ESCALIER
        if body is not None and self.identity.is_marked(body):
            return ActorRole.ESCALIER
        if user.get("accountType") == "customer":
            return ActorRole.CUSTOMER
        actor = self.user_id(user)
        # Data Center names no account type: in a Service Management project the reporter is
        # the customer who raised the request.
        if body is not None and target is not None and target.service_desk and actor is not None:
            return ActorRole.CUSTOMER if actor == target.reporter else ActorRole.AGENT
        return ActorRole.AGENT

    def event(
        self,
        target: _Target,
        event_id: str,
        kind: EventKind,
        at: datetime,
        user: Any,
        *,
        actor_role: ActorRole | None = None,
        changes: tuple[FieldChange, ...] = (),
        comment: Comment | None = None,
        reason: str | None = None,
    ) -> TicketEvent:
        """One event about ``target``, caused by ``user``."""
        return TicketEvent(
            id=event_id,
            system=SYSTEM,
            instance=self.instance,
            ticket_id=target.ticket_id,
            kind=kind,
            occurred_at=at,
            actor=self.user_id(user),
            actor_role=actor_role or self.role(user),
            ticket=target.ticket,
            changes=changes,
            comment=comment,
            reason=reason,
        )

    def created(self, target: _Target, at: datetime, user: Any) -> TicketEvent:
        """The issue's creation."""
        event_id = created_event_id(self.instance, target.issue_id)
        return self.event(target, event_id, EventKind.CREATED, at, user)

    def changed(
        self, target: _Target, event_id: str, at: datetime, items: list[Any], user: Any
    ) -> TicketEvent:
        """One changelog entry (a webhook's changelog or a REST history)."""
        items = [item for item in items if isinstance(item, Mapping)]
        kind = _changelog_kind(items, target.statuses)
        changes = tuple(change for item in items if (change := _field_change(item)) is not None)
        return self.event(target, event_id, kind, at, user, changes=changes)

    def commented(
        self, target: _Target, at: datetime, comment: Mapping[str, Any], fallback_user: Any
    ) -> TicketEvent:
        """A comment as last edited; its editor is the actor."""
        body = _plain_text(comment.get("body"))
        author = comment.get("author")
        author = author if isinstance(author, Mapping) else fallback_user
        editor = author
        if isinstance(comment.get("updateAuthor"), Mapping) and _was_edited(comment):
            editor = comment["updateAuthor"]
        return self.event(
            target,
            comment_event_id(self.instance, target.issue_id, comment),
            EventKind.COMMENTED,
            at,
            editor,
            actor_role=self.role(editor, body=body, target=target),
            comment=Comment(
                body=body,
                public=_is_public(comment),
                author=self.user_id(author),
                author_role=self.role(author, body=body, target=target),
            ),
        )


@dataclass
class _Delivery:
    """One webhook delivery being read."""

    reader: _Reader
    payload: Mapping[str, Any]
    event: str
    issue: Mapping[str, Any]
    comment: Mapping[str, Any] | None
    received_at: datetime
    fetch: Callable[[str], Ticket] | None
    _target: _Target | None = None

    def events(self) -> list[TicketEvent]:
        """The delivery's events, in the order they happened."""
        user = self.payload.get("user")
        stamp = _from_epoch_ms(self.payload.get("timestamp"))
        fields = _mapping(self.issue.get("fields"))
        if self.event == "jira:issue_deleted":
            return [self._deleted(stamp or self.received_at, user)]
        if self.event == "jira:issue_created":
            at = stamp or _time(fields.get("created")) or self.received_at
            return [self.reader.created(self._resolve(), at, user)]
        if self.event in _COMMENT_EVENTS:
            return [self._commented(stamp, user)]
        changelog = _mapping(self.payload.get("changelog"))
        items = [item for item in _list(changelog.get("items")) if isinstance(item, Mapping)]
        events: list[TicketEvent] = []
        if items or self.comment is None:
            update_type = _text(self.payload.get("issue_event_type_name"))
            if not items and update_type in _SKIPPED_UPDATE_TYPES:
                raise DeliverySkipped(
                    "unsupported_event",
                    f"Jira's {update_type} update carries nothing escalations follow",
                )
            target = self._resolve()
            changed = _time(changelog.get("created")) or _time(fields.get("updated"))
            at = stamp or changed or self.received_at
            changelog_id = _id(changelog.get("id"))
            if changelog_id is not None:
                event_id = changelog_event_id(self.reader.instance, target.issue_id, changelog_id)
            else:
                # No changelog id to share with a search: the delivery's own time keys it.
                at_ms = _epoch_ms(stamp or _time(fields.get("updated")) or self.received_at)
                event_id = updated_event_id(self.reader.instance, target.issue_id, at_ms)
            actor = user if user is not None else changelog.get("author")
            events.append(self.reader.changed(target, event_id, at, items, actor))
        if self.comment is not None:
            events.append(self._commented(stamp, user))
        return events

    def _commented(self, stamp: datetime | None, user: Any) -> TicketEvent:
        assert self.comment is not None
        at = stamp or _comment_time(self.comment) or self.received_at
        return self.reader.commented(self._resolve(), at, self.comment, user)

    def _deleted(self, at: datetime, user: Any) -> TicketEvent:
        # A deleted issue cannot be fetched; the payload's own issue is all there is.
        issue_id, key = self._issue_names()
        ticket = None
        if is_complete(self.issue):
            snapshot = ticket_from_issue(self.issue, self.reader.site, self.reader.instance)
            ticket = snapshot.model_copy(update={"status_category": StatusCategory.CLOSED})
        target = _Target.of(
            issue_id, ticket, ticket.id if ticket else key or issue_id, self.issue, self.reader
        )
        event_id = deleted_event_id(self.reader.instance, issue_id)
        return self.reader.event(
            target, event_id, EventKind.RESOLVED, at, user, reason="deleted in Jira"
        )

    def _issue_names(self) -> tuple[str, str | None]:
        """The issue id the event ids use, and the key when the payload says it."""
        comment = self.comment or {}
        key = _id(self.issue.get("key"))
        issue_id = (
            _id(self.issue.get("id"))
            or _issue_id_from_link(comment.get("self"))
            or _id(comment.get("issueId"))
        )
        if issue_id is None and key is None:
            raise PayloadError(
                f"the {self.event} delivery names no issue (no id, key or comment link)"
            )
        return issue_id or key or "", key

    def _resolve(self) -> _Target:
        """The issue with its snapshot, else the fetched ticket, else none; fetched at most once."""
        if self._target is None:
            issue_id, key = self._issue_names()
            ticket: Ticket | None = None
            if is_complete(self.issue):
                ticket = ticket_from_issue(self.issue, self.reader.site, self.reader.instance)
            elif self.fetch is not None:
                ticket = self.fetch(key or issue_id)
            ticket_id = ticket.id if ticket is not None else key or issue_id
            self._target = _Target.of(issue_id, ticket, ticket_id, self.issue, self.reader)
        return self._target


# --- changelog -------------------------------------------------------------------------------


def _item_field(item: Mapping[str, Any]) -> str | None:
    # Cloud says fieldId (``status``, ``customfield_10050``); Server only the field's display
    # name, which for system fields is its id, sometimes capitalised (``Status``).
    return _text(item.get("fieldId")) or _text(item.get("field"))


def _field_change(item: Mapping[str, Any]) -> FieldChange | None:
    field = _item_field(item)
    if field is None:
        return None
    before = item.get("fromString") if item.get("fromString") is not None else item.get("from")
    after = item.get("toString") if item.get("toString") is not None else item.get("to")
    return FieldChange(field=field, before=before, after=after)


def _is_done(item: Mapping[str, Any], side: str, statuses: Mapping[str, bool]) -> bool | None:
    """Whether the status on one side (``from``/``to``) of a status change is done, if known."""
    status_id = _id(item.get(side))
    name = _text(item.get(f"{side}String"))
    if status_id is not None and status_id in statuses:
        return statuses[status_id]
    if name is not None:
        if name.lower() in statuses:
            return statuses[name.lower()]
        if name.lower() in _DONE_NAMES:
            return True
    return None


def _changelog_kind(items: list[Mapping[str, Any]], statuses: Mapping[str, bool]) -> EventKind:
    """RESOLVED, REOPENED, STATUS_CHANGED, ASSIGNED or UPDATED, from the items alone.

    ``statuses`` knows the category of the issue's current status only, so a search finds the
    same kind as the webhook did for every status Jira's own workflows ship.
    """
    names = [(_item_field(item) or "").lower() for item in items]
    resolution_cleared = False
    for item, name in zip(items, names, strict=True):
        if name == "resolution":
            if _is_set(item.get("to")) or _is_set(item.get("toString")):
                return EventKind.RESOLVED
            if _is_set(item.get("from")) or _is_set(item.get("fromString")):
                resolution_cleared = True
    for item, name in zip(items, names, strict=True):
        if name == "status":
            if _is_done(item, "to", statuses):
                return EventKind.RESOLVED
            if resolution_cleared or _is_done(item, "from", statuses):
                return EventKind.REOPENED
            return EventKind.STATUS_CHANGED
    if resolution_cleared:
        return EventKind.REOPENED
    if names and all(name == "assignee" for name in names):
        return EventKind.ASSIGNED
    return EventKind.UPDATED


# --- comments --------------------------------------------------------------------------------


def _comments(issue: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    comment = _mapping(issue.get("fields")).get("comment")
    found = comment.get("comments") if isinstance(comment, Mapping) else comment
    return [c for c in _list(found) if isinstance(c, Mapping)]


def _comment_time(comment: Mapping[str, Any]) -> datetime | None:
    return _time(comment.get("updated")) or _time(comment.get("created"))


def _was_edited(comment: Mapping[str, Any]) -> bool:
    updated, created = _time(comment.get("updated")), _time(comment.get("created"))
    return updated is not None and created is not None and updated != created


def _is_public(comment: Mapping[str, Any]) -> bool:
    """False for Service Management internal comments and comments restricted to a role or group."""
    if comment.get("jsdPublic") is False:
        return False
    # Comments restricted to a role or group are hidden from the customer as well.
    if isinstance(comment.get("visibility"), Mapping) and comment["visibility"].get("value"):
        return False
    for prop in _list(comment.get("properties")):
        if not isinstance(prop, Mapping) or prop.get("key") != _SD_PUBLIC_COMMENT:
            continue
        value = prop.get("value")
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except (ValueError, RecursionError):
                continue
        if isinstance(value, Mapping) and value.get("internal") in (True, "true"):
            return False
    return True


def _issue_id_from_link(link: Any) -> str | None:
    if not isinstance(link, str):
        return None
    match = _ISSUE_IN_LINK.search(link)
    return match.group(1) if match else None


# --- field values ----------------------------------------------------------------------------


def _status_category(status: Mapping[str, Any], resolution: Any, site: JiraSite) -> StatusCategory:
    name = (_text(status.get("name")) or "").lower()
    if name and name in {s.lower() for s in site.pending_statuses}:
        return StatusCategory.PENDING
    if name and name in {s.lower() for s in site.on_hold_statuses}:
        return StatusCategory.ON_HOLD
    if _is_set(resolution):
        return StatusCategory.SOLVED
    key = _text(_mapping(status.get("statusCategory")).get("key"))
    if key is not None:
        return _CATEGORIES.get(key.lower(), StatusCategory.OPEN)
    return StatusCategory.SOLVED if name in _DONE_NAMES else StatusCategory.OPEN


def _policy_priority(name: str | None, site: JiraSite) -> str | None:
    if name is None:
        return None
    inverse = {jira.lower(): policy for policy, jira in site.priorities.items()}
    return inverse.get(name.lower(), name.lower())


def _severity(fields: Mapping[str, Any], priority_name: str | None, site: JiraSite) -> str | None:
    if site.fields.severity:
        value = _first_text(fields.get(site.fields.severity))
        if value:
            return value.lower()
    if priority_name is None:
        return None
    by_name = {jira.lower(): severity for jira, severity in site.severities_by_priority.items()}
    return by_name.get(priority_name.lower())


def _first_text(value: Any) -> str | None:
    if isinstance(value, list):
        value = value[0] if value else None
    if isinstance(value, Mapping):
        value = value.get("value", value.get("name"))
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, float)):
        return str(value)
    return value.strip() or None if isinstance(value, str) else None


def _organization(value: Any) -> str | None:
    # Service Management's Organizations field is a list of {"id", "name"}.
    if isinstance(value, list):
        value = next((v for v in value if v is not None), None)
    if isinstance(value, Mapping):
        value = value.get("name", value.get("value"))
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    return value.strip() or None if isinstance(value, str) else None


def _component_names(value: Any) -> list[str]:
    names = []
    for component in _list(value):
        name = _text(component.get("name")) if isinstance(component, Mapping) else _text(component)
        if name:
            names.append(name)
    return names


def _group(components: list[str], site: JiraSite) -> str | None:
    first = components[0] if components else None
    return next((c for c in components if c in site.components), first)


def _ticket_fields(
    fields: Mapping[str, Any], components: list[str], site: JiraSite
) -> dict[str, Any]:
    values = {
        name: _normalise(fields.get(field_id), site.deployment)
        for name, field_id in site.fields.custom.items()
    }
    values.setdefault("components", components)
    values.setdefault("issuetype", _text(_mapping(fields.get("issuetype")).get("name")))
    values.setdefault("project", _text(_mapping(fields.get("project")).get("key")))
    request_type = _request_type(fields)
    if request_type is not None:
        values.setdefault("request_type", request_type)
    return values


def _request_type(fields: Mapping[str, Any]) -> str | None:
    # Service Management's Customer Request Type field has a site-specific id; its value is
    # recognisable: {"requestType": {"id", "name", ...}, "currentStatus": ...}.
    for value in fields.values():
        if isinstance(value, Mapping) and isinstance(value.get("requestType"), Mapping):
            name = _text(value["requestType"].get("name"))
            if name:
                return name
    return None


def _normalise(value: Any, deployment: str, depth: int = 0) -> Any:
    """A field value in plain terms: option -> value, user -> id, document -> text, list -> list."""
    if depth > _MAX_DEPTH:
        return None
    if isinstance(value, list):
        return [_normalise(v, deployment, depth + 1) for v in value]
    if not isinstance(value, Mapping):
        return value
    if value.get("type") == "doc":
        return _plain_text(value)
    if _looks_like_user(value):
        return _user_id(value, deployment)
    if "value" in value:
        return _normalise(value["value"], deployment, depth + 1)
    if isinstance(value.get("requestType"), Mapping):
        return _text(value["requestType"].get("name"))
    if "name" in value:
        return value["name"]
    return {str(k): _normalise(v, deployment, depth + 1) for k, v in value.items()}


def _looks_like_user(value: Mapping[str, Any]) -> bool:
    if _text(value.get("accountId")):
        return True
    return bool(_text(value.get("name")) or _text(value.get("key"))) and (
        "displayName" in value or "emailAddress" in value or "/user?" in str(value.get("self", ""))
    )


def _plain_text(value: Any) -> str:
    """Wiki-markup strings as they are; Atlassian documents (REST v3) as plain text."""
    if isinstance(value, str):
        return value
    if isinstance(value, (Mapping, list)):
        return re.sub(r"\n{3,}", "\n\n", _adf_text(value, 0)).strip()
    return ""


def _adf_text(node: Any, depth: int) -> str:
    if depth > _MAX_DEPTH:
        return ""
    if isinstance(node, list):
        return "".join(_adf_text(child, depth + 1) for child in node)
    if not isinstance(node, Mapping):
        return ""
    kind = _text(node.get("type"))
    if kind == "text":
        return node.get("text") if isinstance(node.get("text"), str) else ""
    if kind == "hardBreak":
        return "\n"
    attrs = _mapping(node.get("attrs"))
    if kind in ("mention", "emoji", "inlineCard", "status", "date"):
        for name in ("text", "shortName", "url"):
            if isinstance(attrs.get(name), str):
                return attrs[name]
        return ""
    inner = _adf_text(node.get("content"), depth + 1)
    return inner + "\n" if kind in _ADF_BLOCKS else inner


# --- users -----------------------------------------------------------------------------------


def _user_id(user: Any, deployment: str) -> str | None:
    """Cloud names people by accountId, Data Center by username (name), else key."""
    if not isinstance(user, Mapping):
        return None
    order = ("accountId", "name", "key") if deployment == "cloud" else ("name", "key", "accountId")
    return next((text for k in order if (text := _text(user.get(k)))), None)


def _issue_users(issue: Any) -> list[Any]:
    fields = _mapping(_mapping(issue).get("fields"))
    return [fields.get(k) for k in ("reporter", "assignee", "creator")]


def _payload_users(payload: Mapping[str, Any]) -> list[Any]:
    comment = _mapping(payload.get("comment"))
    return [
        payload.get("user"), comment.get("author"), comment.get("updateAuthor"),
        _mapping(payload.get("changelog")).get("author"), *_issue_users(payload.get("issue")),
    ]


def _guess_deployment(users: Iterable[Any]) -> str:
    users = [u for u in users if isinstance(u, Mapping)]
    if any(_text(u.get("accountId")) for u in users):
        return "cloud"
    if any(_text(u.get("name")) or _text(u.get("key")) for u in users):
        return "datacenter"
    return "cloud"


@lru_cache(maxsize=2)
def _default_site(deployment: str) -> JiraSite:
    # Only the field mapping's defaults are read; the url and token are never used here.
    return JiraSite.model_validate(
        {"url": "https://jira.invalid", "token": {"$env": "JIRA_TOKEN"}, "deployment": deployment}
    )


# --- scalars ---------------------------------------------------------------------------------


def _load(body: bytes) -> Mapping[str, Any]:
    return json_object(body, "a Jira webhook")


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _id(value: Any) -> str | None:
    """An id as a string: Jira sends ids as strings, some payloads as numbers."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return str(value)
    return value.strip() or None if isinstance(value, str) else None


def _is_set(value: Any) -> bool:
    return value is not None and value != "" and value != {} and value != []


def _aware(value: datetime) -> datetime:
    return value if value.utcoffset() is not None else value.replace(tzinfo=UTC)


def _time(value: Any) -> datetime | None:
    """A Jira time: ``2019-06-04T00:15:17.234+0000``, with or without colon or millis, or ``Z``."""
    if not isinstance(value, str) or not value.strip():
        return None
    text = value.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return None
    if parsed.utcoffset() is None:
        # Jira always states an offset; a bare time is taken as UTC rather than refused.
        parsed = parsed.replace(tzinfo=UTC)
    return parsed


def _from_epoch_ms(value: Any) -> datetime | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        return _EPOCH + timedelta(milliseconds=value)
    except (OverflowError, ValueError):
        return None


def _epoch_ms(value: datetime) -> int:
    return (value - _EPOCH) // _MILLISECOND


