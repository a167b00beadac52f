"""The dashboard through Flask's test client: who may look, what the pages say, and how.

The store is written as the worker writes it (rows of escalations, audit, outbox and dead
letters); the pages and the views are read as a person or a script would read them.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import insert

from escalier.core.calendar import BusinessCalendar
from escalier.core.model import (
    RACI,
    Acknowledgement,
    EscalationState,
    NotificationState,
    PathKind,
    SlaClock,
    Ticket,
)
from escalier.core.policy import Policy
from escalier.plugins import get_plugin_manager
from escalier.store import create_store_engine
from escalier.store.schema import audit, dead_letters, escalations, outbox
from escalier.store.views import read_escalation, read_overview
from escalier.webhooks import ReceiverSettings, create_app
from escalier.webhooks.dashboard import COOKIE, clock_view, is_loopback, moment, span, ticket_url

NOW = datetime(2026, 3, 4, 15, 0, tzinfo=UTC)  # a Wednesday, 16:00 in Berlin
TOKEN = "a-dashboard-token-of-some-length"
REMOTE = {"REMOTE_ADDR": "203.0.113.9"}
HOSTILE = '<img src=x onerror="alert(1)"> & <script>alert("subject")</script>'

POLICY = Policy.model_validate({
    "name": "dashboard tests",
    "default_calendar": "office",
    "calendars": {
        "office": {"timezone": "Europe/Berlin", "hours": {"mon-fri": "09:00-17:00"}},
        "always": {"timezone": "UTC", "hours": "24x7"},
    },
    "people": {
        "mia": {"name": "Mia Hoffmann", "jira": "acc-mia", "zendesk": 501},
        "tomas": {"name": "Tomas Novak", "email": "tomas@northwind.example"},
    },
    "connectors": {
        "jira": {"url": "https://northwind.atlassian.net/", "instances": {"eu": {"url": "https://eu.northwind.example"}}},
        "zendesk": {"subdomain": "northwind", "instances": {"lab": {"subdomain": "lab", "url": "http://127.0.0.1:8092"}}},
    },
    "tiers": [
        {"level": 1, "name": "General support"},
        {"level": 2, "name": "Specialists", "calendar": "always"},
        {"level": 3, "name": "Critical response"},
    ],
    "paths": {"functional": {"engineering": {"name": "Engineering"}}},
})


def state(ticket_id: str, tier: int, *, system: str = "jira", instance: str = "default",
          subject: str = "Checkout fails", **fields: Any) -> EscalationState:
    """An open escalation as the engine would have saved it."""
    opened = NOW - timedelta(hours=5)
    ticket = Ticket(system=system, id=ticket_id, instance=instance, subject=subject, created_at=opened,
                    severity="critical", priority="high")
    return EscalationState(system=system, instance=instance, ticket_id=ticket_id, ticket=ticket, tier=tier,
                           opened_at=opened, tier_entered_at=opened, policy_version="v1", **fields)


class Rows:
    """Writes the store's rows the way the worker leaves them."""

    def __init__(self, url: str) -> None:
        self.engine = create_store_engine(url)
        self.outbox_ids = 0

    def escalation(self, value: EscalationState, *, status: str = "open") -> int:
        with self.engine.begin() as connection:
            return connection.execute(insert(escalations).values(
                system=value.system, instance=value.instance, ticket_id=value.ticket_id, tier=value.tier,
                status=status, policy_version="v1", state=value.model_dump(mode="json"),
                opened_at=value.opened_at, updated_at=NOW - timedelta(minutes=5), version=1,
            )).inserted_primary_key[0]

    def audit(self, escalation_id: int, kind: str, reason: str, *, at: datetime,
              from_tier: int | None = None, to_tier: int | None = None, criteria: tuple[str, ...] = ()) -> None:
        with self.engine.begin() as connection:
            connection.execute(insert(audit).values(
                escalation_id=escalation_id, at=at, kind=kind, from_tier=from_tier, to_tier=to_tier,
                reason=reason, criteria=list(criteria), actor=None, policy_version="v1", event_id=None,
            ))

    def action(self, escalation_id: int, ticket_id: str, kind: str = "comment", *, state: str = "done",
               next_at: datetime = NOW - timedelta(hours=1), error: str | None = None,
               system: str = "jira", instance: str = "default") -> int:
        self.outbox_ids += 1
        body = {"kind": kind, "key": f"{system}:{instance}:{ticket_id}:{self.outbox_ids}", "system": system,
                "instance": instance, "ticket_id": ticket_id, "body": "x"}
        with self.engine.begin() as connection:
            return connection.execute(insert(outbox).values(
                idempotency_key=body["key"], escalation_id=escalation_id, system=system, instance=instance,
                ticket_id=ticket_id, seq=self.outbox_ids, urgency=0, action=body, state=state,
                attempts=1 if state != "pending" else 0, next_attempt_at=next_at, last_error=error,
                created_at=NOW - timedelta(hours=2), applied_at=NOW - timedelta(hours=1) if state == "done" else None,
            )).inserted_primary_key[0]

    def dead(self, outbox_id: int, error: str, *, at: datetime, retried: bool = False) -> None:
        with self.engine.begin() as connection:
            connection.execute(insert(dead_letters).values(
                outbox_id=outbox_id, failed_at=at, error=error, retried_at=at if retried else None,
            ))


