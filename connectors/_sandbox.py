"""The base of the sandbox servers: an upstream's API and webhooks, in memory, on 127.0.0.1.

A sandbox speaks an upstream's real REST and webhook formats over HTTP so that the real client
libraries, the tests and a newcomer's first run can drive Escalier without the upstream. Each
flavour (``JiraSandbox``...) registers its routes in a table and signs its webhooks; this base
serves them and adds what every flavour shares:

- a **control API** under ``/_sandbox/`` (and the same as Python methods): call counts per route
  template, reset, injected faults (429 with ``Retry-After``, 5xx, slow answers), dropped or
  re-pointed webhooks, the deliveries made, and the action keys seen;
- a **write budget** (``rate_limit``) answering 429 like the upstream once it is spent;
- **webhook deliveries** from a background thread, in order, retried on failure like the upstream;
- **action keys**: every write Escalier makes names the actions it carries in the
  ``X-Escalier-Action-Keys`` header and in an ``escalier:action=<key>`` line of each comment. A
  sandbox is never idempotent on Escalier's behalf: a repeated write is applied again and its keys
  counted again, so a test names the action the worker applied twice.
"""

from __future__ import annotations

import base64
import fnmatch
import json
import math
import queue
import re
import signal
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter, deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self, TextIO
from urllib.parse import parse_qs, unquote, urlsplit

__all__ = [
    "ACTION_KEYS_HEADER",
    "DEFAULT_RETRY_DELAYS",
    "Delivery",
    "Fault",
    "HTTPProblem",
    "Request",
    "Response",
    "Sandbox",
    "basic_credentials",
    "bearer_token",
    "run_sandbox",
]

ACTION_KEYS_HEADER = "X-Escalier-Action-Keys"
# The upstreams retry for up to about half an hour; the sandbox keeps the shape, shorter.
DEFAULT_RETRY_DELAYS: tuple[float, ...] = (1.0, 5.0, 30.0, 120.0, 600.0)
WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
# A receiver answering these is asked again later, as the upstreams do.
RETRY_STATUSES = frozenset({408, 409, 425, 429})
CONTROL_PREFIX = "/_sandbox/"

_ACTION_LINE = re.compile(r"escalier:action=([^\s{}\[\]|<>\"'`]+)")
_PARAMETER = re.compile(r"\{(\w+)\}")

# What a handler answers: a status, headers, and a JSON-able body, raw bytes, or None (empty).
Response = tuple[int, Mapping[str, str], Any]
Handler = Callable[["Request"], Response]


@dataclass(frozen=True)
class Request:
    """One HTTP request as a route handler sees it."""

    method: str
    path: str
    query: Mapping[str, list[str]]
    headers: Mapping[str, str]
    body: bytes
    params: Mapping[str, str] = field(default_factory=dict)
    template: str = ""

    def arg(self, name: str, default: str | None = None) -> str | None:
        """The first value of query parameter ``name``."""
        values = self.query.get(name)
        return values[0] if values else default

    def args(self, name: str) -> list[str]:
        """Every value of query parameter ``name``, comma-separated ones split."""
        return [
            part.strip() for value in self.query.get(name, []) for part in value.split(",") if part.strip()
        ]

    def json(self) -> Any:
        """The body parsed as JSON; None when it is empty.

        :raises ValueError: when the body is not JSON.
        """
        if not self.body.strip():
            return None
        return json.loads(self.body)


