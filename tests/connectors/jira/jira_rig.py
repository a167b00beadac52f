"""The whole path on one machine: the Jira sandbox, the receiver over HTTP, the store and a worker.

sandbox API -> signed webhook -> receiver -> store -> engine -> outbox -> Jira connector (the real
``jira`` client) -> sandbox. Nothing is mocked; the worker's passes are driven by the test.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from werkzeug.serving import make_server

from escalier.connectors.jira.sandbox import JiraSandbox
from escalier.core.config import load_policy
from escalier.core.engine import decide
from escalier.plugins import get_plugin_manager
from escalier.runtime.operations import build_connections, configured_instances, reconcile_intervals
from escalier.runtime.ratelimit import RateLimiter
from escalier.runtime.retry import RetrySettings
from escalier.runtime.testing import FakeClock
from escalier.runtime.worker import Worker
from escalier.store import Store, create_store_engine, upgrade
from escalier.store.schema import inbox, outbox
from escalier.webhooks import ReceiverSettings, create_app

SECRET = "jira-webhook-secret"
TOKEN = "sandbox-token"
ENVIRON = {"JIRA_API_TOKEN": TOKEN, "JIRA_WEBHOOK_SECRET": SECRET}

POLICY = """\
name: Jira end to end
default_calendar: always
calendars:
  always: {{timezone: UTC, hours: 24x7}}
people:
  mia: {{name: Mia Hoffmann, email: mia@northwind.example, jira: "{mia}"}}
  priya: {{name: Priya Raman, email: priya@northwind.example, jira: "{priya}"}}
  tomas: {{name: Tomas Novak, email: tomas@northwind.example, jira: "{tomas}"}}
connectors:
  jira:
    url: {url}
    deployment: {deployment}
{user}    token: ${{JIRA_API_TOKEN}}
    webhook_secrets: ["${{JIRA_WEBHOOK_SECRET}}"]
    project: SUP
    components: [Support L1, Support L2, Platform]
    jql: project = SUP
    service_account: "{service_account}"
    service_desk_projects: [SUP]
    fields: {{severity: customfield_10050, users_affected: customfield_10051}}
    writes_per_minute: {writes_per_minute}
    reconcile_every: "{reconcile_every}"
    timeout_seconds: 5
tiers:
  - level: 1
    name: General support
    targets: {{jira: {{component: Support L1, labels: [tier-1], assignee: mia}}}}
    sla: {{resolve: 8h}}
    raci: {{accountable: [mia]}}
  - level: 2
    name: Specialists
    targets: {{jira: {{component: Support L2, labels: [tier-2], assignee: priya}}}}
    sla: {{resolve: 8h}}
    raci: {{accountable: [priya]}}
  - level: 3
    name: Critical response
    targets: {{jira: {{component: Platform, labels: [tier-3], assignee: tomas}}}}
    sla: {{resolve: 4h}}
    raci: {{accountable: [tomas]}}
severities: [critical, high, medium, low]
impact:
  - {{name: widespread, users_at_least: 50}}
  - {{name: single, users_at_least: 0}}
notifications: {{repeat_every: 4h, max_repeats: 1}}
criteria:
  - id: high-stale
    when: {{tier: [1], severity: [high], unresolved_for: 30m}}
    then: {{to_tier: 3}}
  - id: stale
    when: {{tier: [1], unresolved_for: 30m}}
    then: {{to_tier: 2}}
matrix:
  critical: {{widespread: {{tier: 3, priority: urgent}}, single: {{tier: 2, priority: high}}}}
  high: {{widespread: {{tier: 2, priority: high}}, single: {{tier: 1, priority: normal}}}}
  medium: {{widespread: {{tier: 1, priority: normal}}, single: {{tier: 1, priority: normal}}}}
  low: {{widespread: {{tier: 1}}, single: {{tier: 1}}}}
