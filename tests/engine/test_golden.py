"""Golden scenarios from the escalation process, with times worked out by hand.

The desk policy (policies/desk.yaml): office hours Mon-Fri 09:00-17:00 Europe/Berlin with Berlin
public holidays; tier 1 has a 2h forcing time-box, tier 2 a 4h gate and needs steps to reproduce;
tier 3 runs 24x7.
"""

from __future__ import annotations

from datetime import timedelta

from engine_support import UTC, Run, berlin, event, keys, load, make_ticket

from escalier.core.engine import decide
from escalier.core.model import ActionKind, ActorRole, Comment, EventKind, PathKind, StatusCategory, Timer
from escalier.core.templates import MARKER


def test_friday_afternoon_timebox_forces_tier_2_on_monday(desk):
    # Fri 16:50-17:00 is 10 minutes; the other 1h50m run Monday from 09:00: 10:50.
    run = Run(desk, make_ticket(berlin(2026, 3, 6, 16, 50)))
    run.until(berlin(2026, 3, 9, 12, 0))
    (move,) = run.entries("escalated")
    assert move.at == berlin(2026, 3, 9, 10, 50)
    assert (move.from_tier, move.to_tier) == (1, 2)
    assert move.criteria == ("timebox-tier-1",)
    assert move.reason == (
        "Escalated from tier 1 (General support) to tier 2 (Specialists): the time-box of 2h at "
        "tier 1 ended with the ticket unresolved."
    )
    assert run.state.tier == 2
    assigned = [a for a in run.of_kind(ActionKind.ASSIGN) if a.tier == 2]
    assert assigned[0].target == {"group": "tier-2", "assignee": "spec"}
    assert ("escalier-tier-1",) in [a.tags for a in run.of_kind(ActionKind.REMOVE_TAGS)]
    assert ("escalier-tier-2",) in [a.tags for a in run.of_kind(ActionKind.ADD_TAGS)]
    watchers = [a.watchers for a in run.of_kind(ActionKind.ADD_WATCHERS)]
    assert ("lead",) in watchers  # Consulted at tier 2
    comments = [a for a in run.of_kind(ActionKind.COMMENT) if a.template == "escalated"]
    assert comments and comments[0].body.startswith(MARKER)
    assert assigned[0].urgency == 20


def test_the_same_across_the_spring_daylight_saving_change(desk):
    # Fri 27 March 16:00 CET: 1h on Friday; Monday 30 March is CEST, so 10:00 local is 08:00 UTC.
    run = Run(desk, make_ticket(berlin(2026, 3, 27, 16, 0)))
    run.until(berlin(2026, 3, 30, 12, 0))
    (move,) = run.entries("escalated")
    assert move.at.astimezone(UTC) == berlin(2026, 3, 30, 10, 0).astimezone(UTC)
    assert move.at.astimezone(UTC).hour == 8


def test_holidays_shift_the_timebox(desk):
    # Thursday 2 April 2026 16:50: Good Friday and Easter Monday are holidays in Berlin,
    # so the remaining 1h50m run on Tuesday 7 April from 09:00.
    run = Run(desk, make_ticket(berlin(2026, 4, 2, 16, 50)))
    run.until(berlin(2026, 4, 8, 0, 0))
    (move,) = run.entries("escalated")
    assert move.at == berlin(2026, 4, 7, 10, 50)


def test_critical_and_widespread_goes_to_tier_3_at_once_and_tells_the_accountable(desk):
    ticket = make_ticket(berlin(2026, 3, 7, 3, 0), severity="critical", users_affected=50)
    run = Run(desk, ticket)
    assert run.state.tier == 3
    (opened,) = run.entries("opened")
    assert opened.criteria == ("matrix:critical/widespread",)
    assert "Accountable notified (boss)" in opened.reason
    recipients = {r for a in run.of_kind(ActionKind.NOTIFY) for r in a.recipients}
    assert "boss@desk.example" in recipients
    assert {a.channel for a in run.of_kind(ActionKind.NOTIFY)} == {"oncall"}
    assert ActionKind.SET_PRIORITY in {a.kind for a in run.actions}
    assert [a.priority for a in run.of_kind(ActionKind.SET_PRIORITY)] == ["urgent"]
    # The matrix cell's SLA overrides the tier's: acknowledge in 10 minutes, on Saturday at 03:10.
    ack = next(c for c in run.state.clocks if c.name == "acknowledge")
    assert ack.target == timedelta(minutes=10)
    run.until(berlin(2026, 3, 7, 3, 10))
    (breach,) = [h for h in run.entries("sla-breach") if "acknowledge" in h.reason]
    assert breach.at == berlin(2026, 3, 7, 3, 10)
    assert max(a.urgency for a in run.actions) >= 30


