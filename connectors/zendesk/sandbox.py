"""A Zendesk Support account in memory: the API subset Escalier and ``zenpy`` use, and real webhooks.

The sandbox answers in the shapes recorded from Zendesk (tickets with ``via``, ``custom_fields`` and
``custom_status_id``; ``{"ticket": ..., "audit": ...}`` for an update; ``job_status`` for a bulk
update; cursor pagination with ``meta.has_more`` and ``links.next``; the cursor-based incremental
export; the time-based incremental ticket event export) and refuses in Zendesk's shapes::

    401 {"error": "Couldn't authenticate you"}
    404 {"error": "RecordNotFound", "description": "Not found"}
    409 {"error": "UpdateConflict", "description": "..."}            (safe_update, stale updated_stamp)
    422 {"error": "RecordInvalid", "description": "Record validation errors",
         "details": {"group": [{"description": "...", "error": "InvalidValue"}]}}
    429 {"error": "APIRateLimitExceeded", "description": "..."} with Retry-After

It enforces Zendesk's limits as the API does: the account-wide request rate (700 a minute, reported
in ``X-Rate-Limit``/``ratelimit-*`` on every answer) and the Update Ticket endpoint's own limits
(100 updates a minute per account and 30 per user per ticket per 10 minutes, reported in
``zendesk-rate-limit-tickets-update``), and the incremental ticket event export's own limit (10
requests a minute); ``ticket_update_limits``, ``account_rate_limit`` and
``incremental_export_limit`` change them. Bulk updates run as jobs on a background thread
(queued, working, completed; or failed part way, or completed without results, when told to).

Every change, made through the API or by a person through the Python helpers (``create_ticket``,
``update_ticket``, ``add_comment``), sends the webhooks Zendesk sends, per ``webhook_mode``:

- ``events``: one event webhook per change (``zen:event-type:ticket.created``,
  ``ticket.status_changed`` and ``ticket.priority_changed`` with upper-case ``current``/``previous``,
  ``ticket.agent_assignment_changed`` and ``ticket.group_assignment_changed`` with
  ``{"id": "..."}`` or null, ``ticket.tags_changed`` with ``tags_added``/``tags_removed``,
  ``ticket.comment_added`` with ``comment.author``, ``ticket.subject_changed``,
  ``ticket.type_changed``, ``ticket.custom_field_changed``), ids as strings in ``detail``;
- ``trigger``: one webhook per ticket update whose body is a trigger's JSON template rendered from
  Zendesk's placeholders (every value a string; :data:`RECOMMENDED_TRIGGER_BODY` by default);
- ``both``.

Each is signed like Zendesk: ``X-Zendesk-Webhook-Signature`` = base64(HMAC-SHA256(secret,
TIMESTAMP + BODY)) with ``X-Zendesk-Webhook-Signature-Timestamp``, and carries
``X-Zendesk-Webhook-Id`` and ``X-Zendesk-Webhook-Invocation-Id`` (the same on every retry).
The incremental ticket event export (``incremental/ticket_events?start_time=``, with the
``comment_events`` sideload as ``include=comment_events``) renders each audit as one event
(``event_type: "Audit"``, ``timestamp``, ``updater_id``) whose ``child_events`` are its changes: a
ticket field as ``{"<field>": value, "previous_value": ...}``, tags as ``tags`` with
``added_tags``/``removed_tags``, a custom field as ``custom_ticket_fields: {"<id>": value}``, and a
comment as ``comment_present``/``comment_public`` (or, sideloaded, the comment itself). Pages are
time-based, as Zendesk's: up to 1,000 events from ``start_time``, oldest first, with every event of
the page's last second kept on it; ``end_time`` is that second and the next page's
``start_time``, so the next page starts with those events again (read them once, by id); a page
of one second only ends a second later; ``end_of_stream`` once nothing is left. The most recent
minute is never exported, and a ``start_time`` within it is refused.

Deliveries are retried as Zendesk retries them: a 409 up to three times, a 429 or 503 whose
``Retry-After`` is under a minute, a timeout or refused connection up to five times; any other
failure (a 500 among them) is not retried, so a lost webhook is found by reconciliation.

The seeded account mirrors ``examples/escalier.yaml``: groups tier-1 (360000101), tier-2
(360000102), tier-3 (360000103) and engineering (360000110), the example's agents by the same ids,
Escalier's own API user (360009999), a customer (Dana) in a VIP organization, and custom fields for
severity and users affected.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import html
import json
import math
import os
import re
import secrets
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter, deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, Self
from urllib.parse import quote, urlencode, urlsplit, urlunsplit

from escalier.connectors._sandbox import (
    DEFAULT_RETRY_DELAYS,
    Delivery,
    Request,
    Response,
    Sandbox,
    basic_credentials,
    bearer_token,
)

__all__ = ["RECOMMENDED_TRIGGER_BODY", "ZendeskSandbox"]

WebhookMode = Literal["events", "trigger", "both"]

_UNSET: Any = object()

# The trigger body Escalier recommends: every placeholder is one Zendesk documents. Each value
# renders as a string; tags come space-separated; ``*_with_timestamp`` dates come as ISO 8601.
RECOMMENDED_TRIGGER_BODY = """{
  "format": "escalier.zendesk.trigger/1",
  "ticket_id": "{{ticket.id}}",
  "subject": "{{ticket.title}}",
  "status": "{{ticket.status}}",
  "priority": "{{ticket.priority}}",
  "type": "{{ticket.ticket_type}}",
  "tags": "{{ticket.tags}}",
  "group_id": "{{ticket.group.id}}",
  "group": "{{ticket.group.name}}",
  "assignee_id": "{{ticket.assignee.id}}",
  "assignee": "{{ticket.assignee.name}}",
  "requester_id": "{{ticket.requester.id}}",
  "organization_id": "{{ticket.organization.id}}",
  "organization": "{{ticket.organization.name}}",
  "via": "{{ticket.via}}",
  "created_at": "{{ticket.created_at_with_timestamp}}",
  "updated_at": "{{ticket.updated_at_with_timestamp}}",
  "current_user_id": "{{current_user.id}}",
  "latest_comment": "{{ticket.latest_comment.value}}",
  "latest_comment_author_id": "{{ticket.latest_comment.author.id}}",
  "latest_comment_public": "{{ticket.latest_comment.is_public}}",
  "url": "{{ticket.url}}"
}
"""

ACCOUNT_ID = 23140507
EVENT_VERSION = "2022-11-06"
BRAND_ID = 360000001
FORM_ID = 360000002
SEEDED_AT = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
# Zendesk keeps its own custom status per system status; the sandbox numbers them in order.
STATUSES = ("new", "open", "pending", "hold", "solved", "closed")
CUSTOM_STATUS_IDS = {status: 360000301 + n for n, status in enumerate(STATUSES)}
PRIORITIES = ("low", "normal", "high", "urgent")
TYPES = ("problem", "incident", "question", "task")
# (id, name) of the seeded groups: the ids a policy's ``groups:`` uses.
GROUPS = ((360000101, "Tier 1"), (360000102, "Tier 2"), (360000103, "Tier 3"), (360000110, "Engineering"))
# (id, handle, name, role, groups, organization)
PEOPLE = (
    (360001, "mia", "Mia Hoffmann", "agent", (360000101,), None),
    (360002, "jonas", "Jonas Weber", "agent", (360000102, 360000103), None),
    (360003, "priya", "Priya Raman", "agent", (360000102,), None),
    (360004, "tomas", "Tomas Novak", "agent", (360000110, 360000103), None),
    (360101, "dana", "Dana Customer", "end-user", (), 360200),
)
SERVICE_USER_ID = 360009999
ORGANIZATION = (360200, "Acme Logistics", ("acme-logistics.example",), ("vip",))
# (id, title, type, options as (title, value)): dropdown values are also tags on the ticket.
CUSTOM_FIELDS = (
    (360000201, "Severity", "tagger", (("Critical", "severity_critical"), ("High", "severity_high"),
                                      ("Medium", "severity_medium"), ("Low", "severity_low"))),
    (360000202, "Users affected", "integer", ()),
    (360000203, "Steps to reproduce", "textarea", ()),
    (360000204, "Business impact", "textarea", ()),
)
# Zendesk's Update Ticket endpoint limits: per account per minute, per user and ticket per 10 minutes.
UPDATES_PER_ACCOUNT = 100
UPDATES_PER_TICKET = 30
ACCOUNT_REQUESTS_PER_MINUTE = 700
# Zendesk's incremental exports: 10 requests a minute, 1,000 items a page, never the latest minute.
INCREMENTAL_EXPORTS_PER_MINUTE = 10
EVENT_EXPORT_PAGE = 1000
EXPORT_LAG_SECONDS = 60
MAX_BULK = 100
# Zendesk answers a webhook within 12 seconds or counts it as timed out.
WEBHOOK_TIMEOUT = 12.0
STATUS_WORDS = {"new": "New", "open": "Open", "pending": "Pending", "hold": "On-hold",
                "solved": "Solved", "closed": "Closed"}
VIA_WORDS = {"api": "Web service", "web": "Web form", "email": "Mail", "sample_ticket": "Sample ticket"}

_PLACEHOLDER = re.compile(r"\{\{\s*([\w.]+)\s*\}\}")
_TAG_SPLIT = re.compile(r"[\s,]+")
_TAGS_HTML = re.compile(r"<[^>]+>")
_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_NOT_FOUND = "Not found"
_CONFLICT = ("Safe Update prevented the update due to outdated ticket data. "
             "Please fetch the latest ticket data and try again.")


class _Refusal(Exception):
    """An answer other than success, already in Zendesk's shape."""

    def __init__(self, status: int, body: Any, headers: Mapping[str, str] | None = None):
        super().__init__(status)
        self.status = status
        self.body = body
        self.headers = dict(headers or {})


def _invalid(details: Mapping[str, str]) -> _Refusal:
    return _Refusal(422, {
        "error": "RecordInvalid",
        "description": "Record validation errors",
        "details": {name: [{"description": text, "error": "InvalidValue"}] for name, text in details.items()},
    })


def _not_found() -> _Refusal:
    return _Refusal(404, {"error": "RecordNotFound", "description": _NOT_FOUND})


def _bad_request(description: str, error: str = "InvalidValue") -> _Refusal:
    return _Refusal(400, {"error": error, "description": description})


@dataclass
class _Window:
    """A sliding window of request times (time.monotonic) against a limit."""

    limit: int | None
    seconds: float
    spent: deque[float] = field(default_factory=deque)

    def _trim(self, now: float) -> None:
        while self.spent and self.spent[0] <= now - self.seconds:
            self.spent.popleft()

    def take(self, now: float) -> float | None:
        """Spend one; the seconds to wait instead when the limit is reached."""
        if self.limit is None:
            return None
        self._trim(now)
        if len(self.spent) >= self.limit:
            return max(0.0, self.spent[0] + self.seconds - now)
        self.spent.append(now)
        return None

    def remaining(self, now: float) -> int:
        self._trim(now)
        return max(0, (self.limit or 0) - len(self.spent))

    def resets(self, now: float) -> int:
        self._trim(now)
        return max(1, math.ceil(self.spent[0] + self.seconds - now)) if self.spent else int(self.seconds)


@dataclass
class _Job:
    """A bulk update job: what to apply, how it is told to behave, and how far it got."""

    id: str
    updates: list[tuple[int, dict[str, Any]]]
    created: float
    delay: float
    step: float
    fail_after: int | None
    empty_results: bool
    status: str = "queued"
    progress: int = 0
    results: list[dict[str, Any]] = field(default_factory=list)
    message: str | None = None
    started: float | None = None


