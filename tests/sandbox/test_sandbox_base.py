"""The sandbox base: routes, control API, faults, budget, action keys, webhook deliveries."""

from __future__ import annotations

import hashlib
import hmac
import io
import json
import os
import signal
import socket
import threading
import time
from collections.abc import Iterator, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import requests

from escalier.connectors._sandbox import Request, Response, Sandbox, run_sandbox
from escalier.runtime.testing import Upstream

FAST = (0.05, 0.05)


class ThingsSandbox(Sandbox):
    """A tiny upstream: things by id, a webhook per created thing, an error shape of its own."""

    name = "things"

    def register_routes(self) -> None:
        self.add_route("GET", "/api/things/{thing_id}", self._get)
        self.add_route("POST", "/api/things", self._post)
        self.add_route("PUT", "/api/things/{thing_id}", self._put)

    def seed(self) -> None:
        self.things: dict[str, dict[str, Any]] = {"1": {"id": "1", "name": "seeded"}}

    def error(self, status: int, message: str, *, errors: Mapping[str, str] | None = None) -> Response:
        return status, {}, {"problem": message}

    def sign(self, body: bytes, headers: Mapping[str, str]) -> dict[str, str]:
        digest = hmac.new((self.webhook_secret or "").encode(), body, hashlib.sha256).hexdigest()
        return {**headers, "X-Signature": digest}

    def retry_headers(self, attempt: int) -> dict[str, str]:
        return {"X-Retry": str(attempt)}

    def _get(self, request: Request) -> Response:
        thing = self.things.get(request.params["thing_id"])
        return (200, {}, thing) if thing else self.error(404, "no such thing")

    def _post(self, request: Request) -> Response:
        body = request.json() or {}
        if not body.get("name"):
            return self.error(400, "a thing needs a name")
        thing = {"id": str(len(self.things) + 1), "name": body["name"]}
        self.things[thing["id"]] = thing
        self.send_webhook("thing.created", thing, {"X-Delivery": thing["id"]}, delivery_id=f"d-{thing['id']}")
        return 201, {"Location": f"/api/things/{thing['id']}"}, thing

    def _put(self, request: Request) -> Response:
        thing = self.things[request.params["thing_id"]]
        thing.update(request.json() or {})
        return 204, {}, None


class Receiver:
    """A webhook receiver on 127.0.0.1 answering the statuses it is told to, then 200."""

    def __init__(self) -> None:
        self.received: list[tuple[dict[str, str], bytes]] = []
        self.answers: list[int] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                receiver.received.append((dict(self.headers.items()), body))
                status = receiver.answers.pop(0) if receiver.answers else 200
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                """Quiet: the test reads what it needs from the receiver."""

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        ).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    found = Receiver()
    yield found
    found.close()


@pytest.fixture
def sandbox(receiver: Receiver) -> Iterator[ThingsSandbox]:
    with ThingsSandbox(
        webhook_url=receiver.url, webhook_secret="s3cret", webhook_retry_delays=FAST
    ) as started:
        yield started


def test_routes_answer_with_path_parameters_and_the_upstream_error_shape(sandbox: ThingsSandbox) -> None:
    assert requests.get(f"{sandbox.url}/api/things/1", timeout=5).json() == {"id": "1", "name": "seeded"}
    missing = requests.get(f"{sandbox.url}/api/nothing/here", timeout=5)
    assert missing.status_code == 404 and "problem" in missing.json()
    wrong_method = requests.delete(f"{sandbox.url}/api/things/1", timeout=5)
    assert wrong_method.status_code == 405 and "problem" in wrong_method.json()
    created = requests.post(f"{sandbox.url}/api/things", json={"name": "new"}, timeout=5)
    assert created.status_code == 201 and created.headers["Location"] == "/api/things/2"


def test_calls_are_counted_by_route_template_without_control_calls(sandbox: ThingsSandbox) -> None:
    for thing_id in ("1", "1", "2"):
        requests.get(f"{sandbox.url}/api/things/{thing_id}", timeout=5)
    requests.post(f"{sandbox.url}/api/things", json={"name": "x"}, timeout=5)
    requests.get(f"{sandbox.url}/_sandbox/deliveries", timeout=5)
    answer = requests.get(f"{sandbox.url}/_sandbox/calls", timeout=5).json()
    assert answer == {"calls": {"GET /api/things/{thing_id}": 3, "POST /api/things": 1}, "total": 4}
    assert sandbox.calls() == answer["calls"]


