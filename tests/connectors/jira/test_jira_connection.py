"""The Jira connection, through the real ``jira`` client, against the Jira sandbox."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from escalier.connectors.jira import plugin
from escalier.connectors.jira.config import JiraConfig, JiraSite
from escalier.connectors.jira.connection import JiraConnection
from escalier.connectors.jira.sandbox import JiraSandbox
from escalier.core.connector import ActionBatch, RateLimit, RawEvent
from escalier.core.errors import (
    AuthError,
    EscalierError,
    NotFoundError,
    RejectedError,
    TransientError,
)
from escalier.core.model import Action, ActionKind, EventKind
from escalier.core.policy import Person
from escalier.plugins import get_plugin_manager

TOKEN = "sandbox-token-7f3a"
ENV = {"JIRA_API_TOKEN": TOKEN}
API = "/rest/api/2/issue/{issueIdOrKey}"


class Clock:
    """The sandbox's clock: the real time until a test sets ``now``."""

    def __init__(self) -> None:
        self.now: datetime | None = None

    def __call__(self) -> datetime:
        return self.now or datetime.now(UTC)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture(params=["cloud", "datacenter"])
def sandbox(request: pytest.FixtureRequest, clock: Clock) -> Any:
    # A zone behind UTC: JQL dates are read in the API user's zone, and a search that wrote UTC
    # times would start hours late and miss recent changes.
    box = JiraSandbox(
        deployment=request.param, token=TOKEN, time_zone="America/New_York", clock=clock
    ).start()
    yield box
    box.stop()


def site_for(box: JiraSandbox, **overrides: Any) -> JiraSite:
    values: dict[str, Any] = {
        "url": box.url,
        "deployment": box.deployment,
        "token": "${JIRA_API_TOKEN}",
        "components": ["Support L1", "Support L2"],
        "service_desk_projects": ["SUP"],
        "jql": "project in (SUP, ENG)",
        "timeout_seconds": 5,
    }
    if box.cloud:
        values["user"] = box.api_user
    values.update(overrides)
    return JiraSite.model_validate(values)


def people_for(box: JiraSandbox) -> dict[str, Person]:
    ident = "accountId" if box.cloud else "name"
    return {
        handle: Person(
            name=handle.title(), email=f"{handle}@northwind.example", jira=box.user(handle)[ident]
        )
        for handle in ("mia", "jonas", "priya")
    }


def connect(box: JiraSandbox, environ: dict[str, str] = ENV, **overrides: Any) -> JiraConnection:
    return JiraConnection(site_for(box, **overrides), "default", environ, people_for(box))


@pytest.fixture
def connection(sandbox: JiraSandbox) -> Any:
    conn = connect(sandbox)
    yield conn
    conn.close()


def action(kind: ActionKind, key: str, ticket: str, **fields: Any) -> Action:
    return Action(
        kind=kind, key=f"jira:default:{ticket}:{key}", system="jira", ticket_id=ticket, **fields
    )


def escalation_step(
    ticket: str, *, maybe_applied: bool = False, public: bool = False
) -> ActionBatch:
    actions = (
        action(ActionKind.ASSIGN, "1", ticket,
               target={"assignee": "mia", "component": "Support L2", "labels": ["tier-2"]}),
        action(ActionKind.REMOVE_TAGS, "2", ticket, tags=("tier-1",)),
        action(ActionKind.ADD_TAGS, "3", ticket, tags=("escalated",)),
        action(ActionKind.SET_PRIORITY, "4", ticket, priority="urgent"),
        action(ActionKind.COMMENT, "5", ticket, body="Escalated to tier 2.", public=public),
    )
    maybe = frozenset(a.key for a in actions) if maybe_applied else frozenset()
    return ActionBatch("jira", "default", ticket, actions, maybe)


def new_calls(box: JiraSandbox, before: dict[str, int]) -> dict[str, int]:
    return {k: n - before.get(k, 0) for k, n in box.calls().items() if n != before.get(k, 0)}


def user_ref(box: JiraSandbox, user: dict[str, Any] | None) -> str | None:
    return None if user is None else user.get("accountId" if box.cloud else "name")


# --- construction ------------------------------------------------------------------------------