@pytest.fixture
def store_url(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'escalier.db'}"


@pytest.fixture
def make_app(store_url) -> Iterator[Callable[..., Flask]]:
    """Receiver apps over one SQLite store at the fixed ``NOW``; each is closed after the test."""
    apps: list[Flask] = []

    def build(**settings: Any) -> Flask:
        options: dict[str, Any] = {"store_url": store_url, "create_schema": True, "clock": lambda: NOW,
                                   "dashboard": True, "policy": POLICY}
        options.update(settings)
        app = create_app(ReceiverSettings(**options), plugin_manager=get_plugin_manager(load_entrypoints=False))
        apps.append(app)
        return app

    yield build
    for app in apps:
        app.extensions["escalier"].close()


@pytest.fixture
def rows(make_app, store_url) -> Iterator[Rows]:
    make_app()  # the schema
    found = Rows(store_url)
    yield found
    found.engine.dispose()


def text(html: str) -> str:
    """A page's text, tags dropped and spaces folded, entities left as they are."""
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html))


# --- off unless configured; who may look ----------------------------------------------------------


def test_the_dashboard_is_off_unless_configured(make_app):
    client = make_app(dashboard=False).test_client()
    for path in ("/dashboard/", "/dashboard", "/dashboard/escalations/1", "/dashboard/static/dashboard.css"):
        answer = client.get(path)
        assert answer.status_code == 404 and answer.json["error"] == "not_found", path
    assert client.get("/healthz").status_code == 200
    assert ReceiverSettings(store_url="sqlite://").dashboard is False


def test_an_empty_store_shows_every_tier_of_the_policy_with_nothing_open(make_app):
    answer = make_app().test_client().get("/dashboard/")
    assert answer.status_code == 200 and answer.mimetype == "text/html"
    page = text(answer.get_data(as_text=True))
    assert page.count("No open escalations at this tier.") == 3
    assert "Tier 3: Critical response 0 open" in page and "Tier 1: General support 0 open" in page
    assert "No dead letters." in page and "No account is paused" in page
    assert '<meta http-equiv="refresh" content="30">' in answer.get_data(as_text=True)
    assert "default-src 'none'" in answer.headers["Content-Security-Policy"]
    assert answer.headers["Cache-Control"] == "no-store"
    assert answer.headers["Referrer-Policy"] == "no-referrer"
    # Without the strict slash: the same page, not a redirect through the JSON error handler.
    assert make_app().test_client().get("/dashboard").status_code == 200


