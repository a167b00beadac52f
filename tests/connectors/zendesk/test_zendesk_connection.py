"""The Zendesk connection, through the real ``zenpy`` client, against the Zendesk sandbox."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from escalier.connectors.zendesk import plugin
from escalier.connectors.zendesk.config import ZendeskConfig
from escalier.connectors.zendesk.connection import NOT_CONFIGURED, ZendeskConnection
from escalier.connectors.zendesk.events import parse_delivery
from escalier.connectors.zendesk.sandbox import ZendeskSandbox
from escalier.core.connector import ActionBatch, Changes, RawEvent
from escalier.core.errors import (
    AuthError,
    EscalierError,
    NotFoundError,
    RejectedError,
    TransientError,
)
from escalier.core.model import Action, ActionKind, ActorRole
from escalier.core.policy import Person

from escalier.plugins import get_plugin_manager

TOKEN = "sandbox-token-4b1e"
ENV = {"ZENDESK_API_TOKEN": TOKEN}
PUT = "PUT /api/v2/tickets/{ticket_id}.json"
GET = "GET /api/v2/tickets/{ticket_id}.json"
BULK = "PUT /api/v2/tickets/update_many.json"


class Clock:
    """A monotonic clock that a test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def sandbox() -> Any:
    box = ZendeskSandbox(token=TOKEN).start()
    yield box
    box.stop()


def config_for(box: ZendeskSandbox, **overrides: Any) -> ZendeskConfig:
    values: dict[str, Any] = {
        "subdomain": box.subdomain,
        "url": box.url,
        "email": box.api_email,
        "token": "${ZENDESK_API_TOKEN}",
        "groups": box.group_ids,
        "service_user_id": box.service_user_id,
        "fields": {"severity": 360000201, "users_affected": 360000202},
        "timeout_seconds": 5,
    }
    values.update(overrides)
    return ZendeskConfig.model_validate(values)


def people_for(box: ZendeskSandbox) -> dict[str, Person]:
    return {
        handle: Person(name=handle.title(), email=f"{handle}@northwind.example",
                       zendesk=box.user_id(handle))
        for handle in ("mia", "jonas", "priya", "tomas")
    }


def connect(box: ZendeskSandbox, environ: dict[str, str] = ENV, **kwargs: Any) -> ZendeskConnection:
    overrides = kwargs.pop("overrides", {})
    return ZendeskConnection(config_for(box, **overrides), "default", environ, people_for(box),
                             **kwargs)


@pytest.fixture
def connection(sandbox: ZendeskSandbox) -> Any:
    conn = connect(sandbox)
    yield conn
    conn.close()


def action(kind: ActionKind, key: str, ticket: str, **fields: Any) -> Action:
    return Action(kind=kind, key=f"zendesk:default:{ticket}:{key}", system="zendesk",
                  ticket_id=ticket, **fields)


def escalation_step(ticket: str, *, maybe_applied: bool = False, public: bool = False) -> ActionBatch:
    actions = (
        action(ActionKind.ASSIGN, "1", ticket, target={"group": "tier-2", "assignee": "jonas"}),
        action(ActionKind.REMOVE_TAGS, "2", ticket, tags=("escalier_tier_1",)),
        action(ActionKind.ADD_TAGS, "3", ticket, tags=("escalier_tier_2",)),
        action(ActionKind.SET_PRIORITY, "4", ticket, priority="urgent"),
        action(ActionKind.COMMENT, "5", ticket, body="Escalated to tier 2.", public=public),
    )
    maybe = frozenset(a.key for a in actions) if maybe_applied else frozenset()
    return ActionBatch("zendesk", "default", ticket, actions, maybe)


def new_calls(box: ZendeskSandbox, before: dict[str, int]) -> dict[str, int]:
    return {k: n - before.get(k, 0) for k, n in box.calls().items() if n != before.get(k, 0)}


def open_ticket(box: ZendeskSandbox, **fields: Any) -> str:
    values: dict[str, Any] = {"priority": "normal", "tags": ["vip", "escalier_tier_1"],
                              "group_id": box.group_ids["tier-1"]}
    values.update(fields)
    return str(box.create_ticket("Export broken for all EU users", **values)["id"])


# --- construction and check ----------------------------------------------------------------------