def test_waiting_on_the_customer_pauses_the_clock(desk):
    ticket = make_ticket(berlin(2026, 3, 9, 9, 0))
    run = Run(desk, ticket)
    pending = {"status": "pending", "status_category": StatusCategory.PENDING}
    run.send(event(ticket, EventKind.STATUS_CHANGED, berlin(2026, 3, 9, 10, 0), "s1", ticket_changes=pending))
    run.send(event(ticket, EventKind.STATUS_CHANGED, berlin(2026, 3, 9, 12, 0), "s2", ticket_changes={}))
    run.until(berlin(2026, 3, 9, 17, 0))
    (move,) = run.entries("escalated")
    # 09:00-10:00 and 12:00-13:00 make the two hours of the time-box.
    assert move.at == berlin(2026, 3, 9, 13, 0)
    assert run.state.paused_total == timedelta(hours=2)
    assert [h.kind for h in run.history if h.kind in ("paused", "resumed")] == ["paused", "resumed"]


def test_missing_information_holds_the_move_until_it_is_given(desk):
    ticket = make_ticket(berlin(2026, 3, 9, 9, 0), fields={})
    run = Run(desk, ticket)
    run.until(berlin(2026, 3, 9, 12, 0))
    assert run.state.tier == 1
    (asked,) = run.entries("missing-information")
    assert asked.at == berlin(2026, 3, 9, 11, 0)
    (comment,) = [a for a in run.of_kind(ActionKind.COMMENT) if a.template == "missing-information"]
    assert comment.body == "[escalier] Before this ticket can move to Specialists, please add: Steps to reproduce."
    # A comment by Escalier itself that names the item does not count as the item.
    run.send(event(ticket, EventKind.COMMENTED, berlin(2026, 3, 9, 12, 30), "own", actor_role=ActorRole.ESCALIER,
                   comment=Comment(body=comment.body)))
    assert run.state.tier == 1
    run.send(event(ticket, EventKind.COMMENTED, berlin(2026, 3, 9, 14, 0), "c1", actor_role=ActorRole.CUSTOMER,
                   comment=Comment(body="Steps to reproduce: open March invoices", author_role=ActorRole.CUSTOMER)))
    assert run.state.tier == 2
    (move,) = run.entries("escalated")
    assert move.at == berlin(2026, 3, 9, 14, 0)
    assert len(run.entries("missing-information")) == 1


def test_deescalation_waits_for_the_hysteresis(desk):
    ticket = make_ticket(berlin(2026, 3, 9, 10, 0), severity="critical", users_affected=80)
    run = Run(desk, ticket)
    assert run.state.tier == 3
    tagged = {"tags": ("workaround",)}
    run.send(event(ticket, EventKind.UPDATED, berlin(2026, 3, 9, 10, 30), "u1", ticket_changes=tagged))
    assert run.state.tier == 3  # only 30 minutes at tier 3
    early = run.send(event(ticket, EventKind.DEESCALATION_REQUESTED, berlin(2026, 3, 9, 10, 40), "d1",
                           actor="mia", requested_tier=2, ticket_changes=tagged))
    assert run.state.tier == 3
    assert "possible from Mon 2026-03-09 10:00 UTC" in early.history[-1].reason
    assert run.state.tier == 3
    run.until(berlin(2026, 3, 9, 16, 0))
    assert run.state.tier == 3  # timers alone never de-escalate
    run.send(event(ticket, EventKind.UPDATED, berlin(2026, 3, 9, 16, 0), "u2", ticket_changes=tagged))
    assert run.state.tier == 2
    (down,) = run.entries("deescalated")
    assert down.criteria == ("workaround",)
    assert "tagged workaround (rule workaround)" in down.reason
    # The matrix does not push it straight back up: its cell already had its say.
    run.send(event(ticket, EventKind.COMMENTED, berlin(2026, 3, 9, 16, 30), "c2",
                   comment=Comment(body="monitoring", public=False), ticket_changes=tagged))
    assert run.state.tier == 2


