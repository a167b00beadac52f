"""Reconciliation cursors: where each connection's last look for missed changes got to.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

When = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "sync_cursors",
        sa.Column("system", sa.String(64), primary_key=True),
        sa.Column("instance", sa.String(128), primary_key=True),
        sa.Column("cursor", sa.Text, nullable=True),
        sa.Column("due_at", When, nullable=False),
        sa.Column("claimed_by", sa.String(128), nullable=True),
        sa.Column("claimed_until", When, nullable=True),
        sa.Column("synced_at", When, nullable=True),
        sa.Column("last_error", sa.Text, nullable=True),
    )


def downgrade() -> None:
    op.drop_table("sync_cursors")
