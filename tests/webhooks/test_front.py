"""The receiver under gunicorn, as clients reach it over TCP: slow clients, bodies over the limit
in any framing, requests gunicorn itself refuses, and what an instance leaves in $HOME."""

from __future__ import annotations

import http.client
import contextlib
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from webhook_support import JIRA_SECRET, jira_headers

pytestmark = pytest.mark.slow

LIMIT = 64 * 1024
DEADLINE = 1.5
THREADS = 4

SERVER = """
import sys
from escalier.plugins import get_plugin_manager
from escalier.webhooks import ReceiverSettings, create_app
from escalier.webhooks.serve import GunicornServer, gunicorn_options

port, db, limit, deadline, threads = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5])
settings = ReceiverSettings(store_url=f"sqlite:///{db}", secrets={("jira", "default"): (%r,)},
                            max_body_bytes=limit, create_schema=True)
options = gunicorn_options(bind=f"127.0.0.1:{port}", workers=1, threads=threads, log_level="warning")
options.update(escalier_request_deadline=deadline, escalier_max_body_bytes=limit)
GunicornServer(lambda: create_app(settings, plugin_manager=get_plugin_manager(load_entrypoints=False)),
               options).run()
""" % JIRA_SECRET


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def home(tmp_path) -> Path:
    """The server's $HOME: an empty folder of its own."""
    folder = tmp_path / "home"
    folder.mkdir()
    return folder