def test_beyond_loopback_without_a_configured_token_every_page_is_refused(make_app):
    client = make_app().test_client()
    for path in ("/dashboard/", "/dashboard/escalations/1", f"/dashboard/?token={TOKEN}"):
        answer = client.get(path, environ_base=REMOTE, headers={"Authorization": f"Bearer {TOKEN}"})
        assert answer.status_code == 401 and answer.mimetype == "text/html", path
        assert "served only to this machine" in answer.get_data(as_text=True)
        assert answer.headers["WWW-Authenticate"].startswith("Bearer")
    # The stylesheet is no secret, and the refusal page uses it.
    assert client.get("/dashboard/static/dashboard.css", environ_base=REMOTE).status_code == 200


@pytest.mark.parametrize("headers", [
    {},
    {"Authorization": "Bearer wrong-token-wrong-token"},
    {"Authorization": f"Basic {TOKEN}"},
    {"Cookie": f"{COOKIE}={TOKEN}"},  # the cookie holds a proof of the token, not the token
])
def test_beyond_loopback_a_missing_or_wrong_token_is_refused(make_app, headers):
    answer = make_app(dashboard_token=TOKEN).test_client().get("/dashboard/", environ_base=REMOTE, headers=headers)
    assert answer.status_code == 401
    assert "Authorization: Bearer" in answer.get_data(as_text=True)
    assert TOKEN not in answer.get_data(as_text=True)


def test_a_bearer_token_opens_the_dashboard_beyond_loopback(make_app):
    client = make_app(dashboard_token=TOKEN).test_client()
    answer = client.get("/dashboard/", environ_base=REMOTE, headers={"Authorization": f"Bearer {TOKEN}"})
    assert answer.status_code == 200
    assert "Set-Cookie" not in answer.headers


def test_a_token_in_the_address_sets_a_cookie_and_is_taken_out_of_the_address(make_app, rows):
    found = rows.escalation(state("SUP-1", 2))
    client = make_app(dashboard_token=TOKEN).test_client()
    answer = client.get(f"/dashboard/escalations/{found}?token={TOKEN}&view=all", environ_base=REMOTE)
    assert answer.status_code == 303
    assert answer.headers["Location"] == f"/dashboard/escalations/{found}?view=all"
    cookie = answer.headers["Set-Cookie"]
    assert cookie.startswith(f"{COOKIE}=") and TOKEN not in cookie
    assert all(part in cookie for part in ("HttpOnly", "SameSite=Strict", "Path=/dashboard"))
    # The cookie alone opens the pages from then on.
    assert client.get(answer.headers["Location"], environ_base=REMOTE).status_code == 200
    assert client.get("/dashboard/", environ_base=REMOTE).status_code == 200
    # A new token ends the old cookie.
    other = make_app(dashboard_token="another-token-of-some-length").test_client()
    other.set_cookie(COOKIE, client.get_cookie(COOKIE, path="/dashboard").value, path="/dashboard")
    assert other.get("/dashboard/", environ_base=REMOTE).status_code == 401


@pytest.mark.parametrize("environ, loopback", [
    ({"REMOTE_ADDR": "127.0.0.1"}, True),
    ({"REMOTE_ADDR": "::1"}, True),
    ({"REMOTE_ADDR": "10.1.2.3"}, False),
    ({"REMOTE_ADDR": "127.0.0.1", "HTTP_X_FORWARDED_FOR": "198.51.100.7"}, False),
    ({"REMOTE_ADDR": "127.0.0.1", "HTTP_FORWARDED": "for=198.51.100.7"}, False),
    ({"REMOTE_ADDR": "::1", "HTTP_X_REAL_IP": "198.51.100.7"}, False),
    ({}, False),
])
def test_only_an_unforwarded_request_from_this_machine_counts_as_loopback(environ, loopback):
    assert is_loopback(environ) is loopback


