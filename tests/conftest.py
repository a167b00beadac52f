"""Shared fixtures for the whole suite."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
POLICIES = Path(__file__).resolve().parent / "policies"


@pytest.fixture
def example_policy_path() -> Path:
    """The example policy shipped in examples/."""
    return ROOT / "examples" / "escalier.yaml"


@pytest.fixture
def policies_dir() -> Path:
    """The test suite's own policy files."""
    return POLICIES

