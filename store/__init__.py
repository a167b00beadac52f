"""The store: tables, migrations, and the runtime's operations on them (SQLite or PostgreSQL)."""

from escalier.store._store import (
    ClaimedAction,
    ClaimedBatch,
    ClaimedCursor,
    ClaimedTimer,
    DeadLetter,
    StaleStateError,
    Store,
    StoredEscalation,
    Transaction,
    utc,
)
from escalier.store.database import create_store_engine, default_url, ensure_schema
from escalier.store.migrate import upgrade

__all__ = [
    "ClaimedAction",
    "ClaimedBatch",
    "ClaimedCursor",
    "ClaimedTimer",
    "DeadLetter",
    "StaleStateError",
    "Store",
    "StoredEscalation",
    "Transaction",
    "create_store_engine",
    "default_url",
    "ensure_schema",
    "upgrade",
    "utc",
]