def test_a_request_a_local_proxy_forwards_needs_the_token(make_app):
    client = make_app(dashboard_token=TOKEN).test_client()
    forwarded = {"X-Forwarded-For": "198.51.100.7"}
    assert client.get("/dashboard/", headers=forwarded).status_code == 401
    assert client.get("/dashboard/", headers={**forwarded, "Authorization": f"Bearer {TOKEN}"}).status_code == 200


def test_a_short_token_is_refused_and_the_token_never_shows_in_the_settings_repr():
    with pytest.raises(ValueError, match="at least 16"):
        ReceiverSettings(store_url="sqlite://", dashboard=True, dashboard_token="short")
    settings = ReceiverSettings(store_url="sqlite://", dashboard=True, dashboard_token=TOKEN)
    assert TOKEN not in repr(settings)


def test_settings_from_a_policy_carry_the_policy_for_the_dashboard():
    policy = POLICY.model_copy(update={"connectors": {}})
    settings = ReceiverSettings.from_policy(policy, {}, "sqlite://", dashboard=True)
    assert settings.policy is policy and settings.dashboard


# --- what the pages say -------------------------------------------------------------------------


def test_escalations_appear_under_their_tiers_with_clocks_ack_raci_path_and_last_move(make_app, rows):
    resolve = SlaClock(name="resolve", calendar="always", target=timedelta(hours=8),
                       started_at=NOW - timedelta(hours=5), running_since=NOW - timedelta(hours=5))
    acknowledge = SlaClock(name="acknowledge", calendar="always", target=timedelta(hours=1),
                           started_at=NOW - timedelta(hours=5), running_since=NOW - timedelta(hours=5),
                           breached_at=NOW - timedelta(hours=4))
    tier2 = rows.escalation(state(
        "SUP-7", 2, clocks=(resolve,), raci=RACI(accountable=("mia",), consulted=("tomas@northwind.example",)),
        notification=NotificationState(sent=2, acknowledged=Acknowledgement(by="acc-mia", at=NOW - timedelta(hours=1))),
    ))
    tier3 = rows.escalation(state(
        "4711", 3, system="zendesk", clocks=(acknowledge,), path=PathKind.FUNCTIONAL, department="engineering",
        notification=NotificationState(sent=3),
    ))
    rows.escalation(state("thread-9", 1, system="email"))
    rows.escalation(state("SUP-1", 1), status="resolved")
    rows.audit(tier2, "opened", "Opened at tier 1.", at=NOW - timedelta(hours=5), to_tier=1)
    rows.audit(tier2, "escalated", "Escalated to tier 2: unresolved for 4h.", at=NOW - timedelta(hours=1),
               from_tier=1, to_tier=2, criteria=("stale",))
    rows.audit(tier2, "sla-warning", "50% of the resolve target used.", at=NOW - timedelta(minutes=30), to_tier=2)
    rows.audit(tier3, "functional", "Sent to Engineering: an outage.", at=NOW - timedelta(hours=5), to_tier=3)

    html = make_app().test_client().get("/dashboard/").get_data(as_text=True)
    sections = dict(re.findall(r'<section class="tier tier-\d" id="tier-\d" data-tier="(\d)".*?>(.*?)</section>', html, re.DOTALL))
    assert 'data-ticket="SUP-7"' in sections["2"] and 'data-ticket="4711"' in sections["3"]
    assert 'data-ticket="thread-9"' in sections["1"] and "SUP-1" not in html  # resolved: not shown

    row = text(sections["2"])
    assert "Escalated to tier 2: unresolved for 4h." in row  # the move, not the warning, says why
    assert "sla-warning 50% of the resolve target used." in row  # and what happened since
    assert "Acknowledged by Mia Hoffmann" in row
    assert "Accountable Mia Hoffmann" in row and "Consulted Tomas Novak" in row
    assert 'data-clock="resolve" data-level="warning"' in sections["2"]
    assert "62% used" in row and "3h left of 8h" in row and "due 2026-03-04 18:00 UTC" in row
    assert 'href="https://northwind.atlassian.net/browse/SUP-7"' in sections["2"]

    row = text(sections["3"])
    assert 'data-clock="acknowledge" data-level="breached"' in sections["3"]
    assert "Breached" in row and "over by 4h" in row
    assert "Functional: Engineering" in row and "Not acknowledged, notified 3 times" in row
    # Shown in the zone of tier 3's calendar (the office's), whatever calendar the clock counts in.
    assert "was due 2026-03-04 11:00 UTC (2026-03-04 12:00 Europe/Berlin)" in row
    assert 'href="https://northwind.zendesk.com/agent/tickets/4711"' in sections["3"]
    assert "email: no link" in text(sections["1"]) and "no SLA clock" in text(sections["1"])
    assert "Open 3" in text(html)


