"""``escalier demo``: the day plays through the real path, its summary tells the truth, Ctrl-C is clean.

The whole day runs in process at a high speed on the real sandboxes (Jira, Zendesk, mail), the
receiver over HTTP and the worker in its thread; nothing is mocked. The summary's numbers are
compared with a fresh reading of the store the run left behind (``--db``).
"""

from __future__ import annotations

import io
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import create_engine, select

from escalier.cli import main
from escalier.core.config import load_policy
from escalier.demo import POLICY_PATH, DemoClock, demo_policy, run_demo
from escalier.store.schema import audit, dead_letters, escalations, outbox

SPEED = 1500.0  # the day in about 16 seconds


@pytest.fixture(scope="module")
def played(tmp_path_factory: pytest.TempPathFactory):
    """One demo day at a high speed, its report, its printed summary and the store it left."""
    db = tmp_path_factory.mktemp("demo") / "demo.db"
    out = io.StringIO()
    began = time.monotonic()
    report = run_demo(speed=SPEED, browser=False, quiet=True, db=f"sqlite:///{db}", out=out)
    return report, out.getvalue(), f"sqlite:///{db}", time.monotonic() - began


@pytest.mark.timeout(180)
def test_every_scripted_scenario_happens_and_is_checked_against_the_sandboxes(played):
    report, output, _, seconds = played
    assert report.finished and not report.interrupted
    failed = {name: found for name, (ok, found) in report.checks.items() if not ok}
    assert not failed, failed
    assert set(report.checks) == {"breach", "vip", "outage", "repeat", "missing", "deadline",
                                  "deescalation", "email", "upstream"}
    assert report.ok
    assert "scenarios as scripted: 9 of 9" in output
    # The day of about six and a half hours plays in seconds, start-up and settling included.
    assert seconds < 90
    assert not report.problems, report.problems


@pytest.mark.timeout(180)
def test_the_on_call_acknowledged_the_page_with_the_link_in_its_mail(played):
    report, _, store_url, _ = played
    engine = create_engine(store_url)
    try:
        with engine.connect() as connection:
            acknowledged = connection.execute(
                select(escalations.c.ticket_id, audit.c.actor, audit.c.event_id)
                .join(audit, audit.c.escalation_id == escalations.c.id)
                .where(audit.c.kind == "acknowledged", escalations.c.ticket_id == report.tickets["outage"])
            ).all()
    finally:
        engine.dispose()
    # The first acknowledgement of the outage is Tomas's click: an event of the ack link's delivery.
    first = acknowledged[0]
    assert first.actor == "tomas" and first.event_id.startswith("ack-")
    ok, found = report.checks["repeat"]
    assert ok and "pages mailed to oncall@northwind.example" in found


@pytest.mark.timeout(180)
def test_every_escalation_reached_the_sandboxes_counted_by_their_calls(played):
    report, _, store_url, _ = played
    engine = create_engine(store_url)
    try:
        with engine.connect() as connection:
            moves = connection.execute(
                select(escalations.c.system, audit.c.kind)
                .join(audit, audit.c.escalation_id == escalations.c.id)
                .where(audit.c.kind.in_(("escalated", "functional", "hierarchical", "deescalated")))
            ).all()
            rows = connection.execute(select(outbox)).mappings().all()
    finally:
        engine.dispose()
    per_system = Counter(system for system, _ in moves)
    assert per_system == {"jira": 4, "zendesk": 2, "email": 1}
    jira, zendesk, mail = report.calls["jira"], report.calls["zendesk"], report.calls["mail"]
    # Each Jira move is an edit of the issue (component, assignee, labels) and a comment saying why.
    assert jira.get("PUT /rest/api/2/issue/{issueIdOrKey}", 0) >= per_system["jira"]
    assert jira.get("POST /rest/api/2/issue/{issueIdOrKey}/comment", 0) >= per_system["jira"]
    # Every channel of the demo's policy is of kind email: the notices of Jira and Zendesk tickets
    # went by mail, through the outbox rows of the mail connection, none through Jira's notify.
    assert jira.get("POST /rest/api/2/issue/{issueIdOrKey}/notify", 0) == 0
    notices = [row for row in rows if row["action"]["kind"] == "notify"]
    routed = {(row["system"], row["idempotency_key"].partition(":")[0]) for row in notices}
    assert {("email", "jira"), ("email", "zendesk")} <= routed
    assert {system for system, _ in routed} == {"email"}
    # One Zendesk update per step; the ones refused with 503 were asked for again and landed.
    zendesk_updates = sum(n for route, n in zendesk.items() if route.startswith("PUT /api/v2/tickets/"))
    assert report.refused_by_outage > 0
    assert zendesk_updates >= per_system["zendesk"] + report.refused_by_outage
    # Every action of every system reached its upstream: nothing pending, nothing dead.
    assert rows and all(row["state"] == "done" for row in rows)
    assert report.dead_letters == 0
    assert report.actions_applied == len(rows)
    # Every mail went through the SMTP server, and the IMAP reader looked into the mailbox.
    assert mail.get("SMTP DATA", 0) == report.mails_sent > 0
    assert any(command.startswith("IMAP ") for command in mail)


