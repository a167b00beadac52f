"""The receiver: an app factory with one blueprint per webhook source.

A view checks size and content type, verifies authenticity on the raw body, parses JSON, checks
freshness, classifies the event, stores the raw delivery durably, and only then answers 2xx.
Bad input is a 4xx; failing to store is the only 5xx (503, so the sender retries).

What a delivery keeps: its raw body as bytes, and only the headers ``ReceiverSettings.kept_headers``
names. Its same-body de-duplication key covers what its signature covers: the body alone where the
signature covers no time (Jira), the signed timestamp and the body where it does (Zendesk), so two
events whose templated bodies happen to be identical are two deliveries. A delivery id never goes
into that key: no sender signs it, so a replay could change it at will.

Where acknowledge links are configured (``ReceiverSettings.ack_secrets``), ``/ack/<token>`` serves
them (:mod:`escalier.webhooks.ack`): a GET answers a confirmation page and changes nothing, a POST
checks the link against the escalation (the same move and tier, still open) and stores the click
in the inbox as source ``ack``, before answering, like a delivery.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import os
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import pluggy
from flask import Blueprint, Flask, Response, current_app, g, jsonify, request
from sqlalchemy import Engine, select
from sqlalchemy.exc import SQLAlchemyError
from werkzeug.exceptions import HTTPException

from escalier.core.errors import PluginError, StoreError
from escalier.core.extensions import OwnIdentity, WebhookRejected, WebhookSpec
from escalier.core.model import EscalationState, EscalationStatus
from escalier.plugins import get_plugin_manager
from escalier.store.database import create_store_engine, ensure_schema
from escalier.store.inbox import Delivery, GroupCommitter
from escalier.store.schema import escalations, inbox
from escalier.webhooks import _metrics
from escalier.webhooks.ack import (
    ACK_SOURCE,
    AckClaim,
    AckRefused,
    delivery_body,
    delivery_id as ack_delivery_id,
    page,
    read_ack_token,
)
from escalier.webhooks.dashboard import dashboard_blueprint
from escalier.webhooks.settings import DEFAULT_KEPT_HEADERS, ReceiverSettings
from escalier.webhooks.verification import Rejected

__all__ = ["Receiver", "create_app"]

log = logging.getLogger("escalier.webhooks")

_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_PRINTABLE_ID = re.compile(r"^[\x21-\x7e]{1,255}$")
_HTTP_CODES = {
    400: "bad_request",
    404: "not_found",
    405: "method_not_allowed",
    413: "body_too_large",
    415: "unsupported_media_type",
}


@dataclass
class Receiver:
    """What the views share, kept in ``app.extensions["escalier"]``."""

    settings: ReceiverSettings
    specs: Mapping[str, WebhookSpec]
    engine: Engine
    committer: GroupCommitter
    plugin_manager: pluggy.PluginManager
    counters: _metrics.Counters = field(default_factory=_metrics.Counters)
    # The kept headers as (WSGI environ key, header name) pairs, worked out once.
    kept_headers: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        if not self.kept_headers:
            self.kept_headers = _environ_keys(self.settings.kept_headers)

    def identity(self, source: str, instance: str) -> OwnIdentity:
        """How Escalier recognises its own changes coming back from one instance."""
        ids = self.settings.identities.get((source, instance), ())
        return OwnIdentity(user_ids=frozenset(ids), marker=self.settings.marker)

    def close(self) -> None:
        """Stop taking deliveries and close the store's connections."""
        self.committer.close()
        self.engine.dispose()


def _collect_specs(pm: pluggy.PluginManager) -> dict[str, WebhookSpec]:
    specs: dict[str, WebhookSpec] = {}
    # pluggy answers third-party plugins before our trylast built-ins: the first name wins, so a
    # plugin overrides a built-in endpoint by registering the same name.
    for registered in pm.hook.register_webhooks():
        for spec in registered or ():
            if not _NAME.match(spec.name):
                raise PluginError(f"webhook name {spec.name!r} is not a URL-safe lower-case name")
            specs.setdefault(spec.name, spec)
    return specs


