"""Zendesk webhooks and REST tickets into Escalier's tickets and ticket events.

Everything here is a pure function of its inputs: no I/O, no clock, no logging. The worker hands
:func:`parse_delivery` a stored delivery; reconciliation hands :func:`events_from_export` one
ticket of the incremental ticket export; :func:`ticket_from_api` reads a ticket as the REST API
returns it.

Two kinds of webhook arrive. **Event webhooks** (``"type": "zen:event-type:ticket.status_changed"``)
carry the whole ticket after the change in ``detail`` (ids as strings, upper-case status and
priority, explicit nulls) and the change itself in ``event``. **Trigger webhooks** carry whatever
JSON the admin's template renders: every value a string, tags space-separated, dates as the
account formats them. The parser reads the recommended body (``docs/zendesk.md``) and is liberal
about a customised one: flat or under ``"ticket"``, ids or names, missing fields; when the body
cannot make a ticket, the ticket is read with ``fetch`` (or left out without it). An event of
Zendesk's Events Connector (Amazon EventBridge, ``"detail-type": "Support Ticket: ..."``) is read
as the event webhook of the same change.

Event ids, so that a change seen by a webhook and by the export is decided once:

- ``zendesk:{instance}:{ticket}:v:{epoch}``: one **version** of a ticket, keyed by its
  ``updated_at`` in epoch seconds. Zendesk bumps ``updated_at`` on every update, and every event
  webhook of one update carries the same ``detail.updated_at``, as the export carries the
  ticket's. So every ticket event webhook gives this event (the first to arrive is decided, the
  others of the same update are duplicates: each carries the same ticket), a trigger body with an
  exact ``updated_at`` gives it, and the export gives it for the ticket's current version;
- ``zendesk:{instance}:{ticket}:comment:{comment id}``: a comment, from ``ticket.comment_added``
  (or a trigger body that names the comment's id), in addition to its update's version event:
  the export carries no comments, so this one is the webhook's alone;
- ``zendesk:{instance}:{ticket}:deleted``: a ticket deleted (soft or permanently) or exported
  with status ``deleted``;
- ``zendesk:{instance}:{ticket}:trigger:{delivery}``: a trigger body with no exact
  ``updated_at`` (placeholders render it to the minute at best) and no ``fetch`` to read the
  ticket's; keyed by the delivery id (the same on Zendesk's retries), else a digest of the body.
  With ``fetch`` (the worker always has one) the ticket read gives the version id;
- ``zendesk:{instance}:{ticket}:event:{id}``: an event webhook whose ticket has no
  ``updated_at``, by the event's own ``id``.

Our own changes (Escalier's service user, or a comment carrying the ``[escalier]`` marker or an
``escalier:`` key line) come back with ``actor_role`` ESCALIER.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Any

from escalier.connectors._values import json_object
from escalier.connectors._values import whole_count
from escalier.connectors._values import first_error as _first_error
from escalier.connectors.zendesk.config import ZendeskAccount
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
from pydantic import ValidationError

__all__ = [
    "SYSTEM",
    "comment_event_id",
    "deleted_event_id",
    "eventbridge_event_type",
    "events_from_export",
    "from_eventbridge",
    "is_eventbridge",
    "parse_delivery",
    "ticket_from_api",
    "version_event_id",
]

SYSTEM = "zendesk"
EVENT_PREFIX = "zen:event-type:"
TICKET_PREFIX = EVENT_PREFIX + "ticket."

_CATEGORIES = {
    "new": StatusCategory.NEW,
    "open": StatusCategory.OPEN,
    "pending": StatusCategory.PENDING,
    "hold": StatusCategory.ON_HOLD,
    "solved": StatusCategory.SOLVED,
    "closed": StatusCategory.CLOSED,
    "deleted": StatusCategory.CLOSED,
}
# How status names are spelled in the places Zendesk renders them (placeholders, other locales
# of the English UI): all mean one of the API's six statuses.
_STATUS_SPELLINGS = {
    "on-hold": "hold", "on hold": "hold", "onhold": "hold", "on_hold": "hold",
    "resolved": "solved",
}
_DONE = frozenset({"solved", "closed", "deleted"})
# Zendesk's own "user" for triggers, automations and other system changes.
_SYSTEM_ACTOR = "-1"
_DELETED = frozenset({"soft_deleted", "permanently_deleted"})
_FIELD_EVENTS = {
    "status_changed": "status",
    "priority_changed": "priority",
    "group_assignment_changed": "group_id",
    "agent_assignment_changed": "assignee_id",
    "subject_changed": "subject",
    "type_changed": "type",
    "tags_changed": "tags",
    "custom_status_changed": "custom_status_id",
    "requester_changed": "requester_id",
    "organization_changed": "organization_id",
}
# Keys a trigger template may put the ticket's values under; the first found wins. The
# recommended body uses the first of each.
_TRIGGER_KEYS: dict[str, tuple[str, ...]] = {
    "id": ("ticket_id", "id"),
    "subject": ("subject", "title", "ticket_title"),
    "status": ("status", "ticket_status"),
    "priority": ("priority", "ticket_priority"),
    "tags": ("tags", "ticket_tags"),
    "group_id": ("group_id",),
    "group": ("group", "group_name"),
    "assignee_id": ("assignee_id",),
    "assignee": ("assignee", "assignee_email", "assignee_name"),
    "requester_id": ("requester_id",),
    "requester": ("requester", "requester_email", "requester_name"),
    "organization_id": ("organization_id",),
    "organization": ("organization", "organization_name"),
    "created_at": ("created_at", "created_at_with_timestamp", "created"),
    "updated_at": ("updated_at", "updated_at_with_timestamp", "updated"),
    "solved_at": ("solved_at",),
    "description": ("description",),
    "type": ("type", "ticket_type"),
    "actor": ("current_user_id", "updater_id", "actor_id", "author_id"),
    "comment": ("comment", "latest_comment", "latest_public_comment", "comment_body"),
    "comment_id": ("comment_id", "latest_comment_id"),
    "comment_public": ("comment_public", "comment_is_public", "latest_comment_public"),
    "comment_author_id": ("comment_author_id", "latest_comment_author_id"),
}
_SEVERITY_PREFIX = re.compile(r"^(?:severity|sev)[_-]")
_FIELD_KEY = re.compile(r"^ticket_field_(?:option_title_)?(\d+)$")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# Formats Zendesk renders dates in (placeholders follow the account's locale; these are the
# English ones). They carry no zone: the account's zone is not in the body, so UTC is assumed
# and such a time never keys a version event.
_HUMAN_FORMATS = (
    "%B %d, %Y %H:%M", "%B %d, %Y %H:%M:%S", "%b %d, %Y %H:%M", "%B %d, %Y", "%b %d, %Y",
    "%d %B %Y %H:%M", "%d %b %Y %H:%M", "%Y-%m-%d %H:%M:%S", "%Y-%m-%d %H:%M", "%Y-%m-%d",
    "%Y/%m/%d %H:%M:%S", "%Y/%m/%d %H:%M", "%m/%d/%Y %H:%M", "%m/%d/%Y",
)
_SECONDS = re.compile(r"\d{2}:\d{2}:\d{2}")
_FRACTION = re.compile(r"(\.\d{6})\d+")
_MAX_TEXT = 1_000_000


# --- ids -------------------------------------------------------------------------------------


def version_event_id(instance: str, ticket_id: str, updated_at: datetime) -> str:
    """The id of one version of a ticket: the same from a webhook and from the export."""
    return f"zendesk:{instance}:{ticket_id}:v:{_epoch_seconds(updated_at)}"


def comment_event_id(instance: str, ticket_id: str, comment_id: str) -> str:
    """The id of one comment."""
    return f"zendesk:{instance}:{ticket_id}:comment:{comment_id}"


def deleted_event_id(instance: str, ticket_id: str) -> str:
    """The id of a ticket's deletion."""
    return f"zendesk:{instance}:{ticket_id}:deleted"