def test_notifications_repeat_then_climb(desk):
    # Tier 1: repeat every 10 minutes, 2 repeats, then the Accountable, then management.
    run = Run(desk, make_ticket(berlin(2026, 3, 9, 9, 0)))
    run.until(berlin(2026, 3, 9, 9, 41))
    notified = [(h.at, h.reason.split(":")[0]) for h in run.entries("notified")]
    assert notified == [
        (berlin(2026, 3, 9, 9, 10), "Notified Responsible and Informed (tier-1)"),
        (berlin(2026, 3, 9, 9, 20), "Notified Responsible and Informed (tier-1)"),
        (berlin(2026, 3, 9, 9, 30), "Notified Accountable (lead)"),
        (berlin(2026, 3, 9, 9, 40), "Notified Accountable (lead)"),
    ]
    last = [a for a in run.of_kind(ActionKind.NOTIFY)][-1]
    assert last.recipients == ("lead@desk.example",)
    assert {a.channel for a in run.of_kind(ActionKind.NOTIFY)} == {"desk", "leads"}
    run.until(berlin(2026, 3, 9, 10, 0))
    assert "Head of Support (head)" in run.entries("notified")[-1].reason


def test_acknowledgement_stops_repeats_but_not_the_clock(desk):
    ticket = make_ticket(berlin(2026, 3, 9, 9, 0))
    run = Run(desk, ticket)
    run.send(event(ticket, EventKind.COMMENTED, berlin(2026, 3, 9, 9, 5), "c1", actor="mia",
                   comment=Comment(body="On it", public=True)))
    assert run.state.notification.acknowledged.by == "mia"
    run.until(berlin(2026, 3, 9, 10, 50))
    assert run.entries("notified") == []
    ack = next(c for c in run.state.clocks if c.name == "acknowledge")
    resolve = next(c for c in run.state.clocks if c.name == "resolve")
    assert ack.stopped_at == berlin(2026, 3, 9, 9, 5)
    assert resolve.stopped_at is None and resolve.running_since is not None
    # The time-box still moves it at 11:00: acknowledging is not resolving.
    run.until(berlin(2026, 3, 9, 11, 0))
    assert run.entries("escalated")[0].at == berlin(2026, 3, 9, 11, 0)


def test_a_duplicate_event_changes_nothing(desk):
    ticket = make_ticket(berlin(2026, 3, 9, 9, 0))
    run = Run(desk, ticket)
    comment = event(ticket, EventKind.COMMENTED, berlin(2026, 3, 9, 9, 5), "c1", comment=Comment(body="hi"))
    run.send(comment)
    before = run.state
    again = decide(desk, before, comment, berlin(2026, 3, 9, 9, 6))
    assert again.state is before and again.actions == () and again.history == ()


def test_a_late_pending_status_pauses_from_its_own_time(desk):
    ticket = make_ticket(berlin(2026, 3, 9, 9, 0))
    run = Run(desk, ticket)
    pending = {"status": "pending", "status_category": StatusCategory.PENDING}
    run.send(event(ticket, EventKind.COMMENTED, berlin(2026, 3, 9, 10, 10), "c1", comment=Comment(body="x", public=False),
                   ticket_changes=pending))
    # The status change happened at 10:00 but Jira delivers it at 10:25, after the comment.
    late = event(ticket, EventKind.STATUS_CHANGED, berlin(2026, 3, 9, 10, 0), "s1", ticket_changes=pending)
    run.send(late, berlin(2026, 3, 9, 10, 25))
    assert run.state.paused_since == berlin(2026, 3, 9, 10, 0)
    assert run.state.open_elapsed == timedelta(hours=1)


def test_manual_escalation_respects_the_gate(desk):
    ticket = make_ticket(berlin(2026, 3, 9, 9, 0))
    run = Run(desk, ticket)
    run.send(event(ticket, EventKind.ESCALATION_REQUESTED, berlin(2026, 3, 9, 9, 30), "m1", actor="mia",
                   requested_tier=2, reason="needs a specialist"))
    # Tier 1's time-box forces but does not gate: the request goes through.
    assert run.state.tier == 2
    (move,) = run.entries("escalated")
    assert move.reason.startswith("Escalated from tier 1 (General support) to tier 2 (Specialists): requested by mia: needs a specialist")
    run.send(event(ticket, EventKind.ESCALATION_REQUESTED, berlin(2026, 3, 9, 10, 0), "m2", actor="mia", requested_tier=3))
    assert run.state.tier == 2
    (refused,) = run.entries("move-refused")
    assert "time-box of 4h at tier 2 runs until Mon 2026-03-09 13:30 CET" in refused.reason
    body = [a.body for a in run.of_kind(ActionKind.COMMENT) if a.template == "timebox-refused"][0]
    assert body.startswith("[escalier] Not moved to tier 3 (Critical response) yet")
    run.send(event(ticket, EventKind.ESCALATION_REQUESTED, berlin(2026, 3, 9, 13, 30), "m3", actor="mia", requested_tier=3))
    assert run.state.tier == 3