class HTTPProblem(Exception):
    """Raised by a handler to answer with an error in the upstream's shape."""

    def __init__(self, status: int, message: str, *, errors: Mapping[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.errors = dict(errors or {})


@dataclass
class Fault:
    """The next ``count`` matching API requests get this answer (or this delay first)."""

    status: int | None = None
    count: int = 1
    retry_after: float | None = None
    method: str | None = None
    path: str | None = None
    delay: float | None = None

    def matches(self, method: str, path: str) -> bool:
        """Whether a request to ``method path`` is one this fault is for."""
        if self.method and self.method.upper() != method:
            return False
        return not self.path or fnmatch.fnmatchcase(path, self.path)


@dataclass
class Delivery:
    """One webhook: what was sent, and what became of each attempt."""

    id: str
    event: str
    url: str | None
    body: bytes
    headers: dict[str, str]
    state: str = "pending"  # pending, delivered, given_up, dropped, unsent
    attempts: list[dict[str, Any]] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        """The delivery as the control API shows it."""
        return {
            "id": self.id,
            "event": self.event,
            "url": self.url,
            "state": self.state,
            "statuses": [attempt.get("status") for attempt in self.attempts],
            "attempts": list(self.attempts),
        }


@dataclass(frozen=True)
class _Route:
    method: str
    template: str
    pattern: re.Pattern[str]
    handler: Handler


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


class Sandbox:
    """An upstream in memory: register routes, serve them, send webhooks like the upstream.

    Subclasses set their own attributes, then call ``super().__init__``, which calls
    :meth:`register_routes` and :meth:`seed`. Hooks to override: :meth:`register_routes`,
    :meth:`seed`, :meth:`authenticate`, :meth:`error`, :meth:`sign`, :meth:`retry_headers`,
    :meth:`policy_snippet`.
    """

    name = "sandbox"
    webhook_timeout = 10.0

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        webhook_url: str | None = None,
        webhook_secret: str | None = None,
        webhook_retry_delays: Sequence[float] = DEFAULT_RETRY_DELAYS,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.webhook_url = webhook_url
        self.webhook_secret = webhook_secret
        self.webhook_retry_delays = tuple(float(d) for d in webhook_retry_delays)
        self._clock = clock or (lambda: datetime.now(UTC))
        self.lock = threading.RLock()
        self._routes: list[_Route] = []
        self._control: list[_Route] = []
        self._server: _Server | None = None
        self._serve_thread: threading.Thread | None = None
        self._sender: threading.Thread | None = None
        self._stopping = threading.Event()
        self._outbox: queue.Queue[Delivery | None] = queue.Queue()
        self._idle = threading.Condition()
        self._in_flight = 0
        self._listeners: list[Callable[[Delivery], None]] = []
        self._clear_base_state()
        self._register_control_routes()
        self.register_routes()
        self.seed()

    # --- hooks ---------------------------------------------------------------------------------

    def register_routes(self) -> None:
        """Add the upstream's routes with :meth:`add_route`."""

    def seed(self) -> None:
        """(Re)create the in-memory data: called at construction and by :meth:`reset`."""

    def authenticate(self, request: Request) -> Response | None:
        """None to let an API request through, or the answer refusing it."""
        return None

    def error(self, status: int, message: str, *, errors: Mapping[str, str] | None = None) -> Response:
        """An error answer in the upstream's shape."""
        return status, {}, {"error": message, "errors": dict(errors or {})}

    def sign(self, body: bytes, headers: Mapping[str, str]) -> dict[str, str]:
        """The headers of a webhook delivery with the upstream's signature added."""
        return dict(headers)

    def retry_headers(self, attempt: int) -> dict[str, str]:
        """Headers the upstream adds to a retry (``attempt`` counts from 1 for the first retry)."""
        return {}

    def policy_snippet(self) -> str:
        """What to put in the policy file (and export) to point Escalier at this sandbox."""
        return ""

    # --- lifecycle -----------------------------------------------------------------------------

    def start(self) -> Self:
        """Listen (port 0: a free port) and start sending webhooks; returns self."""
        if self._server is not None:
            return self
        sandbox = self

        class _Handler(_RequestHandler):
            owner = sandbox

        self._server = _Server((self.host, self.port), _Handler)
        self.port = self._server.server_address[1]
        self._stopping.clear()
        self._serve_thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.1},
            name=f"{self.name}-sandbox-http",
            daemon=True,
        )
        self._serve_thread.start()
        self._sender = threading.Thread(
            target=self._send_loop, name=f"{self.name}-sandbox-webhooks", daemon=True
        )
        self._sender.start()
        return self

    def stop(self) -> None:
        """Stop serving and sending; pending webhooks are abandoned."""
        self._stopping.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._sender is not None:
            self._outbox.put(None)
            self._sender.join(timeout=self.webhook_timeout + 1)
            self._sender = None
        if self._serve_thread is not None:
            self._serve_thread.join(timeout=5)
            self._serve_thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """The base URL, e.g. ``http://127.0.0.1:PORT``."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def now(self) -> datetime:
        """The sandbox's clock (timezone-aware)."""
        return self._clock()

    # --- routes --------------------------------------------------------------------------------

    def add_route(self, method: str, template: str, handler: Handler) -> None:
        """Serve ``method template`` (``{name}`` matches one path segment) with ``handler``."""
        self._routes.append(_route(method, template, handler))

    def _register_control_routes(self) -> None:
        for method, template, handler in (
            ("GET", "/_sandbox/calls", self._control_calls),
            ("POST", "/_sandbox/reset", self._control_reset),
            ("POST", "/_sandbox/faults", self._control_faults),
            ("DELETE", "/_sandbox/faults", self._control_clear_faults),
            ("POST", "/_sandbox/webhooks", self._control_webhooks),
            ("GET", "/_sandbox/deliveries", self._control_deliveries),
            ("GET", "/_sandbox/keys", self._control_keys),
            ("POST", "/_sandbox/rate_limit", self._control_rate_limit),
        ):
            self._control.append(_route(method, template, handler))

    def dispatch(self, method: str, target: str, headers: Mapping[str, str], body: bytes) -> Response:
        """Answer one request: control API, faults, budget, authentication, then the route table."""
        parts = urlsplit(target)
        path = parts.path or "/"
        request = Request(method, path, parse_qs(parts.query, keep_blank_values=True), headers, body)
        if path.startswith(CONTROL_PREFIX):
            route, params = _match(self._control, method, path)
            if route is None:
                return 404, {}, {"error": f"no control endpoint {method} {path}"}
            try:
                return route.handler(_with(request, params, route.template))
            except (ValueError, TypeError, KeyError) as exc:
                return 400, {}, {"error": f"bad control request: {exc}"}
        route, params = _match(self._routes, method, path)
        with self.lock:
            self._calls[f"{method} {route.template}" if route else f"{method} {path}"] += 1
            fault = self._take_fault(method, path)
        if fault is not None and fault.delay:
            # Slow answers sleep outside the lock so that other requests are not held up.
            time.sleep(fault.delay)
        if fault is not None and fault.status:
            return self._fault_response(fault)
        refused = self.authenticate(request)
        if refused is not None:
            return refused
        if route is None:
            allowed = any(r.pattern.fullmatch(path) for r in self._routes)
            if allowed:
                return self.error(405, f"Method {method} is not allowed here.")
            return self.error(404, f"No resource at {path} in this sandbox.")
        is_write = method in WRITE_METHODS
        with self.lock:
            if is_write:
                limited = self._spend_budget()
                if limited is not None:
                    return limited
            try:
                status, out_headers, out_body = route.handler(_with(request, params, route.template))
            except HTTPProblem as problem:
                status, out_headers, out_body = self.error(
                    problem.status, problem.message, errors=problem.errors
                )
            if is_write and 200 <= status < 300:
                for key in _action_keys(request):
                    self._key_counts[key] += 1
            out_headers = {**self._budget_headers(), **out_headers}
        return status, out_headers, out_body

    # --- control -------------------------------------------------------------------------------

    def _clear_base_state(self) -> None:
        self._calls: Counter[str] = Counter()
        self._faults: list[Fault] = []
        self._deliveries: list[Delivery] = []
        self._drop = 0
        self._key_counts: Counter[str] = Counter()
        self._budget: tuple[int, float] | None = None
        self._spent: deque[float] = deque()

    def reset(self) -> None:
        """Forget data, counts, faults, budget and deliveries; seed the data again."""
        with self.lock:
            while True:
                try:
                    self._outbox.get_nowait()
                except queue.Empty:
                    break
                self._done_one()
            self._clear_base_state()
            self.seed()

    def calls(self) -> dict[str, int]:
        """API requests received, per ``METHOD /route/{template}`` (control calls excluded)."""
        with self.lock:
            return dict(self._calls)

    def inject_fault(
        self,
        status: int | None = None,
        *,
        count: int = 1,
        retry_after: float | None = None,
        method: str | None = None,
        path: str | None = None,
        delay: float | None = None,
    ) -> Fault:
        """Answer the next ``count`` matching API requests with ``status`` (after ``delay`` seconds).

        ``path`` is an fnmatch pattern (``/rest/api/2/issue/*``); a 429 carries ``Retry-After``
        (``retry_after``, default 1 second). Without ``status`` the request is only slowed down.
        """
        if status is None and not delay:
            raise ValueError("a fault needs a status, a delay, or both")
        if count < 1:
            raise ValueError("count must be at least 1")
        fault = Fault(status, count, retry_after, method.upper() if method else None, path, delay)
        with self.lock:
            self._faults.append(fault)
        return fault

    def clear_faults(self) -> None:
        """Forget every fault not yet used."""
        with self.lock:
            self._faults.clear()

    def _take_fault(self, method: str, path: str) -> Fault | None:
        for fault in self._faults:
            if fault.matches(method, path):
                fault.count -= 1
                if fault.count <= 0:
                    self._faults.remove(fault)
                return fault
        return None

    def _fault_response(self, fault: Fault) -> Response:
        assert fault.status is not None
        headers: dict[str, str] = {}
        if fault.status == 429 or fault.retry_after is not None:
            headers["Retry-After"] = _seconds(fault.retry_after if fault.retry_after is not None else 1)
        message = "Rate limit exceeded." if fault.status == 429 else f"Injected fault: HTTP {fault.status}."
        status, more, body = self.error(fault.status, message)
        return status, {**more, **headers}, body

    def rate_limit(self, writes: int | None, per_seconds: float = 60.0) -> None:
        """Allow ``writes`` write requests per ``per_seconds``; over it, 429 with ``Retry-After``.

        ``None`` lifts the budget.
        """
        with self.lock:
            self._budget = None if writes is None else (int(writes), float(per_seconds))
            self._spent.clear()

    def _spend_budget(self) -> Response | None:
        if self._budget is None:
            return None
        writes, window = self._budget
        # The sandbox's own clock: a test that compresses time compresses the budget with it.
        now = self.now().timestamp()
        while self._spent and self._spent[0] <= now - window:
            self._spent.popleft()
        if len(self._spent) >= writes:
            wait = (self._spent[0] + window - now) if self._spent else window
            status, headers, body = self.error(429, "Rate limit exceeded.")
            return status, {**headers, **self._budget_headers(), "Retry-After": _seconds(wait)}, body
        self._spent.append(now)
        return None

    def _budget_headers(self) -> dict[str, str]:
        if self._budget is None:
            return {}
        writes, _ = self._budget
        return {
            "X-RateLimit-Limit": str(writes),
            "X-RateLimit-Remaining": str(max(0, writes - len(self._spent))),
        }

    def key_counts(self) -> dict[str, int]:
        """How many successful write requests carried each action key."""
        with self.lock:
            return dict(self._key_counts)

    def duplicate_keys(self) -> list[str]:
        """The action keys that more than one successful write carried (applied twice)."""
        with self.lock:
            return sorted(key for key, n in self._key_counts.items() if n > 1)

    def drop_webhooks(self, n: int) -> None:
        """The next ``n`` webhooks are silently not sent (recorded as ``dropped``)."""
        with self.lock:
            self._drop = max(0, int(n))

    def configure_webhooks(self, *, url: str | None = None, secret: str | None = None) -> None:
        """Point the webhooks at ``url`` and/or sign them with ``secret`` from now on."""
        with self.lock:
            if url is not None:
                self.webhook_url = url or None
            if secret is not None:
                self.webhook_secret = secret or None

    def _control_calls(self, request: Request) -> Response:
        calls = self.calls()
        return 200, {}, {"calls": calls, "total": sum(calls.values())}

    def _control_deliveries(self, request: Request) -> Response:
        return 200, {}, {"deliveries": self.deliveries()}

    def _control_keys(self, request: Request) -> Response:
        return 200, {}, {"keys": self.key_counts(), "duplicates": self.duplicate_keys()}

    def _control_clear_faults(self, request: Request) -> Response:
        self.clear_faults()
        return 204, {}, None

    def _control_reset(self, request: Request) -> Response:
        self.reset()
        return 204, {}, None

    def _control_faults(self, request: Request) -> Response:
        spec = request.json() or {}
        if not isinstance(spec, dict):
            raise ValueError("a fault is a JSON object")
        fault = self.inject_fault(
            spec.get("status"),
            count=int(spec.get("count", 1)),
            retry_after=spec.get("retry_after"),
            method=spec.get("method"),
            path=spec.get("path"),
            delay=spec.get("delay"),
        )
        return 201, {}, {"fault": fault.__dict__}

    def _control_webhooks(self, request: Request) -> Response:
        spec = request.json() or {}
        if not isinstance(spec, dict):
            raise ValueError("a JSON object with drop, url or secret")
        if "drop" in spec:
            self.drop_webhooks(int(spec["drop"]))
        if "url" in spec or "secret" in spec:
            self.configure_webhooks(url=spec.get("url"), secret=spec.get("secret"))
        return 200, {}, {"url": self.webhook_url, "signed": bool(self.webhook_secret), "drop": self._drop}

    def _control_rate_limit(self, request: Request) -> Response:
        spec = request.json() or {}
        self.rate_limit(spec.get("writes"), float(spec.get("per_seconds", 60.0)))
        return 200, {}, {"writes": spec.get("writes"), "per_seconds": float(spec.get("per_seconds", 60.0))}

    # --- webhooks ------------------------------------------------------------------------------

    def send_webhook(
        self,
        event_name: str,
        payload: Mapping[str, Any],
        headers: Mapping[str, str],
        *,
        delivery_id: str | None = None,
    ) -> Delivery:
        """Queue a delivery of ``payload``; the sender thread signs and POSTs it, in order.

        ``headers`` go out unchanged on every attempt (the upstream's delivery id among them), with
        :meth:`sign` and :meth:`retry_headers` applied per attempt.
        """
        body = json.dumps(payload, separators=(",", ":")).encode()
        all_headers = {"Content-Type": "application/json; charset=utf-8", **headers}
        with self.lock:
            delivery = Delivery(
                delivery_id or str(uuid.uuid4()), event_name, self.webhook_url, body, all_headers
            )
            self._deliveries.append(delivery)
            if self._drop > 0:
                self._drop -= 1
                delivery.state = "dropped"
                return delivery
            if not self.webhook_url:
                delivery.state = "unsent"
                return delivery
        with self._idle:
            self._in_flight += 1
        self._outbox.put(delivery)
        return delivery

    def deliveries(self) -> list[dict[str, Any]]:
        """Every webhook so far: event, state, status per attempt."""
        with self.lock:
            return [d.as_json() for d in self._deliveries]

    def delivery_bodies(self) -> list[tuple[str, dict[str, Any]]]:
        """Every webhook so far as ``(event, payload)``, whatever became of it."""
        with self.lock:
            return [(d.event, json.loads(d.body)) for d in self._deliveries]

    def wait_for_deliveries(self, timeout: float = 5.0) -> bool:
        """Block until every queued webhook was delivered or given up; False on timeout."""
        deadline = time.monotonic() + timeout
        with self._idle:
            while self._in_flight > 0:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._idle.wait(left)
        return True

    def on_delivery(self, callback: Callable[[Delivery], None]) -> None:
        """Call ``callback`` after each delivery is delivered or given up."""
        self._listeners.append(callback)

    def _done_one(self) -> None:
        with self._idle:
            self._in_flight -= 1
            self._idle.notify_all()

    def _send_loop(self) -> None:
        while True:
            delivery = self._outbox.get()
            if delivery is None or self._stopping.is_set():
                return
            try:
                self._deliver(delivery)
            finally:
                self._done_one()
            for listener in list(self._listeners):
                listener(delivery)

    def _deliver(self, delivery: Delivery) -> None:
        delays = iter(self.webhook_retry_delays)
        attempt = 0
        while True:
            with self.lock:
                url, secret = self.webhook_url, self.webhook_secret
            if url is None:
                delivery.state = "given_up"
                return
            headers = {**delivery.headers, **(self.retry_headers(attempt) if attempt else {})}
            headers = self.sign(delivery.body, headers) if secret else headers
            status, error = _post(url, delivery.body, headers, self.webhook_timeout)
            with self.lock:
                delivery.url = url
                delivery.attempts.append({"status": status, "error": error, "at": self.now().isoformat()})
            if status is not None and 200 <= status < 300:
                delivery.state = "delivered"
                return
            retry = status is None or status in RETRY_STATUSES or status >= 500
            delay = next(delays, None) if retry else None
            if delay is None:
                delivery.state = "given_up"
                return
            if self._stopping.wait(delay):
                delivery.state = "given_up"
                return
            attempt += 1