# --- tickets ---------------------------------------------------------------------------------


def ticket_from_api(
    ticket_json: Mapping[str, Any], site: ZendeskAccount | None, instance: str
) -> Ticket:
    """A ticket snapshot from a REST ticket (``GET /tickets/{id}``, the export, a search).

    :raises PayloadError: when the ticket is not an object, has no id or no date.
    """
    if not isinstance(ticket_json, Mapping):
        raise PayloadError("the ticket is not a JSON object")
    site = site or _default_site()
    return _Values.of_api(ticket_json).ticket(site, instance)


# --- events ----------------------------------------------------------------------------------


def parse_delivery(
    raw: RawEvent, site: ZendeskAccount | None, *, fetch: Callable[..., Ticket] | None = None
) -> list[TicketEvent]:
    """The ticket events one stored Zendesk webhook delivery carries.

    ``fetch(ticket id, newer_than=...)`` is called at most once: for a trigger body that cannot
    make a ticket, names no exact update time or lacks a mapped custom field, and for an event
    webhook when the site maps custom fields (an event's ``detail`` carries none). ``newer_than``
    is the update the delivery speaks of, when it says: a copy of the ticket older than that
    would decide the change on what came before it.

    :raises PayloadError: when the body is not a Zendesk webhook this parser can read.
    :raises DeliverySkipped: for events escalations do not follow (``unsupported_event``).
    :raises ConnectorError: whatever ``fetch`` raises, unchanged.
    """
    payload = _load(raw.body)
    site = site or _default_site()
    reader = _Reader.of(site, raw.instance)
    received = _aware(raw.received_at)
    try:
        if is_eventbridge(payload):
            payload = from_eventbridge(payload)
        if isinstance(payload.get("type"), str) and payload["type"].startswith(EVENT_PREFIX):
            return _EventDelivery(reader, payload, received, fetch).events()
        if isinstance(payload.get("type"), str) and isinstance(payload.get("detail"), Mapping):
            raise PayloadError(
                f"the event type {_short(payload['type'])!r} is not a Zendesk event type "
                f"(they start with {EVENT_PREFIX})"
            )
        return _TriggerDelivery(reader, payload, received, fetch, raw.delivery_id, raw.body).events()
    except ValidationError as exc:
        raise PayloadError(
            f"the Zendesk delivery does not make a valid event: {_first_error(exc)}"
        ) from exc