def test_a_hostile_subject_and_reason_are_escaped_everywhere(make_app, rows):
    found = rows.escalation(state("SUP-66", 2, subject=HOSTILE))
    rows.audit(found, "escalated", f"Because {HOSTILE}", at=NOW, from_tier=1, to_tier=2)
    action = rows.action(found, "SUP-66", state="dead", error=f"upstream said {HOSTILE}")
    rows.dead(action, f"upstream said {HOSTILE}", at=NOW)
    client = make_app().test_client()
    for path in ("/dashboard/", f"/dashboard/escalations/{found}"):
        html = client.get(path).get_data(as_text=True)
        assert "<script>" not in html and "<img" not in html, path
        assert "&lt;script&gt;alert(&#34;subject&#34;)&lt;/script&gt;" in html, path
        assert "&lt;img src=x onerror=&#34;alert(1)&#34;&gt; &amp;" in html, path


def test_the_outbox_backlog_paused_accounts_and_dead_letters(make_app, rows):
    found = rows.escalation(state("SUP-3", 1))
    rows.action(found, "SUP-3", state="done")
    rows.action(found, "SUP-3", state="pending", next_at=NOW - timedelta(seconds=1))
    for _ in range(3):  # held by a rate limit
        rows.action(found, "SUP-3", state="pending", next_at=NOW + timedelta(seconds=40))
    rows.action(found, "4711", state="pending", next_at=NOW + timedelta(minutes=3), system="zendesk",
                instance="lab", error="503 Service Unavailable")
    older = rows.action(found, "SUP-3", state="dead")
    newer = rows.action(found, "SUP-3", "assign", state="dead")
    retried = rows.action(found, "SUP-3", state="pending")
    rows.dead(older, "422 the transition is not allowed", at=NOW - timedelta(hours=2))
    rows.dead(newer, "404 issue does not exist", at=NOW - timedelta(hours=1))
    rows.dead(retried, "retried since", at=NOW - timedelta(minutes=5), retried=True)

    html = make_app().test_client().get("/dashboard/").get_data(as_text=True)
    figures = dict(re.findall(r'<dd id="([a-z-]+)">(\d+)</dd>', html))
    assert figures == {"open-total": "1", "outbox-pending": "6", "outbox-ready": "2", "outbox-done": "1",
                       "dead-letters": "2", "accounts-paused": "2"}
    held = text(html.split('<table class="held">')[1].split("</table>")[0])
    assert "jira default 3 2026-03-04 15:00 UTC rate limit" in held
    assert "zendesk lab 1 2026-03-04 15:03 UTC 503 Service Unavailable" in held
    dead = text(html.split('<table class="dead">')[1].split("</table>")[0])
    assert dead.index("404 issue does not exist") < dead.index("422 the transition")  # latest first
    assert "retried since" not in dead