def test_construction_makes_no_call_and_names_a_missing_variable(sandbox: ZendeskSandbox) -> None:
    conn = connect(sandbox)
    assert sandbox.calls() == {}
    conn.close()
    with pytest.raises(EscalierError, match="environment variable ZENDESK_API_TOKEN is not set"):
        connect(sandbox, environ={})
    with pytest.raises(EscalierError, match="needs a dotted host"):
        connect(sandbox, overrides={"url": "http://localhost:8092"})


def test_check_says_who_we_are_in_one_call(sandbox: ZendeskSandbox, connection: ZendeskConnection) -> None:
    text = connection.check()
    assert f"user {sandbox.service_user_id}" in text and "role admin" in text
    assert "but" not in text
    assert sandbox.calls() == {"GET /api/v2/users/me.json": 1}
    other = connect(sandbox, overrides={"service_user_id": 42})
    assert "service_user_id is 42" in other.check()
    other.close()


def test_oauth_token_is_sent_as_a_bearer_token(sandbox: ZendeskSandbox) -> None:
    conn = connect(sandbox, environ={"ZENDESK_OAUTH": TOKEN},
                   overrides={"token": None, "oauth_token": "${ZENDESK_OAUTH}"})
    assert "role admin" in conn.check()
    conn.close()


def test_bad_credentials_are_an_auth_error(sandbox: ZendeskSandbox) -> None:
    conn = connect(sandbox, environ={"ZENDESK_API_TOKEN": "wrong"})
    with pytest.raises(AuthError, match=r"zendesk/default: GET users/me refused our credentials \(401\)"):
        conn.check()
    conn.close()


# --- one escalation step --------------------------------------------------------------------------


def test_one_escalation_step_is_one_update(sandbox: ZendeskSandbox, connection: ZendeskConnection) -> None:
    ticket = open_ticket(sandbox)
    before = sandbox.calls()
    results = connection.apply_batch(escalation_step(ticket))
    assert new_calls(sandbox, before) == {PUT: 1}
    assert all(r.applied and r.error is None for r in results)
    assert results[0].calls == 1 and sum(r.calls for r in results) == 1
    assert results[4].detail == "updated comment"
    # The Update Ticket endpoint's own budget (100 a minute) is the one reported.
    assert results[0].rate_limit is not None and results[0].rate_limit.limit == 100
    assert results[0].rate_limit.remaining == 99
    upstream = sandbox.ticket(int(ticket))
    assert upstream["group_id"] == sandbox.group_ids["tier-2"]
    assert upstream["assignee_id"] == sandbox.user_id("jonas")
    assert upstream["priority"] == "urgent"
    assert set(upstream["tags"]) == {"vip", "escalier_tier_2"}
    comment = sandbox.comments(int(ticket))[-1]
    assert comment["public"] is False
    assert comment["body"].splitlines()[-1] == f"escalier:action=zendesk:default:{ticket}:5"
    keys = {f"zendesk:default:{ticket}:{n}" for n in range(1, 6)}
    assert keys <= set(sandbox.key_counts()) and sandbox.duplicate_keys() == []


def test_tags_a_person_added_meanwhile_survive(sandbox: ZendeskSandbox, connection: ZendeskConnection) -> None:
    ticket = open_ticket(sandbox)
    sandbox.update_ticket(int(ticket), as_user="mia", additional_tags=["customer_waiting"])
    connection.apply_batch(escalation_step(ticket))
    assert set(sandbox.ticket(int(ticket))["tags"]) == {"vip", "customer_waiting", "escalier_tier_2"}


def test_a_stale_stamp_conflicts_then_reads_and_tries_once_more(
    sandbox: ZendeskSandbox, connection: ZendeskConnection
) -> None:
    ticket = open_ticket(sandbox)
    connection.fetch_ticket(ticket)  # the connection now knows updated_at
    time.sleep(1.05)  # Zendesk's updated_at has whole seconds
    sandbox.update_ticket(int(ticket), as_user="mia", additional_tags=["customer_waiting"])
    before = sandbox.calls()
    results = connection.apply_batch(escalation_step(ticket))
    assert new_calls(sandbox, before) == {PUT: 2, GET: 1}
    assert results[0].calls == 2
    assert all(r.applied for r in results)
    assert "customer_waiting" in sandbox.ticket(int(ticket))["tags"]
    assert sandbox.duplicate_keys() == []
    # The update's answer carried the ticket: the next step sends its fresh stamp, no conflict.
    before = sandbox.calls()
    connection.apply_batch(ActionBatch("zendesk", "default", ticket, (
        action(ActionKind.ADD_TAGS, "6", ticket, tags=("watched",)),)))
    assert new_calls(sandbox, before) == {PUT: 1}