"""

FAST_RETRIES = RetrySettings(attempts_per_pass=3, initial_wait=0.05, max_wait=0.5, jitter=0.01,
                             max_total_attempts=12, requeue_initial=0.2, requeue_max=1.0)


@dataclass
class JiraRig:
    """A running sandbox, receiver and store, and a worker to drive by hand."""

    sandbox: JiraSandbox
    store: Store
    worker: Worker
    receiver_url: str
    policy_path: Path
    connections: dict[Any, Any] = field(default_factory=dict)
    clock: FakeClock | None = None

    def severity(self, value: str) -> dict[str, Any]:
        """The custom-field value that sets an issue's severity."""
        return {"customfield_10050": {"value": value}}

    def settle(self, *, timeout: float = 30.0) -> None:
        """Deliver every pending webhook, then run the worker until nothing is left to do."""
        deadline = time.monotonic() + timeout
        while True:
            assert self.sandbox.wait_for_deliveries(timeout=max(0.1, deadline - time.monotonic()))
            done = self.worker.run_once()
            if not done.total and self._idle():
                if self.sandbox.wait_for_deliveries(timeout=0.2) and self._idle():
                    return
            if time.monotonic() > deadline:
                raise AssertionError("the path never settled")
            if not done.total:
                if self.clock is not None:
                    self._wait_in_fake_time()
                time.sleep(0.05)

    def _wait_in_fake_time(self) -> None:
        """Move a shared fake clock to when the next held action may go (a paused budget)."""
        assert self.clock is not None
        later = self.store.next_action_ready(after=self.clock.now() - timedelta(days=1))
        if later is not None and later > self.clock.now():
            self.clock.advance((later - self.clock.now()).total_seconds())

    def _idle(self) -> bool:
        with self.store.engine.connect() as connection:
            pending_inbox = connection.execute(
                select(func.count()).select_from(inbox).where(inbox.c.state == "pending")
            ).scalar_one()
            pending_outbox = connection.execute(
                select(func.count()).select_from(outbox).where(outbox.c.state == "pending")
            ).scalar_one()
        return pending_inbox == 0 and pending_outbox == 0

    def outbox_rows(self) -> list[Any]:
        """Every outbox row, in the order it was written."""
        with self.store.engine.connect() as connection:
            return connection.execute(select(outbox).order_by(outbox.c.id)).all()

    def inbox_rows(self) -> list[Any]:
        """Every stored delivery, in the order received."""
        with self.store.engine.connect() as connection:
            return connection.execute(select(inbox).order_by(inbox.c.id)).all()

    def writes(self) -> dict[str, int]:
        """The sandbox's counts of write calls per endpoint."""
        return {name: n for name, n in self.sandbox.calls().items() if not name.startswith("GET ")}


@contextmanager
def jira_rig(
    tmp_path: Path,
    *,
    deployment: str = "cloud",
    writes_per_minute: int = 600,
    reconcile_every: str = "off",
    rate_limiter: RateLimiter | None = None,
    clock: FakeClock | None = None,
) -> Iterator[JiraRig]:
    """Start the sandbox and the receiver, write a policy pointing at them, build a worker.

    With ``clock``, the sandbox, the receiver and the worker share one compressed time: the
    worker's sleeps advance it, and the sandbox's write budget and timestamps follow it.
    """
    url = f"sqlite:///{tmp_path / 'escalier.db'}"
    upgrade(url)
    sandbox = JiraSandbox(deployment=deployment, token=TOKEN, webhook_secret=SECRET,
                          webhook_retry_delays=(0.05, 0.1, 0.2),
                          clock=clock.now if clock is not None else None).start()
    ids = {handle: sandbox.user(handle) for handle in ("mia", "priya", "tomas")}
    key = "accountId" if deployment == "cloud" else "name"
    policy_path = tmp_path / "escalier.yaml"
    policy_path.write_text(POLICY.format(
        url=sandbox.url, deployment=deployment,
        user="    user: escalier@example.com\n" if deployment == "cloud" else "",
        service_account=sandbox.service_account, writes_per_minute=writes_per_minute,
        reconcile_every=reconcile_every, **{h: user[key] for h, user in ids.items()},
    ))
    pm = get_plugin_manager(load_entrypoints=False)
    policy = load_policy(policy_path, plugin_manager=pm)
    settings = ReceiverSettings.from_policy(policy, ENVIRON, url)
    if clock is not None:
        settings = replace(settings, clock=clock.now)
    app = create_app(settings, plugin_manager=pm)
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    receiver_url = f"http://127.0.0.1:{server.server_port}"
    sandbox.configure_webhooks(url=f"{receiver_url}/webhooks/jira")
    engine = create_store_engine(url)
    connections = build_connections(policy, pm, ENVIRON)
    worker = Worker(
        Store(engine), decide=decide, policy=policy, connections=connections, plugin_manager=pm,
        retry=FAST_RETRIES, worker_id="e2e-worker", rate_limiter=rate_limiter,
        **({"clock": clock.now, "sleep": clock.sleep} if clock is not None else {}),
        settings={account: found.settings for account, found in configured_instances(policy, pm).items()},
        reconcile=reconcile_intervals(policy, pm),
    )
    try:
        yield JiraRig(sandbox, worker.store, worker, receiver_url, policy_path, connections, clock)
    finally:
        server.shutdown()
        thread.join(timeout=5)
        sandbox.stop()
        for connection in connections.values():
            connection.close()
        engine.dispose()


def jira_keys(rows: list[Any]) -> dict[str, list[str]]:
    """The outbox's action keys per ticket."""
    found: dict[str, list[str]] = {}
    for row in rows:
        found.setdefault(row.ticket_id, []).append(row.idempotency_key)
    return found


def labels(issue: Mapping[str, Any]) -> list[str]:
    """An issue's labels as the sandbox holds them."""
    return list(issue["fields"].get("labels") or [])
