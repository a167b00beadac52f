"""The receiver end to end through Flask's test client: accept, reject, de-duplicate, ignore."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from webhook_support import (
    JIRA_SECRET,
    ZENDESK_OLD_SECRET,
    ZENDESK_SECRET,
    jira_headers,
    payload,
    payload_json,
    rows,
    zendesk_headers,
)

from escalier.core.extensions import WebhookSpec
from escalier.core.hookspecs import hookimpl
from escalier.plugins import get_plugin_manager
from escalier.webhooks import ReceiverSettings, create_app
from escalier.webhooks.token import token_webhook

POLICIES = Path(__file__).resolve().parent.parent / "policies"

ZD = "/webhooks/zendesk"
JIRA = "/webhooks/jira"


def test_a_signed_zendesk_event_is_stored_before_the_answer(app, client):
    body = payload("zendesk", "ticket-status-changed")
    response = client.post(ZD, data=body, headers=zendesk_headers(body))
    assert response.status_code == 202
    assert response.json["status"] == "accepted"
    [row] = rows(app)
    assert row.id == response.json["id"]
    assert (row.source, row.instance, row.state) == ("zendesk", "default", "pending")
    assert row.delivery_id.endswith("5b7f1c2e-8d4a-4f0b-9a63-2e1d0c9b8a71")
    assert row.event_type == "zen:event-type:ticket.status_changed"
    assert bytes(row.body) == body
    assert "X-Zendesk-Webhook-Signature" not in row.headers
    assert row.headers["X-Zendesk-Webhook-Signature-Timestamp"] == "2026-03-06T15:50:00Z"


def test_a_signed_jira_event_is_stored(app, client):
    body = payload("jira", "issue-updated-assigned")
    response = client.post(JIRA, data=body, headers=jira_headers(body, delivery="jira-1"))
    assert response.status_code == 202, response.json
    [row] = rows(app)
    assert (row.source, row.delivery_id, row.event_type) == ("jira", "jira-1", "jira:issue_updated")
    assert "X-Hub-Signature" not in row.headers


def test_a_jira_automation_request_authenticates_by_its_token(app, client, clock):
    """Jira Automation cannot sign: its request carries the secret in X-Escalier-Token, and the
    issue's last update bounds its age (the body has no timestamp)."""
    body = payload("jira", "automation-issue-data")
    headers = {"Content-Type": "application/json", "X-Escalier-Token": JIRA_SECRET}
    updated = datetime(2026, 3, 6, 10, 42, 13, tzinfo=UTC)
    clock.advance(updated + timedelta(minutes=61) - clock())
    stale = client.post(JIRA, data=body, headers=headers)
    assert (stale.status_code, stale.json["error"]) == (401, "replayed")
    clock.advance(timedelta(minutes=-60))
    response = client.post(JIRA, data=body, headers=headers)
    assert response.status_code == 202, response.json
    [row] = rows(app)
    assert (row.source, row.event_type, row.state) == ("jira", "automation", "pending")
    assert "X-Escalier-Token" not in row.headers


@pytest.mark.parametrize(
    ("headers", "error"),
    [({"X-Escalier-Token": "not-the-secret"}, "bad_token"), ({}, "missing_signature")],
)
def test_a_jira_automation_request_without_its_token_is_refused(app, client, headers, error):
    body = payload("jira", "automation-issue-data")
    response = client.post(JIRA, data=body, headers={"Content-Type": "application/json", **headers})
    assert (response.status_code, response.json["error"]) == (401, error)
    assert rows(app) == []


def test_a_zendesk_eventbridge_event_authenticates_by_its_token_and_its_time(app, client, clock):
    """An EventBridge API destination cannot sign: the secret in X-Escalier-Token, and the event's
    own time bounds its age."""
    body = payload("zendesk", "eventbridge-agent-assignment-changed")
    headers = {"Content-Type": "application/json", "X-Escalier-Token": ZENDESK_SECRET}
    sent = datetime(2026, 3, 6, 10, 20, 1, tzinfo=UTC)
    clock.advance(sent + timedelta(minutes=61) - clock())
    stale = client.post(ZD, data=body, headers=headers)
    assert (stale.status_code, stale.json["error"]) == (401, "replayed")
    clock.advance(timedelta(minutes=-60))
    wrong = client.post(ZD, data=body, headers={**headers, "X-Escalier-Token": "not-it"})
    assert (wrong.status_code, wrong.json["error"]) == (401, "bad_token")
    assert client.post(ZD, data=body, headers=headers).status_code == 202
    again = client.post(ZD, data=body, headers=headers)  # EventBridge retrying the same event
    assert again.json == {"status": "duplicate"}
    [row] = rows(app)
    assert (row.event_type, row.delivery_id, row.state) == (
        "zen:event-type:ticket.agent_assignment_changed",
        "eventbridge:6f1d2c3b-0021-4c00-9000-000000000021", "pending",
    )
    assert "X-Escalier-Token" not in row.headers
    # An event not about a ticket is acknowledged and kept as ignored.
    user = client.post(ZD, data=payload("zendesk", "eventbridge-user-created"), headers=headers)
    assert (user.status_code, user.json["status"], user.json["reason"]) == (202, "ignored", "unhandled-event")