def test_a_conflict_twice_is_transient(sandbox: ZendeskSandbox, connection: ZendeskConnection) -> None:
    ticket = open_ticket(sandbox)
    connection.fetch_ticket(ticket)
    sandbox.inject_fault(409, count=2, method="PUT", path="/api/v2/tickets/*")
    with pytest.raises(TransientError, match="kept conflicting") as caught:
        connection.apply_batch(escalation_step(ticket))
    assert caught.value.status == 409
    assert sandbox.comments(int(ticket))[-1]["body"].startswith("Export broken")


def test_reapplying_maybe_applied_actions_lands_nothing_twice(
    sandbox: ZendeskSandbox, connection: ZendeskConnection
) -> None:
    ticket = open_ticket(sandbox)
    connection.apply_batch(escalation_step(ticket))
    comments = len(sandbox.comments(int(ticket)))
    before = sandbox.calls()
    results = connection.apply_batch(escalation_step(ticket, maybe_applied=True))
    calls = new_calls(sandbox, before)
    assert calls == {GET: 1, "GET /api/v2/tickets/{ticket_id}/comments.json": 1}
    assert [r.detail for r in results] == ["already there"] * 5
    assert not any(r.applied for r in results)
    assert len(sandbox.comments(int(ticket))) == comments
    assert sandbox.duplicate_keys() == []


def test_maybe_applied_sends_only_what_is_missing(
    sandbox: ZendeskSandbox, connection: ZendeskConnection
) -> None:
    ticket = open_ticket(sandbox)
    # An earlier attempt landed the tags, not the rest.
    sandbox.update_ticket(int(ticket), as_user="escalier", additional_tags=["escalier_tier_2"],
                          remove_tags=["escalier_tier_1"])
    results = connection.apply_batch(escalation_step(ticket, maybe_applied=True))
    assert [r.applied for r in results] == [True, False, False, True, True]
    upstream = sandbox.ticket(int(ticket))
    assert upstream["priority"] == "urgent" and upstream["assignee_id"] == sandbox.user_id("jonas")
    assert sandbox.duplicate_keys() == []


# --- notify, partial failures and refusals --------------------------------------------------------


def test_notify_rides_along_as_an_internal_note_only_when_free(
    sandbox: ZendeskSandbox, connection: ZendeskConnection
) -> None:
    ticket = open_ticket(sandbox)
    notify = action(ActionKind.NOTIFY, "7", ticket, channel="mail", body="Tier 2 owns this now.")
    tag = action(ActionKind.ADD_TAGS, "8", ticket, tags=("escalated",))
    before = sandbox.calls()
    results = connection.apply_batch(ActionBatch("zendesk", "default", ticket, (tag, notify)))
    assert new_calls(sandbox, before) == {PUT: 1}
    assert results[1].applied and results[1].detail == "updated internal note"
    note = sandbox.comments(int(ticket))[-1]
    assert note["public"] is False and note["body"].startswith("Tier 2 owns this now.")
    # Alone, or beside a comment of its own, it would cost a call: it is not sent.
    before = sandbox.calls()
    [alone] = connection.apply_batch(ActionBatch("zendesk", "default", ticket, (notify,)))
    assert new_calls(sandbox, before) == {}
    assert not alone.applied and alone.detail == NOT_CONFIGURED and alone.error is None
    step = escalation_step(ticket)
    results = connection.apply_batch(ActionBatch("zendesk", "default", ticket, (*step.actions, notify)))
    assert results[-1].detail == NOT_CONFIGURED


def test_comments_of_both_visibilities_take_an_update_each(
    sandbox: ZendeskSandbox, connection: ZendeskConnection
) -> None:
    ticket = open_ticket(sandbox)
    batch = ActionBatch("zendesk", "default", ticket, (
        action(ActionKind.COMMENT, "1", ticket, body="Internal: paging tier 2.", public=False),
        action(ActionKind.COMMENT, "2", ticket, body="We escalated your ticket.", public=True),
        action(ActionKind.COMMENT, "3", ticket, body="Internal: SLA at risk.", public=False),
    ))
    before = sandbox.calls()
    results = connection.apply_batch(batch)
    assert new_calls(sandbox, before) == {PUT: 2} and results[0].calls == 2
    *_, internal, public = sandbox.comments(int(ticket))
    assert internal["public"] is False and "Internal: SLA at risk." in internal["body"]
    assert public["public"] is True and public["body"].startswith("We escalated your ticket.")


