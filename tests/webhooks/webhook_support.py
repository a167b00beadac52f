"""Building signed deliveries and reading the inbox, for the receiver tests."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from flask import Flask
from sqlalchemy import select

from escalier.store.schema import inbox

PAYLOADS = Path(__file__).resolve().parent.parent / "payloads"
# The moment the recorded payloads were sent (their Jira ``timestamp``).
SENT = datetime(2026, 3, 6, 15, 50, tzinfo=timezone.utc)
ZENDESK_SECRET = "zd-current-signing-secret"
ZENDESK_OLD_SECRET = "zd-previous-signing-secret"
JIRA_SECRET = "jira-webhook-secret"
JIRA_SERVICE = "ops-bot"
ZENDESK_SERVICE = "9000000000099"


class Clock:
    """A clock the test moves by hand."""

    def __init__(self, now: datetime = SENT + timedelta(seconds=2)) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, delta: timedelta) -> None:
        self.now += delta


def payload(source: str, name: str) -> bytes:
    """A recorded payload's raw bytes."""
    return (PAYLOADS / source / f"{name}.json").read_bytes()


def payload_json(source: str, name: str) -> dict[str, Any]:
    """A recorded payload, parsed."""
    return json.loads(payload(source, name))


def zendesk_headers(body: bytes, *, secret: str = ZENDESK_SECRET, timestamp: str = "2026-03-06T15:50:00Z",
                    invocation: str | None = None) -> dict[str, str]:
    """Headers as Zendesk signs them: base64(HMAC-SHA256(secret, timestamp + body))."""
    digest = hmac.new(secret.encode(), timestamp.encode() + body, hashlib.sha256).digest()
    headers = {
        "Content-Type": "application/json",
        "X-Zendesk-Webhook-Signature": base64.b64encode(digest).decode(),
        "X-Zendesk-Webhook-Signature-Timestamp": timestamp,
        "X-Zendesk-Webhook-Id": "01HZZZWEBHOOK",
    }
    if invocation:
        headers["X-Zendesk-Webhook-Invocation-Id"] = invocation
    return headers


def jira_headers(body: bytes, *, secret: str = JIRA_SECRET, delivery: str = "d-1",
                 algorithm: str = "sha256") -> dict[str, str]:
    """Headers as Jira signs them: ``X-Hub-Signature: sha256=<hex HMAC(secret, body)>``."""
    digest = hmac.new(secret.encode(), body, getattr(hashlib, algorithm)).hexdigest()
    return {
        "Content-Type": "application/json; charset=UTF-8",
        "X-Hub-Signature": f"{algorithm}={digest}",
        "X-Atlassian-Webhook-Identifier": delivery,
        "User-Agent": "Atlassian Webhook HTTP Client",
    }


def rows(app: Flask) -> list[Any]:
    """Every inbox row, oldest first."""
    engine = app.extensions["escalier"].engine
    with engine.connect() as conn:
        return conn.execute(select(inbox).order_by(inbox.c.id)).all()
