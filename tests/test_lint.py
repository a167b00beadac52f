"""The linter's warnings on a valid but weak policy."""

from __future__ import annotations

from escalier.core.config import read_policy


def warnings_of(path):
    policy, problems = read_policy(path, lint=True)
    assert policy is not None, [str(p) for p in problems]
    return [p for p in problems if p.severity == "warning"]


def test_weak_policy_gets_each_warning(policies_dir):
    warnings = warnings_of(policies_dir / "lint-warnings.yaml")
    text = "\n".join(str(w) for w in warnings)
    assert "tier 2 (Second line) has no Accountable owner" in text
    assert "tier 3 (Nobody comes here) has no Accountable owner" in text
    assert "tier 3 (Nobody comes here) is reached by no criterion" in text
    assert "there is no decision matrix" in text
    assert "tier 1 forces escalation after 2h, not before its resolve target of 1h" in text
    assert "hears of an unacknowledged escalation only after 1h, past the acknowledge target of 30m" in text
    assert "criteria 'crit-to-2' and 'high-to-3'" in text
    assert "'crit-to-2' and 'crit-to-3'" not in text  # same destination: not a conflict
    assert all(w.line for w in warnings if w.path)


def test_example_and_minimal_policies_lint_clean(example_policy_path, policies_dir):
    assert [str(w) for w in warnings_of(example_policy_path)] == []
    assert [str(w) for w in warnings_of(policies_dir / "minimal.yaml")] == []


def test_warnings_are_not_errors(policies_dir):
    policy, problems = read_policy(policies_dir / "lint-warnings.yaml", lint=True)
    assert policy is not None
    assert all(p.severity == "warning" for p in problems)
