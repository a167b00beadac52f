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
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pluggy
from sqlalchemy import Engine

from escalier.core.config import load_policy
from escalier.core.connector import Connection, ConnectorSpec
from escalier.core.durations import parse_duration
from escalier.core.engine import decide
from escalier.core.errors import AuthError, EscalierError
from escalier.core.policy import Policy
from escalier.plugins import get_plugin_manager
from escalier.runtime.health import DEFAULT_GRACE, invariant_violations
from escalier.runtime.retry import RetrySettings
from escalier.runtime.worker import Pass, Worker
from escalier.store import Store, create_store_engine
from escalier.store import upgrade as _upgrade

__all__ = [
    "Configured",
    "build_connections",
    "check_connections",
    "configured_instances",
    "dlq_list",
    "dlq_retry",
    "reconcile_intervals",
    "refuse_bad_logins",
    "run_worker",
    "status",
    "upgrade",
]

Account = tuple[str, str]

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


@dataclass(frozen=True)
class Configured:
    """One configured connector instance: its spec, the whole section, and the instance's own settings."""

    spec: ConnectorSpec
    config: Any
    settings: Any


def configured_instances(policy: Policy, pm: pluggy.PluginManager) -> dict[Account, Configured]:
    """Every ``(connector, instance)`` the policy configures, with its validated settings.

    An instance's settings are the section itself for ``default`` and ``instances.<name>`` for the
    others; a connector whose plugin is not installed is left out (the policy check reports it).
    """
    specs: dict[str, ConnectorSpec] = {}
    for registered in pm.hook.register_connectors():
        specs.update({spec.name: spec for spec in registered})
    found: dict[Account, Configured] = {}
    for name, section in policy.connectors.items():
        spec = specs.get(name)
        if spec is None:
            continue
        config = spec.config_model.model_validate(section or {})
        instances = getattr(config, "instances", None) or {}
        found[(name, "default")] = Configured(spec, config, config)
        for instance in sorted(instances):
            found[(name, instance)] = Configured(spec, config, instances[instance])
    return found


def build_connections(
    policy: Policy, pm: pluggy.PluginManager, environ: Mapping[str, str]
) -> dict[Account, Connection]:
    """A connection per configured connector and instance, through each ConnectorSpec's ``connect``.

    No network call is made. A connection that cannot be built (a missing environment variable,
    a setting it cannot use) stops it with an :class:`EscalierError` naming every one of them.
    """
    connections: dict[Account, Connection] = {}
    problems: list[str] = []
    for account, found in configured_instances(policy, pm).items():
        if found.spec.connect is None:
            log.warning("runtime.connector.unconnectable", extra={"connector": account[0]})
            continue
        try:
            connections[account] = found.spec.connect(found.config, account[1], environ, policy.people)
        except KeyError as exc:  # SecretRef.reveal names the variable
            problems.append(f"{account[0]}/{account[1]}: environment variable {exc.args[0]} is not set")
        except EscalierError as exc:
            name = f"{account[0]}/{account[1]}"
            problems.append(str(exc) if str(exc).startswith(name) else f"{name}: {exc}")
    if problems:
        for connection in connections.values():
            connection.close()
        raise EscalierError("cannot connect:\n  " + "\n  ".join(problems))
    return connections


def refuse_bad_logins(connections: Mapping[Account, Connection]) -> None:
    """Try each connection once; a refused login stops the start-up, an unreachable upstream does not.

    An upstream that is down now may be up in a minute, and the outbox waits for it; credentials
    that are refused will be refused on every action, so the worker says so at once.
    """
    refused = []
    for (system, instance), connection in connections.items():
        try:
            log.info("runtime.connector.checked", extra={"connector": system, "instance": instance,
                                                           "found": connection.check()})
        except AuthError as exc:
            refused.append(f"{system}/{instance}: {exc}")
        except EscalierError as exc:
            log.warning("runtime.connector.unreachable",
                        extra={"connector": system, "instance": instance, "error": str(exc)})
    if refused:
        for connection in connections.values():
            connection.close()
        raise EscalierError("the upstream refused our login:\n  " + "\n  ".join(refused))


def reconcile_intervals(policy: Policy, pm: pluggy.PluginManager) -> dict[Account, timedelta]:
    """How often each configured instance is reconciled; instances set to ``off`` are left out."""
    intervals = {}
    for account, found in configured_instances(policy, pm).items():
        every = getattr(found.settings, "reconcile_every", "off")
        if every != "off":
            intervals[account] = parse_duration(every)
    return intervals


def check_connections(
    policy: Policy, pm: pluggy.PluginManager, environ: Mapping[str, str]
) -> list[tuple[Account, bool, str]]:
    """Build and try each connection with one cheap read: ``(account, ok, what was found)``."""
    results = []
    connections = build_connections(policy, pm, environ)
    try:
        for account, connection in connections.items():
            try:
                results.append((account, True, connection.check()))
            except EscalierError as exc:
                results.append((account, False, f"{type(exc).__name__}: {exc}"))
    finally:
        for connection in connections.values():
            connection.close()
    return results


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
    check: bool = True,
) -> Pass:
    """Run a worker against the store at ``url`` until stopped (SIGTERM/SIGINT) or, with ``once``, idle.

    :param plugins: extra plugin objects to register besides the installed ones.
    :param check: try each connection once at start-up; a refused login stops it.
    :param retry: :class:`~escalier.runtime.retry.RetrySettings` fields.
    :returns: what the worker handled.
    """
    environ = os.environ if environ is None else environ
    pm = get_plugin_manager(load_entrypoints=load_entrypoints, plugins=plugins)
    policy = load_policy(policy_path, plugin_manager=pm)
    connections = build_connections(policy, pm, environ)
    if check:
        refuse_bad_logins(connections)
    instances = configured_instances(policy, pm)
    engine = create_store_engine(url)
    stop = stop or threading.Event()
    if handle_signals and threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: stop.set())
    try:
        worker = Worker(
            Store(engine), decide=decide, policy=policy, connections=connections, plugin_manager=pm,
            retry=RetrySettings.from_config(retry), worker_id=worker_id, batch_size=batch_size,
            lease=lease, settings={account: found.settings for account, found in instances.items()},
            reconcile=reconcile_intervals(policy, pm),
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