def test_construction_makes_no_call_and_names_a_missing_variable(sandbox: JiraSandbox) -> None:
    conn = connect(sandbox)
    assert sandbox.calls() == {}
    conn.close()
    missing = "jira/default: environment variable JIRA_API_TOKEN is not set"
    with pytest.raises(EscalierError, match=missing):
        connect(sandbox, environ={})


def test_cloud_needs_a_user_where_data_center_takes_a_bare_token(sandbox: JiraSandbox) -> None:
    if sandbox.cloud:
        with pytest.raises(EscalierError, match="needs 'user'"):
            connect(sandbox, user=None)
    else:
        # A personal access token, sent as a bearer token.
        conn = connect(sandbox, user=None)
        assert conn.check().startswith("Jira Data Center")
        conn.close()


# --- one escalation step -----------------------------------------------------------------------


def test_an_escalation_step_costs_two_calls_and_lands_every_change(
    sandbox: JiraSandbox, connection: JiraConnection
) -> None:
    key = sandbox.create_issue("SUP", "Checkout fails", labels=["tier-1", "vip"],
                               components=["Support L1", "Billing"])["key"]
    batch = escalation_step(key)
    sandbox.rate_limit(100, 60)
    results = connection.apply_batch(batch)

    assert [r.applied for r in results] == [True] * 5
    assert all(r.error is None for r in results)
    # Each result carries the budget its call left.
    assert results[0].rate_limit == RateLimit(limit=100, remaining=99)
    assert results[4].rate_limit == RateLimit(limit=100, remaining=98)
    assert sandbox.calls() == {f"PUT {API}": 1, f"POST {API}/comment": 1}
    assert sandbox.key_counts() == {a.key: 1 for a in batch.actions}
    fields = sandbox.issue(key)["fields"]
    assert set(fields["labels"]) == {"vip", "tier-2", "escalated"}
    # The tier's component replaces the other tier component; the one a person set stays.
    assert {c["name"] for c in fields["components"]} == {"Support L2", "Billing"}
    assert user_ref(sandbox, fields["assignee"]) == people_for(sandbox)["mia"].jira
    assert fields["priority"]["name"] == "Highest"
    comment = sandbox.comments(key)[-1]
    assert comment["body"].splitlines()[-1] == f"escalier:action={batch.actions[4].key}"
    assert comment["body"].startswith("Escalated to tier 2.")
    assert comment["properties"] == [{"key": "sd.public.comment", "value": {"internal": True}}]
    assert comment["jsdPublic"] is False


def test_internal_comments_carry_the_service_desk_property_only_in_service_desk_projects(
    sandbox: JiraSandbox, connection: JiraConnection
) -> None:
    eng = sandbox.create_issue("ENG", "Crash on save")["key"]
    sup = sandbox.create_issue("SUP", "Cannot log in")["key"]
    connection.apply(action(ActionKind.COMMENT, "1", eng, body="Internal note", public=False))
    connection.apply(action(ActionKind.COMMENT, "1", sup, body="Public reply", public=True))

    assert sandbox.comments(eng)[-1]["properties"] == []
    assert "jsdPublic" not in sandbox.comments(eng)[-1]
    assert sandbox.comments(sup)[-1]["properties"] == []
    assert sandbox.comments(sup)[-1]["jsdPublic"] is True


def test_a_batch_applied_again_as_maybe_applied_lands_nothing_twice_for_one_read(
    sandbox: JiraSandbox, connection: JiraConnection
) -> None:
    key = sandbox.create_issue("SUP", "Checkout fails", labels=["tier-1"])["key"]
    connection.apply_batch(escalation_step(key))
    before = sandbox.calls()

    again = connection.apply_batch(escalation_step(key, maybe_applied=True))

    assert [r.applied for r in again] == [False] * 5
    assert all(r.error is None and r.detail == "already there" for r in again)
    assert new_calls(sandbox, before) == {f"GET {API}": 1}
    assert sandbox.duplicate_keys() == []
    assert len(sandbox.comments(key)) == 1