def test_faults_answer_the_next_matching_requests_then_stop(sandbox: ThingsSandbox) -> None:
    set_fault = requests.post(
        f"{sandbox.url}/_sandbox/faults",
        json={"status": 429, "count": 2, "retry_after": 7, "method": "GET", "path": "/api/things/*"},
        timeout=5,
    )
    assert set_fault.status_code == 201
    assert requests.post(f"{sandbox.url}/api/things", json={"name": "x"}, timeout=5).status_code == 201
    limited = [requests.get(f"{sandbox.url}/api/things/1", timeout=5) for _ in range(3)]
    assert [r.status_code for r in limited] == [429, 429, 200]
    assert limited[0].headers["Retry-After"] == "7" and limited[0].json() == {
        "problem": "Rate limit exceeded."
    }
    sandbox.inject_fault(503, path="/api/*")
    assert requests.get(f"{sandbox.url}/api/things/1", timeout=5).status_code == 503
    assert sandbox.calls()["GET /api/things/{thing_id}"] == 4


def test_a_delay_fault_slows_the_answer_and_can_make_a_client_time_out(sandbox: ThingsSandbox) -> None:
    sandbox.inject_fault(delay=0.3)
    started = time.monotonic()
    assert requests.get(f"{sandbox.url}/api/things/1", timeout=5).status_code == 200
    assert time.monotonic() - started >= 0.3
    sandbox.inject_fault(500, delay=0.5)
    with pytest.raises(requests.exceptions.ReadTimeout):
        requests.get(f"{sandbox.url}/api/things/1", timeout=0.2)
    with pytest.raises(ValueError):
        sandbox.inject_fault()


def test_the_write_budget_answers_429_with_the_seconds_until_the_window_frees(sandbox: ThingsSandbox) -> None:
    sandbox.rate_limit(2, per_seconds=30)
    statuses = [
        requests.post(f"{sandbox.url}/api/things", json={"name": f"t{n}"}, timeout=5) for n in range(3)
    ]
    assert [r.status_code for r in statuses] == [201, 201, 429]
    assert 1 <= int(statuses[2].headers["Retry-After"]) <= 30
    assert statuses[1].headers["X-RateLimit-Remaining"] == "0"
    assert requests.get(f"{sandbox.url}/api/things/1", timeout=5).status_code == 200  # reads are free
    requests.post(f"{sandbox.url}/_sandbox/rate_limit", json={"writes": None}, timeout=5)
    assert requests.post(f"{sandbox.url}/api/things", json={"name": "free"}, timeout=5).status_code == 201


def test_the_budget_window_frees_after_its_period(sandbox: ThingsSandbox) -> None:
    sandbox.rate_limit(1, per_seconds=0.3)
    assert requests.post(f"{sandbox.url}/api/things", json={"name": "a"}, timeout=5).status_code == 201
    assert requests.post(f"{sandbox.url}/api/things", json={"name": "b"}, timeout=5).status_code == 429
    time.sleep(0.35)
    assert requests.post(f"{sandbox.url}/api/things", json={"name": "c"}, timeout=5).status_code == 201


def test_action_keys_are_counted_per_successful_write_and_duplicates_named(sandbox: ThingsSandbox) -> None:
    headers = {"X-Escalier-Action-Keys": "jira:default:SUP-1:1, jira:default:SUP-1:2"}
    requests.post(f"{sandbox.url}/api/things", json={"name": "a"}, headers=headers, timeout=5)
    # The same key in a header and in a comment line of one request counts once.
    body = {"name": "b", "note": "Escalated.\nescalier:action=jira:default:SUP-1:3"}
    requests.put(
        f"{sandbox.url}/api/things/1",
        json=body,
        headers={"X-Escalier-Action-Keys": "jira:default:SUP-1:3"},
        timeout=5,
    )
    requests.put(
        f"{sandbox.url}/api/things/1", json={"note": "again\nescalier:action=jira:default:SUP-1:3"}, timeout=5
    )
    # A refused write applied nothing: its keys do not count.
    requests.post(
        f"{sandbox.url}/api/things", json={}, headers={"X-Escalier-Action-Keys": "refused"}, timeout=5
    )
    assert sandbox.key_counts() == {
        "jira:default:SUP-1:1": 1,
        "jira:default:SUP-1:2": 1,
        "jira:default:SUP-1:3": 2,
    }
    assert sandbox.duplicate_keys() == ["jira:default:SUP-1:3"]
    assert requests.get(f"{sandbox.url}/_sandbox/keys", timeout=5).json()["duplicates"] == [
        "jira:default:SUP-1:3"
    ]


