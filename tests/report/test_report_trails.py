"""``escalier report`` over hand-written trails whose figures are known by construction.

The trails (tests/report/report_trails.py) are written through the store's own transactions, on
SQLite and, marked ``postgres``, on PostgreSQL; the report reads them back in chunks.
"""

from __future__ import annotations

import csv
import json
import math
import random
from datetime import UTC, datetime, timedelta

import pytest
from report_trails import SINCE, UNTIL

from escalier.report import Durations, UsageError, build_report, main, parse_window
from escalier.store import create_store_engine

H = 3600.0
M = 60.0


def _report(url: str, *, chunk: int = 5000, policy=None, timezone: str = "UTC"):
    engine = create_store_engine(url)
    try:
        window = parse_window(SINCE, UNTIL, by="day", timezone=timezone)
        return build_report(engine, window, chunk=chunk, policy=policy)
    finally:
        engine.dispose()


def _rows(report, name: str, key: str) -> dict:
    return {row[key]: row for row in report.tables[name].rows}


def _times(report) -> dict:
    return {(row["measure"], row["tier"]): (row["count"], row["median_s"], row["p90_s"])
            for row in report.tables["times"].rows}


def test_the_flow_counts_each_kind_on_its_day_and_ignores_what_lies_outside_the_window(trails_url):
    report = _report(trails_url)
    flow = _rows(report, "flow", "bucket")
    assert list(flow) == [f"2026-03-0{d}" for d in range(2, 9)]
    assert flow["2026-03-02"] == {
        "bucket": "2026-03-02", "opened": 2, "internal": 2, "functional": 1, "hierarchical": 1,
        "deescalated": 1, "resolved": 1, "reopened": 0, "breaches": 1,
    }
    assert (flow["2026-03-03"]["reopened"], flow["2026-03-03"]["resolved"]) == (1, 1)
    assert (flow["2026-03-04"]["internal"], flow["2026-03-04"]["resolved"]) == (1, 1)
    assert (flow["2026-03-06"]["opened"], flow["2026-03-06"]["deescalated"]) == (1, 1)
    assert all(not any(v for k, v in flow[d].items() if k != "bucket") for d in ("2026-03-07", "2026-03-08"))
    # The 2026-02-20 opening and the 2026-03-10 reopening are outside the window.
    assert sum(row["opened"] for row in flow.values()) == 4
    assert sum(row["reopened"] for row in flow.values()) == 1
    by_tier = _rows(report, "escalations_by_tier", "bucket")
    assert by_tier["2026-03-02"]["tier_2"] == 4 and by_tier["2026-03-04"]["tier_2"] == 1
    assert sum(row["total"] for row in by_tier.values()) == 5
    assert report.entries == 28  # the whole trails of the 5 active escalations, up to --until
    assert report.escalations_read == 5


def test_stays_and_times_per_tier_are_those_of_the_trails(trails_url):
    report = _report(trails_url)
    tiers = _rows(report, "tiers", "tier")
    assert tiers["tier 1"] == {
        "tier": "tier 1", "stays": 3, "by_opening": 2, "by_escalation": 0, "by_deescalation": 1,
        "by_reopening": 0, "escalated_onwards": 2, "deescalated_out": 0, "resolved_here": 1,
        "still_here": 0,
    }
    assert tiers["tier 2"] == {
        "tier": "tier 2", "stays": 7, "by_opening": 1, "by_escalation": 4, "by_deescalation": 1,
        "by_reopening": 1, "escalated_onwards": 1, "deescalated_out": 1, "resolved_here": 4,
        "still_here": 1,
    }
    assert tiers["tier 3"]["stays"] == 1 and tiers["tier 3"]["deescalated_out"] == 1
    times = _times(report)
    # Nearest rank: the median of n values is the ceil(n/2)-th, the p90 the ceil(0.9n)-th.
    assert times[("time to acknowledge", "tier 1")] == (2, 5 * M, 20 * M)
    assert times[("time to acknowledge", "tier 2")] == (2, 1 * H, 1.5 * H)
    assert times[("time to escalate", "tier 1")] == (2, 1 * H, 1 * H)
    assert times[("time to escalate", "tier 2")] == (2, 1 * H, 4 * H)  # functional, then hierarchical
    assert times[("time to escalate", "tier 3")] == (0, None, None)  # a de-escalation is no escalation
    assert times[("time in tier", "tier 2")] == (6, 1 * H, 4 * H)  # 40m, 1h, 1h, 1h, 3h, 4h
    assert times[("time in tier", "tier 3")] == (1, 20 * M, 20 * M)
    assert times[("time to resolve", "tier 2")] == (2, 1 * H, 4 * H)
    assert times[("time to resolve", "tier 1")] == (1, 1 * H, 1 * H)
    assert times[("time to resolve", "all")] == (3, 1 * H, 4 * H)
    assert report.quantile_method == "exact (nearest rank)"


