"""``escalier mail-receiver``, run as an admin runs it: a process that takes the mail an MTA pushes
over LMTP (or SMTP), stores each message before answering, and stops cleanly on SIGTERM.

Until ``escalier/cli.py`` lists the command, the processes run ``python -m escalier.mail_receiver``,
which builds the same subcommand through the same ``add_command``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import smtplib
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

COMMAND = [sys.executable, "-m", "escalier", "mail-receiver"]
POSTFIX_LINE = "virtual_transport = lmtp:inet:127.0.0.1:2424"

pytestmark = pytest.mark.timeout(120)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run(*args: str, env=None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*COMMAND, *args], check=False, capture_output=True, text=True, env=env, timeout=60)


@pytest.fixture
def policy(tmp_path: Path, example_policy_path: Path) -> Path:
    copy = tmp_path / "escalier.yaml"
    shutil.copy(example_policy_path, copy)
    return copy


@pytest.fixture
def env() -> dict[str, str]:
    found = dict(os.environ)
    found.pop("ESCALIER_DB", None)  # the store beside the policy
    return found


def mail(message_id: str) -> bytes:
    return (f"From: Alice <alice@customer.example>\r\nTo: support@northwind.example\r\n"
            f"Subject: Cannot export invoices\r\nMessage-ID: {message_id}\r\n"
            "Date: Mon, 02 Mar 2026 09:00:00 +0000\r\n\r\n"
            "The invoice export fails with error 500.\r\n").encode()


def wait_listening(process: subprocess.Popen, port: int) -> None:
    deadline = time.monotonic() + 60
    while True:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            return  # listening
        if process.poll() is not None or time.monotonic() > deadline:
            _, err = process.communicate(timeout=10)
            pytest.fail(f"the receiver did not listen (exit {process.returncode}): {err[-2000:]}")
        time.sleep(0.1)


def inbox(db: Path) -> list[tuple]:
    with sqlite3.connect(db) as connection:
        return connection.execute(
            "SELECT source, instance, delivery_id, state, headers, body FROM inbox ORDER BY id").fetchall()


@pytest.mark.parametrize("protocol", ["lmtp", "smtp"])
def test_pushed_mail_is_stored_before_the_answer_and_sigterm_stops_it_cleanly(policy, env, tmp_path, protocol):
    port = free_port()
    process = subprocess.Popen([*COMMAND, str(policy), "--bind", f"127.0.0.1:{port}", "--protocol", protocol],
                               env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_listening(process, port)
        client_class = smtplib.LMTP if protocol == "lmtp" else smtplib.SMTP
        raw = mail("<pushed-1@customer.example>")
        with client_class("127.0.0.1", port, timeout=10) as client:
            refused = client.sendmail("alice@customer.example", ["support@northwind.example"], raw)
            # The 250 came after the commit: the row is there now, not eventually.
            rows = inbox(tmp_path / "escalier.db")
            # The MTA delivers again (it did not hear the answer): stored once.
            client.sendmail("alice@customer.example", ["support@northwind.example"], raw)
        assert refused == {}
        assert [(r[0], r[1], r[2], r[3]) for r in rows] == [
            ("email", "default", "<pushed-1@customer.example>", "pending")]
        assert rows[0][5] == raw
        headers = json.loads(rows[0][4])
        assert headers["X-Escalier-Transport"] == protocol
        assert headers["X-Envelope-To"] == "support@northwind.example"
    finally:
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=30)
    assert process.returncode == 0, err
    assert len(inbox(tmp_path / "escalier.db")) == 1
    assert f"receiving mail over {protocol.upper()} on 127.0.0.1:{port} for email/default" in err
    stored = [json.loads(line) for line in err.splitlines()
              if line.startswith("{") and '"email.receiver.stored"' in line]
    assert [(s["delivery_id"], s["status"]) for s in stored] == [
        ("<pushed-1@customer.example>", "stored"), ("<pushed-1@customer.example>", "duplicate")]
    assert "1 stored, 1 already stored, 0 deferred" in err
    assert "Traceback" not in err


def test_the_store_is_the_one_named_by_db_and_migrated_first(policy, env, tmp_path):
    port = free_port()
    db = tmp_path / "elsewhere.db"
    process = subprocess.Popen([*COMMAND, str(policy), "--bind", f"127.0.0.1:{port}", "--db", f"sqlite:///{db}"],
                               env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_listening(process, port)
        with smtplib.LMTP("127.0.0.1", port, timeout=10) as client:
            client.sendmail("alice@customer.example", ["support@northwind.example"],
                            mail("<pushed-2@customer.example>"))
    finally:
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=30)
    assert process.returncode == 0, err
    assert [r[2] for r in inbox(db)] == ["<pushed-2@customer.example>"]
    assert not (tmp_path / "escalier.db").exists()
    assert "at revision" in err


@pytest.mark.parametrize(("bind", "said"), [
    ("nonsense", "--bind 'nonsense': expected HOST:PORT"),
    ("127.0.0.1:99999", "--bind '127.0.0.1:99999': expected HOST:PORT"),
    ("::1:2424", "write an IPv6 address in brackets"),
    ("192.0.2.1:2424", "--bind 192.0.2.1:2424: cannot listen there"),  # not this machine's address
])
def test_a_bad_bind_exits_2_with_a_message_and_touches_no_store(policy, env, tmp_path, bind, said):
    result = run(str(policy), "--bind", bind, env=env)
    assert result.returncode == 2, result.stderr
    assert said in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "escalier.db").exists()


def test_an_address_in_use_exits_1(policy, env, tmp_path):
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        result = run(str(policy), "--bind", f"127.0.0.1:{port}", env=env)
    assert result.returncode == 1
    assert f"--bind 127.0.0.1:{port} is already in use" in result.stderr


def test_a_policy_without_the_mail_connection_exits_2(policy, env, policies_dir, tmp_path):
    missing = run(str(tmp_path / "nope.yaml"), env=env)
    assert missing.returncode == 2 and "nope.yaml: no such policy file" in missing.stderr
    without = run(str(policies_dir / "minimal.yaml"), "--bind", f"127.0.0.1:{free_port()}", env=env)
    assert without.returncode == 2 and "configures no mail connector (connectors.email)" in without.stderr
    other = run(str(policy), "--instance", "eu", "--bind", f"127.0.0.1:{free_port()}", env=env)
    assert other.returncode == 2 and "--instance 'eu'" in other.stderr and "it has: default" in other.stderr
    broken = run(str(policies_dir / "syntax-error.yaml"), env=env)
    assert broken.returncode == 2 and "syntax-error.yaml" in broken.stderr
    assert "Traceback" not in missing.stderr + without.stderr + other.stderr + broken.stderr
    assert not (tmp_path / "escalier.db").exists()


def test_help_explains_it_and_shows_the_postfix_line():
    result = run("--help")
    assert result.returncode == 0
    assert "usage: escalier mail-receiver" in result.stdout
    assert POSTFIX_LINE in result.stdout
    assert "451" in result.stdout and "--protocol" in result.stdout and "examples:" in result.stdout
