"""Test support: a recording upstream over real HTTP, and the ``testdesk`` connector that talks to it.

Not for production. It lives inside the package so that worker subprocesses started by tests (and
by anyone testing a deployment) can import it: ``python -m escalier.runtime.testing worker ...``.

* :class:`Upstream` is a ticketing system in miniature: a stdlib ``ThreadingHTTPServer`` on
  127.0.0.1 that records every write (ticket, action key, kind, global order) and refuses a second
  write of the same key, counting it in :attr:`Upstream.duplicates` (tests assert zero). It can
  enforce a writes-per-window budget (429 with ``Retry-After``), answer 503 for a period, and
  refuse a ticket outright (422). Its time comes from an injectable clock, so tests compress time.
* :class:`TestDeskPlugin` registers the ``testdesk`` connector: a :class:`TestDeskConnection`
  writes actions with ``requests`` (explicit timeout), checks the key before writing so that a
  re-applied action has no second effect, and translates 429, 5xx and timeouts to
  :class:`TransientError`. It parses simple JSON deliveries of source ``testdesk``:
  ``{"ticket": "T-1", "kind": "created", "at": "2026-03-02T09:00:00Z", "priority": "high", ...}``.
* :class:`FakeClock` is a clock whose ``sleep`` advances it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import quote, unquote

import requests
from pydantic import Field
from sqlalchemy import Engine, insert

from escalier.connectors._config import ConnectorSettings, StrictModel
from escalier.core.connector import ActionResult, ConnectorSpec, RateLimit, RawEvent
from escalier.core.errors import AuthError, NotFoundError, RejectedError, TransientError
from escalier.core.hookspecs import hookimpl
from escalier.core.model import Action, EventKind, StatusCategory, Ticket, TicketEvent
from escalier.store import utc
from escalier.store.schema import inbox

__all__ = [
    "SOURCE",
    "FakeClock",
    "TestDeskConfig",
    "TestDeskConnection",
    "TestDeskPlugin",
    "TestDeskTarget",
    "Upstream",
    "Write",
    "deliver",
    "event_body",
]

SOURCE = "testdesk"
URL_VARIABLE = "ESCALIER_TESTDESK_URL"


class FakeClock:
    """A settable clock: ``now()`` for the worker, ``time()`` for the upstream, ``sleep`` advances."""

    def __init__(self, start: datetime):
        self._now = start
        self._lock = threading.Lock()
        self.slept = 0.0

    def now(self) -> datetime:
        """The current fake time."""
        with self._lock:
            return self._now

    def time(self) -> float:
        """The current fake time in seconds since the epoch."""
        return self.now().timestamp()

    def advance(self, seconds: float) -> None:
        """Move time forward."""
        with self._lock:
            self._now += timedelta(seconds=seconds)

    def sleep(self, seconds: float) -> None:
        """Sleep in fake time: advance at once."""
        self.slept += seconds
        self.advance(seconds)


# --- the upstream -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Write:
    """One write the upstream accepted."""

    order: int
    ticket: str
    key: str
    kind: str
    urgency: int
    tier: int | None
    at: float


class Upstream:
    """A recording ticketing system over HTTP; see the module docstring."""

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.time,
        writes_per_window: int | None = None,
        window: float = 60.0,
    ):
        self.clock = clock
        self.writes_per_window = writes_per_window
        self.window = window
        self.writes: list[Write] = []
        self.keys: dict[str, Write] = {}
        self.duplicates = 0
        self.rate_limited = 0
        self.unavailable_answers = 0
        self.requests = 0
        self._unavailable_until: float | None = None
        self._rejected: set[str] = set()
        self._window_start = 0.0
        self._window_writes = 0
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # control

    def start(self) -> Upstream:
        """Listen on 127.0.0.1 on a free port, in a background thread."""
        upstream = self

        class Handler(_Handler):
            owner = upstream

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop listening."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> Upstream:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """The base URL to reach it."""
        assert self._server is not None, "start() the upstream first"
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def unavailable_for(self, seconds: float) -> None:
        """Answer 503 to everything for ``seconds`` of the upstream's clock."""
        with self._lock:
            self._unavailable_until = self.clock() + seconds

    def reject_ticket(self, ticket: str) -> None:
        """Refuse every write to ``ticket`` with 422."""
        with self._lock:
            self._rejected.add(ticket)

    # what tests read

    def keys_by_ticket(self) -> dict[str, list[str]]:
        """Each ticket's written action keys, in the order they were written."""
        with self._lock:
            found: dict[str, list[str]] = {}
            for write in self.writes:
                found.setdefault(write.ticket, []).append(write.key)
            return found

    def written(self) -> list[Write]:
        """Every accepted write, in order."""
        with self._lock:
            return list(self.writes)

    # the protocol

    def _handle(self, method: str, path: str, body: bytes) -> tuple[int, dict[str, str], dict[str, Any]]:
        with self._lock:
            self.requests += 1
            now = self.clock()
            if self._unavailable_until is not None and now < self._unavailable_until:
                self.unavailable_answers += 1
                return 503, {"Retry-After": "1"}, {"error": "maintenance"}
            parts = [unquote(p) for p in path.strip("/").split("/")]
            if method == "GET" and len(parts) == 2 and parts[0] == "actions":
                write = self.keys.get(parts[1])
                if write is None:
                    return 404, {}, {"error": "no such action"}
                return 200, {}, {"key": write.key, "order": write.order}
            if method == "POST" and len(parts) == 3 and parts[0] == "tickets" and parts[2] == "actions":
                return self._write(parts[1], json.loads(body or b"{}"), now)
            return 404, {}, {"error": "no such endpoint"}

    def _write(self, ticket: str, payload: dict[str, Any], now: float) -> tuple[int, dict[str, str], dict[str, Any]]:
        key = str(payload.get("key"))
        if ticket in self._rejected:
            return 422, {}, {"error": f"ticket {ticket} refuses changes"}
        headers: dict[str, str] = {}
        if self.writes_per_window is not None:
            start = math.floor(now / self.window) * self.window
            if start != self._window_start:
                self._window_start, self._window_writes = start, 0
            reset = max(0.0, start + self.window - now)
            if self._window_writes >= self.writes_per_window:
                self.rate_limited += 1
                return 429, {"Retry-After": f"{reset:.3f}", **self._budget(0, reset)}, {
                    "error": "rate limited"
                }
            self._window_writes += 1
            headers = self._budget(self.writes_per_window - self._window_writes, reset)
        if key in self.keys:
            self.duplicates += 1
            return 409, headers, {"error": "duplicate write", "key": key}
        write = Write(
            order=len(self.writes) + 1, ticket=ticket, key=key, kind=str(payload.get("kind")),
            urgency=int(payload.get("urgency") or 0), tier=payload.get("tier"), at=now,
        )
        self.writes.append(write)
        self.keys[key] = write
        return 201, headers, {"key": key, "order": write.order}

    def _budget(self, remaining: int, reset: float) -> dict[str, str]:
        return {
            "X-RateLimit-Limit": str(self.writes_per_window),
            "X-RateLimit-Remaining": str(remaining),
            "X-RateLimit-Reset": f"{reset:.3f}",
        }


