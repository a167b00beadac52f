"""The initial store: inbox, escalations, audit, timers, outbox, dead letters.

Revision ID: 0001
Revises:
Create Date: 2026-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

# Written out rather than imported from schema.py: a revision is a snapshot and must not change
# when the schema module moves on.
Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
When = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "inbox",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("source", sa.String(64), nullable=False),
        sa.Column("instance", sa.String(128), nullable=False),
        sa.Column("delivery_id", sa.String(255), nullable=True),
        sa.Column("body_sha256", sa.String(64), nullable=False),
        sa.Column("event_type", sa.String(255), nullable=True),
        sa.Column("headers", sa.JSON, nullable=False),
        sa.Column("body", sa.LargeBinary, nullable=False),
        sa.Column("received_at", When, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("claimed_by", sa.String(128), nullable=True),
        sa.Column("claimed_until", When, nullable=True),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("error", sa.Text, nullable=True),
        sa.Column("processed_at", When, nullable=True),
        sa.UniqueConstraint("source", "instance", "delivery_id", name="uq_inbox_delivery"),
    )
    op.create_index("ix_inbox_body", "inbox", ["source", "instance", "body_sha256", "received_at"])
    op.create_index("ix_inbox_pending", "inbox", ["state", "id"])

    op.create_table(
        "escalations",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("system", sa.String(64), nullable=False),
        sa.Column("instance", sa.String(128), nullable=False),
        sa.Column("ticket_id", sa.String(255), nullable=False),
        sa.Column("tier", sa.Integer, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("policy_version", sa.String(64), nullable=False),
        sa.Column("state", sa.JSON, nullable=False),
        sa.Column("opened_at", When, nullable=False),
        sa.Column("updated_at", When, nullable=False),
        sa.Column("wake_at", When, nullable=True),
        sa.Column("version", sa.Integer, nullable=False),
        sa.UniqueConstraint("system", "instance", "ticket_id", name="uq_escalation_ticket"),
    )
    op.create_index("ix_escalations_status_tier", "escalations", ["status", "tier"])

    op.create_table(
        "audit",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("escalation_id", sa.BigInteger, nullable=False),
        sa.Column("at", When, nullable=False),
        sa.Column("kind", sa.String(64), nullable=False),
        sa.Column("from_tier", sa.Integer, nullable=True),
        sa.Column("to_tier", sa.Integer, nullable=True),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("criteria", sa.JSON, nullable=False),
        sa.Column("actor", sa.String(255), nullable=True),
        sa.Column("policy_version", sa.String(64), nullable=False),
        sa.Column("event_id", sa.String(255), nullable=True),
    )
    op.create_index("ix_audit_escalation", "audit", ["escalation_id", "at"])

    op.create_table(
        "timers",
        sa.Column("escalation_id", sa.BigInteger, primary_key=True),
        sa.Column("due_at", When, nullable=False),
        sa.Column("claimed_by", sa.String(128), nullable=True),
        sa.Column("claimed_until", When, nullable=True),
    )
    op.create_index("ix_timers_due", "timers", ["due_at"])

    op.create_table(
        "outbox",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("idempotency_key", sa.String(255), nullable=False, unique=True),
        sa.Column("escalation_id", sa.BigInteger, nullable=False),
        sa.Column("system", sa.String(64), nullable=False),
        sa.Column("instance", sa.String(128), nullable=False),
        sa.Column("ticket_id", sa.String(255), nullable=False),
        sa.Column("seq", sa.Integer, nullable=False),
        sa.Column("urgency", sa.Integer, nullable=False),
        sa.Column("action", sa.JSON, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("next_attempt_at", When, nullable=False),
        sa.Column("claimed_by", sa.String(128), nullable=True),
        sa.Column("claimed_until", When, nullable=True),
        sa.Column("last_error", sa.Text, nullable=True),
        sa.Column("created_at", When, nullable=False),
        sa.Column("applied_at", When, nullable=True),
    )
    op.create_index("ix_outbox_ready", "outbox", ["state", "next_attempt_at"])
    op.create_index("ix_outbox_ticket", "outbox", ["system", "instance", "ticket_id", "seq"])
    op.create_index("ix_outbox_ticket_state", "outbox", ["escalation_id", "state", "seq"])

    op.create_table(
        "dead_letters",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("outbox_id", sa.BigInteger, nullable=False, unique=True),
        sa.Column("failed_at", When, nullable=False),
        sa.Column("error", sa.Text, nullable=False),
        sa.Column("retried_at", When, nullable=True),
    )


def downgrade() -> None:
    for table in ("dead_letters", "outbox", "timers", "audit", "escalations", "inbox"):
        op.drop_table(table)
