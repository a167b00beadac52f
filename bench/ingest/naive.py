"""The durable receiver a careful user would write by hand: the peer Escalier is measured against.

The same route and signature check as Escalier's Zendesk endpoint (HMAC-SHA256 over timestamp and
body, compared with ``hmac.compare_digest``), ``json.loads`` of the body, then one INSERT of the
delivery id, the headers and the body and a COMMIT per request, into SQLite in WAL mode with
``synchronous=FULL``, one connection per thread, a busy timeout; a delivery id seen before is
answered as a duplicate, and 202 only once the row is committed. Nothing here is weakened to
flatter the comparison, and nothing is tuned beyond what such a user would do.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import sqlite3
import threading

from flask import Flask, request

SCHEMA = """
CREATE TABLE IF NOT EXISTS deliveries (
    id INTEGER PRIMARY KEY,
    delivery_id TEXT NOT NULL UNIQUE,
    headers TEXT NOT NULL,
    body BLOB NOT NULL,
    received_at TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP
)
"""


def _connect(path: str) -> sqlite3.Connection:
    db = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute("PRAGMA busy_timeout=30000")
    return db


def create_schema(path: str) -> None:
    """Create the deliveries table (once, before the server starts)."""
    db = _connect(path)
    try:
        db.execute(SCHEMA)
    finally:
        db.close()


def create_app(path: str, secret: str) -> Flask:
    """The naive receiver, storing into the SQLite file at ``path``."""
    app = Flask("naive", static_folder=None)
    key = secret.encode()
    local = threading.local()

    def connection() -> sqlite3.Connection:
        db = getattr(local, "db", None)
        if db is None:
            db = local.db = _connect(path)
        return db

    @app.get("/healthz")
    def healthz():
        return {"status": "alive"}

    @app.post("/webhooks/zendesk")
    def receive():
        body = request.get_data()
        signature = request.headers.get("X-Zendesk-Webhook-Signature", "")
        stamp = request.headers.get("X-Zendesk-Webhook-Signature-Timestamp", "")
        expected = base64.b64encode(hmac.new(key, stamp.encode() + body, hashlib.sha256).digest()).decode()
        if not hmac.compare_digest(expected, signature):
            return {"error": "bad_signature"}, 401
        try:
            json.loads(body)
        except ValueError:
            return {"error": "malformed_json"}, 400
        delivery_id = request.headers.get("X-Zendesk-Webhook-Invocation-Id", "")
        headers = json.dumps({k: v for k, v in request.headers.items() if "signature" not in k.lower()})
        db = connection()
        try:
            db.execute("BEGIN")
            db.execute("INSERT INTO deliveries (delivery_id, headers, body) VALUES (?, ?, ?)",
                       (delivery_id, headers, body))
            db.execute("COMMIT")
        except sqlite3.IntegrityError:
            db.execute("ROLLBACK")
            return {"status": "duplicate"}, 200
        except sqlite3.Error:
            if db.in_transaction:
                db.execute("ROLLBACK")
            return {"error": "store_unavailable"}, 503
        return {"status": "accepted"}, 202

    return app
