"""``escalier backtest --from zendesk`` on the Zendesk sandbox's history, read with ``zenpy``.

People work three tickets on a clock the test moves; the incremental ticket event export is read
back and replayed under two policies, checked against the engine driven here ticket by ticket,
and the history's events against the event webhooks the same changes sent. Hundreds of tickets
are read in a few pages of the export, not a request per ticket, within its rate limit.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from escalier import backtest
from escalier.connectors.zendesk import events as zendesk_events
from escalier.connectors.zendesk import history
from escalier.connectors.zendesk.config import ZendeskConfig
from escalier.connectors.zendesk.connection import ZendeskConnection
from escalier.connectors.zendesk.sandbox import ZendeskSandbox
from escalier.core.connector import RawEvent
from escalier.core.model import ActorRole, EventKind

from backtest_support import TOKEN, Clock, engine_moves, load, report_moves, run_json, write_policy

ENVIRON = {"ZENDESK_API_TOKEN": TOKEN}
START = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)
SEVERITY = 360000201

POLICY = """\
name: {name}
default_calendar: always
calendars:
  always: {{timezone: UTC, hours: 24x7}}
people:
  mia: {{name: Mia Hoffmann, email: mia@northwind.example, zendesk: 360001}}
  priya: {{name: Priya Raman, email: priya@northwind.example, zendesk: 360003}}
  tomas: {{name: Tomas Novak, email: tomas@northwind.example, zendesk: 360004}}
connectors:
  zendesk:
    subdomain: northwind
    url: {url}
    email: escalier@example.com
    token: ${{ZENDESK_API_TOKEN}}
    groups: {{tier-1: 360000101, tier-2: 360000102, tier-3: 360000103, engineering: 360000110}}
    service_user_id: 360009999
    fields: {{severity: 360000201, users_affected: 360000202}}
    timeout_seconds: 5
tiers:
  - level: 1
    name: General support
    targets: {{zendesk: {{group: tier-1}}}}
    sla: {{resolve: 8h}}
    raci: {{accountable: [mia]}}
  - level: 2
    name: Specialists
    targets: {{zendesk: {{group: tier-2, assignee: priya}}}}
    sla: {{resolve: 8h}}
    raci: {{accountable: [priya]}}
  - level: 3
    name: Critical response
    targets: {{zendesk: {{group: tier-3, assignee: tomas}}}}
    sla: {{resolve: 4h}}
    raci: {{accountable: [tomas]}}
notifications: {{repeat_every: 4h, max_repeats: 1}}
sla: {{pause_statuses: [pending]}}
criteria:
  - id: stale
    when: {{tier: [1], unresolved_for: {stale}}}
    then: {{to_tier: 2}}
severities: [critical, high, medium, low]
impact:
  - {{name: widespread, users_at_least: 50}}
  - {{name: single, users_at_least: 0}}
matrix:
  critical: {{widespread: {{tier: 3, priority: urgent}}, single: {{tier: 2, priority: high}}}}
  high: {{widespread: {{tier: 2, priority: high}}, single: {{tier: 1, priority: normal}}}}
  medium: {{widespread: {{tier: 1, priority: normal}}, single: {{tier: 1, priority: normal}}}}
  low: {{widespread: {{tier: 1}}, single: {{tier: 1}}}}
