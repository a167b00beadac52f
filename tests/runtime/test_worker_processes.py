"""Worker processes against the real upstream: exactly once and in order, across workers and crashes."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from runtime_support import DESK, keys_in_store
from sqlalchemy import func, select

from escalier.runtime.testing import Upstream, deliver, event_body
from escalier.store import create_store_engine
from escalier.store.schema import escalations, inbox, outbox

SEVERITIES = ("low", "medium", "high", "critical")


def start_worker(
    url: str, upstream: Upstream, worker_id: str, *, batch_size: int, lease: float = 60
) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "escalier.runtime.testing", "worker", "--url", url, "--policy", str(DESK),
         "--upstream", upstream.url, "--worker-id", worker_id, "--batch-size", str(batch_size),
         "--lease", str(lease)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def stop_workers(processes: list[subprocess.Popen]) -> None:
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    for process in processes:
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def progress(engine) -> tuple[int, int, int]:
    """(deliveries still pending, actions still pending, actions in total)."""
    with engine.connect() as connection:
        deliveries = connection.execute(
            select(func.count()).select_from(inbox).where(inbox.c.state == "pending")
        ).scalar_one()
        pending = connection.execute(
            select(func.count()).select_from(outbox).where(outbox.c.state == "pending")
        ).scalar_one()
        total = connection.execute(select(func.count()).select_from(outbox)).scalar_one()
    return deliveries, pending, total


def wait_until_drained(engine, processes: list[subprocess.Popen], *, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        deliveries, pending, total = progress(engine)
        if deliveries == 0 and pending == 0 and total > 0:
            return
        for process in processes:
            if process.poll() is not None:
                raise AssertionError(f"a worker exited: {process.stderr.read().decode()[-2000:]}")
        time.sleep(0.25)
    raise AssertionError(f"not drained in {timeout}s: {progress(engine)}")


def assert_exactly_once_in_order(engine, upstream: Upstream, escalation_count: int) -> None:
    with engine.connect() as connection:
        assert connection.execute(select(func.count()).select_from(escalations)).scalar_one() == escalation_count
        states = set(connection.execute(select(outbox.c.state)).scalars())
    expected = keys_in_store(engine)
    assert states == {"done"}
    assert upstream.duplicates == 0
    written = upstream.keys_by_ticket()
    assert len(written) == escalation_count
    assert written == expected  # every action, once, in the order the engine issued them


def created_events(count: int) -> list[dict]:
    now = datetime.now(UTC)
    return [
        event_body(f"T-{i:05d}", "created", now, id=f"created-{i}", severity=SEVERITIES[i % 4],
                   users_affected=(i * 13) % 80)
        for i in range(count)
    ]


@pytest.fixture
def live_upstream() -> Iterator[Upstream]:
    """The recording upstream on the real clock."""
    with Upstream() as running:
        yield running


@pytest.mark.postgres
def test_four_workers_on_postgres_apply_2000_escalations_exactly_once_in_order(
    postgres_url: str, live_upstream: Upstream
) -> None:
    engine = create_store_engine(postgres_url)
    try:
        deliver(engine, created_events(2000), received_at=datetime.now(UTC))
        workers = [start_worker(postgres_url, live_upstream, f"pg-{n}", batch_size=100) for n in range(4)]
        try:
            wait_until_drained(engine, workers, timeout=150)
        finally:
            stop_workers(workers)
        assert all(process.returncode == 0 for process in workers)
        assert_exactly_once_in_order(engine, live_upstream, 2000)
    finally:
        engine.dispose()


def test_sigkilled_worker_loses_nothing_and_applies_nothing_twice(
    sqlite_url: str, live_upstream: Upstream
) -> None:
    engine = create_store_engine(sqlite_url)
    chance = random.Random(20260302)
    kills = 0
    try:
        deliver(engine, created_events(1000), received_at=datetime.now(UTC))
        worker = start_worker(sqlite_url, live_upstream, "crashy", batch_size=25, lease=3)
        try:
            while kills < 6:
                time.sleep(chance.uniform(0.3, 1.2))
                if worker.poll() is not None:
                    raise AssertionError(worker.stderr.read().decode()[-2000:])
                worker.send_signal(signal.SIGKILL)
                worker.wait()
                kills += 1
                # The same worker id comes back, as a supervisor would restart it.
                worker = start_worker(sqlite_url, live_upstream, "crashy", batch_size=25, lease=3)
            wait_until_drained(engine, [worker], timeout=120)
        finally:
            stop_workers([worker])
        assert kills == 6
        assert_exactly_once_in_order(engine, live_upstream, 1000)
    finally:
        engine.dispose()