@pytest.mark.timeout(180)
def test_the_summary_says_what_the_store_holds(played):
    report, output, store_url, _ = played
    engine = create_engine(store_url)
    try:
        with engine.connect() as connection:
            entries = connection.execute(
                select(escalations.c.system, escalations.c.ticket_id, audit.c.kind, audit.c.to_tier)
                .join(audit, audit.c.escalation_id == escalations.c.id)
            ).all()
            dead = connection.execute(select(dead_letters)).all()
    finally:
        engine.dispose()
    kinds = Counter(kind for _, _, kind, _ in entries)
    reached: dict[int, set[tuple[str, str]]] = {}
    for system, ticket, kind, to_tier in entries:
        if kind in ("opened", "escalated") and (to_tier or 0) > 1:
            reached.setdefault(to_tier, set()).add((system, ticket))
    assert report.reached_tier == {tier: len(tickets) for tier, tickets in reached.items()} == {2: 4, 3: 2}
    assert report.breaches == kinds["sla-breach"] == 3
    assert report.notifications == kinds["notified"]
    assert report.missing_information == kinds["missing-information"] == 1
    assert report.moves == {kind: kinds[kind] for kind in ("escalated", "functional", "hierarchical", "deescalated")}
    assert report.dead_letters == len(dead)
    assert "escalations by tier reached: tier 2: 4, tier 3: 2" in output
    assert f"breaches caught: {kinds['sla-breach']};" in output
    assert f"notifications: {kinds['notified']}" in output
    jira_calls = sum(report.calls["jira"].values())
    assert re.search(rf"jira API calls: {jira_calls} \(\d+ writes\)", output)
    assert f"mails sent: {report.mails_sent} over SMTP" in output


@pytest.mark.timeout(180)
def test_the_temporary_directory_is_removed_and_the_urls_are_printed(played):
    report, output, _, _ = played
    assert report.workdir.name.startswith("escalier-demo-")
    assert not report.workdir.exists()
    assert report.urls["dashboard"] in output
    assert "What to try next:" in output
    assert "escalier parse jira" in output


@pytest.mark.timeout(60)
def test_ctrl_c_stops_the_demo_cleanly_and_removes_its_directory(tmp_path):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("DISPLAY", None)
    env.pop("WAYLAND_DISPLAY", None)
    process = subprocess.Popen(
        [sys.executable, "-m", "escalier", "demo", "--no-browser", "--speed", "360"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path,
    )
    lines: queue.Queue[str] = queue.Queue()
    reader = threading.Thread(target=lambda: [lines.put(line) for line in process.stdout], daemon=True)
    reader.start()
    workdir = None
    deadline = time.monotonic() + 30
    try:
        # Interrupt in the middle of the day: after the policy's path is printed and a step ran.
        while time.monotonic() < deadline:
            try:
                line = lines.get(timeout=0.5)
            except queue.Empty:
                assert process.poll() is None, process.stderr.read()
                continue
            found = re.search(r"policy\s+(\S+)/escalier\.yaml", line)
            if found:
                workdir = Path(found.group(1))
            if workdir is not None and re.match(r"\d\d:\d\d  > ", line):
                break
        assert workdir is not None and workdir.exists()
        process.send_signal(signal.SIGINT)
        status = process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)
    reader.join(timeout=5)
    stderr = process.stderr.read()
    rest = []
    while not lines.empty():
        rest.append(lines.get())
    assert status in (130, 0), stderr
    assert "Traceback" not in stderr, stderr
    assert "interrupted" in "".join(rest)
    assert not workdir.exists()


def test_help_says_what_the_demo_shows_and_what_to_try_next(capsys):
    with pytest.raises(SystemExit) as exited:
        main(["demo", "--help"])
    assert exited.value.code == 0
    text = capsys.readouterr().out
    for words in ("--speed", "--keep-running", "--no-browser", "--db", "--quiet",
                  "what to try next", "escalier check-config escalier/demo.yaml", "examples:",
                  "upstream", "outbox", "dashboard"):
        assert words in text, words


def test_the_shipped_policy_is_valid_and_takes_the_sandboxes_ports(capsys):
    assert main(["check-config", "--quiet", str(POLICY_PATH)]) == 0
    text = demo_policy("http://127.0.0.1:1001", "http://127.0.0.1:1002", 1003, 1004)
    assert "http://127.0.0.1:1001\n" in text and "http://127.0.0.1:1002\n" in text
    assert "port: 1003," in text and "port: 1004," in text
    assert "127.0.0.1:8091\n" not in text.split("format: 1")[1]


def test_the_policy_written_for_a_run_loads(tmp_path):
    path = tmp_path / "escalier.yaml"
    path.write_text(demo_policy("http://127.0.0.1:1001", "http://127.0.0.1:1002", 1003, 1004))
    policy = load_policy(path)
    assert policy.connectors["jira"]["url"] == "http://127.0.0.1:1001"
    assert policy.connectors["email"]["smtp"]["port"] == 1003


def test_the_demo_clock_runs_faster_and_changes_speed_without_a_jump():
    start = datetime(2026, 3, 3, 7, 30, tzinfo=UTC)
    clock = DemoClock(start, speed=600)
    time.sleep(0.02)
    assert clock.now() == start  # stands still until started
    clock.start()
    time.sleep(0.05)
    ran = (clock.now() - start).total_seconds()
    assert 0.05 * 600 <= ran < 10 * 600
    clock.set_speed(1)
    before = clock.now()
    time.sleep(0.05)
    assert timedelta(0) <= clock.now() - before < timedelta(seconds=5)
    clock.advance(3600)
    assert clock.now() - before >= timedelta(hours=1)
    with pytest.raises(ValueError):
        DemoClock(datetime(2026, 3, 3, 7, 30))