def test_a_token_is_no_signature_for_a_zendesk_webhook(app, client):
    """A trigger body carries no time of its own: with a token instead of a signature, its age
    could not be checked, so it is refused and nothing is stored."""
    body = payload("zendesk", "trigger-recommended")
    headers = {"Content-Type": "application/json", "X-Escalier-Token": ZENDESK_SECRET}
    response = client.post(ZD, data=body, headers=headers)
    assert (response.status_code, response.json["error"]) == (400, "unusable_timestamp")
    assert rows(app) == []


@pytest.mark.parametrize("algorithm", ["sha256", "sha512"])
def test_jira_signature_algorithm_is_read_from_its_prefix(app, client, algorithm):
    body = payload("jira", "server-comment-created")
    response = client.post(JIRA, data=body, headers=jira_headers(body, algorithm=algorithm))
    assert response.status_code == 202


@pytest.mark.parametrize("algorithm", ["md5", "sha1"])
def test_an_unaccepted_jira_algorithm_is_rejected(app, client, algorithm):
    body = payload("jira", "server-comment-created")
    headers = jira_headers(body, algorithm=algorithm)
    response = client.post(JIRA, data=body, headers=headers)
    assert response.status_code == 401 and response.json["error"] == "unsupported_algorithm"
    assert rows(app) == []


@pytest.mark.parametrize("source", ["zendesk", "jira"])
def test_one_changed_byte_is_rejected_and_nothing_stored(app, client, source):
    if source == "zendesk":
        body = payload("zendesk", "ticket-status-changed")
        headers = zendesk_headers(body)
    else:
        body = payload("jira", "issue-updated-assigned")
        headers = jira_headers(body)
    tampered = body.replace(b'"10040"', b'"10041"').replace(b'"4242"', b'"4243"', 1)
    assert len(tampered) == len(body) and tampered != body
    response = client.post(f"/webhooks/{source}", data=tampered, headers=headers)
    assert response.status_code == 401
    assert response.json == {"error": "bad_signature", "reason": response.json["reason"]}
    assert rows(app) == []


@pytest.mark.parametrize(
    ("change", "status", "error"),
    [
        ({"X-Zendesk-Webhook-Signature": None}, 401, "missing_signature"),
        ({"X-Zendesk-Webhook-Signature-Timestamp": None}, 401, "missing_timestamp"),
        ({"X-Zendesk-Webhook-Signature": "not base64!"}, 401, "bad_signature"),
        ({"X-Zendesk-Webhook-Signature-Timestamp": "yesterday"}, 401, "bad_signature"),
        ({"Content-Type": "text/plain"}, 415, "unsupported_media_type"),
        ({"Content-Type": None}, 415, "unsupported_media_type"),
    ],
)
def test_each_header_rejection(app, client, change, status, error):
    body = payload("zendesk", "ticket-status-changed")
    headers = zendesk_headers(body)
    for name, value in change.items():
        headers.pop(name)
        if value is not None:
            headers[name] = value
    response = client.post(ZD, data=body, headers=headers)
    assert (response.status_code, response.json["error"]) == (status, error)
    assert response.content_type == "application/json"
    assert rows(app) == []


@pytest.mark.parametrize(
    ("body", "error"),
    [(b"{not json", "malformed_json"), (b"[1, 2]", "malformed_json"), (b"\xff\xfe{}", "malformed_json"),
     (b"[" * 100_000, "malformed_json")],
)
def test_signed_but_malformed_json_is_a_400(app, client, body, error):
    response = client.post(ZD, data=body, headers=zendesk_headers(body))
    assert (response.status_code, response.json["error"]) == (400, error)
    assert rows(app) == []


