"""``escalier backtest``'s arguments: mistakes get a sentence naming what is wrong and exit 2."""

from __future__ import annotations

import argparse
import io
from datetime import UTC, datetime
from pathlib import Path

import pytest

from escalier import backtest

from backtest_support import write_policy

NOW = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)
POLICY = """\
name: Small desk
default_calendar: always
calendars:
  always: {timezone: UTC, hours: 24x7}
connectors:
  jira:
    url: http://127.0.0.1:9
    user: escalier@example.com
    token: ${JIRA_API_TOKEN}
    timeout_seconds: 1
tiers:
  - {level: 1, name: Desk}
  - {level: 2, name: Specialists}
"""


def run(argv: list[str], environ: dict[str, str] | None = None) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    status = backtest.main(argv, out=out, err=err, environ=environ or {}, now=NOW)
    return status, out.getvalue(), err.getvalue()


@pytest.fixture
def policy(tmp_path: Path) -> Path:
    return write_policy(tmp_path, "desk.yaml", POLICY)


@pytest.mark.parametrize(
    ("argv", "said"),
    [
        (["missing.yaml", "--from", "jira"], "POLICY: missing.yaml: no such file"),
        (["{policy}", "--from", "zendesk"], "--from zendesk: {policy} has no connectors.zendesk section"),
        (["{policy}", "--from", "jira", "--instance", "emea"], "--instance: jira has no instance 'emea'"),
        (["{policy}", "--from", "jira", "--since", "last week"], "--since: 'last week' is neither"),
        (["{policy}", "--from", "jira", "--since", "2027-01-01"], "--since: 2027-01-01 is in the future"),
        (["{policy}", "--from", "jira", "--against", "other.yaml"], "--against: other.yaml: no such file"),
        (["{policy}", "--from", "jira"], "environment variable JIRA_API_TOKEN is not set"),
    ],
)
def test_mistakes_are_named_and_exit_2(policy, argv, said):
    status, out, err = run([a.format(policy=policy) for a in argv])
    assert status == 2
    assert said.format(policy=policy) in err
    assert "Traceback" not in err and out == ""


def test_an_unreachable_site_fails_with_exit_1(policy):
    status, _, err = run([str(policy), "--from", "jira"], environ={"JIRA_API_TOKEN": "t"})
    assert status == 1
    assert "reading jira/default failed" in err and "cannot reach the site" in err


def test_an_invalid_policy_is_a_usage_error(tmp_path):
    bad = write_policy(tmp_path, "bad.yaml", POLICY.replace("level: 2", "level: two"))
    status, _, err = run([str(bad), "--from", "jira"])
    assert status == 2 and "bad.yaml" in err


def test_the_subcommand_registers_with_help_and_examples(capsys):
    parser = argparse.ArgumentParser(prog="escalier")
    backtest.add_command(parser.add_subparsers())
    args = parser.parse_args(["backtest", "p.yaml", "--from", "zendesk", "--since", "7d"])
    assert args.handler is not None and (args.source, args.since, args.instance) == ("zendesk", "7d", "default")
    with pytest.raises(SystemExit):
        parser.parse_args(["backtest", "--help"])
    shown = capsys.readouterr().out
    assert "examples:" in shown and "--against" in shown and "escalier backtest escalier.yaml --from zendesk" in shown