def test_functional_path_hands_over_to_engineering(desk):
    ticket = make_ticket(berlin(2026, 3, 9, 9, 0))
    run = Run(desk, ticket)
    run.send(event(ticket, EventKind.UPDATED, berlin(2026, 3, 9, 10, 30), "u1",
                   ticket_changes={"tags": ("bug-confirmed",)}))
    assert run.state.department == "engineering"
    assert run.state.path is PathKind.FUNCTIONAL
    (handed,) = run.entries("functional")
    assert handed.criteria == ("bug-confirmed",)
    assert {"group": "engineering"} in [a.target for a in run.of_kind(ActionKind.ASSIGN)]
    assert ("escalier-tier-1", "escalier-dept-engineering") in [a.tags for a in run.of_kind(ActionKind.ADD_TAGS)]


def test_hierarchical_request_raises_to_management(desk):
    ticket = make_ticket(berlin(2026, 3, 9, 9, 0))
    run = Run(desk, ticket)
    run.send(event(ticket, EventKind.ESCALATION_REQUESTED, berlin(2026, 3, 9, 9, 30), "h1", actor="mia",
                   path=PathKind.HIERARCHICAL, requested_tier=1, reason="budget conflict"))
    assert run.state.management_level == 1 and run.state.tier == 1
    notify = [a for a in run.last.actions if a.kind is ActionKind.NOTIFY]
    assert notify and notify[0].recipients == ("head@desk.example",)


def test_resolution_stops_the_clock_then_follow_up_and_close(desk):
    ticket = make_ticket(berlin(2026, 3, 9, 9, 0))
    run = Run(desk, ticket)
    solved = {"status": "solved", "status_category": StatusCategory.SOLVED}
    run.send(event(ticket, EventKind.RESOLVED, berlin(2026, 3, 9, 10, 0), "r1", ticket_changes=solved))
    resolve = next(c for c in run.state.clocks if c.name == "resolve")
    assert resolve.stopped_at == berlin(2026, 3, 9, 10, 0) and resolve.elapsed_before == timedelta(hours=1)
    run.send(event(ticket, EventKind.REOPENED, berlin(2026, 3, 9, 11, 0), "o1", ticket_changes={}))
    resolve = next(c for c in run.state.clocks if c.name == "resolve")
    assert resolve.running_since == berlin(2026, 3, 9, 11, 0) and resolve.stopped_at is None
    run.send(event(ticket, EventKind.RESOLVED, berlin(2026, 3, 9, 11, 30), "r2", ticket_changes=solved))
    run.until(berlin(2026, 3, 20, 0, 0))
    assert [h.at for h in run.entries("follow-up")] == [berlin(2026, 3, 11, 11, 30)]
    assert [h.at for h in run.entries("closed")] == [berlin(2026, 3, 16, 11, 30)]
    assert run.of_kind(ActionKind.TRANSITION)[0].status == "closed"
    assert run.state.wake_at is None


def test_sla_warnings_and_breach_come_once_each(desk):
    ticket = make_ticket(berlin(2026, 3, 9, 9, 0), fields={})
    run = Run(desk, ticket)
    run.send(event(ticket, EventKind.ACKNOWLEDGED, berlin(2026, 3, 9, 9, 1), "a1", actor="mia"))
    run.until(berlin(2026, 3, 10, 17, 0))
    assert run.state.tier == 1  # held: the steps to reproduce are missing
    warned = [(h.at, h.reason.split(" used")[0]) for h in run.entries("sla-warning")]
    assert warned == [
        (berlin(2026, 3, 9, 13, 0), "50% of the resolve target of 8h"),
        (berlin(2026, 3, 9, 15, 0), "75% of the resolve target of 8h"),
    ]
    assert [h.at for h in run.entries("sla-breach")] == [berlin(2026, 3, 9, 17, 0)]