class _RequestHandler(BaseHTTPRequestHandler):
    owner: Sandbox
    protocol_version = "HTTP/1.1"
    server_version = "EscalierSandbox/1"

    def _handle(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        if len(body) < length:
            # The client went away mid-request: act on nothing, as the real APIs do.
            self.close_connection = True
            return
        headers = {k: v for k, v in self.headers.items()}
        try:
            status, out_headers, out_body = self.owner.dispatch(
                self.command, self.path, _Headers(headers), body
            )
        except Exception as exc:  # a sandbox bug answers 500 rather than drop the connection
            status, out_headers, out_body = 500, {}, {"error": f"sandbox error: {exc!r}"}
        if out_body is None:
            payload = b""
        elif isinstance(out_body, bytes):
            payload = out_body
        else:
            payload = json.dumps(out_body).encode()
        self.send_response(status)
        if payload and not any(k.lower() == "content-type" for k in out_headers):
            self.send_header("Content-Type", "application/json;charset=UTF-8")
        for name, value in out_headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = _handle

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the sandbox's own output says what happened."""


class _Headers(dict):
    """Request headers, looked up without regard to case."""

    def __init__(self, headers: Mapping[str, str]):
        super().__init__({k.lower(): v for k, v in headers.items()})

    def get(self, key: str, default: Any = None) -> Any:  # type: ignore[override]
        return super().get(key.lower(), default)

    def __getitem__(self, key: str) -> str:
        return super().__getitem__(key.lower())

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and super().__contains__(key.lower())


def _route(method: str, template: str, handler: Handler) -> _Route:
    regex = ""
    last = 0
    for match in _PARAMETER.finditer(template):
        regex += re.escape(template[last : match.start()]) + f"(?P<{match.group(1)}>[^/]+)"
        last = match.end()
    regex += re.escape(template[last:])
    return _Route(method.upper(), template, re.compile(regex), handler)


def _match(routes: list[_Route], method: str, path: str) -> tuple[_Route | None, dict[str, str]]:
    for route in routes:
        if route.method != method:
            continue
        found = route.pattern.fullmatch(path)
        if found:
            return route, {k: unquote(v) for k, v in found.groupdict().items()}
    return None, {}


def _with(request: Request, params: dict[str, str], template: str) -> Request:
    return Request(
        request.method, request.path, request.query, request.headers, request.body, params, template
    )


def _action_keys(request: Request) -> set[str]:
    keys = {k.strip() for k in (request.headers.get(ACTION_KEYS_HEADER) or "").split(",") if k.strip()}
    try:
        parsed = request.json()
    except ValueError:
        parsed = None
    for text in _strings(parsed):
        keys.update(_ACTION_LINE.findall(text))
    return keys


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


def _seconds(value: float) -> str:
    return str(max(1, math.ceil(value)))


def _post(url: str, body: bytes, headers: Mapping[str, str], timeout: float) -> tuple[int | None, str | None]:
    request = urllib.request.Request(url, data=body, headers=dict(headers), method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            answer.read()
            return answer.status, None
    except urllib.error.HTTPError as exc:
        exc.read()
        return exc.code, None
    except (urllib.error.URLError, OSError) as exc:
        return None, f"{type(exc).__name__}: {getattr(exc, 'reason', exc)}"


def basic_credentials(headers: Mapping[str, str]) -> tuple[str, str] | None:
    """The ``(user, password)`` of an ``Authorization: Basic`` header, if there is one."""
    value = headers.get("Authorization") or ""
    scheme, _, encoded = value.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        user, sep, password = base64.b64decode(encoded.strip(), validate=True).decode().partition(":")
    except (ValueError, UnicodeDecodeError):
        return None
    return (user, password) if sep else None


def bearer_token(headers: Mapping[str, str]) -> str | None:
    """The token of an ``Authorization: Bearer`` header, if there is one."""
    scheme, _, token = (headers.get("Authorization") or "").partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


def run_sandbox(sandbox: Sandbox, *, out: TextIO) -> int:
    """Serve ``sandbox`` until Ctrl-C or SIGTERM, saying where and each webhook delivered."""
    stop = threading.Event()

    def on_term(signum: int, frame: object) -> None:
        stop.set()

    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, on_term)
    printing = threading.Lock()

    def say(line: str) -> None:
        with printing:
            print(line, file=out, flush=True)

    def delivered(delivery: Delivery) -> None:
        statuses = ", ".join(
            "error" if s is None else str(s) for s in (a.get("status") for a in delivery.attempts)
        )
        say(f"webhook {delivery.event}: {delivery.state} ({statuses or 'not sent'})")

    sandbox.on_delivery(delivered)
    try:
        sandbox.start()
        say(f"{sandbox.name} sandbox listening on {sandbox.url}")
        say(f"webhooks: {sandbox.webhook_url or 'none (start with --webhook-url to send them)'}")
        say("control API:")
        for line in (
            "GET  /_sandbox/calls         requests per endpoint",
            "GET  /_sandbox/deliveries    webhooks sent and their answers",
            "GET  /_sandbox/keys          action keys seen (duplicates: applied twice)",
            "POST /_sandbox/reset         back to the seeded data",
            'POST /_sandbox/faults        {"status": 429, "count": 2, "retry_after": 3, "path": "/rest/*"}',
            'POST /_sandbox/webhooks      {"drop": 1} or {"url": "...", "secret": "..."}',
            'POST /_sandbox/rate_limit    {"writes": 10, "per_seconds": 60}',
        ):
            say(f"  {line}")
        snippet = sandbox.policy_snippet()
        if snippet:
            say("")
            say(snippet.rstrip())
        say("")
        say("Ctrl-C to stop.")
        while not stop.wait(0.2):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        sandbox.stop()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    say("stopped")
    return 0
