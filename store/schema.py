"""The tables of the store, on one SQLAlchemy ``MetaData``.

Portable between SQLite (the embedded default) and PostgreSQL (several nodes): JSON columns hold
serialised model objects, times are stored as timezone-aware UTC.
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    DateTime,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)

__all__ = [
    "audit",
    "dead_letters",
    "escalations",
    "inbox",
    "mail_bounces",
    "mail_replies",
    "mail_sent",
    "metadata",
    "outbox",
    "sync_cursors",
    "timers",
]

metadata = MetaData()

# SQLite only auto-increments INTEGER PRIMARY KEY; PostgreSQL wants BIGINT for long-lived tables.
Id = BigInteger().with_variant(Integer(), "sqlite")

# Every received webhook or mail, stored raw before it is acknowledged.
inbox = Table(
    "inbox",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("source", String(64), nullable=False),
    Column("instance", String(128), nullable=False),
    Column("delivery_id", String(255), nullable=True),
    Column("body_sha256", String(64), nullable=False),
    Column("event_type", String(255), nullable=True),
    Column("headers", JSON, nullable=False),
    Column("body", LargeBinary, nullable=False),
    Column("received_at", DateTime(timezone=True), nullable=False),
    # pending -> done | ignored | failed; a claim is a lease that expires if its worker dies.
    Column("state", String(16), nullable=False, default="pending"),
    Column("claimed_by", String(128), nullable=True),
    Column("claimed_until", DateTime(timezone=True), nullable=True),
    Column("attempts", Integer, nullable=False, default=0),
    Column("error", Text, nullable=True),
    Column("processed_at", DateTime(timezone=True), nullable=True),
    UniqueConstraint("source", "instance", "delivery_id", name="uq_inbox_delivery"),
    Index("ix_inbox_body", "source", "instance", "body_sha256", "received_at"),
    Index("ix_inbox_pending", "state", "id"),
)

# One row per escalation: the engine's state, serialised, and the columns queries need.
escalations = Table(
    "escalations",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("system", String(64), nullable=False),
    Column("instance", String(128), nullable=False),
    Column("ticket_id", String(255), nullable=False),
    Column("tier", Integer, nullable=False),
    Column("status", String(16), nullable=False),
    Column("policy_version", String(64), nullable=False),
    Column("state", JSON, nullable=False),
    Column("opened_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Column("wake_at", DateTime(timezone=True), nullable=True),
    Column("version", Integer, nullable=False, default=0),
    UniqueConstraint("system", "instance", "ticket_id", name="uq_escalation_ticket"),
    Index("ix_escalations_status_tier", "status", "tier"),
)

# The audit trail: every decision, with why, which criteria and which policy version.
audit = Table(
    "audit",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("escalation_id", BigInteger, nullable=False),
    Column("at", DateTime(timezone=True), nullable=False),
    Column("kind", String(64), nullable=False),
    Column("from_tier", Integer, nullable=True),
    Column("to_tier", Integer, nullable=True),
    Column("reason", Text, nullable=False),
    Column("criteria", JSON, nullable=False),
    Column("actor", String(255), nullable=True),
    Column("policy_version", String(64), nullable=False),
    Column("event_id", String(255), nullable=True),
    Index("ix_audit_escalation", "escalation_id", "at"),
)

# One wake-up per escalation at most; a sweep reads only what is due.
timers = Table(
    "timers",
    metadata,
    Column("escalation_id", BigInteger, primary_key=True),
    Column("due_at", DateTime(timezone=True), nullable=False),
    Column("claimed_by", String(128), nullable=True),
    Column("claimed_until", DateTime(timezone=True), nullable=True),
    Index("ix_timers_due", "due_at"),
)

# Upstream actions, written in the same transaction as the decision that made them.
outbox = Table(
    "outbox",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("idempotency_key", String(255), nullable=False, unique=True),
    Column("escalation_id", BigInteger, nullable=False),
    Column("system", String(64), nullable=False),
    Column("instance", String(128), nullable=False),
    Column("ticket_id", String(255), nullable=False),
    Column("seq", Integer, nullable=False),
    Column("urgency", Integer, nullable=False, default=0),
    Column("action", JSON, nullable=False),
    # pending -> done | dead
    Column("state", String(16), nullable=False, default="pending"),
    Column("attempts", Integer, nullable=False, default=0),
    Column("next_attempt_at", DateTime(timezone=True), nullable=False),
    Column("claimed_by", String(128), nullable=True),
    Column("claimed_until", DateTime(timezone=True), nullable=True),
    Column("last_error", Text, nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("applied_at", DateTime(timezone=True), nullable=True),
    Index("ix_outbox_ready", "state", "next_attempt_at"),
    Index("ix_outbox_ticket", "system", "instance", "ticket_id", "seq"),
    # The ordering rule reads "is an earlier action of this ticket still pending?" on every claim.
    Index("ix_outbox_ticket_state", "escalation_id", "state", "seq"),
)

# Actions that exhausted their attempts, kept for `escalier dlq list|retry`.
dead_letters = Table(
    "dead_letters",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("outbox_id", BigInteger, nullable=False, unique=True),
    Column("failed_at", DateTime(timezone=True), nullable=False),
    Column("error", Text, nullable=False),
    Column("retried_at", DateTime(timezone=True), nullable=True),
)

# Reconciliation: per connection, where the last look for missed changes got to, and when the
# next one is due; a claim is a lease, so one worker looks at a time.
sync_cursors = Table(
    "sync_cursors",
    metadata,
    Column("system", String(64), primary_key=True),
    Column("instance", String(128), primary_key=True),
    Column("cursor", Text, nullable=True),
    Column("due_at", DateTime(timezone=True), nullable=False),
    Column("claimed_by", String(128), nullable=True),
    Column("claimed_until", DateTime(timezone=True), nullable=True),
    Column("synced_at", DateTime(timezone=True), nullable=True),
    Column("last_error", Text, nullable=True),
)

# Mail: addresses a bounce named, and the automatic replies sent to each address, so that every
# worker, and a restarted one, honours a bounce and the hourly limit of replies to one address.
mail_bounces = Table(
    "mail_bounces",
    metadata,
    Column("instance", String(128), primary_key=True),
    Column("address", String(320), primary_key=True),
    Column("marked_at", DateTime(timezone=True), nullable=False),
)

mail_replies = Table(
    "mail_replies",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("instance", String(128), nullable=False),
    Column("address", String(320), nullable=False),
    Column("sent_at", DateTime(timezone=True), nullable=False),
    Index("ix_mail_replies_address", "instance", "address", "sent_at"),
)

# Mail: every mail sent, by its Message-ID (one per action, or per action and address), so that
# a retry, or another worker, never sends it again.
mail_sent = Table(
    "mail_sent",
    metadata,
    Column("message_id", String(255), primary_key=True),
    Column("instance", String(128), nullable=False),
    Column("sent_at", DateTime(timezone=True), nullable=False),
)
