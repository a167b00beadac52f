"""Acknowledge links: the signed token, the receiver's /ack/<token>, and the parsed event."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from webhook_support import rows

from escalier.core.config import load_policy
from escalier.core.connector import RawEvent
from escalier.core.errors import ConfigError, PayloadError
from escalier.core.model import (
    Acknowledgement,
    EscalationState,
    EscalationStatus,
    EventKind,
    NotificationState,
    Ticket,
)
from escalier.plugins import get_plugin_manager
from escalier.store import Store
from escalier.webhooks import ReceiverSettings
from escalier.webhooks.ack import (
    AckClaim,
    AckRefused,
    parse_acknowledgement,
    read_ack_token,
    sign_ack_token,
)

NOW = datetime(2026, 3, 6, 15, 50, 2, tzinfo=UTC)
SECRET = "ack-current-secret-0123456789"
OLD_SECRET = "ack-previous-secret-0123456789"


def claim(**changes) -> AckClaim:
    values = dict(system="jira", instance="default", ticket_id="SUP-7", move=2, tier=2, person="priya",
                  expires_at=NOW + timedelta(hours=1))
    values.update(changes)
    return AckClaim(**values)


# --- the token -------------------------------------------------------------------------------------


def test_a_token_round_trips_what_it_claims():
    made = claim(ticket_id="SUP-7 ü", person="support-leads")
    found = read_ack_token(sign_ack_token(made, SECRET), [SECRET], NOW)
    assert found == made


def test_a_token_is_url_safe_and_deterministic():
    token = sign_ack_token(claim(), SECRET)
    assert token == sign_ack_token(claim(), SECRET)
    assert set(token) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.")
    assert sign_ack_token(claim(move=3), SECRET) != token


def test_every_configured_secret_verifies_so_a_secret_can_be_rotated():
    old = sign_ack_token(claim(), OLD_SECRET)
    assert read_ack_token(old, [SECRET, OLD_SECRET], NOW) == claim()
    with pytest.raises(AckRefused) as refused:
        read_ack_token(old, [SECRET], NOW)
    assert (refused.value.code, refused.value.status) == ("bad_signature", 403)


@pytest.mark.parametrize("alter", [
    lambda p, s: f"{p}.{s[:-1]}{'A' if s[-1] != 'A' else 'B'}",   # signature changed
    lambda p, s: f"{p[:-1]}{'A' if p[-1] != 'A' else 'B'}.{s}",   # payload changed
    lambda p, s: f"{p}.",                                          # signature missing
])
def test_an_altered_token_is_refused_as_forged(alter):
    payload, signature = sign_ack_token(claim(), SECRET).split(".")
    with pytest.raises(AckRefused) as refused:
        read_ack_token(alter(payload, signature), [SECRET], NOW)
    assert refused.value.status == 403


def test_a_token_made_for_another_move_cannot_be_made_from_this_one():
    # The move is under the signature: raising it by hand breaks the signature.
    import base64
    import json

    payload, signature = sign_ack_token(claim(move=2), SECRET).split(".")
    values = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    values[4] = 3
    raised = base64.urlsafe_b64encode(json.dumps(values, separators=(",", ":")).encode()).rstrip(b"=")
    with pytest.raises(AckRefused) as refused:
        read_ack_token(f"{raised.decode()}.{signature}", [SECRET], NOW)
    assert refused.value.code == "bad_signature"


def test_an_expired_token_is_refused_with_410():
    token = sign_ack_token(claim(expires_at=NOW + timedelta(seconds=5)), SECRET)
    assert read_ack_token(token, [SECRET], NOW + timedelta(seconds=4)).move == 2
    with pytest.raises(AckRefused) as refused:
        read_ack_token(token, [SECRET], NOW + timedelta(seconds=5))
    assert (refused.value.code, refused.value.status) == ("expired", 410)


@pytest.mark.parametrize("token", ["", "abc", "a.b.c", "é.x", "x" * 3000 + ".y", "!!!.???"])
def test_a_token_that_is_not_one_is_malformed_or_forged(token):
    with pytest.raises(AckRefused) as refused:
        read_ack_token(token, [SECRET], NOW)
    assert refused.value.status in (400, 403)


def test_no_secret_no_links():
    with pytest.raises(AckRefused) as refused:
        read_ack_token(sign_ack_token(claim(), SECRET), [], NOW)
    assert refused.value.status == 404
    with pytest.raises(ValueError):
        sign_ack_token(claim(), "")


def test_a_validly_signed_payload_of_the_wrong_shape_is_malformed():
    import base64
    import hashlib
    import hmac

    payload = base64.urlsafe_b64encode(b'[1,"jira","default","SUP-7",-1,2,"priya",1]').rstrip(b"=").decode()
    signature = hmac.new(SECRET.encode(), b"escalier-ack.v1." + payload.encode(), hashlib.sha256).digest()
    token = f"{payload}.{base64.urlsafe_b64encode(signature).rstrip(b'=').decode()}"
    with pytest.raises(AckRefused) as refused:
        read_ack_token(token, [SECRET], NOW)
    assert refused.value.code == "malformed_token"


# --- the stored click becomes an event -------------------------------------------------------------


def test_a_stored_click_is_an_acknowledged_event_by_the_person_at_the_click_time():
    from escalier.webhooks.ack import delivery_body

    raw = RawEvent(source="ack", instance="default", body=delivery_body(claim()), headers={},
                   received_at=NOW, delivery_id="ack-1", inbox_id=4)
    [event] = parse_acknowledgement(raw)
    assert (event.kind, event.system, event.ticket_id, event.actor) == (
        EventKind.ACKNOWLEDGED, "jira", "SUP-7", "priya")
    assert event.occurred_at == NOW and event.id == "ack-1"
    with pytest.raises(PayloadError):
        parse_acknowledgement(RawEvent(source="ack", instance="default", body=b"{}", headers={},
                                       received_at=NOW))


def test_the_mail_plugin_parses_clicks():
    from escalier.webhooks.ack import delivery_body

    pm = get_plugin_manager(load_entrypoints=False)
    raw = RawEvent(source="ack", instance="default", body=delivery_body(claim()), headers={},
                   received_at=NOW, delivery_id="ack-2")
    [event] = pm.hook.parse_event_for_connector(raw=raw, config=None, connection=None)
    assert event.kind is EventKind.ACKNOWLEDGED


# --- the receiver ------------------------------------------------------------------------------------


def escalation(app, *, moves: int = 2, tier: int = 2, acknowledged: bool = False,
               status: EscalationStatus = EscalationStatus.OPEN) -> None:
    """Store an escalation of SUP-7 in the receiver's store."""
    ticket = Ticket(system="jira", id="SUP-7", subject="Export fails", created_at=NOW - timedelta(hours=1))
    state = EscalationState(
        system="jira", ticket_id="SUP-7", ticket=ticket, tier=tier, status=status,
        opened_at=ticket.created_at, tier_entered_at=NOW - timedelta(minutes=5),
        policy_version="v1", moves=moves,
        notification=NotificationState(
            acknowledged=Acknowledgement(by="jonas", at=NOW - timedelta(minutes=1)) if acknowledged else None),
    )
    store = Store(app.extensions["escalier"].engine)
    with store.begin() as tx:
        current = tx.load_escalation("jira", "default", "SUP-7")
        tx.save_escalation(current, state, NOW)


