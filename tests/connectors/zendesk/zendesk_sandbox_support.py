"""What the Zendesk sandbox tests share: a webhook receiver, the real clients, Zendesk's own spec."""

from __future__ import annotations

import copy
import json
import threading
from collections.abc import Callable
from functools import cache
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import requests
from requests.structures import CaseInsensitiveDict
from zenpy import Zenpy

from escalier.connectors.zendesk.sandbox import ZendeskSandbox

ROOT = Path(__file__).resolve().parents[3]
SPECS = ROOT.parent / "shared" / "specs"
ZENDESK_SPEC = "zendesk-support-oas.2025-06-10.yaml"
EMAIL = "escalier@example.com"
TOKEN = "sandbox-token"


class Receiver:
    """Collects webhook deliveries on 127.0.0.1; answers what it is told to, then 200.

    ``answers`` holds ``status`` or ``(status, headers)`` for the next deliveries.
    """

    def __init__(self) -> None:
        self.received: list[tuple[CaseInsensitiveDict[str], bytes]] = []
        self.answers: list[int | tuple[int, dict[str, str]]] = []
        self.arrived = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with receiver.arrived:
                    answer = receiver.answers.pop(0) if receiver.answers else 200
                    receiver.received.append((CaseInsensitiveDict(self.headers.items()), body))
                    receiver.arrived.notify_all()
                status, headers = answer if isinstance(answer, tuple) else (answer, {})
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                """Quiet: the test reads what it needs from the receiver."""

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/webhooks/zendesk"
        threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        ).start()

    def payloads(self) -> list[dict[str, Any]]:
        return [json.loads(body) for _, body in self.received]

    def types(self) -> list[str]:
        """Each delivery's event type; ``trigger`` for a trigger body."""
        return [p["type"] if str(p.get("type")).startswith("zen:event-type:") else "trigger"
                for p in self.payloads()]

    def wait_for(self, count: int, timeout: float = 5.0) -> None:
        """Block until ``count`` deliveries have arrived (retries included)."""
        with self.arrived:
            if not self.arrived.wait_for(lambda: len(self.received) >= count, timeout=timeout):
                raise AssertionError(f"{len(self.received)} deliveries arrived, not {count}")

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def point_zenpy(sandbox: ZendeskSandbox, monkeypatch: pytest.MonkeyPatch) -> None:
    """Send zenpy to the sandbox, as ``policy_snippet`` says to (undone after the test)."""
    monkeypatch.setenv("ZENPY_FORCE_SCHEME", "http")
    monkeypatch.setenv("ZENPY_FORCE_NETLOC", f"127.0.0.1:{sandbox.port}")


def connect(sandbox: ZendeskSandbox, monkeypatch: pytest.MonkeyPatch, **options: Any) -> Zenpy:
    """The real client as Escalier wants it: token auth, a timeout, no sleeping on a 429, no cache.

    zenpy 2.0.57 has no ``raise_on_ratelimit``; a ``ratelimit_budget`` of 0 makes it raise
    ``RatelimitBudgetExceeded`` on a 429 instead of sleeping for ``Retry-After``. Its object cache
    would answer ``tickets(id=...)`` from memory, with a stale ``updated_at`` for safe updates.
    """
    point_zenpy(sandbox, monkeypatch)
    settings: dict[str, Any] = {"subdomain": sandbox.subdomain, "email": EMAIL, "token": TOKEN,
                                "timeout": 5, "proactive_ratelimit": None, "ratelimit_budget": 0,
                                "disable_cache": True}
    settings.update(options)
    return Zenpy(**settings)


def session(*, bearer: bool = False) -> requests.Session:
    """A plain HTTP session with the sandbox's credentials (token auth, or OAuth bearer)."""
    http = requests.Session()
    if bearer:
        http.headers["Authorization"] = f"Bearer {TOKEN}"
    else:
        http.auth = (f"{EMAIL}/token", TOKEN)
    return http


# --- Zendesk's own description ----------------------------------------------------------------


def _nullable(schema: dict[str, Any], *names: str) -> None:
    for name in names:
        prop = schema["properties"][name]
        prop["nullable"] = True
        if "enum" in prop:
            prop["enum"] = [*prop["enum"], None]


def _custom_field_values(schemas: dict[str, Any]) -> None:
    _any_value(schemas["TicketObject"]["properties"]["custom_fields"]["items"], "value")


def _any_value(schema: dict[str, Any], name: str) -> None:
    schema["properties"][name] = {}


def _user_for_admin(schemas: dict[str, Any]) -> None:
    _nullable(schemas["UserForAdmin"], "alias", "details", "notes", "signature", "default_group_id",
              "organization_id", "ticket_restriction", "two_factor_auth_enabled", "photo", "phone")


def _audit_events(schemas: dict[str, Any]) -> None:
    _any_value(schemas["AuditObject"]["properties"]["events"]["items"], "value")


# Where the published description disagrees with what Zendesk answers, named one by one.
RELAXATIONS: dict[str, Callable[[dict[str, Any]], None]] = {
    # Recorded tickets carry null for all of these.
    "TicketObject: priority, type, assignee_id, group_id, organization_id, external_id are nullable":
        lambda s: _nullable(s["TicketObject"], "priority", "type", "assignee_id", "group_id",
                            "organization_id", "external_id"),
    "TicketObject: due_at, problem_id, forum_topic_id, recipient, satisfaction_rating are nullable":
        lambda s: _nullable(s["TicketObject"], "due_at", "problem_id", "forum_topic_id", "recipient",
                            "satisfaction_rating"),
    # An unset custom field is null; checkbox and number fields hold booleans and numbers.
    "TicketObject.custom_fields[].value: null and any type": _custom_field_values,
    # A recorded users/me answer has null alias, details, notes, signature and phone.
    "UserForAdmin: unset text, ids and flags are null": _user_for_admin,
    "UserForEndUser: organization_id, phone and photo are nullable":
        lambda s: _nullable(s["UserForEndUser"], "organization_id", "phone", "photo"),
    # Recorded audits hold null (an unset priority) and lists (tags) in events[].value.
    "AuditObject.events[].value: null and lists too": _audit_events,
}


@cache
def _registry() -> Any:
    referencing = pytest.importorskip("referencing")
    yaml = pytest.importorskip("yaml")
    from referencing.jsonschema import DRAFT4

    path = SPECS / ZENDESK_SPEC
    if not path.exists():
        pytest.skip(f"{path} is absent: Zendesk's API description is not on this machine")
    base = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    # The document uses "=" as a key, which YAML 1.1 reads as the value tag.
    loader = type("SpecLoader", (base,), {})
    loader.add_constructor("tag:yaml.org,2002:value", lambda load, node: load.construct_scalar(node))
    document = copy.deepcopy(yaml.load(path.read_text(), Loader=loader))
    for relax in RELAXATIONS.values():
        relax(document["components"]["schemas"])
    resource = referencing.Resource.from_contents(document, default_specification=DRAFT4)
    return referencing.Registry().with_resource(f"urn:{ZENDESK_SPEC}", resource)


def assert_valid(schema: str, instance: Any) -> None:
    """``instance`` against ``#/components/schemas/<schema>`` of Zendesk's spec, every error listed."""
    validators = pytest.importorskip("openapi_schema_validator")
    validator = validators.OAS30Validator(
        {"$ref": f"urn:{ZENDESK_SPEC}#/components/schemas/{schema}"}, registry=_registry()
    )
    errors = [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(instance)]
    assert not errors, f"{schema}: " + "\n".join(errors[:10])