def test_a_body_over_the_limit_is_a_413(make_app):
    app = make_app(max_body_bytes=1024)
    body = json.dumps({"ticket_id": "1", "pad": "x" * 2000}).encode()
    response = app.test_client().post(ZD, data=body, headers=zendesk_headers(body))
    assert (response.status_code, response.json["error"]) == (413, "body_too_large")
    assert rows(app) == []


def test_not_found_and_wrong_method_answer_json(client):
    for response, status in ((client.get("/nowhere"), 404), (client.get(ZD), 405),
                             (client.put("/healthz"), 405)):
        assert response.status_code == status
        assert response.content_type == "application/json"
        assert set(response.json) == {"error", "reason"}


def test_an_unknown_instance_is_a_404(app, client):
    body = payload("zendesk", "ticket-status-changed")
    response = client.post(f"{ZD}/apac", data=body, headers=zendesk_headers(body))
    assert (response.status_code, response.json["error"]) == (404, "unknown_instance")
    assert rows(app) == []


def test_instances_route_to_their_own_secret(app, client):
    body = payload("zendesk", "ticket-status-changed")
    emea = zendesk_headers(body, secret="zd-emea-secret")
    assert client.post(ZD, data=body, headers=emea).status_code == 401
    assert client.post(f"{ZD}/emea", data=body, headers=zendesk_headers(body)).status_code == 401
    assert client.post(f"{ZD}/emea", data=body, headers=emea).status_code == 202
    assert [(row.source, row.instance) for row in rows(app)] == [("zendesk", "emea")]
    # The same delivery to another instance is not a duplicate of the first.
    assert client.post(f"{ZD}/default", data=body, headers=zendesk_headers(body)).status_code == 202
    assert [row.instance for row in rows(app)] == ["emea", "default"]


def test_the_previous_secret_still_verifies_during_rotation(make_app):
    body = payload("zendesk", "ticket-status-changed")
    app = make_app()
    assert app.test_client().post(ZD, data=body, headers=zendesk_headers(body, secret=ZENDESK_OLD_SECRET)).status_code == 202
    rotated = make_app(secrets={("zendesk", "default"): ("zd-newest",)})
    other = payload("zendesk", "ticket-comment-by-escalier")
    answer = rotated.test_client().post(ZD, data=other, headers=zendesk_headers(other, secret=ZENDESK_OLD_SECRET))
    assert answer.status_code == 401


def test_same_delivery_id_is_a_duplicate_and_stored_once(app, client):
    body = payload("jira", "issue-updated-assigned")
    first = client.post(JIRA, data=body, headers=jira_headers(body, delivery="retry-me"))
    again = client.post(JIRA, data=body, headers=jira_headers(body, delivery="retry-me"))
    assert first.status_code == 202
    assert (again.status_code, again.json) == (200, {"status": "duplicate"})
    assert len(rows(app)) == 1


def test_same_delivery_id_with_another_body_is_still_a_duplicate(app, client):
    one = payload("jira", "issue-updated-assigned")
    two = payload("jira", "server-comment-created")
    assert client.post(JIRA, data=one, headers=jira_headers(one, delivery="same")).status_code == 202
    assert client.post(JIRA, data=two, headers=jira_headers(two, delivery="same")).json == {"status": "duplicate"}
    assert len(rows(app)) == 1


def test_same_signed_body_within_the_window_is_a_duplicate_and_after_it_is_not(app, client, clock):
    # Zendesk signs its timestamp: the same timestamp and body again is a replay, whatever
    # (unsigned) invocation id it carries.
    body = payload("zendesk", "trigger-ticket-updated")
    first = client.post(ZD, data=body, headers=zendesk_headers(body, invocation="inv-1"))
    assert first.status_code == 202 and first.json["status"] == "accepted"
    clock.advance(timedelta(minutes=2))
    again = client.post(ZD, data=body, headers=zendesk_headers(body, invocation="inv-2"))
    assert (again.status_code, again.json) == (200, {"status": "duplicate"})
    # Jira signs no time: the same body is a duplicate for the whole window, then new again.
    jira = payload("jira", "issue-updated-assigned")
    assert client.post(JIRA, data=jira, headers=jira_headers(jira, delivery="j-1")).status_code == 202
    clock.advance(timedelta(minutes=30))
    assert client.post(JIRA, data=jira, headers=jira_headers(jira, delivery="j-2")).json == {"status": "duplicate"}
    assert [row.delivery_id for row in rows(app)] == ["inv-1", "j-1"]


