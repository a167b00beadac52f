"""``escalier backtest --from jira`` on the Jira sandbox's history, read with the real ``jira`` client.

People work four issues on a clock the test moves (nothing of Escalier runs meanwhile); then two
policies are backtested on that history. Each is checked against the engine driven here ticket by
ticket on the same events, and the history's events against the webhooks the same changes sent.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from escalier.connectors.jira import events as jira_events
from escalier.connectors.jira.config import JiraConfig
from escalier.connectors.jira.sandbox import JiraSandbox
from escalier.core.connector import DeliverySkipped, RawEvent
from escalier.core.model import EventKind

from escalier import backtest

from backtest_support import TOKEN, Clock, engine_moves, load, report_moves, run_json, write_policy

ENVIRON = {"JIRA_API_TOKEN": TOKEN}
START = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)  # a Monday

POLICY = """\
name: {name}
default_calendar: always
calendars:
  always: {{timezone: UTC, hours: 24x7}}
people:
  mia: {{name: Mia Hoffmann, email: mia@northwind.example, jira: "{mia}"}}
  priya: {{name: Priya Raman, email: priya@northwind.example, jira: "{priya}"}}
  tomas: {{name: Tomas Novak, email: tomas@northwind.example, jira: "{tomas}"}}
connectors:
  jira:
    url: {url}
    deployment: {deployment}
{user}    token: ${{JIRA_API_TOKEN}}
    project: SUP
    components: [Support L1, Support L2, Platform]
    service_account: "{service_account}"
    service_desk_projects: [SUP]
    fields: {{severity: customfield_10050, users_affected: customfield_10051}}
    timeout_seconds: 5
tiers:
  - level: 1
    name: General support
    targets: {{jira: {{component: Support L1, assignee: mia}}}}
    sla: {{resolve: 8h}}
    raci: {{accountable: [mia]}}
  - level: 2
    name: Specialists
    targets: {{jira: {{component: Support L2, assignee: priya}}}}
    sla: {{resolve: 4h}}
    raci: {{accountable: [priya]}}
  - level: 3
    name: Critical response
    targets: {{jira: {{component: Platform, assignee: tomas}}}}
    sla: {{resolve: 2h}}
    raci: {{accountable: [tomas]}}
severities: [critical, high, medium, low]
impact:
  - {{name: widespread, users_at_least: 50}}
  - {{name: single, users_at_least: 0}}
notifications: {{repeat_every: 8h, max_repeats: 1}}
criteria:
  - id: stale
    when: {{tier: [1], unresolved_for: {stale}}}
    then: {{to_tier: 2}}
matrix:
  critical: {{widespread: {{tier: 3, priority: urgent}}, single: {{tier: 2, priority: high}}}}
  high: {{widespread: {{tier: 2, priority: high}}, single: {{tier: 1, priority: normal}}}}
  medium: {{widespread: {{tier: 1, priority: normal}}, single: {{tier: 1, priority: normal}}}}
  low: {{widespread: {{tier: 1}}, single: {{tier: 1}}}}
