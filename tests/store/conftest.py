"""Fixtures of the store tests: a migrated store on SQLite and, when reachable, on PostgreSQL."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from escalier.store import Store, create_store_engine, upgrade

POSTGRES_URL = os.environ.get(
    "ESCALIER_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)


def _postgres_schema_url() -> Iterator[str]:
    try:
        admin = create_engine(POSTGRES_URL, connect_args={"connect_timeout": 3})
        with admin.begin() as connection:
            schema = f"escalier_test_{uuid.uuid4().hex[:10]}"
            connection.execute(text(f'CREATE SCHEMA "{schema}"'))
    except Exception as exc:  # any failure to connect means: skip, and say why
        pytest.skip(f"PostgreSQL unreachable at {POSTGRES_URL}: {type(exc).__name__}")
    separator = "&" if "?" in POSTGRES_URL else "?"
    try:
        yield f"{POSTGRES_URL}{separator}options=-csearch_path%3D{schema}"
    finally:
        with admin.begin() as connection:
            connection.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database: a SQLite file, or a fresh PostgreSQL schema."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'escalier.db'}"
    else:
        yield from _postgres_schema_url()


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    """A migrated store."""
    upgrade(store_url)
    engine = create_store_engine(store_url)
    yield Store(engine)
    engine.dispose()