def create_app(settings: ReceiverSettings, *, plugin_manager: pluggy.PluginManager | None = None) -> Flask:
    """The receiver app for ``settings``; endpoints come from the ``register_webhooks`` hook."""
    pm = plugin_manager or get_plugin_manager()
    specs = _collect_specs(pm)
    app = Flask("escalier.webhooks", static_folder=None)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    # /webhooks/jira//eu is not a path of ours: werkzeug would answer an HTML 308 to a merged one,
    # which no webhook sender follows with its body.
    app.url_map.merge_slashes = False
    engine = create_store_engine(settings.store_url)
    if settings.create_schema:
        ensure_schema(engine)
    committer = GroupCommitter(
        engine, dedupe_window=settings.dedupe_window, max_batch=settings.max_batch
    )
    app.extensions["escalier"] = Receiver(settings, specs, engine, committer, pm)

    for name, spec in sorted(specs.items()):
        app.register_blueprint(_blueprint(spec))
    app.add_url_rule("/healthz", "healthz", _healthz, methods=["GET"])
    app.add_url_rule("/readyz", "readyz", _readyz, methods=["GET"])
    app.add_url_rule("/metrics", "metrics", _metrics_view, methods=["GET"])
    if settings.dashboard:
        app.register_blueprint(dashboard_blueprint())
    if settings.ack_secrets:
        app.register_blueprint(_ack_blueprint())
    app.wsgi_app = _RequestIds(app.wsgi_app)  # type: ignore[method-assign]
    app.register_error_handler(Rejected, _rejected)
    app.register_error_handler(WebhookRejected, _rejected)
    app.register_error_handler(StoreError, _store_failed)
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(Exception, _unexpected)
    return app


def _blueprint(spec: WebhookSpec) -> Blueprint:
    blueprint = Blueprint(f"webhook_{spec.name}", __name__, url_prefix=f"/webhooks/{spec.name}")

    def receive_default() -> Response:
        return _receive(spec, "default")

    def receive(instance: str) -> Response:
        return _receive(spec, instance)

    blueprint.add_url_rule("", "receive_default", receive_default, methods=["POST"])
    blueprint.add_url_rule("/<instance>", "receive", receive, methods=["POST"])
    return blueprint


def _ack_blueprint() -> Blueprint:
    """``/ack/<token>``: GET shows what the link acknowledges and changes nothing; POST acknowledges."""
    blueprint = Blueprint("ack", __name__, url_prefix="/ack")
    blueprint.add_url_rule("/<token>", "confirm", _ack_confirm, methods=["GET"])
    blueprint.add_url_rule("/<token>", "acknowledge", _ack_acknowledge, methods=["POST"])
    return blueprint


def _ack_check(token: str) -> tuple[AckClaim, EscalationState]:
    """The link's claim and the escalation it is for, or :class:`AckRefused`."""
    receiver = _receiver()
    g.source = ACK_SOURCE
    receiver.counters.inc("escalier_webhooks_received_total", source=ACK_SOURCE)
    claim = read_ack_token(token, receiver.settings.ack_secrets, receiver.settings.clock())
    with receiver.engine.connect() as conn:
        value = conn.execute(
            select(escalations.c.state).where(
                escalations.c.system == claim.system, escalations.c.instance == claim.instance,
                escalations.c.ticket_id == claim.ticket_id,
            )
        ).scalar()
    if value is None:
        raise AckRefused("unknown_ticket", f"Escalier has no escalation of {claim.system} "
                         f"{claim.ticket_id}", status=404)
    state = (EscalationState.model_validate_json(value) if isinstance(value, (str, bytes))
             else EscalationState.model_validate(value))
    if state.status is not EscalationStatus.OPEN:
        raise AckRefused("not_open", f"{claim.system} {claim.ticket_id} is {state.status.value}: "
                         "there is nothing left to acknowledge", status=409)
    if (state.moves, state.tier) != (claim.move, claim.tier):
        raise AckRefused("superseded", f"{claim.system} {claim.ticket_id} has moved on since this "
                         f"notice (now at tier {state.tier}); the latest notice carries a link of "
                         "its own", status=409)
    return claim, state


def _ack_refused(exc: AckRefused, *, html: bool) -> Response:
    receiver = _receiver()
    receiver.counters.inc("escalier_webhooks_rejected_total", source=ACK_SOURCE, reason=exc.code)
    log.warning("ack.rejected", extra={"request_id": _request_id(), "reason": exc.code,
                                       "status": exc.status})
    if html:
        return Response(page("This link cannot acknowledge", exc.reason), status=exc.status,
                        mimetype="text/html")
    return _error(exc.status, exc.code, exc.reason)


def _what(claim: AckClaim) -> str:
    return f"tier {claim.tier} of {claim.system} {claim.ticket_id}"