def test_policy_version_is_kept_until_the_next_move(desk):
    old = desk
    new = load(version="v2", tiers=[{**t, "timebox": {"duration": "30m", "mode": "force"}} if t["level"] == 1 else t
                                    for t in __import__("yaml").safe_load((__import__("pathlib").Path(__file__).parent / "policies" / "desk.yaml").read_text())["tiers"]])
    ticket = make_ticket(berlin(2026, 3, 9, 9, 0))
    run = Run(old, ticket, policies={"v1": old})
    # The runtime now has v2 as current; the escalation started under v1 keeps v1's 2h time-box.
    run.until(berlin(2026, 3, 9, 10, 0), policy=new)
    assert run.state.tier == 1 and run.state.policy_version == "v1"
    run.until(berlin(2026, 3, 9, 12, 0), policy=new)
    (move,) = run.entries("escalated")
    assert move.at == berlin(2026, 3, 9, 11, 0)
    assert move.policy_version == "v1"  # v1 decided the move
    assert "Policy version v2 adopted (was v1)" in move.reason
    assert run.state.policy_version == "v2"
    later = run.history[-1]
    assert later.policy_version == "v2"


def test_replaying_the_same_deliveries_yields_the_same_keys(desk):
    ticket = make_ticket(berlin(2026, 3, 6, 16, 50))
    first, second = Run(desk, ticket), Run(desk, ticket)
    for run in (first, second):
        run.until(berlin(2026, 3, 10, 0, 0))
    assert keys(first.actions) == keys(second.actions)
    assert len(set(keys(first.actions))) == len(first.actions)
    assert keys(first.actions)[0] == "zendesk:default:100:1"


def test_the_state_round_trips_through_json(desk):
    ticket = make_ticket(berlin(2026, 3, 9, 9, 0))
    run = Run(desk, ticket)
    pending = {"status": "pending", "status_category": StatusCategory.PENDING}
    run.send(event(ticket, EventKind.STATUS_CHANGED, berlin(2026, 3, 9, 10, 0), "s1", ticket_changes=pending))
    run.until(berlin(2026, 3, 9, 12, 0))
    from escalier.core.model import EscalationState

    again = EscalationState.model_validate(run.state.model_dump(mode="json"))
    assert again == run.state
    timer = Timer(system="zendesk", ticket_id="100", due_at=berlin(2026, 3, 9, 12, 0))
    assert decide(desk, again, timer, berlin(2026, 3, 9, 12, 0)).state.tier == run.state.tier


# --- notifications follow the tier's calendar ---------------------------------------------------

NEW_YORK = __import__("zoneinfo").ZoneInfo("America/New_York")


def _desk_with(**tier_changes: dict) -> list[dict]:
    """The desk policy's tiers, with some keys of some tiers replaced (by level)."""
    import yaml
    from engine_support import HERE

    tiers = yaml.safe_load((HERE / "policies" / "desk.yaml").read_text())["tiers"]
    return [{**t, **tier_changes.get(f"tier{t['level']}", {})} for t in tiers]


def test_repeats_wait_for_the_tier_calendar_at_night():
    # Tier 2 in New York office hours (09:00-17:00, EDT since 8 March): a ticket placed there at
    # 02:30 is notified on entering the tier, then not again until business time has passed:
    # 15 minutes after opening, then every 15 minutes, and after two repeats the Accountable.
    policy = load(tiers=_desk_with(tier2={"calendar": "new-york"}))
    created = __import__("datetime").datetime(2026, 3, 10, 2, 30, tzinfo=NEW_YORK)
    run = Run(policy, make_ticket(created, users_affected=60))
    assert run.state.tier == 2
    run.until(created.replace(hour=10, minute=0))
    notified = [(h.at.astimezone(NEW_YORK).strftime("%H:%M"), h.reason.split(":")[0]) for h in run.entries("notified")]
    assert notified == [
        ("09:15", "Notified Responsible and Informed (spec)"),
        ("09:30", "Notified Responsible and Informed (spec)"),
        ("09:45", "Notified Accountable (boss)"),
        ("10:00", "Notified Accountable (boss)"),
    ]


