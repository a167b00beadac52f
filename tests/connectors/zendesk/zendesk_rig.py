"""The whole path on one machine, with the Zendesk sandbox as the upstream.

sandbox API -> signed webhook -> receiver -> store -> engine -> outbox -> Zendesk connector (the
real ``zenpy`` client) -> sandbox. Nothing is mocked; the worker's passes are driven by the test.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from escalier.connectors.zendesk.sandbox import ZendeskSandbox
from escalier.plugins import get_plugin_manager
from escalier.runtime.local import LocalDeployment
from escalier.runtime.testing import FakeClock

SECRET = "zendesk-signing-secret"
TOKEN = "sandbox-token"
ENVIRON = {"ZENDESK_API_TOKEN": TOKEN, "ZENDESK_WEBHOOK_SECRET": SECRET}
SEVERITY_FIELD = 360000201
USERS_FIELD = 360000202

POLICY = """\
name: Zendesk end to end
default_calendar: always
calendars:
  always: {{timezone: UTC, hours: 24x7}}
people:
  mia: {{name: Mia Hoffmann, email: mia@northwind.example, zendesk: 360001}}
  priya: {{name: Priya Raman, email: priya@northwind.example, zendesk: 360003}}
  tomas: {{name: Tomas Novak, email: tomas@northwind.example, zendesk: 360004}}
connectors:
  zendesk:
    subdomain: northwind
    url: {url}
    email: escalier@example.com
    token: ${{ZENDESK_API_TOKEN}}
    webhook_secrets: ["${{ZENDESK_WEBHOOK_SECRET}}"]
    groups: {{tier-1: 360000101, tier-2: 360000102, tier-3: 360000103, engineering: 360000110}}
    service_user_id: 360009999
    fields: {{severity: 360000201, users_affected: 360000202}}
    writes_per_minute: {writes_per_minute}
    reconcile_every: "{reconcile_every}"
    timeout_seconds: 5
tiers:
  - level: 1
    name: General support
    targets: {{zendesk: {{group: tier-1}}}}
    sla: {{resolve: 8h}}
    raci: {{accountable: [mia]}}
  - level: 2
    name: Specialists
    targets: {{zendesk: {{group: tier-2, assignee: priya}}}}
    sla: {{resolve: 8h}}
    raci: {{accountable: [priya]}}
  - level: 3
    name: Critical response
    targets: {{zendesk: {{group: tier-3, assignee: tomas}}}}
    sla: {{resolve: 4h}}
    raci: {{accountable: [tomas]}}
notifications: {{repeat_every: 4h, max_repeats: 1}}
criteria:
  - id: stale
    when: {{tier: [1], unresolved_for: 30m}}
    then: {{to_tier: 2}}
severities: [critical, high, medium, low]
impact:
  - {{name: widespread, users_at_least: 50}}
  - {{name: single, users_at_least: 0}}
matrix:
  critical: {{widespread: {{tier: 3, priority: urgent}}, single: {{tier: 2, priority: high}}}}
  high: {{widespread: {{tier: 2, priority: high}}, single: {{tier: 1, priority: normal}}}}
  medium: {{widespread: {{tier: 1, priority: normal}}, single: {{tier: 1, priority: normal}}}}
  low: {{widespread: {{tier: 1}}, single: {{tier: 1}}}}
"""


class ZendeskRig(LocalDeployment):
    """The local deployment with the Zendesk sandbox as its upstream."""

    @property
    def sandbox(self) -> ZendeskSandbox:
        """The Zendesk sandbox."""
        return self.sandboxes["zendesk"]  # type: ignore[return-value]

    def writes(self) -> dict[str, int]:
        """The sandbox's counts of write calls per endpoint."""
        return {name: n for name, n in self.sandbox.calls().items() if not name.startswith("GET ")}


@contextmanager
def zendesk_rig(
    tmp_path: Path,
    *,
    webhook_mode: str = "events",
    writes_per_minute: int = 600,
    reconcile_every: str = "off",
    clock: FakeClock | None = None,
) -> Iterator[ZendeskRig]:
    """Start the Zendesk sandbox and a local deployment on a policy pointing at it."""
    sandbox = ZendeskSandbox(token=TOKEN, webhook_secret=SECRET, webhook_mode=webhook_mode,
                             webhook_retry_delays=(0.05, 0.1, 0.2),
                             clock=clock.now if clock is not None else None).start()
    policy_path = tmp_path / "escalier.yaml"
    policy_path.write_text(POLICY.format(url=sandbox.url, writes_per_minute=writes_per_minute,
                                         reconcile_every=reconcile_every))
    try:
        with ZendeskRig(policy_path, f"sqlite:///{tmp_path / 'escalier.db'}",
                        sandboxes={"zendesk": sandbox}, environ=ENVIRON, clock=clock,
                        plugin_manager=get_plugin_manager(load_entrypoints=False)) as rig:
            yield rig
    finally:
        sandbox.stop()