"""


@pytest.fixture
def day(tmp_path):
    clock = Clock(START)
    sandbox = ZendeskSandbox(token=TOKEN, clock=clock.now).start()
    try:
        ids = {}
        ids["paused"] = sandbox.create_ticket("Invoice is wrong", "The March invoice doubles a line.",
                                              group_id=360000101, custom_fields={SEVERITY: "severity_medium"})["id"]
        clock.advance(minutes=5)
        ids["moved"] = sandbox.create_ticket("Sync stalls", "Nightly sync stops at 2%.",
                                             group_id=360000101, custom_fields={SEVERITY: "severity_high"})["id"]
        clock.advance(minutes=10)  # 08:15: the agent asks the customer and waits
        sandbox.update_ticket(ids["paused"], status="pending", comment="Which invoice number?", as_user="mia")
        clock.advance(minutes=25)  # 08:40: a person hands the sync ticket to the specialists
        sandbox.update_ticket(ids["moved"], group_id=360000102, priority="high", as_user="mia")
        clock.advance(hours=2)  # 10:40: the customer answers, which opens the ticket again
        sandbox.add_comment(ids["paused"], "INV-2026-03-114", as_user="dana")
        clock.advance(hours=1)  # 11:40
        sandbox.update_ticket(ids["paused"], status="solved", comment="Corrected, sorry.", as_user="mia")
        clock.advance(minutes=1)
        sandbox.update_ticket(ids["moved"], status="solved", as_user="priya")
        clock.advance(hours=1)
        fast = write_policy(tmp_path, "fast.yaml", POLICY.format(name="Fast", stale="20m", url=sandbox.url))
        slow = write_policy(tmp_path, "slow.yaml", POLICY.format(name="Slow", stale="90m", url=sandbox.url))
        yield sandbox, clock, ids, fast, slow
    finally:
        sandbox.stop()


def histories(policy_path: Path, clock: Clock) -> dict[str, list]:
    found = backtest.read_history(
        load(policy_path), "zendesk", since=START - timedelta(hours=1), until=clock.now(),
        environ=ENVIRON,
    )
    return {events[0].ticket_id: events for events in found}


def test_history_events_are_the_event_webhooks_events(day):
    sandbox, clock, ids, fast, _ = day
    read = histories(fast, clock)
    assert sorted(read) == sorted(str(i) for i in ids.values())
    by_id = {e.id: e for events in read.values() for e in events}
    site = ZendeskConfig.model_validate(load(fast).connectors["zendesk"])
    seen = set()
    for _, payload in sandbox.delivery_bodies():
        raw = RawEvent(source="zendesk", instance="default", body=json.dumps(payload).encode(),
                       headers={}, received_at=clock.now())
        for event in zendesk_events.parse_delivery(raw, site):
            assert event.id in by_id, event.id
            mine = by_id[event.id]
            assert mine.occurred_at == event.occurred_at
            assert (mine.actor, mine.actor_role) == (event.actor, event.actor_role), event.id
            if event.kind is EventKind.COMMENTED:
                assert mine.comment == event.comment
            # An event webhook carries no custom fields; the rest of the ticket must agree.
            fields = ("status", "status_category", "priority", "tags", "group", "assignee", "subject")
            assert {f: getattr(mine.ticket, f) for f in fields} == {f: getattr(event.ticket, f) for f in fields}
            seen.add(event.id)
    assert seen == set(by_id)  # every history event is one some webhook carried, and no more
    paused = read[str(ids["paused"])]
    # At one instant, an update's comment sorts before its version (by id), as the engine takes them.
    assert [e.kind for e in paused] == [
        EventKind.CREATED, EventKind.COMMENTED, EventKind.STATUS_CHANGED, EventKind.COMMENTED,
        EventKind.STATUS_CHANGED, EventKind.COMMENTED, EventKind.RESOLVED,
    ]
    assert paused[0].ticket.severity == "medium" and paused[0].ticket.status == "new"
    assert paused[2].ticket.status == "pending" and paused[2].actor_role is ActorRole.AGENT
    assert paused[3].actor_role is ActorRole.CUSTOMER and paused[4].ticket.status == "open"


def test_two_policies_against_the_engine_ticket_by_ticket(day):
    sandbox, clock, ids, fast, slow = day
    until = clock.now()
    status, report, err = run_json(
        [str(fast), "--from", "zendesk", "--since", "1d", "--against", str(slow)],
        environ=ENVIRON, now=until,
    )
    assert status == 0, err
    read = histories(fast, clock)
    fast_policy, slow_policy = load(fast), load(slow)
    differing = {t for t, events in read.items()
                 if engine_moves(fast_policy, events, until) != engine_moves(slow_policy, events, until)}
    shown = {d["ticket"]: d for d in report["differences"]["shown"]}
    assert differing and differing <= set(shown)
    for ticket_id, difference in shown.items():
        assert report_moves(difference["policy"]) == engine_moves(fast_policy, read[ticket_id], until)
        assert report_moves(difference["against"]) == engine_moves(slow_policy, read[ticket_id], until)
    # Pending from 08:15 to 10:40 stops the clock: the paused ticket reaches 20 minutes open at
    # 10:45 under the fast policy, and would reach 90 minutes only at 12:55, after it was solved.
    paused = shown[str(ids["paused"])]
    assert [m["at"] for m in paused["policy"]["moves"]] == ["2026-03-02T10:45:00+00:00"]
    assert paused["against"]["moves"] == []
    people = report["results"]["policy"]["noticed_by_people"]
    assert people["how"] == {"moved group": 1}  # the specialists' group is tier 2's
    assert people["policy_earlier"]["tickets"] == 1 and people["policy_earlier"]["median_seconds"] == 900.0
    # Nothing was written: the sandbox saw reads only.
    assert all(name.startswith("GET ") for name in sandbox.calls())


EVENT_EXPORT = "GET /api/v2/incremental/ticket_events.json"


def test_hundreds_of_tickets_take_a_few_pages_of_the_event_export(tmp_path):
    clock = Clock(START - timedelta(hours=2))
    sandbox = ZendeskSandbox(token=TOKEN, clock=clock.now).start()
    try:
        # Older tickets, changed inside the window: their histories would start in the middle.
        older = [sandbox.create_ticket(f"old {n}", "before the window")["id"] for n in range(3)]
        clock.advance(hours=2)
        for number in older:
            sandbox.update_ticket(number, priority="high", as_user="mia")
        ids = []
        for n in range(450):
            ids.append(sandbox.create_ticket(f"t{n}", f"ticket {n}", group_id=360000101,
                                             custom_fields={SEVERITY: "severity_low"})["id"])
            if n % 7 == 6:
                clock.advance(seconds=1)
        # Seven updates a second: the pages of 1,000 end inside a second, which comes again.
        for step in range(5):
            for n, number in enumerate(ids):
                if step == 0:
                    sandbox.update_ticket(number, comment="any news?", as_user="dana")
                elif step == 1:
                    sandbox.update_ticket(number, status="pending", additional_tags=[f"wait{n % 3}"],
                                          comment="Which version?", public=n % 2 == 0, as_user="mia")
                elif step == 2:
                    sandbox.add_comment(number, "2.4.1", as_user="dana")
                elif step == 3:
                    sandbox.update_ticket(number, status="solved", remove_tags=["wait0"],
                                          custom_fields={SEVERITY: "severity_medium"}, as_user="mia")
                elif n % 50 == 0:
                    sandbox.update_ticket(number, status="closed", as_user="mia")
                if n % 7 == 6:
                    clock.advance(seconds=1)
        clock.advance(hours=1)
        policy = load(write_policy(tmp_path, "p.yaml", POLICY.format(name="P", stale="20m", url=sandbox.url)))
        connection = ZendeskConnection(ZendeskConfig.model_validate(policy.connectors["zendesk"]), "default",
                                       ENVIRON, policy.people)
        sandbox.incremental_export_limit(2)
        slept: list[float] = []

        def sleep(seconds: float) -> None:
            slept.append(seconds)
            sandbox.incremental_export_limit(None)  # the minute has passed

        before = sandbox.calls()
        read = list(history.read_history(connection, since=START - timedelta(minutes=1), until=clock.now(),
                                         sleep=sleep))
        calls = {k: v - before.get(k, 0) for k, v in sandbox.calls().items() if v != before.get(k, 0)}
    finally:
        sandbox.stop()
    audits = sum(len(sandbox.audits(n)) for n in ids + older)
    # 2,262 updates in the window (the older tickets' creations are not): three pages.
    assert audits == 3 + 450 * 5 + 9 + 3
    # Three pages and the one request the export's limit of two a minute refused: no audits read.
    assert calls == {EVENT_EXPORT: 4}
    assert sandbox.throttled() == {EVENT_EXPORT: 1} and 0 < slept[0] <= 60 and len(slept) == 1
    assert sorted(int(events[0].ticket_id) for events in read) == ids
    closed = [str(number) for n, number in enumerate(ids) if n % 50 == 0]
    assert [events[0].ticket_id for events in read[:len(closed)]] == closed  # handed on as they close
    for events in read:
        number = int(events[0].ticket_id)
        ids_here = [e.id for e in events]
        assert len(ids_here) == len(set(ids_here))  # the second read twice is counted once
        versions = [e for e in events if e.kind is not EventKind.COMMENTED]
        assert len(versions) == len(sandbox.audits(number))
        comments = {e.id for e in events if e.kind is EventKind.COMMENTED}
        assert comments == {zendesk_events.comment_event_id("default", str(number), str(c["id"]))
                            for c in sandbox.comments(number)[1:]}
        assert [e.kind for e in versions[:5]] == [
            EventKind.CREATED, EventKind.UPDATED, EventKind.STATUS_CHANGED, EventKind.STATUS_CHANGED,
            EventKind.RESOLVED]
        assert versions[3].actor_role is ActorRole.CUSTOMER and versions[3].ticket.status == "open"
        assert versions[0].ticket.severity == "low" and versions[4].ticket.severity == "medium"
        tags = {f"wait{(number - ids[0]) % 3}"} - {"wait0"}
        assert set(versions[4].ticket.tags) >= tags and "wait0" not in versions[4].ticket.tags
        wait_change = next(c for c in versions[2].changes if c.field == "tags")
        assert wait_change.after == [f"wait{(number - ids[0]) % 3}"] and wait_change.before == []


def test_an_agents_token_reads_each_tickets_audits_and_finds_the_same_history(day):
    sandbox, clock, ids, fast, _ = day
    by_export = histories(fast, clock)
    # Zendesk serves the ticket event export to admins only; an agent's token gets a 403.
    sandbox.inject_fault(403, path="/api/v2/incremental/ticket_events*")
    before = sandbox.calls()
    by_audits = histories(fast, clock)
    calls = {k: n - before.get(k, 0) for k, n in sandbox.calls().items() if n != before.get(k, 0)}
    assert calls["GET /api/v2/tickets/{ticket_id}/audits.json"] == len(ids)
    assert calls["GET /api/v2/incremental/ticket_events.json"] == 1  # the refused one
    assert by_audits == by_export