class ZendeskSandbox(Sandbox):
    """A Zendesk Support account in memory, serving its REST API and sending its webhooks."""

    name = "zendesk"
    webhook_timeout = WEBHOOK_TIMEOUT

    def __init__(
        self,
        *,
        email: str = "escalier@example.com",
        token: str = "sandbox-token",
        subdomain: str = "northwind",
        webhook_mode: WebhookMode = "events",
        trigger_template: str = RECOMMENDED_TRIGGER_BODY,
        host: str = "127.0.0.1",
        port: int = 0,
        webhook_url: str | None = None,
        webhook_secret: str | None = None,
        webhook_retry_delays: Sequence[float] = DEFAULT_RETRY_DELAYS,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        if webhook_mode not in ("events", "trigger", "both"):
            raise ValueError(f"webhook_mode must be 'events', 'trigger' or 'both', not {webhook_mode!r}")
        self.api_email = email
        self.api_token = token
        self.subdomain = subdomain
        self.webhook_mode: WebhookMode = webhook_mode
        self.trigger_template = trigger_template
        _check_template(trigger_template)
        # One webhook for events and one for the trigger, as an admin would create them.
        self.event_webhook_id = _ulid()
        self.trigger_webhook_id = _ulid()
        self._job_thread: threading.Thread | None = None
        self._jobs_wake = threading.Event()
        self._jobs_stop = threading.Event()
        self._clear_limits()
        super().__init__(
            host=host, port=port, webhook_url=webhook_url, webhook_secret=webhook_secret,
            webhook_retry_delays=webhook_retry_delays, clock=clock,
        )

    # --- data ----------------------------------------------------------------------------------

    def seed(self) -> None:
        """The example account: four groups, the example's agents, Escalier, a VIP customer."""
        self._users: dict[int, dict[str, Any]] = {}
        self._groups: dict[int, dict[str, Any]] = {}
        self._organizations: dict[int, dict[str, Any]] = {}
        self._tickets: dict[int, dict[str, Any]] = {}
        self._jobs: dict[str, _Job] = {}
        self._job_options: dict[str, Any] = {"delay": 0.05, "step": 0.0, "fail_after": None, "empty_results": False}
        self._next_ticket = 0
        self._next_object = 8800000000000
        for gid, name in GROUPS:
            self._groups[gid] = {"id": gid, "name": name, "description": f"{name} support", "default": False}
        oid, oname, domains, otags = ORGANIZATION
        self._organizations[oid] = {"id": oid, "name": oname, "domain_names": list(domains), "tags": list(otags)}
        self._users[SERVICE_USER_ID] = _user(SERVICE_USER_ID, "escalier", "Escalier", self.api_email, "admin", (), None)
        for uid, handle, name, role, groups, org in PEOPLE:
            domain = "customer.example" if role == "end-user" else "northwind.example"
            self._users[uid] = _user(uid, handle, name, f"{handle}@{domain}", role, groups, org)

    def _object_id(self) -> int:
        self._next_object += 1
        return self._next_object

    def _clear_limits(self) -> None:
        self._account = _Window(ACCOUNT_REQUESTS_PER_MINUTE, 60.0)
        self._updates = _Window(UPDATES_PER_ACCOUNT, 60.0)
        self._exports = _Window(INCREMENTAL_EXPORTS_PER_MINUTE, 60.0)
        self._per_ticket_limit: int | None = UPDATES_PER_TICKET
        self._per_ticket_seconds = 600.0
        self._per_ticket: dict[tuple[int, int], _Window] = {}
        self._count_people = False
        self._throttled: Counter[str] = Counter()

    def reset(self) -> None:
        """Back to the seeded account; limits, jobs, counts, faults and deliveries forgotten."""
        with self.lock:
            super().reset()
            self._clear_limits()

    # --- limits --------------------------------------------------------------------------------

    def ticket_update_limits(
        self,
        per_account: int | None = UPDATES_PER_ACCOUNT,
        per_ticket: int | None = UPDATES_PER_TICKET,
        window_seconds: float = 60.0,
        ticket_window_seconds: float = 600.0,
        *,
        count_people: bool = False,
    ) -> None:
        """Set the Update Ticket endpoint's limits (``None`` lifts one); counts start afresh.

        ``count_people=True`` also counts the helpers' updates, as Zendesk counts agents working
        in its UI against the same endpoint limit (they are never refused).
        """
        with self.lock:
            self._updates = _Window(per_account, float(window_seconds))
            self._per_ticket_limit = per_ticket
            self._per_ticket_seconds = float(ticket_window_seconds)
            self._per_ticket = {}
            self._count_people = count_people

    def account_rate_limit(self, requests_per_minute: int | None = ACCOUNT_REQUESTS_PER_MINUTE) -> None:
        """Set the account-wide API request limit per minute (``None`` lifts it)."""
        with self.lock:
            self._account = _Window(requests_per_minute, 60.0)

    def incremental_export_limit(self, requests_per_minute: int | None = INCREMENTAL_EXPORTS_PER_MINUTE) -> None:
        """Set the incremental ticket event export's limit per minute (``None`` lifts it)."""
        with self.lock:
            self._exports = _Window(requests_per_minute, 60.0)

    def throttled(self) -> dict[str, int]:
        """429 answers given, per ``METHOD /route/{template}`` (limits, budget and faults alike)."""
        with self.lock:
            return dict(self._throttled)

    def configure_jobs(
        self, *, delay: float = 0.05, step: float = 0.0, fail_after: int | None = None, empty_results: bool = False
    ) -> None:
        """How bulk jobs created from now on run.

        ``delay``: seconds queued before working; ``step``: seconds per ticket while working;
        ``fail_after=n``: the job stops ``failed`` after n tickets; ``empty_results``: the job
        reports ``completed`` with no results and changes nothing.
        """
        if delay < 0 or step < 0 or (fail_after is not None and fail_after < 0):
            raise ValueError("delay, step and fail_after must not be negative")
        with self.lock:
            self._job_options = {"delay": float(delay), "step": float(step), "fail_after": fail_after,
                                 "empty_results": bool(empty_results)}

    def _spend_update(self, ticket_id: int, actor: int) -> dict[str, str]:
        """Count one Update Ticket request; the headers to answer with, or a 429 raised."""
        now = time.monotonic()
        wait = self._updates.take(now)
        if wait is not None:
            raise _Refusal(429, {
                "error": "APIRateLimitExceeded",
                "description": "Number of allowed ticket update API requests per minute exceeded",
            }, {"Retry-After": _seconds(wait), **self._update_headers(now)})
        key = (actor, ticket_id)
        window = self._per_ticket.setdefault(key, _Window(self._per_ticket_limit, self._per_ticket_seconds))
        wait = window.take(now)
        if wait is not None:
            if self._updates.limit is not None:
                self._updates.spent.pop()  # a refused request does not spend the account's budget
            raise _Refusal(429, {
                "error": "APIRateLimitExceeded",
                "description": f"Number of allowed updates to ticket {ticket_id} by this user per "
                               f"{int(self._per_ticket_seconds // 60)} minutes exceeded",
            }, {"Retry-After": _seconds(wait), **self._update_headers(now)})
        return self._update_headers(now)

    def _update_headers(self, now: float) -> dict[str, str]:
        if self._updates.limit is None:
            return {}
        return {"zendesk-rate-limit-tickets-update": f"total={self._updates.limit}; "
                f"remaining={self._updates.remaining(now)}; resets={self._updates.resets(now)}"}

    def _account_headers(self) -> dict[str, str]:
        if self._account.limit is None:
            return {}
        now = time.monotonic()
        limit, remaining = str(self._account.limit), str(self._account.remaining(now))
        return {"X-Rate-Limit": limit, "X-Rate-Limit-Remaining": remaining, "ratelimit-limit": limit,
                "ratelimit-remaining": remaining, "ratelimit-reset": str(self._account.resets(now))}

    # --- hooks of the base ---------------------------------------------------------------------

    def authenticate(self, request: Request) -> Response | None:
        """Token auth (``email/token`` and the token) or an OAuth bearer token; then the account limit."""
        basic = basic_credentials(request.headers)
        ok = basic == (f"{self.api_email}/token", self.api_token) or bearer_token(request.headers) == self.api_token
        if not ok:
            return 401, {"WWW-Authenticate": 'Basic realm="Web Password"'}, {"error": "Couldn't authenticate you"}
        with self.lock:
            wait = self._account.take(time.monotonic())
        if wait is not None:
            return 429, {"Retry-After": _seconds(wait)}, {
                "error": "APIRateLimitExceeded", "description": "Number of allowed API requests per minute exceeded"}
        return None

    def error(self, status: int, message: str, *, errors: Mapping[str, str] | None = None) -> Response:
        """Zendesk's error shapes for the answers the base makes (faults, budget, unknown routes)."""
        if errors:
            refusal = _invalid(errors)
            return refusal.status, {}, refusal.body
        if status == 401:
            return status, {}, {"error": "Couldn't authenticate you"}
        if status == 429:
            return status, {}, {"error": "APIRateLimitExceeded", "description": message}
        if status == 404:
            return status, {}, {"error": "InvalidEndpoint", "description": message}
        code = {400: "InvalidValue", 403: "Forbidden", 405: "MethodNotAllowed", 409: "Conflict",
                503: "ServiceUnavailable"}.get(status, "InternalServerError" if status >= 500 else "Error")
        return status, {}, {"error": code, "description": message}

    def sign(self, body: bytes, headers: Mapping[str, str]) -> dict[str, str]:
        """base64(HMAC-SHA256(secret, TIMESTAMP + BODY)), signed afresh on every attempt."""
        timestamp = self.now().astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        digest = hmac.new((self.webhook_secret or "").encode(), timestamp.encode() + body, hashlib.sha256).digest()
        return {**headers, "X-Zendesk-Webhook-Signature": base64.b64encode(digest).decode(),
                "X-Zendesk-Webhook-Signature-Timestamp": timestamp}

    def policy_snippet(self) -> str:
        """The ``connectors: zendesk:`` block pointing at this sandbox, and what to export."""
        groups = ", ".join(f"{_group_key(name)}: {gid}" for gid, name in GROUPS)
        secret_line = '    webhook_secrets: ["${ZENDESK_WEBHOOK_SECRET}"]\n' if self.webhook_secret else ""
        exports = f"  export ZENDESK_API_TOKEN={self.api_token}\n"
        if self.webhook_secret:
            exports += f"  export ZENDESK_WEBHOOK_SECRET={self.webhook_secret}\n"
        netloc = urlsplit(self.url).netloc
        severity, users_affected, steps, impact = (f[0] for f in CUSTOM_FIELDS)
        return (
            "In the policy file:\n"
            "connectors:\n"
            "  zendesk:\n"
            f"    subdomain: {self.subdomain}\n"
            f"    url: {self.url}\n"
            f"    email: {self.api_email}\n"
            "    token: ${ZENDESK_API_TOKEN}\n"
            f"{secret_line}"
            f"    groups: {{{groups}}}\n"
            f"    service_user_id: {SERVICE_USER_ID}\n"
            f"    fields: {{severity: {severity}, users_affected: {users_affected}, "
            f"custom: {{steps_to_reproduce: {steps}, business_impact: {impact}}}}}\n"
            f"\nWebhooks: {self.webhook_mode} (trigger bodies use the recommended template).\n"
            "\nand in the shell:\n"
            f"{exports}"
            "\nTo try zenpy by hand (these redirect every zenpy client of the process):\n"
            f"  export ZENPY_FORCE_SCHEME=http ZENPY_FORCE_NETLOC={netloc}\n"
            "\nZendesk's own controls:\n"
            '  POST /_sandbox/zendesk/ticket_update_limits  {"per_account": 100, "per_ticket": 30, '
            '"window_seconds": 60, "ticket_window_seconds": 600}\n'
            '  POST /_sandbox/zendesk/account_rate_limit    {"requests_per_minute": 700}\n'
            '  POST /_sandbox/zendesk/incremental_export_limit  {"requests_per_minute": 10}\n'
            '  POST /_sandbox/zendesk/jobs                  {"delay": 0.05, "step": 0, "fail_after": 2, '
            '"empty_results": false}\n'
            "  GET  /_sandbox/zendesk/throttled             429s answered per endpoint\n"
        )

    # --- lifecycle -----------------------------------------------------------------------------

    def start(self) -> Self:
        """Listen, send webhooks and run bulk jobs; returns self."""
        super().start()
        if self._job_thread is None:
            self._jobs_stop.clear()
            self._job_thread = threading.Thread(target=self._job_loop, name="zendesk-sandbox-jobs", daemon=True)
            self._job_thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, sending and running jobs."""
        self._jobs_stop.set()
        self._jobs_wake.set()
        if self._job_thread is not None:
            self._job_thread.join(timeout=5)
            self._job_thread = None
        super().stop()

    # --- dispatch ------------------------------------------------------------------------------

    def dispatch(self, method: str, target: str, headers: Mapping[str, str], body: bytes) -> Response:
        """Zendesk serves every path with or without ``.json``; answers carry the account's rate headers."""
        parts = urlsplit(target)
        if parts.path.startswith("/_sandbox/zendesk/"):
            return self._zendesk_control(method, parts, body)
        if parts.path.startswith("/api/v2/") and not parts.path.endswith(".json"):
            target = urlunsplit(parts._replace(path=parts.path + ".json"))
        status, out_headers, out_body = super().dispatch(method, target, headers, body)
        if parts.path.startswith("/_sandbox/"):
            return status, out_headers, out_body
        with self.lock:
            if status == 429:
                self._throttled[self._template(method, urlsplit(target).path)] += 1
            out_headers = {**self._account_headers(), **out_headers}
        return status, out_headers, out_body

    def _template(self, method: str, path: str) -> str:
        for route in self._routes:
            if route.method == method and route.pattern.fullmatch(path):
                return f"{method} {route.template}"
        return f"{method} {path}"

    def _zendesk_control(self, method: str, parts: Any, body: bytes) -> Response:
        try:
            spec = json.loads(body) if body.strip() else {}
            if parts.path == "/_sandbox/zendesk/throttled" and method == "GET":
                return 200, {}, {"throttled": self.throttled()}
            if not isinstance(spec, dict):
                raise TypeError("a control request is a JSON object")
            if parts.path == "/_sandbox/zendesk/ticket_update_limits" and method == "POST":
                self.ticket_update_limits(
                    spec.get("per_account", UPDATES_PER_ACCOUNT), spec.get("per_ticket", UPDATES_PER_TICKET),
                    float(spec.get("window_seconds", 60.0)), float(spec.get("ticket_window_seconds", 600.0)),
                    count_people=bool(spec.get("count_people", False)),
                )
                return 200, {}, spec
            if parts.path == "/_sandbox/zendesk/account_rate_limit" and method == "POST":
                self.account_rate_limit(spec.get("requests_per_minute", ACCOUNT_REQUESTS_PER_MINUTE))
                return 200, {}, spec
            if parts.path == "/_sandbox/zendesk/incremental_export_limit" and method == "POST":
                self.incremental_export_limit(spec.get("requests_per_minute", INCREMENTAL_EXPORTS_PER_MINUTE))
                return 200, {}, spec
            if parts.path == "/_sandbox/zendesk/jobs" and method == "POST":
                self.configure_jobs(**{k: spec[k] for k in ("delay", "step", "fail_after", "empty_results") if k in spec})
                return 200, {}, spec
        except (ValueError, TypeError) as exc:
            return 400, {}, {"error": f"bad control request: {exc}"}
        return 404, {}, {"error": f"no control endpoint {method} {parts.path}"}

    def register_routes(self) -> None:
        """The Support API subset, by route template (``.json`` added to paths that lack it)."""
        for method, tail, handler in (
            ("GET", "users/me", self._get_me),
            ("GET", "users/search", self._search_users),
            ("GET", "users/show_many", self._show_many_users),
            ("GET", "users/{user_id}", self._get_user),
            ("GET", "groups", self._list_groups),
            ("GET", "groups/{group_id}", self._get_group),
            ("GET", "organizations/{organization_id}", self._get_organization),
            ("GET", "ticket_fields", self._list_ticket_fields),
            ("GET", "tickets", self._list_tickets),
            ("POST", "tickets", self._post_ticket),
            ("GET", "tickets/show_many", self._show_many_tickets),
            ("PUT", "tickets/update_many", self._update_many),
            ("GET", "tickets/{ticket_id}", self._get_ticket),
            ("PUT", "tickets/{ticket_id}", self._put_ticket),
            ("GET", "tickets/{ticket_id}/tags", self._get_tags),
            ("PUT", "tickets/{ticket_id}/tags", self._add_tags),
            ("POST", "tickets/{ticket_id}/tags", self._set_tags),
            ("DELETE", "tickets/{ticket_id}/tags", self._remove_tags),
            ("GET", "tickets/{ticket_id}/comments", self._list_comments),
            ("GET", "tickets/{ticket_id}/audits", self._list_audits),
            ("GET", "job_statuses/{job_status_id}", self._get_job),
            ("GET", "incremental/tickets/cursor", self._incremental),
            ("GET", "incremental/ticket_events", self._ticket_events),
            ("GET", "search", self._search),
        ):
            self.add_route(method, f"/api/v2/{tail}.json", self._answer(handler))

    def _answer(self, handler: Callable[[Request], Response]) -> Callable[[Request], Response]:
        def answer(request: Request) -> Response:
            try:
                return handler(request)
            except _Refusal as refusal:
                return refusal.status, refusal.headers, refusal.body
        return answer

    # --- rendering -----------------------------------------------------------------------------

    def _api(self, tail: str) -> str:
        return f"{self.url}/api/v2/{tail}"

    def _ticket_json(self, ticket: dict[str, Any]) -> dict[str, Any]:
        custom = [{"id": fid, "value": _field_text(kind, ticket["custom"].get(fid))} for fid, _, kind, _ in CUSTOM_FIELDS]
        return {
            "url": self._api(f"tickets/{ticket['id']}.json"),
            "id": ticket["id"],
            "external_id": ticket["external_id"],
            "via": _via(ticket["via"]),
            "created_at": _stamp(ticket["created_at"]),
            "updated_at": _stamp(ticket["updated_at"]),
            "type": ticket["type"],
            "subject": ticket["subject"],
            "raw_subject": ticket["subject"],
            "description": ticket["description"],
            "priority": ticket["priority"],
            "status": ticket["status"],
            "recipient": None,
            "requester_id": ticket["requester_id"],
            "submitter_id": ticket["submitter_id"],
            "assignee_id": ticket["assignee_id"],
            "organization_id": ticket["organization_id"],
            "group_id": ticket["group_id"],
            "collaborator_ids": [],
            "follower_ids": [],
            "email_cc_ids": [],
            "forum_topic_id": None,
            "problem_id": None,
            "has_incidents": False,
            "is_public": ticket["is_public"],
            "due_at": ticket["due_at"],
            "tags": list(ticket["tags"]),
            "custom_fields": custom,
            "satisfaction_rating": None,
            "sharing_agreement_ids": [],
            "custom_status_id": CUSTOM_STATUS_IDS[ticket["status"]],
            "fields": [dict(c) for c in custom],
            "followup_ids": [],
            "ticket_form_id": FORM_ID,
            "brand_id": BRAND_ID,
            "allow_channelback": False,
            "allow_attachments": True,
            "from_messaging_channel": False,
        }

    def _comment_json(self, comment: dict[str, Any]) -> dict[str, Any]:
        return {
            "id": comment["id"],
            "type": "Comment",
            "author_id": comment["author_id"],
            "body": comment["body"],
            "html_body": comment["html_body"],
            "plain_body": comment["body"],
            "public": comment["public"],
            "attachments": [],
            "audit_id": comment["audit_id"],
            "via": _via(comment["via"]),
            "created_at": _stamp(comment["created_at"]),
            "metadata": {"system": {"client": comment["client"], "ip_address": "127.0.0.1"}, "custom": {}},
        }

    def _audit_json(self, audit: dict[str, Any]) -> dict[str, Any]:
        return {
            "id": audit["id"],
            "ticket_id": audit["ticket_id"],
            "created_at": _stamp(audit["created_at"]),
            "author_id": audit["author_id"],
            "metadata": {"system": {"client": audit["client"], "ip_address": "127.0.0.1"}, "custom": {}},
            "events": [dict(e) for e in audit["events"]],
            "via": _via(audit["via"]),
        }

    def _user_json(self, user: dict[str, Any], *, me: bool = False) -> dict[str, Any]:
        agent = user["role"] != "end-user"
        out = {
            "id": user["id"],
            "url": self._api(f"users/{user['id']}.json"),
            "name": user["name"],
            "email": user["email"],
            "created_at": _stamp(SEEDED_AT),
            "updated_at": _stamp(SEEDED_AT),
            "time_zone": "Europe/Berlin",
            "iana_time_zone": "Europe/Berlin",
            "phone": None,
            "shared_phone_number": None,
            "photo": None,
            "locale_id": 1,
            "locale": "en-US",
            "organization_id": user["organization_id"],
            "role": user["role"],
            "verified": True,
            "external_id": None,
            "tags": [],
            "alias": None,
            "active": True,
            "shared": False,
            "shared_agent": False,
            "last_login_at": _stamp(SEEDED_AT),
            "two_factor_auth_enabled": None,
            "signature": None,
            "details": None,
            "notes": None,
            "role_type": 4 if user["role"] == "admin" else (0 if agent else None),
            "custom_role_id": 360000401 if agent else None,
            "moderator": agent,
            "ticket_restriction": None if agent else "requested",
            "only_private_comments": False,
            "restricted_agent": False,
            "suspended": False,
            "default_group_id": user["groups"][0] if user["groups"] else None,
            "report_csv": agent,
            "user_fields": {},
        }
        if me:
            out["authenticity_token"] = hashlib.sha256(f"{user['id']}:{self.api_token}".encode()).hexdigest()
        return out

    def _group_json(self, group: dict[str, Any]) -> dict[str, Any]:
        return {
            "url": self._api(f"groups/{group['id']}.json"),
            "id": group["id"],
            "is_public": True,
            "name": group["name"],
            "description": group["description"],
            "default": group["default"],
            "deleted": False,
            "created_at": _stamp(SEEDED_AT),
            "updated_at": _stamp(SEEDED_AT),
        }

    def _organization_json(self, org: dict[str, Any]) -> dict[str, Any]:
        return {
            "url": self._api(f"organizations/{org['id']}.json"),
            "id": org["id"],
            "name": org["name"],
            "shared_tickets": False,
            "shared_comments": False,
            "external_id": None,
            "created_at": _stamp(SEEDED_AT),
            "updated_at": _stamp(SEEDED_AT),
            "domain_names": list(org["domain_names"]),
            "details": None,
            "notes": None,
            "group_id": None,
            "tags": list(org["tags"]),
            "organization_fields": {},
        }

    # --- pagination ----------------------------------------------------------------------------

    def _page(self, request: Request, key: str, items: list[Any], tail: str) -> dict[str, Any]:
        """Cursor pagination when ``page[size]`` is asked for, else offset pagination (``page``, ``per_page``)."""
        size_arg = request.arg("page[size]")
        if size_arg is not None or request.arg("page[after]") or request.arg("page[before]"):
            size = _int_arg(size_arg or "100", "page[size]", 1, 100)
            after, before = request.arg("page[after]"), request.arg("page[before]")
            if after:
                start = _read_cursor(after) + 1
                end = start + size
            elif before:
                end = _read_cursor(before)
                start = max(0, end - size)
            else:
                start, end = 0, size
            page = items[start:end]
            first, last = start, start + len(page) - 1
            extra = [(k, v) for k, vs in request.query.items() if not k.startswith("page[") for v in vs]
            links = {
                "prev": self._api(f"{tail}?" + urlencode(extra + [("page[before]", _cursor(first)), ("page[size]", size)])),
                "next": self._api(f"{tail}?" + urlencode(extra + [("page[after]", _cursor(last)), ("page[size]", size)])),
            }
            return {
                key: page,
                "meta": {"has_more": end < len(items), "after_cursor": _cursor(last) if page else None,
                         "before_cursor": _cursor(first) if page else None},
                "links": links,
            }
        per_page = _int_arg(request.arg("per_page") or "100", "per_page", 1, 100)
        number = _int_arg(request.arg("page") or "1", "page", 1, 10**6)
        page = items[(number - 1) * per_page:number * per_page]
        more = number * per_page < len(items)
        return {
            key: page,
            "next_page": self._api(f"{tail}?page={number + 1}&per_page={per_page}") if more else None,
            "previous_page": self._api(f"{tail}?page={number - 1}&per_page={per_page}") if number > 1 else None,
            "count": len(items),
        }

    # --- handlers: people and groups -----------------------------------------------------------

    def _get_me(self, request: Request) -> Response:
        return 200, {}, {"user": self._user_json(self._users[SERVICE_USER_ID], me=True)}

    def _get_user(self, request: Request) -> Response:
        user = self._users.get(_id_param(request.params["user_id"]))
        if user is None:
            raise _not_found()
        return 200, {}, {"user": self._user_json(user)}

    def _show_many_users(self, request: Request) -> Response:
        ids = [_id_param(i) for i in request.args("ids")]
        return 200, {}, {"users": [self._user_json(self._users[i]) for i in ids if i in self._users],
                         "next_page": None, "previous_page": None, "count": len([i for i in ids if i in self._users])}

    def _search_users(self, request: Request) -> Response:
        query = (request.arg("query") or "").strip().lower()
        external = request.arg("external_id")
        if not query and external is None:
            raise _bad_request("Search requires a query or an external_id.")
        query = query.removeprefix("email:")
        found = [u for u in self._users.values()
                 if external is None and query and (query in u["email"].lower() or query in u["name"].lower())]
        return 200, {}, self._page(request, "users", [self._user_json(u) for u in found], "users/search.json")

    def _list_groups(self, request: Request) -> Response:
        groups = [self._group_json(g) for g in sorted(self._groups.values(), key=lambda g: g["name"])]
        return 200, {}, self._page(request, "groups", groups, "groups.json")

    def _get_group(self, request: Request) -> Response:
        group = self._groups.get(_id_param(request.params["group_id"]))
        if group is None:
            raise _not_found()
        return 200, {}, {"group": self._group_json(group)}

    def _get_organization(self, request: Request) -> Response:
        org = self._organizations.get(_id_param(request.params["organization_id"]))
        if org is None:
            raise _not_found()
        return 200, {}, {"organization": self._organization_json(org)}

    def _list_ticket_fields(self, request: Request) -> Response:
        fields = []
        for position, (fid, title, kind, options) in enumerate(CUSTOM_FIELDS):
            out: dict[str, Any] = {
                "url": self._api(f"ticket_fields/{fid}.json"), "id": fid, "type": kind, "title": title,
                "raw_title": title, "description": "", "position": position, "active": True, "required": False,
                "visible_in_portal": False, "editable_in_portal": False, "removable": True,
                "created_at": _stamp(SEEDED_AT), "updated_at": _stamp(SEEDED_AT),
            }
            if options:
                out["custom_field_options"] = [
                    {"id": fid * 10 + n, "name": name, "raw_name": name, "value": value, "default": False}
                    for n, (name, value) in enumerate(options)
                ]
            fields.append(out)
        return 200, {}, {"ticket_fields": fields, "next_page": None, "previous_page": None, "count": len(fields)}

    # --- handlers: tickets ---------------------------------------------------------------------

    def _ticket(self, ticket_id: Any) -> dict[str, Any]:
        ticket = self._tickets.get(_id_param(ticket_id))
        if ticket is None:
            raise _not_found()
        return ticket

    def _body(self, request: Request, key: str) -> dict[str, Any]:
        try:
            body = request.json()
        except ValueError as exc:
            raise _bad_request(f"The request body is not JSON: {exc}") from exc
        if not isinstance(body, dict) or not isinstance(body.get(key), dict):
            raise _bad_request(f"The request body must be a JSON object with a '{key}' object.")
        return body[key]

    def _list_tickets(self, request: Request) -> Response:
        tickets = [self._ticket_json(t) for t in sorted(self._tickets.values(), key=lambda t: t["id"])]
        return 200, {}, self._page(request, "tickets", tickets, "tickets.json")

    def _get_ticket(self, request: Request) -> Response:
        return 200, {}, {"ticket": self._ticket_json(self._ticket(request.params["ticket_id"]))}

    def _show_many_tickets(self, request: Request) -> Response:
        ids = [_id_param(i) for i in request.args("ids")]
        if len(ids) > MAX_BULK:
            raise _bad_request(f"Too many ids: at most {MAX_BULK}.", "TooManyValues")
        found = [self._ticket_json(self._tickets[i]) for i in ids if i in self._tickets]
        return 200, {}, {"tickets": found, "next_page": None, "previous_page": None, "count": len(found)}

    def _post_ticket(self, request: Request) -> Response:
        body = self._body(request, "ticket")
        ticket, audit = self._create(body, SERVICE_USER_ID, "api", client=_client(request))
        return 201, {"Location": self._api(f"tickets/{ticket['id']}.json")}, {
            "ticket": self._ticket_json(ticket), "audit": self._audit_json(audit)}

    def _put_ticket(self, request: Request) -> Response:
        limit_headers = self._spend_update(_id_param(request.params["ticket_id"]), SERVICE_USER_ID)
        ticket = self._ticket(request.params["ticket_id"])
        body = self._body(request, "ticket")
        try:
            audit = self._update(ticket, body, SERVICE_USER_ID, "api", client=_client(request))
        except _Refusal as refusal:
            raise _Refusal(refusal.status, refusal.body, {**limit_headers, **refusal.headers}) from None
        return 200, limit_headers, {"ticket": self._ticket_json(ticket), "audit": self._audit_json(audit)}

    def _update_many(self, request: Request) -> Response:
        try:
            body = request.json()
        except ValueError as exc:
            raise _bad_request(f"The request body is not JSON: {exc}") from exc
        ids = request.args("ids")
        updates: list[tuple[int, dict[str, Any]]] = []
        if ids:
            if not isinstance(body, dict) or not isinstance(body.get("ticket"), dict):
                raise _bad_request("With ?ids=, the body is {\"ticket\": {...}}: the changes for every ticket.")
            updates = [(_id_param(i), dict(body["ticket"])) for i in ids]
        else:
            items = body.get("tickets") if isinstance(body, dict) else None
            if not isinstance(items, list) or not all(isinstance(t, dict) and "id" in t for t in items):
                raise _bad_request("The body is {\"tickets\": [{\"id\": ..., ...}]} or ?ids= with {\"ticket\": {...}}.")
            updates = [(_id_param(t["id"]), {k: v for k, v in t.items() if k != "id"}) for t in items]
        if not updates:
            raise _bad_request("No tickets to update.")
        if len(updates) > MAX_BULK:
            raise _bad_request(f"Too many tickets: a bulk update takes at most {MAX_BULK}.", "TooManyValues")
        options = self._job_options
        job = _Job(
            id=f"V3-{uuid.uuid4().hex}", updates=updates, created=time.monotonic(), delay=options["delay"],
            step=options["step"], fail_after=options["fail_after"], empty_results=options["empty_results"],
        )
        self._jobs[job.id] = job
        self._jobs_wake.set()
        return 200, {}, {"job_status": self._job_json(job)}

    def _job_json(self, job: _Job) -> dict[str, Any]:
        finished = job.status in ("completed", "failed")
        return {
            "id": job.id,
            "job_type": "Bulk Update Ticket",
            "url": self._api(f"job_statuses/{job.id}.json"),
            "total": len(job.updates),
            "progress": job.progress,
            "status": job.status,
            "message": job.message,
            "results": [dict(r) for r in job.results] if finished else None,
        }

    def _get_job(self, request: Request) -> Response:
        job = self._jobs.get(request.params["job_status_id"])
        if job is None:
            raise _not_found()
        return 200, {}, {"job_status": self._job_json(job)}

    # --- handlers: tags, comments, audits ------------------------------------------------------

    def _tag_request(self, request: Request) -> tuple[dict[str, Any], list[str], dict[str, Any]]:
        ticket = self._ticket(request.params["ticket_id"])
        try:
            body = request.json() or {}
        except ValueError as exc:
            raise _bad_request(f"The request body is not JSON: {exc}") from exc
        if not isinstance(body, dict) or "tags" not in body:
            raise _bad_request("The body is {\"tags\": [...]}.")
        return ticket, _tags(body["tags"]), body

    def _get_tags(self, request: Request) -> Response:
        return 200, {}, {"tags": list(self._ticket(request.params["ticket_id"])["tags"])}

    def _add_tags(self, request: Request) -> Response:
        ticket, tags, body = self._tag_request(request)
        self._update(ticket, {**_safety(body), "additional_tags": tags}, SERVICE_USER_ID, "api", client=_client(request))
        return 200, {}, {"tags": list(ticket["tags"])}

    def _set_tags(self, request: Request) -> Response:
        ticket, tags, body = self._tag_request(request)
        self._update(ticket, {**_safety(body), "tags": tags}, SERVICE_USER_ID, "api", client=_client(request))
        return 201, {}, {"tags": list(ticket["tags"])}

    def _remove_tags(self, request: Request) -> Response:
        ticket, tags, body = self._tag_request(request)
        self._update(ticket, {**_safety(body), "remove_tags": tags}, SERVICE_USER_ID, "api", client=_client(request))
        return 204, {}, None

    def _list_comments(self, request: Request) -> Response:
        ticket = self._ticket(request.params["ticket_id"])
        comments = [self._comment_json(c) for c in ticket["comments"]]
        if request.arg("sort") == "-created_at" or request.arg("sort_order") == "desc":
            comments.reverse()
        return 200, {}, self._page(request, "comments", comments, f"tickets/{ticket['id']}/comments.json")

    def _list_audits(self, request: Request) -> Response:
        ticket = self._ticket(request.params["ticket_id"])
        audits = [self._audit_json(a) for a in ticket["audits"]]
        return 200, {}, self._page(request, "audits", audits, f"tickets/{ticket['id']}/audits.json")

    # --- handlers: incremental export and search -----------------------------------------------

    def _incremental(self, request: Request) -> Response:
        start, cursor = request.arg("start_time"), request.arg("cursor")
        if (start is None) == (cursor is None):
            raise _bad_request("Give either start_time or cursor.")
        per_page = _int_arg(request.arg("per_page") or "1000", "per_page", 1, 1000)
        if cursor is not None:
            after = _read_export_cursor(cursor)
        else:
            after = (_int_arg(start, "start_time", 0, 10**12), 0)
            if after[0] > int(self.now().timestamp()):
                raise _bad_request("start_time is in the future.", "InvalidValue")
        ordered = sorted(self._tickets.values(), key=lambda t: (int(t["updated_at"].timestamp()), t["id"]))
        if cursor is not None:
            rest = [t for t in ordered if (int(t["updated_at"].timestamp()), t["id"]) > after]
        else:
            rest = [t for t in ordered if int(t["updated_at"].timestamp()) >= after[0]]
        page = rest[:per_page]
        last = (int(page[-1]["updated_at"].timestamp()), page[-1]["id"]) if page else after
        after_cursor = _export_cursor(last)
        tickets = [{**self._ticket_json(t), "generated_timestamp": int(t["updated_at"].timestamp())} for t in page]
        return 200, {}, {
            "tickets": tickets,
            "after_cursor": after_cursor,
            "after_url": self._api(f"incremental/tickets/cursor.json?cursor={quote(after_cursor)}&per_page={per_page}"),
            "before_cursor": None,
            "before_url": None,
            "end_of_stream": len(rest) <= per_page,
        }

    def _ticket_events(self, request: Request) -> Response:
        wait = self._exports.take(time.monotonic())
        if wait is not None:
            raise _Refusal(429, {
                "error": "APIRateLimitExceeded",
                "description": "Number of allowed incremental export API requests per minute exceeded",
            }, {"Retry-After": _seconds(wait)})
        start_arg = request.arg("start_time")
        if start_arg is None:
            raise _bad_request("start_time is required.")
        start = _int_arg(start_arg, "start_time", 0, 10**12)
        horizon = int(self.now().timestamp()) - EXPORT_LAG_SECONDS
        if start > horizon:
            raise _bad_request("start_time must be at least one minute in the past.")
        per_page = _int_arg(request.arg("per_page") or str(EVENT_EXPORT_PAGE), "per_page", 1, EVENT_EXPORT_PAGE)
        include = request.arg("include") or ""
        comments = "comment_events" in {part.strip() for part in include.split(",")}
        found = sorted(
            ((int(a["created_at"].timestamp()), a["id"], t, a) for t in self._tickets.values() for a in t["audits"]
             if start <= int(a["created_at"].timestamp()) <= horizon),
            key=lambda row: (row[0], row[1]),
        )
        page = found[:per_page]
        if page:
            # The events of the page's last second stay together on it.
            page += [row for row in found[per_page:] if row[0] == page[-1][0]]
        more = len(found) > len(page)
        end_time = page[-1][0] if page else start
        if more and page[0][0] == end_time:
            end_time += 1  # a page of one second: the next one starts after it
        query = {"start_time": end_time, **({"include": include} if include else {}),
                 **({"per_page": per_page} if request.arg("per_page") else {})}
        return 200, {}, {
            "ticket_events": [self._ticket_event_json(a, comments=comments) for _, _, _, a in page],
            "next_page": self._api(f"incremental/ticket_events.json?{urlencode(query)}"),
            "count": len(page),
            "end_of_stream": not more,
            "end_time": end_time,
        }

    def _ticket_event_json(self, audit: dict[str, Any], *, comments: bool) -> dict[str, Any]:
        """One audit as the event export shows it: the update, its changes as child events."""
        via = _via(audit["via"])
        children = []
        for event in audit["events"]:
            child: dict[str, Any] = {"id": event["id"], "via": via, "via_reference_id": None}
            if event["type"] == "Comment":
                if comments:
                    child.update(type="Comment", author_id=event["author_id"], body=event["body"],
                                 html_body=event["html_body"], public=event["public"], attachments=[],
                                 audit_id=audit["id"], created_at=_stamp(audit["created_at"]))
                else:
                    child.update(comment_present=True, comment_public=event["public"])
            elif event["field_name"] == "tags":
                old, new = event.get("previous_value") or [], event["value"]
                child.update(tags=list(new), added_tags=sorted(set(new) - set(old)),
                             removed_tags=sorted(set(old) - set(new)))
            elif event["field_name"].isdigit():
                child["custom_ticket_fields"] = {event["field_name"]: event["value"]}
            else:
                child[event["field_name"]] = event["value"]
            if "previous_value" in event and event["field_name"] != "tags":
                child["previous_value"] = event["previous_value"]
            child["event_type"] = event["type"]
            children.append(child)
        return {
            "id": audit["id"],
            "ticket_id": audit["ticket_id"],
            "timestamp": int(audit["created_at"].timestamp()),
            "created_at": _stamp(audit["created_at"]),
            "updater_id": audit["author_id"],
            "via": via,
            "system": {"client": audit["client"], "ip_address": "127.0.0.1"},
            "event_type": "Audit",
            "child_events": children,
        }

    def _search(self, request: Request) -> Response:
        query = request.arg("query")
        if not query:
            raise _bad_request("A search needs a query.", "invalid")
        wanted = request.arg("filter[type]")
        matches = _parse_search(query)
        kind = next((v for k, op, v, neg in matches if k == "type"), wanted or "ticket")
        if kind != "ticket":
            raise _bad_request(f"The Zendesk sandbox searches tickets only, not '{kind}'.", "invalid")
        found = [t for t in sorted(self._tickets.values(), key=lambda t: t["id"])
                 if all(self._search_match(t, m) for m in matches)]
        order = request.arg("sort_by")
        if order in ("updated_at", "created_at"):
            found.sort(key=lambda t: t[order], reverse=request.arg("sort_order", "desc") == "desc")
        per_page = _int_arg(request.arg("per_page") or "100", "per_page", 1, 100)
        number = _int_arg(request.arg("page") or "1", "page", 1, 10**6)
        page = found[(number - 1) * per_page:number * per_page]
        more = number * per_page < len(found)
        base = f"search.json?query={quote(query)}&per_page={per_page}"
        return 200, {}, {
            "results": [{**self._ticket_json(t), "result_type": "ticket"} for t in page],
            "facets": None,
            "next_page": self._api(f"{base}&page={number + 1}") if more else None,
            "previous_page": self._api(f"{base}&page={number - 1}") if number > 1 else None,
            "count": len(found),
        }

    def _search_match(self, ticket: dict[str, Any], match: tuple[str, str, str, bool]) -> bool:
        key, op, value, negated = match
        value = value.lower()
        if key == "type":
            return True
        if key == "":
            text = f"{ticket['subject']} {ticket['description']}".lower()
            hit = value in text
        elif key == "status":
            order = {s: n for n, s in enumerate(STATUSES)}
            if value not in order:
                raise _bad_request(f"Unknown status '{value}'.", "invalid")
            actual, limit = order[ticket["status"]], order[value]
            hit = {":": actual == limit, "<": actual < limit, ">": actual > limit,
                   "<=": actual <= limit, ">=": actual >= limit}[op]
        elif key in ("tags", "tag"):
            hit = value in ticket["tags"]
        elif key in ("priority", "ticket_type"):
            hit = (ticket["priority" if key == "priority" else "type"] or "none") == value
        elif key in ("group", "group_id", "assignee", "requester", "organization"):
            field_name = {"group": "group_id", "group_id": "group_id", "assignee": "assignee_id",
                          "requester": "requester_id", "organization": "organization_id"}[key]
            actual = ticket[field_name]
            hit = actual is None if value == "none" else str(actual) == value
        elif key in ("created", "updated"):
            moment = ticket[f"{key}_at"]
            limit = self._search_date(value)
            hit = {":": moment.date() == limit.date(), "<": moment < limit, ">": moment > limit,
                   "<=": moment <= limit, ">=": moment >= limit}[op]
        elif key == "subject":
            hit = value in ticket["subject"].lower()
        else:
            raise _bad_request(
                f"The Zendesk sandbox does not search on '{key}'. It supports type, status, tags, priority, "
                "ticket_type, group, assignee, requester, organization, created, updated, subject and words.",
                "invalid",
            )
        return hit != negated

    def _search_date(self, value: str) -> datetime:
        relative = re.fullmatch(r"(\d+)(minutes|hours|days|weeks|[mhdw])", value)
        if relative:
            amount, unit = int(relative.group(1)), relative.group(2)[0]
            return self.now() - timedelta(**{{"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}[unit]: amount})
        try:
            moment = datetime.fromisoformat(value.upper())
        except ValueError:
            raise _bad_request(f"Cannot read the date '{value}'.", "invalid") from None
        return moment if moment.tzinfo else moment.replace(tzinfo=UTC)

    # --- operations: shared by the API, the jobs and the helpers ------------------------------

    def _create(self, body: Mapping[str, Any], actor: int, via: str, *, client: str) -> tuple[dict[str, Any], dict[str, Any]]:
        if not isinstance(body, Mapping):
            raise _bad_request("A ticket is a JSON object.")
        requester = body.get("requester_id", actor)
        requester_user = self._users.get(_maybe_int(requester))
        comment = body.get("comment")
        if comment is None and body.get("description") is not None:
            comment = {"body": body["description"]}
        details: dict[str, str] = {}
        if requester_user is None:
            details["requester"] = "Requester: is invalid"
        text = _comment_text(comment)
        if not text:
            details["description"] = "Description: cannot be blank"
        if details:
            raise _invalid(details)
        assert requester_user is not None
        now = self.now().astimezone(UTC).replace(microsecond=0)
        self._next_ticket += 1
        org = self._organizations.get(requester_user["organization_id"] or 0)
        ticket: dict[str, Any] = {
            "id": self._next_ticket, "subject": text.split("\n", 1)[0][:150], "description": text,
            "status": "new", "priority": None, "type": None, "requester_id": requester_user["id"],
            "submitter_id": actor, "assignee_id": None, "group_id": None,
            "organization_id": org["id"] if org else None,
            # Zendesk copies the organization's tags onto its members' new tickets.
            "tags": sorted(org["tags"]) if org else [], "custom": {}, "created_at": now, "updated_at": now,
            "external_id": None, "due_at": None, "via": via, "is_public": True, "comments": [], "audits": [],
        }
        rest = {k: v for k, v in body.items() if k not in ("requester_id", "description")}
        rest["comment"] = comment if isinstance(comment, dict) else {"body": text}
        try:
            audit = self._change(ticket, rest, actor, via, client=client, creating=True)
        except _Refusal:
            self._next_ticket -= 1
            raise
        self._tickets[ticket["id"]] = ticket
        self._announce(ticket, audit, actor, created=True)
        return ticket, audit

    def _update(self, ticket: dict[str, Any], body: Mapping[str, Any], actor: int, via: str, *,
                client: str) -> dict[str, Any]:
        if not isinstance(body, Mapping):
            raise _bad_request("A ticket is a JSON object.")
        if ticket["status"] == "closed":
            raise _invalid({"status": "Status: closed prevents ticket update"})
        if str(body.get("safe_update", "")).lower() == "true" and body.get("updated_stamp"):
            stamp = _parse_stamp(body["updated_stamp"])
            if stamp is None:
                raise _invalid({"updated_stamp": "Updated stamp: is not a valid date"})
            if stamp != ticket["updated_at"]:
                raise _Refusal(409, {"error": "UpdateConflict", "description": _CONFLICT})
        audit = self._change(ticket, body, actor, via, client=client, creating=False)
        if audit["events"]:
            self._announce(ticket, audit, actor, created=False)
        return audit

    def _change(self, ticket: dict[str, Any], body: Mapping[str, Any], actor: int, via: str, *,
                client: str, creating: bool) -> dict[str, Any]:
        """Validate everything, then apply; the audit of what changed (events empty: nothing did)."""
        details: dict[str, str] = {}
        new: dict[str, Any] = {}
        for name, allowed in (("priority", PRIORITIES), ("type", TYPES), ("status", STATUSES)):
            if name in body:
                value = body[name]
                value = value.lower() if isinstance(value, str) else value
                if value is None and name != "status" or value in allowed:
                    new[name] = value
                else:
                    details[name] = f"{name.capitalize()}: {value!r} is not valid"
        if "subject" in body:
            if isinstance(body["subject"], str) and body["subject"].strip():
                new["subject"] = body["subject"]
            else:
                details["subject"] = "Subject: cannot be blank"
        for name in ("external_id", "due_at"):
            if name in body:
                new[name] = None if body[name] is None else str(body[name])
        if "group_id" in body:
            gid = _maybe_int(body["group_id"])
            if body["group_id"] is not None and gid not in self._groups:
                details["group"] = f"Group: {body['group_id']!r} is invalid"
            new["group_id"] = gid
        assignee_given = "assignee_id" in body or "assignee_email" in body
        if assignee_given:
            ref = body.get("assignee_id") if "assignee_id" in body else body.get("assignee_email")
            uid = self._user_ref(ref) if ref is not None else None
            if ref is not None and (uid is None or self._users[uid]["role"] == "end-user"):
                details["assignee"] = f"Assignee: {ref!r} is not an agent"
            new["assignee_id"] = uid
        if "requester_id" in body and not creating:
            uid = self._user_ref(body["requester_id"])
            if uid is None:
                details["requester"] = "Requester: is invalid"
            new["requester_id"] = uid
        if "organization_id" in body:
            oid = _maybe_int(body["organization_id"])
            if body["organization_id"] is not None and oid not in self._organizations:
                details["organization"] = "Organization: is invalid"
            new["organization_id"] = oid
        custom = dict(ticket["custom"])
        for fid, value in _custom_items(body.get("custom_fields", body.get("fields"))):
            found = next((f for f in CUSTOM_FIELDS if f[0] == fid), None)
            if found is None:
                continue  # Zendesk ignores fields the account does not have
            problem = _field_problem(found, value)
            if problem:
                details[f"ticket_field_{fid}"] = f"{found[1]}: {problem}"
            else:
                custom[fid] = _field_value(found, value)
        comment = body.get("comment")
        comment_text = _comment_text(comment) if comment is not None else None
        # A new ticket's first comment is the requester's, whoever submits it.
        author = ticket["requester_id"] if creating else actor
        if comment is not None:
            if not comment_text:
                details["comment"] = "Comment: cannot be blank"
            if isinstance(comment, dict) and comment.get("author_id") is not None:
                author = self._user_ref(comment["author_id"]) or 0
                if author not in self._users:
                    details["comment"] = "Comment: author is invalid"
        tags = list(ticket["tags"])
        if "tags" in body:
            # On create the organization's tags stay whatever the body says.
            tags = _tags(body["tags"]) + (tags if creating else [])
        tags = sorted((set(tags) | set(_tags(body.get("additional_tags")))) - set(_tags(body.get("remove_tags"))))
        # Group and assignee must agree, as in Zendesk: an agent brings their default group; a new
        # group drops an assignee who is not in it; asking for both when they disagree is refused.
        group_id = new.get("group_id", ticket["group_id"])
        assignee_id = new.get("assignee_id", ticket["assignee_id"])
        if assignee_id is not None and assignee_id in self._users and not details.get("assignee"):
            member_of = self._users[assignee_id]["groups"]
            if group_id is not None and member_of and group_id not in member_of:
                if assignee_given and "group_id" in body:
                    details["assignee"] = "Assignee: is not a member of the group"
                elif assignee_given:
                    new["group_id"] = member_of[0]
                else:
                    new["assignee_id"] = None
            elif group_id is None and member_of:
                new["group_id"] = member_of[0]
        if details:
            raise _invalid(details)
        # Tags of dropdown fields follow their values.
        for fid, _, kind, options in CUSTOM_FIELDS:
            if kind == "tagger" and custom.get(fid) != ticket["custom"].get(fid):
                tags = sorted((set(tags) - {v for _, v in options}) | ({custom[fid]} if custom.get(fid) else set()))
        status_given = "status" in new
        if not status_given and ticket["status"] == "new" and new.get("assignee_id", ticket["assignee_id"]):
            new["status"] = "open"  # an assigned ticket is no longer new
        if (not status_given and comment_text and self._users.get(author, {}).get("role") == "end-user"
                and ticket["status"] in ("pending", "hold", "solved")):
            new["status"] = "open"  # the requester answered
        # Apply.
        now = self.now().astimezone(UTC).replace(microsecond=0)
        audit: dict[str, Any] = {"id": self._object_id(), "ticket_id": ticket["id"], "created_at": now,
                                 "author_id": actor, "events": [], "via": via, "client": client}
        changes: list[tuple[str, Any, Any]] = []
        if comment_text:
            public = bool(comment.get("public", True)) if isinstance(comment, dict) else True
            if self._users[author]["role"] == "end-user":
                public = True
            html_body = comment.get("html_body") if isinstance(comment, dict) else None
            entry = {"id": self._object_id(), "audit_id": audit["id"], "author_id": author, "body": comment_text,
                     "html_body": html_body or _html(comment_text), "public": public, "created_at": now,
                     "via": via, "client": client}
            ticket["comments"].append(entry)
            if creating:
                ticket["is_public"] = public
            # A comment's id is the id of its audit event, as in Zendesk.
            audit["events"].append({
                "id": entry["id"], "type": "Comment", "author_id": author, "body": entry["body"],
                "html_body": entry["html_body"], "plain_body": entry["body"], "public": public,
                "attachments": [], "audit_id": audit["id"],
            })
            changes.append(("comment", None, entry))
        for name in ("subject", "requester_id", "priority", "type", "status", "organization_id", "group_id",
                     "assignee_id", "external_id", "due_at"):
            if name not in new and not creating:
                continue
            old, value = ticket[name], new.get(name, ticket[name])
            ticket[name] = value
            if creating:
                audit["events"].append({"id": self._object_id(), "type": "Create", "value": _audit_value(value),
                                        "field_name": name})
            elif old != value:
                audit["events"].append({"id": self._object_id(), "type": "Change", "value": _audit_value(value),
                                        "field_name": name, "previous_value": _audit_value(old)})
            if old != value or creating:
                changes.append((name, old, value))
        if creating or tags != ticket["tags"]:
            old_tags, ticket["tags"] = ticket["tags"], tags
            event = {"id": self._object_id(), "type": "Create" if creating else "Change", "value": list(tags),
                     "field_name": "tags"}
            if not creating:
                event["previous_value"] = list(old_tags)
            audit["events"].append(event)
            changes.append(("tags", old_tags, list(tags)))
        for fid, _, kind, _ in CUSTOM_FIELDS:
            old, value = ticket["custom"].get(fid), custom.get(fid)
            if old != value:
                ticket["custom"][fid] = value
                audit["events"].append({"id": self._object_id(), "type": "Create" if creating else "Change",
                                        "value": _field_text(kind, value), "field_name": str(fid),
                                        **({} if creating else {"previous_value": _field_text(kind, old)})})
                changes.append((f"custom:{fid}", old, value))
        if audit["events"]:
            if not creating:
                self._touch(ticket, now)
            ticket["audits"].append(audit)
        audit["changes"] = changes
        return audit

    def _touch(self, ticket: dict[str, Any], now: datetime) -> None:
        # updated_at has whole seconds; keep it rising so that safe_update tells every change apart.
        ticket["updated_at"] = max(now, ticket["updated_at"] + timedelta(seconds=1))

    def _user_ref(self, ref: Any) -> int | None:
        if isinstance(ref, str) and "@" in ref:
            return next((uid for uid, u in self._users.items() if u["email"].lower() == ref.lower()), None)
        uid = _maybe_int(ref)
        return uid if uid in self._users else None

    # --- bulk jobs -----------------------------------------------------------------------------

    def _job_loop(self) -> None:
        while not self._jobs_stop.is_set():
            wait = self._run_jobs()
            self._jobs_wake.wait(timeout=wait)
            self._jobs_wake.clear()

    def _run_jobs(self) -> float:
        """Advance every job that is due; the seconds until one next is."""
        with self.lock:
            now = time.monotonic()
            soonest = 0.5
            for job in list(self._jobs.values()):
                if job.status in ("completed", "failed"):
                    continue
                if job.status == "queued":
                    if now < job.created + job.delay:
                        soonest = min(soonest, job.created + job.delay - now)
                        continue
                    job.status, job.started = "working", now
                    job.message = f"Updating {len(job.updates)} tickets"
                self._work(job, now)
                if job.status == "working":
                    assert job.started is not None
                    soonest = min(soonest, max(0.001, job.started + job.step * (job.progress + 1) - now))
            return soonest

    def _work(self, job: _Job, now: float) -> None:
        if job.empty_results:
            job.status, job.message = "completed", f"Completed at {_job_time(self.now())}"
            return
        assert job.started is not None
        while job.progress < len(job.updates) and now >= job.started + job.step * job.progress:
            if job.fail_after is not None and job.progress >= job.fail_after:
                job.status = "failed"
                job.message = f"Failed at ticket #{job.updates[job.progress][0]}: the job was interrupted"
                return
            ticket_id, body = job.updates[job.progress]
            result: dict[str, Any] = {"id": ticket_id, "action": "update"}
            try:
                self._update(self._ticket(ticket_id), body, SERVICE_USER_ID, "api", client="Bulk update")
                result.update(status="Updated", success=True)
            except _Refusal as refusal:
                answer = refusal.body if isinstance(refusal.body, dict) else {}
                details = answer.get("details") or {}
                text = "; ".join(d["description"] for items in details.values() for d in items)
                result.update(success=False, error=str(answer.get("error", "Error")),
                              details=text or str(answer.get("description", "")))
            job.results.append(result)
            job.progress += 1
        if job.progress >= len(job.updates):
            job.status, job.message = "completed", f"Completed at {_job_time(self.now())}"

    # --- webhooks ------------------------------------------------------------------------------

    def _announce(self, ticket: dict[str, Any], audit: dict[str, Any], actor: int, *, created: bool) -> None:
        if self.webhook_mode in ("events", "both"):
            for event_type, event in self._events(ticket, audit, created=created):
                self._send_event(ticket, event_type, event, actor)
        if self.webhook_mode in ("trigger", "both"):
            payload = json.loads(self.render_trigger(ticket["id"], current_user=actor))
            invocation = _ulid()
            self.send_webhook("trigger", payload, self._webhook_headers(self.trigger_webhook_id, invocation),
                              delivery_id=invocation)

    def _events(self, ticket: dict[str, Any], audit: dict[str, Any], *, created: bool) -> Iterable[tuple[str, dict[str, Any]]]:
        if created:
            yield "created", {}
            return
        tag_change: tuple[list[str], list[str]] | None = None
        comment: dict[str, Any] | None = None
        for name, old, new in audit["changes"]:
            if name in ("status", "priority", "type"):
                yield {"type": "type_changed"}.get(name, f"{name}_changed"), {
                    "current": _upper(new), "previous": _upper(old)}
            elif name == "subject":
                yield "subject_changed", {"current": new, "previous": old}
            elif name == "assignee_id":
                yield "agent_assignment_changed", {"current": _ref(new), "previous": _ref(old)}
            elif name == "group_id":
                yield "group_assignment_changed", {"current": _ref(new), "previous": _ref(old)}
            elif name == "tags":
                tag_change = (sorted(set(new) - set(old)), sorted(set(old) - set(new)))
            elif name.startswith("custom:"):
                fid = int(name.split(":", 1)[1])
                _, title, kind, _ = next(f for f in CUSTOM_FIELDS if f[0] == fid)
                yield "custom_field_changed", {"custom_field": {"id": str(fid), "title": title, "type": kind},
                                               "current": _field_text(kind, new), "previous": _field_text(kind, old)}
            elif name == "comment":
                comment = new
        if tag_change is not None:
            yield "tags_changed", {"tags_added": tag_change[0], "tags_removed": tag_change[1]}
        if comment is not None:
            author = self._users[comment["author_id"]]
            yield "comment_added", {"comment": {
                "author": {"id": str(author["id"]), "is_staff": author["role"] != "end-user", "name": author["name"]},
                "body": comment["body"], "id": str(comment["id"]), "is_public": comment["public"],
            }}

    def _send_event(self, ticket: dict[str, Any], name: str, event: dict[str, Any], actor: int) -> None:
        moment = self.now().astimezone(UTC)
        payload = {
            "account_id": ACCOUNT_ID,
            "detail": self._detail(ticket, actor),
            "event": event,
            "id": str(uuid.uuid4()),
            "subject": f"zen:ticket:{ticket['id']}",
            # Zendesk's event times carry nanoseconds.
            "time": moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond:06d}{secrets.randbelow(1000):03d}Z",
            "type": f"zen:event-type:ticket.{name}",
            "zendesk_event_version": EVENT_VERSION,
        }
        invocation = _ulid()
        self.send_webhook(payload["type"], payload, self._webhook_headers(self.event_webhook_id, invocation),
                          delivery_id=invocation)

    def _detail(self, ticket: dict[str, Any], actor: int) -> dict[str, Any]:
        return {
            "actor_id": str(actor),
            "assignee_id": _str(ticket["assignee_id"]),
            "brand_id": str(BRAND_ID),
            "created_at": _stamp(ticket["created_at"]),
            "custom_status": None,
            "description": ticket["description"],
            "external_id": ticket["external_id"],
            "form_id": str(FORM_ID),
            "group_id": _str(ticket["group_id"]),
            "id": str(ticket["id"]),
            "is_public": ticket["is_public"],
            "organization_id": _str(ticket["organization_id"]),
            "priority": _upper(ticket["priority"]),
            "requester_id": str(ticket["requester_id"]),
            "status": _upper(ticket["status"]),
            "subject": ticket["subject"],
            "submitter_id": str(ticket["submitter_id"]),
            "tags": list(ticket["tags"]) or None,
            "type": _upper(ticket["type"]),
            "updated_at": _stamp(ticket["updated_at"]),
            "via": {"channel": ticket["via"]},
        }

    def _webhook_headers(self, webhook_id: str, invocation: str) -> dict[str, str]:
        return {"X-Zendesk-Webhook-Id": webhook_id, "X-Zendesk-Webhook-Invocation-Id": invocation,
                "User-Agent": "Zendesk Webhook"}

    def render_trigger(self, ticket_id: int, *, current_user: Any = None, template: str | None = None) -> str:
        """The trigger body for a ticket as Zendesk renders it (``current_user``: who changed it)."""
        with self.lock:
            ticket = self._ticket(ticket_id)
            actor = self._users.get(self._user_ref(current_user) or SERVICE_USER_ID)
            values = self._placeholders(ticket, actor)
            return _PLACEHOLDER.sub(lambda m: json.dumps(values.get(m.group(1), ""))[1:-1],
                                    template or self.trigger_template)

    def _placeholders(self, ticket: dict[str, Any], actor: dict[str, Any] | None) -> dict[str, str]:
        out: dict[str, str] = {
            "ticket.id": str(ticket["id"]),
            "ticket.title": ticket["subject"],
            "ticket.description": ticket["description"],
            "ticket.status": STATUS_WORDS[ticket["status"]],
            "ticket.priority": (ticket["priority"] or "").capitalize(),
            "ticket.ticket_type": (ticket["type"] or "").capitalize(),
            "ticket.tags": " ".join(ticket["tags"]),
            "ticket.via": VIA_WORDS.get(ticket["via"], ticket["via"].capitalize()),
            "ticket.url": f"{self.subdomain}.zendesk.com/agent/tickets/{ticket['id']}",
            "ticket.link": f"https://{self.subdomain}.zendesk.com/agent/tickets/{ticket['id']}",
            "ticket.account": self.subdomain.capitalize(),
            "ticket.external_id": ticket["external_id"] or "",
            "ticket.due_date": ticket["due_at"] or "",
        }
        for name in ("created_at", "updated_at"):
            moment = ticket[name].astimezone(UTC)
            out[f"ticket.{name}"] = _human_date(moment)
            out[f"ticket.{name}_with_time"] = f"{_human_date(moment)} {moment:%H:%M}"
            # Zendesk documents this one to the minute: 2013-12-12T05:35Z.
            out[f"ticket.{name}_with_timestamp"] = moment.strftime("%Y-%m-%dT%H:%MZ")
        for role, uid in (("requester", ticket["requester_id"]), ("assignee", ticket["assignee_id"]),
                          ("submitter", ticket["submitter_id"])):
            out.update(_person(f"ticket.{role}", self._users.get(uid or 0)))
        out.update(_person("current_user", actor))
        group = self._groups.get(ticket["group_id"] or 0)
        out["ticket.group.id"] = str(group["id"]) if group else ""
        out["ticket.group.name"] = group["name"] if group else ""
        org = self._organizations.get(ticket["organization_id"] or 0)
        out["ticket.organization.id"] = str(org["id"]) if org else ""
        out["ticket.organization.name"] = org["name"] if org else ""
        for fid, _, kind, options in CUSTOM_FIELDS:
            value = ticket["custom"].get(fid)
            out[f"ticket.ticket_field_{fid}"] = "" if value is None else str(value)
            title = next((t for t, v in options if v == value), "")
            out[f"ticket.ticket_field_option_title_{fid}"] = title
        for prefix, comments in (("ticket.latest_comment", ticket["comments"]),
                                 ("ticket.latest_public_comment", [c for c in ticket["comments"] if c["public"]])):
            latest = comments[-1] if comments else None
            author = self._users.get(latest["author_id"]) if latest else None
            out[prefix] = latest["body"] if latest else ""
            out[f"{prefix}.value"] = latest["body"] if latest else ""
            out[f"{prefix}.id"] = str(latest["id"]) if latest else ""
            out[f"{prefix}.is_public"] = ("true" if latest["public"] else "false") if latest else ""
            out[f"{prefix}.created_at_with_time"] = (
                f"{_human_date(latest['created_at'])} {latest['created_at']:%H:%M}" if latest else "")
            out.update(_person(f"{prefix}.author", author))
        return out

    def _deliver(self, delivery: Delivery) -> None:
        """Deliver as Zendesk does: retry a 409 three times, a 429 or 503 with a short Retry-After,
        a timeout or refused connection five times; give up on anything else."""
        delays = iter(self.webhook_retry_delays)
        attempt = 0
        budget = {"409": 3, "busy": len(self.webhook_retry_delays), "none": 5}
        while True:
            with self.lock:
                url, secret = self.webhook_url, self.webhook_secret
            if url is None:
                delivery.state = "given_up"
                return
            headers = self.sign(delivery.body, delivery.headers) if secret else dict(delivery.headers)
            status, retry_after, error = _post(url, delivery.body, headers, self.webhook_timeout)
            with self.lock:
                delivery.url = url
                delivery.attempts.append({"status": status, "error": error, "at": self.now().isoformat()})
            if status is not None and 200 <= status < 300:
                delivery.state = "delivered"
                return
            if status is None:
                kind = "none"
            elif status == 409:
                kind = "409"
            elif status in (429, 503) and retry_after is not None and retry_after < 60:
                kind = "busy"
            else:
                kind = None
            delay = next(delays, None) if kind is not None and budget[kind] > 0 else None
            if delay is None:
                delivery.state = "given_up"
                return
            assert kind is not None
            budget[kind] -= 1
            if self._stopping.wait(delay):
                delivery.state = "given_up"
                return
            attempt += 1

    # --- helpers: people acting through Zendesk's UI ------------------------------------------

    def _actor(self, as_user: Any, default: int) -> int:
        if as_user is None:
            return default
        for uid, user in self._users.items():
            if as_user in (uid, str(uid), user["handle"], user["email"]):
                return uid
        raise KeyError(f"no user {as_user!r} in the Zendesk sandbox")

    @property
    def service_user_id(self) -> int:
        """Escalier's own API user's id."""
        return SERVICE_USER_ID

    @property
    def group_ids(self) -> dict[str, int]:
        """The seeded groups by the names a policy uses (``tier-1`` ... ``engineering``)."""
        return {_group_key(name): gid for gid, name in GROUPS}

    def user_id(self, ref: Any) -> int:
        """A user's id by handle (``mia``, ``dana``, ``escalier``...), email or id."""
        with self.lock:
            return self._actor(ref, SERVICE_USER_ID)

    def create_ticket(
        self,
        subject: str,
        description: str = "",
        *,
        requester: Any = "dana",
        priority: str | None = None,
        type: str | None = None,
        tags: Sequence[str] = (),
        group_id: int | None = None,
        assignee: Any = None,
        custom_fields: Mapping[int, Any] | None = None,
        public: bool = True,
        as_user: Any = None,
        via: str = "web",
    ) -> dict[str, Any]:
        """Create a ticket as a person would (``as_user`` defaults to the requester); returns it as GET shows it."""
        with self.lock:
            requester_id = self._actor(requester, SERVICE_USER_ID)
            actor = self._actor(as_user, requester_id)
            body: dict[str, Any] = {"subject": subject, "requester_id": requester_id,
                                    "comment": {"body": description or subject, "public": public}}
            if priority is not None:
                body["priority"] = priority
            if type is not None:
                body["type"] = type
            if tags:
                body["tags"] = list(tags)
            if group_id is not None:
                body["group_id"] = group_id
            if assignee is not None:
                body["assignee_id"] = self._actor(assignee, actor)
            if custom_fields:
                body["custom_fields"] = [{"id": k, "value": v} for k, v in custom_fields.items()]
            ticket, _ = self._create(body, actor, via, client="Zendesk web")
            if self._count_people:
                self._updates.take(time.monotonic())
            return self._ticket_json(ticket)

    def update_ticket(
        self,
        ticket_id: int,
        *,
        status: str | None = None,
        priority: str | None = _UNSET,
        type: str | None = _UNSET,
        subject: str | None = None,
        tags: Sequence[str] | None = None,
        additional_tags: Sequence[str] = (),
        remove_tags: Sequence[str] = (),
        group_id: int | None = _UNSET,
        assignee_id: int | None = _UNSET,
        custom_fields: Mapping[int, Any] | None = None,
        comment: str | None = None,
        public: bool = True,
        fields: Mapping[str, Any] | None = None,
        as_user: Any = "mia",
        via: str = "web",
    ) -> dict[str, Any]:
        """Change a ticket as a person would; returns it as GET shows it.

        ``None`` clears ``priority``, ``type``, ``group_id`` and ``assignee_id``; ``fields`` adds
        any other key of the API's ticket body.

        :raises KeyError: for an unknown ticket or user.
        :raises ValueError: when Zendesk would refuse the change (its answer as the message).
        """
        body: dict[str, Any] = dict(fields or {})
        for name, value in (("status", status), ("subject", subject)):
            if value is not None:
                body[name] = value
        for name, value in (("priority", priority), ("type", type), ("group_id", group_id),
                            ("assignee_id", assignee_id)):
            if value is not _UNSET:
                body[name] = value
        if tags is not None:
            body["tags"] = list(tags)
        if additional_tags:
            body["additional_tags"] = list(additional_tags)
        if remove_tags:
            body["remove_tags"] = list(remove_tags)
        if custom_fields:
            body["custom_fields"] = [{"id": k, "value": v} for k, v in custom_fields.items()]
        if comment is not None:
            body["comment"] = {"body": comment, "public": public}
        with self.lock:
            actor = self._actor(as_user, 360001)
            ticket = self._tickets.get(int(ticket_id))
            if ticket is None:
                raise KeyError(f"no ticket {ticket_id} in the Zendesk sandbox")
            try:
                self._update(ticket, body, actor, via, client="Zendesk web")
            except _Refusal as refusal:
                raise ValueError(json.dumps(refusal.body)) from None
            if self._count_people:
                self._updates.take(time.monotonic())
                self._per_ticket.setdefault(
                    (actor, ticket["id"]), _Window(self._per_ticket_limit, self._per_ticket_seconds)
                ).take(time.monotonic())
            return self._ticket_json(ticket)

    def add_comment(self, ticket_id: int, body: str, *, public: bool = True, as_user: Any = "mia") -> dict[str, Any]:
        """Comment as a person would (the requester, ``as_user="dana"``, reopens a pending ticket)."""
        self.update_ticket(ticket_id, as_user=as_user, comment=body, public=public)
        return self.comments(ticket_id)[-1]

    def ticket(self, ticket_id: int) -> dict[str, Any]:
        """The ticket as ``GET /api/v2/tickets/{id}.json`` shows it."""
        with self.lock:
            ticket = self._tickets.get(int(ticket_id))
            if ticket is None:
                raise KeyError(f"no ticket {ticket_id} in the Zendesk sandbox")
            return self._ticket_json(ticket)

    def tickets(self) -> list[dict[str, Any]]:
        """Every ticket, by id."""
        with self.lock:
            return [self._ticket_json(t) for t in sorted(self._tickets.values(), key=lambda t: t["id"])]

    def comments(self, ticket_id: int) -> list[dict[str, Any]]:
        """The ticket's comments, oldest first, as the API shows them."""
        with self.lock:
            ticket = self._tickets.get(int(ticket_id))
            if ticket is None:
                raise KeyError(f"no ticket {ticket_id} in the Zendesk sandbox")
            return [self._comment_json(c) for c in ticket["comments"]]

    def audits(self, ticket_id: int) -> list[dict[str, Any]]:
        """The ticket's audits, oldest first, as the API shows them."""
        with self.lock:
            ticket = self._tickets.get(int(ticket_id))
            if ticket is None:
                raise KeyError(f"no ticket {ticket_id} in the Zendesk sandbox")
            return [self._audit_json(a) for a in ticket["audits"]]

    def job(self, job_id: str) -> dict[str, Any]:
        """A bulk job as ``GET /api/v2/job_statuses/{id}.json`` shows it."""
        with self.lock:
            return self._job_json(self._jobs[job_id])

    def wait_for_jobs(self, timeout: float = 5.0) -> bool:
        """Block until every bulk job has completed or failed; False on timeout."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if all(j.status in ("completed", "failed") for j in self._jobs.values()):
                    return True
            self._jobs_wake.set()
            time.sleep(0.01)
        return False


# --- small pieces ------------------------------------------------------------------------------


def _user(uid: int, handle: str, name: str, email: str, role: str, groups: Sequence[int],
          organization: int | None) -> dict[str, Any]:
    return {"id": uid, "handle": handle, "name": name, "email": email, "role": role, "groups": tuple(groups),
            "organization_id": organization}


def _group_key(name: str) -> str:
    return name.lower().replace(" ", "-")


def _stamp(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse_stamp(value: Any) -> datetime | None:
    try:
        moment = datetime.fromisoformat(str(value))
    except ValueError:
        return None
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).astimezone(UTC).replace(microsecond=0)


def _human_date(moment: datetime) -> str:
    return f"{moment:%B} {moment.day}, {moment.year}"


def _job_time(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S +0000")


def _via(channel: str) -> dict[str, Any]:
    return {"channel": channel, "source": {"from": {}, "to": {}, "rel": None}}


def _str(value: Any) -> str | None:
    return None if value is None else str(value)


def _upper(value: Any) -> str | None:
    return None if value is None else str(value).upper()


def _ref(value: Any) -> dict[str, str] | None:
    return None if value is None else {"id": str(value)}


def _audit_value(value: Any) -> Any:
    # Audits show ids as strings and keep null.
    return str(value) if isinstance(value, int) else value


def _maybe_int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    return None


def _id_param(value: Any) -> int:
    found = _maybe_int(value)
    if found is None:
        raise _not_found()
    return found


def _int_arg(value: str, name: str, low: int, high: int) -> int:
    try:
        number = int(value)
    except ValueError:
        raise _bad_request(f"{name} must be a whole number.") from None
    if not low <= number <= high:
        raise _bad_request(f"{name} must be between {low} and {high}.")
    return number


def _tags(value: Any) -> list[str]:
    """Zendesk's tags: lower case, a space or comma separates two tags."""
    if value is None:
        return []
    items = [value] if isinstance(value, str) else list(value)
    return sorted({part.lower() for item in items for part in _TAG_SPLIT.split(str(item)) if part})


def _safety(body: Mapping[str, Any]) -> dict[str, Any]:
    return {k: body[k] for k in ("safe_update", "updated_stamp") if k in body}


def _comment_text(comment: Any) -> str:
    if isinstance(comment, str):
        return comment.strip()
    if not isinstance(comment, dict):
        return ""
    text = comment.get("body")
    if not isinstance(text, str) or not text.strip():
        raw = comment.get("html_body")
        text = html.unescape(_TAGS_HTML.sub("", raw)) if isinstance(raw, str) else ""
    return text.strip()


def _html(text: str) -> str:
    paragraphs = "".join(f'<p dir="auto">{html.escape(p).replace(chr(10), "<br>")}</p>'
                         for p in text.split("\n\n"))
    return f'<div class="zd-comment" dir="auto">{paragraphs}</div>'


def _custom_items(value: Any) -> list[tuple[int, Any]]:
    if value is None:
        return []
    if isinstance(value, dict):
        return [(fid, v) for k, v in value.items() if (fid := _maybe_int(k)) is not None]
    if isinstance(value, list):
        return [(fid, item.get("value")) for item in value
                if isinstance(item, dict) and (fid := _maybe_int(item.get("id"))) is not None]
    raise _invalid({"custom_fields": "Custom fields: must be a list of {id, value}"})


def _field_problem(found: tuple[int, str, str, tuple[tuple[str, str], ...]], value: Any) -> str | None:
    _, _, kind, options = found
    if value is None or value == "":
        return None
    if kind == "tagger":
        return None if value in {v for _, v in options} else f"{value!r} is not a valid option"
    if kind == "integer":
        return None if _maybe_int(value) is not None or (isinstance(value, str) and value.lstrip("-").isdigit()) \
            else f"{value!r} is not a whole number"
    return None if isinstance(value, str) else "must be text"


def _field_value(found: tuple[int, str, str, tuple[tuple[str, str], ...]], value: Any) -> Any:
    if value is None or value == "":
        return None
    return int(value) if found[2] == "integer" else value


def _field_text(kind: str, value: Any) -> Any:
    # The API shows every custom field value as a string (or null).
    return None if value is None else str(value)


def _person(prefix: str, user: dict[str, Any] | None) -> dict[str, str]:
    if user is None:
        return {f"{prefix}.{k}": "" for k in ("id", "name", "first_name", "last_name", "email")}
    first, _, last = user["name"].partition(" ")
    return {f"{prefix}.id": str(user["id"]), f"{prefix}.name": user["name"], f"{prefix}.first_name": first,
            f"{prefix}.last_name": last, f"{prefix}.email": user["email"]}


def _client(request: Request) -> str:
    return str(request.headers.get("User-Agent") or "")


def _cursor(index: int) -> str:
    return base64.b64encode(json.dumps({"o": "id", "v": index}).encode()).decode()


def _read_cursor(value: str) -> int:
    try:
        return int(json.loads(base64.b64decode(value + "=" * (-len(value) % 4)))["v"])
    except (ValueError, KeyError, TypeError) as exc:
        raise _bad_request("The page cursor is invalid.") from exc


def _export_cursor(position: tuple[int, int]) -> str:
    return base64.b64encode(f"{position[0]}.0||{position[1]}|".encode()).decode()


def _read_export_cursor(value: str) -> tuple[int, int]:
    try:
        stamp, _, rest = base64.b64decode(value + "=" * (-len(value) % 4)).decode().partition("||")
        return int(float(stamp)), int(rest.strip("|"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise _bad_request("The cursor is invalid.") from exc


def _parse_search(query: str) -> list[tuple[str, str, str, bool]]:
    """``key:value``, ``key<value``, ``-key:value``, ``"quoted words"`` and bare words."""
    out: list[tuple[str, str, str, bool]] = []
    for token in re.findall(r'-?[\w.]+(?:<=|>=|[:<>])"[^"]*"|-?[\w.]+(?:<=|>=|[:<>])\S+|"[^"]*"|\S+', query):
        negated = token.startswith("-")
        token = token[1:] if negated else token
        found = re.match(r"([\w.]+)(<=|>=|[:<>])(.*)", token)
        if found:
            out.append((found.group(1).lower(), found.group(2), found.group(3).strip('"'), negated))
        else:
            out.append(("", ":", token.strip('"'), negated))
    return out


def _seconds(value: float) -> str:
    return str(max(1, math.ceil(value)))


def _ulid() -> str:
    """A ULID, as Zendesk names webhooks and invocations: 48 bits of milliseconds, 80 random."""
    number = (int(time.time() * 1000) << 80) | int.from_bytes(os.urandom(10), "big")
    return "".join(_CROCKFORD[(number >> shift) & 31] for shift in range(125, -1, -5))


def _check_template(template: str) -> None:
    rendered = _PLACEHOLDER.sub("x", template)
    try:
        json.loads(rendered)
    except ValueError as exc:
        raise ValueError(f"the trigger template is not JSON once its placeholders are filled in: {exc}") from exc


def _post(url: str, body: bytes, headers: Mapping[str, str], timeout: float) -> tuple[int | None, float | None, str | None]:
    """POST once; the status, the receiver's Retry-After in seconds, and an error for no answer."""
    request = urllib.request.Request(url, data=body, headers=dict(headers), method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            answer.read()
            return answer.status, None, None
    except urllib.error.HTTPError as exc:
        exc.read()
        retry_after = exc.headers.get("Retry-After") if exc.headers else None
        try:
            wait = float(retry_after) if retry_after is not None else None
        except ValueError:
            wait = None
        return exc.code, wait, None
    except (urllib.error.URLError, OSError) as exc:
        return None, None, f"{type(exc).__name__}: {getattr(exc, 'reason', exc)}"
