"""Fixtures of the report tests: the store a demo day leaves, a store of hand-written trails, and
headless Chromium (Debian's chromium and chromium-driver, as tests/dashboard drives them)."""

from __future__ import annotations

import io
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from postgres_support import postgres_schema_url

from escalier.demo import POLICY_PATH, run_demo
from escalier.store import create_store_engine, upgrade
from report_trails import write_trails

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
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


def _missing_browser() -> str | None:
    absent = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not (p.exists() and os.access(p, os.X_OK))]
    if absent:
        return f"{' and '.join(absent)} not installed (apt-get install chromium chromium-driver)"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "the selenium package is not installed (pip install selenium)"
    return None


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """A headless Chromium session for the module's tests, closed after them."""
    missing = _missing_browser()
    if missing:
        if os.environ.get("CI"):
            pytest.fail(f"the browser tests must run in CI: {missing}")
        pytest.skip(missing)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tmp_path_factory.mktemp("chromium-profile")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in (
        "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
        "--no-first-run", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--disable-extensions", "--window-size=1400,1000",
        f"--user-data-dir={profile}",
    ):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(20)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)