@pytest.mark.parametrize("minutes", [-6, 6, 60 * 24])
def test_zendesk_timestamps_outside_the_tolerance_are_replays(app, client, clock, minutes):
    body = payload("zendesk", "ticket-status-changed")
    clock.advance(timedelta(minutes=minutes))
    response = client.post(ZD, data=body, headers=zendesk_headers(body))
    assert response.status_code == 401
    assert response.json["error"] == "replayed"
    assert "replay" in response.json["reason"]
    assert rows(app) == []


def test_jira_gets_a_wider_window_for_its_late_retries(app, client, clock):
    body = payload("jira", "issue-updated-assigned")
    clock.advance(timedelta(minutes=30))
    assert client.post(JIRA, data=body, headers=jira_headers(body, delivery="late")).status_code == 202
    clock.advance(timedelta(minutes=31))
    response = client.post(JIRA, data=body, headers=jira_headers(body, delivery="too-late"))
    assert (response.status_code, response.json["error"]) == (401, "replayed")
    assert len(rows(app)) == 1


def test_a_replayed_jira_body_with_a_new_delivery_id_is_caught_while_its_timestamp_is_accepted(app, client, clock):
    # Jira signs no timestamp, and the delivery id header is not signed either: only the body
    # ties a replay to the original.
    body = payload("jira", "issue-updated-assigned")
    assert client.post(JIRA, data=body, headers=jira_headers(body, delivery="orig")).status_code == 202
    clock.advance(timedelta(minutes=45))
    replay = client.post(JIRA, data=body, headers=jira_headers(body, delivery="forged"))
    assert (replay.status_code, replay.json) == (200, {"status": "duplicate"})
    assert len(rows(app)) == 1


def test_a_jira_replay_is_caught_for_as_long_as_its_timestamp_is_accepted_even_if_sent_early(app, client, clock):
    # Jira's clock ran 10 minutes ahead: the first copy arrives 10 minutes before its timestamp.
    # Its timestamp stays acceptable until 60 minutes after it, 70 minutes after that arrival,
    # longer than the 60-minute window measured from the arrival alone.
    body = payload("jira", "issue-updated-assigned")
    clock.advance(timedelta(minutes=-10))
    assert client.post(JIRA, data=body, headers=jira_headers(body, delivery="orig")).status_code == 202
    clock.advance(timedelta(minutes=69))
    replay = client.post(JIRA, data=body, headers=jira_headers(body, delivery="forged"))
    assert (replay.status_code, replay.json) == (200, {"status": "duplicate"})
    clock.advance(timedelta(minutes=2))
    stale = client.post(JIRA, data=body, headers=jira_headers(body, delivery="forged-again"))
    assert (stale.status_code, stale.json["error"]) == (401, "replayed")
    assert len(rows(app)) == 1


def test_the_same_body_window_cannot_be_shorter_than_the_payload_window():
    with pytest.raises(ValueError, match="dedupe_window must be at least payload_max_age"):
        ReceiverSettings(store_url="sqlite://", dedupe_window=timedelta(minutes=10))


def test_a_signed_zendesk_timestamp_that_is_not_iso_is_rejected(app, client):
    body = payload("zendesk", "ticket-status-changed")
    response = client.post(ZD, data=body, headers=zendesk_headers(body, timestamp="yesterday"))
    assert (response.status_code, response.json["error"]) == (401, "bad_timestamp")


def test_a_jira_timestamp_no_clock_can_show_is_a_replay(app, client):
    body = json.dumps({"timestamp": 10**20, "webhookEvent": "jira:issue_updated"}).encode()
    response = client.post(JIRA, data=body, headers=jira_headers(body))
    assert (response.status_code, response.json["error"]) == (401, "replayed")


@pytest.mark.parametrize(
    ("source", "name", "reason"),
    [
        ("jira", "server-comment-by-escalier", "own-change"),
        ("zendesk", "ticket-comment-by-escalier", "own-change"),
        ("jira", "worklog-created", "unhandled-event"),
        ("zendesk", "user-created", "unhandled-event"),
    ],
)
def test_own_changes_and_unhandled_events_are_stored_as_ignored(app, client, source, name, reason):
    body = payload(source, name)
    headers = zendesk_headers(body, invocation="i") if source == "zendesk" else jira_headers(body)
    response = client.post(f"/webhooks/{source}", data=body, headers=headers)
    assert response.status_code == 202
    assert response.json["status"] == "ignored" and response.json["reason"] == reason
    [row] = rows(app)
    assert (row.state, row.error) == ("ignored", reason)
    assert row.processed_at is not None
    metrics = client.get("/metrics").text
    assert f'escalier_webhooks_ignored_total{{source="{source}"}} 1' in metrics
    own = f'escalier_webhooks_own_changes_total{{source="{source}"}} 1'
    assert (own in metrics) == (reason == "own-change")