def test_maybe_applied_actions_that_did_not_land_are_written_once(
    sandbox: JiraSandbox, connection: JiraConnection
) -> None:
    key = sandbox.create_issue("SUP", "Checkout fails", labels=["tier-1"])["key"]
    batch = escalation_step(key)
    # Only the labels landed before a crash: the rest must still be written, and only once.
    connection.apply_batch(ActionBatch("jira", "default", key, batch.actions[1:3]))
    before = sandbox.calls()

    results = connection.apply_batch(escalation_step(key, maybe_applied=True))

    assert [r.applied for r in results] == [True, False, False, True, True]
    assert new_calls(sandbox, before) == {
        f"GET {API}": 1, f"PUT {API}": 1, f"POST {API}/comment": 1,
    }
    assert sandbox.duplicate_keys() == []
    assert sandbox.issue(key)["fields"]["priority"]["name"] == "Highest"


# --- errors ------------------------------------------------------------------------------------


def test_a_429_is_transient_with_the_upstreams_retry_after_and_nothing_lands(
    sandbox: JiraSandbox, connection: JiraConnection
) -> None:
    key = sandbox.create_issue("SUP", "Slow", labels=["tier-1"])["key"]
    sandbox.inject_fault(429, retry_after=7, method="PUT")
    with pytest.raises(TransientError) as caught:
        connection.apply_batch(escalation_step(key))
    assert caught.value.status == 429
    assert caught.value.retry_after == 7.0
    # The client's own retries are off: one attempt, and the comment was never tried.
    assert sandbox.calls() == {f"PUT {API}": 1}
    assert sandbox.issue(key)["fields"]["labels"] == ["tier-1"]


def test_a_503_is_transient(sandbox: JiraSandbox, connection: JiraConnection) -> None:
    key = sandbox.create_issue("SUP", "Down")["key"]
    sandbox.inject_fault(503)
    with pytest.raises(TransientError) as caught:
        connection.apply(action(ActionKind.ADD_TAGS, "1", key, tags=("x",)))
    assert caught.value.status == 503


def test_a_slow_answer_is_a_transient_timeout(sandbox: JiraSandbox) -> None:
    conn = connect(sandbox, timeout_seconds=0.3)
    key = sandbox.create_issue("SUP", "Slow")["key"]
    sandbox.inject_fault(delay=1.0)
    with pytest.raises(TransientError, match="timed out after 0.3s"):
        conn.apply(action(ActionKind.ADD_TAGS, "1", key, tags=("x",)))
    conn.close()


def test_a_wrong_token_is_an_auth_error_that_never_shows_a_token(sandbox: JiraSandbox) -> None:
    key = sandbox.create_issue("SUP", "Locked out")["key"]
    conn = connect(sandbox, environ={"JIRA_API_TOKEN": "wrong-token-123"})
    with pytest.raises(AuthError) as caught:
        conn.apply_batch(escalation_step(key))
    assert caught.value.status == 401
    text = f"{caught.value} {caught.value!r}"
    assert "wrong-token-123" not in text and TOKEN not in text
    conn.close()


def test_an_unknown_issue_is_not_found(sandbox: JiraSandbox, connection: JiraConnection) -> None:
    with pytest.raises(NotFoundError) as caught:
        connection.apply_batch(escalation_step("SUP-999"))
    assert caught.value.status == 404
    with pytest.raises(NotFoundError):
        connection.fetch_ticket("SUP-999")


def test_a_refused_edit_is_rejected_with_jiras_message(sandbox: JiraSandbox) -> None:
    conn = connect(sandbox, priorities={"urgent": "Blocker"})
    key = sandbox.create_issue("SUP", "Odd priority")["key"]
    with pytest.raises(RejectedError) as caught:
        conn.apply_batch(escalation_step(key))
    assert caught.value.status == 400
    assert "Priority name 'Blocker' is not valid" in str(caught.value)
    assert sandbox.key_counts() == {}
    conn.close()