# Amazon EventBridge names (``"Support Ticket: Comment Created"``) that differ from the webhooks'.
_EVENTBRIDGE_NAMES = {
    "comment_created": "comment_added",
    "ticket_created": "created",
    "ticket_merged": "merged",
    "ticket_soft_deleted": "soft_deleted",
    "ticket_permanently_deleted": "permanently_deleted",
    "ticket_undeleted": "undeleted",
    "ticket_marked_as_spam": "marked_as_spam",
    "ticket_type_changed": "type_changed",
    "form_changed": "ticket_form_changed",
}
_EVENTBRIDGE_TICKET = "Support Ticket:"


def is_eventbridge(payload: Any) -> bool:
    """True for an event of Zendesk's Events Connector (Amazon EventBridge)."""
    return (
        isinstance(payload, Mapping)
        and isinstance(payload.get("detail-type"), str)
        and isinstance(payload.get("detail"), Mapping)
    )


def eventbridge_event_type(envelope: Mapping[str, Any]) -> str | None:
    """The webhook event type of an EventBridge ticket event; None for other EventBridge events."""
    kind = str(envelope.get("detail-type") or "").strip()
    if not kind.startswith(_EVENTBRIDGE_TICKET):
        return None
    words = re.sub(r"[^a-z0-9]+", "_", kind[len(_EVENTBRIDGE_TICKET):].strip().lower()).strip("_")
    return f"{TICKET_PREFIX}{_EVENTBRIDGE_NAMES.get(words, words)}"


def from_eventbridge(envelope: Mapping[str, Any]) -> Mapping[str, Any]:
    """A Zendesk Events Connector event (Amazon EventBridge) as the event webhook of that change.

    EventBridge sends ``{"detail-type": "Support Ticket: Status Changed", "id", "time",
    "detail": {"ticket_event": {"meta": {"occurred_at", "actor_id"}, "type", "previous",
    "current", "comment", "ticket": {...}}}}``: the same facts as the webhook, ids as numbers.

    :raises DeliverySkipped: for an event not about a ticket (``unsupported_event``).
    :raises PayloadError: for a ticket event without its ticket.
    """
    kind = str(envelope["detail-type"]).strip()
    event_type = eventbridge_event_type(envelope)
    if event_type is None:
        raise DeliverySkipped(
            "unsupported_event",
            f"Zendesk's EventBridge event {_short(kind)!r} is not about a ticket; escalations "
            "follow tickets only",
        )
    change = _mapping(_mapping(envelope["detail"]).get("ticket_event"))
    ticket = change.get("ticket")
    if not isinstance(ticket, Mapping):
        raise PayloadError(
            f"the EventBridge event {_short(kind)!r} carries no detail.ticket_event.ticket"
        )
    meta = _mapping(change.get("meta"))
    event = {key: value for key, value in change.items() if key not in ("ticket", "meta", "type")}
    return {
        "type": event_type,
        "id": envelope.get("id"),
        "time": meta.get("occurred_at") or envelope.get("time"),
        "subject": f"zen:ticket:{ticket.get('id')}",
        "detail": {**ticket, "actor_id": meta.get("actor_id")},
        "event": event,
    }


def events_from_export(
    ticket_json: Mapping[str, Any],
    site: ZendeskAccount | None,
    instance: str,
    *,
    since: datetime | None = None,
) -> list[TicketEvent]:
    """The event for one ticket of the incremental ticket export: its current version.

    The id is the one a webhook of the same update gives, so the change is decided once. A
    ticket not updated since ``since`` gives nothing.

    :raises PayloadError: when the ticket cannot make a snapshot.
    """
    if not isinstance(ticket_json, Mapping):
        raise PayloadError("the exported ticket is not a JSON object")
    site = site or _default_site()
    reader = _Reader.of(site, instance)
    values = _Values.of_api(ticket_json)
    ticket = values.ticket(site, instance)
    updated = ticket.updated_at or ticket.created_at
    if since is not None and updated < _aware(since):
        return []
    # The export names nobody who made the change: the event is the system's.
    try:
        if values.status == "deleted":
            return [reader.event(
                deleted_event_id(instance, ticket.id), ticket, EventKind.RESOLVED, updated,
                None, actor_role=ActorRole.SYSTEM, reason="deleted in Zendesk",
            )]
        created = ticket.updated_at in (None, ticket.created_at)
        kind = EventKind.CREATED if created else EventKind.UPDATED
        return [reader.event(
            version_event_id(instance, ticket.id, updated), ticket, kind, updated, None,
            actor_role=ActorRole.SYSTEM,
        )]
    except ValidationError as exc:
        raise PayloadError(
            f"ticket {ticket.id} does not make a valid event: {_first_error(exc)}"
        ) from exc