"""


def policies(tmp_path: Path, sandbox: JiraSandbox, deployment: str) -> tuple[Path, Path]:
    key = "accountId" if deployment == "cloud" else "name"
    ids = {h: sandbox.user(h)[key] for h in ("mia", "priya", "tomas")}
    common = dict(
        url=sandbox.url, deployment=deployment, service_account=sandbox.service_account,
        user="    user: escalier@example.com\n" if deployment == "cloud" else "", **ids,
    )
    fast = write_policy(tmp_path, "fast.yaml", POLICY.format(name="Fast", stale="30m", **common))
    slow = write_policy(tmp_path, "slow.yaml", POLICY.format(name="Slow", stale="2h", **common))
    return fast, slow


def work_the_day(sandbox: JiraSandbox, clock: Clock) -> dict[str, str]:
    """Four issues, worked by people; returns their keys by role in the story."""
    severity = lambda v: {"customfield_10050": {"value": v}}  # noqa: E731
    keys: dict[str, str] = {}
    keys["ignored"] = sandbox.create_issue("SUP", "Export fails", components=["Support L1"],
                                           fields=severity("medium"), as_user="dana")["key"]
    clock.advance(minutes=5)
    keys["raised"] = sandbox.create_issue("SUP", "Checkout down for one store", components=["Support L1"],
                                          fields=severity("high"), as_user="dana")["key"]
    clock.advance(minutes=5)
    keys["quick"] = sandbox.create_issue("SUP", "How do I export?", components=["Support L1"],
                                         fields=severity("low"), as_user="dana")["key"]
    clock.advance(minutes=5)
    keys["moved"] = sandbox.create_issue("SUP", "Sync stalls nightly", components=["Support L1"],
                                         fields=severity("medium"), as_user="dana")["key"]
    clock.advance(minutes=5)  # 08:20
    sandbox.add_comment(keys["quick"], "Use Settings > Export.", as_user="mia")
    clock.advance(minutes=1)
    sandbox.transition(keys["quick"], "Done", as_user="mia")
    clock.advance(minutes=9)  # 08:30: a person raises the priority of the checkout issue
    sandbox.update_issue(keys["raised"], priority="High", labels=["checkout"], as_user="mia")
    clock.advance(minutes=45)  # 09:15: a person moves the sync issue to the specialists
    sandbox.update_issue(keys["moved"], components=["Support L2"], as_user="mia")
    sandbox.assign(keys["moved"], "priya", as_user="mia")
    clock.advance(minutes=30)  # 09:45
    sandbox.transition(keys["raised"], "Done", as_user="priya")
    clock.advance(hours=2)  # 11:45
    sandbox.add_comment(keys["ignored"], "Looking into it now.", as_user="jonas")
    clock.advance(hours=1)  # 12:45
    sandbox.transition(keys["ignored"], "Done", as_user="jonas")
    clock.advance(minutes=1)
    sandbox.transition(keys["moved"], "Done", as_user="priya")
    clock.advance(minutes=10)
    sandbox.transition(keys["moved"], "Reopen", as_user="dana")
    clock.advance(hours=1)
    return keys


@pytest.fixture(params=["cloud", "datacenter"])
def day(request, tmp_path):
    clock = Clock(START)
    sandbox = JiraSandbox(deployment=request.param, token=TOKEN, clock=clock.now).start()
    try:
        keys = work_the_day(sandbox, clock)
        fast, slow = policies(tmp_path, sandbox, request.param)
        yield sandbox, clock, keys, fast, slow
    finally:
        sandbox.stop()


def histories(policy_path: Path, clock: Clock) -> dict[str, list]:
    policy = load(policy_path)
    found = backtest.read_history(
        policy, "jira", since=START - timedelta(hours=1), until=clock.now(), environ=ENVIRON,
    )
    return {events[0].ticket_id: events for events in found}


def test_history_events_are_the_webhooks_events_with_the_ticket_as_it_was(day):
    sandbox, clock, keys, fast, _ = day
    read = histories(fast, clock)
    assert sorted(read) == sorted(keys.values())
    by_id = {e.id: e for events in read.values() for e in events}
    site = JiraConfig.model_validate(load(fast).connectors["jira"])
    compared = 0
    for name, payload in sandbox.delivery_bodies():
        raw = RawEvent(source="jira", instance="default", body=json.dumps(payload).encode(),
                       headers={}, received_at=clock.now())
        try:
            delivered = jira_events.parse_delivery(raw, site)
        except DeliverySkipped:
            continue
        for event in delivered:
            assert event.id in by_id, f"{name}: {event.id} is not in the history"
            mine = by_id[event.id]
            assert (mine.kind, mine.occurred_at, mine.actor, mine.actor_role) == (
                event.kind, event.occurred_at, event.actor, event.actor_role)
            if event.ticket is not None:
                fields = ("status", "status_category", "priority", "severity", "tags", "group", "assignee")
                assert {f: getattr(mine.ticket, f) for f in fields} == {
                    f: getattr(event.ticket, f) for f in fields}, event.id
                compared += 1
    assert compared >= 10
    # The opening carries the issue as it was created, not as it ended.
    opening = read[keys["raised"]][0]
    assert opening.kind is EventKind.CREATED
    assert (opening.ticket.priority, opening.ticket.status_category.value) == ("normal", "new")
    assert read[keys["raised"]][-1].ticket.is_resolved


def test_two_policies_side_by_side_match_the_engine_ticket_by_ticket(day):
    sandbox, clock, keys, fast, slow = day
    until = clock.now()
    status, report, err = run_json(
        [str(fast), "--from", "jira", "--since", "1d", "--against", str(slow)],
        environ=ENVIRON, now=until,
    )
    assert status == 0, err
    assert "tickets replayed" in err
    assert report["tickets"] == 4
    read = histories(fast, clock)
    fast_policy, slow_policy = load(fast), load(slow)
    expected_differing = set()
    for ticket_id, events in read.items():
        if engine_moves(fast_policy, events, until) != engine_moves(slow_policy, events, until):
            expected_differing.add(ticket_id)
    shown = {d["ticket"]: d for d in report["differences"]["shown"]}
    # The quick one closed in 11 minutes under both; the others escalated at different times.
    assert set(shown) == expected_differing == {keys["ignored"], keys["raised"], keys["moved"]}
    for ticket_id, difference in shown.items():
        assert report_moves(difference["policy"]) == engine_moves(fast_policy, read[ticket_id], until)
        assert report_moves(difference["against"]) == engine_moves(slow_policy, read[ticket_id], until)
    assert report["differences"]["same"] == 1
    assert shown[keys["raised"]]["against"]["moves"] == []  # closed at 09:45, before 2h
    # The ignored issue: the fast policy escalates it 30 minutes after it opened, the slow one at 2h.
    ignored = shown[keys["ignored"]]
    assert [(m["at"], m["to_tier"]) for m in ignored["policy"]["moves"]] == [("2026-03-02T08:30:00+00:00", 2)]
    assert [(m["at"], m["to_tier"]) for m in ignored["against"]["moves"]] == [("2026-03-02T10:00:00+00:00", 2)]
    for side, policy in (("policy", fast_policy), ("against", slow_policy)):
        totals = report["results"][side]
        moves = [m for events in read.values() for m in engine_moves(policy, events, until)]
        assert sum(e["count"] for e in totals["escalations"]) == len(moves)
        assert totals["opened_at_tier"] == {"1": 4}
        assert totals["upstream"]["calls"] > 0 and totals["upstream"]["peak_hour"]["calls"] > 0


def test_people_noticed_and_the_policy_earlier_or_later(day):
    sandbox, clock, keys, fast, slow = day
    status, report, err = run_json(
        [str(fast), "--from", "jira", "--since", "1d", "--against", str(slow)],
        environ=ENVIRON, now=clock.now(),
    )
    assert status == 0, err
    fast_people = report["results"]["policy"]["noticed_by_people"]
    slow_people = report["results"]["against"]["noticed_by_people"]
    # A person raised the checkout issue's priority at 08:30 and moved the sync issue at 09:15.
    assert fast_people["how"] == {"moved group": 1, "raised priority": 1}
    # Fast: the sync issue escalated at 08:45, 30 minutes before the person; the checkout issue
    # was raised by hand at 08:30, before the policy's 08:35, and closed before it would have.
    assert fast_people["policy_earlier"] == {
        "tickets": 1, "median_seconds": 1800.0, "p90_seconds": 1800.0, "max_seconds": 1800.0}
    assert fast_people["policy_later"]["tickets"] == 1
    assert fast_people["policy_only"] == 1  # the ignored issue
    assert slow_people["policy_earlier"]["tickets"] == 0
    assert slow_people["policy_never"] == 1


def test_the_text_report_shows_both_policies_and_the_differing_tickets(day, capsys):
    sandbox, clock, keys, fast, slow = day
    status = backtest.main([str(fast), "--from", "jira", "--against", str(slow)],
                           environ=ENVIRON, now=clock.now())
    assert status == 0
    out = capsys.readouterr().out
    assert "Fast (" in out and "Slow (" in out
    assert "3 tickets differ, 1 the same" in out
    assert keys["ignored"] in out and keys["moved"] in out and keys["quick"] not in out.split("differ")[1]
