"""Known answers for the signing schemes, computed independently with ``hmac``."""

from __future__ import annotations

import base64
import hashlib
import hmac
from datetime import datetime, timezone

import pytest

from escalier.connectors.jira.webhook import verify as jira_verify
from escalier.connectors.zendesk.webhook import verify as zendesk_verify
from escalier.webhooks.verification import Rejected

TEST_SECRET = "dGhpc19zZWNyZXRfaXNfZm9yX3Rlc3Rpbmdfb25seQ=="
NOW = datetime(2026, 3, 6, 15, 50, tzinfo=timezone.utc)


def test_zendesk_known_answer_with_the_published_test_secret():
    timestamp = "2026-03-06T15:50:00Z"
    body = b'{"type":"zen:event-type:ticket.status_changed","id":"1"}'
    # The key is the secret's UTF-8 bytes as written, not base64-decoded; the message is
    # the timestamp header followed by the raw body.
    expected = base64.b64encode(
        hmac.new(TEST_SECRET.encode("utf-8"), timestamp.encode() + body, hashlib.sha256).digest()
    ).decode()
    headers = {"X-Zendesk-Webhook-Signature": expected, "X-Zendesk-Webhook-Signature-Timestamp": timestamp}
    assert zendesk_verify(headers, body, [TEST_SECRET], NOW) == NOW
    decoded_key = base64.b64decode(TEST_SECRET)
    wrong_key = base64.b64encode(
        hmac.new(decoded_key, timestamp.encode() + body, hashlib.sha256).digest()
    ).decode()
    body_first = base64.b64encode(
        hmac.new(TEST_SECRET.encode(), body + timestamp.encode(), hashlib.sha256).digest()
    ).decode()
    for signature in (wrong_key, body_first):
        with pytest.raises(Rejected):
            zendesk_verify({**headers, "X-Zendesk-Webhook-Signature": signature}, body, [TEST_SECRET], NOW)


def test_jira_known_answer():
    body = b'{"webhookEvent":"jira:issue_updated"}'
    expected = hmac.new(b"It's a Secret to Everybody", body, hashlib.sha256).hexdigest()
    jira_verify({"X-Hub-Signature": f"sha256={expected}"}, body, ["It's a Secret to Everybody"], NOW)
    with pytest.raises(Rejected):
        jira_verify({"X-Hub-Signature": f"sha256={expected}"}, body + b" ", ["It's a Secret to Everybody"], NOW)
