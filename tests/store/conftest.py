"""Fixtures of the store tests: a migrated store on SQLite and, when reachable, on PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from postgres_support import postgres_schema_url
from escalier.store import Store, create_store_engine, upgrade

@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database: a SQLite file, or a fresh PostgreSQL schema."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'escalier.db'}"
    else:
        yield from postgres_schema_url()


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    """A migrated store."""
    upgrade(store_url)
    engine = create_store_engine(store_url)
    yield Store(engine)
    engine.dispose()
