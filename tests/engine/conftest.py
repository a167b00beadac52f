"""Fixtures of the engine tests."""

from __future__ import annotations

import pytest
from engine_support import load

from escalier.core.policy import Policy


@pytest.fixture(scope="session")
def desk() -> Policy:
    """The engine tests' desk policy."""
    return load()
