"""The migrations create exactly the tables of schema.py, on SQLite and PostgreSQL."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect

from escalier.store import create_store_engine, upgrade
from escalier.store.migrate import head_revision
from escalier.store.schema import metadata


def test_upgrade_creates_every_table_and_matches_the_schema(store_url: str) -> None:
    assert upgrade(store_url) == head_revision() == "0003"
    assert upgrade(store_url) == "0003"  # a second run is a no-op
    engine = create_store_engine(store_url)
    try:
        names = set(inspect(engine).get_table_names())
        assert set(metadata.tables) <= names
        with engine.connect() as connection:
            differences = compare_metadata(MigrationContext.configure(connection), metadata)
        assert differences == []
    finally:
        engine.dispose()
