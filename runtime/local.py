"""A whole deployment on one machine: sandboxes, the receiver over HTTP, the store and a worker.

sandbox API -> signed webhook -> receiver -> store -> engine -> outbox -> connector -> sandbox,
with nothing mocked. The end-to-end tests drive the worker's passes by hand (:meth:`settle`);
anything else may run it in its own thread (:meth:`run_worker`). Not for production: it serves
the receiver with werkzeug's threaded server, not gunicorn.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pluggy
from sqlalchemy import func, select
from werkzeug.serving import make_server

from escalier.connectors._sandbox import Sandbox
from escalier.core.config import load_policy
from escalier.core.engine import decide
from escalier.plugins import get_plugin_manager
from escalier.runtime.operations import build_connections, configured_instances, reconcile_intervals
from escalier.runtime.ratelimit import RateLimiter
from escalier.runtime.retry import RetrySettings
from escalier.runtime.worker import Pass, Worker
from escalier.store import Store, create_store_engine, upgrade
from escalier.store.schema import inbox, outbox

__all__ = ["FAST_RETRIES", "LocalDeployment"]

# Retries measured in tenths of a second, for sandboxes on this machine.
FAST_RETRIES = RetrySettings(attempts_per_pass=3, initial_wait=0.05, max_wait=0.5, jitter=0.01,
                             max_total_attempts=12, requeue_initial=0.2, requeue_max=1.0)


class LocalDeployment:
    """Started sandboxes, a receiver on a free port of 127.0.0.1, a migrated store and a worker.

    :param sandboxes: started sandboxes by the receiver path they deliver to: ``jira`` for the
        default site, ``jira/<instance>`` for another; each one's webhooks are pointed at the
        receiver's ``/webhooks/<path>``.
    :param clock: with a fake clock (``now()`` and ``sleep()``), the receiver and the worker share
        the sandboxes' compressed time; the sandboxes must have been given the same clock.
    :param receiver: :class:`~escalier.webhooks.ReceiverSettings` fields to set over those read
        from the policy (``{"dashboard": True}``, wider replay windows for a fast clock).
    """

    def __init__(
        self,
        policy_path: str | Path,
        store_url: str,
        *,
        sandboxes: Mapping[str, Sandbox],
        environ: Mapping[str, str],
        clock: Any | None = None,
        rate_limiter: RateLimiter | None = None,
        retry: RetrySettings = FAST_RETRIES,
        plugin_manager: pluggy.PluginManager | None = None,
        worker_id: str = "local-worker",
        receiver: Mapping[str, Any] | None = None,
    ) -> None:
        from escalier.webhooks import ReceiverSettings, create_app

        self.sandboxes = dict(sandboxes)
        self.clock = clock
        upgrade(store_url)
        self.pm = plugin_manager or get_plugin_manager(load_entrypoints=False)
        self.policy = load_policy(policy_path, plugin_manager=self.pm)
        settings = ReceiverSettings.from_policy(self.policy, environ, store_url)
        if clock is not None:
            settings = replace(settings, clock=clock.now)
        if receiver:
            settings = replace(settings, **receiver)
        self._server = make_server("127.0.0.1", 0, create_app(settings, plugin_manager=self.pm),
                                   threaded=True)
        self._serving = threading.Thread(target=self._server.serve_forever, name="escalier-local-receiver",
                                         daemon=True)
        self._serving.start()
        self.receiver_url = f"http://127.0.0.1:{self._server.server_port}"
        for name, sandbox in self.sandboxes.items():
            sandbox.configure_webhooks(url=f"{self.receiver_url}/webhooks/{name}")
        self._engine = create_store_engine(store_url)
        self.store = Store(self._engine)
        self.connections = build_connections(self.policy, self.pm, environ)
        for connection in self.connections.values():
            if hasattr(connection, "acknowledge_url"):
                # Acknowledge links in mailed notices point at this deployment's own receiver.
                connection.acknowledge_url = self.receiver_url
        timing: dict[str, Callable[..., Any]] = (
            {"clock": clock.now, "sleep": clock.sleep} if clock is not None else {}
        )
        self.worker = Worker(
            self.store, decide=decide, policy=self.policy, connections=self.connections,
            plugin_manager=self.pm, retry=retry, worker_id=worker_id, rate_limiter=rate_limiter,
            settings={account: found.settings
                      for account, found in configured_instances(self.policy, self.pm).items()},
            reconcile=reconcile_intervals(self.policy, self.pm), **timing,
        )
        self._stop = threading.Event()
        self._running: threading.Thread | None = None

    # --- driving the worker ----------------------------------------------------------------------

    def settle(self, *, timeout: float = 30.0) -> None:
        """Deliver every pending webhook, then run worker passes until nothing is left to do.

        With a fake clock, time moves on to the moment the next held action may go.
        """
        deadline = time.monotonic() + timeout
        while True:
            if not self._delivered(deadline):
                raise AssertionError("the sandboxes' webhooks were never delivered")
            done = self.worker.run_once()
            if not done.total and self.idle() and self._delivered(time.monotonic() + 0.2) and self.idle():
                return
            if time.monotonic() > deadline:
                raise AssertionError("the deployment never settled")
            if not done.total:
                self._wait_in_fake_time()
                time.sleep(0.05)

    def _delivered(self, deadline: float) -> bool:
        return all(
            sandbox.wait_for_deliveries(timeout=max(0.1, deadline - time.monotonic()))
            for sandbox in self.sandboxes.values()
        )

    def _wait_in_fake_time(self) -> None:
        if self.clock is None:
            return
        later = self.store.next_action_ready(after=self.clock.now() - timedelta(days=1))
        if later is not None and later > self.clock.now():
            self.clock.advance((later - self.clock.now()).total_seconds())

    def run_worker(self) -> None:
        """Run the worker in a thread of its own (decisions and the outbox), until :meth:`close`."""
        if self._stop.is_set():  # stopped before: a new run
            self._stop = threading.Event()
        self._running = threading.Thread(
            target=self.worker.run, kwargs={"stop": self._stop, "idle_wait": 0.1},
            name="escalier-local-worker", daemon=True,
        )
        self._running.start()

    def idle(self) -> bool:
        """True when no delivery waits to be decided and no action waits to go upstream."""
        with self._engine.connect() as connection:
            deliveries = connection.execute(
                select(func.count()).select_from(inbox).where(inbox.c.state == "pending")
            ).scalar_one()
            actions = connection.execute(
                select(func.count()).select_from(outbox).where(outbox.c.state == "pending")
            ).scalar_one()
        return deliveries == 0 and actions == 0

    # --- what happened ---------------------------------------------------------------------------

    def outbox_rows(self) -> list[Any]:
        """Every outbox row, in the order it was written."""
        with self._engine.connect() as connection:
            return connection.execute(select(outbox).order_by(outbox.c.id)).all()

    def inbox_rows(self) -> list[Any]:
        """Every stored delivery, in the order received."""
        with self._engine.connect() as connection:
            return connection.execute(select(inbox).order_by(inbox.c.id)).all()

    def now(self) -> datetime:
        """The deployment's time."""
        return self.clock.now() if self.clock is not None else datetime.now().astimezone()

    # --- stopping --------------------------------------------------------------------------------

    def stop_worker(self) -> None:
        """Stop the worker thread (if any) after its batch in hand; the receiver keeps serving."""
        self._stop.set()
        if self._running is not None:
            self._running.join(timeout=10)
            self._running = None

    def close(self) -> Pass | None:
        """Stop the worker thread (if any) and the receiver; release connections and the store."""
        self.stop_worker()
        self._server.shutdown()
        self._serving.join(timeout=5)
        for connection in self.connections.values():
            connection.close()
        self._engine.dispose()
        return None

    def __enter__(self) -> LocalDeployment:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