def test_the_service_account_is_recognised_without_the_marker(app, client):
    data = payload_json("jira", "issue-updated-assigned")
    data["user"] = {"name": "ops-bot", "key": "ops-bot"}
    body = json.dumps(data).encode()
    response = client.post(JIRA, data=body, headers=jira_headers(body))
    assert response.json["reason"] == "own-change"


def test_a_trigger_webhook_with_a_ticket_id_is_accepted(app, client):
    body = payload("zendesk", "trigger-ticket-updated")
    response = client.post(ZD, data=body, headers=zendesk_headers(body, invocation="inv-9"))
    assert response.json["status"] == "accepted"
    assert rows(app)[0].event_type == "trigger"


def test_request_ids_are_honoured_or_made(client):
    assert client.get("/healthz", headers={"X-Request-Id": "abc-123"}).headers["X-Request-Id"] == "abc-123"
    made = client.get("/healthz", headers={"X-Request-Id": "bad id <script>"}).headers["X-Request-Id"]
    assert made and made != "bad id <script>"
    assert client.get("/nowhere").headers["X-Request-Id"]


def test_logs_carry_stable_events_and_never_secrets(app, client, caplog):
    body = payload("zendesk", "ticket-status-changed")
    headers = zendesk_headers(body)
    with caplog.at_level(logging.INFO, logger="escalier"):
        client.post(ZD, data=body, headers={**headers, "X-Request-Id": "req-1"})
        client.post(ZD, data=body, headers=headers)
        client.post(ZD, data=b"{}", headers=headers)
    events = [record.getMessage() for record in caplog.records]
    assert events == ["webhook.accepted", "webhook.duplicate", "webhook.rejected"]
    assert caplog.records[0].request_id == "req-1"
    everything = " ".join(f"{vars(record)}" for record in caplog.records)
    assert headers["X-Zendesk-Webhook-Signature"] not in everything
    assert "Export broken" not in everything


def test_health_readiness_and_metrics(app, client):
    assert client.get("/healthz").json == {"status": "alive"}
    assert client.get("/readyz").json == {"status": "ready"}
    body = payload("jira", "issue-updated-assigned")
    client.post(JIRA, data=body, headers=jira_headers(body))
    client.post(JIRA, data=body, headers=jira_headers(body))
    client.post(JIRA, data=body, headers=jira_headers(body, secret="wrong"))
    metrics = client.get("/metrics")
    assert metrics.content_type.startswith("text/plain")
    text = metrics.text
    assert 'escalier_webhooks_received_total{source="jira"} 3' in text
    assert 'escalier_webhooks_duplicates_total{source="jira"} 1' in text
    assert 'escalier_webhooks_rejected_total{reason="bad_signature",source="jira"} 1' in text
    assert 'escalier_inbox_rows{state="pending"} 1' in text
    assert "escalier_inbox_lag_seconds " in text
    assert 'escalier_outbox_actions{state="dead"} 0' in text
    assert "escalier_escalations_open 0" in text
    assert "escalier_escalations_without_wakeup 0" in text


class _DeskPlugin:
    """A third-party system without signing, through the token builder."""

    @hookimpl
    def register_webhooks(self) -> list[WebhookSpec]:
        return [token_webhook("desk", handled=frozenset({"ticket.updated"}))]


def test_a_token_webhook_from_a_plugin(tmp_path):
    settings = ReceiverSettings(
        store_url=f"sqlite:///{tmp_path / 'token.db'}",
        secrets={("desk", "default"): ("t0ken-current", "t0ken-previous")},
        create_schema=True,
    )
    app = create_app(settings, plugin_manager=get_plugin_manager(load_entrypoints=False, plugins=[_DeskPlugin()]))
    try:
        client = app.test_client()
        body = json.dumps({"type": "ticket.updated", "id": 7}).encode()
        json_type = {"Content-Type": "application/json"}
        assert client.post("/webhooks/desk", data=body, headers=json_type).status_code == 401
        bad = {**json_type, "X-Escalier-Token": "guess"}
        assert client.post("/webhooks/desk", data=body, headers=bad).status_code == 401
        good = {**json_type, "X-Escalier-Token": "t0ken-previous"}
        assert client.post("/webhooks/desk", data=body, headers=good).status_code == 202
        [row] = rows(app)
        assert row.delivery_id == "7" and "X-Escalier-Token" not in row.headers
    finally:
        app.extensions["escalier"].close()


