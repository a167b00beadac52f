"""Opening the store: SQLite in WAL mode by default, PostgreSQL by URL."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import Engine, create_engine, event

from escalier.store.schema import metadata

__all__ = ["DEFAULT_FILENAME", "create_store_engine", "default_url", "ensure_schema"]

DEFAULT_FILENAME = "escalier.db"


def default_url(policy_path: str | Path | None = None) -> str:
    """The SQLite URL of the store file that sits beside the policy file."""
    folder = Path(policy_path).resolve().parent if policy_path else Path.cwd()
    return f"sqlite:///{folder / DEFAULT_FILENAME}"


def create_store_engine(url: str, *, pool_size: int = 5) -> Engine:
    """An engine for ``url`` with the durability settings the receiver's promise needs."""
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return create_engine(url, pool_size=pool_size, pool_pre_ping=True)


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    # NORMAL can lose a transaction that was already acknowledged if the power fails.
    cursor.execute("PRAGMA synchronous=FULL")
    # The commit that fills this many WAL pages copies them into the database, with two fsyncs,
    # before it returns; every request waiting on the receiver's commit waits for that too.
    # SQLite's 1000 made fewer, longer pauses (a p99 of 17-23 ms at 900 webhooks/s on a
    # 50,000-row inbox, against 15-16 ms with 200, for the same throughput).
    cursor.execute("PRAGMA wal_autocheckpoint=200")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def ensure_schema(engine: Engine) -> None:
    """Create any missing tables (tests and first start; production uses migrations)."""
    metadata.create_all(engine)
