"""What a careless upstream or an attacker sends: bodies that cannot be stored as text, chunked
bodies over the limit, identical trigger bodies, Jira payloads without a usable timestamp,
credential headers, odd paths and byte order marks."""

from __future__ import annotations

import fcntl
import io
import json
import threading
import time
from datetime import timedelta

import pytest
from webhook_support import jira_headers, payload, rows, zendesk_headers
from werkzeug.test import EnvironBuilder, run_wsgi_app

ZD = "/webhooks/zendesk"
JIRA = "/webhooks/jira"


def _jira_body(n: int, event: str = "jira:issue_updated") -> bytes:
    return json.dumps({"timestamp": 1772812200000, "webhookEvent": event,
                       "issue": {"id": str(n)}}).encode()


# -- item 2: a body whose text the store cannot encode ---------------------------------------


def test_a_lone_surrogate_is_stored_as_bytes_and_fails_none_of_its_batch(app):
    """A correctly signed body with ``"\\ud800"`` where the event type is read used to fail the
    whole group commit with a 503 for every delivery in it."""
    poison = [b'{"timestamp": 1772812200000, "webhookEvent": "\\ud800"}',
              b'{"timestamp": 1772812200000, "webhookEvent": "jira:issue_updated\\udfff", "x": 1}']
    valid = [_jira_body(n) for n in range(8)]
    bodies = valid[:4] + poison + valid[4:]
    committer = app.extensions["escalier"].committer
    answers: list = [None] * len(bodies)

    def send(n: int) -> None:
        body = bodies[n]
        answers[n] = app.test_client().post(JIRA, data=body, headers=jira_headers(body, delivery=f"d{n}"))

    # Every request queues behind a held writer lock, so all of them share one commit.
    lock = open(f"{committer.engine.url.database}.writer-lock", "a+b")  # noqa: SIM115 - closed below
    fcntl.flock(lock, fcntl.LOCK_EX)
    threads = [threading.Thread(target=send, args=(n,)) for n in range(len(bodies))]
    try:
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 10
        while len(committer._queue) < len(bodies) and time.monotonic() < deadline:
            time.sleep(0.005)
        assert len(committer._queue) == len(bodies)
    finally:
        fcntl.flock(lock, fcntl.LOCK_UN)
        lock.close()
    for thread in threads:
        thread.join(20)

    assert [a.status_code for a in answers] == [202] * len(bodies), [a.json for a in answers]
    assert [a.json["status"] for a in answers] == ["accepted"] * 4 + ["ignored"] * 2 + ["accepted"] * 4
    stored = {row.delivery_id: row for row in rows(app)}
    assert len(stored) == len(bodies)
    for n, body in enumerate(bodies):
        assert bytes(stored[f"d{n}"].body) == body  # the raw bytes, as signed
    assert stored["d4"].event_type == "\\ud800" and stored["d4"].state == "ignored"


# -- item 3: chunked bodies over the limit ---------------------------------------------------


def _chunked(app, body: bytes, headers: dict[str, str]) -> tuple[int, dict]:
    """POST ``body`` with no Content-Length, as a server that de-chunks hands it to the app."""
    environ = EnvironBuilder(path=JIRA, method="POST", input_stream=io.BytesIO(body),
                             headers=headers).get_environ()
    environ.pop("CONTENT_LENGTH", None)
    environ["wsgi.input_terminated"] = True
    answer, status, _ = run_wsgi_app(app.wsgi_app, environ, buffered=True)
    return int(status.split()[0]), json.loads(b"".join(answer))


def test_a_chunked_body_over_the_limit_is_a_413_not_a_cut_body(make_app):
    app = make_app(max_body_bytes=1024)
    big = json.dumps({"timestamp": 1772812200000, "webhookEvent": "jira:issue_updated",
                      "pad": "x" * 2000}).encode()
    status, answer = _chunked(app, big, jira_headers(big, delivery="big"))
    assert (status, answer["error"]) == (413, "body_too_large")
    # One exactly at the limit is taken.
    content = {"timestamp": 1772812200000, "webhookEvent": "jira:issue_updated", "pad": ""}
    content["pad"] = "y" * (1024 - len(json.dumps(content)))
    fits = json.dumps(content).encode()
    assert len(fits) == 1024
    status, answer = _chunked(app, fits, jira_headers(fits, delivery="fits"))
    assert status == 202, answer
    assert [row.delivery_id for row in rows(app)] == ["fits"]


# -- item 5: Zendesk trigger bodies ---------------------------------------------------------


def test_identical_trigger_bodies_signed_at_different_times_are_two_deliveries(app, client, clock):
    body = payload("zendesk", "trigger-ticket-updated")
    first = client.post(ZD, data=body, headers=zendesk_headers(body, invocation="inv-1"))
    assert first.json["status"] == "accepted"
    clock.advance(timedelta(seconds=40))
    # Another event whose template renders the same text, signed 40 s later.
    second = client.post(ZD, data=body, headers=zendesk_headers(
        body, timestamp="2026-03-06T15:50:40Z", invocation="inv-2"))
    assert (second.status_code, second.json["status"]) == (202, "accepted")
    assert [row.delivery_id for row in rows(app)] == ["inv-1", "inv-2"]