def test_a_failure_after_the_edit_landed_gives_partial_results(
    sandbox: JiraSandbox, connection: JiraConnection
) -> None:
    key = sandbox.create_issue("SUP", "Half done", labels=["tier-1"])["key"]
    step = escalation_step(key)
    watch = action(ActionKind.ADD_WATCHERS, "6", key, watchers=(people_for(sandbox)["jonas"].jira,))
    batch = ActionBatch("jira", "default", key, (*step.actions, watch))
    sandbox.inject_fault(500, method="POST", path="*/comment")

    results = connection.apply_batch(batch)

    assert [r.applied for r in results[:4]] == [True] * 4
    assert all(r.error is None for r in results[:4])
    assert isinstance(results[4].error, TransientError) and results[4].error.status == 500
    # After a transient failure the rest is not tried: it waits for the same retry.
    assert results[5].error is results[4].error
    assert f"POST {API}/watchers" not in sandbox.calls()
    assert "escalated" in sandbox.issue(key)["fields"]["labels"]

    before = sandbox.calls()
    comment = step.actions[4]
    retried = connection.apply_batch(
        ActionBatch("jira", "default", key, (comment, watch), frozenset({comment.key}))
    )
    assert [r.applied for r in retried] == [True, True]
    assert new_calls(sandbox, before) == {
        f"GET {API}": 1, f"POST {API}/comment": 1, f"POST {API}/watchers": 1,
    }
    assert sandbox.duplicate_keys() == []


# --- other actions -----------------------------------------------------------------------------


def test_watchers_a_transition_and_a_notification(
    sandbox: JiraSandbox, connection: JiraConnection
) -> None:
    key = sandbox.create_issue("SUP", "Close me")["key"]
    people = people_for(sandbox)
    batch = ActionBatch("jira", "default", key, (
        action(ActionKind.ADD_WATCHERS, "1", key, watchers=(people["jonas"].jira,)),
        action(ActionKind.TRANSITION, "2", key, status="closed"),
        action(ActionKind.NOTIFY, "3", key, channel="jira", body="SLA at risk\nPlease look.",
               recipients=("priya@northwind.example", "nobody@elsewhere.example")),
        action(ActionKind.NOTIFY, "4", key, channel="jira", body="To whoever is on it",
               recipients=("nobody@elsewhere.example",)),
    ))
    results = connection.apply_batch(batch)

    assert all(r.applied for r in results)
    assert people["jonas"].jira in sandbox.watchers(key)
    # "closed" finds the transition to the workflow's done status.
    assert sandbox.issue(key)["fields"]["status"]["name"] == "Done"
    first, second = sandbox.notifications()[-2:]
    ident = "accountId" if sandbox.cloud else "name"
    assert first["to"] == {"users": [{ident: people["priya"].jira}]}
    assert first["subject"] == "SLA at risk"
    assert second["to"] == {"assignee": True, "watchers": True}
    assert sandbox.calls()[f"GET {API}/transitions"] == 1


def test_a_transition_nobody_can_take_is_rejected(
    sandbox: JiraSandbox, connection: JiraConnection
) -> None:
    key = sandbox.create_issue("SUP", "Stuck")["key"]
    with pytest.raises(RejectedError, match="no transition named or leading to 'Launched'"):
        connection.apply(action(ActionKind.TRANSITION, "1", key, status="Launched"))


# --- reading -----------------------------------------------------------------------------------


def test_fetch_ticket_reads_once_per_burst_and_again_after_a_write(sandbox: JiraSandbox) -> None:
    seconds = [1000.0]
    conn = JiraConnection(
        site_for(sandbox), "default", ENV, people_for(sandbox), clock=lambda: seconds[0]
    )
    issue = sandbox.create_issue("SUP", "Burst", priority="High", labels=["vip"])
    ticket = conn.fetch_ticket(issue["key"])
    assert conn.fetch_ticket(issue["id"]) is ticket
    assert conn.fetch_ticket(issue["key"]) is ticket
    assert sandbox.calls() == {f"GET {API}": 1}
    assert ticket.id == issue["key"] and ticket.priority == "high" and ticket.tags == ("vip",)

    conn.apply(action(ActionKind.ADD_TAGS, "1", issue["key"], tags=("escalated",)))
    assert "escalated" in conn.fetch_ticket(issue["id"]).tags
    assert sandbox.calls()[f"GET {API}"] == 2

    seconds[0] += 29
    conn.fetch_ticket(issue["key"])
    assert sandbox.calls()[f"GET {API}"] == 2
    seconds[0] += 2
    conn.fetch_ticket(issue["key"])
    assert sandbox.calls()[f"GET {API}"] == 3
    conn.close()


