"""Bringing a store's tables up to date with the migrations shipped in ``store/migrations``."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Connection, Engine, text

from escalier.store.database import create_store_engine

if TYPE_CHECKING:
    from alembic.config import Config

# alembic is imported where it is used: a worker starting up needs the store, not the migrations.

__all__ = ["MIGRATIONS", "alembic_config", "current_revision", "head_revision", "upgrade"]

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
# The advisory lock PostgreSQL nodes migrating at once queue on (any constant of our own).
_PG_MIGRATION_LOCK = 0x657363616C6D6967  # "escalmig"


def alembic_config() -> Config:
    """An alembic configuration for the store's migrations, without an ``alembic.ini``."""
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return config


def upgrade(url: str | Engine, *, revision: str = "head") -> str | None:
    """Migrate the store at ``url`` (or on an engine) to ``revision``; returns the revision reached."""
    from alembic import command

    engine = create_store_engine(url) if isinstance(url, str) else url
    try:
        config = alembic_config()
        with engine.begin() as connection:
            _one_at_a_time(connection)
            config.attributes["connection"] = connection
            command.upgrade(config, revision)
        return current_revision(engine)
    finally:
        if isinstance(url, str):
            engine.dispose()


def _one_at_a_time(connection: Connection) -> None:
    """Hold the store's migration lock until the transaction ends.

    Nodes started together on a new database would otherwise each create the same tables; the
    ones that wait find the store at its revision and do nothing.
    """
    if connection.dialect.name == "postgresql":
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_MIGRATION_LOCK})
    elif connection.dialect.name == "sqlite":
        # The driver begins no transaction for DDL by itself: take the write lock now (waiting up
        # to the busy timeout), so the check of the revision and the tables are one transaction.
        if not connection.connection.dbapi_connection.in_transaction:
            connection.exec_driver_sql("BEGIN IMMEDIATE")


def current_revision(engine: Engine) -> str | None:
    """The revision the store is at, None before the first migration."""
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def head_revision() -> str | None:
    """The newest revision shipped."""
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config()).get_current_head()