# --- values of one ticket ----------------------------------------------------------------------


@dataclass
class _Values:
    """A ticket's values as strings and plain lists, whichever shape they came in."""

    id: str | None = None
    subject: str | None = None
    status: str | None = None
    priority: str | None = None
    tags: tuple[str, ...] = ()
    group_id: str | None = None
    group: str | None = None
    assignee: str | None = None
    requester: str | None = None
    organization: str | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None
    updated_exact: bool = False
    solved_at: datetime | None = None
    description: str = ""
    type: str | None = None
    custom: dict[str, Any] | None = None  # field id -> value; None when the shape carries none

    @classmethod
    def of_api(cls, ticket: Mapping[str, Any]) -> _Values:
        """From a REST ticket or an event's ``detail`` (the same names; ids as strings there)."""
        updated = _time(ticket.get("updated_at"))
        custom: dict[str, Any] | None = None
        for key in ("custom_fields", "fields"):
            if isinstance(ticket.get(key), list):
                custom = custom or {}
                for entry in ticket[key]:
                    if isinstance(entry, Mapping) and (field_id := _id(entry.get("id"))):
                        custom.setdefault(field_id, entry.get("value"))
        return cls(
            id=_id(ticket.get("id")),
            subject=_text(ticket.get("subject")) or _text(ticket.get("raw_subject")),
            status=_status_name(ticket.get("status")),
            priority=_priority_name(ticket.get("priority")),
            tags=_tags(ticket.get("tags")),
            group_id=_id(ticket.get("group_id")),
            assignee=_id(ticket.get("assignee_id")),
            requester=_id(ticket.get("requester_id")),
            organization=_id(ticket.get("organization_id")),
            created_at=_time(ticket.get("created_at")),
            updated_at=updated,
            updated_exact=updated is not None,
            solved_at=_time(ticket.get("solved_at")),
            description=_text(ticket.get("description")) or "",
            type=_lower_text(ticket.get("type")),
            custom=custom,
        )

    @classmethod
    def of_trigger(cls, body: Mapping[str, Any]) -> _Values:
        """From a rendered trigger body: flat, or with the ticket under ``"ticket"``."""
        look = _TriggerLook(body)
        updated_text = look.text("updated_at")
        updated = _time(updated_text) or _human_time(updated_text)
        custom: dict[str, Any] = {}
        for source in (body, _mapping(body.get("ticket"))):
            for key, value in source.items():
                match = _FIELD_KEY.match(str(key))
                if match:
                    custom.setdefault(match.group(1), value)
            fields = source.get("custom_fields")
            if isinstance(fields, Mapping):
                for key, value in fields.items():
                    custom.setdefault(str(key), value)
            elif isinstance(fields, list):
                for entry in fields:
                    if isinstance(entry, Mapping) and (field_id := _id(entry.get("id"))):
                        custom.setdefault(field_id, entry.get("value"))
        return cls(
            id=_id(look.value("id")),
            subject=look.text("subject"),
            status=_status_name(look.value("status")),
            priority=_priority_name(look.value("priority")),
            tags=_tags(look.value("tags")),
            group_id=_id(look.value("group_id")),
            group=look.text("group"),
            assignee=_id(look.value("assignee_id")) or look.text("assignee"),
            requester=_id(look.value("requester_id")) or look.text("requester"),
            organization=_id(look.value("organization_id")) or look.text("organization"),
            created_at=_any_time(look.text("created_at")),
            updated_at=updated,
            # {{ticket.updated_at_with_timestamp}} renders to the minute: no version id from it.
            updated_exact=_time(updated_text) is not None and bool(_SECONDS.search(updated_text or "")),
            solved_at=_any_time(look.text("solved_at")),
            description=look.text("description") or "",
            type=_lower_text(look.value("type")),
            custom=custom,
        )

    def complete(self) -> bool:
        """Enough for a snapshot: an id, a status and a time."""
        return bool(self.id and self.status and (self.created_at or self.updated_at))

    def ticket(self, site: ZendeskAccount, instance: str) -> Ticket:
        """The snapshot; a missing ``created_at`` falls back to the update time.

        :raises PayloadError: when there is no id or no time.
        """
        if self.id is None:
            raise PayloadError("the ticket carries no id")
        created = self.created_at or self.updated_at or self.solved_at
        if created is None:
            raise PayloadError(f"ticket {self.id} carries no created_at or updated_at time")
        status = self.status or "open"
        custom = self.custom or {}
        mapped = site.fields
        fields: dict[str, Any] = {
            name: _plain(custom.get(str(field_id))) for name, field_id in mapped.custom.items()
        }
        if self.type:
            fields.setdefault("type", self.type)
        try:
            return Ticket(
                system=SYSTEM,
                id=self.id,
                instance=instance,
                subject=self.subject or "",
                status=status,
                status_category=_CATEGORIES.get(status, StatusCategory.OPEN),
                priority=self.priority,
                severity=self._severity(site),
                users_affected=(
                    _count(custom.get(str(mapped.users_affected))) if mapped.users_affected else None
                ),
                tags=self.tags,
                assignee=self.assignee,
                group=self._group(site),
                requester=self.requester,
                organization=self.organization,
                created_at=created,
                updated_at=self.updated_at,
                solved_at=self.solved_at,
                fields=fields,
                description=self.description,
            )
        except ValidationError as exc:
            raise PayloadError(
                f"ticket {self.id} does not make a valid ticket: {_first_error(exc)}"
            ) from exc

    def _severity(self, site: ZendeskAccount) -> str | None:
        if site.fields.severity is not None and self.custom is not None:
            value = _plain(self.custom.get(str(site.fields.severity)))
            if isinstance(value, str) and value.strip():
                # A drop-down's values are tags, often prefixed: severity_critical -> critical.
                return _SEVERITY_PREFIX.sub("", value.strip().lower()) or value.strip().lower()
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                return str(value)
        if self.priority is None:
            return None
        by_priority = {k.lower(): v for k, v in site.severities_by_priority.items()}
        return by_priority.get(self.priority)

    def _group(self, site: ZendeskAccount) -> str | None:
        if self.group_id is not None:
            names = {str(group_id): name for name, group_id in site.groups.items()}
            return names.get(self.group_id, self.group_id)
        return self.group


