"""`escalier serve --dashboard`: the dashboard under gunicorn, as an admin starts it."""

from __future__ import annotations

import contextlib

import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import requests

pytestmark = pytest.mark.timeout(90)

TOKEN = "a-token-for-the-serve-test"
POLICY = """\
name: serve with a dashboard
default_calendar: office
calendars:
  office: {timezone: Europe/Berlin, hours: {mon-fri: "09:00-17:00"}}
tiers:
  - {level: 1, name: General support, sla: {resolve: 8h}}
  - {level: 2, name: Specialists}
"""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def serve(tmp_path, *extra: str, token: str | None) -> subprocess.Popen[str]:
    policy = tmp_path / "escalier.yaml"
    policy.write_text(POLICY)
    env = {k: v for k, v in os.environ.items() if k != "ESCALIER_DASHBOARD_TOKEN"}
    if token is not None:
        env["ESCALIER_DASHBOARD_TOKEN"] = token
    return subprocess.Popen(
        [sys.executable, "-m", "escalier", "serve", str(policy), "--db", f"sqlite:///{tmp_path / 'e.db'}",
         "--no-worker", "--workers", "1", "--threads", "2", *extra],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def test_serve_with_the_dashboard_flag_serves_it_and_guards_it_with_the_token(tmp_path):
    port = free_port()
    server = serve(tmp_path, "--dashboard", "--bind", f"127.0.0.1:{port}", token=TOKEN)
    try:
        base = f"http://127.0.0.1:{port}"
        # Gunicorn binds before its worker has built the app: retry until a generous deadline.
        deadline = time.monotonic() + 60
        while True:
            with contextlib.suppress(requests.RequestException):
                if requests.get(f"{base}/readyz", timeout=5).status_code == 200:
                    break
            if time.monotonic() > deadline or server.poll() is not None:
                pytest.fail(f"the receiver did not become ready: {server.poll()=}")
            time.sleep(0.1)
        page = requests.get(f"{base}/dashboard/", timeout=5)
        assert page.status_code == 200 and "Tier 2: Specialists" in page.text
        assert requests.get(f"{base}/dashboard/static/dashboard.css", timeout=5).status_code == 200
        proxied = {"X-Forwarded-For": "198.51.100.7"}
        assert requests.get(f"{base}/dashboard/", headers=proxied, timeout=5).status_code == 401
        with_token = {**proxied, "Authorization": f"Bearer {TOKEN}"}
        assert requests.get(f"{base}/dashboard/", headers=with_token, timeout=5).status_code == 200
    finally:
        server.send_signal(signal.SIGTERM)
        _, err = server.communicate(timeout=30)
    assert f"dashboard on http://127.0.0.1:{port}/dashboard/" in err
    assert TOKEN not in err


def test_serve_refuses_a_short_dashboard_token(tmp_path):
    server = serve(tmp_path, "--dashboard", "--bind", f"127.0.0.1:{free_port()}", token="short")
    _, err = server.communicate(timeout=30)
    assert server.returncode != 0
    assert "ESCALIER_DASHBOARD_TOKEN must be at least 16 characters" in err
