"""What the ``escalier`` command runs: migrations, the worker, status, and the dead letters.

Each function takes the store's URL and opens (and disposes of) its own engine, so the CLI only
parses arguments and prints results.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pluggy
from sqlalchemy import Engine

from escalier.core.config import load_policy
from escalier.core.connector import Connection, ConnectorSpec
from escalier.core.engine import decide
from escalier.core.policy import Policy
from escalier.plugins import get_plugin_manager
from escalier.runtime.health import DEFAULT_GRACE, invariant_violations
from escalier.runtime.retry import RetrySettings
from escalier.runtime.worker import Pass, Worker
from escalier.store import Store, create_store_engine
from escalier.store import upgrade as _upgrade

__all__ = ["build_connections", "dlq_list", "dlq_retry", "run_worker", "status", "upgrade"]

log = logging.getLogger("escalier.runtime.operations")


@contextmanager
def _engine(url: str) -> Iterator[Engine]:
    engine = create_store_engine(url)
    try:
        yield engine
    finally:
        engine.dispose()


def upgrade(url: str) -> str | None:
    """Migrate the store to the newest schema; returns the revision reached."""
    return _upgrade(url)


def build_connections(
    policy: Policy, pm: pluggy.PluginManager, environ: Mapping[str, str]
) -> dict[tuple[str, str], Connection]:
    """A connection per configured connector and instance, through each ConnectorSpec's ``connect``."""
    specs: dict[str, ConnectorSpec] = {}
    for registered in pm.hook.register_connectors():
        specs.update({spec.name: spec for spec in registered})
    connections: dict[tuple[str, str], Connection] = {}
    for name, section in policy.connectors.items():
        spec = specs.get(name)
        if spec is None or spec.connect is None:
            log.warning("runtime.connector.unconnectable", extra={"connector": name})
            continue
        config = spec.config_model.model_validate(section or {})
        for instance in ("default", *sorted(getattr(config, "instances", {}) or {})):
            connections[(name, instance)] = spec.connect(config, instance, environ)
    return connections


def run_worker(
    url: str,
    policy_path: str | Path,
    *,
    worker_id: str | None = None,
    once: bool = False,
    plugins: Sequence[object] = (),
    load_entrypoints: bool = True,
    environ: Mapping[str, str] | None = None,
    retry: Mapping[str, Any] | None = None,
    batch_size: int = 50,
    lease: timedelta = timedelta(minutes=5),
    idle_wait: float = 0.5,
    handle_signals: bool = True,
    stop: threading.Event | None = None,
) -> Pass:
    """Run a worker against the store at ``url`` until stopped (SIGTERM/SIGINT) or, with ``once``, idle.

    :param plugins: extra plugin objects to register besides the installed ones.
    :param retry: :class:`~escalier.runtime.retry.RetrySettings` fields.
    :returns: what the worker handled.
    """
    environ = os.environ if environ is None else environ
    pm = get_plugin_manager(load_entrypoints=load_entrypoints, plugins=plugins)
    policy = load_policy(policy_path, plugin_manager=pm)
    connections = build_connections(policy, pm, environ)
    engine = create_store_engine(url)
    stop = stop or threading.Event()
    if handle_signals and threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: stop.set())
    try:
        worker = Worker(
            Store(engine), decide=decide, policy=policy, connections=connections, plugin_manager=pm,
            retry=RetrySettings.from_config(retry), worker_id=worker_id, batch_size=batch_size,
            lease=lease,
        )
        return worker.run(stop=stop, once=once, idle_wait=idle_wait)
    finally:
        for connection in connections.values():
            connection.close()
        engine.dispose()


def status(url: str, *, now: datetime | None = None, grace: timedelta = DEFAULT_GRACE) -> dict[str, Any]:
    """Open escalations per tier, timers due, outbox backlog, dead letters and invariant violators."""
    now = now or datetime.now(UTC)
    with _engine(url) as engine:
        counts = Store(engine).counts(now=now)
        counts["invariant_violations"] = invariant_violations(engine, now=now, grace=grace)
    return counts


def dlq_list(url: str, *, include_retried: bool = False) -> list[dict[str, Any]]:
    """The dead letters as plain dicts (times in ISO 8601), oldest first."""
    with _engine(url) as engine:
        letters = Store(engine).dead_letters(include_retried=include_retried)
    rows = []
    for letter in letters:
        row = asdict(letter)
        row["failed_at"] = letter.failed_at.isoformat()
        row["retried_at"] = letter.retried_at.isoformat() if letter.retried_at else None
        rows.append(row)
    return rows


def dlq_retry(url: str, ids: Sequence[int] | None = None, *, now: datetime | None = None) -> int:
    """Queue dead letters again, by dead-letter id or all when ``ids`` is None; returns how many."""
    with _engine(url) as engine:
        return Store(engine).retry_dead_letters(ids, now=now or datetime.now(UTC))