class _TriggerLook:
    """Reads a trigger body's values by any of their known keys, flat or under ``ticket``."""

    def __init__(self, body: Mapping[str, Any]):
        self.body = body
        self.nested = _mapping(body.get("ticket"))

    def value(self, name: str) -> Any:
        """The first non-empty value under one of ``name``'s keys, the nested ticket first."""
        for source in (self.nested, self.body):
            for key in _TRIGGER_KEYS[name]:
                value = source.get(key)
                if value is not None and value != "":
                    return value
        return None

    def text(self, name: str) -> str | None:
        """The value as trimmed text, numbers included."""
        value = self.value(name)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        return value.strip() or None if isinstance(value, str) else None


# --- readers -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Reader:
    """Builds events for one account and instance; webhooks and the export share it."""

    site: ZendeskAccount
    instance: str
    identity: OwnIdentity

    @classmethod
    def of(cls, site: ZendeskAccount, instance: str) -> _Reader:
        """A reader that knows the account's own user by its service_user_id."""
        own = frozenset({str(site.service_user_id)}) if site.service_user_id else frozenset()
        return cls(site=site, instance=instance, identity=OwnIdentity(user_ids=own))

    def role(
        self,
        actor: str | None,
        *,
        requester: str | None = None,
        body: str | None = None,
        staff: bool | None = None,
    ) -> ActorRole:
        """ESCALIER for our user or marked text, SYSTEM for Zendesk itself, CUSTOMER for the
        requester or a non-staff author, else AGENT."""
        if self.identity.is_own_user(actor) or (body is not None and self.identity.is_marked(body)):
            return ActorRole.ESCALIER
        if actor == _SYSTEM_ACTOR:
            return ActorRole.SYSTEM
        if staff is False:
            return ActorRole.CUSTOMER
        if staff is None and actor is not None and actor == requester:
            return ActorRole.CUSTOMER
        return ActorRole.AGENT

    def event(
        self,
        event_id: str,
        ticket: Ticket | None,
        kind: EventKind,
        at: datetime,
        actor: str | None,
        *,
        ticket_id: str | None = None,
        actor_role: ActorRole | None = None,
        changes: tuple[FieldChange, ...] = (),
        comment: Comment | None = None,
        reason: str | None = None,
    ) -> TicketEvent:
        """One event about a ticket."""
        requester = ticket.requester if ticket is not None else None
        return TicketEvent(
            id=event_id,
            system=SYSTEM,
            instance=self.instance,
            ticket_id=ticket.id if ticket is not None else str(ticket_id),
            kind=kind,
            occurred_at=at,
            actor=actor,
            actor_role=actor_role or self.role(actor, requester=requester),
            ticket=ticket,
            changes=changes,
            comment=comment,
            reason=reason,
        )