def test_webhooks_are_signed_and_delivered_in_order(sandbox: ThingsSandbox, receiver: Receiver) -> None:
    for name in ("a", "b", "c"):
        requests.post(f"{sandbox.url}/api/things", json={"name": name}, timeout=5)
    assert sandbox.wait_for_deliveries(5)
    assert [json.loads(body)["name"] for _, body in receiver.received] == ["a", "b", "c"]
    headers, body = receiver.received[0]
    assert headers["X-Signature"] == hmac.new(b"s3cret", body, hashlib.sha256).hexdigest()
    assert headers["Content-Type"] == "application/json; charset=utf-8"
    assert [d["state"] for d in sandbox.deliveries()] == ["delivered"] * 3


def test_a_failed_delivery_is_retried_with_the_same_headers_until_it_lands(
    sandbox: ThingsSandbox, receiver: Receiver
) -> None:
    receiver.answers = [500, 429]
    requests.post(f"{sandbox.url}/api/things", json={"name": "a"}, timeout=5)
    requests.post(f"{sandbox.url}/api/things", json={"name": "b"}, timeout=5)
    assert sandbox.wait_for_deliveries(5)
    names = [json.loads(body)["name"] for _, body in receiver.received]
    assert names == ["a", "a", "a", "b"]  # in order: b waits for a
    assert {h["X-Delivery"] for h, _ in receiver.received[:3]} == {"2"}
    assert [h.get("X-Retry") for h, _ in receiver.received[:3]] == [None, "1", "2"]
    first = requests.get(f"{sandbox.url}/_sandbox/deliveries", timeout=5).json()["deliveries"][0]
    assert first["id"] == "d-2" and first["statuses"] == [500, 429, 200] and first["state"] == "delivered"


def test_a_delivery_is_given_up_when_retries_run_out_or_the_receiver_refuses(
    sandbox: ThingsSandbox, receiver: Receiver
) -> None:
    receiver.answers = [503, 503, 503, 400]
    requests.post(f"{sandbox.url}/api/things", json={"name": "a"}, timeout=5)
    requests.post(f"{sandbox.url}/api/things", json={"name": "b"}, timeout=5)
    assert sandbox.wait_for_deliveries(5)
    assert [(d["statuses"], d["state"]) for d in sandbox.deliveries()] == [
        ([503, 503, 503], "given_up"),  # two retries configured
        ([400], "given_up"),  # a 400 is not retried
    ]


def test_an_unreachable_receiver_is_retried_then_given_up(receiver: Receiver) -> None:
    closed = Receiver()
    url = closed.url
    closed.close()
    with ThingsSandbox(webhook_url=url, webhook_retry_delays=FAST) as sandbox:
        requests.post(f"{sandbox.url}/api/things", json={"name": "a"}, timeout=5)
        assert sandbox.wait_for_deliveries(5)
        (delivery,) = sandbox.deliveries()
        assert delivery["statuses"] == [None, None, None] and delivery["state"] == "given_up"
        assert delivery["attempts"][0]["error"]


def test_dropped_and_repointed_webhooks(sandbox: ThingsSandbox, receiver: Receiver) -> None:
    requests.post(f"{sandbox.url}/_sandbox/webhooks", json={"drop": 1}, timeout=5)
    requests.post(f"{sandbox.url}/api/things", json={"name": "dropped"}, timeout=5)
    requests.post(f"{sandbox.url}/api/things", json={"name": "sent"}, timeout=5)
    assert sandbox.wait_for_deliveries(5)
    assert [json.loads(body)["name"] for _, body in receiver.received] == ["sent"]
    assert [d["state"] for d in sandbox.deliveries()] == ["dropped", "delivered"]
    other = Receiver()
    try:
        requests.post(f"{sandbox.url}/_sandbox/webhooks", json={"url": other.url, "secret": "new"}, timeout=5)
        requests.post(f"{sandbox.url}/api/things", json={"name": "elsewhere"}, timeout=5)
        assert sandbox.wait_for_deliveries(5)
        ((headers, body),) = other.received
        assert headers["X-Signature"] == hmac.new(b"new", body, hashlib.sha256).hexdigest()
    finally:
        other.close()