def test_breaches_warnings_ping_pong_reopen_and_deescalations(trails_url):
    report = _report(trails_url)
    sla = _rows(report, "sla", "tier")
    assert (sla["tier 2"]["breached"], sla["tier 2"]["stays"], sla["tier 2"]["ack_breached"]) == (1, 7, 1)
    assert sla["tier 2"]["breach_rate"] == pytest.approx(1 / 7)
    # SUP-2's acknowledge warning was followed by its breach; its resolve warning by the hand-over.
    assert (sla["tier 2"]["warned"], sla["tier 2"]["acted_on"], sla["tier 2"]["breached_anyway"]) == (2, 1, 1)
    assert (sla["tier 1"]["warned"], sla["tier 1"]["acted_on"]) == (1, 1)  # acknowledged
    assert (sla["tier 3"]["warned"], sla["tier 3"]["acted_on"]) == (1, 1)  # moved down in time
    s = report.summary
    # Opened in the window: SUP-1, SUP-2, SUP-3, SUP-4; escalated: all but SUP-3.
    assert (s["escalations_opened"], s["escalations_escalated"], s["escalations_resolved"]) == (4, 3, 3)
    assert (s["reopened"], s["reopen_rate"]) == (1, pytest.approx(1 / 3))
    assert (s["ping_pong"], s["ping_pong_rate"]) == (1, 0.25)
    assert (s["deescalated"], s["deescalated_rate"]) == (2, pytest.approx(2 / 3))
    assert (s["breached"], s["breach_rate"]) == (1, 0.25)
    assert (s["warned_clocks"], s["warnings_acted_on"]) == (4, 3)
    assert report.tables["ping_pong"].rows == [
        {"system": "jira", "ticket": "SUP-1", "tiers": "1 -> 2 -> 1 -> 2", "reversals": 2}
    ]
    down = _rows(report, "deescalations", "why")
    assert down["manual"]["count"] == 1 and down["manual"]["median_s"] == 1 * H
    assert down["workaround-found"]["count"] == 1 and down["workaround-found"]["median_s"] == 20 * M


def test_the_tickets_behind_escalations_and_the_load_per_team_and_person(trails_url, demo_policy):
    from escalier.core.config import load_policy

    report = _report(trails_url)
    # Escalated in the window: SUP-1, SUP-2, zendesk 5 (opened before it) and SUP-4 (placed at tier 3).
    tags = {row["tag"]: row["escalations"] for row in report.tables["top_tags"].rows}
    assert tags == {"billing": 2, "sso": 1, "api": 1, "vip": 1, "outage": 1}
    organizations = {row["organization"]: row["share"] for row in report.tables["top_organizations"].rows}
    assert organizations == {"acme": 0.5, "globex": 0.25}
    components = {row["component"] for row in report.tables["top_components"].rows}
    assert components == {"Billing", "API", "Support L2", "Platform"}
    # With the policy, the components Escalier sets at tiers 2 and 3 are its own, and people have names.
    named = _report(trails_url, policy=load_policy(demo_policy))
    assert {row["component"] for row in named.tables["top_components"].rows} == {"Billing", "API"}
    people = _rows(named, "people", "person")
    # Priya by email in Jira and by her Zendesk user id (360003) in Zendesk: one person.
    assert people["Priya Raman (priya)"] == {
        "person": "Priya Raman (priya)", "acknowledged": 2, "resolved": 4, "escalations": 0,
        "deescalations": 1, "reopened": 0, "total": 7,
    }
    assert people["Mia Hoffmann (mia)"]["acknowledged"] == 2
    assert people["Mia Hoffmann (mia)"]["escalations"] == 1
    assert people["Tomas Novak (tomas)"]["deescalations"] == 1
    assert "360003" not in people and people["dana@customer.example"]["reopened"] == 1
    teams = _rows(named, "teams", "team")
    assert teams["Engineering (engineering)"]["stays"] == 1 and teams["Engineering (engineering)"]["still"] == 1
    assert teams["management level 1 (Head of Support)"]["raised"] == 1
    assert teams["tier 1 (General support)"]["stays"] == 3
    assert teams["tier 2 (Specialists)"]["stays"] == 6
    # Hours held: 1+1+1 at tier 1.
    assert teams["tier 1 (General support)"]["hours"] == 3.0


