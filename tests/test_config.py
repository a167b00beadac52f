"""Reading and validating policy files: every problem at once, located by file, line and path."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import jsonschema
import pytest
import yaml

from escalier.core.config import load_policy, read_policy
from escalier.core.errors import ConfigError
from escalier.core.policy import Policy, policy_json_schema


def write(tmp_path: Path, text: str, name: str = "policy.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def test_example_policy_is_valid(example_policy_path):
    policy = load_policy(example_policy_path)
    assert [tier.level for tier in policy.tiers] == [1, 2, 3]
    assert set(policy.calendars) >= {"berlin", "new-york"}
    assert {"jira", "zendesk", "email"} <= set(policy.connectors)
    assert len(policy.version) == 12


def test_version_is_the_content_hash(tmp_path, policies_dir):
    text = (policies_dir / "minimal.yaml").read_text()
    a = load_policy(write(tmp_path, text, "a.yaml"))
    b = load_policy(write(tmp_path, text, "b.yaml"))
    c = load_policy(write(tmp_path, text + "\ndescription: changed\n", "c.yaml"))
    assert a.version == b.version != c.version


def test_five_mistakes_give_five_located_errors(policies_dir):
    _, problems = read_policy(policies_dir / "five-mistakes.yaml")
    errors = {(p.line, p.path): p for p in problems if p.severity == "error"}
    assert len(errors) == 5, [str(p) for p in problems]
    assert errors[(2, "name")].message == "missing required key 'name'"
    duration = errors[(17, "tiers[0].sla.acknowledge")]
    assert "'30 minutes' is not a duration" in duration.message
    unknown = errors[(18, "tiers[0].timbox")]
    assert unknown.message == "unknown key 'timbox'" and unknown.hint == "did you mean 'timebox'?"
    wrong_type = errors[(19, "tiers[1].level")]
    assert "valid integer" in wrong_type.message and "'two'" in wrong_type.message
    target = errors[(22, "tiers[1].targets.zendesk.group")]
    assert target.message.startswith("'tier-3' is not a defined group")
    assert str(target).startswith(f"{policies_dir / 'five-mistakes.yaml'}:22: tiers[1].targets.zendesk.group: ")


def test_missing_top_level_key_points_at_the_file(policies_dir):
    _, problems = read_policy(policies_dir / "five-mistakes.yaml")
    missing = [p for p in problems if p.path == "name"]
    assert len(missing) == 1 and missing[0].message == "missing required key 'name'"


def test_yaml_syntax_error_names_its_line(policies_dir):
    policy, problems = read_policy(policies_dir / "syntax-error.yaml")
    assert policy is None
    assert len(problems) == 1
    assert problems[0].line == 6 and problems[0].message.startswith("YAML syntax error")


def test_load_policy_raises_with_every_error(policies_dir):
    with pytest.raises(ConfigError) as caught:
        load_policy(policies_dir / "five-mistakes.yaml")
    assert len(caught.value.problems) == 5
    assert "tiers[1].targets.zendesk.group" in str(caught.value)


def test_missing_file_is_a_problem_not_a_crash(tmp_path):
    policy, problems = read_policy(tmp_path / "nope.yaml")
    assert policy is None and problems[0].message == "no such file"


@pytest.mark.parametrize(
    ("snippet", "path", "needle"),
    [
        ("default_calendar: offfice", "default_calendar", "did you mean 'office'?"),
        ("tiers:\n  - {level: 1, name: A, calendar: nowhere}", "tiers[0].calendar", "'nowhere' is not a defined calendar"),
        ("tiers:\n  - {level: 1, name: A, raci: {accountable: [bob]}}", "tiers[0].raci.accountable[0]", "'bob' is not a defined person"),
        ("tiers:\n  - {level: 1, name: A}\n  - {level: 3, name: C}", "tiers", "must run 1..2"),
        ("tiers:\n  - {level: 1, name: A, targets: {jra: {group: x}}}", "tiers[0].targets.jra", "did you mean 'jira'?"),
        ("tiers:\n  - {level: 1, name: A, targets: {jira: {component: X}}}", "tiers[0].targets.jira", "connectors.jira is not configured"),
        ("criteria:\n  - {id: c, when: {severity: [urgent]}, then: {to_tier: 1}}", "criteria[0].when.severity[0]", "'urgent' is not a defined severity"),
        ("criteria:\n  - {id: c, when: {tier: [1]}, then: {to_tier: 4}}", "criteria[0].then.to_tier", "tier 4 is not defined"),
        ("criteria:\n  - {id: c, when: {tier: [1]}, then: {path: functional}}", "criteria[0].then", "needs department"),
        ("criteria:\n  - {id: c, when: {tier: [1]}, then: {path: functional, department: legal}}", "criteria[0].then.department", "'legal' is not a defined department"),
        ("matrix:\n  critical: {everyone: {tier: 1}}", "matrix.critical.everyone", "'everyone' is not a defined impact level"),
        ("notifications:\n  channels: {pager: {kind: pigeon}}", "notifications.channels.pager.kind", "'pigeon' is not a defined channel kind"),
        ("connectors:\n  zendesk: {subdomain: x, email: a@b.c, token: hunter2}", "connectors.zendesk.token", "read from the environment"),
        ("calendars:\n  office: {timezone: Mars/Olympus, hours: 24x7}", "calendars.office.timezone", "not an IANA time zone"),
        ("calendars:\n  office: {timezone: UTC, hours: {mon-fri: '9-5'}}", "calendars.office.hours", "HH:MM"),
        ("calendars:\n  office: {timezone: UTC, hours: 24x7, holidays: NO}", "calendars.office.holidays", "put the value in quotes"),
        ("people: {ann: {name: A}}\npeople: {bob: {name: B}}", "people", "duplicate key 'people'"),
    ],
)
def test_each_mistake_is_located(tmp_path, snippet, path, needle):
    base = {
        "name": "Probe",
        "default_calendar": "office",
        "calendars": {"office": {"timezone": "UTC", "hours": "24x7"}},
        "tiers": [{"level": 1, "name": "A"}],
    }
    overrides = yaml.safe_load(snippet.split("\npeople:")[0]) if "duplicate" not in needle else {}
    text = yaml.safe_dump({**base, **(overrides or {})}, sort_keys=False)
    if "duplicate" in needle:
        text += snippet + "\n"
    _, problems = read_policy(write(tmp_path, text))
    matching = [p for p in problems if p.path == path and (needle in p.message or needle in (p.hint or ""))]
    assert matching, [str(p) for p in problems]
    assert matching[0].line is not None


def test_secrets_never_appear_in_repr(tmp_path, policies_dir):
    policy = load_policy(policies_dir / "minimal.yaml")
    token = policy.connectors["zendesk"]["token"]
    assert token == "${ZENDESK_API_TOKEN}"
    _, problems = read_policy(policies_dir / "minimal.yaml", environ={})
    warnings = [p for p in problems if p.severity == "warning"]
    assert [w.path for w in warnings] == ["connectors.zendesk.token"]
    assert "ZENDESK_API_TOKEN is not set" in warnings[0].message
    _, problems = read_policy(policies_dir / "minimal.yaml", environ={"ZENDESK_API_TOKEN": "s3cret"})
    assert not problems


def test_schema_validates_the_example(example_policy_path):
    schema = policy_json_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    document = yaml.safe_load(example_policy_path.read_text())
    jsonschema.validate(json.loads(json.dumps(document, default=str)), schema)


def test_schema_rejects_what_the_loader_rejects(policies_dir):
    document = yaml.safe_load((policies_dir / "five-mistakes.yaml").read_text())
    errors = list(jsonschema.Draft202012Validator(policy_json_schema()).iter_errors(document))
    assert errors, "the schema should reject a policy with five mistakes"


def test_policy_round_trips_through_json(example_policy_path):
    policy = load_policy(example_policy_path)
    again = Policy.model_validate(policy.model_dump(mode="json", by_alias=True))
    assert again.tiers == policy.tiers and again.matrix == policy.matrix
