"""`escalier parse jira` and `escalier check-config --connect` as an admin runs them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from jira_rig import POLICY, TOKEN

from escalier.cli import main
from escalier.connectors.jira.sandbox import JiraSandbox

ROOT = Path(__file__).resolve().parents[3]
PAYLOADS = ROOT / "tests" / "payloads" / "jira"


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "escalier", *args], capture_output=True, text=True, timeout=60,
        env=env, check=False,
    )


def test_parse_prints_the_documented_json_for_an_issue_event() -> None:
    done = run("parse", "jira", str(PAYLOADS / "dc-issue-created.json"), "--json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert set(result) == {"source", "events", "skipped"}
    assert result["source"] == "jira" and result["skipped"] is None
    [event] = result["events"]
    assert event["kind"] == "created" and event["ticket_id"] == event["ticket"]["id"]
    assert event["id"].startswith("jira:default:") and event["id"].endswith(":created")


def test_parse_says_why_a_delivery_carries_nothing_to_act_on() -> None:
    done = run("parse", "jira", str(PAYLOADS / "cloud-worklog-updated.json"), "--json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["events"] == [] and result["skipped"]["class"] == "unsupported_event"
    plain = run("parse", "jira", str(PAYLOADS / "cloud-worklog-updated.json"))
    assert plain.stdout.startswith("skipped (unsupported_event): ")


def test_parse_shows_a_ticket_the_payload_lacks_as_read_later() -> None:
    done = run("parse", "jira", str(PAYLOADS / "server-comment-created.json"))
    assert done.returncode == 0, done.stderr
    assert "commented" in done.stdout
    assert "not in the payload; the worker reads it from the upstream" in done.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("jira", "{bad}"), "is not JSON"),
        (("nosuch", "{good}"), "no connector named 'nosuch'"),
        (("jira", "{good}", "--header", "no colon"), "is not 'Name: value'"),
        (("jira", "{missing}"), "cannot read"),
    ],
)
def test_parse_refuses_what_it_cannot_read_with_a_reason_and_exit_2(tmp_path, args, message) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"webhookEvent": "jira:issue_created", ')
    paths = {"{bad}": str(bad), "{good}": str(PAYLOADS / "dc-issue-created.json"),
             "{missing}": str(tmp_path / "nothing.json")}
    done = run("parse", *[paths.get(a, a) for a in args])
    assert done.returncode == 2
    assert message in done.stderr and "Traceback" not in done.stderr


@pytest.fixture
def sandbox():
    with JiraSandbox(deployment="cloud", token=TOKEN) as running:
        yield running


def write_policy(tmp_path: Path, sandbox: JiraSandbox) -> Path:
    path = tmp_path / "escalier.yaml"
    ids = {h: sandbox.user(h)["accountId"] for h in ("mia", "priya", "tomas")}
    path.write_text(POLICY.format(url=sandbox.url, deployment="cloud", user="    user: escalier@example.com\n",
                                  service_account=sandbox.service_account, writes_per_minute=60,
                                  reconcile_every="off", **ids))
    return path


def test_check_config_connect_says_who_we_are_on_the_site(tmp_path, sandbox, capsys, monkeypatch) -> None:
    monkeypatch.setenv("JIRA_API_TOKEN", TOKEN)
    monkeypatch.setenv("JIRA_WEBHOOK_SECRET", "s")
    assert main(["check-config", str(write_policy(tmp_path, sandbox)), "--connect"]) == 0
    out = capsys.readouterr().out
    assert "jira/default: ok: " in out and "Jira Cloud" in out and sandbox.url in out
    assert sandbox.calls().get("GET /rest/api/2/myself") == 1


def test_check_config_connect_names_a_refused_login_and_a_missing_variable(
    tmp_path, sandbox, capsys, monkeypatch
) -> None:
    policy = str(write_policy(tmp_path, sandbox))
    monkeypatch.setenv("JIRA_API_TOKEN", "not-the-token")
    assert main(["check-config", policy, "--connect"]) == 1
    out = capsys.readouterr().out
    assert "jira/default: FAILED: AuthError" in out and "not-the-token" not in out

    monkeypatch.delenv("JIRA_API_TOKEN")
    assert main(["check-config", policy, "--connect"]) == 1
    err = capsys.readouterr().err
    assert "jira/default: environment variable JIRA_API_TOKEN is not set" in err


def test_serve_stops_before_starting_when_a_connection_cannot_be_built(tmp_path, sandbox) -> None:
    policy = write_policy(tmp_path, sandbox)
    env = {k: v for k, v in __import__("os").environ.items() if not k.startswith("JIRA_")}
    env["JIRA_WEBHOOK_SECRET"] = "s"
    done = run("serve", str(policy), "--bind", "127.0.0.1:0", env=env)
    assert done.returncode == 1
    assert "environment variable JIRA_API_TOKEN is not set" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "escalier.db").exists()  # stopped before the store was touched


def test_the_worker_stops_at_start_up_when_the_site_refuses_its_login(tmp_path, sandbox) -> None:
    policy = write_policy(tmp_path, sandbox)
    env = {**__import__("os").environ, "JIRA_API_TOKEN": "not-the-token", "JIRA_WEBHOOK_SECRET": "s"}
    done = run("worker", str(policy), "--db", f"sqlite:///{tmp_path / 'escalier.db'}", "--once", env=env)
    assert done.returncode == 1
    assert "the upstream refused our login" in done.stderr and "jira/default" in done.stderr
    assert "not-the-token" not in done.stderr and "Traceback" not in done.stderr
