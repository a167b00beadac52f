"""The plugin system: the factory, each hook, and a third-party connector added by one entry point."""

from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys
import textwrap
from datetime import datetime, timezone
from pathlib import Path

import pluggy
import pytest
from pydantic import BaseModel, ConfigDict

from escalier.core import hookspecs
from escalier.core.config import load_policy, read_policy
from escalier.core.connector import ActionResult, ConnectorSpec, RawEvent
from escalier.core.extensions import ChannelSpec, CommentTemplate, CriterionSpec, WebhookSpec
from escalier.core.hookspecs import hookimpl
from escalier.core.model import Action, ActionKind, EventKind, TicketEvent
from escalier.plugins import describe_plugins, get_plugin_manager, notify_plugins

ROOT = Path(__file__).resolve().parent.parent
HOOKS = sorted(
    name for name, fn in vars(hookspecs).items()
    if inspect.isfunction(fn) and hasattr(fn, f"{hookspecs.PROJECT}_spec")
)


class _Options(BaseModel):
    model_config = ConfigDict(extra="forbid")
    at_least: int = 1


class AcmePlugin:
    """A third-party plugin that uses every hook once."""

    def __init__(self) -> None:
        self.decided: list[str] = []
        self.applied: list[str] = []

    @hookimpl
    def register_connectors(self):
        return [ConnectorSpec(name="acme", title="Acme Desk", config_model=_Options, target_model=_Options)]

    @hookimpl
    def register_notification_channels(self):
        return [ChannelSpec(kind="pager", options_model=_Options)]

    @hookimpl
    def register_comment_templates(self):
        return [CommentTemplate(name="acme-hello", text="Hello from {tier_name}")]

    @hookimpl
    def register_criteria(self):
        return [CriterionSpec(name="acme-score", options_model=_Options, matches=lambda t, s, n, o: True)]

    @hookimpl
    def register_webhooks(self):
        return [WebhookSpec(name="acme", verify=lambda h, b, s, n: None, delivery_id=lambda h, p: None,
                            event_type=lambda h, p: "x", handles=lambda e: True)]

    @hookimpl
    def parse_event_for_connector(self, raw):
        if raw.source != "acme":
            return None
        return [TicketEvent(id="acme-1", system="acme", ticket_id="7", kind=EventKind.CREATED,
                            occurred_at=raw.received_at)]

    @hookimpl
    def apply_action_for_connector(self, action, connection):
        return ActionResult(applied=True, detail=f"acme applied {action.key}")

    @hookimpl
    def escalation_decided(self, system, ticket_id, history, actions):
        self.decided.append(f"{system}:{ticket_id}")

    @hookimpl
    def action_applied(self, action, result):
        self.applied.append(action.key)


class Fallback:
    """Answers every first-result hook last, as a built-in would."""

    @hookimpl(trylast=True)
    def parse_event_for_connector(self, raw):
        return []

    @hookimpl(trylast=True)
    def apply_action_for_connector(self, action, connection):
        return ActionResult(applied=False, detail="fallback")


ACME_POLICY = """\
name: Acme
default_calendar: office
calendars: {office: {timezone: UTC, hours: 24x7}}
connectors: {acme: {at_least: 2}}
tiers:
  - level: 1
    name: One
    targets: {acme: {at_least: 3}}
    missing_information_template: acme-hello
    notify: {channels: [page-me]}
notifications:
  channels: {page-me: {kind: pager, options: {at_least: 1}}}
criteria:
  - id: score
    when: {extra: {acme-score: {at_least: 5}}}
    then: {to_tier: 1}
"""


@pytest.fixture
def acme():
    plugin = AcmePlugin()
    return plugin, get_plugin_manager(load_entrypoints=False, plugins=[plugin, Fallback()])


def test_every_hook_is_documented():
    for name in HOOKS:
        doc = " ".join((inspect.getdoc(getattr(hookspecs, name)) or "").split())
        assert "Fires" in doc and "Returns" in doc, f"{name} lacks when it fires or what it returns"
        spec = getattr(getattr(hookspecs, name), f"{hookspecs.PROJECT}_spec")
        if spec.get("firstresult"):
            assert "Stops at the first non-None result" in doc, name


def test_every_hook_has_a_test_and_a_line_in_the_docs():
    tests = "\n".join(
        p.read_text() for p in Path(__file__).parent.rglob("test_*.py") if p.name != "test_plugins.py"
    ) + inspect.getsource(AcmePlugin)
    docs = (ROOT / "docs" / "plugins.md").read_text()
    for name in HOOKS:
        assert f"def {name}(" in tests, f"no test implements {name}"
        assert f"`{name}" in docs, f"docs/plugins.md does not describe {name}"


