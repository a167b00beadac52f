"""Mail: bouncing addresses, automatic replies per address, and the mails sent, shared by every worker.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

When = sa.DateTime(timezone=True)
Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "mail_bounces",
        sa.Column("instance", sa.String(128), primary_key=True),
        sa.Column("address", sa.String(320), primary_key=True),
        sa.Column("marked_at", When, nullable=False),
    )
    op.create_table(
        "mail_replies",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("instance", sa.String(128), nullable=False),
        sa.Column("address", sa.String(320), nullable=False),
        sa.Column("sent_at", When, nullable=False),
    )
    op.create_index("ix_mail_replies_address", "mail_replies", ["instance", "address", "sent_at"])
    op.create_table(
        "mail_sent",
        sa.Column("message_id", sa.String(255), primary_key=True),
        sa.Column("instance", sa.String(128), nullable=False),
        sa.Column("sent_at", When, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("mail_sent")
    op.drop_index("ix_mail_replies_address", table_name="mail_replies")
    op.drop_table("mail_replies")
    op.drop_table("mail_bounces")
