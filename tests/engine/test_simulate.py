"""``escalier simulate``: the timeline, its JSON, holidays, and bad input files."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from escalier.simulate import run

HERE = Path(__file__).resolve().parent
POLICY = HERE / "policies" / "desk.yaml"


def ticket_file(tmp_path: Path, created_at: str, **fields: object) -> Path:
    data = {"system": "zendesk", "id": "7", "subject": "Export fails", "severity": "high",
            "users_affected": 1, "fields": {"steps": "run it"}, "created_at": created_at, **fields}
    path = tmp_path / "ticket.json"
    path.write_text(json.dumps(data))
    return path


def timeline(tmp_path: Path, created_at: str, **options: object) -> list[dict]:
    out = io.StringIO()
    assert run(POLICY, ticket_file(tmp_path, created_at), as_json=True, out=out, until="6d", **options) == 0
    return json.loads(out.getvalue())["timeline"]


def test_the_table_says_when_and_why(tmp_path):
    out = io.StringIO()
    status = run(POLICY, ticket_file(tmp_path, "2026-03-06T16:50:00+01:00"), until="3d", out=out)
    text = out.getvalue()
    assert status == 0
    assert "Mon 2026-03-09 10:50 CET  2026-03-09 09:50" in text
    assert "1->2" in text and "the time-box of 2h at tier 1 ended with the ticket unresolved" in text


def test_a_holiday_shifts_the_timeline(tmp_path):
    def moved(created_at: str) -> str:
        rows = timeline(tmp_path, created_at)
        return next(r["at_local"] for r in rows if r["kind"] == "escalated")

    # A Wednesday at 16:50: 10 minutes that day, the rest on Thursday morning.
    assert moved("2026-04-01T16:50:00+02:00") == "Thu 2026-04-02 10:50 CEST"
    # Good Friday (3 April) and Easter Monday (6 April) are Berlin holidays: created on Good
    # Friday, the clock first runs on Tuesday, so the 2h time-box ends at 11:00.
    assert moved("2026-04-03T10:00:00+02:00") == "Tue 2026-04-07 11:00 CEST"


def test_events_are_read_from_json_lines(tmp_path):
    events = tmp_path / "events.jsonl"
    events.write_text(
        '{"id": "p", "kind": "status_changed", "occurred_at": "2026-03-09T10:00:00+01:00", '
        '"ticket": {"status": "pending", "status_category": "pending"}}\n'
        '{"id": "o", "kind": "status_changed", "occurred_at": "2026-03-09T12:00:00+01:00", '
        '"ticket": {"status": "open", "status_category": "open"}}\n'
    )
    rows = timeline(tmp_path, "2026-03-09T09:00:00+01:00", events_path=events)
    kinds = [r["kind"] for r in rows]
    assert "paused" in kinds and "resumed" in kinds
    assert next(r["at_local"] for r in rows if r["kind"] == "escalated") == "Mon 2026-03-09 13:00 CET"


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("{not json", "ticket.json:1: not valid JSON"),
        ('{"system": "zendesk", "id": "1", "created_at": "2026-03-09T09:00:00"}', "ticket.json: created_at: must carry a time zone"),
        ('{"system": "zendesk", "id": "1"}', "ticket.json: created_at: Field required"),
    ],
)
def test_a_bad_ticket_file_is_one_line_and_exit_2(tmp_path, capsys, content, expected):
    path = tmp_path / "ticket.json"
    path.write_text(content)
    assert run(POLICY, path, out=io.StringIO()) == 2
    err = capsys.readouterr().err.strip()
    assert expected in err and "\n" not in err and "Traceback" not in err


def test_a_bad_events_line_names_its_line(tmp_path, capsys):
    events = tmp_path / "events.jsonl"
    events.write_text('{"id": "a", "kind": "commented", "occurred_at": "2026-03-09T10:00:00+01:00"}\n{"kind": "exploded"}\n')
    assert run(POLICY, ticket_file(tmp_path, "2026-03-09T09:00:00+01:00"), events_path=events, out=io.StringIO()) == 2
    err = capsys.readouterr().err.strip()
    assert "events.jsonl:2: kind:" in err and "\n" not in err


def test_missing_files_and_bad_policies(tmp_path, capsys):
    assert run(tmp_path / "nope.yaml", ticket_file(tmp_path, "2026-03-09T09:00:00+01:00"), out=io.StringIO()) == 2
    assert "nope.yaml: no such file" in capsys.readouterr().err
    assert run(POLICY, tmp_path / "missing.json", out=io.StringIO()) == 2
    assert "missing.json: no such file" in capsys.readouterr().err
    assert run(POLICY, ticket_file(tmp_path, "2026-03-09T09:00:00+01:00"), until="someday", out=io.StringIO()) == 2
    assert "--until" in capsys.readouterr().err


def test_repeated_notifications_fold_into_one_line_unless_all(tmp_path):
    ticket = ticket_file(tmp_path, "2026-03-09T09:00:00+01:00", fields={})
    folded, every = io.StringIO(), io.StringIO()
    assert run(POLICY, ticket, until="1d", out=folded) == 0
    assert run(POLICY, ticket, until="1d", out=every, show_all=True) == 0
    assert "notified Head of Support (head) \u00d73, 10:00\u201310:20" in folded.getvalue()
    assert "notified Responsible and Informed (tier-1) \u00d72, 09:10\u201309:20" in folded.getvalue()
    assert every.getvalue().count("Notified Head of Support (head)") == 3
    assert "\u00d7" not in every.getvalue()
    assert len(folded.getvalue().splitlines()) < len(every.getvalue().splitlines())


def test_json_keeps_every_notification(tmp_path):
    out = io.StringIO()
    assert run(POLICY, ticket_file(tmp_path, "2026-03-09T09:00:00+01:00", fields={}), as_json=True, out=out, until="1d") == 0
    rows = json.loads(out.getvalue())["timeline"]
    head = [r for r in rows if r["kind"] == "notified" and "Head of Support" in r["reason"]]
    assert len(head) == 3


EXAMPLES = HERE.parents[1] / "examples"


def test_a_move_shows_each_entry_in_the_time_of_the_tier_it_concerns():
    # Tier 1 works in Berlin, tier 2 in New York. The decision that moves the ticket first says
    # that nobody at tier 1 acknowledged, then escalates: both are about tier 1, in Berlin time,
    # and come in that order; what follows is about tier 2, in New York time.
    out = io.StringIO()
    ticket = EXAMPLES / "tickets" / "sync-failure.json"
    assert run(EXAMPLES / "escalier.yaml", ticket, as_json=True, out=out) == 0
    rows = json.loads(out.getvalue())["timeline"]
    move = next(i for i, r in enumerate(rows) if r["kind"] == "escalated" and r["to_tier"] == 2)
    exhausted, escalated, after = rows[move - 1], rows[move], rows[move + 1]
    assert exhausted["kind"] == "notification-exhausted" and "tier 1" in exhausted["reason"]
    assert exhausted["stimulus"] == escalated["stimulus"]
    assert (exhausted["tier"], exhausted["at_local"]) == (1, "Mon 2026-03-09 08:30 CET")
    assert (escalated["tier"], escalated["at_local"]) == (1, "Mon 2026-03-09 08:30 CET")
    assert (after["tier"], after["timezone"]) == (2, "America/New_York")

    out = io.StringIO()
    assert run(EXAMPLES / "escalier.yaml", ticket, out=out) == 0
    lines = out.getvalue().splitlines()
    at = next(i for i, line in enumerate(lines) if "1->2" in line and "escalated" in line)
    assert lines[at - 1].split()[:6] == [
        "Mon", "2026-03-09", "08:30", "CET", "2026-03-09", "07:30"
    ] and lines[at - 1].split()[6:8] == ["1", "notification-exhausted"]
    assert lines[at].startswith("Mon 2026-03-09 08:30 CET  2026-03-09 07:30  1->2")