def test_from_policy_reads_secrets_and_identities():
    from escalier.core.policy import Policy

    import yaml

    document = yaml.safe_load((POLICIES / "minimal.yaml").read_text())
    document["connectors"] = {
        "jira": {"url": "https://acme.atlassian.net", "token": "${JIRA_TOKEN}",
                 "webhook_secrets": ["${JIRA_HOOK}", "${JIRA_HOOK_OLD}"], "service_account": "ops-bot"},
        "zendesk": {"subdomain": "acme", "email": "a@acme.example", "token": "${ZD_TOKEN}",
                    "webhook_secrets": ["${ZD_HOOK}"], "service_user_id": 99,
                    "instances": {"emea": {"subdomain": "acme-emea", "email": "a@acme.example",
                                           "token": "${ZD_TOKEN}", "webhook_secrets": ["${ZD_EMEA}"]}}},
    }
    policy = Policy.model_validate(document)
    environ = {"JIRA_HOOK": "j1", "JIRA_HOOK_OLD": "j0", "ZD_HOOK": "z1", "ZD_EMEA": "z2"}
    settings = ReceiverSettings.from_policy(policy, environ, "sqlite:///x.db")
    assert settings.secrets == {("jira", "default"): ("j1", "j0"), ("zendesk", "default"): ("z1",),
                                ("zendesk", "emea"): ("z2",)}
    assert settings.identities == {("jira", "default"): ("ops-bot",), ("zendesk", "default"): ("99",)}
    assert "j1" not in repr(settings)
    from escalier.core.errors import ConfigError

    with pytest.raises(ConfigError) as caught:
        ReceiverSettings.from_policy(policy, {}, "sqlite:///x.db")
    assert "JIRA_HOOK_OLD" in str(caught.value) and "ZD_EMEA" in str(caught.value)


def test_stored_headers_are_the_kept_ones_by_their_usual_names():
    from werkzeug.datastructures import EnvironHeaders

    from escalier.webhooks.app import _environ_keys, _kept_headers

    environ = {
        "REQUEST_METHOD": "POST",
        "CONTENT_TYPE": "application/json; charset=utf-8",
        "CONTENT_LENGTH": "",
        "HTTP_CONTENT_TYPE": "text/plain",
        "HTTP_USER_AGENT": "Zendesk Webhook",
        "HTTP_X_ZENDESK_WEBHOOK_INVOCATION_ID": "inv-1",
        "HTTP_X_ZENDESK_WEBHOOK_SIGNATURE": "c2lnbmF0dXJl",
        "HTTP_X_HUB_SIGNATURE_256": "sha256=00",
        "HTTP_AUTHORIZATION": "Basic Zm9vOmJhcg==",
        "HTTP_X_API_KEY": "k",
        "HTTP_X_CREDENTIALS": "user:pass",
        "HTTP_X_REQUEST_ID": "",
        "wsgi.url_scheme": "https",
    }
    expected = {
        "Content-Type": "application/json; charset=utf-8",
        "User-Agent": "Zendesk Webhook",
        "X-Zendesk-Webhook-Invocation-Id": "inv-1",
        "X-Request-Id": "",
    }
    # The names are spelled as werkzeug spells them.
    assert dict(EnvironHeaders(environ)).keys() >= expected.keys()
    assert _kept_headers(environ) == expected
    kept = _environ_keys(frozenset({"content-length", "X-Custom-Id"}))
    assert kept == (("CONTENT_LENGTH", "Content-Length"), ("HTTP_X_CUSTOM_ID", "X-Custom-Id"))
    assert _kept_headers({**environ, "HTTP_X_CUSTOM_ID": "7"}, kept) == {"X-Custom-Id": "7"}


def test_made_request_ids_differ_across_forked_workers():
    import os

    from escalier.webhooks.app import _new_request_id

    mine = _new_request_id()
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # a gunicorn worker forked from its master
        try:
            os.write(write, _new_request_id().encode())
        finally:
            os._exit(0)
    os.close(write)
    theirs = os.read(read, 100).decode()
    os.close(read)
    os.waitpid(child, 0)
    assert theirs and theirs[:16] != mine[:16]
    assert _new_request_id() != mine
