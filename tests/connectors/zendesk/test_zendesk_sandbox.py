"""The Zendesk sandbox, driven by the real ``zenpy`` client and checked against Zendesk's own spec."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import requests
import yaml
from zendesk_sandbox_support import ZENDESK_SPEC, Receiver, _registry, assert_valid, connect, point_zenpy, session
from zenpy.lib.api_objects import Comment, Ticket
from zenpy.lib.exception import APIException, RatelimitBudgetExceeded, RecordNotFoundException

from escalier.connectors.zendesk.config import ZendeskConfig
from escalier.connectors.zendesk.sandbox import RECOMMENDED_TRIGGER_BODY, ZendeskSandbox
from escalier.connectors.zendesk.webhook import is_own_change, verify
from escalier.core.extensions import OwnIdentity
from escalier.webhooks.verification import Rejected

SECRET = "zendesk-sandbox-secret"
FAST = (0.05, 0.05, 0.05, 0.05, 0.05)
STAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")
NANOS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z$")
ULID = re.compile(r"^[0-9A-HJKMNP-TV-Z]{26}$")
TIER_2, TIER_3 = 360000102, 360000103
MIA, JONAS, PRIYA, DANA, ESCALIER = 360001, 360002, 360003, 360101, 360009999


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    found = Receiver()
    yield found
    found.close()


@pytest.fixture
def desk(receiver: Receiver) -> Iterator[ZendeskSandbox]:
    with ZendeskSandbox(webhook_url=receiver.url, webhook_secret=SECRET, webhook_retry_delays=FAST) as sandbox:
        yield sandbox


@pytest.fixture
def quiet() -> Iterator[ZendeskSandbox]:
    """A sandbox that sends no webhooks."""
    with ZendeskSandbox() as sandbox:
        yield sandbox


class Clock:
    """A clock the sandbox reads and the test moves (the event export leaves out the latest minute)."""

    def __init__(self, start: datetime):
        self.moment = start

    def now(self) -> datetime:
        return self.moment

    def advance(self, **delta: float) -> None:
        self.moment += timedelta(**delta)


@pytest.fixture
def clock() -> Clock:
    # Well in the past: zenpy stops following an export whose end_time is within 5 minutes of now.
    return Clock(datetime(2024, 6, 3, 9, 0, tzinfo=UTC))


@pytest.fixture
def timed(clock: Clock) -> Iterator[ZendeskSandbox]:
    """A quiet sandbox on the test's clock."""
    with ZendeskSandbox(clock=clock.now) as sandbox:
        yield sandbox


def escalate(ticket_id: int, **more: object) -> Ticket:
    """Escalier's one call per escalation: tags, group, assignee, priority and a private comment."""
    return Ticket(
        id=ticket_id, additional_tags=["escalier_tier_2"], group_id=TIER_2, assignee_id=PRIYA,
        priority="high", comment=Comment(body="Escalated to tier 2.\nescalier:action=esc-1", public=False), **more,
    )


# --- the API through zenpy ---------------------------------------------------------------------


def test_me_groups_users_and_organization(quiet: ZendeskSandbox, monkeypatch: pytest.MonkeyPatch) -> None:
    zenpy = connect(quiet, monkeypatch)
    me = zenpy.users.me()
    assert (me.id, me.email, me.role) == (ESCALIER, "escalier@example.com", "admin")
    groups = {g.name: g.id for g in zenpy.groups()}
    assert groups == {"Engineering": 360000110, "Tier 1": 360000101, "Tier 2": TIER_2, "Tier 3": TIER_3}
    assert quiet.group_ids == {"tier-1": 360000101, "tier-2": TIER_2, "tier-3": TIER_3, "engineering": 360000110}
    assert [u.id for u in zenpy.users.search(query="priya@northwind")] == [PRIYA]
    dana = zenpy.users(id=DANA)
    assert (dana.role, dana.organization_id) == ("end-user", 360200)
    assert zenpy.organizations(id=360200).tags == ["vip"]
    with pytest.raises(RecordNotFoundException):
        zenpy.users(id=1)
    assert quiet.calls()["GET /api/v2/groups.json"] == 1


def test_credentials_basic_token_or_oauth_else_401(quiet: ZendeskSandbox) -> None:
    url = f"{quiet.url}/api/v2/users/me.json"
    assert session().get(url, timeout=5).status_code == 200
    assert session(bearer=True).get(url, timeout=5).status_code == 200
    for auth in (("escalier@example.com/token", "wrong"), ("escalier@example.com", "sandbox-token"), None):
        answer = requests.get(url, auth=auth, timeout=5)
        assert answer.status_code == 401
        assert answer.json() == {"error": "Couldn't authenticate you"}