def test_reading_in_chunks_of_three_gives_the_same_report(trails_url):
    whole = _report(trails_url)
    chunked = _report(trails_url, chunk=3)
    assert {n: t.rows for n, t in chunked.tables.items()} == {n: t.rows for n, t in whole.tables.items()}
    assert chunked.summary == whole.summary


def test_days_are_cut_in_the_named_time_zone(trails_url):
    # In Pacific/Kiritimati (UTC+14), 09:00 UTC is 23:00 the same day and 10:00 UTC the next day.
    report = _report(trails_url, timezone="Pacific/Kiritimati")
    flow = _rows(report, "flow", "bucket")
    assert flow["2026-03-02"]["opened"] == 1  # SUP-1 at 09:00 UTC
    assert flow["2026-03-02"]["internal"] == 0
    assert flow["2026-03-03"]["opened"] == 1  # SUP-2 at 10:00 UTC
    assert flow["2026-03-03"]["internal"] == 2  # 10:00 and 12:00 UTC
    assert flow["2026-03-03"]["functional"] == 1


def test_the_command_writes_json_csv_and_html_that_agree(trails_url, tmp_path, capsys):
    status = main(["--db", trails_url, "--since", SINCE, "--until", UNTIL, "--json", "--quiet",
                   "--csv", str(tmp_path / "csv"), "--html", str(tmp_path / "report.html")])
    captured = capsys.readouterr()
    assert status == 0, captured.err
    document = json.loads(captured.out)
    assert document["window"] == {"since": SINCE, "until": UNTIL, "by": "day", "timezone": "UTC"}
    assert document["summary"]["ping_pong"] == 1
    assert document["quantiles"]["definition"] == "nearest rank"
    names = sorted(p.name for p in (tmp_path / "csv").iterdir())
    assert names == sorted(["summary.csv", *(f"{name}.csv" for name in document["tables"])])
    for name, table in document["tables"].items():
        with (tmp_path / "csv" / f"{name}.csv").open(newline="") as handle:
            rows = list(csv.DictReader(handle))
        assert [c["key"] for c in table["columns"]] == list(rows[0]) if rows else True
        assert len(rows) == len(table["rows"]), name
        for row, expected in zip(rows, table["rows"], strict=True):
            assert row == {k: "" if v is None else str(v) for k, v in expected.items()}, name
    page = (tmp_path / "report.html").read_text()
    assert page.startswith("<!doctype html>") and "<script" not in page.lower()
    # Nothing to fetch: no script, no link, no image; the only URL is the SVG namespace.
    assert "<link" not in page and "src=" not in page and "@import" not in page
    assert page.replace('xmlns="http://www.w3.org/2000/svg"', "").count("http") == 0
    assert '<rect x="' in page and "<title>2026-03-02 · internal: 2</title>" in page