@pytest.fixture
def ack_app(make_app):
    return make_app(ack_secrets=(SECRET, OLD_SECRET))


def test_get_shows_a_confirmation_page_and_stores_nothing(ack_app):
    escalation(ack_app)
    token = sign_ack_token(claim(), SECRET)
    answer = ack_app.test_client().get(f"/ack/{token}")
    assert answer.status_code == 200
    assert answer.mimetype == "text/html"
    page = answer.get_data(as_text=True)
    assert 'method="post"' in page and "SUP-7" in page and "priya" in page
    assert rows(ack_app) == []


def test_post_stores_the_click_before_answering_and_a_second_click_is_a_duplicate(ack_app):
    escalation(ack_app)
    token = sign_ack_token(claim(), SECRET)
    client = ack_app.test_client()
    answer = client.post(f"/ack/{token}")
    assert answer.status_code == 202
    assert answer.json["status"] == "accepted"
    [row] = rows(ack_app)
    assert (row.source, row.instance, row.state, row.event_type) == ("ack", "default", "pending", "acknowledged")
    assert row.delivery_id.startswith("ack-")
    [event] = parse_acknowledgement(RawEvent(source=row.source, instance=row.instance, body=row.body,
                                             headers=row.headers, received_at=NOW,
                                             delivery_id=row.delivery_id))
    assert event.actor == "priya"
    again = client.post(f"/ack/{token}")
    assert again.status_code == 200 and again.json["status"] == "duplicate"
    assert len(rows(ack_app)) == 1