def test_a_24x7_tier_still_pages_at_night(desk):
    # Tier 3 runs 24x7 and repeats every 5 minutes, once, then climbs: Saturday 03:00 in Berlin.
    run = Run(desk, make_ticket(berlin(2026, 3, 7, 3, 0), severity="critical", users_affected=50))
    run.until(berlin(2026, 3, 7, 3, 20))
    notified = [(h.at, h.reason.split(":")[0]) for h in run.entries("notified")]
    assert notified == [
        (berlin(2026, 3, 7, 3, 5), "Notified Responsible and Informed (tier-3, spec, head)"),
        (berlin(2026, 3, 7, 3, 10), "Notified Accountable (boss)"),
        (berlin(2026, 3, 7, 3, 15), "Notified Accountable (boss)"),
        (berlin(2026, 3, 7, 3, 20), "Notified Head of Support (head)"),
    ]


def test_repeats_pause_over_the_weekend(desk):
    # Friday 16:55 at tier 1 (every 10 minutes of office time): 5 minutes on Friday, then
    # Monday 09:05, 09:15.
    run = Run(desk, make_ticket(berlin(2026, 3, 6, 16, 55)))
    run.until(berlin(2026, 3, 9, 9, 20))
    assert [h.at for h in run.entries("notified")] == [berlin(2026, 3, 9, 9, 5), berlin(2026, 3, 9, 9, 15)]


# --- criteria: templates, days and hours, plugins -------------------------------------------------


def test_a_criterion_template_writes_the_move_comment():
    data = __import__("yaml").safe_load((__import__("pathlib").Path(__file__).parent / "policies" / "desk.yaml").read_text())
    criteria = [
        {**c, "then": {**c["then"], "template": "outage-raised"}} if c["id"] == "outage" else c
        for c in data["criteria"]
    ]
    policy = load(criteria=criteria, templates={"outage-raised": {"text": "[escalier] Outage: {to_tier_label} is on it ({reason})", "public": True}})
    ticket = make_ticket(berlin(2026, 3, 9, 9, 0))
    run = Run(policy, ticket)
    run.send(event(ticket, EventKind.COMMENTED, berlin(2026, 3, 9, 9, 30), "c1", actor_role=ActorRole.CUSTOMER,
                   comment=Comment(body="Total outage here", author_role=ActorRole.CUSTOMER)))
    assert run.state.tier == 3
    (comment,) = [a for a in run.of_kind(ActionKind.COMMENT) if a.tier == 3]
    assert comment.template == "outage-raised"
    assert comment.public is True
    assert comment.body.startswith("[escalier] Outage: tier 3 (Critical response) is on it (mentions 'outage'")
    assert not [a for a in run.of_kind(ActionKind.COMMENT) if a.template == "escalated"]


def test_a_days_condition_moves_the_ticket_when_the_day_comes():
    weekend = {"id": "weekend", "when": {"tier": [1], "days": ["sat", "sun"]}, "then": {"to_tier": 2, "bypass_timebox": True}}
    policy = load(criteria=[weekend])
    run = Run(policy, make_ticket(berlin(2026, 3, 6, 16, 0)))  # a Friday
    assert run.state.tier == 1
    run.until(berlin(2026, 3, 7, 12, 0))
    (move,) = run.entries("escalated")
    assert move.at == berlin(2026, 3, 7, 0, 0)  # local midnight: Saturday begins
    assert move.criteria == ("weekend",)
    assert "on a sat (criterion weekend)" in move.reason


def test_a_between_condition_holds_from_its_start_in_local_time():
    evening = {"id": "evening", "when": {"tier": [1], "between": "18:00-22:00"}, "then": {"to_tier": 2, "bypass_timebox": True}}
    policy = load(criteria=[evening])
    run = Run(policy, make_ticket(berlin(2026, 3, 9, 16, 0)))
    run.until(berlin(2026, 3, 9, 17, 59))
    assert run.state.tier == 1
    run.until(berlin(2026, 3, 9, 23, 0))
    (move,) = run.entries("escalated")
    assert move.at == berlin(2026, 3, 9, 18, 0)
    assert "between 18:00-22:00 local time (criterion evening)" in move.reason