def test_reset_forgets_everything_and_seeds_again(sandbox: ThingsSandbox) -> None:
    requests.post(
        f"{sandbox.url}/api/things", json={"name": "x"}, headers={"X-Escalier-Action-Keys": "k"}, timeout=5
    )
    sandbox.inject_fault(500, count=5)
    sandbox.rate_limit(1, 60)
    sandbox.drop_webhooks(3)
    assert requests.post(f"{sandbox.url}/_sandbox/reset", timeout=5).status_code == 204
    assert sandbox.calls() == {} and sandbox.key_counts() == {} and sandbox.deliveries() == []
    assert sorted(sandbox.things) == ["1"]
    assert requests.get(f"{sandbox.url}/api/things/1", timeout=5).status_code == 200
    assert requests.post(f"{sandbox.url}/api/things", json={"name": "y"}, timeout=5).status_code == 201
    assert requests.post(f"{sandbox.url}/api/things", json={"name": "z"}, timeout=5).status_code == 201
    assert sandbox.wait_for_deliveries(5)
    assert [d["state"] for d in sandbox.deliveries()] == ["delivered", "delivered"]


def test_bad_control_requests_are_refused(sandbox: ThingsSandbox) -> None:
    assert requests.post(f"{sandbox.url}/_sandbox/faults", json={"count": 2}, timeout=5).status_code == 400
    assert requests.get(f"{sandbox.url}/_sandbox/nothing", timeout=5).status_code == 404


def test_without_a_webhook_url_deliveries_are_recorded_unsent() -> None:
    with ThingsSandbox() as sandbox:
        requests.post(f"{sandbox.url}/api/things", json={"name": "a"}, timeout=5)
        assert sandbox.wait_for_deliveries(1)
        assert [d["state"] for d in sandbox.deliveries()] == ["unsent"]


def test_run_sandbox_serves_until_sigterm_and_says_what_it_delivered(receiver: Receiver) -> None:
    out = io.StringIO()
    sandbox = ThingsSandbox(webhook_url=receiver.url, webhook_retry_delays=FAST)

    def drive() -> None:
        deadline = time.monotonic() + 5
        while "listening on" not in out.getvalue() and time.monotonic() < deadline:
            time.sleep(0.02)
        requests.post(f"{sandbox.url}/api/things", json={"name": "a"}, timeout=5)
        sandbox.wait_for_deliveries(5)
        time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGTERM)

    driver = threading.Thread(target=drive, daemon=True)
    driver.start()
    assert run_sandbox(sandbox, out=out) == 0
    driver.join(5)
    text = out.getvalue()
    assert f"things sandbox listening on {sandbox.url}" in text
    assert "/_sandbox/faults" in text
    assert "webhook thing.created: delivered (200)" in text
    assert text.rstrip().endswith("stopped")
    with pytest.raises(requests.exceptions.ConnectionError):
        requests.get(f"{sandbox.url}/api/things/1", timeout=1)


def _send_half_a_request(url: str, path: str) -> None:
    """Headers promising a 200-byte body, none of it, then the connection closed."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as client:
        client.sendall(f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
                       "Content-Length: 200\r\n\r\n".encode())


def test_a_client_that_dies_mid_request_changes_nothing(sandbox: ThingsSandbox) -> None:
    """A worker killed while sending: the sandbox acts on nothing, as the real APIs do."""
    _send_half_a_request(sandbox.url, "/api/things")
    assert requests.get(f"{sandbox.url}/api/things/2", timeout=5).status_code == 404
    assert sandbox.things.keys() == {"1"}
    assert "POST /api/things" not in sandbox.calls()  # never taken for a request


def test_the_recording_upstream_records_no_half_request() -> None:
    with Upstream() as upstream:
        _send_half_a_request(upstream.url, "/tickets/T-1/actions")
        answer = requests.post(f"{upstream.url}/tickets/T-1/actions", json={"key": "k-1", "kind": "tag"},
                               timeout=5)
        assert answer.status_code == 201
        assert upstream.keys_by_ticket() == {"T-1": ["k-1"]}
