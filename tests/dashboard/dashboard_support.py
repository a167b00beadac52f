"""A day of escalations on the Jira sandbox, and the dashboard serving it.

sandbox API -> signed webhook -> receiver -> store -> engine -> outbox -> Jira connector -> sandbox,
on a fake clock; a second app of the same factory, with the dashboard on, reads the same store
on its own port.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from werkzeug.serving import make_server

from escalier.connectors.jira.sandbox import JiraSandbox
from escalier.plugins import get_plugin_manager
from escalier.runtime.local import LocalDeployment
from escalier.runtime.testing import FakeClock
from escalier.webhooks import ReceiverSettings, create_app

SECRET = "jira-webhook-secret"
TOKEN = "sandbox-token"
DASHBOARD_TOKEN = "dashboard-token-0123456789"
ENVIRON = {"JIRA_API_TOKEN": TOKEN, "JIRA_WEBHOOK_SECRET": SECRET}
# Ticket subjects are user input: this one must show as text, never as markup.
HOSTILE_SUBJECT = 'Export shows <b>bold</b> & "quotes" <script>document.title="owned"</script>'

POLICY = """\
name: Dashboard day
default_calendar: always
calendars:
  always: {{timezone: UTC, hours: 24x7}}
  berlin: {{timezone: Europe/Berlin, hours: 24x7}}
people:
  mia: {{name: Mia Hoffmann, email: mia@northwind.example, jira: "{mia}"}}
  priya: {{name: Priya Raman, email: priya@northwind.example, jira: "{priya}"}}
  tomas: {{name: Tomas Novak, email: tomas@northwind.example, jira: "{tomas}"}}
connectors:
  jira:
    url: {url}
    deployment: cloud
    user: escalier@example.com
    token: ${{JIRA_API_TOKEN}}
    webhook_secrets: ["${{JIRA_WEBHOOK_SECRET}}"]
    project: SUP
    components: [Support L1, Support L2, Platform]
    jql: project = SUP
    service_account: "{service_account}"
    service_desk_projects: [SUP]
    fields: {{severity: customfield_10050, users_affected: customfield_10051}}
    writes_per_minute: 600
    reconcile_every: "off"
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
    raci: {{accountable: [priya], consulted: [tomas]}}
  - level: 3
    name: Critical response
    calendar: berlin
    targets: {{jira: {{component: Platform, labels: [tier-3], assignee: tomas}}}}
    sla: {{acknowledge: 30m, resolve: 4h}}
    raci: {{accountable: [tomas], informed: [mia]}}
severities: [critical, high, medium, low]
impact:
  - {{name: widespread, users_at_least: 50}}
  - {{name: single, users_at_least: 0}}
notifications: {{repeat_every: 8h, max_repeats: 1}}
criteria:
  - id: stale
    description: nobody solved it at tier 1 in half a working day
    when: {{tier: [1], unresolved_for: 4h}}
    then: {{to_tier: 2}}
matrix:
  critical: {{widespread: {{tier: 3, priority: urgent}}, single: {{tier: 2, priority: high}}}}
  high: {{widespread: {{tier: 2, priority: high}}, single: {{tier: 1, priority: normal}}}}
  medium: {{widespread: {{tier: 1, priority: normal}}, single: {{tier: 1, priority: normal}}}}
  low: {{widespread: {{tier: 1}}, single: {{tier: 1}}}}
