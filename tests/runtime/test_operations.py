"""What the CLI runs: upgrade, a worker run, status with the invariant, and the dead letters."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

from runtime_support import DESK
from sqlalchemy import delete

from escalier.runtime import operations
from escalier.runtime.health import invariant_violations, invariant_violators
from escalier.runtime.testing import TestDeskPlugin, Upstream, deliver, event_body
from escalier.store import create_store_engine
from escalier.store.schema import timers


def test_run_worker_status_and_dead_letters(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'escalier.db'}"
    assert operations.upgrade(url) == "0003"
    now = datetime.now(UTC)
    engine = create_store_engine(url)
    deliver(
        engine,
        [event_body("T-1", "created", now, severity="low"), event_body("T-2", "created", now, severity="critical",
                                                                         users_affected=90)],
        received_at=now,
    )
    with Upstream() as upstream:
        upstream.reject_ticket("T-2")
        done = operations.run_worker(
            url, DESK, worker_id="cli", once=True, plugins=[TestDeskPlugin()], load_entrypoints=False,
            environ={"ESCALIER_TESTDESK_URL": upstream.url}, handle_signals=False,
        )
        assert done.deliveries == 2 and done.actions >= 6

        report = operations.status(url)
        assert report["open_by_tier"] == {1: 1, 3: 1}
        assert report["outbox_pending"] == 0 and report["invariant_violations"] == 0
        assert report["dead_letters"] == len(operations.dlq_list(url)) > 0
        assert {row["ticket_id"] for row in operations.dlq_list(url)} == {"T-2"}

        upstream._rejected.clear()
        first = operations.dlq_list(url)[0]["id"]
        assert operations.dlq_retry(url, [first]) == 1
        assert operations.dlq_retry(url) == report["dead_letters"] - 1
        operations.run_worker(
            url, DESK, worker_id="cli", once=True, plugins=[TestDeskPlugin()], load_entrypoints=False,
            environ={"ESCALIER_TESTDESK_URL": upstream.url}, handle_signals=False,
        )
        assert operations.dlq_list(url) == []
        assert upstream.duplicates == 0 and set(upstream.keys_by_ticket()) == {"T-1", "T-2"}

    # An open escalation that lost its wake-up violates the invariant; a barely overdue one does not.
    assert invariant_violations(engine, now=now + timedelta(minutes=1)) == 0
    with engine.begin() as connection:
        connection.execute(delete(timers).where(timers.c.escalation_id == 1))
    assert invariant_violations(engine, now=now) == 1
    assert invariant_violators(engine, now=now) == [("testdesk", "default", "T-1")]
    assert invariant_violations(engine, now=now + timedelta(days=30)) == 2
    engine.dispose()


def test_run_worker_stops_when_asked(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'escalier.db'}"
    operations.upgrade(url)
    stop = threading.Event()
    stop.set()
    with Upstream() as upstream:
        done = operations.run_worker(
            url, DESK, plugins=[TestDeskPlugin()], load_entrypoints=False, stop=stop,
            environ={"ESCALIER_TESTDESK_URL": upstream.url}, handle_signals=False,
        )
    assert done.total == 0