def test_an_action_zendesk_cannot_take_fails_alone(sandbox: ZendeskSandbox, connection: ZendeskConnection) -> None:
    ticket = open_ticket(sandbox)
    batch = ActionBatch("zendesk", "default", ticket, (
        action(ActionKind.ASSIGN, "1", ticket, target={"group": "tier-9"}),
        action(ActionKind.ADD_TAGS, "2", ticket, tags=("escalated",)),
        action(ActionKind.ASSIGN, "3", ticket, target={"assignee": "nobody"}),
    ))
    results = connection.apply_batch(batch)
    assert isinstance(results[0].error, RejectedError) and "tier-9" in str(results[0].error)
    assert results[1].applied and results[1].error is None
    assert isinstance(results[2].error, RejectedError) and "'nobody'" in str(results[2].error)
    assert "escalated" in sandbox.ticket(int(ticket))["tags"]


def test_a_422_is_rejected_with_zendesks_details(sandbox: ZendeskSandbox, connection: ZendeskConnection) -> None:
    ticket = open_ticket(sandbox)
    # Jonas is not in tier 1: Zendesk refuses a group and an assignee that disagree.
    batch = ActionBatch("zendesk", "default", ticket, (
        action(ActionKind.ASSIGN, "1", ticket, target={"group": "tier-1", "assignee": "jonas"}),))
    with pytest.raises(RejectedError) as caught:
        connection.apply_batch(batch)
    assert caught.value.status == 422
    assert "RecordInvalid" in str(caught.value)
    assert "assignee: Assignee: is not a member of the group" in str(caught.value)


def test_a_missing_ticket_is_not_found(sandbox: ZendeskSandbox, connection: ZendeskConnection) -> None:
    with pytest.raises(NotFoundError, match="found nothing"):
        connection.fetch_ticket("999999")
    with pytest.raises(NotFoundError, match="not a Zendesk ticket id"):
        connection.fetch_ticket("SUP-1")
    with pytest.raises(NotFoundError):
        connection.apply_batch(escalation_step("999999"))


def test_a_429_is_transient_with_retry_after_and_nothing_sleeps(
    sandbox: ZendeskSandbox, connection: ZendeskConnection
) -> None:
    ticket = open_ticket(sandbox)
    sandbox.inject_fault(429, retry_after=30, method="PUT")
    started = time.monotonic()
    with pytest.raises(TransientError) as caught:
        connection.apply_batch(escalation_step(ticket))
    assert time.monotonic() - started < 5  # zenpy would have slept 30 seconds
    assert caught.value.status == 429 and caught.value.retry_after == 30
    assert sandbox.duplicate_keys() == []
    # Zendesk's own limit: 2 updates a minute, the third is refused the same way.
    sandbox.ticket_update_limits(per_account=2)
    connection.apply_batch(escalation_step(ticket))
    connection.apply_batch(ActionBatch("zendesk", "default", ticket, (
        action(ActionKind.ADD_TAGS, "9", ticket, tags=("x",)),)))
    with pytest.raises(TransientError) as caught:
        connection.apply_batch(ActionBatch("zendesk", "default", ticket, (
            action(ActionKind.ADD_TAGS, "10", ticket, tags=("y",)),)))
    assert caught.value.status == 429 and caught.value.retry_after is not None
    assert caught.value.retry_after > 0


def test_a_500_and_a_timeout_are_transient(sandbox: ZendeskSandbox) -> None:
    ticket = open_ticket(sandbox)
    conn = connect(sandbox, overrides={"timeout_seconds": 0.5})
    sandbox.inject_fault(500, method="PUT")
    with pytest.raises(TransientError, match="answered 500") as caught:
        conn.apply_batch(escalation_step(ticket))
    assert caught.value.status == 500
    sandbox.inject_fault(delay=2.0, method="GET")
    with pytest.raises(TransientError, match="timed out after 0.5s"):
        conn.fetch_ticket(ticket)
    conn.close()


# --- reading ---------------------------------------------------------------------------------------


