"""``escalier check-config`` warns when a mail channel has no mail connection to send through."""

from __future__ import annotations

from escalier.core.config import read_policy
from escalier.plugins import get_plugin_manager

POLICY = """\
name: Channels
default_calendar: always
calendars: {{always: {{timezone: UTC, hours: 24x7}}}}
people: {{mia: {{name: Mia Hoffmann, email: mia@northwind.example}}}}
{connectors}
tiers:
  - {{level: 1, name: General support, raci: {{accountable: [mia], informed: [channel:leads]}}}}
notifications:
  channels:
    leads: {{kind: email, to: [leads@northwind.example]}}
"""

MAIL = """\
connectors:
  email:
    from_address: escalations@northwind.example
    smtp: {host: 127.0.0.1, port: 2525, security: none}
"""


def channel_warnings(tmp_path, connectors: str) -> list[str]:
    path = tmp_path / "escalier.yaml"
    path.write_text(POLICY.format(connectors=connectors))
    policy, problems = read_policy(path, lint=True, plugin_manager=get_plugin_manager(load_entrypoints=False))
    assert policy is not None, [str(p) for p in problems]
    return [str(p) for p in problems if p.severity == "warning" and "notifications.channels" in p.path]


def test_a_mail_channel_without_a_mail_connection_is_a_warning_naming_its_addresses(tmp_path):
    [warning] = channel_warnings(tmp_path, "")
    assert "escalier.yaml:10: warning: notifications.channels.leads.kind" in warning
    assert "no email connection is configured" in warning and "leads@northwind.example" in warning


def test_a_mail_channel_with_a_mail_connection_is_fine(tmp_path):
    assert channel_warnings(tmp_path, MAIL) == []
