"""Fixtures of the report tests: the store a demo day leaves, a store of hand-written trails, and
headless Chromium (Debian's chromium and chromium-driver, as tests/dashboard drives them)."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import pytest
from browser_support import browser  # noqa: F401 - the fixture
from postgres_support import postgres_schema_url

from escalier.demo import POLICY_PATH, run_demo
from escalier.store import create_store_engine, upgrade
from report_trails import write_trails

DEMO_SPEED = 1500.0  # the day in about 16 seconds


@pytest.fixture(scope="session")
def demo_store(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The SQLite store of one demo day at a high speed, played once for the whole session."""
    db = tmp_path_factory.mktemp("report-demo") / "demo.db"
    report = run_demo(speed=DEMO_SPEED, browser=False, quiet=True, db=f"sqlite:///{db}", out=io.StringIO())
    # Whether each scenario went as scripted is tests/test_demo.py's to check; the report needs
    # the day played to its end.
    assert report.finished and not report.interrupted, report.problems
    return f"sqlite:///{db}"


@pytest.fixture(scope="session")
def demo_policy() -> Path:
    """The policy the demo plays (shipped as escalier/demo.yaml)."""
    return POLICY_PATH


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def trails_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A migrated store holding the hand-written trails of tests/report/report_trails.py."""
    if request.param == "sqlite":
        urls: Iterator[str] = iter([f"sqlite:///{tmp_path / 'trails.db'}"])
    else:
        urls = postgres_schema_url()
    url = next(urls)
    upgrade(url)
    engine = create_store_engine(url)
    try:
        write_trails(engine)
    finally:
        engine.dispose()
    yield url
    next(urls, None)  # the generator resumes past its one URL: it drops the PostgreSQL schema
