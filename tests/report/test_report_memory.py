"""The report streams: over four times the audit entries, its peak of Python allocations stays put.

The stores are synthesised by the report bench (bench/report/run.py) with the engine's kinds and
sentences; each is reported on under tracemalloc, with the exact quantiles capped low so that
every group turns into its bounded sketch, as it would past 100,000 durations.
"""

from __future__ import annotations

import importlib.util
import tracemalloc
from pathlib import Path

import pytest

from escalier.report import build_report, parse_window
from escalier.store import create_store_engine

BENCH = Path(__file__).resolve().parents[2] / "bench" / "report" / "run.py"

pytestmark = pytest.mark.timeout(240)


def _bench():
    spec = importlib.util.spec_from_file_location("report_bench", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _peak(path: Path, *, chunk: int) -> tuple[int, object]:
    engine = create_store_engine(f"sqlite:///{path}")
    try:
        window = parse_window("all", None)
        tracemalloc.start()
        try:
            report = build_report(engine, window, chunk=chunk, exact_limit=200)
            return tracemalloc.get_traced_memory()[1], report
        finally:
            tracemalloc.stop()
    finally:
        engine.dispose()


def test_four_times_the_entries_take_no_more_memory_to_report(tmp_path):
    bench = _bench()
    small, large = tmp_path / "small.db", tmp_path / "large.db"
    made_small = bench.synthesise(small, 15_000, seed=1)
    made_large = bench.synthesise(large, 60_000, seed=2)
    peak_small, report_small = _peak(small, chunk=1000)
    peak_large, report_large = _peak(large, chunk=1000)
    assert report_small.entries == made_small["entries"] == 15_000
    assert report_large.entries == made_large["entries"] == 60_000
    assert report_large.summary["escalations_opened"] == made_large["kinds"]["opened"]
    assert report_large.summary["escalations_internal"] == made_large["kinds"]["escalated"]
    assert "sketch" in report_large.quantile_method
    # Counters of tags, people and days are the same size either way; what grows is nothing.
    print(f"peak of allocations: {peak_small:,} bytes for 15,000 entries, {peak_large:,} for 60,000")
    assert peak_large < peak_small * 1.25 + 256_000, (peak_small, peak_large)