def test_a_replayed_signed_trigger_with_a_new_invocation_id_is_a_duplicate(app, client, clock):
    body = payload("zendesk", "trigger-ticket-updated")
    assert client.post(ZD, data=body, headers=zendesk_headers(body, invocation="inv-1")).status_code == 202
    clock.advance(timedelta(minutes=3))
    # The invocation id is not signed: a replay inside the tolerance may carry any.
    replay = client.post(ZD, data=body, headers=zendesk_headers(body, invocation="forged"))
    assert (replay.status_code, replay.json) == (200, {"status": "duplicate"})
    assert len(rows(app)) == 1


# -- item 6: Jira without a usable timestamp ------------------------------------------------


@pytest.mark.parametrize("stamp", [None, "1772812200000", "soon", True, [1], {"ms": 1}])
def test_a_jira_payload_without_a_usable_timestamp_is_refused(app, client, stamp):
    content = {"webhookEvent": "jira:issue_updated", "issue": {"id": "1"}}
    if stamp is not None:
        content["timestamp"] = stamp
    body = json.dumps(content).encode()
    response = client.post(JIRA, data=body, headers=jira_headers(body, delivery="no-time"))
    assert (response.status_code, response.json["error"]) == (400, "unusable_timestamp")
    assert rows(app) == []


def test_a_signed_time_makes_a_payload_timestamp_unnecessary(app, client):
    # Zendesk signs its timestamp: its payloads need none of their own.
    body = payload("zendesk", "trigger-ticket-updated")
    assert "timestamp" not in json.loads(body)
    assert client.post(ZD, data=body, headers=zendesk_headers(body, invocation="i")).status_code == 202


# -- item 7: only the headers a connector needs are kept -------------------------------------


def test_credential_headers_are_never_stored_whatever_their_name(app, client):
    body = payload("jira", "issue-updated-assigned")
    headers = {
        **jira_headers(body, delivery="creds"),
        "X-Credentials": "user:pass",
        "X-Auth-Key": "k-123",
        "X-Access-Key": "AKIA123",
        "Authorization": "Bearer t",
        "Cookie": "session=s",
        "X-Forwarded-For": "10.0.0.1",
        "X-Atlassian-Webhook-Retry": "2",
        "X-Request-Id": "req-1",
    }
    assert client.post(JIRA, data=body, headers=headers).status_code == 202
    [row] = rows(app)
    assert row.headers == {
        "Content-Type": "application/json; charset=UTF-8",
        "User-Agent": "Atlassian Webhook HTTP Client",
        "X-Atlassian-Webhook-Identifier": "creds",
        "X-Atlassian-Webhook-Retry": "2",
        "X-Request-Id": "req-1",
    }


def test_the_kept_headers_are_a_setting(make_app):
    app = make_app(kept_headers=frozenset({"X-Atlassian-Webhook-Identifier"}))
    body = payload("jira", "issue-updated-assigned")
    assert app.test_client().post(JIRA, data=body, headers=jira_headers(body, delivery="k")).status_code == 202
    assert rows(app)[0].headers == {"X-Atlassian-Webhook-Identifier": "k"}


# -- item 10: odd paths and byte order marks ------------------------------------------------


@pytest.mark.parametrize("path", ["/webhooks/jira//default", "/webhooks//jira", "//webhooks/jira",
                                  "/webhooks/jira/", "/webhooks/jira/default/"])
def test_paths_with_empty_segments_are_json_404s_and_never_redirects(app, client, path):
    body = payload("jira", "issue-updated-assigned")
    response = client.post(path, data=body, headers=jira_headers(body, delivery="p"))
    assert (response.status_code, response.mimetype) == (404, "application/json")
    assert response.json["error"] == "not_found"
    assert rows(app) == []


@pytest.mark.parametrize("path", [JIRA, f"{JIRA}/default", ZD, f"{ZD}/default"])
def test_a_body_with_a_byte_order_mark_is_refused_on_every_path(app, client, path):
    if path.startswith(JIRA):
        body = b"\xef\xbb\xbf" + payload("jira", "issue-updated-assigned")
        headers = jira_headers(body, delivery="bom")
    else:
        body = b"\xef\xbb\xbf" + payload("zendesk", "ticket-status-changed")
        headers = zendesk_headers(body)
    response = client.post(path, data=body, headers=headers)
    assert (response.status_code, response.json["error"]) == (400, "malformed_json")
    assert "byte order mark" in response.json["reason"]
    assert rows(app) == []


def test_a_utf16_body_is_refused_like_any_non_utf8_body(app, client):
    body = json.dumps({"timestamp": 1772812200000, "webhookEvent": "jira:issue_updated"}).encode("utf-16-le")
    response = client.post(JIRA, data=body, headers=jira_headers(body, delivery="u16"))
    assert (response.status_code, response.json["error"]) == (400, "malformed_json")
    assert rows(app) == []
