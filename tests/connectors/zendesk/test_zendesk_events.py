"""Zendesk webhooks, REST tickets and export rows into tickets and events, over tests/payloads/zendesk/."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from escalier.connectors.zendesk.config import ZendeskAccount
from escalier.connectors.zendesk.events import (
    comment_event_id,
    deleted_event_id,
    events_from_export,
    parse_delivery,
    ticket_from_api,
    version_event_id,
)
from escalier.core.connector import DeliverySkipped, RawEvent
from escalier.core.errors import PayloadError
from escalier.core.model import ActorRole, EventKind, StatusCategory, Ticket
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

PAYLOADS = Path(__file__).resolve().parents[2] / "payloads" / "zendesk"
RECEIVED = datetime(2026, 3, 7, 8, 0, tzinfo=UTC)

BOT = 9000000000099
DANA = "9000000000005"
CHRIS = "9000000000002"

SITE = ZendeskAccount.model_validate(
    {
        "subdomain": "acme",
        "email": "escalier@acme.example",
        "token": "${ZENDESK_API_TOKEN}",
        "groups": {"tier-1": 360000001, "tier-2": 360000002},
        "service_user_id": BOT,
    }
)
MAPPED = SITE.model_copy(
    update={
        "fields": SITE.fields.model_copy(
            update={
                "severity": 360010001,
                "users_affected": 360010002,
                "custom": {"business_impact": 360010003, "root_cause": 360010004},
            }
        )
    }
)
SITES = {"site": SITE, "mapped": MAPPED, "none": None}


def raw(body: bytes | str, instance: str = "acme", delivery_id: str | None = None) -> RawEvent:
    """A stored delivery with ``body``."""
    data = body.encode() if isinstance(body, str) else body
    return RawEvent(source="zendesk", instance=instance, body=data, headers={},
                    received_at=RECEIVED, delivery_id=delivery_id)


def load(name: str) -> Any:
    """A payload file as JSON."""
    return json.loads((PAYLOADS / name).read_text())


def parse(name: str, site: ZendeskAccount | None, **kwargs: Any):
    """``parse_delivery`` over a payload file."""
    delivery_id = kwargs.pop("delivery_id", None)
    return parse_delivery(raw((PAYLOADS / name).read_bytes(), delivery_id=delivery_id), site,
                          **kwargs)


def at(text: str) -> datetime:
    return datetime.fromisoformat(text)


def v(ticket: str, when: str) -> str:
    return version_event_id("acme", ticket, at(when))


class FakeZendesk:
    """Answers ``fetch`` from tickets it holds, and remembers what it was asked."""

    def __init__(self, *tickets: Ticket):
        self.tickets = {t.id: t for t in tickets}
        self.asked: list[str] = []
        self.newer_than: list[datetime | None] = []

    def fetch(self, ticket_id: str, *, newer_than: datetime | None = None) -> Ticket:
        self.asked.append(ticket_id)
        self.newer_than.append(newer_than)
        return self.tickets[ticket_id]


# --- the table ---------------------------------------------------------------------------------
# Each case: payload file, site, and the events expected (a subset of each event's attributes;
# "ticket" is None for none, or a dict of ticket attributes).

CASES: list[tuple[str, str, list[dict[str, Any]]]] = [
    ("event-ticket-created.json", "site", [dict(
        id=v("5150", "2026-03-06T09:00:00Z"), kind=EventKind.CREATED, ticket_id="5150",
        actor=CHRIS, actor_role=ActorRole.CUSTOMER, occurred_at=at("2026-03-06T09:00:00Z"),
        ticket=dict(status="new", status_category=StatusCategory.NEW, priority="urgent",
                    severity="critical", tags=("vip", "export"), group="tier-1", assignee=None,
                    requester=CHRIS, organization="361000007", subject="Export broken for all EU users",
                    created_at=at("2026-03-06T09:00:00Z"), fields={"type": "incident"}),
    )]),
    ("event-status-solved.json", "site", [dict(
        id=v("5150", "2026-03-06T12:00:05Z"), kind=EventKind.RESOLVED, actor_role=ActorRole.AGENT,
        ticket=dict(status="solved", status_category=StatusCategory.SOLVED, assignee=DANA),
        changes=(("status", "open", "solved"),),
    )]),
    ("event-status-reopened.json", "site", [dict(
        id=v("5150", "2026-03-06T13:00:00Z"), kind=EventKind.REOPENED, actor=CHRIS,
        actor_role=ActorRole.CUSTOMER, ticket=dict(status_category=StatusCategory.OPEN),
    )]),
    ("event-agent-assignment-changed.json", "site", [dict(
        id=v("5150", "2026-03-06T10:20:00Z"), kind=EventKind.ASSIGNED,
        ticket=dict(assignee=DANA, group="tier-1"),
        changes=(("assignee_id", None, DANA),),
    )]),
    ("event-group-assignment-changed.json", "site", [dict(
        id=v("5150", "2026-03-06T10:25:00Z"), kind=EventKind.UPDATED,
        ticket=dict(group="360000099"),
        changes=(("group_id", "360000001", "360000099"),),
    )]),
    ("event-priority-changed.json", "site", [dict(
        id=v("5150", "2026-03-06T11:00:00Z"), kind=EventKind.UPDATED,
        ticket=dict(priority="high", severity="high", status="hold",
                    status_category=StatusCategory.ON_HOLD, tags=("export", "eu", "vendor")),
        changes=(("priority", "normal", "high"),),
    )]),
    ("event-tags-changed.json", "site", [dict(
        id=v("5150", "2026-03-06T11:00:00Z"), kind=EventKind.UPDATED,
        changes=(("tags", [], ["vendor"]),),
    )]),
    ("event-comment-added-public-agent.json", "site", [
        dict(id=v("5150", "2026-03-06T10:30:00Z"), kind=EventKind.UPDATED, actor=DANA,
             actor_role=ActorRole.AGENT, comment=None),
        dict(id=comment_event_id("acme", "5150", "8800000000101"), kind=EventKind.COMMENTED,
             actor=DANA, actor_role=ActorRole.AGENT,
             comment=dict(body="We are looking into it now.", public=True, author=DANA,
                          author_role=ActorRole.AGENT)),
    ]),
    ("event-comment-added-customer.json", "site", [
        dict(id=v("5150", "2026-03-06T10:40:00Z"), kind=EventKind.UPDATED,
             ticket=dict(status_category=StatusCategory.PENDING)),
        dict(kind=EventKind.COMMENTED, actor=CHRIS, actor_role=ActorRole.CUSTOMER,
             comment=dict(public=True, author_role=ActorRole.CUSTOMER)),
    ]),
    ("event-comment-added-key-line.json", "site", [
        dict(kind=EventKind.UPDATED, actor_role=ActorRole.ESCALIER),
        dict(kind=EventKind.COMMENTED, actor_role=ActorRole.ESCALIER,
             comment=dict(public=False, author_role=ActorRole.ESCALIER)),
    ]),
    ("ticket-comment-by-escalier.json", "site", [
        dict(id=v("4242", "2026-03-06T15:52:00Z"), kind=EventKind.UPDATED,
             actor_role=ActorRole.ESCALIER, ticket=dict(group="360000003", tags=("vip", "escalier_tier_2"))),
        dict(id=comment_event_id("acme", "4242", "8800000000001"), kind=EventKind.COMMENTED,
             actor=str(BOT), actor_role=ActorRole.ESCALIER, comment=dict(public=False)),
    ]),
    ("ticket-status-changed.json", "site", [dict(
        id=v("4242", "2026-03-06T15:49:58Z"), kind=EventKind.STATUS_CHANGED,
        ticket=dict(priority="high", status="open", tags=("vip",), group="360000003"),
    )]),
    ("event-soft-deleted.json", "site", [dict(
        id=deleted_event_id("acme", "5150"), kind=EventKind.RESOLVED, reason="deleted in Zendesk",
        ticket=dict(status_category=StatusCategory.CLOSED),
    )]),
    ("event-custom-field-changed.json", "mapped", [dict(
        id=v("5150", "2026-03-06T10:50:00Z"), kind=EventKind.UPDATED,
        ticket=dict(severity="critical"), changes=(("custom_field_360010001", "high", "critical"),),
    )]),
    ("event-attachment-linked.json", "site", [dict(
        id=v("5150", "2026-03-06T09:58:00Z"), kind=EventKind.UPDATED, actor_role=ActorRole.CUSTOMER,
        ticket=dict(priority=None, severity=None, tags=(), group="tier-2", assignee=None,
                    status_category=StatusCategory.NEW),
    )]),
    ("event-no-updated-at.json", "site", [dict(
        id="zendesk:acme:5150:event:1f0e2d3c-0014-4a00-8000-000000000014", kind=EventKind.UPDATED,
        ticket=None, occurred_at=at("2026-03-06T10:55:00Z"),
    )]),
    # Zendesk's Events Connector (Amazon EventBridge) forwarded to the receiver: the same ids as
    # the event webhooks of the same update, ids as numbers, names of its own.
    ("eventbridge-agent-assignment-changed.json", "site", [dict(
        id=v("5150", "2026-03-06T10:20:00Z"), kind=EventKind.ASSIGNED, actor="9000000000004",
        actor_role=ActorRole.AGENT, occurred_at=at("2026-03-06T10:20:00.118004Z"),
        ticket=dict(assignee=DANA, group="tier-1", priority="urgent", severity="critical",
                    status_category=StatusCategory.OPEN, tags=("vip", "export"), requester=CHRIS,
                    organization="361000007"),
        changes=(("assignee_id", None, DANA),),
    )]),
    ("eventbridge-comment-created.json", "site", [
        dict(id=v("5150", "2026-03-06T10:40:00Z"), kind=EventKind.UPDATED, actor=CHRIS,
             actor_role=ActorRole.CUSTOMER),
        dict(id=comment_event_id("acme", "5150", "8800000000107"), kind=EventKind.COMMENTED,
             actor=CHRIS, actor_role=ActorRole.CUSTOMER,
             comment=dict(body="Still failing for every EU user, and payroll closes tonight.",
                          public=True, author=CHRIS, author_role=ActorRole.CUSTOMER)),
    ]),
    ("trigger-recommended.json", "mapped", [
        dict(id="zendesk:acme:5150:trigger:inv-77", kind=EventKind.UPDATED, actor=DANA,
             occurred_at=at("2026-03-06T10:15:00Z"),
             actor_role=ActorRole.AGENT,
             ticket=dict(status="pending", status_category=StatusCategory.PENDING, priority="urgent",
                         severity="critical", users_affected=250, tags=("export", "eu", "escalier_tier_1"),
                         group="tier-1", assignee=DANA, requester=CHRIS, organization="361000007",
                         fields={"business_impact": "EU payroll blocked", "root_cause": None})),
        dict(id=comment_event_id("acme", "5150", "8800000000105"), kind=EventKind.COMMENTED,
             comment=dict(body="Pending on the customer's logs.", public=False, author=DANA)),
    ]),
    ("trigger-nested-ticket.json", "site", [dict(
        id=v("5151", "2026-03-06T08:30:00Z"), kind=EventKind.UPDATED, actor="9000000000003",
        actor_role=ActorRole.CUSTOMER,
        ticket=dict(priority="low", tags=("billing",), group="tier-2", assignee=None),
    )]),
    ("trigger-minimal.json", "site", [dict(
        id="zendesk:acme:5152:trigger:inv-77", ticket_id="5152", ticket=None,
        occurred_at=RECEIVED, kind=EventKind.UPDATED,
    )]),
    ("trigger-own-change.json", "site", [dict(
        id=v("5150", "2026-03-06T10:46:00Z"), actor_role=ActorRole.ESCALIER,
        ticket=dict(group="tier-2", assignee="9000000000006"),
    )]),
    ("trigger-hold-human-dates.json", "site", [dict(
        id="zendesk:acme:5153:trigger:inv-77", kind=EventKind.UPDATED,
        occurred_at=at("2026-03-06T11:05:00Z"),
        ticket=dict(status="hold", status_category=StatusCategory.ON_HOLD, priority="normal",
                    tags=("vendor", "waiting"), group="Platform", assignee="Dana Agent",
                    created_at=at("2026-03-05T16:20:00Z")),
    )]),
    ("trigger-ticket-updated.json", "none", [dict(
        id="zendesk:acme:4242:trigger:inv-77", kind=EventKind.UPDATED,
        ticket=dict(priority="high", tags=("vip", "escalier_tier_1"), group="Support",
                    assignee="Dana Agent", status_category=StatusCategory.OPEN),
    )]),
]


def _check(event: Any, expected: dict[str, Any]) -> None:
    for name, want in expected.items():
        got = getattr(event, name)
        if name == "ticket" and isinstance(want, dict):
            assert got is not None, f"{event.id}: no ticket"
            for attr, value in want.items():
                assert getattr(got, attr) == value, f"{event.id}: ticket.{attr}"
        elif name == "comment" and isinstance(want, dict):
            assert got is not None, f"{event.id}: no comment"
            for attr, value in want.items():
                assert getattr(got, attr) == value, f"{event.id}: comment.{attr}"
        elif name == "changes":
            assert [(c.field, c.before, c.after) for c in got] == list(want), event.id
        else:
            assert got == want, f"{event.id}: {name}"


@pytest.mark.parametrize(("name", "site", "expected"), CASES, ids=[c[0] for c in CASES])
def test_payload_gives_the_expected_events(
    name: str, site: str, expected: list[dict[str, Any]]
) -> None:
    found = parse(name, SITES[site], delivery_id="inv-77")
    assert len(found) == len(expected), [e.id for e in found]
    for event, want in zip(found, expected, strict=True):
        assert event.system == "zendesk" and event.instance == "acme"
        _check(event, want)


def test_every_payload_file_is_in_the_table_or_skipped() -> None:
    tabled = {c[0] for c in CASES} | {"user-created.json", "event-organization-created.json",
                                       "eventbridge-user-created.json", "rest-ticket.json"}
    assert {p.name for p in PAYLOADS.glob("*.json")} == tabled


@pytest.mark.parametrize(
    "name", ["user-created.json", "event-organization-created.json", "eventbridge-user-created.json"]
)
def test_events_about_other_objects_are_skipped_with_a_reason(name: str) -> None:
    with pytest.raises(DeliverySkipped) as caught:
        parse(name, SITE)
    assert caught.value.kind == "unsupported_event"
    assert "not about a ticket" in caught.value.reason


def test_two_events_of_one_update_share_the_version_id() -> None:
    first = parse("event-priority-changed.json", SITE)
    second = parse("event-tags-changed.json", SITE)
    assert first[0].id == second[0].id
    assert first[0].ticket == second[0].ticket


def test_a_webhook_and_the_export_give_one_version_the_same_id() -> None:
    exported = events_from_export(load("rest-ticket.json")["ticket"], SITE, "acme")
    # The recommended body's time is to the minute: the ticket read names the version.
    fake = FakeZendesk(ticket_from_api(load("rest-ticket.json")["ticket"], SITE, "acme"))
    trigger = parse("trigger-recommended.json", SITE, fetch=fake.fetch)
    assert fake.asked == ["5150"]
    assert [e.id for e in exported] == [v("5150", "2026-03-06T10:15:30Z")] == [trigger[0].id]
    assert exported[0].kind is EventKind.UPDATED and exported[0].actor_role is ActorRole.SYSTEM


def test_the_export_gives_created_deleted_and_nothing_older_than_since() -> None:
    ticket = load("rest-ticket.json")["ticket"]
    created = {**ticket, "updated_at": ticket["created_at"]}
    assert events_from_export(created, SITE, "acme")[0].kind is EventKind.CREATED
    deleted = {**ticket, "status": "deleted"}
    [gone] = events_from_export(deleted, SITE, "acme")
    assert gone.id == deleted_event_id("acme", "5150") and gone.kind is EventKind.RESOLVED
    assert events_from_export(ticket, SITE, "acme", since=at("2026-03-06T11:00:00Z")) == []
    with pytest.raises(PayloadError, match="no created_at or updated_at"):
        events_from_export({"id": 1, "status": "open"}, SITE, "acme")


def test_rest_ticket_reads_every_mapped_field() -> None:
    ticket = ticket_from_api(load("rest-ticket.json")["ticket"], MAPPED, "acme")
    assert ticket.id == "5150" and ticket.instance == "acme"
    assert (ticket.priority, ticket.severity, ticket.users_affected) == ("high", "critical", 250)
    assert ticket.group == "tier-2" and ticket.assignee == DANA and ticket.requester == CHRIS
    assert ticket.organization == "361000007"
    assert ticket.tags == ("eu", "export", "escalier_tier_2")
    assert ticket.fields == {"business_impact": "EU payroll blocked", "root_cause": None,
                             "type": "incident"}
    assert ticket.updated_at == at("2026-03-06T10:15:30Z")
    # Without a severity field, the priority says the severity.
    assert ticket_from_api(load("rest-ticket.json")["ticket"], SITE, "acme").severity == "high"


@pytest.mark.parametrize(
    ("status", "category"),
    [("new", StatusCategory.NEW), ("OPEN", StatusCategory.OPEN), ("Pending", StatusCategory.PENDING),
     ("hold", StatusCategory.ON_HOLD), ("On-hold", StatusCategory.ON_HOLD),
     ("SOLVED", StatusCategory.SOLVED), ("closed", StatusCategory.CLOSED),
     ("something custom", StatusCategory.OPEN)],
)
def test_status_category(status: str, category: StatusCategory) -> None:
    ticket = ticket_from_api({"id": 1, "status": status, "created_at": "2026-03-06T09:00:00Z"},
                             SITE, "acme")
    assert ticket.status_category is category


@pytest.mark.parametrize(
    ("value", "count"),
    [(250, 250), ("1200", 1200), ("12.7", 12), (-3, None), ("many", None), (None, None),
     (True, None), ({"value": "40"}, 40)],
)
def test_users_affected(value: Any, count: int | None) -> None:
    ticket = ticket_from_api(
        {"id": 1, "status": "open", "created_at": "2026-03-06T09:00:00Z",
         "custom_fields": [{"id": 360010002, "value": value}]}, MAPPED, "acme")
    assert ticket.users_affected == count


def test_event_webhooks_read_the_ticket_once_when_custom_fields_are_mapped() -> None:
    fetched = ticket_from_api(load("rest-ticket.json")["ticket"], MAPPED, "acme")
    fake = FakeZendesk(fetched)
    found = parse("event-comment-added-public-agent.json", MAPPED, fetch=fake.fetch)
    assert fake.asked == ["5150"]
    assert all(e.ticket == fetched for e in found)
    # The ids still come from the delivery's own version.
    assert found[0].id == v("5150", "2026-03-06T10:30:00Z")
    # Unmapped sites need no read: detail carries everything else.
    fake.asked.clear()
    parse("event-comment-added-public-agent.json", SITE, fetch=fake.fetch)
    assert fake.asked == []


def test_a_thin_trigger_body_reads_the_ticket_and_takes_its_version() -> None:
    ticket = ticket_from_api(load("rest-ticket.json")["ticket"], SITE, "acme")
    fake = FakeZendesk(ticket.model_copy(update={"id": "5152"}))
    [event] = parse("trigger-minimal.json", SITE, fetch=fake.fetch, delivery_id="inv-1")
    assert fake.asked == ["5152"]
    assert event.id == v("5152", "2026-03-06T10:15:30Z") and event.ticket is not None
    # A body with human dates has no exact version: with a connection it reads one.
    fake = FakeZendesk(ticket.model_copy(update={"id": "5153"}))
    [event] = parse("trigger-hold-human-dates.json", SITE, fetch=fake.fetch)
    assert event.id == v("5153", "2026-03-06T10:15:30Z")
    # A complete body with a time to the second needs no read...
    fake.asked.clear()
    parse("trigger-nested-ticket.json", SITE, fetch=fake.fetch)
    assert fake.asked == []
    # ...unless it lacks a mapped custom field (root_cause is not in it).
    fake = FakeZendesk(ticket)
    [event, _] = parse("trigger-recommended.json", MAPPED, fetch=fake.fetch)
    assert fake.asked == ["5150"] and event.ticket == ticket


def test_the_docs_ship_the_sandboxs_recommended_trigger_body() -> None:
    from escalier.connectors.zendesk.sandbox import RECOMMENDED_TRIGGER_BODY

    docs = (Path(__file__).resolve().parents[3] / "docs" / "zendesk.md").read_text()
    assert RECOMMENDED_TRIGGER_BODY.strip() in docs


def test_a_trigger_without_a_delivery_id_is_keyed_by_its_body() -> None:
    body = (PAYLOADS / "trigger-minimal.json").read_bytes()
    first = parse_delivery(raw(body), SITE)[0].id
    assert first == parse_delivery(raw(body), SITE)[0].id
    assert first != parse_delivery(raw(body.replace(b"5152", b"5154")), SITE)[0].id
    assert first.startswith("zendesk:acme:5152:trigger:")


def test_without_a_site_group_ids_stay_ids_and_nobody_is_ours() -> None:
    [event, comment] = parse("ticket-comment-by-escalier.json", None)
    assert event.ticket is not None and event.ticket.group == "360000003"
    # The comment's "[escalier]" marker still says it is ours.
    assert comment.actor_role is ActorRole.ESCALIER
    [status] = parse("event-status-solved.json", None)
    assert status.actor_role is ActorRole.AGENT


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"", "not JSON"),
        (b"{", "not JSON"),
        (b"[1, 2]", "not an object"),
        (b'{"a": NaN}', "not JSON"),
        (b"[" * 5000 + b"]" * 5000, "nests too deeply"),
        (b'{"hello": "world"}', "naming a ticket"),
        (b'{"type": "zen:event-type:ticket.created", "id": "x"}', "no detail object"),
        (b'{"type": "zen:event-type:ticket.created", "detail": {"status": "OPEN"}}', "names no ticket"),
        (b'{"type": "ticket.created", "detail": {}}', "not a Zendesk event type"),
        # Zendesk's "Test webhook" sends the body with its placeholders as written.
        (b'{"ticket_id": "{{ticket.id}}", "status": "{{ticket.status}}"}', "placeholder left as written"),
        (b'{"id": "6f1d2c3b-0021", "version": "0"}', "not a Zendesk ticket number"),
        (b'{"detail-type": "Support Ticket: Status Changed", "detail": {"ticket_event": {}}}',
         "carries no detail.ticket_event.ticket"),
    ],
)
def test_garbage_is_a_payload_error_with_one_sentence(body: bytes, reason: str) -> None:
    with pytest.raises(PayloadError, match=reason) as caught:
        parse_delivery(raw(body), SITE)
    assert "\n" not in str(caught.value)


# --- fuzz --------------------------------------------------------------------------------------

json_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=20,
)
KEYS = ["type", "detail", "event", "id", "subject", "time", "ticket_id", "ticket", "status",
        "priority", "tags", "group_id", "assignee_id", "updated_at", "created_at", "comment",
        "current_user_id", "custom_fields", "actor_id", "comment_id", "detail-type", "ticket_event"]
zendesk_shaped = st.dictionaries(
    st.sampled_from(KEYS),
    json_values | st.sampled_from(["zen:event-type:ticket.comment_added", "zen:event-type:user.created",
                                   "Support Ticket: Comment Created",
                                   "2026-03-06T10:00:00Z", "OPEN", "5150", "March 6, 2026 10:00"]),
    max_size=10,
)
PAYLOAD_NAMES = sorted(p.name for p in PAYLOADS.glob("*.json") if p.name != "rest-ticket.json")


def _parse_or_refuse(body: bytes, site: ZendeskAccount | None) -> None:
    try:
        events = parse_delivery(raw(body), site)
    except (PayloadError, DeliverySkipped):
        return
    assert all(e.system == "zendesk" for e in events)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(value=json_values | zendesk_shaped, mapped=st.booleans())
def test_random_json_is_parsed_or_refused_never_a_crash(value: Any, mapped: bool) -> None:
    _parse_or_refuse(json.dumps(value).encode(), MAPPED if mapped else SITE)


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [prefix] if prefix else []
    if isinstance(value, dict):
        for key, inner in value.items():
            found += _paths(inner, (*prefix, key))
    elif isinstance(value, list):
        for index, inner in enumerate(value):
            found += _paths(inner, (*prefix, index))
    return found


def _swap(value: Any, path: tuple[Any, ...], new: Any) -> Any:
    if not path:
        return new
    copy = dict(value) if isinstance(value, dict) else list(value)
    copy[path[0]] = _swap(copy[path[0]], path[1:], new)
    return copy


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), name=st.sampled_from(PAYLOAD_NAMES))
def test_real_shapes_with_one_value_swapped_never_crash(data: st.DataObject, name: str) -> None:
    payload = load(name)
    path = data.draw(st.sampled_from(_paths(payload)))
    swapped = _swap(payload, path, data.draw(json_values))
    _parse_or_refuse(json.dumps(swapped).encode(), MAPPED)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_rest_tickets_with_one_value_swapped_never_crash(data: st.DataObject) -> None:
    ticket = load("rest-ticket.json")["ticket"]
    path = data.draw(st.sampled_from(_paths(ticket)))
    swapped = _swap(ticket, path, data.draw(json_values))
    try:
        found = events_from_export(swapped, MAPPED, "acme")
    except PayloadError as exc:
        assert str(exc)  # refused with a reason
        return
    assert all(event.system == "zendesk" and event.id.startswith("zendesk:acme:") for event in found)