@dataclass
class _EventDelivery:
    """One event-subscription webhook being read."""

    reader: _Reader
    payload: Mapping[str, Any]
    received_at: datetime
    fetch: Callable[..., Ticket] | None

    def events(self) -> list[TicketEvent]:
        """The version event of the ticket, and a comment event for ``comment_added``."""
        kind_name = self.payload["type"]
        if not kind_name.startswith(TICKET_PREFIX):
            raise DeliverySkipped(
                "unsupported_event",
                f"Zendesk's {_short(kind_name)} event is not about a ticket; escalations follow "
                "tickets only",
            )
        name = kind_name[len(TICKET_PREFIX):]
        detail = self.payload.get("detail")
        if not isinstance(detail, Mapping):
            raise PayloadError(f"the {_short(kind_name)} event carries no detail object")
        event = _mapping(self.payload.get("event"))
        values = _Values.of_api(detail)
        ticket_id = values.id or _ticket_from_subject(self.payload.get("subject"))
        if ticket_id is None:
            raise PayloadError(
                f"the {_short(kind_name)} event names no ticket (no detail.id, no subject)"
            )
        values.id = ticket_id
        at = _time(self.payload.get("time")) or values.updated_at or self.received_at
        actor = _id(detail.get("actor_id"))
        ticket = self._ticket(values, name, event)
        instance = self.reader.instance
        if name in _DELETED:
            if ticket is not None:
                ticket = ticket.model_copy(update={"status_category": StatusCategory.CLOSED})
            how = "permanently deleted" if name == "permanently_deleted" else "deleted"
            return [self.reader.event(
                deleted_event_id(instance, ticket_id), ticket, EventKind.RESOLVED, at, actor,
                ticket_id=ticket_id, reason=f"{how} in Zendesk",
            )]
        if values.updated_at is not None:
            version_id = version_event_id(instance, ticket_id, values.updated_at)
            version_at = values.updated_at
        else:
            event_uuid = _id(self.payload.get("id"))
            if event_uuid is None:
                raise PayloadError(
                    f"the {_short(kind_name)} event for ticket {ticket_id} carries neither "
                    "detail.updated_at nor an id"
                )
            version_id = f"zendesk:{instance}:{ticket_id}:event:{event_uuid}"
            version_at = at
        comment = _mapping(event.get("comment"))
        body = _comment_text(comment)
        events = [self.reader.event(
            version_id, ticket, _event_kind(name, event), version_at, actor,
            ticket_id=ticket_id, changes=_changes(name, event),
            actor_role=self.reader.role(actor, requester=values.requester, body=body),
            reason="merged into another ticket" if name == "merged" else None,
        )]
        comment_id = _id(comment.get("id"))
        if name == "comment_added" and comment_id is not None and body is not None:
            author = _mapping(comment.get("author"))
            author_id = _id(author.get("id")) or _id(comment.get("author_id")) or actor
            staff = author.get("is_staff") if isinstance(author.get("is_staff"), bool) else None
            role = self.reader.role(author_id, requester=values.requester, body=body, staff=staff)
            public = comment.get("is_public", comment.get("public", True))
            events.append(self.reader.event(
                comment_event_id(instance, ticket_id, comment_id), ticket, EventKind.COMMENTED,
                _time(comment.get("created_at")) or at, author_id, ticket_id=ticket_id,
                actor_role=role,
                comment=Comment(body=body, public=public is not False, author=author_id,
                                author_role=role),
            ))
        return events

    def _ticket(
        self, values: _Values, name: str, event: Mapping[str, Any]
    ) -> Ticket | None:
        site = self.reader.site
        mapped = site.fields
        wants_custom = bool(mapped.severity or mapped.users_affected or mapped.custom)
        if wants_custom and self.fetch is not None and name not in _DELETED:
            # ``detail`` carries no custom fields: the ticket is read to know them (a deleted
            # ticket cannot be read, and its fields no longer matter).
            return self.fetch(str(values.id), newer_than=values.updated_at)
        if name == "custom_field_changed":
            field_id = _id(_mapping(event.get("custom_field")).get("id")) or _id(event.get("id"))
            if field_id is not None and "current" in event:
                values.custom = {**(values.custom or {}), field_id: event.get("current")}
        if values.created_at is None and values.updated_at is None:
            return None
        return values.ticket(site, self.reader.instance)


