"""``escalier report`` on the store a demo day leaves, each table against SQL over its audit trail.

The demo day (escalier/demo.py) is played once per session at a high speed (about 20 s), through
the real path: sandboxes, signed webhooks, the receiver, the store, the engine, the outbox. The
expectations come from demo_truth.py: direct queries of the audit and escalations tables.
"""

from __future__ import annotations

import contextlib
import io
import json
from collections import Counter

import pytest
from demo_truth import (
    behind,
    breaches_by_tier,
    escalations_by_tier,
    flow,
    nearest_rank,
    people,
    stays,
    tier_paths,
    times,
    warnings,
)

from escalier.report import main

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

DAY = "2026-03-03"  # the demo's Tuesday


@pytest.fixture(scope="module")
def document(demo_store, demo_policy):
    """The report of the whole demo day as JSON, with the demo's policy naming things."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        status = main(["--db", demo_store, "--policy", str(demo_policy), "--since", "all", "--json", "-q"])
    assert status == 0
    return json.loads(out.getvalue())


def _tier(document: dict, level: int) -> str:
    return next(row["tier"] for row in document["tables"]["tiers"]["rows"]
                if row["tier"].startswith(f"tier {level} "))


def test_escalations_per_day_by_path_and_tier_are_those_of_the_audit(document, demo_store):
    truth = flow(demo_store)
    rows = document["tables"]["flow"]["rows"]
    assert [row["bucket"] for row in rows] == sorted(truth) == [DAY]
    row = rows[0]
    day = truth[DAY]
    assert (row["opened"], row["internal"], row["functional"], row["hierarchical"]) == (
        day["opened"], day["escalated"], day["functional"], day["hierarchical"])
    assert (row["deescalated"], row["resolved"], row["reopened"], row["breaches"]) == (
        day["deescalated"], day["resolved"], day["reopened"], day["sla-breach"])
    # What the demo scripts: four moves up a tier, one to engineering, one to management.
    assert (row["internal"], row["functional"], row["hierarchical"], row["deescalated"]) == (4, 1, 1, 1)
    by_tier = document["tables"]["escalations_by_tier"]["rows"][0]
    reached = escalations_by_tier(demo_store)
    for (day_of, tier), n in reached.items():
        assert by_tier[f"tier_{tier}"] == n, (day_of, tier)
    assert by_tier["total"] == sum(reached.values()) == 6
    summary = document["summary"]
    assert summary["escalations"] == 6 and summary["sla_breaches"] == day["sla-breach"] == 3


def test_times_per_tier_are_the_nearest_ranks_of_the_durations_in_the_audit(document, demo_store):
    truth = times(demo_store)
    rows = {(row["measure"], row["tier"]): row for row in document["tables"]["times"]["rows"]}
    checked = 0
    for level in (1, 2, 3):
        tier = _tier(document, level)
        for measure in ("time to acknowledge", "time to escalate", "time in tier", "time to resolve"):
            values = truth.get((measure, level), [])
            row = rows[(measure, tier)]
            assert row["count"] == len(values), (measure, tier)
            assert row["median_s"] == pytest.approx(nearest_rank(values, 0.5), abs=1e-6), (measure, tier)
            assert row["p90_s"] == pytest.approx(nearest_rank(values, 0.9), abs=1e-6), (measure, tier)
            checked += len(values)
    everything = truth[("time to resolve", 0)]
    assert rows[("time to resolve", "all")]["count"] == len(everything) == 6
    assert rows[("time to resolve", "all")]["median_s"] == pytest.approx(nearest_rank(everything, 0.5))
    assert checked > 30
    assert document["quantiles"]["method"] == "exact (nearest rank)"


def test_stays_breaches_and_warnings_per_tier_are_those_of_the_audit(document, demo_store):
    entered = Counter(stay["tier"] for stay in stays(demo_store))
    ended = Counter((stay["tier"], stay["ended_by"]) for stay in stays(demo_store))
    tiers = {row["tier"]: row for row in document["tables"]["tiers"]["rows"]}
    sla = {row["tier"]: row for row in document["tables"]["sla"]["rows"]}
    breaches = breaches_by_tier(demo_store)
    warned = warnings(demo_store)
    for level in (1, 2, 3):
        tier = _tier(document, level)
        assert tiers[tier]["stays"] == entered[level], tier
        assert tiers[tier]["resolved_here"] == ended[(level, "resolved")], tier
        assert tiers[tier]["escalated_onwards"] == ended[(level, "escalated")] + ended[(level, "functional")]
        assert sla[tier]["ack_breached"] + sla[tier]["resolve_breached"] == breaches.get(level, 0), tier
        assert sla[tier]["breach_rate"] == pytest.approx(sla[tier]["breached"] / entered[level]), tier
        assert sla[tier]["warned"] == sum(warned[level].values()), tier
        assert sla[tier]["breached_anyway"] == warned[level]["breached"], tier
        assert sla[tier]["acted_on"] == warned[level]["acted_on"], tier
        assert sla[tier]["pending"] == warned[level]["pending"], tier
    summary = document["summary"]
    assert summary["warned_clocks"] == sum(sum(c.values()) for c in warned.values()) > 0
    assert summary["warnings_acted_on"] == sum(c["acted_on"] for c in warned.values()) > 0


def test_ping_pong_reopens_and_deescalations_are_those_of_the_audit(document, demo_store):
    paths = tier_paths(demo_store)
    bouncing = [e for e, path in paths.items() if len(path) != len(set(path))]
    summary = document["summary"]
    assert summary["ping_pong"] == len(bouncing) == len(document["tables"]["ping_pong"]["rows"])
    assert summary["escalations_opened"] == len(paths) == 7
    resolved = {row[0] for row in _q(demo_store, "SELECT DISTINCT escalation_id FROM audit WHERE kind = 'resolved'")}
    reopened = {row[0] for row in _q(demo_store, "SELECT DISTINCT escalation_id FROM audit WHERE kind = 'reopened'")}
    assert summary["escalations_resolved"] == len(resolved)
    assert summary["reopened"] == len(reopened)
    assert summary["reopen_rate"] == pytest.approx(len(reopened) / len(resolved))
    down = _q(demo_store, "SELECT criteria, count(*) FROM audit WHERE kind = 'deescalated' GROUP BY 1")
    expected = {", ".join(json.loads(criteria)): n for criteria, n in down}
    assert {row["why"]: row["count"] for row in document["tables"]["deescalations"]["rows"]} == expected
    assert expected == {"workaround-found": 1}
    assert summary["deescalated"] == 1


def test_what_is_behind_escalations_and_the_load_per_person_are_those_of_the_store(
    document, demo_store, demo_policy
):
    tags, components, organizations, escalated = behind(demo_store, demo_policy)
    tables = document["tables"]
    assert {r["tag"]: r["escalations"] for r in tables["top_tags"]["rows"]} == dict(tags.most_common(10))
    assert {r["component"]: r["escalations"] for r in tables["top_components"]["rows"]} == dict(components)
    assert {r["organization"]: r["escalations"] for r in tables["top_organizations"]["rows"]} == dict(organizations)
    assert "bug-confirmed" in tags and "deadline-conflict" in tags
    assert all(r["share"] == pytest.approx(r["escalations"] / escalated) for r in tables["top_tags"]["rows"])
    truth = people(demo_store, demo_policy)
    rows = {row["person"]: row for row in tables["people"]["rows"]}
    for person, kinds in truth.items():
        row = rows[person]
        assert row["acknowledged"] == kinds["acknowledged"], person
        assert row["resolved"] == kinds["resolved"], person
        assert row["escalations"] == sum(kinds[k] for k in ("escalated", "functional", "hierarchical"))
        assert row["deescalations"] == kinds["deescalated"], person
    assert "Priya Raman (priya)" in rows and rows["Priya Raman (priya)"]["resolved"] == 4
    teams = {row["team"]: row for row in tables["teams"]["rows"]}
    functional = _q(demo_store, "SELECT count(*) FROM audit WHERE kind = 'functional'")[0][0]
    assert teams["Engineering (engineering)"]["stays"] == functional == 1
    assert teams["management level 1 (Head of Support)"]["raised"] == 1


def test_the_terminal_report_of_the_demo_reads_as_tables(demo_store, demo_policy, capsys):
    assert main(["--db", demo_store, "--policy", str(demo_policy), "--since", "2026-03-03",
                 "--until", "2026-03-04", "--timezone", "Europe/Berlin", "-q"]) == 0
    out = capsys.readouterr().out
    assert "Escalation report: 2026-03-03 00:00+01:00 to 2026-03-04 00:00+01:00 (per day, Europe/Berlin)" in out
    assert "  2026-03-03       7         4           1             1             1         6" in out
    assert "workaround-found      1" in out
    assert "Priya Raman (priya)" in out


def _q(url: str, sql: str):
    from demo_truth import query

    return query(url, sql)
