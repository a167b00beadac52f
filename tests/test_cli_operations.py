"""The operational commands: serve, db upgrade, status, dlq — run as an admin would."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
import requests


def run(*args: str, cwd=None, env=None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "escalier", *args], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=60)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_db_upgrade_status_and_dlq_on_a_fresh_store(tmp_path):
    url = f"sqlite:///{tmp_path / 'store.db'}"
    upgraded = run("db", "upgrade", "--db", url)
    assert upgraded.returncode == 0, upgraded.stderr
    assert "at revision 0003" in upgraded.stdout
    status = run("status", "--db", url, "--json")
    assert status.returncode == 0, status.stderr
    counts = json.loads(status.stdout)
    assert counts["open_by_tier"] == {} and counts["dead_letters"] == 0
    assert counts["invariant_violations"] == 0
    assert run("dlq", "list", "--db", url).stdout.strip() == "no dead letters"
    refused = run("dlq", "retry", "--db", url)
    assert refused.returncode == 2 and "--all" in refused.stderr
    assert run("dlq", "retry", "--all", "--db", url).stdout.strip() == "queued 0 dead letters again"


@pytest.mark.parametrize("command", [("db", "upgrade"), ("status",), ("dlq", "list")])
def test_a_store_that_cannot_be_used_is_a_sentence_not_a_stack_trace(tmp_path, command):
    bad_url = run(*command, "--db", "nonsense://somewhere")
    assert bad_url.returncode == 2
    assert "the store URL cannot be used" in bad_url.stderr and "Traceback" not in bad_url.stderr
    unopenable = run(*command, "--db", f"sqlite:///{tmp_path / 'missing' / 'store.db'}")
    assert unopenable.returncode == 1
    assert "the store could not be opened" in unopenable.stderr
    assert "Traceback" not in unopenable.stderr


def test_the_default_store_sits_beside_the_policy(tmp_path, example_policy_path):
    policy = tmp_path / "escalier.yaml"
    shutil.copy(example_policy_path, policy)
    env = {k: v for k, v in os.environ.items() if k != "ESCALIER_DB"}
    assert run("db", "upgrade", "--policy", str(policy), env=env).returncode == 0
    assert (tmp_path / "escalier.db").exists()


def test_serve_refuses_to_start_without_webhook_secrets(tmp_path, example_policy_path):
    policy = tmp_path / "escalier.yaml"
    shutil.copy(example_policy_path, policy)
    env = {k: v for k, v in os.environ.items() if "WEBHOOK_SECRET" not in k}
    result = run("serve", str(policy), "--bind", f"127.0.0.1:{free_port()}", env=env)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "JIRA_WEBHOOK_SECRET is not set" in result.stderr
    assert "ZENDESK_WEBHOOK_SECRET is not set" in result.stderr


def serve_setup(tmp_path, example_policy_path) -> tuple[Path, int, dict[str, str]]:
    """A copy of the example policy, a free port, and an environment with its secrets."""
    policy = tmp_path / "escalier.yaml"
    shutil.copy(example_policy_path, policy)
    env = {**os.environ, "JIRA_WEBHOOK_SECRET": "jira-secret", "ZENDESK_WEBHOOK_SECRET": "zd-secret",
           "ZENDESK_WEBHOOK_SECRET_PREVIOUS": "zd-old", "JIRA_API_TOKEN": "jira-token",
           "ZENDESK_API_TOKEN": "zd-token", "SMTP_PASSWORD": "smtp", "IMAP_PASSWORD": "imap"}
    env.pop("ESCALIER_DB", None)
    return policy, free_port(), env


@pytest.mark.slow
def test_serve_accepts_a_signed_webhook_and_stores_it(tmp_path, example_policy_path):
    policy, port, env = serve_setup(tmp_path, example_policy_path)
    server = subprocess.Popen([sys.executable, "-m", "escalier", "serve", str(policy), "--bind", f"127.0.0.1:{port}",
                               "--workers", "1", "--threads", "2"], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    try:
        base = f"http://127.0.0.1:{port}"
        # Gunicorn binds its socket before the worker has built the app, so early requests may be
        # refused or may wait: retry on either until a deadline that a loaded machine can meet.
        deadline = time.monotonic() + 60
        while True:
            try:
                if requests.get(f"{base}/readyz", timeout=5).status_code == 200:
                    break
            except requests.RequestException:
                pass
            if time.monotonic() > deadline or server.poll() is not None:
                pytest.fail(f"the receiver did not become ready: {server.poll()=}")
            time.sleep(0.1)
        body = json.dumps({"type": "zen:event-type:ticket.status_changed", "id": "evt-1",
                           "subject": "zen:ticket:42", "time": "2026-11-23T01:00:00Z",
                           "detail": {"id": "42", "status": "OPEN"}, "event": {}}).encode()
        stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        # The previous secret still verifies during rotation.
        signature = base64.b64encode(hmac.new(b"zd-old", stamp.encode() + body, hashlib.sha256).digest())
        headers = {"Content-Type": "application/json", "X-Zendesk-Webhook-Signature": signature.decode(),
                   "X-Zendesk-Webhook-Signature-Timestamp": stamp, "X-Zendesk-Webhook-Invocation-Id": "inv-1"}
        first = requests.post(f"{base}/webhooks/zendesk", data=body, headers=headers, timeout=5)
        again = requests.post(f"{base}/webhooks/zendesk", data=body, headers=headers, timeout=5)
        assert first.status_code == 202 and first.json()["status"] == "accepted"
        assert again.status_code == 200 and again.json()["status"] == "duplicate"
        metrics = requests.get(f"{base}/metrics", timeout=5).text
        assert 'escalier_webhooks_received_total{source="zendesk"}' in metrics
    finally:
        server.send_signal(signal.SIGTERM)
        server.communicate(timeout=30)
    assert server.returncode == 0
    with sqlite3.connect(tmp_path / "escalier.db") as db:
        rows = db.execute("SELECT source, delivery_id FROM inbox").fetchall()
    assert rows == [("zendesk", "inv-1")]


def listening_sockets(port: int) -> int:
    """How many sockets listen on 127.0.0.1:``port`` (from the kernel's table)."""
    wanted = f"0100007F:{port:04X}"
    with open("/proc/net/tcp") as table:
        next(table)
        return sum(1 for line in table if line.split()[1] == wanted and line.split()[3] == "0A")


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists("/proc/net/tcp"), reason="reads Linux's socket table")
def test_serve_gives_each_worker_its_socket_and_a_second_serve_on_the_port_is_refused(
    tmp_path, example_policy_path
):
    policy, port, env = serve_setup(tmp_path, example_policy_path)
    command = ["serve", str(policy), "--bind", f"127.0.0.1:{port}", "--workers", "2", "--threads", "2",
               "--no-worker"]
    server = subprocess.Popen([sys.executable, "-m", "escalier", *command], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while listening_sockets(port) < 2:
            if time.monotonic() > deadline or server.poll() is not None:
                pytest.fail(f"two workers did not listen: {server.poll()=}, {listening_sockets(port)=}")
            time.sleep(0.1)
        # With SO_REUSEPORT a second receiver would bind too and take half the connections.
        second = run(*command, env=env)
        assert second.returncode == 1 and "Traceback" not in second.stderr
        assert f"127.0.0.1:{port} is already in use" in second.stderr
        assert listening_sockets(port) == 2
    finally:
        server.send_signal(signal.SIGTERM)
        server.communicate(timeout=30)
    assert server.returncode == 0
