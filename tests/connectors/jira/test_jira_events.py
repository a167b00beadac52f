"""Jira webhooks and REST issues into tickets and events, over tests/payloads/jira/."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from escalier.connectors.jira.config import JiraSite
from escalier.connectors.jira.events import (
    comment_event_id,
    events_from_issue,
    is_complete,
    parse_delivery,
    ticket_from_issue,
)
from escalier.core.connector import DeliverySkipped, RawEvent
from escalier.core.errors import PayloadError
from escalier.core.model import ActorRole, EventKind, StatusCategory, Ticket

PAYLOADS = Path(__file__).resolve().parents[2] / "payloads" / "jira"
RECEIVED = datetime(2026, 3, 7, 8, 0, tzinfo=UTC)

CUSTOMER = "qm:7b1e9c2a-41d3-4c55-9f0e-5b8d2a6c1f00:0a4e7c3b-2f8d-4b21-9c6e-1d2f3a4b5c6d"
DANA = "5f1a2b3c4d5e6f0011223344"
LEE = "5f1a2b3c4d5e6f0011223399"
BOT = "712020:5c2d8e4f-9b1a-4c3d-8e7f-0a1b2c3d4e5f"

CLOUD = JiraSite.model_validate(
    {
        "url": "https://acme.atlassian.net",
        "token": "${JIRA_TOKEN}",
        "deployment": "cloud",
        "components": ["Tier 1", "Tier 2", "Tier 3"],
        "fields": {
            "severity": "customfield_10050",
            "users_affected": "customfield_10051",
            "organization": "customfield_10002",
            "custom": {
                "business_impact": "customfield_10060",
                "steps_to_reproduce": "customfield_10061",
                "escalation_owner": "customfield_10062",
                "environments": "customfield_10063",
            },
        },
        "on_hold_statuses": ["Waiting for vendor", "On hold"],
        "service_desk_projects": ["SUP"],
        "service_account": BOT,
    }
)
DC = JiraSite.model_validate(
    {
        "url": "https://jira.acme.example",
        "token": "${JIRA_TOKEN}",
        "deployment": "datacenter",
        "components": ["Service desk", "Networking", "Platform"],
        "fields": {
            "severity": "customfield_10200",
            "users_affected": "customfield_10201",
            "organization": "customfield_10202",
        },
        "on_hold_statuses": ["Waiting for vendor"],
        "service_desk_projects": ["HELP"],
        "service_account": "escalier-bot",
    }
)
SITES = {"cloud": CLOUD, "dc": DC, "none": None}


def raw(body: bytes | str, instance: str = "acme") -> RawEvent:
    """A stored delivery with ``body``."""
    data = body.encode() if isinstance(body, str) else body
    return RawEvent(source="jira", instance=instance, body=data, headers={}, received_at=RECEIVED)


def load(name: str) -> dict[str, Any]:
    """A payload file as JSON."""
    return json.loads((PAYLOADS / name).read_text())


def parse(name: str, site: JiraSite | None, **kwargs: Any):
    """``parse_delivery`` over a payload file."""
    return parse_delivery(raw((PAYLOADS / name).read_bytes()), site, **kwargs)


class FakeJira:
    """Answers ``fetch`` from tickets it holds, and remembers what it was asked."""

    def __init__(self, *tickets: Ticket, aliases: dict[str, str] | None = None):
        self.tickets = {t.id: t for t in tickets}
        self.aliases = aliases or {}
        self.asked: list[str] = []

    def fetch(self, key_or_id: str) -> Ticket:
        self.asked.append(key_or_id)
        return self.tickets[self.aliases.get(key_or_id, key_or_id)]


def at(text: str) -> datetime:
    return datetime.fromisoformat(text)


# --- the table ---------------------------------------------------------------------------------
# Each case: payload file, site, and the events expected (a subset of each event's attributes;
# "ticket" is True for a snapshot, None for none, or a dict of ticket attributes).

CASES: list[tuple[str, str, list[dict[str, Any]]]] = [
    ("cloud-issue-created.json", "cloud", [dict(
        id="jira:acme:10070:created", kind=EventKind.CREATED, ticket_id="SUP-7", actor=CUSTOMER,
        actor_role=ActorRole.CUSTOMER, occurred_at=at("2026-03-06T10:00:00.120+00:00"),
        ticket=dict(status="Waiting for support", status_category=StatusCategory.NEW,
                    priority="high"),
        changes=(),
    )]),
    ("cloud-issue-updated-assigned-by-escalier.json", "cloud", [dict(
        id="jira:acme:10070:changelog:11002", kind=EventKind.ASSIGNED, actor=BOT,
        actor_role=ActorRole.ESCALIER,
        ticket=dict(assignee=DANA), changes=(("assignee", None, "Dana Agent"),),
    )]),
    ("cloud-issue-updated-status.json", "cloud", [dict(
        id="jira:acme:10070:changelog:11003", kind=EventKind.STATUS_CHANGED, actor=DANA,
        actor_role=ActorRole.AGENT,
        ticket=dict(status="In Progress", status_category=StatusCategory.OPEN),
        changes=(("status", "Waiting for support", "In Progress"),),
    )]),
    ("cloud-issue-updated-pending.json", "cloud", [dict(
        id="jira:acme:10070:changelog:11004", kind=EventKind.STATUS_CHANGED,
        ticket=dict(status="Waiting for customer", status_category=StatusCategory.PENDING),
    )]),
    ("cloud-issue-updated-labels.json", "cloud", [dict(
        id="jira:acme:10070:changelog:11005", kind=EventKind.UPDATED,
        ticket=dict(tags=("checkout", "eu", "vip")),
        changes=(("labels", "checkout eu", "checkout eu vip"),),
    )]),
    ("cloud-issue-updated-priority-severity.json", "cloud", [dict(
        id="jira:acme:10070:changelog:11006", kind=EventKind.UPDATED,
        ticket=dict(priority="urgent", severity="blocker"),
        changes=(("priority", "High", "Highest"), ("customfield_10050", "Critical", "Blocker"),
                 ("customfield_10062", None, "Lee Engineer")),
    )]),
    ("cloud-issue-updated-components.json", "cloud", [dict(
        id="jira:acme:10070:changelog:11007", kind=EventKind.UPDATED, actor=LEE,
        ticket=dict(group="Tier 3", assignee=LEE),
        changes=(("components", "Tier 2", None), ("components", None, "Tier 3"),
                 ("assignee", "Dana Agent", "Lee Engineer")),
    )]),
    ("cloud-issue-updated-resolved.json", "cloud", [dict(
        id="jira:acme:10070:changelog:11008", kind=EventKind.RESOLVED, actor=LEE,
        ticket=dict(status="Resolved", status_category=StatusCategory.SOLVED,
                    solved_at=at("2026-03-06T13:20:00.456+00:00")),
    )]),
    ("cloud-issue-updated-reopened.json", "cloud", [dict(
        id="jira:acme:10070:changelog:11010", kind=EventKind.REOPENED, actor=CUSTOMER,
        actor_role=ActorRole.CUSTOMER,
        ticket=dict(status_category=StatusCategory.NEW, solved_at=None),
    )]),
    ("cloud-issue-updated-empty-changelog.json", "cloud", [dict(
        id="jira:acme:10070:changelog:11009", kind=EventKind.UPDATED, ticket_id="SUP-7",
        ticket=None, changes=(),
    )]),
    ("cloud-comment-created-internal.json", "cloud", [dict(
        id="jira:acme:10070:comment:10301:1772792400250", kind=EventKind.COMMENTED,
        ticket_id="SUP-7", ticket=None,
        actor=DANA, actor_role=ActorRole.AGENT, occurred_at=at("2026-03-06T10:20:00.250+00:00"),
        comment=dict(public=False, author=DANA, author_role=ActorRole.AGENT,
                     body="Payments team says the EU acquirer rotated its certificate. "
                          "Checking with them."),
    )]),
    ("cloud-issue-commented-internal.json", "cloud", [dict(
        id="jira:acme:10070:comment:10301:1772792400250", kind=EventKind.COMMENTED, ticket=True,
        comment=dict(public=False, author=DANA),
    )]),
    ("cloud-comment-created-customer.json", "cloud", [dict(
        id="jira:acme:10070:comment:10302:1772793310000", kind=EventKind.COMMENTED, actor=CUSTOMER,
        actor_role=ActorRole.CUSTOMER, comment=dict(public=True, author_role=ActorRole.CUSTOMER),
    )]),
    ("cloud-comment-updated-customer.json", "cloud", [dict(
        id="jira:acme:10070:comment:10302:1772793465500", kind=EventKind.COMMENTED, actor=CUSTOMER,
        actor_role=ActorRole.CUSTOMER,
        comment=dict(body="Still failing for us, we are losing orders every minute! "
                          "Card: Visa, issued in DE."),
    )]),
    ("cloud-issue-deleted.json", "cloud", [dict(
        id="jira:acme:10070:deleted", kind=EventKind.RESOLVED, reason="deleted in Jira", actor=DANA,
        ticket=dict(status_category=StatusCategory.CLOSED, status="In Progress"),
    )]),
    ("issue-updated-assigned.json", "cloud", [dict(
        id="jira:acme:10040:changelog:10542", kind=EventKind.ASSIGNED, ticket_id="SUP-41",
        ticket=None,
        changes=(("assignee", None, "Lee Engineer"),),
    )]),
    ("dc-issue-created.json", "dc", [dict(
        id="jira:acme:20013:created", kind=EventKind.CREATED, ticket_id="HELP-13", actor="c.jones",
        actor_role=ActorRole.AGENT,
        ticket=dict(requester="c.jones", status_category=StatusCategory.NEW),
    )]),
    ("dc-issue-updated-status.json", "dc", [dict(
        id="jira:acme:20013:changelog:30101", kind=EventKind.STATUS_CHANGED, actor="dana",
        changes=(("assignee", None, "Dana Agent"),
                 ("status", "Waiting for support", "In Progress")),
        ticket=dict(assignee="dana"),
    )]),
    ("dc-issue-updated-custom-field.json", "dc", [dict(
        id="jira:acme:20013:changelog:30102", kind=EventKind.UPDATED,
        changes=(("Users affected", "12", "40"),), ticket=dict(users_affected=40),
    )]),
    ("dc-issue-updated-no-changelog.json", "dc", [dict(
        id="jira:acme:20013:updated:1772799000000", kind=EventKind.UPDATED, changes=(), ticket=True,
    )]),
    ("dc-issue-updated-resolved-with-comment.json", "dc", [
        dict(id="jira:acme:20013:changelog:30103", kind=EventKind.RESOLVED, actor="dana",
             ticket=dict(status_category=StatusCategory.SOLVED)),
        dict(id="jira:acme:20013:comment:40003:1772802000000", kind=EventKind.COMMENTED,
             actor="dana", comment=dict(public=True, body="MTU restored to 1400; "
                                        "the tunnel has been stable for an hour.")),
    ]),
    ("dc-comment-created-by-reporter.json", "dc", [dict(
        id="jira:acme:20013:comment:40001:1772795130125", kind=EventKind.COMMENTED,
        ticket_id="20013", ticket=None,
        actor="c.jones", actor_role=ActorRole.AGENT, comment=dict(author="c.jones"),
    )]),
    ("dc-issue-commented-by-reporter.json", "dc", [dict(
        id="jira:acme:20013:comment:40001:1772795130125", kind=EventKind.COMMENTED,
        ticket_id="HELP-13", actor="c.jones", actor_role=ActorRole.CUSTOMER,
        comment=dict(author_role=ActorRole.CUSTOMER),
    )]),
    ("dc-comment-updated-internal.json", "dc", [dict(
        id="jira:acme:20013:comment:40002:1772795640000", kind=EventKind.COMMENTED, actor="dana",
        comment=dict(public=False),
    )]),
    ("dc-comment-created-escalier-key.json", "dc", [dict(
        id="jira:acme:20013:comment:40004:1772796600000", actor="svc-automation",
        actor_role=ActorRole.ESCALIER,
        comment=dict(author_role=ActorRole.ESCALIER),
    )]),
    ("dc-issue-updated-by-escalier.json", "dc", [dict(
        id="jira:acme:20013:changelog:30104", kind=EventKind.UPDATED, actor="escalier-bot",
        actor_role=ActorRole.ESCALIER, ticket=dict(tags=("escalated-t2", "vpn")),
    )]),
    ("server-comment-by-escalier.json", "dc", [dict(
        id="jira:acme:10013:comment:10090:1772812200000", actor="ops-bot",
        actor_role=ActorRole.ESCALIER,
    )]),
    # Jira Automation's "Send web request" with the issue data: the issue as it now is.
    ("automation-issue-data.json", "cloud", [dict(
        id="jira:acme:10070:updated:1772793733500", kind=EventKind.UPDATED, ticket_id="SUP-7",
        occurred_at=at("2026-03-06T10:42:13.500+00:00"), changes=(),
        ticket=dict(priority="high", severity="critical", users_affected=1200, group="Tier 2",
                    assignee=DANA, tags=("checkout", "eu"), status_category=StatusCategory.NEW),
    )]),
    # Service Management's automation webhook with a comment: the comment, under the id its
    # comment_created webhook gives.
    ("jsm-automation-comment.json", "cloud", [dict(
        id=comment_event_id("acme", "10070", load("jsm-automation-comment.json")["comment"]),
        kind=EventKind.COMMENTED, actor=CUSTOMER, actor_role=ActorRole.CUSTOMER,
        comment=dict(body="Still failing, and now for the US shop too.", public=True,
                     author_role=ActorRole.CUSTOMER),
    )]),
    ("server-comment-created.json", "none", [dict(
        id="jira:acme:10013:comment:10082:1772812200000", actor="dana", ticket_id="10013",
        comment=dict(body="Customer confirmed the workaround.", public=True),
    )]),
]


@pytest.mark.parametrize(("name", "site", "expected"), CASES, ids=[c[0] for c in CASES])
def test_payload_gives_the_expected_events(
    name: str, site: str, expected: list[dict[str, Any]]
) -> None:
    events = parse(name, SITES[site])
    assert len(events) == len(expected)
    for event, want in zip(events, expected, strict=True):
        assert event.system == "jira" and event.instance == "acme"
        for attr, value in want.items():
            if attr == "ticket":
                if value is None:
                    assert event.ticket is None
                else:
                    assert event.ticket is not None and event.ticket.id == event.ticket_id
                    for t_attr, t_value in (value if isinstance(value, dict) else {}).items():
                        assert getattr(event.ticket, t_attr) == t_value, t_attr
            elif attr == "changes":
                assert tuple((c.field, c.before, c.after) for c in event.changes) == value
            elif attr == "comment":
                assert event.comment is not None
                for c_attr, c_value in value.items():
                    assert getattr(event.comment, c_attr) == c_value, c_attr
            else:
                assert getattr(event, attr) == value, attr


# --- snapshots ---------------------------------------------------------------------------------


def test_cloud_snapshot_reads_every_mapped_field() -> None:
    ticket = parse("cloud-issue-created.json", CLOUD)[0].ticket
    assert ticket is not None
    assert ticket.model_dump(exclude={"fields", "description"}) == {
        "system": "jira", "id": "SUP-7", "instance": "acme",
        "subject": "Checkout fails for EU customers",
        "status": "Waiting for support", "status_category": StatusCategory.NEW, "priority": "high",
        "severity": "critical", "users_affected": 250, "tags": ("checkout", "eu"), "assignee": None,
        "group": "Tier 2", "requester": CUSTOMER, "organization": "Globex",
        "created_at": at("2026-03-06T10:00:00.120+00:00"),
        "updated_at": at("2026-03-06T10:00:00.120+00:00"),
        "first_response_at": None, "solved_at": None,
    }
    assert ticket.fields == {
        "business_impact": "Customers in the EU cannot pay; about *40%* of orders fail.",
        "steps_to_reproduce": "# Add an item to the cart\n# Pay with a EU card\n# See error 502",
        "escalation_owner": None,
        "environments": ["production", "eu-west"],
        "components": ["Payments", "Tier 2"],
        "issuetype": "Problem",
        "project": "SUP",
        "request_type": "Report a bug",
    }
    assert ticket.description.startswith("Since this morning the checkout answers *502*")


def test_data_center_snapshot_uses_usernames_and_its_own_offsets() -> None:
    ticket = parse("dc-issue-created.json", DC)[0].ticket
    assert ticket is not None
    assert (ticket.requester, ticket.assignee, ticket.group) == ("c.jones", None, "Networking")
    assert (ticket.priority, ticket.severity, ticket.users_affected) == ("normal", "high", 12)
    assert ticket.organization == "Initech"
    assert ticket.fields["request_type"] == "Technical support"
    assert ticket.created_at == datetime(2026, 3, 6, 11, 0, tzinfo=timezone(timedelta(hours=1)))
    assert ticket.created_at.utcoffset() == timedelta(hours=1)


def test_rest_v3_documents_become_plain_text() -> None:
    ticket = ticket_from_issue(load("rest-cloud-issue-v3.json"), CLOUD, "acme")
    assert ticket.description == (
        "Since this morning the checkout answers 502 for every card issued in the EU.\n"
        "POST /checkout -> 502"
    )
    impact = "Customers in the EU cannot pay; about 40% of orders fail."
    assert ticket.fields["business_impact"] == impact
    assert ticket.fields["steps_to_reproduce"] == (
        "Add an item to the cart\nPay with a EU card\nSee error 502"
    )
    assert ticket.fields["escalation_owner"] == LEE
    assert ticket.status_category is StatusCategory.SOLVED
    assert ticket.solved_at == at("2026-03-06T13:20:00.456+00:00")


def issue(**fields: Any) -> dict[str, Any]:
    """A small complete issue with ``fields`` over the defaults."""
    base = {"created": "2026-03-06T10:00:00.000+0000", "summary": "s",
            "status": {"name": "Open", "statusCategory": {"key": "new"}}}
    return {"id": "1", "key": "K-1", "fields": base | fields}


def status(name: str, category: str | None = None) -> dict[str, Any]:
    """A status, with its category key if given."""
    return {"name": name} | ({"statusCategory": {"key": category}} if category else {})


SOLVED, PENDING, ON_HOLD = StatusCategory.SOLVED, StatusCategory.PENDING, StatusCategory.ON_HOLD


@pytest.mark.parametrize(
    ("state", "resolution", "site", "category"),
    [
        (status("To Do", "new"), None, CLOUD, StatusCategory.NEW),
        (status("In Progress", "indeterminate"), None, CLOUD, StatusCategory.OPEN),
        (status("Done", "done"), None, CLOUD, SOLVED),
        (status("In Review", "indeterminate"), {"name": "Fixed"}, CLOUD, SOLVED),
        (status("waiting FOR customer", "indeterminate"), None, CLOUD, PENDING),
        (status("Waiting for vendor", "indeterminate"), None, CLOUD, ON_HOLD),
        # the default lists, for a site that says none of its own
        (status("Blocked", "indeterminate"), None, None, ON_HOLD),
        (status("Pending", "indeterminate"), None, None, PENDING),
        (status("Closed"), None, CLOUD, SOLVED),
        (status("Triage"), None, CLOUD, StatusCategory.OPEN),
        (status("Odd", "undefined"), None, CLOUD, StatusCategory.OPEN),
    ],
)
def test_status_category(
    state: dict, resolution: Any, site: JiraSite | None, category: StatusCategory
) -> None:
    ticket = ticket_from_issue(issue(status=state, resolution=resolution), site, "i")
    assert ticket.status_category is category


@pytest.mark.parametrize(
    ("priority", "severity_field", "priority_out", "severity_out"),
    [
        ("Highest", None, "urgent", "critical"),
        ("medium", None, "normal", "medium"),
        ("Blocker", None, "blocker", None),
        ("High", {"value": "Sev 1"}, "high", "sev 1"),
        ("High", "Minor", "high", "minor"),
        ("High", [{"value": "Major"}, {"value": "Minor"}], "high", "major"),
        ("Low", [], "low", "low"),
    ],
)
def test_priority_and_severity(
    priority: str, severity_field: Any, priority_out: str, severity_out: Any
) -> None:
    payload = issue(priority={"name": priority}, customfield_10050=severity_field)
    ticket = ticket_from_issue(payload, CLOUD, "i")
    assert (ticket.priority, ticket.severity) == (priority_out, severity_out)


@pytest.mark.parametrize(
    ("value", "count"),
    [(250.0, 250), (7, 7), ("17", 17), (" 3.0 ", 3), ("many", None), (-3, None), (True, None),
     (None, None), ({"value": 4}, None)],
)
def test_users_affected(value: Any, count: int | None) -> None:
    assert ticket_from_issue(issue(customfield_10051=value), CLOUD, "i").users_affected == count


@pytest.mark.parametrize(
    ("value", "organization"),
    [([{"id": 3, "name": "Globex"}, {"id": 4, "name": "Initech"}], "Globex"),
     ({"value": "Umbrella"}, "Umbrella"), ("Hooli", "Hooli"), ([], None), (None, None)],
)
def test_organization(value: Any, organization: str | None) -> None:
    ticket = ticket_from_issue(issue(customfield_10002=value), CLOUD, "i")
    assert ticket.organization == organization


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2019-06-04T00:15:17.234+0000", datetime(2019, 6, 4, 0, 15, 17, 234000, tzinfo=UTC)),
        ("2019-06-04T00:15:17+00:00", datetime(2019, 6, 4, 0, 15, 17, tzinfo=UTC)),
        ("2019-06-04T00:15:17.234Z", datetime(2019, 6, 4, 0, 15, 17, 234000, tzinfo=UTC)),
        ("2019-02-15T19:11:18.321-0800", datetime(2019, 2, 16, 3, 11, 18, 321000, tzinfo=UTC)),
    ],
)
def test_dates_in_every_spelling(text: str, expected: datetime) -> None:
    assert ticket_from_issue(issue(created=text), CLOUD, "i").created_at == expected


def test_partial_issue_is_not_complete_and_falls_back_to_updated() -> None:
    partial = {"id": "5", "key": "K-5", "fields": {"updated": "2026-03-06T10:00:00.000+0000"}}
    assert not is_complete(partial)
    assert ticket_from_issue(partial, CLOUD, "i").created_at == at("2026-03-06T10:00:00+00:00")
    with pytest.raises(PayloadError, match="no created or updated date"):
        ticket_from_issue({"key": "K-6", "fields": {}}, CLOUD, "i")


@pytest.mark.parametrize(("site", "expected"), [(CLOUD, "5c5f8806"), (DC, "admin"), (None, "5c5f8806")])
def test_users_with_both_ids_are_named_as_the_deployment_names_them(
    site: JiraSite | None, expected: str
) -> None:
    # Cloud payloads from before the accountId migration carry name and key as well.
    both = {"name": "admin", "key": "admin.key", "accountId": "5c5f8806", "displayName": "Admin"}
    ticket = ticket_from_issue(issue(assignee=both, reporter={"key": "only.key"}), site, "i")
    assert (ticket.assignee, ticket.requester) == (expected, "only.key")


def test_without_a_site_the_deployment_is_guessed_from_the_users() -> None:
    dc_ticket = parse("dc-issue-created.json", None)[0].ticket
    cloud_ticket = parse("cloud-issue-created.json", None)[0].ticket
    assert dc_ticket is not None and cloud_ticket is not None
    assert dc_ticket.requester == "c.jones"
    assert cloud_ticket.requester == CUSTOMER
    # defaults: no severity field, so the priority names the severity
    assert (cloud_ticket.priority, cloud_ticket.severity) == ("high", "high")


# --- deliveries --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("first", "second"),
    [("cloud-comment-created-internal.json", "cloud-issue-commented-internal.json"),
     ("dc-comment-created-by-reporter.json", "dc-issue-commented-by-reporter.json")],
)
def test_both_deliveries_of_one_comment_share_an_id(first: str, second: str) -> None:
    site = CLOUD if first.startswith("cloud") else DC
    [one], [two] = parse(first, site), parse(second, site)
    assert one.id == two.id and one.comment is not None and one.comment.body == two.comment.body


def test_an_edited_comment_is_a_new_event() -> None:
    [created] = parse("cloud-comment-created-customer.json", CLOUD)
    [edited] = parse("cloud-comment-updated-customer.json", CLOUD)
    assert created.id != edited.id
    assert created.id.rsplit(":", 1)[0] == edited.id.rsplit(":", 1)[0]


def test_server_comment_fetches_the_issue_by_the_id_in_its_link() -> None:
    help13 = ticket_from_issue(load("dc-issue-created.json")["issue"], DC, "acme")
    jira = FakeJira(help13, aliases={"20013": "HELP-13"})
    [event] = parse("dc-comment-created-by-reporter.json", DC, fetch=jira.fetch)
    assert jira.asked == ["20013"]
    assert (event.ticket_id, event.ticket) == ("HELP-13", help13)
    # with the ticket known, the reporter of a Service Management request is the customer
    assert event.actor_role is ActorRole.CUSTOMER


def test_cloud_comment_fetches_by_key_and_complete_snapshots_never_fetch() -> None:
    sup7 = ticket_from_issue(load("cloud-issue-created.json")["issue"], CLOUD, "acme")
    jira = FakeJira(sup7)
    [event] = parse("cloud-comment-created-internal.json", CLOUD, fetch=jira.fetch)
    assert jira.asked == ["SUP-7"] and event.ticket == sup7
    complete = ["cloud-issue-commented-internal.json", "cloud-issue-deleted.json",
                "dc-issue-created.json"]
    for name in complete:
        parse(name, None, fetch=jira.fetch)
    assert jira.asked == ["SUP-7"]


def test_a_delivery_with_a_changelog_and_a_comment_fetches_once() -> None:
    body = load("cloud-issue-commented-internal.json")
    body["issue"] = load("cloud-comment-created-internal.json")["issue"]
    labels = {"field": "labels", "fieldId": "labels", "toString": "x"}
    body["changelog"] = {"id": "11099", "items": [labels]}
    jira = FakeJira(ticket_from_issue(load("cloud-issue-created.json")["issue"], CLOUD, "acme"))
    events = parse_delivery(raw(json.dumps(body)), CLOUD, fetch=jira.fetch)
    assert [e.kind for e in events] == [EventKind.UPDATED, EventKind.COMMENTED]
    assert jira.asked == ["SUP-7"]


def test_occurred_at_falls_back_to_the_change_then_the_receipt() -> None:
    body = load("cloud-comment-created-internal.json")
    del body["timestamp"]
    [event] = parse_delivery(raw(json.dumps(body)), CLOUD)
    assert event.occurred_at == at("2026-03-06T10:20:00.250+00:00")
    body = load("dc-issue-updated-no-changelog.json")
    del body["timestamp"]
    del body["issue"]["fields"]["updated"]
    [event] = parse_delivery(raw(json.dumps(body)), DC)
    assert event.occurred_at == RECEIVED
    assert event.id == f"jira:acme:20013:updated:{int(RECEIVED.timestamp() * 1000)}"


@pytest.mark.parametrize(
    "name",
    ["cloud-worklog-updated.json", "cloud-sprint-started.json", "worklog-created.json",
     "dc-issue-updated-comment-deleted.json"],
)
def test_unsupported_events_are_skipped_with_a_reason(name: str) -> None:
    with pytest.raises(DeliverySkipped) as caught:
        parse(name, None)
    assert caught.value.kind == "unsupported_event"
    assert "escalations" in caught.value.reason


@pytest.mark.parametrize(
    "event", ["comment_deleted", "project_created", "user_updated", "jira:version_released"]
)
def test_other_webhook_events_are_skipped(event: str) -> None:
    body = load("cloud-comment-created-customer.json") | {"webhookEvent": event}
    with pytest.raises(DeliverySkipped, match=event):
        parse_delivery(raw(json.dumps(body)), CLOUD)


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"not json", "not JSON"),
        (b"\xff\xfe\x00garbage", "not JSON"),
        (b'{"webhookEvent": "jira:issue_updated", "timestamp": NaN}', "not JSON"),
        (b"[" * 100_000 + b"]" * 100_000, "nests too deeply"),
        (b'["jira:issue_updated"]', "not an object"),
        (b'{"timestamp": 1772791200000}', "no webhookEvent"),
        (b'{"timestamp": 1772791200000, "issue": {"key": "SUP-7"}}', "no issue with its fields"),
        (b'{"key": "SUP-7", "fields": []}', "neither a Jira webhook nor an automation rule"),
        (b'{"webhookEvent": 7}', "no webhookEvent"),
        (b'{"webhookEvent": "jira:issue_updated", "timestamp": 1}',
         "neither an issue nor a comment"),
        (b'{"webhookEvent": "jira:issue_created", "comment": {"id": "1"}}', "carries no issue"),
        (b'{"webhookEvent": "comment_created", "issue": {"id": "1", "key": "K-1"}}',
         "carries no comment"),
        (b'{"webhookEvent": "comment_created", '
         b'"comment": {"id": "9", "created": "2026-03-06T10:00:00Z"}}', "names no issue"),
        (b'{"webhookEvent": "comment_created", '
         b'"comment": {"self": "https://j/rest/api/2/issue/10/comment/9"}}', "no id"),
        (b'{"webhookEvent": "comment_updated", '
         b'"comment": {"id": "9", "self": "https://j/rest/api/2/issue/10/comment/9"}}',
         "no created or updated time"),
        (b'{"webhookEvent": "jira:issue_updated", "issue": {"fields": {}}}', "names no issue"),
    ],
)
def test_garbage_is_a_payload_error_with_one_sentence(body: bytes, reason: str) -> None:
    with pytest.raises(PayloadError, match=reason) as caught:
        parse_delivery(raw(body), None)
    assert "\n" not in str(caught.value) and len(str(caught.value)) < 200


def test_own_marker_in_a_cloud_comment_is_escalier() -> None:
    body = load("cloud-comment-created-internal.json")
    body["comment"]["body"] = "[escalier] Moved to tier 3 (Payments engineering)."
    [event] = parse_delivery(raw(json.dumps(body)), CLOUD)
    assert event.actor_role is ActorRole.ESCALIER and event.comment is not None
    assert event.comment.author_role is ActorRole.ESCALIER


def test_comment_visibility_and_service_desk_property() -> None:
    body = load("cloud-comment-created-customer.json")
    body["comment"]["visibility"] = {"type": "role", "value": "Developers"}
    assert parse_delivery(raw(json.dumps(body)), CLOUD)[0].comment.public is False
    body = load("cloud-comment-created-customer.json")
    body["comment"]["properties"] = [{"key": "sd.public.comment", "value": '{"internal": true}'}]
    assert parse_delivery(raw(json.dumps(body)), CLOUD)[0].comment.public is False
    body["comment"]["properties"] = [{"key": "sd.public.comment", "value": {"internal": False}}]
    assert parse_delivery(raw(json.dumps(body)), CLOUD)[0].comment.public is True


def test_comment_event_id_is_the_epoch_milliseconds_of_the_last_edit() -> None:
    comment = {"id": "10019", "created": "2019-02-15T19:11:18.321-0800",
               "updated": "2019-02-15T19:12:08.432-0800"}
    assert comment_event_id("x", "10040", comment) == "jira:x:10040:comment:10019:1550286728432"
    first_second = {"id": 5, "created": "1970-01-01T00:00:01Z"}
    assert comment_event_id("x", "10040", first_second) == "jira:x:10040:comment:5:1000"


# --- reconciliation ----------------------------------------------------------------------------

CLOUD_WEBHOOKS = [
    "cloud-issue-created.json", "cloud-issue-updated-assigned-by-escalier.json",
    "cloud-issue-updated-status.json", "cloud-issue-updated-pending.json",
    "cloud-issue-updated-priority-severity.json",
    "cloud-issue-updated-components.json", "cloud-issue-updated-resolved.json",
    "cloud-comment-created-internal.json", "cloud-comment-updated-customer.json",
]
DC_WEBHOOKS = [
    "dc-issue-created.json", "dc-issue-updated-status.json", "dc-issue-updated-custom-field.json",
    "dc-issue-updated-resolved-with-comment.json", "dc-comment-created-by-reporter.json",
    "dc-comment-updated-internal.json",
]


@pytest.mark.parametrize(
    ("rest", "webhooks", "site"),
    [("rest-cloud-issue-v3.json", CLOUD_WEBHOOKS, CLOUD),
     ("rest-dc-issue-v2.json", DC_WEBHOOKS, DC)],
)
def test_a_search_finds_the_webhooks_changes_under_the_same_ids(
    rest: str, webhooks: list[str], site: JiraSite
) -> None:
    # The worker fetches what a comment event's partial issue does not say, as it would live.
    created = ticket_from_issue(load(webhooks[0])["issue"], site, "acme")
    jira = FakeJira(created, aliases={"20013": "HELP-13"})
    from_webhooks = {e.id: e for name in webhooks for e in parse(name, site, fetch=jira.fetch)}
    found = events_from_issue(load(rest), site, "acme", since=datetime(2026, 3, 1, tzinfo=UTC))
    by_id = {e.id: e for e in found}
    assert set(from_webhooks) <= set(by_id)
    for event_id, hooked in from_webhooks.items():
        searched = by_id[event_id]
        for attr in ("kind", "actor", "actor_role", "changes"):
            assert getattr(searched, attr) == getattr(hooked, attr), (event_id, attr)
        if hooked.comment is not None:
            assert searched.comment is not None and searched.comment.public == hooked.comment.public
    assert all(e.ticket is not None and e.ticket.id == e.ticket_id for e in found)
    assert [(e.occurred_at, e.id) for e in found] == sorted((e.occurred_at, e.id) for e in found)


def test_a_search_keeps_only_what_changed_since() -> None:
    since = at("2026-03-06T10:50:00+00:00")
    found = events_from_issue(load("rest-cloud-issue-v3.json"), CLOUD, "acme", since=since)
    assert [e.id for e in found] == [
        "jira:acme:10070:changelog:11006",
        "jira:acme:10070:changelog:11007",
        "jira:acme:10070:comment:10303:1772803140000",
        "jira:acme:10070:changelog:11008",
    ]
    mention = found[2].comment
    assert mention is not None
    assert mention.body == "@Carla Customer the acquirer fixed its certificate; please retry."
    later = datetime(2027, 1, 1, tzinfo=UTC)
    assert events_from_issue(load("rest-cloud-issue-v3.json"), CLOUD, "acme", since=later) == []


def test_a_search_result_without_a_date_is_a_payload_error() -> None:
    with pytest.raises(PayloadError):
        undated = {"key": "K-1", "fields": {"status": {"name": "Open"}}}
        events_from_issue(undated, CLOUD, "i", since=RECEIVED)
    with pytest.raises(PayloadError):
        events_from_issue([], CLOUD, "i", since=RECEIVED)  # type: ignore[arg-type]


# --- fuzz --------------------------------------------------------------------------------------

FUZZ = settings(max_examples=300, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
json_leaves = (
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
    | st.sampled_from(["2026-03-06T10:00:00.000+0000", "done", "status", "10070"])
)
json_values = st.recursive(
    json_leaves,
    lambda inner: st.lists(inner, max_size=3)
    | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=12,
)
JIRA_KEYS = [
    "webhookEvent", "timestamp", "issue", "comment", "user", "changelog", "issue_event_type_name",
    "id", "key", "fields", "items", "self", "created", "updated", "status", "statusCategory",
    "body", "author", "updateAuthor", "accountId", "accountType", "name", "jsdPublic", "properties",
]
jira_shaped = st.recursive(
    json_leaves | st.sampled_from(["jira:issue_updated", "jira:issue_created", "jira:issue_deleted",
                                   "comment_created", "comment_updated", "customer"]),
    lambda inner: st.lists(inner, max_size=3)
    | st.dictionaries(st.sampled_from(JIRA_KEYS), inner, max_size=5),
    max_leaves=25,
)
REST_NAMES = ["rest-cloud-issue-v3.json", "rest-dc-issue-v2.json"]
PAYLOAD_NAMES = sorted(p.name for p in PAYLOADS.glob("*.json") if not p.name.startswith("rest-"))


def _paths(value: Any, prefix: tuple = ()) -> list[tuple]:
    found = [prefix]
    if isinstance(value, dict):
        for k, v in value.items():
            found += _paths(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            found += _paths(v, (*prefix, i))
    return found


def _replace(value: Any, path: tuple, new: Any) -> Any:
    if not path:
        return new
    value[path[0]] = _replace(value[path[0]], path[1:], new)
    return value


def _parses_or_refuses(body: bytes) -> None:
    try:
        events = parse_delivery(raw(body), None)
    except (PayloadError, DeliverySkipped):
        return
    assert all(e.id.startswith("jira:acme:") for e in events)


@FUZZ
@given(value=json_values | jira_shaped)
def test_random_json_is_parsed_or_refused_never_a_crash(value: Any) -> None:
    _parses_or_refuses(json.dumps(value).encode())


@FUZZ
@given(data=st.data(), name=st.sampled_from(PAYLOAD_NAMES))
def test_real_shapes_with_one_value_swapped_never_crash(data: st.DataObject, name: str) -> None:
    payload = load(name)
    for _ in range(data.draw(st.integers(1, 3))):
        path = data.draw(st.sampled_from(_paths(payload)))
        payload = _replace(payload, path, data.draw(json_values | jira_shaped))
    _parses_or_refuses(json.dumps(payload).encode())


@FUZZ
@given(data=st.data())
def test_rest_issues_with_one_value_swapped_never_crash(data: st.DataObject) -> None:
    payload = load(data.draw(st.sampled_from(REST_NAMES)))
    path = data.draw(st.sampled_from(_paths(payload)))
    payload = _replace(payload, path, data.draw(json_values | jira_shaped))
    try:
        found = events_from_issue(payload, None, "acme", since=datetime(2026, 1, 1, tzinfo=UTC))
    except PayloadError as exc:
        assert str(exc)  # refused with a reason
        return
    # What it does read is events of this site, in time order.
    assert all(event.system == "jira" and event.id.startswith("jira:acme:") for event in found)
    assert [e.occurred_at for e in found] == sorted(e.occurred_at for e in found)
