"""The dashboard while the demo runs, in headless Chromium: every open escalation of the demo's
day under the tier the store says, and one escalation's audit trail a click away."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import create_engine, select

from escalier.store.schema import escalations

pytestmark = [pytest.mark.browser, pytest.mark.timeout(240)]

RUNNING = "still running on a real-time clock: "


def test_the_demo_dashboard_shows_the_days_escalations_by_tier(browser, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    store = tmp_path / "demo.db"
    demo = subprocess.Popen(
        [sys.executable, "-m", "escalier", "demo", "--no-browser", "--keep-running", "--quiet",
         "--speed", "1500", "--db", f"sqlite:///{store}"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        url, deadline = None, time.monotonic() + 180
        assert demo.stdout is not None
        while url is None and time.monotonic() < deadline:
            line = demo.stdout.readline()
            if not line and demo.poll() is not None:
                pytest.fail(f"the demo stopped: {demo.returncode}\n{demo.stderr.read() if demo.stderr else ''}")
            if RUNNING in line:
                url = line.split(RUNNING, 1)[1].split()[0]
        assert url is not None and url.endswith("/dashboard/"), "the demo never printed its dashboard"

        engine = create_engine(f"sqlite:///{store}")
        with engine.connect() as connection:
            open_now = connection.execute(
                select(escalations.c.ticket_id, escalations.c.tier).where(escalations.c.status == "open")
            ).all()
        engine.dispose()
        assert open_now and max(tier for _, tier in open_now) >= 2  # escalated, and still open

        browser.get(url)
        for ticket, tier in open_now:
            [row] = browser.find_elements(By.CSS_SELECTOR, f'tr[data-ticket="{ticket}"]')
            section = row.find_element(By.XPATH, "ancestor::section")
            assert section.get_attribute("data-tier") == str(tier), ticket
            assert row.find_element(By.CSS_SELECTOR, "td.reason").text.strip()
        browser.save_screenshot(str(tmp_path / "demo-dashboard.png"))

        ticket, _ = max(open_now, key=lambda row: row[1])
        browser.find_element(By.CSS_SELECTOR, f'tr[data-ticket="{ticket}"] a.details').click()
        kinds = [row.get_attribute("data-kind") for row in browser.find_elements(By.CSS_SELECTOR, "#audit tbody tr")]
        assert "opened" in kinds or "escalated" in kinds
        browser.save_screenshot(str(tmp_path / "demo-escalation.png"))
    finally:
        demo.send_signal(signal.SIGINT)
        try:
            demo.wait(timeout=30)
        except subprocess.TimeoutExpired:
            demo.kill()
            demo.wait()
    assert demo.returncode in (0, 130)