def test_the_terminal_shows_every_table_and_the_key_figures(trails_url, capsys):
    assert main(["--db", trails_url, "--since", SINCE, "--until", UNTIL, "-q"]) == 0
    out = capsys.readouterr().out
    assert "Escalation report: 2026-03-02 00:00+00:00 to 2026-03-09 00:00+00:00 (per day, UTC)" in out
    assert "reopen rate                       33.3% (1 of 3 resolved)" in out
    assert "ping-pong rate                    25.0% (1 of 4 opened)" in out
    for title in ("Escalations per day, by path", "Stays per tier", "Times per tier", "SLA breaches",
                  "De-escalations", "Ping-pong", "Tags behind", "Load per team", "Load per person"):
        assert title in out
    assert "jira    SUP-1   1 -> 2 -> 1 -> 2" in out
    assert "time to resolve      all         3   1h00m  4h00m" in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--since", "yesterday"], "--since yesterday: not a date or time"),
        (["--since", "2026-03-09", "--until", "2026-03-02"], "is not before --until"),
        (["--timezone", "Mars/Olympus"], "--timezone Mars/Olympus: not a time zone"),
        (["--until", "soon"], "--until soon: not a date or time"),
    ],
)
def test_bad_arguments_exit_2_naming_the_option(trails_url, capsys, argv, message):
    assert main(["--db", trails_url, *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_a_missing_store_or_file_is_named(tmp_path, capsys, trails_url):
    assert main(["--db", f"sqlite:///{tmp_path / 'none.db'}"]) == 2
    assert f"no store at {tmp_path / 'none.db'}" in capsys.readouterr().err
    assert main(["--db", "nonsense"]) == 2
    assert "--db 'nonsense' is not a SQLAlchemy URL" in capsys.readouterr().err
    empty = tmp_path / "empty.db"
    empty.write_bytes(b"")
    assert main(["--db", f"sqlite:///{empty}"]) == 2
    assert "is not an Escalier store" in capsys.readouterr().err
    assert main(["--db", trails_url, "--html", str(tmp_path / "no" / "such" / "r.html")]) == 2
    assert "the directory" in capsys.readouterr().err
    assert main(["--db", trails_url, "--policy", str(tmp_path / "none.yaml")]) == 2
    assert "--policy" in capsys.readouterr().err
    (tmp_path / "bad.yaml").write_text("format: 1\nname: x\ntiers: []\n")
    assert main(["--db", trails_url, "--policy", str(tmp_path / "bad.yaml")]) == 2
    assert "bad.yaml" in capsys.readouterr().err


def test_help_explains_with_examples(capsys):
    with pytest.raises(SystemExit) as exited:
        main(["--help"])
    assert exited.value.code == 0
    text = capsys.readouterr().out
    for words in ("--since", "--html", "--csv", "--json", "--policy", "--db", "examples:",
                  "escalier report --db sqlite:///demo.db --since all", "ping-pong", "exit status"):
        assert words in text, words


def test_the_window_reads_durations_dates_and_all():
    now = datetime(2026, 3, 31, 12, tzinfo=UTC)
    assert parse_window("30d", None, now=now).since == now - timedelta(days=30)
    assert parse_window("all", None, now=now).since is None
    window = parse_window("2026-03-01", "2026-04-01", timezone="Europe/Berlin")
    assert window.since == datetime(2026, 2, 28, 23, tzinfo=UTC)
    assert window.until == datetime(2026, 3, 31, 22, tzinfo=UTC)  # summer time from 29 March
    with pytest.raises(UsageError):
        parse_window("0d", None, now=now)


def test_quantiles_are_the_nearest_rank_and_the_sketch_stays_within_its_accuracy():
    exact = Durations()
    for value in (5.0, 1.0, 4.0, 2.0, 3.0):
        exact.add(value)
    assert exact.summary() == (5, 3.0, 5.0)
    rng = random.Random(3)
    values = [rng.lognormvariate(8, 1.5) for _ in range(20_000)] + [0.0] * 500
    sketch = Durations(limit=1000)
    for value in values:
        sketch.add(value)
    assert not sketch.exact
    ordered = sorted(values)
    for q in (0.01, 0.5, 0.9, 0.99):
        truth = ordered[math.ceil(q * len(ordered)) - 1]
        assert sketch.quantile(q) == pytest.approx(truth, rel=0.0101), q
    assert sketch.quantile(0.01) == 0.0
    assert sketch.count == len(values)