def test_a_browser_posting_the_form_gets_a_page(ack_app):
    escalation(ack_app)
    answer = ack_app.test_client().post(f"/ack/{sign_ack_token(claim(), SECRET)}",
                                        headers={"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"})
    assert answer.status_code == 202 and answer.mimetype == "text/html"
    assert "acknowledged" in answer.get_data(as_text=True)


@pytest.mark.parametrize(("setup", "made", "status", "code"), [
    ({}, claim(move=1), 409, "superseded"),
    ({}, claim(tier=1), 409, "superseded"),
    ({"status": EscalationStatus.RESOLVED}, claim(), 409, "not_open"),
    (None, claim(), 404, "unknown_ticket"),
    ({}, claim(expires_at=NOW - timedelta(seconds=1)), 410, "expired"),
])
def test_a_link_that_cannot_acknowledge_is_refused_with_a_reason_and_nothing_is_stored(
        ack_app, setup, made, status, code):
    if setup is not None:
        escalation(ack_app, **setup)
    client = ack_app.test_client()
    token = sign_ack_token(made, SECRET)
    answer = client.post(f"/ack/{token}")
    assert answer.status_code == status
    assert answer.json["error"] == code and answer.json["reason"]
    page = client.get(f"/ack/{token}")
    assert page.status_code == status and page.mimetype == "text/html"
    assert rows(ack_app) == []


def test_a_forged_link_is_refused_json_for_post_and_a_page_for_get(ack_app):
    escalation(ack_app)
    token = sign_ack_token(claim(), "somebody-elses-secret-0123456789")
    client = ack_app.test_client()
    answer = client.post(f"/ack/{token}")
    assert answer.status_code == 403 and answer.json["error"] == "bad_signature"
    page = client.get(f"/ack/{token}")
    assert page.status_code == 403 and "cannot acknowledge" in page.get_data(as_text=True)
    assert rows(ack_app) == []
    metrics = client.get("/metrics").get_data(as_text=True)
    assert 'escalier_webhooks_rejected_total{reason="bad_signature",source="ack"}' in metrics


def test_an_acknowledged_step_answers_harmlessly(ack_app):
    escalation(ack_app, acknowledged=True)
    token = sign_ack_token(claim(), SECRET)
    client = ack_app.test_client()
    answer = client.post(f"/ack/{token}")
    assert answer.status_code == 200
    assert answer.json == {"status": "already_acknowledged", "by": "jonas",
                           "at": (NOW - timedelta(minutes=1)).isoformat()}
    assert "Already acknowledged" in client.get(f"/ack/{token}").get_data(as_text=True)
    assert rows(ack_app) == []


def test_without_secrets_there_is_no_ack_endpoint(app):
    answer = app.test_client().post(f"/ack/{sign_ack_token(claim(), SECRET)}")
    assert answer.status_code == 404


# --- the settings ------------------------------------------------------------------------------------

POLICY = """\
name: Links
default_calendar: always
calendars: {always: {timezone: UTC, hours: 24x7}}
connectors:
  email:
    from_address: escalations@northwind.example
    smtp: {host: 127.0.0.1, port: 2525, security: none}
    acknowledge_links: {url: "https://escalier.northwind.example/", secrets: ["${ACK_NEW}", "${ACK_OLD}"]}
tiers:
  - {level: 1, name: General support, targets: {email: {address: tier1@northwind.example}}}
"""


def test_the_receiver_reads_the_link_secrets_from_the_mail_connector(tmp_path):
    path = tmp_path / "escalier.yaml"
    path.write_text(POLICY)
    policy = load_policy(path, plugin_manager=get_plugin_manager(load_entrypoints=False))
    settings = ReceiverSettings.from_policy(policy, {"ACK_NEW": "n" * 20, "ACK_OLD": "o" * 20}, "sqlite://")
    assert settings.ack_secrets == ("n" * 20, "o" * 20)
    assert "n" * 20 not in repr(settings)
    with pytest.raises(ConfigError) as error:
        ReceiverSettings.from_policy(policy, {"ACK_NEW": "n" * 20}, "sqlite://")
    assert "connectors.email.acknowledge_links.secrets[1]" in str(error.value)
    assert "ACK_OLD" in str(error.value)