"""


@dataclass
class Day:
    """The tickets of the scripted day, by role, as Jira keys."""

    outage: str = ""  # critical for 120 users: tier 3 at once; its clocks breach
    vat: str = ""  # critical for one customer: tier 2, acknowledged; half its time used
    stale: str = ""  # medium: tier 1, then tier 2 by the `stale` criterion
    export: str = ""  # low, with a hostile subject: tier 1, on track
    tiers: dict[str, int] = field(default_factory=dict)


class DashboardRig(LocalDeployment):
    """The local deployment on the Jira sandbox, with a dashboard app beside it."""

    dashboard_url: str = ""
    store_url: str = ""

    @property
    def sandbox(self) -> JiraSandbox:
        """The Jira sandbox."""
        return self.sandboxes["jira"]  # type: ignore[return-value]

    def fields(self, severity: str, users: int | None = None) -> dict[str, Any]:
        """Custom-field values for a severity and a number of affected users."""
        values: dict[str, Any] = {"customfield_10050": {"value": severity}}
        if users is not None:
            values["customfield_10051"] = users
        return values

    def wake(self) -> None:
        """Decide every due timer, then settle."""
        for _ in iter(self.worker.process_timers, 0):
            continue
        self.settle()


@contextmanager
def serve_dashboard(rig: DashboardRig, **settings: Any) -> Iterator[str]:
    """Serve an app of the receiver's factory with the dashboard on, over ``rig``'s store and
    clock, on a free port of 127.0.0.1; yields the dashboard's URL."""
    options: dict[str, Any] = {"dashboard": True, "policy": rig.policy}
    if rig.clock is not None:
        options["clock"] = rig.clock.now
    options.update(settings)
    app = create_app(ReceiverSettings(store_url=rig.store_url, **options), plugin_manager=rig.pm)
    server = make_server("127.0.0.1", 0, app, threaded=True)
    serving = threading.Thread(target=server.serve_forever, name="dashboard", daemon=True)
    serving.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/dashboard/"
    finally:
        server.shutdown()
        serving.join(timeout=5)
        app.extensions["escalier"].close()


@contextmanager
def dashboard_rig(tmp_path: Path, **settings: Any) -> Iterator[DashboardRig]:
    """The Jira sandbox, a local deployment on a fake clock, and a dashboard on another port."""
    clock = FakeClock(datetime.now(UTC).replace(microsecond=0))
    sandbox = JiraSandbox(deployment="cloud", token=TOKEN, webhook_secret=SECRET,
                          webhook_retry_delays=(0.05, 0.1, 0.2), clock=clock.now).start()
    ids = {handle: sandbox.user(handle)["accountId"] for handle in ("mia", "priya", "tomas")}
    policy_path = tmp_path / "escalier.yaml"
    policy_path.write_text(POLICY.format(url=sandbox.url, service_account=sandbox.service_account, **ids))
    store_url = f"sqlite:///{tmp_path / 'escalier.db'}"
    try:
        with DashboardRig(policy_path, store_url, sandboxes={"jira": sandbox}, environ=ENVIRON,
                          clock=clock, plugin_manager=get_plugin_manager(load_entrypoints=False)) as rig:
            rig.store_url = store_url
            with serve_dashboard(rig, **settings) as url:
                rig.dashboard_url = url
                yield rig
    finally:
        sandbox.stop()


def play_day(rig: DashboardRig) -> Day:
    """Four tickets over four and a half hours; returns their keys and the tiers they end at."""
    sandbox, clock = rig.sandbox, rig.clock
    day = Day()
    day.outage = sandbox.create_issue("SUP", "Checkout fails for every EU customer", priority="High",
                                      fields=rig.fields("critical", 120), as_user="dana")["key"]
    day.vat = sandbox.create_issue("SUP", "Invoices show the wrong VAT", priority="High",
                                   fields=rig.fields("critical"), as_user="dana")["key"]
    day.stale = sandbox.create_issue("SUP", "Password reset mail arrives late", priority="Medium",
                                     fields=rig.fields("medium"), as_user="dana")["key"]
    rig.settle()
    clock.advance(3600)
    day.export = sandbox.create_issue("SUP", HOSTILE_SUBJECT, priority="Low", fields=rig.fields("low"),
                                      as_user="dana")["key"]
    rig.settle()
    # A specialist answers the customer publicly: the tier-2 notification is acknowledged.
    sandbox.add_comment(day.vat, "We are looking at the VAT rates now.", as_user="priya")
    rig.settle()
    clock.advance(3.5 * 3600)
    rig.wake()
    day.tiers = {day.outage: 3, day.vat: 2, day.stale: 2, day.export: 1}
    return day