def test_a_between_condition_that_wraps_midnight():
    night = {"id": "night", "when": {"tier": [1], "between": "22:00-06:00"}, "then": {"to_tier": 2, "bypass_timebox": True}}
    policy = load(criteria=[night])
    # On a Saturday, so tier 1's office-hours time-box stands still all day.
    # Created at 03:00: inside the window that began the evening before, so it moves at once.
    early = Run(policy, make_ticket(berlin(2026, 3, 7, 3, 0)))
    assert early.state.tier == 2
    # Created at 07:00: outside; the window opens at 22:00.
    late = Run(policy, make_ticket(berlin(2026, 3, 7, 7, 0)))
    late.until(berlin(2026, 3, 7, 21, 59))
    assert late.state.tier == 1
    late.until(berlin(2026, 3, 7, 23, 0))
    assert [h.at for h in late.entries("escalated")] == [berlin(2026, 3, 7, 22, 0)]


def test_a_plugin_criterion_from_extra_criteria():
    from pydantic import BaseModel

    from escalier.core.extensions import CriterionSpec

    class Churn(BaseModel):
        at_least: float

    def matches(ticket, state, now, options):
        return float(ticket.fields.get("churn_risk", 0)) >= options.at_least

    spec = CriterionSpec(name="churn_risk", options_model=Churn, matches=matches,
                         describe=lambda o: f"churn risk at least {o.at_least}")
    risky = {"id": "churn", "when": {"tier": [1], "extra": {"churn_risk": {"at_least": 0.8}}}, "then": {"to_tier": 2, "bypass_timebox": True}}
    policy = load(criteria=[risky])
    ticket = make_ticket(berlin(2026, 3, 9, 9, 0), fields={"steps": "x", "churn_risk": 0.5})
    run = Run(policy, ticket, extra_criteria={"churn_risk": spec})
    assert run.state.tier == 1
    run.send(event(ticket, EventKind.UPDATED, berlin(2026, 3, 9, 9, 30), "u1",
                   ticket_changes={"fields": {"steps": "x", "churn_risk": 0.9}}))
    assert run.state.tier == 2
    (move,) = run.entries("escalated")
    assert move.criteria == ("churn",)
    assert "churn risk at least 0.8 (criterion churn)" in move.reason
    # Without the plugin installed the criterion never matches.
    bare = Run(policy, ticket)
    bare.send(event(ticket, EventKind.UPDATED, berlin(2026, 3, 9, 9, 30), "u1",
                    ticket_changes={"fields": {"steps": "x", "churn_risk": 0.9}}))
    assert bare.state.tier == 1


def test_a_replay_that_ends_on_another_tier_corrects_the_placement(desk):
    ticket = make_ticket(berlin(2026, 3, 9, 9, 0))
    run = Run(desk, ticket)
    run.send(event(ticket, EventKind.COMMENTED, berlin(2026, 3, 9, 10, 10), "c1", actor_role=ActorRole.CUSTOMER,
                   comment=Comment(body="it is an outage", author_role=ActorRole.CUSTOMER)))
    assert run.state.tier == 3
    # The ticket was solved at 10:05, before the comment; the update arrives at 10:20. Replayed in
    # time order, the comment finds a solved ticket and moves nothing: it stays at tier 1.
    solved = {"status": "solved", "status_category": StatusCategory.SOLVED}
    late = run.send(event(ticket, EventKind.RESOLVED, berlin(2026, 3, 9, 10, 5), "r1", ticket_changes=solved),
                    berlin(2026, 3, 9, 10, 20))
    assert run.state.tier == 1
    (corrected,) = [h for h in late.history if h.kind == "corrected"]
    assert (corrected.from_tier, corrected.to_tier) == (3, 1)
    assert corrected.effect == "correct:r1"
    kinds = {a.kind for a in late.actions}
    assert {ActionKind.ASSIGN, ActionKind.REMOVE_TAGS, ActionKind.ADD_TAGS, ActionKind.COMMENT} <= kinds
    assert ("escalier-tier-3",) in [a.tags for a in late.actions if a.kind is ActionKind.REMOVE_TAGS]
    assert [a.target for a in late.actions if a.kind is ActionKind.ASSIGN] == [{"group": "tier-1"}]
    (comment,) = [a for a in late.actions if a.kind is ActionKind.COMMENT]
    assert comment.template == "corrected"
    assert comment.body.startswith("[escalier] Placement corrected to tier 1 (General support) after a late update")
    # The correction is an effect like any other: delivering the same event again changes nothing.
    again = decide(desk, run.state, late_event := event(ticket, EventKind.RESOLVED, berlin(2026, 3, 9, 10, 5), "r1",
                                                         ticket_changes=solved), berlin(2026, 3, 9, 10, 21))
    assert again.actions == () and late_event.id in run.state.seen_events