def test_check_says_which_site_version_and_account(
    sandbox: JiraSandbox, connection: JiraConnection
) -> None:
    text = connection.check()
    me = sandbox.user("escalier")
    if sandbox.cloud:
        expected = (
            f"Jira Cloud at {sandbox.url} (1001.0.0-SNAPSHOT) "
            f"as Escalier (accountId {me['accountId']})"
        )
    else:
        expected = f"Jira Data Center at {sandbox.url} (10.3.4) as Escalier (username escalier)"
    assert text == expected
    assert sandbox.calls() == {"GET /rest/api/2/serverInfo": 1, "GET /rest/api/2/myself": 1}


def test_check_with_a_wrong_token_is_an_auth_error(sandbox: JiraSandbox) -> None:
    conn = connect(sandbox, environ={"JIRA_API_TOKEN": "nope"})
    with pytest.raises(AuthError):
        conn.check()
    conn.close()


def test_changes_since_looks_back_an_hour_in_the_users_time_zone(
    sandbox: JiraSandbox, clock: Clock
) -> None:
    now = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)
    clock.now = now - timedelta(minutes=90)
    old = sandbox.create_issue("SUP", "Old news")["key"]
    clock.now = now - timedelta(minutes=20)
    fresh = sandbox.create_issue("SUP", "Fresh")["key"]
    clock.now = now - timedelta(minutes=10)
    sandbox.update_issue(fresh, priority="High", as_user="mia")
    sandbox.add_comment(fresh, "Any news?", as_user="dana")
    conn = connect(sandbox)

    changes = conn.changes_since(None, now)

    found = {e.ticket_id for e in changes.events}
    # Written in UTC and read in New York time, the window would start five hours late: nothing.
    assert found == {fresh}
    kinds = {e.kind for e in changes.events}
    assert EventKind.CREATED in kinds and EventKind.COMMENTED in kinds
    assert changes.more is False and changes.cursor
    assert json.loads(changes.cursor)["since"].startswith("2026-03-02T11:50")

    clock.now = now + timedelta(minutes=5)
    sandbox.add_comment(old, "Still broken", as_user="dana")
    later = conn.changes_since(changes.cursor, now + timedelta(minutes=6))
    assert {e.ticket_id for e in later.events} >= {old}
    assert any(e.kind is EventKind.COMMENTED and e.ticket_id == old for e in later.events)
    # The minute of overlap may bring an event back; it carries the same id as before.
    first_ids = {e.id for e in changes.events}
    assert all(e.id in first_ids for e in later.events if e.ticket_id == fresh)
    search = "GET /rest/api/2/search/jql" if sandbox.cloud else "GET /rest/api/2/search"
    assert sandbox.calls()[search] == 2
    assert sandbox.calls()["GET /rest/api/2/myself"] == 1
    conn.close()


def test_changes_since_pages_fifty_issues_at_a_time(sandbox: JiraSandbox, clock: Clock) -> None:
    now = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)
    keys = []
    for n in range(60):
        clock.now = now - timedelta(minutes=30) + timedelta(seconds=10 * n)
        keys.append(sandbox.create_issue("ENG", f"Issue {n}")["key"])
    conn = connect(sandbox)

    first = conn.changes_since(None, now)
    assert first.more is True
    assert len({e.ticket_id for e in first.events}) == 50
    second = conn.changes_since(first.cursor, now)
    assert second.more is False
    assert {e.ticket_id for e in (*first.events, *second.events)} == set(keys)
    search = "GET /rest/api/2/search/jql" if sandbox.cloud else "GET /rest/api/2/search"
    assert sandbox.calls()[search] == 2
    conn.close()


# --- the plugin --------------------------------------------------------------------------------


def test_the_plugin_connects_each_instance(sandbox: JiraSandbox) -> None:
    site = site_for(sandbox).model_dump(mode="json", by_alias=True)
    eu_site = {**site, "jql": "project = ENG"}
    config = JiraConfig.model_validate({**site, "instances": {"eu": eu_site}})
    spec = next(s for s in plugin.register_connectors() if s.name == "jira")
    assert spec.sandbox is JiraSandbox

    default = spec.connect(config, "default", ENV, people_for(sandbox))
    eu = spec.connect(config, "eu", ENV, people_for(sandbox))
    assert isinstance(default, JiraConnection) and isinstance(eu, JiraConnection)
    assert (default.instance, default.site.jql) == ("default", "project in (SUP, ENG)")
    assert (eu.instance, eu.site.jql) == ("eu", "project = ENG")
    with pytest.raises(EscalierError, match="no such instance"):
        spec.connect(config, "us", ENV, people_for(sandbox))
    assert sandbox.calls() == {}