def test_fetch_is_cached_for_about_thirty_seconds(sandbox: ZendeskSandbox) -> None:
    clock = Clock()
    conn = connect(sandbox, clock=clock)
    ticket = open_ticket(sandbox, custom_fields={360000201: "severity_critical", 360000202: 300})
    first = conn.fetch_ticket(ticket)
    assert (first.severity, first.users_affected, first.group) == ("critical", 300, "tier-1")
    assert conn.fetch_ticket(ticket) is first
    assert sandbox.calls() == {GET: 1}
    clock.now += 31
    conn.fetch_ticket(ticket)
    assert sandbox.calls() == {GET: 2}
    conn.close()


SHOW_MANY = "GET /api/v2/tickets/show_many.json"


def test_a_pass_of_event_deliveries_reads_its_tickets_in_one_request() -> None:
    box = ZendeskSandbox(token=TOKEN, webhook_mode="events").start()
    conn = connect(box)
    pm = get_plugin_manager(load_entrypoints=False)
    try:
        tickets = [open_ticket(box) for _ in range(3)]
        sent = len(box.delivery_bodies())
        for ticket in tickets:
            box.update_ticket(int(ticket), as_user="mia",
                              custom_fields={360000201: "severity_critical"})
        raws = [RawEvent(source="zendesk", instance="default", body=json.dumps(payload).encode(),
                         headers={}, received_at=datetime.now(UTC))
                for _, payload in box.delivery_bodies()[sent:]]
        assert len(raws) >= 3
        before = box.calls()
        pm.hook.prepare_deliveries_for_connector(raws=raws, config=config_for(box), connection=conn)
        assert new_calls(box, before) == {SHOW_MANY: 1}
        parsed = [pm.hook.parse_event_for_connector(raw=raw, config=config_for(box), connection=conn)
                  for raw in raws]
        # Every parse found its ticket, as of the change, in what the one request read.
        assert new_calls(box, before) == {SHOW_MANY: 1}
        severities = {e.ticket_id: e.ticket.severity for events in parsed for e in events}
        assert severities == {ticket: "critical" for ticket in tickets}
        # A later change of one of them is read again: the cached copy is older than it.
        box.update_ticket(int(tickets[0]), as_user="mia",
                          custom_fields={360000201: "severity_low"})
        _, payload = box.delivery_bodies()[-1]
        [again] = parse_body(box, payload, conn)[:1]
        assert again.ticket.severity == "low" and new_calls(box, before)[GET] == 1
    finally:
        conn.close()
        box.stop()


def test_the_read_ahead_skips_what_it_cannot_parse_and_what_needs_no_read(
    sandbox: ZendeskSandbox, connection: ZendeskConnection
) -> None:
    ticket = open_ticket(sandbox)
    junk = RawEvent(source="zendesk", instance="default", body=b"[1, 2]", headers={},
                    received_at=datetime.now(UTC))
    other = RawEvent(source="jira", instance="default", body=b"{}", headers={},
                     received_at=datetime.now(UTC))
    # A trigger body naming only the ticket needs a read; with one ticket the parse makes it.
    alone = RawEvent(source="zendesk", instance="default",
                     body=json.dumps({"ticket_id": ticket}).encode(), headers={},
                     received_at=datetime.now(UTC))
    plugin.prepare_deliveries_for_connector([junk, other, alone], config_for(sandbox), connection)
    assert sandbox.calls() == {}
    plugin.prepare_deliveries_for_connector([alone], config_for(sandbox), object())
    assert sandbox.calls() == {}
    second = open_ticket(sandbox)
    both = [alone, RawEvent(source="zendesk", instance="default",
                            body=json.dumps({"ticket_id": second}).encode(), headers={},
                            received_at=datetime.now(UTC))]
    plugin.prepare_deliveries_for_connector(both, config_for(sandbox), connection)
    assert sandbox.calls() == {SHOW_MANY: 1}
    assert connection.fetch_ticket(second).id == second and sandbox.calls() == {SHOW_MANY: 1}