def test_factory_builds_independent_managers(acme):
    _, pm = acme
    fresh = get_plugin_manager(load_entrypoints=False)
    assert not any(isinstance(p, AcmePlugin) for p in fresh.get_plugins())
    assert isinstance(pm, pluggy.PluginManager)


def test_third_party_contributions_validate_in_a_policy(acme, tmp_path):
    _, pm = acme
    path = tmp_path / "acme.yaml"
    path.write_text(ACME_POLICY)
    policy = load_policy(path, plugin_manager=pm)
    assert policy.templates["acme-hello"].text == "Hello from {tier_name}"
    path.write_text(ACME_POLICY.replace("{at_least: 3}", "{at_least: x}").replace("kind: pager", "kind: pagr"))
    _, problems = read_policy(path, plugin_manager=pm)
    paths = {p.path for p in problems}
    assert {"tiers[0].targets.acme.at_least", "notifications.channels.page-me.kind"} <= paths


def test_describe_plugins_names_what_each_offers(acme):
    _, pm = acme
    rows = {row["module"]: row for row in describe_plugins(pm)}
    acme_row = rows["AcmePlugin"]
    assert acme_row["connectors"] == ["acme"] and acme_row["webhooks"] == ["acme"]
    assert acme_row["criteria"] == ["acme-score"] and acme_row["channels"] == ["pager"]


def test_first_result_hooks_let_a_plugin_override_a_built_in(acme):
    _, pm = acme
    now = datetime(2026, 3, 6, 15, 50, tzinfo=timezone.utc)
    mine = RawEvent(source="acme", instance="default", body=b"{}", headers={}, received_at=now)
    other = RawEvent(source="other", instance="default", body=b"{}", headers={}, received_at=now)
    assert pm.hook.parse_event_for_connector(raw=mine, config=None, connection=None)[0].ticket_id == "7"
    assert pm.hook.parse_event_for_connector(raw=other, config=None, connection=None) == []
    action = Action(kind=ActionKind.ADD_TAGS, key="acme:default:7:1", system="acme", ticket_id="7", tags=("x",))
    assert pm.hook.apply_action_for_connector(action=action, connection=None).detail.startswith("acme applied")


def test_notifications_reach_every_plugin(acme):
    plugin, pm = acme
    action = Action(kind=ActionKind.ADD_TAGS, key="k1", system="acme", ticket_id="7", tags=("x",))
    pm.hook.escalation_decided(system="acme", ticket_id="7", history=[], actions=[action])
    pm.hook.action_applied(action=action, result=ActionResult(applied=True))
    assert plugin.decided == ["acme:7"] and plugin.applied == ["k1"]


def test_a_connector_is_added_with_one_entry_point(tmp_path):
    (tmp_path / "acme_escalier.py").write_text(textwrap.dedent("""
        from pydantic import BaseModel
        from escalier.core.connector import ConnectorSpec
        from escalier.core.hookspecs import hookimpl

        class Settings(BaseModel):
            url: str

        @hookimpl
        def register_connectors():
            return [ConnectorSpec(name="acme", title="Acme", config_model=Settings, target_model=Settings)]
    """))
    dist = tmp_path / "acme_escalier-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: acme-escalier\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[escalier]\nacme = acme_escalier\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run([sys.executable, "-m", "escalier", "plugins", "--json"],
                            capture_output=True, text=True, env=env, timeout=60)
    assert result.returncode == 0, result.stderr
    rows = {row["name"]: row for row in json.loads(result.stdout)}
    assert rows["acme"]["connectors"] == ["acme"]
    assert rows["acme"]["distribution"] == "acme-escalier 1.0"


def test_a_broken_plugin_is_named(tmp_path):
    (tmp_path / "broken_escalier.py").write_text("raise ImportError('missing dependency zzz')\n")
    dist = tmp_path / "broken_escalier-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-escalier\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[escalier]\nbroken = broken_escalier\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    result = subprocess.run([sys.executable, "-m", "escalier", "plugins"],
                            capture_output=True, text=True, env=env, timeout=60)
    assert result.returncode == 1
    assert "plugin error" in result.stderr and "missing dependency zzz" in result.stderr
    assert "Traceback" not in result.stderr


class BrokenListener:
    """A plugin whose notification hook fails."""

    @hookimpl(tryfirst=True)
    def action_applied(self, action, result):
        raise RuntimeError("listener bug")


def test_a_failing_listener_is_named_and_does_not_silence_the_others(acme, caplog):
    plugin, pm = acme
    pm.register(BrokenListener(), name="broken-listener")
    action = Action(kind=ActionKind.ADD_TAGS, key="k2", system="acme", ticket_id="7", tags=("x",))
    failed = notify_plugins(pm, "action_applied", action=action, result=ActionResult(applied=True))
    assert failed == ["broken-listener"]
    assert plugin.applied == ["k2"]
    assert any(r.plugin == "broken-listener" for r in caplog.records if r.msg == "plugin.notification.failed")