def test_the_hooks_route_jira_work_to_the_connection(
    sandbox: JiraSandbox, connection: JiraConnection
) -> None:
    pm = get_plugin_manager(load_entrypoints=False)
    for name in ("apply_actions_for_connector", "apply_action_for_connector",
                 "parse_event_for_connector", "list_changes_for_connector"):
        impls = getattr(pm.hook, name).get_hookimpls()
        ours = [i for i in impls if i.plugin_name.endswith("jira.plugin")]
        assert ours and ours[0].trylast, name

    key = sandbox.create_issue("SUP", "Via hooks", labels=["tier-1"])["key"]
    results = pm.hook.apply_actions_for_connector(batch=escalation_step(key), connection=connection)
    assert len(results) == 5 and all(r.applied for r in results)
    single = pm.hook.apply_action_for_connector(
        action=action(ActionKind.ADD_TAGS, "9", key, tags=("one",)), connection=connection
    )
    assert single.applied
    changes = pm.hook.list_changes_for_connector(
        connection=connection, cursor=None, now=datetime.now(UTC)
    )
    assert key in {e.ticket_id for e in changes.events}

    # Not Jira's: each of our hooks declines.
    assert plugin.apply_actions_for_connector(escalation_step(key), object()) is None
    tag = action(ActionKind.ADD_TAGS, "9", key, tags=("x",))
    assert plugin.apply_action_for_connector(tag, object()) is None
    assert plugin.list_changes_for_connector(object(), None, datetime.now(UTC)) is None
    other = RawEvent(
        source="zendesk", instance="default", body=b"{}", headers={}, received_at=datetime.now(UTC)
    )
    assert plugin.parse_event_for_connector(other, None, connection) is None


def test_a_partial_comment_delivery_is_completed_with_one_read(
    sandbox: JiraSandbox, connection: JiraConnection
) -> None:
    key = sandbox.create_issue("SUP", "Needs a read")["key"]
    sandbox.add_comment(key, "Customer is waiting", as_user="dana")
    payload = next(p for e, p in reversed(sandbox.delivery_bodies()) if e == "comment_created")
    raw = RawEvent(source="jira", instance="default", body=json.dumps(payload).encode(), headers={},
                   received_at=datetime.now(UTC))
    config = JiraConfig.model_validate(site_for(sandbox).model_dump(mode="json", by_alias=True))

    found = plugin.parse_event_for_connector(raw, config, connection)
    found_again = plugin.parse_event_for_connector(raw, config, connection)

    assert found and all(e.ticket_id == key for e in found)
    assert any(e.kind is EventKind.COMMENTED for e in found)
    assert [e.id for e in found_again] == [e.id for e in found]
    # Two deliveries of one burst cost one read of the issue.
    assert sandbox.calls() == {f"GET {API}": 1}


def test_a_watcher_without_a_jira_account_is_skipped_not_a_failure(sandbox: JiraSandbox) -> None:
    key = sandbox.create_issue("SUP", "Watch me")["key"]
    people = {**people_for(sandbox), "elena": Person(name="Elena", email="elena@northwind.example")}
    connection = JiraConnection(site_for(sandbox), "default", ENV, people)
    try:
        [mixed] = connection.apply_batch(ActionBatch("jira", "default", key, (
            action(ActionKind.ADD_WATCHERS, "1", key, watchers=("elena", people["jonas"].jira)),)))
        [alone] = connection.apply_batch(ActionBatch("jira", "default", key, (
            action(ActionKind.ADD_WATCHERS, "2", key, watchers=("elena",)),)))
    finally:
        connection.close()
    assert mixed.error is None and mixed.applied and "no Jira account for elena" in mixed.detail
    assert people["jonas"].jira in sandbox.watchers(key)
    assert alone.error is None and not alone.applied and alone.detail == "no Jira account for elena"