def test_the_export_pages_with_its_cursor(sandbox: ZendeskSandbox) -> None:
    conn = connect(sandbox, export_page=2)
    tickets = [open_ticket(sandbox) for _ in range(5)]
    now = datetime.now(UTC)
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        changes = conn.changes_since(cursor, now)
        pages += 1
        seen += [e.ticket_id for e in changes.events]
        cursor = changes.cursor
        if not changes.more:
            break
    # zenpy sends per_page with start_time only; a cursor's page is Zendesk's own size.
    assert pages == 2 and sorted(seen, key=int) == tickets
    assert sandbox.calls() == {"GET /api/v2/incremental/tickets/cursor.json": 2}
    # Nothing new: an empty page from the same place; then only what changed.
    assert conn.changes_since(cursor, now).events == ()
    time.sleep(1.05)
    sandbox.update_ticket(int(tickets[2]), as_user="mia", priority="high")
    changes = conn.changes_since(cursor, now)
    assert [e.ticket_id for e in changes.events] == [tickets[2]]
    assert changes.events[0].ticket is not None and changes.events[0].ticket.priority == "high"
    conn.close()


def parse_body(box: ZendeskSandbox, payload: Any, conn: ZendeskConnection | None = None) -> list[Any]:
    raw = RawEvent(source="zendesk", instance="default", body=json.dumps(payload).encode(),
                   headers={}, received_at=datetime.now(UTC))
    return parse_delivery(raw, config_for(box), fetch=conn.fetch_ticket if conn else None)


@pytest.mark.parametrize("mode", ["events", "trigger"])
def test_a_webhook_and_the_export_name_a_change_alike(mode: str) -> None:
    box = ZendeskSandbox(token=TOKEN, webhook_mode=mode).start()
    conn = connect(box)
    try:
        ticket = open_ticket(box)
        box.update_ticket(int(ticket), as_user="mia", status="pending")
        _, payload = box.delivery_bodies()[-1]
        # As the worker does: a trigger body is completed by a read through the connection.
        [delivered] = [e for e in parse_body(box, payload, conn) if ":v:" in e.id]
        assert delivered.ticket is not None and delivered.ticket.status == "pending"
        assert delivered.actor == str(box.user_id("mia")) and delivered.actor_role is ActorRole.AGENT
        exported = conn.changes_since(None, datetime.now(UTC)).events
        assert [e.id for e in exported] == [delivered.id]
        assert exported[0].ticket == delivered.ticket.model_copy(
            update={"description": exported[0].ticket.description})
    finally:
        conn.close()
        box.stop()


@pytest.mark.parametrize("mode", ["events", "trigger"])
def test_our_own_update_comes_back_as_ours(mode: str) -> None:
    box = ZendeskSandbox(token=TOKEN, webhook_mode=mode).start()
    conn = connect(box)
    try:
        ticket = open_ticket(box)
        sent = len(box.delivery_bodies())
        conn.apply_batch(escalation_step(ticket))
        bodies = box.delivery_bodies()[sent:]
        assert bodies
        for _, payload in bodies:
            assert all(e.actor_role is ActorRole.ESCALIER for e in parse_body(box, payload))
        # A person's next change is theirs, though the latest comment is still ours.
        box.update_ticket(int(ticket), as_user="priya", additional_tags=["looked_at"])
        _, payload = box.delivery_bodies()[-1]
        assert all(e.actor_role is ActorRole.AGENT for e in parse_body(box, payload))
    finally:
        conn.close()
        box.stop()


# --- the bulk sweep ------------------------------------------------------------------------------


def sweep(box: ZendeskSandbox, n: int) -> list[ActionBatch]:
    batches = []
    for _ in range(n):
        ticket = open_ticket(box)
        batches.append(ActionBatch("zendesk", "default", ticket, (
            action(ActionKind.ADD_TAGS, "s1", ticket, tags=("breached",)),
            action(ActionKind.SET_PRIORITY, "s2", ticket, priority="high"),
        )))
    return batches


def test_a_sweep_of_250_tickets_is_three_jobs(sandbox: ZendeskSandbox) -> None:
    conn = connect(sandbox, job_poll=0.02)
    batches = sweep(sandbox, 250)
    before = sandbox.calls()
    results = conn.apply_many(batches)
    calls = new_calls(sandbox, before)
    assert calls[BULK] == 3 and PUT not in calls
    assert len(results) == 250 and all(r.applied and r.error is None for rs in results for r in rs)
    assert all("breached" in t["tags"] and t["priority"] == "high" for t in sandbox.tickets())
    assert sandbox.duplicate_keys() == []
    conn.close()


