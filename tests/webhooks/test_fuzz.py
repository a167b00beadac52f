"""Malformed bodies and headers: never a 5xx, never a crash, never a half-stored row.

Three properties, 10,000 generated requests in all, against one app per property. Each example
is a batch of requests: hypothesis spends far longer on an example's bookkeeping than on drawing
one more request, so batches keep the request count while the run takes a fraction of the time.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from webhook_support import JIRA_SECRET, ZENDESK_SECRET, jira_headers, rows, zendesk_headers

from escalier.webhooks.verification import parse_iso_timestamp

FUZZ = settings(
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                           HealthCheck.data_too_large],
    database=None,
)
HEADER_NAMES = [
    "Content-Type", "X-Zendesk-Webhook-Signature", "X-Zendesk-Webhook-Signature-Timestamp",
    "X-Zendesk-Webhook-Invocation-Id", "X-Hub-Signature", "X-Atlassian-Webhook-Identifier",
    "X-Request-Id", "Authorization", "X-Escalier-Token", "Content-Encoding",
]
header_text = st.text(st.characters(min_codepoint=0x20, max_codepoint=0xFF), max_size=80)
headers = st.dictionaries(st.sampled_from(HEADER_NAMES), header_text, max_size=6)
# JSON up to three levels deep, spelled out: st.recursive draws the same shapes at twice the cost.
# Deep nesting has its own test (100,000 brackets) in test_receiver.py.
json_leaves = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20)
json_containers = st.lists(json_leaves, max_size=4) | st.dictionaries(st.text(max_size=10), json_leaves, max_size=4)
json_values = (
    json_leaves
    | json_containers
    | st.lists(json_containers, max_size=3)
    | st.dictionaries(st.text(max_size=10), json_containers, max_size=3)
)
bodies = st.one_of(
    st.binary(max_size=300),
    json_values.map(lambda value: json.dumps(value).encode()),
    st.dictionaries(
        st.sampled_from(["type", "id", "ticket_id", "webhookEvent", "timestamp", "detail", "comment",
                         "user", "event", "current_user_id", "latest_comment"]),
        json_values,
        max_size=6,
    ).map(lambda value: json.dumps(value).encode()),
)
# Requests per example; each test asserts that it really sent its share of the 10,000.
PER_EXAMPLE = 10


def batches(**fields):
    """``PER_EXAMPLE`` requests per example, each a dict of the drawn ``fields``."""
    return st.lists(st.fixed_dictionaries(fields), min_size=PER_EXAMPLE, max_size=PER_EXAMPLE)


paths = st.sampled_from(["/webhooks/zendesk", "/webhooks/jira", "/webhooks/zendesk/emea",
                         "/webhooks/jira/nowhere", "/webhooks/zendesk/%00", "/webhooks/nope", "/healthz"])


def _no_server_error(response, request) -> None:
    assert response.status_code < 500, (request, response.get_data()[:200])
    if response.status_code >= 400:
        assert set(response.json) == {"error", "reason"}, request


def _check_rows(app, sent: dict[bytes, set[str]], verify) -> None:
    for row in rows(app):
        assert None not in (row.source, row.instance, row.body_sha256, row.headers, row.body,
                            row.received_at, row.state)
        # The same-body key hashes what the signature covers: Zendesk's signed time too.
        signed = b""
        if row.source == "zendesk":
            stamp = parse_iso_timestamp(row.headers["X-Zendesk-Webhook-Signature-Timestamp"])
            signed = stamp.isoformat().encode() + b"\n"
        assert hashlib.sha256(signed + bytes(row.body)).hexdigest() == row.body_sha256
        assert any(verify(row, signature) for signature in sent[bytes(row.body)])


def test_unsigned_junk_is_refused_politely(app):
    client = app.test_client()
    count = 0

    @settings(FUZZ, max_examples=4000 // PER_EXAMPLE)
    @given(batch=batches(path=paths, head=headers, body=bodies,
                         method=st.sampled_from(["POST", "POST", "GET", "PUT"])))
    def send(batch):
        nonlocal count
        for request in batch:
            response = client.open(request["path"], method=request["method"], data=request["body"],
                                   headers=request["head"])
            _no_server_error(response, request)
            count += 1

    send()
    assert count >= 4000
    assert rows(app) == []


def _zendesk_ok(row, signature: str) -> bool:
    timestamp = row.headers["X-Zendesk-Webhook-Signature-Timestamp"]
    expected = hmac.new(ZENDESK_SECRET.encode(), timestamp.encode() + bytes(row.body), hashlib.sha256)
    return hmac.compare_digest(base64.b64encode(expected.digest()).decode(), signature)


def test_signed_zendesk_junk_stores_only_whole_verifiable_rows(app):
    client = app.test_client()
    sent: dict[bytes, set[str]] = {}
    count = 0

    @settings(FUZZ, max_examples=3000 // PER_EXAMPLE)
    @given(batch=batches(body=bodies, extra=headers,
                         invocation=st.text(st.characters(min_codepoint=0x20, max_codepoint=0xFF), max_size=300)))
    def send(batch):
        nonlocal count
        for request in batch:
            body = request["body"]
            head = {**request["extra"], **zendesk_headers(body, invocation=request["invocation"] or None)}
            sent.setdefault(body, set()).add(head["X-Zendesk-Webhook-Signature"])
            _no_server_error(client.post("/webhooks/zendesk", data=body, headers=head), request)
            count += 1

    send()
    assert count >= 3000
    _check_rows(app, sent, _zendesk_ok)


def _jira_ok(row, signature: str) -> bool:
    expected = "sha256=" + hmac.new(JIRA_SECRET.encode(), bytes(row.body), hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, signature)


def test_signed_jira_junk_stores_only_whole_verifiable_rows(app):
    client = app.test_client()
    sent: dict[bytes, set[str]] = {}
    count = 0

    @settings(FUZZ, max_examples=3000 // PER_EXAMPLE)
    @given(batch=batches(body=bodies, extra=headers, delivery=header_text))
    def send(batch):
        nonlocal count
        for request in batch:
            body = request["body"]
            head = {**request["extra"], **jira_headers(body, delivery=request["delivery"])}
            sent.setdefault(body, set()).add(head["X-Hub-Signature"])
            _no_server_error(client.post("/webhooks/jira", data=body, headers=head), request)
            count += 1

    send()
    assert count >= 3000
    _check_rows(app, sent, _jira_ok)