@pytest.fixture
def port(tmp_path, home) -> Iterator[int]:
    """A receiver under gunicorn (1 worker of 4 threads, 64 KiB bodies, 1.5 s request deadline)."""
    chosen = _free_port()
    env = {key: value for key, value in os.environ.items() if key != "XDG_RUNTIME_DIR"}
    env["HOME"] = str(home)
    server = subprocess.Popen(
        [sys.executable, "-c", SERVER, str(chosen), str(tmp_path / "escalier.db"), str(LIMIT),
         str(DEADLINE), str(THREADS)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            assert server.poll() is None, server.stderr.read().decode()[-2000:]
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", chosen),
                                                                        timeout=5) as probe:
                probe.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                if b" 200 " in probe.recv(1024):
                    break  # serving
            assert time.monotonic() < deadline, "the receiver did not start"
            time.sleep(0.1)
        yield chosen
    finally:
        server.terminate()
        try:
            server.wait(15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(5)
        server.stderr.close()


def _post(port: int, body: bytes, headers: dict[str, str], *, timeout: float = 5.0) -> tuple[int, dict]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request("POST", "/webhooks/jira", body=body, headers=headers)
        answer = connection.getresponse()
        return answer.status, json.loads(answer.read())
    finally:
        connection.close()


def _delivery(n: int) -> tuple[bytes, dict[str, str]]:
    body = json.dumps({"timestamp": int(time.time() * 1000), "webhookEvent": "jira:issue_updated",
                       "issue": {"id": str(n)}}).encode()
    return body, jira_headers(body, delivery=f"front-{n}")


def _read_all(client: socket.socket, timeout: float = 5.0) -> bytes:
    """Everything the server sends until it closes the connection."""
    client.settimeout(timeout)
    data = b""
    while True:
        try:
            chunk = client.recv(65536)
        except ConnectionResetError:
            break
        if not chunk:
            break
        data += chunk
    return data


def _json_answer(raw: bytes) -> tuple[int, str, dict]:
    head, _, body = raw.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    content_type = [line.split(b":", 1)[1].strip().decode() for line in head.split(b"\r\n")[1:]
                    if line.lower().startswith(b"content-type:")]
    return status, content_type[0] if content_type else "", json.loads(body) if body else {}


def test_slow_clients_hold_no_thread_and_valid_deliveries_keep_their_pace(port):
    slow = []
    try:
        # Three times as many slow clients as threads: some stop inside their headers, some
        # inside their body.
        for n in range(3 * THREADS):
            client = socket.create_connection(("127.0.0.1", port), timeout=5)
            if n % 2:
                client.sendall(b"POST /webhooks/jira HTTP/1.1\r\nHost: x\r\nContent-Ty")
            else:
                client.sendall(b"POST /webhooks/jira HTTP/1.1\r\nHost: x\r\nContent-Type: application/json"
                               b"\r\nContent-Length: 500\r\n\r\n{\"timestamp\": ")
            slow.append(client)
        time.sleep(0.3)  # the server has read what they sent
        for n in range(10):
            started = time.monotonic()
            status, answer = _post(port, *_delivery(n), timeout=DEADLINE * 2)
            assert (status, answer["status"]) == (202, "accepted")
            assert time.monotonic() - started < 1.0
    finally:
        for client in slow:
            client.close()


def test_a_client_too_slow_for_the_deadline_gets_a_json_408_and_is_disconnected(port):
    with socket.create_connection(("127.0.0.1", port)) as client:
        started = time.monotonic()
        client.sendall(b"POST /webhooks/jira HTTP/1.1\r\nHost: x\r\n")
        client.settimeout(0.4)
        # A byte now and then does not extend the deadline.
        with pytest.raises(TimeoutError):
            while True:
                client.sendall(b"X")
                client.recv(1024)
        raw = _read_all(client, timeout=DEADLINE + 3)
        waited = time.monotonic() - started
    status, content_type, answer = _json_answer(raw)
    assert (status, content_type, answer["error"]) == (408, "application/json", "request_timeout")
    assert DEADLINE - 0.1 <= waited < DEADLINE + 2.0


def test_a_connection_that_sends_nothing_is_closed_silently_after_the_deadline(port):
    with socket.create_connection(("127.0.0.1", port)) as client:
        started = time.monotonic()
        assert _read_all(client, timeout=DEADLINE + 3) == b""
        assert time.monotonic() - started < DEADLINE + 2.0


def test_a_declared_length_over_the_limit_is_a_413_before_the_body_is_sent(port):
    with socket.create_connection(("127.0.0.1", port)) as client:
        client.sendall(b"POST /webhooks/jira HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                       b"Content-Length: %d\r\n\r\n" % (LIMIT + 1))
        status, content_type, answer = _json_answer(_read_all(client))
    assert (status, content_type, answer["error"]) == (413, "application/json", "body_too_large")


def test_a_chunked_body_over_the_limit_is_a_413_and_one_under_it_is_stored(port):
    body, headers = _delivery(1)
    padded = body[:-1] + b', "pad": "' + b"x" * LIMIT + b'"}'
    head = (b"POST /webhooks/jira HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
            + b"".join(f"{k}: {v}\r\n".encode() for k, v in jira_headers(padded, delivery="big").items())
            + b"\r\n")
    with socket.create_connection(("127.0.0.1", port)) as client:
        client.sendall(head)
        for start in range(0, len(padded), 8192):
            piece = padded[start:start + 8192]
            try:
                client.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
            except (BrokenPipeError, ConnectionResetError):
                break  # refused before the end: the answer is waiting
        status, content_type, answer = _json_answer(_read_all(client))
    assert (status, content_type, answer["error"]) == (413, "application/json", "body_too_large")

    # Under the limit, in small chunks and with a trailer, it is taken as any other.
    head = (b"POST /webhooks/jira HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n"
            + b"".join(f"{k}: {v}\r\n".encode() for k, v in headers.items()) + b"\r\n")
    chunks = b"".join(b"%x;ext=1\r\n%s\r\n" % (len(body[i:i + 7]), body[i:i + 7]) for i in range(0, len(body), 7))
    with socket.create_connection(("127.0.0.1", port)) as client:
        client.sendall(head + chunks + b"0\r\nX-Trailer: t\r\n\r\n")
        status, _, answer = _json_answer(_read_all(client))
    assert (status, answer["status"]) == (202, "accepted")


def test_pipelined_and_kept_alive_requests_are_each_answered(port):
    requests = b""
    for n in (101, 102, 103):
        body, headers = _delivery(n)
        headers["Content-Length"] = str(len(body))
        requests += (b"POST /webhooks/jira HTTP/1.1\r\nHost: x\r\n"
                     + b"".join(f"{k}: {v}\r\n".encode() for k, v in headers.items()) + b"\r\n" + body)
    with socket.create_connection(("127.0.0.1", port)) as client:
        client.sendall(requests + b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        raw = _read_all(client)
    assert raw.count(b"HTTP/1.1 202 ") == 3 and raw.count(b"HTTP/1.1 200 ") == 1


@pytest.mark.parametrize(
    ("request_bytes", "status", "error"),
    [
        (b"POST /webhooks/jira?" + b"q" * 5000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414, "uri_too_long"),
        (b"POST /webhooks/jira HTTP/1.1\r\n" + b"".join(b"X-H%d: v\r\n" % n for n in range(150)) + b"\r\n",
         431, "headers_too_large"),
        (b"POST /webhooks/jira HTTP/1.1\r\nHost: x\r\nX-Big: " + b"v" * 9000 + b"\r\n\r\n", 431,
         "headers_too_large"),
        (b"NOT A REQUEST LINE\r\n\r\n", 400, "bad_request"),
        (b"POST /webhooks/jira HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}",
         400, "bad_request"),
        (b"POST /webhooks/jira HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: foo\r\n\r\n", 501,
         "unsupported_transfer_coding"),
    ],
    ids=["414", "431-count", "431-size", "400-line", "400-lengths", "501"],
)
def test_requests_gunicorn_refuses_are_answered_in_json(port, request_bytes, status, error):
    with socket.create_connection(("127.0.0.1", port)) as client:
        client.sendall(request_bytes)
        got, content_type, answer = _json_answer(_read_all(client))
    assert (got, content_type, answer["error"]) == (status, "application/json", error)
    assert answer["reason"]


def test_an_instance_leaves_no_control_socket_in_home(port, home):
    # Gunicorn's default would be $HOME/.gunicorn/gunicorn.ctl, shared by every instance of a user.
    status, _ = _post(port, *_delivery(7))
    assert status == 202
    assert list(home.iterdir()) == []
