"""The dashboard in headless Chromium, over a day of escalations that took the real path.

sandbox API -> signed webhook -> receiver -> store -> engine -> outbox -> Jira sandbox; the
browser reads what that left in the store. Each test saves a screenshot under its tmp dir.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from dashboard_support import HOSTILE_SUBJECT, Day, DashboardRig, dashboard_rig, play_day, serve_dashboard

pytestmark = [pytest.mark.browser, pytest.mark.timeout(90)]


@pytest.fixture(scope="module")
def played(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[DashboardRig, Day]]:
    """The scripted day, played once for the module's tests."""
    with dashboard_rig(tmp_path_factory.mktemp("day")) as rig:
        yield rig, play_day(rig)


def _by(name: str) -> str:
    from selenium.webdriver.common.by import By

    return getattr(By, name)


def _screenshot(browser, path: Path) -> Path:
    """A PNG of the whole page (the window is grown to the page's height first)."""
    width = 1400
    height = browser.execute_script("return document.documentElement.scrollHeight")
    browser.set_window_size(width, min(max(height + 120, 800), 4000))
    assert browser.save_screenshot(str(path)), path
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    return path


def _row(browser, tier: int, ticket: str):
    return browser.find_element(
        _by("CSS_SELECTOR"), f'section[data-tier="{tier}"] tr[data-ticket="{ticket}"]'
    )


def test_the_overview_shows_each_escalation_under_its_tier_with_its_reason_and_colours(
    browser, played, tmp_path
):
    rig, day = played
    browser.get(rig.dashboard_url)
    css = _by("CSS_SELECTOR")

    assert browser.title == "Escalations · Escalier"
    headings = [h.text for h in browser.find_elements(css, "section.tier h2")]
    assert headings == ["Tier 3: Critical response 1 open", "Tier 2: Specialists 2 open",
                        "Tier 1: General support 1 open"]
    for ticket, tier in day.tiers.items():
        rows = browser.find_elements(css, f'tr[data-ticket="{ticket}"]')
        assert len(rows) == 1, ticket
        assert rows[0].find_element(_by("XPATH"), "ancestor::section").get_attribute("data-tier") == str(tier)

    outage = _row(browser, 3, day.outage)
    assert "severity critical with widespread impact (120 users affected)" in outage.find_element(
        css, "td.reason .why").text
    levels = {c.get_attribute("data-clock"): c.get_attribute("data-level")
              for c in outage.find_elements(css, "li.clock")}
    assert levels == {"acknowledge": "breached", "resolve": "breached"}
    breached = outage.find_element(css, 'li.clock[data-clock="resolve"]')
    assert "Breached" in breached.text and "Europe/Berlin" in breached.text
    # Colour and label together: the breached band is dark red behind white text.
    assert breached.value_of_css_property("background-color") == "rgba(140, 16, 24, 1)"
    assert "Not acknowledged" in outage.text

    vat = _row(browser, 2, day.vat)
    clock = vat.find_element(css, 'li.clock[data-clock="resolve"]')
    assert clock.get_attribute("data-level") == "warning" and "Over 50%" in clock.text
    assert "56% used" in clock.text and "3h 30m left of 8h" in clock.text
    assert "Acknowledged by Priya Raman" in vat.text
    assert "Accountable Priya Raman" in vat.find_element(css, "dl.raci").text.replace("\n", " ")

    stale = _row(browser, 2, day.stale)
    assert stale.find_element(css, "td.reason .kind").text == "escalated"
    assert ("Escalated from tier 1 (General support) to tier 2 (Specialists): unresolved for 4h"
            in stale.find_element(css, "td.reason").text)

    export = _row(browser, 1, day.export)
    assert export.find_element(css, "li.clock").get_attribute("data-level") == "ok"
    assert export.find_element(css, "td.subject").text == HOSTILE_SUBJECT
    assert export.find_elements(css, "td.subject b") == []

    upstream = outage.find_element(css, "a.upstream").get_attribute("href")
    assert upstream == f"{rig.sandbox.url}/browse/{day.outage}"
    assert browser.find_element(css, "#dead-letters").text == "0"
    assert int(browser.find_element(css, "#outbox-done").text) == len(rig.outbox_rows())

    shot = _screenshot(browser, tmp_path / "overview.png")
    print(f"screenshot: {shot}")


def test_following_a_link_shows_the_escalations_audit_trail_and_upstream_calls(browser, played, tmp_path):
    rig, day = played
    browser.get(rig.dashboard_url)
    css = _by("CSS_SELECTOR")
    _row(browser, 2, day.stale).find_element(css, "a.details").click()

    assert browser.current_url.startswith(f"{rig.dashboard_url}escalations/")
    assert browser.find_element(css, "#tier").text == "Tier 2: Specialists"
    kinds = [row.get_attribute("data-kind") for row in browser.find_elements(css, "#audit tbody tr")]
    assert kinds[0] == "opened" and kinds[-1] == "escalated", kinds
    last = browser.find_elements(css, "#audit tbody tr")[-1]
    assert "Tier 1: General support → Tier 2: Specialists" in last.text
    assert "stale" in last.text

    calls = browser.find_elements(css, "#calls tbody tr")
    written = [row for row in rig.outbox_rows() if row.ticket_id == day.stale]
    assert len(calls) == len(written) > 0
    assert {row.get_attribute("data-state") for row in calls} == {"done"}
    assert {c.find_element(css, "td.key").text for c in calls} == {r.idempotency_key for r in written}

    _screenshot(browser, tmp_path / "escalation.png")
    browser.find_element(css, "p.back a").click()
    assert browser.find_element(css, "h1").text == "Open escalations"


def test_the_page_refreshes_itself_without_javascript(browser, played):
    rig, _ = played
    with serve_dashboard(rig, dashboard_refresh_seconds=1) as url:
        browser.get(url)
        assert browser.execute_script("return document.scripts.length") == 0
        # A mark on the loaded document: a reload replaces the document and the mark with it.
        browser.execute_script("window.escalierMark = 1")
        deadline = time.monotonic() + 10
        while browser.execute_script("return window.escalierMark === 1") and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not browser.execute_script("return window.escalierMark === 1"), "the page never refreshed"
        assert browser.find_element(_by("CSS_SELECTOR"), "h1").text == "Open escalations"