def test_an_escalations_page_lists_its_audit_trail_and_upstream_calls(make_app, rows):
    found = rows.escalation(state("SUP-9", 2, instance="eu"))
    other = rows.escalation(state("SUP-10", 1))
    rows.audit(found, "opened", "Opened at tier 1.", at=NOW - timedelta(hours=3), to_tier=1, criteria=("matrix:high/single",))
    rows.audit(found, "escalated", "Escalated: unresolved for 2h.", at=NOW - timedelta(hours=1),
               from_tier=1, to_tier=2, criteria=("stale",))
    rows.audit(other, "opened", "Someone else's.", at=NOW, to_tier=1)
    rows.action(found, "SUP-9", "assign", state="done", instance="eu")
    rows.action(found, "SUP-9", "comment", state="pending", next_at=NOW + timedelta(minutes=2),
                error="429 Too Many Requests", instance="eu")
    rows.action(other, "SUP-10", "notify", state="done")

    html = make_app().test_client().get(f"/dashboard/escalations/{found}").get_data(as_text=True)
    trail = text(html.split('id="audit"')[1].split("</table>")[0])
    assert trail.index("Opened at tier 1.") < trail.index("Escalated: unresolved for 2h.")
    assert "Tier 1: General support → Tier 2: Specialists stale" in trail
    assert "matrix:high/single" in trail and "Someone else's" not in trail
    calls = text(html.split('id="calls"')[1].split("</table>")[0])
    assert "assign jira:eu:SUP-9:1 done 1" in calls
    assert "comment jira:eu:SUP-9:2 pending next try 2026-03-04 15:02 UTC 0 429 Too Many Requests" in calls
    assert "SUP-10" not in calls
    assert 'href="https://eu.northwind.example/browse/SUP-9"' in html


def test_an_unknown_escalation_is_an_html_404(make_app):
    answer = make_app().test_client().get("/dashboard/escalations/999")
    assert answer.status_code == 404 and answer.mimetype == "text/html"
    assert "There is no escalation number 999." in text(answer.get_data(as_text=True))


def test_without_a_policy_tiers_are_numbered_and_time_is_wall_clock(make_app, rows):
    clock = SlaClock(name="resolve", calendar="office", target=timedelta(hours=4),
                     started_at=NOW - timedelta(hours=1), running_since=NOW - timedelta(hours=1))
    rows.escalation(state("SUP-2", 2, clocks=(clock,)))
    page = text(make_app(policy=None).test_client().get("/dashboard/").get_data(as_text=True))
    assert "Tier 2 1 open" in page and "3h left of 4h" in page


# --- the views and the pure helpers -----------------------------------------------------------------


def test_the_overview_is_limited_and_says_so(rows):
    for n in range(4):
        rows.escalation(state(f"SUP-{n}", 1 + n % 2))
    overview = read_overview(rows.engine, now=NOW, limit=3)
    assert [e.state.tier for e in overview.escalations] == [2, 2, 1]
    assert overview.open_by_tier == {1: 2, 2: 2} and not overview.shown_all
    assert read_overview(rows.engine, now=NOW).shown_all
    assert read_escalation(rows.engine, 12345) is None


OFFICE = POLICY.calendars_built["office"]
ALWAYS = BusinessCalendar.always()


def running(target: timedelta, elapsed: timedelta, **fields: Any) -> SlaClock:
    return SlaClock(name="resolve", calendar="always", target=target, started_at=NOW - elapsed,
                    running_since=NOW - elapsed, **fields)


@pytest.mark.parametrize("elapsed_minutes, level, text_", [
    (0, "ok", "On track"),
    (239, "ok", "On track"),
    (240, "warning", "Over 50%"),
    (359, "warning", "Over 50%"),
    (360, "critical", "Over 75%"),
    (479, "critical", "Over 75%"),
    (480, "breached", "Breached"),
    (600, "breached", "Breached"),
])
def test_a_clocks_colour_band_follows_the_share_of_its_target_used(elapsed_minutes, level, text_):
    view = clock_view(running(timedelta(hours=8), timedelta(minutes=elapsed_minutes)), ALWAYS, NOW)
    assert (view.level, view.level_text) == (level, text_)
    assert view.percent == elapsed_minutes * 100 // 480


