"""The HTML report of a demo day in headless Chromium: the charts are there, with the audit's numbers.

The page is opened from a file (no server: it must work offline); each bar's data and title are
checked against SQL over the store the demo left (demo_truth.py). A screenshot is saved under the
test's tmp dir.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from demo_truth import breaches_by_tier, escalations_by_tier, flow, nearest_rank, people, times

from escalier.report import format_seconds, main

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.timeout(180)]

DAY = "2026-03-03"


@pytest.fixture(scope="module")
def page(demo_store: str, demo_policy: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The HTML report of the whole demo day."""
    path = tmp_path_factory.mktemp("report-html") / "report.html"
    assert main(["--db", demo_store, "--policy", str(demo_policy), "--since", "all", "-q",
                 "--html", str(path)]) == 0
    return path


def _css(browser, selector: str):
    from selenium.webdriver.common.by import By

    return browser.find_elements(By.CSS_SELECTOR, selector)


def _title(element) -> str:
    return element.find_element("css selector", "title").get_attribute("textContent")


def test_the_charts_over_time_show_the_escalations_of_the_day(browser, page, demo_store, tmp_path):
    browser.get(page.as_uri())
    assert browser.title == "Escalation report · Escalier"
    day = flow(demo_store)[DAY]
    for series, kind in (("internal", "escalated"), ("functional", "functional"),
                         ("hierarchical", "hierarchical")):
        bars = _css(browser, f'#chart-flow rect[data-series="{series}"][data-bucket="{DAY}"]')
        assert len(bars) == 1, series
        assert int(bars[0].get_attribute("data-value")) == day[kind] > 0
        assert _title(bars[0]) == f"{DAY} · {series}: {day[kind]}"
        assert bars[0].size["height"] > 0
    total = _css(browser, f'#chart-flow text.total[data-bucket="{DAY}"]')[0]
    assert total.text == str(day["escalated"] + day["functional"] + day["hierarchical"])
    for (_, tier), n in escalations_by_tier(demo_store).items():
        bar = _css(browser, f'#chart-tiers rect[data-series="tier_{tier}"][data-bucket="{DAY}"]')[0]
        assert int(bar.get_attribute("data-value")) == n
        assert _title(bar).endswith(f"tier {tier}: {n}")
    # Colours from the dashboard: tier 3 is its red.
    assert _css(browser, '#chart-tiers rect[data-series="tier_3"]')[0].get_attribute("fill") == "#cf222e"
    height = browser.execute_script("return document.documentElement.scrollHeight")
    browser.set_window_size(1400, min(height + 120, 6000))
    assert browser.save_screenshot(str(tmp_path / "report.png"))
    print(f"screenshot: {tmp_path / 'report.png'}")


def test_the_time_charts_show_median_and_p90_per_tier_with_their_labels(browser, page, demo_store):
    browser.get(page.as_uri())
    truth = times(demo_store)
    for measure, chart in (("time to escalate", "chart-time-to-escalate"),
                           ("time in tier", "chart-time-in-tier"),
                           ("time to acknowledge", "chart-time-to-acknowledge")):
        for tier in (1, 2, 3):
            values = truth.get((measure, tier), [])
            bars = {b.get_attribute("data-stat"): b for b in _css(browser, f"#{chart} rect")
                    if b.get_attribute("data-tier").startswith(f"tier {tier} ")}
            if not values:
                assert bars == {}
                continue
            median, p90 = nearest_rank(values, 0.5), nearest_rank(values, 0.9)
            assert float(bars["median"].get_attribute("data-value")) == pytest.approx(median)
            assert float(bars["p90"].get_attribute("data-value")) == pytest.approx(p90)
            assert int(bars["median"].get_attribute("data-count")) == len(values)
            assert f"median: {format_seconds(median)} ({len(values)} measured)" in _title(bars["median"])
            labels = [t.text for t in _css(browser, f"#{chart} text.value")]
            assert f"median {format_seconds(median)} · p90 {format_seconds(p90)} · n={len(values)}" in labels


def test_the_sla_load_and_summary_figures_are_those_of_the_audit(browser, page, demo_store, demo_policy):
    browser.get(page.as_uri())
    breaches = breaches_by_tier(demo_store)
    for bar in _css(browser, "#chart-breach-rate rect"):
        tier = int(bar.get_attribute("data-tier").split()[1])
        stays = int(bar.get_attribute("data-stays"))
        breached = int(bar.get_attribute("data-breached"))
        assert breached == breaches.get(tier, 0)  # one breached clock per stay in the demo
        assert float(bar.get_attribute("data-value")) == pytest.approx(breached / stays)
        assert f"({breached} of {stays} stays)" in _title(bar)
    assert len(_css(browser, "#chart-breach-rate rect")) == 3
    truth = people(demo_store, demo_policy)
    bars = {b.get_attribute("data-person"): b for b in _css(browser, "#chart-people rect")}
    priya = truth["Priya Raman (priya)"]
    expected = sum(priya[k] for k in ("acknowledged", "resolved", "escalated", "functional",
                                      "hierarchical", "deescalated", "reopened"))
    assert int(bars["Priya Raman (priya)"].get_attribute("data-value")) == expected > 0
    assert _title(bars["Priya Raman (priya)"]).startswith(f"Priya Raman (priya): {expected} (")
    figure = _css(browser, 'div[data-figure="deescalated_rate"] dd')[0]
    assert figure.text.endswith("(1 of 7 escalated)")
    tags = {b.get_attribute("data-tag"): int(b.get_attribute("data-value"))
            for b in _css(browser, "#chart-top-tags rect")}
    assert tags["bug-confirmed"] == 1 and tags["deadline-conflict"] == 1
    assert not browser.execute_script("return document.scripts.length")
