"""The `escalier` command as an admin runs it: exit codes, messages, no tracebacks."""

from __future__ import annotations

import json
import subprocess
import sys

import jsonschema
import pytest
import yaml

from escalier import __version__


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "escalier", *args], capture_output=True, text=True, env=env, timeout=60
    )


def test_check_config_passes_the_example(example_policy_path):
    result = run("check-config", str(example_policy_path))
    assert result.returncode == 0, result.stderr
    assert "valid (policy 'Northwind Cloud Support'" in result.stdout
    assert "tiers: 1 General support, 2 Specialists, 3 Critical response" in result.stdout


def test_check_config_reports_five_errors_and_exits_2(policies_dir):
    result = run("check-config", str(policies_dir / "five-mistakes.yaml"))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if "five-mistakes.yaml:" in line]
    assert len(lines) == 5, result.stderr
    assert "invalid: 5 errors in" in result.stderr and "warning" not in result.stderr
    assert any(":22: tiers[1].targets.zendesk.group: 'tier-3' is not a defined group" in line for line in lines)


def test_yaml_syntax_error_exits_2_without_traceback(policies_dir):
    result = run("check-config", str(policies_dir / "syntax-error.yaml"))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "syntax-error.yaml:6: YAML syntax error" in result.stderr


def test_strict_turns_warnings_into_failure(policies_dir):
    relaxed = run("check-config", str(policies_dir / "lint-warnings.yaml"))
    strict = run("check-config", "--strict", str(policies_dir / "lint-warnings.yaml"))
    assert relaxed.returncode == 0 and "warning" in relaxed.stderr
    assert strict.returncode == 2 and "(--strict)" in strict.stderr


def test_missing_file(tmp_path):
    result = run("check-config", str(tmp_path / "absent.yaml"))
    assert result.returncode == 2 and "no such file" in result.stderr and "Traceback" not in result.stderr


def test_schema_command_prints_a_schema_that_validates_the_example(example_policy_path):
    result = run("schema")
    assert result.returncode == 0
    schema = json.loads(result.stdout)
    document = json.loads(json.dumps(yaml.safe_load(example_policy_path.read_text()), default=str))
    jsonschema.validate(document, schema)


def test_plugins_lists_the_built_in_connectors():
    result = run("plugins", "--json")
    assert result.returncode == 0, result.stderr
    rows = {row["name"]: row for row in json.loads(result.stdout)}
    assert {"jira", "zendesk", "email"} <= set(rows)
    assert rows["zendesk"]["connectors"] == ["zendesk"]
    assert rows["email"]["channels"] == ["email"]
    assert rows["jira"]["distribution"].startswith("escalier ")


def test_version():
    result = run("--version")
    assert result.stdout.strip() == f"escalier {__version__}"


@pytest.mark.parametrize("command", ["check-config", "schema", "plugins", "simulate"])
def test_every_command_has_help_with_an_example(command):
    result = run(command, "--help")
    assert result.returncode == 0
    assert "examples:" in result.stdout and f"escalier {command}" in result.stdout


def test_no_command_prints_help_and_exits_2():
    result = run()
    assert result.returncode == 2 and "commands:" in result.stdout


def test_simulate_prints_a_timeline_with_reasons(example_policy_path):
    ticket = example_policy_path.parent / "tickets" / "sync-failure.json"
    result = run("simulate", str(example_policy_path), str(ticket))
    assert result.returncode == 0, result.stderr
    assert "1->2" in result.stdout and "2->3" in result.stdout
    assert "criterion stale-tier-1" in result.stdout


def test_simulate_bad_ticket_exits_2(example_policy_path, tmp_path):
    bad = tmp_path / "ticket.json"
    bad.write_text('{"system": "jira", "id": "SUP-1"}')
    result = run("simulate", str(example_policy_path), str(bad))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert str(bad) in result.stderr


def test_a_reader_that_stops_early_gets_no_traceback(example_policy_path):
    """`escalier schema | head -1`: the pipe closing under the command is not an error."""
    process = subprocess.Popen(
        [sys.executable, "-m", "escalier", "schema"], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert process.stdout is not None and process.stderr is not None
    process.stdout.read(10)
    process.stdout.close()
    stderr = process.stderr.read().decode()
    assert process.wait(timeout=60) == 0, stderr
    assert "Traceback" not in stderr
