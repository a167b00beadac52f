"""Constants the runtime tests share."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import Engine, select

from escalier.store.schema import outbox

DESK = Path(__file__).resolve().parent / "policies" / "desk.yaml"
START = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)


def keys_in_store(engine: Engine) -> dict[str, list[str]]:
    """Each ticket's action keys as the outbox holds them, in the order they were issued."""
    with engine.connect() as connection:
        rows = connection.execute(
            select(outbox.c.ticket_id, outbox.c.idempotency_key).order_by(outbox.c.ticket_id, outbox.c.seq)
        ).all()
    found: dict[str, list[str]] = {}
    for row in rows:
        found.setdefault(row.ticket_id, []).append(row.idempotency_key)
    return found