class _Handler(BaseHTTPRequestHandler):
    owner: Upstream
    protocol_version = "HTTP/1.1"
    # One buffered write per response: headers and body in separate packets meet the client's
    # delayed ACK (Nagle) and cost 40 ms a request on a kept-alive connection.
    wbufsize = 64 * 1024
    disable_nagle_algorithm = True

    def do_GET(self) -> None:  # noqa: N802 - the stdlib's naming
        self._answer("GET")

    def do_POST(self) -> None:  # noqa: N802 - the stdlib's naming
        self._answer("POST")

    def _answer(self, method: str) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        if len(body) < length:
            # The client went away mid-request (a worker killed while sending): as a real server
            # does, act on nothing and drop the connection.
            self.close_connection = True
            return
        status, headers, payload = self.owner._handle(method, self.path, body)
        data = json.dumps(payload).encode()
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: tests read the records, not the access log."""


# --- the connector ------------------------------------------------------------------------------


class TestDeskConfig(ConnectorSettings):
    """The ``connectors.testdesk`` section: where the test upstream listens."""

    __test__ = False  # not a pytest test class despite the name
    base_url: str | None = Field(
        default=None, description=f"the upstream's URL; taken from ${URL_VARIABLE} when unset"
    )
    groups: list[str] = Field(default_factory=list)
    # Tests drive the upstream as hard as they like unless they set a budget to enforce.
    writes_per_minute: int | None = Field(  # type: ignore[assignment]
        default=None, ge=1, description="the write budget the worker keeps to; unlimited when unset"
    )


class TestDeskTarget(StrictModel):
    """Where a tier lives in the test upstream."""

    __test__ = False
    group: str


class TestDeskConnection:
    """One connection to a test upstream; the only code of the connector touching the network."""

    __test__ = False
    system = SOURCE

    def __init__(self, base_url: str, *, instance: str = "default", timeout: float = 5.0):
        self.base_url = base_url.rstrip("/")
        self.instance = instance
        self.timeout = timeout
        self.session = requests.Session()

    def apply(self, action: Action) -> ActionResult:
        """Write ``action`` unless its key is already there."""
        if self.has(action.key):
            return ActionResult(applied=False, detail="already applied")
        return self.write(action)

    def has(self, key: str) -> bool:
        """True when the upstream holds a write of ``key``."""
        return self._request("GET", f"/actions/{quote(key, safe='')}").status_code == 200

    def write(self, action: Action) -> ActionResult:
        """Write ``action`` without a look first: a second write of a key is the upstream's duplicate."""
        payload = {
            "key": action.key, "kind": action.kind.value, "urgency": action.urgency, "tier": action.tier,
        }
        answer = self._request("POST", f"/tickets/{quote(action.ticket_id, safe='')}/actions", json=payload)
        if answer.status_code == 409:
            # Another writer got there between our check and our write.
            return ActionResult(applied=False, detail="already applied", rate_limit=_rate_limit(answer))
        return ActionResult(applied=True, detail=f"order {answer.json()['order']}", rate_limit=_rate_limit(answer))

    def fetch_ticket(self, ticket_id: str) -> Ticket:
        """The test upstream keeps no tickets."""
        raise NotFoundError(f"{SOURCE} keeps no tickets", system=SOURCE, status=404)

    def check(self) -> str:
        """The test upstream answers any request."""
        self._request("GET", "/")
        return f"{SOURCE} upstream at {self.base_url}"

    def close(self) -> None:
        """Release pooled sockets."""
        self.session.close()

    def _request(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        try:
            answer = self.session.request(method, self.base_url + path, timeout=self.timeout, **kwargs)
        except requests.Timeout as exc:
            raise TransientError(f"{SOURCE} timed out", system=SOURCE) from exc
        except requests.ConnectionError as exc:
            raise TransientError(f"{SOURCE} unreachable", system=SOURCE) from exc
        status = answer.status_code
        if status == 429 or status >= 500:
            retry_after = answer.headers.get("Retry-After")
            raise TransientError(
                f"{SOURCE} answered {status}", system=SOURCE, status=status,
                retry_after=float(retry_after) if retry_after else None,
            )
        if status in (401, 403):
            raise AuthError(f"{SOURCE} refused our credentials", system=SOURCE, status=status)
        if status in (400, 422):
            raise RejectedError(f"{SOURCE} refused the change: {answer.json().get('error')}",
                                system=SOURCE, status=status)
        if status == 404 and method != "GET":
            raise NotFoundError(f"{SOURCE} has no {path}", system=SOURCE, status=status)
        return answer


def _rate_limit(answer: requests.Response) -> RateLimit | None:
    if "X-RateLimit-Limit" not in answer.headers:
        return None
    return RateLimit(
        limit=int(answer.headers["X-RateLimit-Limit"]),
        remaining=int(answer.headers["X-RateLimit-Remaining"]),
        reset_after=float(answer.headers["X-RateLimit-Reset"]),
    )


def connect(
    config: TestDeskConfig, instance: str, environ: Mapping[str, str], people: Mapping[str, Any]
) -> TestDeskConnection:
    """A connection from the policy's ``connectors.testdesk`` section."""
    base_url = config.base_url or environ.get(URL_VARIABLE)
    if not base_url:
        raise RejectedError(f"set connectors.{SOURCE}.base_url or ${URL_VARIABLE}", system=SOURCE)
    return TestDeskConnection(base_url, instance=instance, timeout=config.timeout_seconds)


def parse_event(raw: RawEvent) -> list[TicketEvent]:
    """Ticket events from one JSON delivery of the test upstream."""
    data = json.loads(raw.body)
    at = datetime.fromisoformat(data["at"])
    kind = EventKind(data["kind"])
    status = data.get("status_category", "solved" if kind is EventKind.RESOLVED else "open")
    ticket = Ticket(
        system=SOURCE,
        id=data["ticket"],
        instance=raw.instance,
        subject=data.get("subject", ""),
        status_category=StatusCategory(status),
        priority=data.get("priority"),
        severity=data.get("severity"),
        users_affected=data.get("users_affected"),
        tags=tuple(data.get("tags", ())),
        created_at=datetime.fromisoformat(data.get("created_at", data["at"])),
    )
    event_id = data.get("id") or raw.delivery_id or f"{data['ticket']}:{kind.value}:{data['at']}"
    return [
        TicketEvent(
            id=event_id, system=SOURCE, instance=raw.instance, ticket_id=data["ticket"], kind=kind,
            occurred_at=at, actor=data.get("actor"), ticket=ticket,
            requested_tier=data.get("requested_tier"), reason=data.get("reason"),
        )
    ]


class TestDeskPlugin:
    """The ``testdesk`` connector as a plugin: register an instance with the plugin manager."""

    __test__ = False

    @hookimpl
    def register_connectors(self) -> list[ConnectorSpec]:
        """The test connector."""
        return [
            ConnectorSpec(
                name=SOURCE, title="Test upstream (test support)", config_model=TestDeskConfig,
                target_model=TestDeskTarget, connect=connect,
            )
        ]

    @hookimpl
    def parse_event_for_connector(self, raw: RawEvent) -> list[TicketEvent] | None:
        """Parse deliveries whose source is ``testdesk``."""
        return parse_event(raw) if raw.source == SOURCE else None

    @hookimpl
    def apply_action_for_connector(self, action: Action, connection: Any) -> ActionResult | None:
        """Apply actions of the ``testdesk`` system through its connection."""
        return connection.apply(action) if action.system == SOURCE else None


# --- feeding the inbox --------------------------------------------------------------------------


def event_body(ticket: str, kind: str, at: datetime, **fields: Any) -> dict[str, Any]:
    """A delivery body as the test upstream would send it."""
    return {"ticket": ticket, "kind": kind, "at": at.isoformat(), **fields}


def deliver(
    engine: Engine,
    bodies: Sequence[Mapping[str, Any]],
    *,
    received_at: datetime,
    instance: str = "default",
) -> None:
    """Store deliveries in the inbox as the receiver would, one row each."""
    rows = []
    for body in bodies:
        data = json.dumps(body, sort_keys=True).encode()
        rows.append(
            dict(
                source=SOURCE, instance=instance,
                delivery_id=str(body.get("id") or hashlib.sha256(data).hexdigest()[:32]),
                body_sha256=hashlib.sha256(data).hexdigest(), event_type=str(body.get("kind")),
                headers={"content-type": "application/json"}, body=data,
                received_at=utc(received_at), state="pending", attempts=0,
            )
        )
    with engine.begin() as connection:
        for start in range(0, len(rows), 500):
            connection.execute(insert(inbox), rows[start : start + 500])


# --- a worker process for tests -----------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m escalier.runtime.testing worker --url URL --policy FILE --upstream URL``."""
    parser = argparse.ArgumentParser(prog="python -m escalier.runtime.testing")
    sub = parser.add_subparsers(dest="command", required=True)
    worker = sub.add_parser("worker", help="run a worker with the testdesk connector registered")
    worker.add_argument("--url", required=True)
    worker.add_argument("--policy", required=True)
    worker.add_argument("--upstream", required=True)
    worker.add_argument("--worker-id")
    worker.add_argument("--batch-size", type=int, default=50)
    worker.add_argument("--lease", type=float, default=60.0)
    worker.add_argument("--once", action="store_true")
    args = parser.parse_args(argv)

    from escalier.runtime.operations import run_worker

    environ = {**os.environ, URL_VARIABLE: args.upstream}
    run_worker(
        args.url, args.policy, worker_id=args.worker_id, once=args.once, plugins=[TestDeskPlugin()],
        environ=environ, batch_size=args.batch_size, lease=timedelta(seconds=args.lease),
        handle_signals=True,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