def _ack_confirm(token: str) -> Response:
    # A GET changes nothing: mail scanners and link previews follow every link they see.
    try:
        claim, state = _ack_check(token)
    except AckRefused as exc:
        return _ack_refused(exc, html=True)
    done = state.notification.acknowledged
    if done is not None:
        text = f"{done.by} acknowledged {_what(claim)} at {done.at:%Y-%m-%d %H:%M} UTC; nothing is left to do."
        return Response(page("Already acknowledged", text), mimetype="text/html")
    subject = state.ticket.subject or claim.ticket_id
    text = (f"Acknowledge {_what(claim)} ({subject}) as {claim.person}? The repeated notices stop; "
            "the resolve clock runs on.")
    return Response(page("Acknowledge this escalation", text, form_action=request.path),
                    mimetype="text/html")


def _ack_acknowledge(token: str) -> Response:
    """Store the click like a webhook (durably, before answering); the worker acknowledges."""
    wants_html = _prefers_html()
    try:
        claim, state = _ack_check(token)
    except AckRefused as exc:
        return _ack_refused(exc, html=wants_html)
    receiver = _receiver()
    done = state.notification.acknowledged
    if done is not None:
        if wants_html:
            text = f"{done.by} acknowledged {_what(claim)} already; nothing is left to do."
            return Response(page("Already acknowledged", text), mimetype="text/html")
        return _status(200, status="already_acknowledged", by=done.by, at=done.at.isoformat())
    delivery = Delivery(
        source=ACK_SOURCE,
        instance=claim.instance,
        body=delivery_body(claim),
        headers=_kept_headers(request.environ, receiver.kept_headers),
        received_at=receiver.settings.clock(),
        delivery_id=ack_delivery_id(token),
        event_type="acknowledged",
    )
    outcome = receiver.committer.accept(delivery)
    context = {"request_id": _request_id(), "system": claim.system, "instance": claim.instance,
               "ticket_id": claim.ticket_id, "tier": claim.tier, "inbox_id": outcome.id}
    if outcome.status == "duplicate":
        receiver.counters.inc("escalier_webhooks_duplicates_total", source=ACK_SOURCE)
        log.info("ack.duplicate", extra=context)
        status, code = 200, "duplicate"
    else:
        log.info("ack.accepted", extra=context)
        status, code = 202, "accepted"
    if wants_html:
        text = f"Thank you: {_what(claim)} is acknowledged as {claim.person}. The repeated notices stop."
        return Response(page("Acknowledged", text), status=status, mimetype="text/html")
    return _status(status, status=code, id=outcome.id, ticket_id=claim.ticket_id, tier=claim.tier)


def _prefers_html() -> bool:
    """A browser's form post wants a page back; any other client JSON."""
    accept = request.accept_mimetypes
    return accept["text/html"] > accept["application/json"]


def _receiver() -> Receiver:
    return current_app.extensions["escalier"]