@dataclass
class _TriggerDelivery:
    """One trigger (or automation) webhook being read."""

    reader: _Reader
    payload: Mapping[str, Any]
    received_at: datetime
    fetch: Callable[..., Ticket] | None
    delivery_id: str | None
    body: bytes

    def events(self) -> list[TicketEvent]:
        """The ticket's version event, and a comment event when the body names its comment."""
        values = _Values.of_trigger(self.payload)
        if values.id is None:
            keys = ", ".join(sorted(str(k) for k in self.payload)[:8]) or "none"
            raise PayloadError(
                "the body is neither a Zendesk event webhook (no zen:event-type) nor a trigger "
                f"body naming a ticket (no ticket_id; keys: {keys})"
            )
        if not (values.id.isascii() and values.id.isdigit()):
            # Zendesk numbers its tickets; anything else is another body carrying an "id".
            hint = (" (a placeholder left as written, as Zendesk's \"Test webhook\" sends it)"
                    if "{{" in values.id else "")
            raise PayloadError(
                f"the trigger body's ticket id {_short(values.id)!r} is not a Zendesk ticket "
                f"number{hint}"
            )
        instance = self.reader.instance
        ticket_id = values.id
        ticket: Ticket | None = None
        mapped = self.reader.site.fields
        wanted = {str(f) for f in (mapped.severity, mapped.users_affected, *mapped.custom.values())
                  if f is not None}
        # A body without the mapped custom fields would make a ticket without its severity.
        thin = not (values.complete() and values.updated_exact) or not wanted <= set(values.custom or {})
        fetched = self.fetch is not None and thin
        if fetched:
            assert self.fetch is not None
            # A trigger's time may be to the minute: any copy from before that minute's end is old.
            newer = values.updated_at
            if newer is not None and not values.updated_exact:
                newer += timedelta(seconds=59)
            ticket = self.fetch(ticket_id, newer_than=newer)
        elif values.complete():
            ticket = values.ticket(self.reader.site, instance)
        look = _TriggerLook(self.payload)
        current_user = _mapping(self.payload.get("current_user"))
        actor = _id(look.value("actor")) or _id(current_user.get("id"))
        comment_value = look.value("comment")
        body = _comment_text(comment_value) if isinstance(comment_value, Mapping) else (
            comment_value if isinstance(comment_value, str) and comment_value.strip() else None
        )
        requester = ticket.requester if ticket is not None else values.requester
        comment = comment_value if isinstance(comment_value, Mapping) else {}
        comment_author = _id(comment.get("author_id")) or _id(look.value("comment_author_id"))
        # The latest comment may be older than this update: its marker says the update is ours
        # only when nothing says who made the update, or its author is ours too.
        marked = body if actor is None or comment_author == actor else None
        role = self.reader.role(actor, requester=requester, body=marked)
        updated = ticket.updated_at if ticket is not None and ticket.updated_at else None
        exact = updated is not None and (fetched or values.updated_exact)
        if exact:
            assert updated is not None
            event_id = version_event_id(instance, ticket_id, updated)
            at = updated
        else:
            digest = self.delivery_id or hashlib.sha256(self.body).hexdigest()[:20]
            event_id = f"zendesk:{instance}:{ticket_id}:trigger:{digest}"
            at = values.updated_at or self.received_at
        events = [self.reader.event(
            event_id, ticket, _trigger_kind(values, ticket, fetched), at, actor, ticket_id=ticket_id,
            actor_role=role,
        )]
        comment_id = _id(comment.get("id")) or _id(look.value("comment_id"))
        if comment_id is not None and body is not None:
            author = comment_author or actor
            public = _flag(comment.get("public", comment.get("is_public")))
            if public is None:
                public = _flag(look.value("comment_public"))
            comment_role = self.reader.role(author, requester=requester, body=body)
            events.append(self.reader.event(
                comment_event_id(instance, ticket_id, comment_id), ticket, EventKind.COMMENTED,
                at, author, ticket_id=ticket_id, actor_role=comment_role,
                comment=Comment(body=body, public=public is not False, author=author,
                                author_role=comment_role),
            ))
        return events


def _trigger_kind(values: _Values, ticket: Ticket | None, fetched: bool) -> EventKind:
    # A body without created_at says nothing of creation: its ticket's created_at is a stand-in.
    if fetched and ticket is not None:
        created, updated = ticket.created_at, ticket.updated_at
    else:
        created, updated = values.created_at, values.updated_at
    return EventKind.CREATED if created is not None and created == updated else EventKind.UPDATED


def _event_kind(name: str, event: Mapping[str, Any]) -> EventKind:
    if name == "created":
        return EventKind.CREATED
    if name == "agent_assignment_changed":
        return EventKind.ASSIGNED
    if name == "undeleted":
        return EventKind.REOPENED
    if name == "merged":
        return EventKind.RESOLVED
    if name == "status_changed":
        before = _status_name(event.get("previous"))
        after = _status_name(event.get("current"))
        if after in _DONE:
            return EventKind.RESOLVED
        if before in _DONE:
            return EventKind.REOPENED
        return EventKind.STATUS_CHANGED
    return EventKind.UPDATED


def _changes(name: str, event: Mapping[str, Any]) -> tuple[FieldChange, ...]:
    if name == "tags_changed":
        added, removed = _tags(event.get("tags_added", event.get("added"))), _tags(
            event.get("tags_removed", event.get("removed"))
        )
        if added or removed:
            return (FieldChange(field="tags", before=list(removed), after=list(added)),)
    field = _FIELD_EVENTS.get(name)
    if name == "custom_field_changed":
        custom = _mapping(event.get("custom_field"))
        field = _id(custom.get("id")) or _id(event.get("id"))
        field = f"custom_field_{field}" if field else "custom_field"
    if field is None or not ("current" in event or "previous" in event):
        return ()
    before, after = _plain(event.get("previous")), _plain(event.get("current"))
    if field in ("assignee_id", "group_id", "requester_id", "organization_id"):
        # Assignment events name the user or group as {"id": "..."} (or null).
        before, after = _ref_id(event.get("previous")), _ref_id(event.get("current"))
    if field in ("status", "priority"):
        before = _status_name(before) if field == "status" else _priority_name(before)
        after = _status_name(after) if field == "status" else _priority_name(after)
    return (FieldChange(field=field, before=before, after=after),)