def test_a_clock_measures_business_time_in_its_calendar():
    # Started at 10:00 Berlin (09:00 UTC) today; at 16:00 Berlin six of the eight hours are used.
    started = datetime(2026, 3, 4, 9, 0, tzinfo=UTC)
    clock = SlaClock(name="resolve", calendar="office", target=timedelta(hours=8), started_at=started,
                     running_since=started)
    view = clock_view(clock, OFFICE, NOW)
    assert view.elapsed == timedelta(hours=6) and view.left == timedelta(hours=2)
    assert view.level == "critical" and view.summary == "2h left of 8h"
    # One hour tonight, one tomorrow from 09:00 Berlin: due at 10:00 Berlin on Thursday.
    assert view.due == datetime(2026, 3, 5, 9, 0, tzinfo=UTC)
    # The night does not count: at 08:00 Berlin on Thursday one hour is left.
    thursday = clock_view(clock, OFFICE, datetime(2026, 3, 5, 7, 0, tzinfo=UTC))
    assert thursday.left == timedelta(hours=1) and thursday.percent == 87


def test_a_paused_a_stopped_and_a_recorded_breach_clock():
    paused = SlaClock(name="resolve", calendar="always", target=timedelta(hours=8), started_at=NOW,
                      elapsed_before=timedelta(hours=2))
    view = clock_view(paused, ALWAYS, NOW + timedelta(days=3))
    assert view.paused and view.due is None and view.percent == 25 and view.summary == "6h left of 8h (paused)"
    met = paused.model_copy(update={"stopped_at": NOW})
    assert clock_view(met, ALWAYS, NOW).level == "met"
    assert clock_view(met, ALWAYS, NOW).summary == "stopped after 2h of 8h"
    # The engine's breach stands even if the business time measured here comes out short of it.
    breached = running(timedelta(hours=8), timedelta(hours=1), breached_at=NOW)
    assert clock_view(breached, ALWAYS, NOW).level == "breached"


@pytest.mark.parametrize("system, instance, ticket, url", [
    ("jira", "default", "SUP-1", "https://northwind.atlassian.net/browse/SUP-1"),
    ("jira", "eu", "EU-2", "https://eu.northwind.example/browse/EU-2"),
    ("jira", "missing", "SUP-1", None),
    ("zendesk", "default", "4711", "https://northwind.zendesk.com/agent/tickets/4711"),
    ("zendesk", "lab", "12", "http://127.0.0.1:8092/agent/tickets/12"),
    ("zendesk", "default", "../admin?x", "https://northwind.zendesk.com/agent/tickets/..%2Fadmin%3Fx"),
    ("email", "default", "thread-1", None),
    ("servicenow", "default", "INC1", None),
])
def test_a_tickets_link_upstream(system, instance, ticket, url):
    assert ticket_url(POLICY.connectors, system, instance, ticket) == url


def test_a_link_needs_an_http_address():
    assert ticket_url({"jira": {"url": "javascript:alert(1)"}}, "jira", "default", "SUP-1") is None


@pytest.mark.parametrize("value, spelled", [
    (timedelta(seconds=59), "under a minute"),
    (timedelta(minutes=5), "5m"),
    (timedelta(hours=1, minutes=5), "1h 5m"),
    (timedelta(hours=3), "3h"),
    (timedelta(days=2, hours=3, minutes=4), "2d 3h"),
])
def test_a_duration_for_people(value, spelled):
    assert span(value) == spelled


def test_a_moment_in_utc_and_in_a_zone():
    shown = moment(NOW, "Europe/Berlin")
    assert (shown.utc, shown.local, shown.iso) == (
        "2026-03-04 15:00 UTC", "2026-03-04 16:00 Europe/Berlin", "2026-03-04T15:00:00+00:00")
    assert moment(NOW).local is None
