"""The migrations create exactly the tables of schema.py, on SQLite and PostgreSQL."""

from __future__ import annotations

import subprocess
import sys

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


def test_nodes_starting_together_on_a_new_store_migrate_it_once(store_url: str) -> None:
    """Several `escalier serve` starting at once on an empty database all reach the head."""
    script = "import sys; from escalier.store import upgrade; print(upgrade(sys.argv[1]))"
    nodes = [
        subprocess.Popen([sys.executable, "-c", script, store_url], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
        for _ in range(4)
    ]
    outcomes = [node.communicate(timeout=120) for node in nodes]
    assert [node.returncode for node in nodes] == [0] * 4, [err[-600:] for _, err in outcomes]
    assert [out.strip() for out, _ in outcomes] == [head_revision()] * 4
