"""Fixtures of the runtime tests: a migrated store, the test upstream, a worker on a fake clock."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pluggy
import pytest
from postgres_support import postgres_schema_url
from runtime_support import DESK, START

from escalier.core.config import load_policy
from escalier.core.engine import decide
from escalier.core.policy import Policy
from escalier.plugins import get_plugin_manager
from escalier.runtime.retry import RetrySettings
from escalier.runtime.testing import FakeClock, TestDeskConnection, TestDeskPlugin, Upstream
from escalier.runtime.worker import Worker
from escalier.store import Store, create_store_engine, upgrade



@pytest.fixture
def pm() -> pluggy.PluginManager:
    """A fresh plugin manager with the built-ins and the testdesk connector."""
    return get_plugin_manager(load_entrypoints=False, plugins=[TestDeskPlugin()])


@pytest.fixture
def policy(pm: pluggy.PluginManager) -> Policy:
    """The runtime tests' desk policy."""
    return load_policy(DESK, plugin_manager=pm)


@pytest.fixture
def clock() -> FakeClock:
    """A fake clock at Monday 2 March 2026, 09:00 UTC."""
    return FakeClock(START)


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """A migrated SQLite store in a temporary folder."""
    url = f"sqlite:///{tmp_path / 'escalier.db'}"
    upgrade(url)
    return url


@pytest.fixture
def store(sqlite_url: str) -> Iterator[Store]:
    """The store on the migrated SQLite file."""
    engine = create_store_engine(sqlite_url)
    yield Store(engine)
    engine.dispose()


@pytest.fixture
def upstream(clock: FakeClock) -> Iterator[Upstream]:
    """The recording upstream on the fake clock."""
    with Upstream(clock=clock.time) as running:
        yield running


@pytest.fixture
def make_worker(
    store: Store, policy: Policy, pm: pluggy.PluginManager, clock: FakeClock, upstream: Upstream
) -> Iterator[Callable[..., Worker]]:
    """Build a worker on the SQLite store, the fake clock and a connection to the upstream."""
    connections: list[TestDeskConnection] = []

    def build(**options: Any) -> Worker:
        connection = TestDeskConnection(upstream.url, timeout=5)
        connections.append(connection)
        settings = dict(
            decide=decide, policy=policy, connections={("testdesk", "default"): connection},
            plugin_manager=pm, clock=clock.now, sleep=clock.sleep, worker_id="worker-1",
            retry=RetrySettings(attempts_per_pass=3, initial_wait=1, max_wait=20, jitter=0.5,
                                max_total_attempts=12, requeue_initial=30, requeue_max=120),
        )
        settings.update(options)
        return Worker(store, **settings)

    yield build
    for connection in connections:
        connection.close()


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh, migrated schema on the test PostgreSQL server, dropped afterwards."""
    for url in postgres_schema_url():
        upgrade(url)
        yield url