# --- field values ----------------------------------------------------------------------------


def _ref_id(value: Any) -> str | None:
    return _id(value.get("id")) if isinstance(value, Mapping) else _id(value)


def _status_name(value: Any) -> str | None:
    text = _lower_text(value)
    if text is None:
        return None
    return _STATUS_SPELLINGS.get(text, text)


def _priority_name(value: Any) -> str | None:
    text = _lower_text(value)
    if text in (None, "-", "none", "null"):
        return None
    return text


def _tags(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        items: Iterable[Any] = re.split(r"[\s,]+", value)
    elif isinstance(value, list):
        items = value
    else:
        return ()
    seen: dict[str, None] = {}
    for item in items:
        if isinstance(item, str) and item.strip() and len(item) < 1000:
            seen.setdefault(item.strip(), None)
    return tuple(seen)


def _plain(value: Any) -> Any:
    """A custom field's value as JSON-plain as it came; option objects as their value."""
    if isinstance(value, Mapping):
        for key in ("value", "name", "title"):
            if key in value:
                return _plain(value[key])
        return None
    if isinstance(value, list):
        return [_plain(v) for v in value if not isinstance(v, (Mapping, list))]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _count(value: Any) -> int | None:
    """A non-negative whole count from a number, a numeric string or a field's value, else None."""
    return whole_count(_plain(value))


def _comment_text(comment: Any) -> str | None:
    if not isinstance(comment, Mapping):
        return None
    for key in ("body", "plain_body", "value", "html_body"):
        if isinstance(comment.get(key), str):
            return comment[key][:_MAX_TEXT]
    return None


def _flag(value: Any) -> bool | None:
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        text = value.strip().lower()
        if text in ("true", "yes", "1", "public"):
            return True
        if text in ("false", "no", "0", "private", "internal"):
            return False
    return None


def _ticket_from_subject(subject: Any) -> str | None:
    if isinstance(subject, str) and subject.startswith("zen:ticket:"):
        return _id(subject[len("zen:ticket:"):])
    return None


@lru_cache(maxsize=1)
def _default_site() -> ZendeskAccount:
    # Only the field mapping's defaults are read; the subdomain and token are never used here.
    return ZendeskAccount.model_validate(
        {"subdomain": "example", "email": "escalier@example.invalid",
         "token": {"$env": "ZENDESK_API_TOKEN"}}
    )


# --- scalars ---------------------------------------------------------------------------------


def _load(body: bytes) -> Mapping[str, Any]:
    return json_object(body, "a Zendesk webhook")


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _lower_text(value: Any) -> str | None:
    return value.strip().lower() or None if isinstance(value, str) else None


def _id(value: Any) -> str | None:
    """An id as a string: event webhooks send strings, the REST API numbers."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float) and value.is_integer() and math.isfinite(value):
        return str(int(value))
    if isinstance(value, str):
        text = value.strip()
        return text if text and len(text) <= 200 and not any(c.isspace() for c in text) else None
    return None


def _short(text: str) -> str:
    return text if len(text) <= 80 else text[:77] + "..."


def _aware(value: datetime) -> datetime:
    return value if value.utcoffset() is not None else value.replace(tzinfo=UTC)


def _time(value: Any) -> datetime | None:
    """An ISO 8601 time (``2025-01-14T19:31:42Z``, nanoseconds allowed), or epoch seconds."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            return _EPOCH + timedelta(seconds=value)
        except (OverflowError, ValueError):
            return None
    if not isinstance(value, str) or not value.strip() or len(value) > 64:
        return None
    text = value.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    text = _FRACTION.sub(r"\1", text)
    if "T" not in text and not re.match(r"^\d{4}-\d{2}-\d{2} \d", text):
        return None
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return None
    return parsed if parsed.utcoffset() is not None else parsed.replace(tzinfo=UTC)


def _human_time(value: str | None) -> datetime | None:
    """A date as a placeholder renders it (``March 6, 2026 15:50``), taken as UTC."""
    if value is None or len(value) > 64:
        return None
    for fmt in _HUMAN_FORMATS:
        try:
            return datetime.strptime(value.strip(), fmt).replace(tzinfo=UTC)
        except ValueError:
            continue
    return None


def _any_time(value: str | None) -> datetime | None:
    return _time(value) or _human_time(value)


def _epoch_seconds(value: datetime) -> int:
    return int((_aware(value) - _EPOCH) // timedelta(seconds=1))