def test_one_call_sets_tags_group_assignee_priority_and_a_private_comment(
    quiet: ZendeskSandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    zenpy = connect(quiet, monkeypatch)
    created = zenpy.tickets.create(Ticket(subject="Export broken", description="The export does nothing.",
                                          requester_id=DANA, tags=["export"]))
    ticket = created.ticket
    assert (ticket.status, ticket.priority, ticket.group_id) == ("new", None, None)
    assert ticket.tags == ["export", "vip"]  # the organization's tags come along
    quiet.update_ticket(ticket.id, additional_tags=["customer_said_urgent"], as_user="mia")  # a person, meanwhile
    before = dict(quiet.calls())
    answer = zenpy.tickets.update(escalate(ticket.id))
    assert {k: v - before.get(k, 0) for k, v in quiet.calls().items() if v != before.get(k, 0)} == {
        "PUT /api/v2/tickets/{ticket_id}.json": 1}
    updated = answer.ticket
    assert updated.tags == ["customer_said_urgent", "escalier_tier_2", "export", "vip"]
    assert (updated.group_id, updated.assignee_id, updated.priority, updated.status) == (TIER_2, PRIYA, "high", "open")
    changed = {e["field_name"]: (e.get("previous_value"), e["value"]) for e in answer.audit.events if e["type"] == "Change"}
    assert changed["group_id"] == (None, str(TIER_2)) and changed["status"] == ("new", "open")
    comment = next(e for e in answer.audit.events if e["type"] == "Comment")
    assert (comment["public"], comment["author_id"]) == (False, ESCALIER)
    listed = list(zenpy.tickets.comments(ticket.id))
    assert [(c.public, c.author_id) for c in listed] == [(True, DANA), (False, ESCALIER)]
    assert quiet.key_counts() == {"esc-1": 1}
    shown = zenpy.tickets(id=ticket.id)
    assert shown.updated_at == updated.updated_at and STAMP.match(shown.updated_at)
    assert [t.id for t in zenpy.tickets(ids=[ticket.id, 999])] == [ticket.id]


def test_an_agent_brings_their_group_and_a_new_group_drops_a_stranger(quiet: ZendeskSandbox) -> None:
    ticket = quiet.create_ticket("Login fails", "Cannot log in.")
    assert quiet.update_ticket(ticket["id"], assignee_id=MIA)["group_id"] == 360000101
    moved = quiet.update_ticket(ticket["id"], group_id=TIER_3)
    assert (moved["group_id"], moved["assignee_id"]) == (TIER_3, None)
    with pytest.raises(ValueError, match="not a member of the group"):
        quiet.update_ticket(ticket["id"], group_id=TIER_2, assignee_id=MIA)


def test_invalid_values_get_422_with_details(quiet: ZendeskSandbox, monkeypatch: pytest.MonkeyPatch) -> None:
    zenpy = connect(quiet, monkeypatch)
    ticket = zenpy.tickets.create(Ticket(subject="s", description="d")).ticket
    with pytest.raises(APIException) as caught:
        zenpy.tickets.update(Ticket(id=ticket.id, group_id=42, priority="sky-high", assignee_id=DANA))
    assert caught.value.response.status_code == 422
    body = caught.value.response.json()
    assert (body["error"], body["description"]) == ("RecordInvalid", "Record validation errors")
    assert set(body["details"]) == {"group", "priority", "assignee"}
    assert all(item["description"] for items in body["details"].values() for item in items)
    assert zenpy.tickets(id=ticket.id).priority is None  # nothing was applied
    quiet.update_ticket(ticket.id, status="closed")
    with pytest.raises(APIException) as caught:
        zenpy.tickets.update(Ticket(id=ticket.id, priority="low"))
    assert caught.value.response.json()["details"]["status"][0]["description"] == "Status: closed prevents ticket update"
    with pytest.raises(RecordNotFoundException):
        zenpy.tickets.update(Ticket(id=99999, priority="low"))


def test_safe_update_with_a_stale_stamp_is_a_409_conflict(quiet: ZendeskSandbox, monkeypatch: pytest.MonkeyPatch) -> None:
    zenpy = connect(quiet, monkeypatch)
    ticket = zenpy.tickets.create(Ticket(subject="s", description="d")).ticket
    seen = zenpy.tickets(id=ticket.id).updated_at
    quiet.update_ticket(ticket.id, additional_tags=["human_was_here"])  # same second or not: the stamp moves
    with pytest.raises(APIException) as caught:
        zenpy.tickets.update(escalate(ticket.id, safe_update=True, updated_stamp=seen))
    assert caught.value.response.status_code == 409
    assert caught.value.response.json()["error"] == "UpdateConflict"
    fresh = zenpy.tickets(id=ticket.id).updated_at
    assert fresh != seen
    assert zenpy.tickets.update(escalate(ticket.id, safe_update=True, updated_stamp=fresh)).ticket.group_id == TIER_2
    stale = session().put(f"{quiet.url}/api/v2/tickets/{ticket.id}/tags.json", timeout=5,
                          json={"tags": ["x"], "safe_update": "true", "updated_stamp": fresh})
    assert stale.status_code == 409


def test_tags_are_added_set_and_removed_without_clobbering(quiet: ZendeskSandbox, monkeypatch: pytest.MonkeyPatch) -> None:
    zenpy = connect(quiet, monkeypatch)
    ticket = zenpy.tickets.create(Ticket(subject="s", description="d", tags=["a"])).ticket
    assert list(zenpy.tickets.add_tags(ticket.id, ["B", "c d"])) == ["a", "b", "c", "d"]  # PUT adds
    assert zenpy.tickets.delete_tags(ticket.id, ["a", "c"]).status_code == 204  # DELETE removes
    assert quiet.ticket(ticket.id)["tags"] == ["b", "d"]
    assert list(zenpy.tickets.set_tags(ticket.id, ["only"])) == ["only"]  # POST replaces
    assert {k for k in quiet.calls() if "tags" in k} == {
        "PUT /api/v2/tickets/{ticket_id}/tags.json", "DELETE /api/v2/tickets/{ticket_id}/tags.json",
        "POST /api/v2/tickets/{ticket_id}/tags.json"}


def test_bulk_update_runs_as_a_job_queued_working_completed(quiet: ZendeskSandbox, monkeypatch: pytest.MonkeyPatch) -> None:
    zenpy = connect(quiet, monkeypatch)
    ids = [quiet.create_ticket(f"t{n}", "d")["id"] for n in range(3)]
    quiet.configure_jobs(delay=0.15, step=0.15)
    job = zenpy.tickets.update([Ticket(id=i, additional_tags=["breached"], priority="urgent") for i in ids])
    seen = [job.status]
    deadline = time.monotonic() + 5
    while seen[-1] != "completed" and time.monotonic() < deadline:
        status = zenpy.job_status(id=job.id)
        if status.status != seen[-1]:
            seen.append(status.status)
        time.sleep(0.03)
    assert seen == ["queued", "working", "completed"]
    final = session().get(f"{quiet.url}/api/v2/job_statuses/{job.id}.json", timeout=5).json()["job_status"]
    assert (final["total"], final["progress"]) == (3, 3)
    assert [(r["id"], r["status"], r["success"]) for r in final["results"]] == [(i, "Updated", True) for i in ids]
    assert all(quiet.ticket(i)["priority"] == "urgent" for i in ids)
    # The ?ids= form applies one change to every ticket.
    quiet.configure_jobs(delay=0)
    answer = session().put(f"{quiet.url}/api/v2/tickets/update_many.json?ids={ids[0]},{ids[1]}",
                           json={"ticket": {"remove_tags": ["breached"]}}, timeout=5)
    assert answer.status_code == 200 and answer.json()["job_status"]["status"] == "queued"
    assert quiet.wait_for_jobs()
    assert [quiet.ticket(i)["tags"] for i in ids] == [["vip"], ["vip"], ["breached", "vip"]]
    too_many = session().put(f"{quiet.url}/api/v2/tickets/update_many.json",
                             json={"tickets": [{"id": n} for n in range(101)]}, timeout=5)
    assert too_many.status_code == 400 and too_many.json()["error"] == "TooManyValues"


def test_a_job_can_fail_part_way_or_report_no_results(quiet: ZendeskSandbox, monkeypatch: pytest.MonkeyPatch) -> None:
    zenpy = connect(quiet, monkeypatch)
    ids = [quiet.create_ticket(f"t{n}", "d")["id"] for n in range(3)]
    told = session().post(f"{quiet.url}/_sandbox/zendesk/jobs", json={"delay": 0, "fail_after": 1}, timeout=5)
    assert told.status_code == 200
    failed = zenpy.tickets.update([Ticket(id=i, priority="high") for i in ids])
    assert quiet.wait_for_jobs()
    status = quiet.job(failed.id)
    assert (status["status"], status["progress"], len(status["results"])) == ("failed", 1, 1)
    assert [quiet.ticket(i)["priority"] for i in ids] == ["high", None, None]
    quiet.configure_jobs(delay=0, empty_results=True)
    empty = zenpy.tickets.update([Ticket(id=i, priority="low") for i in ids])
    assert quiet.wait_for_jobs()
    assert (quiet.job(empty.id)["status"], quiet.job(empty.id)["results"]) == ("completed", [])
    assert [quiet.ticket(i)["priority"] for i in ids] == ["high", None, None]
    # One bad ticket fails alone, with Zendesk's reason.
    quiet.configure_jobs(delay=0)
    mixed = zenpy.tickets.update([Ticket(id=ids[1], group_id=42), Ticket(id=ids[2], priority="low")])
    assert quiet.wait_for_jobs()
    results = quiet.job(mixed.id)["results"]
    assert results[0]["success"] is False and results[0]["error"] == "RecordInvalid" and "Group" in results[0]["details"]
    assert results[1] == {"id": ids[2], "action": "update", "status": "Updated", "success": True}


# --- limits, faults, counts --------------------------------------------------------------------


def test_the_account_update_limit_answers_429_and_zenpy_raises_without_sleeping(
    quiet: ZendeskSandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    zenpy = connect(quiet, monkeypatch)
    ids = [quiet.create_ticket(f"t{n}", "d")["id"] for n in range(3)]
    quiet.ticket_update_limits(per_account=2, window_seconds=30)
    answer = session().put(f"{quiet.url}/api/v2/tickets/{ids[0]}.json", json={"ticket": {"priority": "low"}}, timeout=5)
    assert answer.headers["zendesk-rate-limit-tickets-update"] == "total=2; remaining=1; resets=30"
    zenpy.tickets.update(Ticket(id=ids[1], priority="low"))
    started = time.monotonic()
    with pytest.raises(RatelimitBudgetExceeded):
        zenpy.tickets.update(Ticket(id=ids[2], priority="low"))
    assert time.monotonic() - started < 1.0
    refused = session().put(f"{quiet.url}/api/v2/tickets/{ids[2]}.json", json={"ticket": {"priority": "low"}}, timeout=5)
    assert refused.status_code == 429 and 1 <= int(refused.headers["Retry-After"]) <= 30
    assert refused.json()["error"] == "APIRateLimitExceeded"
    assert quiet.ticket(ids[2])["priority"] is None
    assert quiet.calls()["PUT /api/v2/tickets/{ticket_id}.json"] == 4
    assert quiet.throttled() == {"PUT /api/v2/tickets/{ticket_id}.json": 2}
    assert zenpy.tickets(id=ids[2]).id == ids[2]  # reads are not ticket updates


def test_the_per_ticket_limit_leaves_other_tickets_alone(quiet: ZendeskSandbox) -> None:
    first, second = (quiet.create_ticket(f"t{n}", "d")["id"] for n in range(2))
    quiet.ticket_update_limits(per_ticket=2, ticket_window_seconds=600)
    http = session()

    def put(ticket_id: int) -> requests.Response:
        return http.put(f"{quiet.url}/api/v2/tickets/{ticket_id}.json", json={"ticket": {"additional_tags": ["x"]}}, timeout=5)

    assert [put(first).status_code for _ in range(3)] == [200, 200, 429]
    assert session().get(f"{quiet.url}/_sandbox/zendesk/throttled", timeout=5).json() == {
        "throttled": {"PUT /api/v2/tickets/{ticket_id}.json": 1}}
    assert 500 < int(put(first).headers["Retry-After"]) <= 600
    assert put(second).status_code == 200
    quiet.update_ticket(first, priority="low")  # people in Zendesk's UI are not refused
    lifted = session().post(f"{quiet.url}/_sandbox/zendesk/ticket_update_limits",
                            json={"per_account": None, "per_ticket": None}, timeout=5)
    assert lifted.status_code == 200 and put(first).status_code == 200


def test_people_in_zendesks_ui_can_share_the_update_budget(quiet: ZendeskSandbox) -> None:
    ticket = quiet.create_ticket("s", "d")
    quiet.ticket_update_limits(per_account=2, count_people=True)
    quiet.update_ticket(ticket["id"], priority="low", as_user="mia")
    quiet.update_ticket(ticket["id"], priority="high", as_user="jonas")  # never refused
    put = session().put(f"{quiet.url}/api/v2/tickets/{ticket['id']}.json", json={"ticket": {"priority": "urgent"}}, timeout=5)
    assert put.status_code == 429 and quiet.ticket(ticket["id"])["priority"] == "high"


def test_the_account_request_limit_and_its_headers(quiet: ZendeskSandbox) -> None:
    http = session()
    url = f"{quiet.url}/api/v2/users/me.json"
    first = http.get(url, timeout=5)
    assert (first.headers["X-Rate-Limit"], first.headers["ratelimit-limit"]) == ("700", "700")
    assert first.headers["X-Rate-Limit-Remaining"] == first.headers["ratelimit-remaining"] == "699"
    quiet.account_rate_limit(2)
    assert [http.get(url, timeout=5).status_code for _ in range(3)] == [200, 200, 429]
    assert quiet.throttled() == {"GET /api/v2/users/me.json": 1}


def test_faults_reach_zenpy_and_every_call_is_counted(quiet: ZendeskSandbox, monkeypatch: pytest.MonkeyPatch) -> None:
    zenpy = connect(quiet, monkeypatch)
    ticket = quiet.create_ticket("s", "d")
    quiet.inject_fault(500, path="/api/v2/tickets/*")
    with pytest.raises(APIException) as caught:
        zenpy.tickets.update(Ticket(id=ticket["id"], priority="low"))
    assert caught.value.response.status_code == 500
    assert caught.value.response.json()["error"] == "InternalServerError"
    quiet.inject_fault(429, retry_after=7, method="PUT")
    refused = session().put(f"{quiet.url}/api/v2/tickets/{ticket['id']}.json", json={"ticket": {}}, timeout=5)
    assert (refused.status_code, refused.headers["Retry-After"]) == (429, "7")
    quiet.inject_fault(delay=0.3, path="/api/v2/users/me.json")
    started = time.monotonic()
    zenpy.users.me()
    assert time.monotonic() - started >= 0.3
    assert quiet.calls()["PUT /api/v2/tickets/{ticket_id}.json"] == 2
    assert quiet.throttled() == {"PUT /api/v2/tickets/{ticket_id}.json": 1}
    # Paths without .json are the same endpoints.
    assert session().get(f"{quiet.url}/api/v2/tickets/{ticket['id']}", timeout=5).json()["ticket"]["id"] == ticket["id"]
    assert quiet.calls()["GET /api/v2/tickets/{ticket_id}.json"] == 1


def test_reset_restores_the_seeded_account(quiet: ZendeskSandbox, monkeypatch: pytest.MonkeyPatch) -> None:
    zenpy = connect(quiet, monkeypatch)
    zenpy.tickets.create(Ticket(subject="s", description="d"))
    quiet.ticket_update_limits(per_account=1)
    quiet.inject_fault(503)
    assert session().post(f"{quiet.url}/_sandbox/reset", timeout=5).status_code == 204
    assert quiet.tickets() == [] and quiet.calls() == {} and quiet.throttled() == {}
    assert zenpy.users.me().id == ESCALIER
    assert zenpy.tickets.create(Ticket(subject="again", description="d")).ticket.id == 1
    assert session().put(f"{quiet.url}/api/v2/tickets/1.json", json={"ticket": {"priority": "low"}}, timeout=5).ok


# --- reading back: pages, export, search -------------------------------------------------------


def test_comments_and_audits_page_with_cursors(quiet: ZendeskSandbox, monkeypatch: pytest.MonkeyPatch) -> None:
    ticket = quiet.create_ticket("Chatty", "first")
    for n in range(104):
        quiet.add_comment(ticket["id"], f"comment {n}", public=n % 2 == 0)
    http = session()
    page = http.get(f"{quiet.url}/api/v2/tickets/{ticket['id']}/comments.json?page[size]=2", timeout=5).json()
    assert [c["body"] for c in page["comments"]] == ["first", "comment 0"]
    assert page["meta"]["has_more"] is True
    second = http.get(page["links"]["next"], timeout=5).json()
    assert [c["body"] for c in second["comments"]] == ["comment 1", "comment 2"]
    newest = http.get(f"{quiet.url}/api/v2/tickets/{ticket['id']}/comments.json?page[size]=1&sort=-created_at",
                      timeout=5).json()
    assert newest["comments"][0]["body"] == "comment 103"
    zenpy = connect(quiet, monkeypatch)
    assert len(list(zenpy.tickets.comments(ticket["id"]))) == 105  # zenpy follows links.next past 100
    assert quiet.calls()["GET /api/v2/tickets/{ticket_id}/comments.json"] == 5
    audits = list(zenpy.tickets.audits(ticket=ticket["id"]))
    assert len(audits) == 105 and audits[0].events[0]["type"] == "Comment"


def test_the_incremental_export_pages_with_cursors(quiet: ZendeskSandbox, monkeypatch: pytest.MonkeyPatch) -> None:
    ids = [quiet.create_ticket(f"t{n}", "d")["id"] for n in range(5)]
    http = session()
    url = f"{quiet.url}/api/v2/incremental/tickets/cursor.json"
    page = http.get(url, params={"start_time": 0, "per_page": 2}, timeout=5).json()
    got = [t["id"] for t in page["tickets"]]
    while not page["end_of_stream"]:
        page = http.get(page["after_url"], timeout=5).json()
        got += [t["id"] for t in page["tickets"]]
    assert got == ids
    assert page["before_cursor"] is None and page["tickets"][0]["generated_timestamp"] > 0
    # A later run from the last cursor sees only what changed since.
    quiet.update_ticket(ids[1], priority="urgent")
    later = http.get(url, params={"cursor": page["after_cursor"]}, timeout=5).json()
    assert [t["id"] for t in later["tickets"]] == [ids[1]] and later["end_of_stream"] is True
    zenpy = connect(quiet, monkeypatch)
    assert sorted(t.id for t in zenpy.tickets.incremental(start_time=0)) == ids
    assert http.get(url, timeout=5).status_code == 400


EVENTS = "GET /api/v2/incremental/ticket_events.json"


def test_the_ticket_event_export_pages_by_time(timed: ZendeskSandbox, clock: Clock, monkeypatch: pytest.MonkeyPatch) -> None:
    first = timed.create_ticket("Export", "It fails.", group_id=360000101, custom_fields={360000201: "severity_high"})
    clock.advance(minutes=5)
    second = timed.create_ticket("Login", "Cannot log in.")
    for n in range(3):  # three updates in one second
        timed.update_ticket(first["id"], comment=f"note {n}", public=False, additional_tags=[f"t{n}"])
    clock.advance(minutes=5)
    timed.update_ticket(first["id"], status="pending", remove_tags=["t0"], custom_fields={360000201: "severity_low"})
    clock.advance(minutes=2)
    timed.update_ticket(second["id"], priority="urgent")  # within the latest minute: not exported yet
    http = session()
    url = f"{timed.url}/api/v2/incremental/ticket_events.json"
    page = http.get(url, params={"start_time": 0, "per_page": 2}, timeout=5).json()
    # The second update's second holds three more: they stay on the page, which ends there.
    assert [(e["ticket_id"], e["event_type"]) for e in page["ticket_events"]] == [(1, "Audit")] + [(2, "Audit")] + [(1, "Audit")] * 3
    assert page["count"] == 5 and page["end_of_stream"] is False
    assert page["end_time"] == page["ticket_events"][-1]["timestamp"] == page["ticket_events"][1]["timestamp"]
    assert f"start_time={page['end_time']}" in page["next_page"] and "per_page=2" in page["next_page"]
    comment, *changes = page["ticket_events"][0]["child_events"]
    assert comment == {"id": comment["id"], "via": comment["via"], "via_reference_id": None,
                       "comment_present": True, "comment_public": True, "event_type": "Comment"}
    assert {"subject": "Export", "event_type": "Create"}.items() <= changes[0].items()
    tagged = {"tags": ["severity_high", "vip"], "added_tags": ["severity_high", "vip"], "removed_tags": [],
              "event_type": "Create"}  # Dana's organization brings "vip"
    assert tagged.items() <= next(c for c in changes if "tags" in c).items()
    assert next(c for c in changes if "custom_ticket_fields" in c)["custom_ticket_fields"] == {"360000201": "severity_high"}
    # The next page starts at end_time: that second's events come again, and fill it; a page of one
    # second only moves the export on by a second.
    again = http.get(page["next_page"], timeout=5).json()
    assert [e["id"] for e in again["ticket_events"]] == [e["id"] for e in page["ticket_events"][1:]]
    assert again["end_time"] == page["end_time"] + 1 and again["end_of_stream"] is False
    rest = http.get(again["next_page"], timeout=5).json()
    [last] = rest["ticket_events"]
    assert rest["end_of_stream"] is True and rest["count"] == 1 and rest["end_time"] == last["timestamp"]
    status = next(c for c in last["child_events"] if "status" in c)
    assert (status["status"], status["previous_value"], status["event_type"]) == ("pending", "new", "Change")
    tags = next(c for c in last["child_events"] if "tags" in c)
    assert (tags["added_tags"], tags["removed_tags"]) == (["severity_low"], ["severity_high", "t0"])
    # The comment_events sideload carries the comments themselves.
    sideloaded = http.get(url, params={"start_time": page["end_time"], "include": "comment_events"}, timeout=5).json()
    note = sideloaded["ticket_events"][1]["child_events"][0]
    assert (note["type"], note["body"], note["public"], note["event_type"]) == ("Comment", "note 0", False, "Comment")
    assert note["author_id"] == MIA and note["audit_id"] == sideloaded["ticket_events"][1]["id"]
    assert "include=comment_events" in sideloaded["next_page"] and sideloaded["end_of_stream"] is True
    # zenpy follows next_page to the end of the stream (the repeated second included).
    zenpy = connect(timed, monkeypatch)
    got = [e.id for e in zenpy.tickets.events(start_time=0, include="comment_events")]
    assert len(got) == 6 and got[-1] == last["id"]
    clock.advance(minutes=2)
    assert http.get(url, params={"start_time": int(clock.now().timestamp()) - 120}, timeout=5).json()["count"] == 1
    assert timed.calls()[EVENTS] == 6
    assert http.get(url, params={"start_time": int(clock.now().timestamp()) - 30}, timeout=5).status_code == 400
    assert http.get(url, timeout=5).status_code == 400


def test_the_ticket_event_export_allows_ten_requests_a_minute(timed: ZendeskSandbox, clock: Clock) -> None:
    http = session()
    url = f"{timed.url}/api/v2/incremental/ticket_events.json?start_time=0"
    assert [http.get(url, timeout=5).status_code for _ in range(10)] == [200] * 10
    refused = http.get(url, timeout=5)
    assert refused.status_code == 429 and 0 < int(refused.headers["Retry-After"]) <= 60
    assert refused.json()["error"] == "APIRateLimitExceeded"
    assert timed.throttled() == {EVENTS: 1}
    # Other endpoints keep the account's budget.
    assert http.get(f"{timed.url}/api/v2/users/me.json", timeout=5).status_code == 200
    timed.incremental_export_limit(None)
    assert http.get(url, timeout=5).status_code == 200


def test_search_understands_a_small_query_language(quiet: ZendeskSandbox, monkeypatch: pytest.MonkeyPatch) -> None:
    quiet.create_ticket("Export broken", "export fails", tags=["export"])
    second = quiet.create_ticket("Login loop", "cannot log in")
    quiet.update_ticket(second["id"], group_id=TIER_2, status="pending")
    zenpy = connect(quiet, monkeypatch)

    def ids(query: str) -> list[int]:
        return [t.id for t in zenpy.search(query, type="ticket")]

    assert ids("status<solved") == [1, 2]
    assert ids("status:pending") == [2]
    assert ids("tags:export") == [1]
    assert ids(f"group:{TIER_2} -tags:export") == [2]
    assert ids("login") == [2]
    assert ids("group:none") == [1]
    answer = session().get(f"{quiet.url}/api/v2/search.json", params={"query": "type:ticket"}, timeout=5).json()
    assert answer["count"] == 2 and answer["results"][0]["result_type"] == "ticket"
    assert session().get(f"{quiet.url}/api/v2/search.json", params={"query": "brand:x"}, timeout=5).status_code == 400


# --- webhooks ----------------------------------------------------------------------------------


def _verified(receiver: Receiver, index: int) -> dict[str, object]:
    headers, body = receiver.received[index]
    signed_at = verify(headers, body, [SECRET], datetime.now(UTC))
    assert signed_at is not None and abs((datetime.now(UTC) - signed_at).total_seconds()) < 30
    assert ULID.match(headers["X-Zendesk-Webhook-Id"]) and ULID.match(headers["X-Zendesk-Webhook-Invocation-Id"])
    return json.loads(body)


def test_event_webhooks_are_signed_and_shaped_like_zendesks(
    desk: ZendeskSandbox, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    zenpy = connect(desk, monkeypatch)
    ticket = desk.create_ticket("Export broken", "The export does nothing.")
    receiver.wait_for(1)
    zenpy.tickets.update(escalate(ticket["id"]))
    receiver.wait_for(7)
    assert desk.wait_for_deliveries(5)
    payloads = [_verified(receiver, n) for n in range(len(receiver.received))]
    assert [p["type"].removeprefix("zen:event-type:ticket.") for p in payloads] == [
        "created", "priority_changed", "status_changed", "group_assignment_changed",
        "agent_assignment_changed", "tags_changed", "comment_added"]
    created, priority, status, group, agent, tags, comment = payloads
    assert created["detail"]["actor_id"] == str(DANA) and created["detail"]["via"] == {"channel": "web"}
    assert created["detail"]["assignee_id"] is None and created["detail"]["status"] == "NEW"
    assert priority["event"] == {"current": "HIGH", "previous": None}
    assert status["event"] == {"current": "OPEN", "previous": "NEW"}
    assert group["event"] == {"current": {"id": str(TIER_2)}, "previous": None}
    assert agent["event"] == {"current": {"id": str(PRIYA)}, "previous": None}
    assert tags["event"] == {"tags_added": ["escalier_tier_2"], "tags_removed": []}
    assert comment["event"]["comment"]["author"] == {"id": str(ESCALIER), "is_staff": True, "name": "Escalier"}
    assert comment["event"]["comment"]["is_public"] is False
    detail = comment["detail"]
    assert detail["id"] == str(ticket["id"]) and detail["group_id"] == str(TIER_2)
    assert (detail["priority"], detail["status"], detail["actor_id"]) == ("HIGH", "OPEN", str(ESCALIER))
    assert detail["tags"] == ["escalier_tier_2", "vip"] and detail["external_id"] is None
    for payload in payloads:
        assert payload["account_id"] == 23140507 and payload["zendesk_event_version"] == "2022-11-06"
        assert payload["subject"] == f"zen:ticket:{ticket['id']}" and NANOS.match(payload["time"])
        assert set(payload) == {"account_id", "detail", "event", "id", "subject", "time", "type", "zendesk_event_version"}
    identity = OwnIdentity(user_ids=frozenset({str(ESCALIER)}))
    assert [is_own_change(p, identity) for p in payloads] == [False] + [True] * 6
    with pytest.raises(Rejected):
        verify(receiver.received[0][0], receiver.received[0][1] + b" ", [SECRET], datetime.now(UTC))


def test_trigger_webhooks_render_the_recommended_body(receiver: Receiver) -> None:
    with ZendeskSandbox(webhook_mode="trigger", webhook_url=receiver.url, webhook_secret=SECRET,
                        webhook_retry_delays=FAST) as desk:
        ticket = desk.create_ticket("Export broken", 'Says "it fails"\nevery time.', priority="normal",
                                    custom_fields={360000201: "severity_high", 360000202: 40})
        desk.update_ticket(ticket["id"], as_user="mia", group_id=TIER_2, additional_tags=["escalier_tier_2"],
                           comment="Looking.", public=False)
        receiver.wait_for(2)
        assert desk.wait_for_deliveries(5)
    first, second = (_verified(receiver, n) for n in range(2))
    template_keys = list(json.loads(re.sub(r"\{\{[^}]+\}\}", "", RECOMMENDED_TRIGGER_BODY)))
    assert list(first) == template_keys
    assert all(isinstance(v, str) for p in (first, second) for v in p.values())
    assert first["latest_comment"] == 'Says "it fails"\nevery time.'
    assert (first["status"], first["priority"], first["current_user_id"]) == ("New", "Normal", str(DANA))
    assert first["tags"] == "severity_high vip"  # a dropdown's value is a tag too
    assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\dZ$", first["created_at"]) and first["group_id"] == ""
    assert (second["status"], second["group_id"], second["group"]) == ("New", str(TIER_2), "Tier 2")
    assert second["tags"] == "escalier_tier_2 severity_high vip"
    assert (second["current_user_id"], second["latest_comment_public"]) == (str(MIA), "false")
    assert second["assignee_id"] == "" and second["organization"] == "Acme Logistics"
    assert receiver.types() == ["trigger", "trigger"]


def test_both_kinds_can_be_sent_and_custom_templates_are_rendered(receiver: Receiver) -> None:
    template = '{"id": "{{ticket.id}}", "severity": "{{ticket.ticket_field_360000201}}", "when": "{{ticket.updated_at_with_time}}"}'
    with ZendeskSandbox(webhook_mode="both", webhook_url=receiver.url, trigger_template=template) as desk:
        ticket = desk.create_ticket("s", "d", custom_fields={360000201: "severity_critical"})
        receiver.wait_for(2)
        assert sorted(receiver.types()) == ["trigger", "zen:event-type:ticket.created"]
        rendered = json.loads(desk.render_trigger(ticket["id"]))
        assert rendered["severity"] == "severity_critical" and re.match(r"^\w+ \d+, \d{4} \d\d:\d\d$", rendered["when"])
        ids = {h["X-Zendesk-Webhook-Id"] for h, _ in receiver.received}
        assert ids == {desk.event_webhook_id, desk.trigger_webhook_id}
    with pytest.raises(ValueError, match="not JSON"):
        ZendeskSandbox(trigger_template='{"id": {{ticket.id}}')


def test_helpers_act_as_people_through_the_same_path(desk: ZendeskSandbox, receiver: Receiver) -> None:
    ticket = desk.create_ticket("Help", "Please help.", requester="dana")
    desk.update_ticket(ticket["id"], as_user="jonas", status="pending", assignee_id=JONAS)
    desk.add_comment(ticket["id"], "Still broken.", as_user="dana", public=False)
    assert desk.ticket(ticket["id"])["status"] == "open"  # the requester's answer reopens it
    assert desk.comments(ticket["id"])[-1]["public"] is True  # end users cannot whisper
    assert desk.wait_for_deliveries(5)
    actors = [(p["type"].split(".")[-1], p["detail"]["actor_id"]) for p in receiver.payloads()]
    assert ("status_changed", str(JONAS)) in actors and ("comment_added", str(DANA)) in actors
    assert desk.calls() == {}  # the helpers make no API calls
    with pytest.raises(KeyError):
        desk.update_ticket(ticket["id"], as_user="nobody", priority="low")


def test_deliveries_are_retried_like_zendesk(desk: ZendeskSandbox, receiver: Receiver) -> None:
    receiver.answers = [409, 409, (503, {"Retry-After": "1"}), 200, 500]
    desk.create_ticket("one", "d")
    desk.create_ticket("two", "d")
    receiver.wait_for(5)
    assert desk.wait_for_deliveries(5)
    first, second = desk.deliveries()
    assert (first["statuses"], first["state"]) == ([409, 409, 503, 200], "delivered")
    assert (second["statuses"], second["state"]) == ([500], "given_up")  # Zendesk does not retry a 500
    invocations = [h["X-Zendesk-Webhook-Invocation-Id"] for h, _ in receiver.received]
    assert len(set(invocations[:4])) == 1 and invocations[4] != invocations[0]
    stamps = [h["X-Zendesk-Webhook-Signature-Timestamp"] for h, _ in receiver.received]
    assert all(STAMP.match(s) for s in stamps)
    receiver.answers = [(503, {"Retry-After": "120"})]
    desk.create_ticket("three", "d")
    assert desk.wait_for_deliveries(5)
    assert desk.deliveries()[-1]["statuses"] == [503]  # too long a wait: not retried


def test_an_unreachable_receiver_is_tried_again_then_given_up(quiet: ZendeskSandbox) -> None:
    closed = Receiver()
    url = closed.url
    closed.close()
    quiet.configure_webhooks(url=url, secret=SECRET)
    quiet.webhook_retry_delays = (0.01, 0.01)
    quiet.create_ticket("s", "d")
    assert quiet.wait_for_deliveries(5)
    (delivery,) = quiet.deliveries()
    assert delivery["statuses"] == [None, None, None] and delivery["state"] == "given_up"


def test_policy_snippet_points_zenpy_at_the_sandbox(desk: ZendeskSandbox, monkeypatch: pytest.MonkeyPatch) -> None:
    snippet = desk.policy_snippet()
    assert "    subdomain: northwind\n" in snippet and "    email: escalier@example.com\n" in snippet
    assert f"    url: {desk.url}\n" in snippet
    assert "fields: {severity: 360000201, users_affected: 360000202, custom: {" in snippet
    assert "token: ${ZENDESK_API_TOKEN}" in snippet and 'webhook_secrets: ["${ZENDESK_WEBHOOK_SECRET}"]' in snippet
    assert "groups: {tier-1: 360000101, tier-2: 360000102, tier-3: 360000103, engineering: 360000110}" in snippet
    assert f"service_user_id: {ESCALIER}" in snippet
    assert f"export ZENPY_FORCE_SCHEME=http ZENPY_FORCE_NETLOC=127.0.0.1:{desk.port}" in snippet
    assert f"export ZENDESK_WEBHOOK_SECRET={SECRET}" in snippet
    block = snippet.split("In the policy file:\n", 1)[1].split("\nWebhooks:", 1)[0]
    config = ZendeskConfig.model_validate(yaml.safe_load(block)["connectors"]["zendesk"])
    assert (config.url, config.service_user_id, config.groups["tier-2"]) == (desk.url, ESCALIER, TIER_2)
    point_zenpy(desk, monkeypatch)
    from zenpy import Zenpy

    assert Zenpy(subdomain="northwind", oauth_token="sandbox-token", timeout=5).users.me().id == ESCALIER


# --- Zendesk's own description -----------------------------------------------------------------


def test_answers_match_zendesks_published_spec(quiet: ZendeskSandbox) -> None:
    http = session()
    api = f"{quiet.url}/api/v2"
    ticket = quiet.create_ticket("Spec", "Check me.", priority="high", type="incident",
                                 custom_fields={360000201: "severity_low", 360000202: 3})
    created = http.post(f"{api}/tickets.json", json={"ticket": {"subject": "API", "comment": {"body": "b"}}}, timeout=5)
    assert created.status_code == 201
    assert_valid("TicketResponse", created.json())
    updated = http.put(f"{api}/tickets/{ticket['id']}.json", timeout=5, json={"ticket": {
        "additional_tags": ["t"], "group_id": TIER_2, "assignee_id": PRIYA, "comment": {"body": "c", "public": False}}})
    assert_valid("TicketUpdateResponse", updated.json())
    assert_valid("TicketResponse", http.get(f"{api}/tickets/{ticket['id']}.json", timeout=5).json())
    assert_valid("TicketsResponse", http.get(f"{api}/tickets/show_many.json?ids=1,2", timeout=5).json())
    assert_valid("TicketCommentsResponse", http.get(f"{api}/tickets/1/comments.json?page[size]=1", timeout=5).json())
    assert_valid("TicketAuditsResponseNoneCursor", http.get(f"{api}/tickets/1/audits.json", timeout=5).json())
    assert_valid("TagsByObjectIdResponse", http.get(f"{api}/tickets/1/tags.json", timeout=5).json())
    assert_valid("CursorBasedExportIncrementalTicketsResponse",
                 http.get(f"{api}/incremental/tickets/cursor.json?start_time=0", timeout=5).json())
    assert_valid("SearchResponse", http.get(f"{api}/search.json?query=type:ticket", timeout=5).json())
    assert_valid("CurrentUserResponse", http.get(f"{api}/users/me.json", timeout=5).json())
    for uid in (MIA, DANA):
        assert_valid("UserResponse", http.get(f"{api}/users/{uid}.json", timeout=5).json())
    assert_valid("UsersResponse", http.get(f"{api}/users/search.json?query=dana", timeout=5).json())
    assert_valid("GroupsResponse", http.get(f"{api}/groups.json", timeout=5).json())
    assert_valid("GroupResponse", http.get(f"{api}/groups/{TIER_2}.json", timeout=5).json())
    assert_valid("OrganizationResponse", http.get(f"{api}/organizations/360200.json", timeout=5).json())
    assert_valid("TicketFieldsResponse", http.get(f"{api}/ticket_fields.json", timeout=5).json())
    quiet.configure_jobs(delay=0.2)
    job = http.put(f"{api}/tickets/update_many.json", json={"tickets": [{"id": 1, "priority": "low"},
                                                                      {"id": 2, "group_id": 42}]}, timeout=5).json()
    assert_valid("JobStatusResponse", job)
    assert quiet.wait_for_jobs()
    assert_valid("JobStatusResponse", http.get(f"{api}/job_statuses/{job['job_status']['id']}.json", timeout=5).json())


# The published description types the ticket event export's items as ticket *metric* events
# (TicketMetricEventBaseObject: metric, instance_id, time), a schema that fits neither the
# endpoint's own description nor its answers. Relaxation: the envelope is checked against
# ExportIncrementalTicketEventsResponse, and each item against TICKET_EVENT, written from the
# endpoint's description (child events, the Comment child of the comment_events sideload).
_VIA = {"$ref": f"urn:{ZENDESK_SPEC}#/components/schemas/ViaObject"}
_COMMENT_CHILD = {
    "type": "object",
    "required": ["id", "via", "via_reference_id", "event_type"],
    "properties": {
        "id": {"type": "integer"}, "via": _VIA, "via_reference_id": {"nullable": True},
        "type": {"enum": ["Comment"]}, "author_id": {"type": "integer"}, "body": {"type": "string"},
        "html_body": {"type": "string"}, "public": {"type": "boolean"}, "attachments": {"type": "array"},
        "audit_id": {"type": "integer"}, "created_at": {"type": "string", "format": "date-time"},
        "comment_present": {"type": "boolean"}, "comment_public": {"type": "boolean"},
        "event_type": {"enum": ["Comment"]},
    },
}
_CHANGE_CHILD = {
    "type": "object",
    "required": ["id", "via", "via_reference_id", "event_type"],
    "properties": {
        "id": {"type": "integer"}, "via": _VIA, "via_reference_id": {"nullable": True},
        "tags": {"type": "array", "items": {"type": "string"}},
        "added_tags": {"type": "array", "items": {"type": "string"}},
        "removed_tags": {"type": "array", "items": {"type": "string"}},
        "custom_ticket_fields": {"type": "object"}, "event_type": {"enum": ["Create", "Change"]},
    },
    "minProperties": 5,  # the field it sets, beside id, via, via_reference_id and event_type
}
TICKET_EVENT = {
    "type": "object",
    "required": ["id", "ticket_id", "timestamp", "created_at", "updater_id", "via", "event_type", "child_events"],
    "properties": {
        "id": {"type": "integer"}, "ticket_id": {"type": "integer"}, "timestamp": {"type": "integer"},
        "created_at": {"type": "string", "format": "date-time"}, "updater_id": {"type": "integer"},
        "via": _VIA, "system": {"type": "object"}, "event_type": {"enum": ["Audit"]},
        "child_events": {"type": "array", "minItems": 1, "items": {"oneOf": [_COMMENT_CHILD, _CHANGE_CHILD]}},
    },
}


def _valid_ticket_event(instance: Any) -> None:
    validators = pytest.importorskip("openapi_schema_validator")
    validator = validators.OAS30Validator(TICKET_EVENT, registry=_registry())
    errors = [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(instance)]
    assert not errors, "ticket event: " + "\n".join(errors[:10])


def test_the_ticket_event_export_matches_zendesks_description(timed: ZendeskSandbox, clock: Clock) -> None:
    ticket = timed.create_ticket("Spec", "Check me.", priority="high", type="incident",
                                 custom_fields={360000201: "severity_low", 360000202: 3})
    clock.advance(minutes=1)
    timed.update_ticket(ticket["id"], status="pending", additional_tags=["t"], group_id=TIER_2, comment="c",
                        public=False, custom_fields={360000202: 40})
    clock.advance(minutes=2)
    http = session()
    for include in ("", "comment_events"):
        page = http.get(f"{timed.url}/api/v2/incremental/ticket_events.json",
                        params={"start_time": 0, "include": include}, timeout=5).json()
        assert_valid("ExportIncrementalTicketEventsResponse", page)
        assert page["count"] == len(page["ticket_events"]) == 2
        for event in page["ticket_events"]:
            _valid_ticket_event(event)
    # The schema can fail: an update without changes, a change that names no field.
    with pytest.raises(AssertionError, match="non-empty"):
        _valid_ticket_event({**page["ticket_events"][0], "child_events": []})
    bare = {"id": 1, "via": page["ticket_events"][0]["via"], "via_reference_id": None, "event_type": "Change"}
    with pytest.raises(AssertionError, match="child_events"):
        _valid_ticket_event({**page["ticket_events"][0], "child_events": [bare]})