def test_a_job_that_stops_part_way_fails_the_rest(sandbox: ZendeskSandbox) -> None:
    conn = connect(sandbox, job_poll=0.02)
    batches = sweep(sandbox, 120)
    sandbox.configure_jobs(fail_after=30)
    results = conn.apply_many(batches)
    applied = [rs for rs in results if all(r.applied for r in rs)]
    failed = [rs for rs in results if all(isinstance(r.error, TransientError) for r in rs)]
    # The first job did 30 of its 100; the second job, of 20, did all 20.
    assert len(applied) == 50 and len(failed) == 70
    assert "without a result" in str(failed[0][0].error)
    conn.close()


def test_a_job_that_reports_no_results_is_never_success(sandbox: ZendeskSandbox) -> None:
    conn = connect(sandbox, job_poll=0.02)
    batches = sweep(sandbox, 3)
    sandbox.configure_jobs(empty_results=True)
    results = conn.apply_many(batches)
    assert all(isinstance(r.error, TransientError) for rs in results for r in rs)
    conn.close()


def test_a_ticket_the_job_refuses_is_rejected_with_its_words(sandbox: ZendeskSandbox) -> None:
    conn = connect(sandbox, job_poll=0.02)
    batches = sweep(sandbox, 3)
    sandbox.update_ticket(int(batches[1].ticket_id), as_user="mia", status="closed")
    results = conn.apply_many(batches)
    assert all(r.applied for r in results[0] + results[2])
    assert all(isinstance(r.error, RejectedError) for r in results[1])
    assert "RecordInvalid" in str(results[1][0].error)
    conn.close()


def test_a_sweep_sends_maybe_applied_batches_alone(sandbox: ZendeskSandbox) -> None:
    conn = connect(sandbox, job_poll=0.02)
    batches = sweep(sandbox, 3)
    maybe = batches[0]
    batches[0] = ActionBatch(maybe.system, maybe.instance, maybe.ticket_id, maybe.actions,
                             frozenset(a.key for a in maybe.actions))
    before = sandbox.calls()
    results = conn.apply_many(batches)
    calls = new_calls(sandbox, before)
    assert calls[BULK] == 1 and calls[PUT] == 1 and calls[GET] == 1
    assert all(r.error is None for rs in results for r in rs)
    conn.close()


# --- the plugin ----------------------------------------------------------------------------------


def test_the_plugin_routes_zendesk_work_to_the_connection(sandbox: ZendeskSandbox) -> None:
    pm = get_plugin_manager(load_entrypoints=False)
    [spec] = [s for specs in pm.hook.register_connectors() for s in specs if s.name == "zendesk"]
    assert spec.sandbox is ZendeskSandbox and spec.connect is plugin.connect
    conn = spec.connect(config_for(sandbox), "default", ENV, people_for(sandbox))
    ticket = open_ticket(sandbox)
    raw = RawEvent(source="zendesk", instance="default",
                   body=json.dumps({"ticket_id": ticket}).encode(), headers={},
                   received_at=datetime.now(UTC), delivery_id="inv-1")
    [event] = pm.hook.parse_event_for_connector(raw=raw, config=config_for(sandbox), connection=conn)
    assert event.ticket is not None and event.ticket.group == "tier-1"  # read through the connection
    results = pm.hook.apply_actions_for_connector(batch=escalation_step(ticket), connection=conn)
    assert len(results) == 5 and all(r.applied for r in results)
    single = action(ActionKind.ADD_TAGS, "x", ticket, tags=("single",))
    assert pm.hook.apply_action_for_connector(action=single, connection=conn).applied
    changes = pm.hook.list_changes_for_connector(connection=conn, cursor=None, now=datetime.now(UTC))
    assert isinstance(changes, Changes) and changes.events
    other = RawEvent(source="elsewhere", instance="default", body=b"{}", headers={},
                     received_at=datetime.now(UTC))
    assert pm.hook.parse_event_for_connector(raw=other, config=None, connection=None) is None
    conn.close()


def test_connect_names_an_unknown_instance(sandbox: ZendeskSandbox) -> None:
    config = config_for(sandbox)
    with pytest.raises(EscalierError, match="no such instance"):
        plugin.connect(config, "eu", ENV, {})


def test_an_unreadable_cursor_starts_over(sandbox: ZendeskSandbox, connection: ZendeskConnection) -> None:
    open_ticket(sandbox)
    changes = connection.changes_since("not json", datetime.now(UTC) + timedelta(seconds=1))
    assert len(changes.events) == 1