class _RequestIds:
    """WSGI middleware: every request gets an id (the sender's, if it is sane) and echoes it.

    Outside Flask's hooks so that every response carries it, error pages included, and because a
    webhook request is cheap enough that the hooks' machinery is a visible part of it.
    """

    def __init__(self, wsgi_app: Any) -> None:
        self.wsgi_app = wsgi_app

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        given = environ.get("HTTP_X_REQUEST_ID", "")
        request_id = given if given and _REQUEST_ID.match(given) else _new_request_id()
        environ[_REQUEST_ID_KEY] = request_id

        def start(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            headers.append(("X-Request-Id", request_id))
            return start_response(status, headers, exc_info)

        return self.wsgi_app(environ, start)


_REQUEST_ID_KEY = "escalier.request_id"


def _new_request_id() -> str:
    """A request id unique across processes and restarts: a random prefix per process, then a
    count (uuid4 per request reads the system's random source each time)."""
    return f"{_id_prefix}{next(_id_count):08x}"


def _reset_request_ids() -> None:
    global _id_prefix, _id_count
    _id_prefix = uuid.uuid4().hex[:16]
    _id_count = itertools.count()


_reset_request_ids()
# A forked worker must not repeat its parent's ids.
os.register_at_fork(after_in_child=_reset_request_ids)


def _request_id() -> str | None:
    return request.environ.get(_REQUEST_ID_KEY)


def _error(status: int, code: str, reason: str) -> Response:
    response = jsonify(error=code, reason=reason)
    response.status_code = status
    return response


def _environ_keys(names: frozenset[str]) -> tuple[tuple[str, str], ...]:
    """The WSGI environ key and the usual spelling (as ``request.headers`` gives it) of each name."""
    pairs = []
    for lower in sorted({name.lower() for name in names}):
        key = lower.upper().replace("-", "_")
        if lower not in ("content-type", "content-length"):
            key = f"HTTP_{key}"
        pairs.append((key, "-".join(part.capitalize() for part in lower.split("-"))))
    return tuple(pairs)


def _kept_headers(
    environ: Mapping[str, Any], kept: tuple[tuple[str, str], ...] = _environ_keys(DEFAULT_KEPT_HEADERS)
) -> dict[str, str]:
    """The request's headers that ``kept`` (from :func:`_environ_keys`) names; no other is stored."""
    found = {}
    for key, name in kept:
        value = environ.get(key)
        if value is not None and (value or not key.startswith("CONTENT_")):
            found[name] = value
    return found


def _parse(body: bytes) -> dict[str, Any]:
    """The body as a JSON object: UTF-8 only, and without a byte order mark (RFC 8259, 8.1).

    ``json.loads`` given bytes would also take UTF-16 or UTF-32 and skip a BOM, where a consumer
    decoding the stored body as UTF-8 would not: every endpoint refuses them alike.
    """
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise Rejected("malformed_json", "the body is not UTF-8", status=400) from exc
    if text.startswith("\ufeff"):
        raise Rejected(
            "malformed_json", "the body starts with a byte order mark; send UTF-8 JSON without one",
            status=400,
        )
    try:
        payload = json.loads(text)
    except (ValueError, RecursionError) as exc:
        # RecursionError: very deep nesting.
        raise Rejected("malformed_json", "the body is not valid JSON", status=400) from exc
    if not isinstance(payload, dict):
        raise Rejected("malformed_json", "the body is not a JSON object", status=400)
    return payload


def _receive(spec: WebhookSpec, instance: str) -> Response:
    receiver = _receiver()
    settings = receiver.settings
    source = spec.name
    g.source = source
    # The request object itself: each attribute read through the proxy looks the context up.
    request_ = request._get_current_object()  # type: ignore[attr-defined]
    headers = request_.headers
    receiver.counters.inc("escalier_webhooks_received_total", source=source)
    secrets = settings.secrets.get((source, instance))
    if not secrets:
        raise Rejected(
            "unknown_instance", f"no {source} instance named {instance[:64]!r} is configured", status=404
        )
    if request_.content_length is not None and request_.content_length > settings.max_body_bytes:
        raise Rejected("body_too_large", "the body is larger than the limit", status=413)
    if request_.mimetype not in spec.content_types:
        raise Rejected(
            "unsupported_media_type",
            f"the body must be sent as {' or '.join(spec.content_types)}",
            status=415,
        )
    body = _read_body(request_, settings.max_body_bytes)
    now = settings.clock()
    signed = spec.verify(headers, body, secrets, now)
    if signed is not None and abs(now - signed) > settings.replay_tolerance:
        raise Rejected(
            "replayed", "the signed timestamp is outside the replay tolerance (stale or replayed)"
        )
    payload = _parse(body)
    sent = spec.sent_at(headers, payload) if spec.sent_at else None
    if sent is None and signed is None and spec.sent_at is not None:
        # The signature covers no time and the payload names none we can read: nothing but the
        # same-body window would bound a replay, and past it a captured body would be new again.
        raise Rejected(
            "unusable_timestamp",
            "neither a signature nor the payload says when it was sent (Jira's timestamp in "
            "epoch milliseconds, an EventBridge event's time), so its age cannot be checked",
            status=400,
        )
    # Jira signs no timestamp and retries for about 30 minutes: its payload's own timestamp gets
    # the wider window, and the delivery id catches a replay inside it.
    if sent is not None and abs(now - sent) > settings.payload_max_age:
        raise Rejected(
            "replayed", "the payload's timestamp is outside the replay window (stale or replayed)"
        )
    delivery_id = spec.delivery_id(headers, payload)
    if delivery_id is not None and not _PRINTABLE_ID.match(delivery_id):
        raise Rejected(
            "bad_delivery_id", "the delivery id must be 1 to 255 printable characters", status=400
        )
    event_type = spec.event_type(headers, payload)
    state, error = "pending", None
    if not spec.handles(event_type):
        state, error = "ignored", "unhandled-event"
    elif spec.is_own_change and spec.is_own_change(payload, receiver.identity(source, instance)):
        state, error = "ignored", "own-change"
    delivery = Delivery(
        source=source,
        instance=instance,
        body=body,
        headers=_kept_headers(request_.environ, receiver.kept_headers),
        received_at=now,
        delivery_id=delivery_id,
        event_type=event_type[:255] if event_type else None,
        state=state,
        error=error,
        # An earlier copy of this body was accepted no earlier than its own timestamp allowed.
        body_seen_since=sent - settings.payload_max_age if sent is not None else None,
        body_sha256=_dedupe_key(body, signed),
    )
    outcome = receiver.committer.accept(delivery)
    context = {
        "request_id": request_.environ.get(_REQUEST_ID_KEY),
        "source": source,
        "instance": instance,
        "delivery_id": delivery_id,
        "event_type": delivery.event_type,
    }
    if outcome.status == "duplicate":
        receiver.counters.inc("escalier_webhooks_duplicates_total", source=source)
        log.info("webhook.duplicate", extra={**context, "duplicate_of": outcome.duplicate_of})
        return _status(200, status="duplicate")
    if state == "ignored":
        receiver.counters.inc("escalier_webhooks_ignored_total", source=source)
        if error == "own-change":
            receiver.counters.inc("escalier_webhooks_own_changes_total", source=source)
        log.info("webhook.ignored", extra={**context, "reason": error, "inbox_id": outcome.id})
        return _status(202, status="ignored", reason=error, id=outcome.id)
    log.info("webhook.accepted", extra={**context, "inbox_id": outcome.id})
    return _status(202, status="accepted", id=outcome.id)


def _read_body(request_: Any, limit: int) -> bytes:
    """The raw body, refused with 413 past ``limit`` bytes, whether it has a length or comes in chunks."""
    environ = request_.environ
    if request_.content_length is None and environ.get("wsgi.input_terminated"):
        # A chunked body: werkzeug's reader stops at the limit and hands back a cut body, which
        # then fails its signature check (401) instead of being refused as too large.
        body = environ["wsgi.input"].read(limit + 1)
    else:
        body = request_.get_data(cache=False)
    if len(body) > limit:
        raise Rejected("body_too_large", "the body is larger than the limit", status=413)
    return body


def _dedupe_key(body: bytes, signed: datetime | None) -> str:
    """The same-body key: a hash of what the signature covers (see the module's docstring)."""
    if signed is None:
        return hashlib.sha256(body).hexdigest()
    return hashlib.sha256(signed.isoformat().encode() + b"\n" + body).hexdigest()


def _status(code: int, **fields: Any) -> Response:
    # jsonify's provider machinery is a measurable share of a request this cheap.
    return Response(json.dumps(fields), status=code, mimetype="application/json")


def _rejected(exc: Rejected | WebhookRejected) -> Response:
    # A connector's verifier raises Rejected; WebhookRejected is the same contract from core.
    source = g.get("source", "unknown")
    receiver = _receiver()
    receiver.counters.inc("escalier_webhooks_rejected_total", source=source, reason=exc.code)
    log.warning(
        "webhook.rejected",
        extra={"request_id": _request_id(), "source": source, "reason": exc.code,
               "status": exc.status},
    )
    return _error(exc.status, exc.code, exc.reason)


def _store_failed(exc: StoreError) -> Response:
    log.error(
        "webhook.store_failed",
        extra={"request_id": _request_id(), "source": g.get("source"), "error": str(exc)},
    )
    response = _error(503, "store_unavailable", "the delivery could not be stored; retry later")
    response.headers["Retry-After"] = "5"
    return response


def _http_error(exc: HTTPException) -> Response:
    code = _HTTP_CODES.get(exc.code or 500, "http_error")
    if g.get("source") and code in ("body_too_large", "bad_request"):
        _receiver().counters.inc("escalier_webhooks_rejected_total", source=g.source, reason=code)
    response = _error(exc.code or 500, code, exc.description or exc.name)
    for name, value in exc.get_headers():
        if name.lower() != "content-type":
            response.headers[name] = value
    return response


def _unexpected(exc: Exception) -> Response:
    log.exception("webhook.internal_error", extra={"request_id": _request_id()})
    return _error(500, "internal_error", "an unexpected error occurred")


def _healthz() -> Response:
    return jsonify(status="alive")


def _readyz() -> Response:
    try:
        with _receiver().engine.connect() as conn:
            conn.execute(select(inbox.c.id).limit(1)).all()
    except SQLAlchemyError:
        return _error(503, "store_unavailable", "the store cannot be reached")
    return jsonify(status="ready")


def _metrics_view() -> Response:
    receiver = _receiver()
    text = _metrics.render(
        receiver.counters, receiver.engine, receiver.settings.clock(), sorted(receiver.specs)
    )
    return Response(text, mimetype="text/plain", headers={"Content-Type": "text/plain; version=0.0.4"})
