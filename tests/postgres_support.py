"""The test PostgreSQL server: a fresh schema per test, named by ``ESCALIER_TEST_POSTGRES_URL``."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest
from sqlalchemy import create_engine, text

POSTGRES_URL = os.environ.get(
    "ESCALIER_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)


def postgres_schema_url() -> Iterator[str]:
    """A fresh, empty schema on the test PostgreSQL server, dropped afterwards.

    Where no server answers, the test is skipped with the reason; under CI (``CI`` set) the
    server is part of the machine, so its absence fails the test instead.
    """
    try:
        admin = create_engine(POSTGRES_URL, connect_args={"connect_timeout": 3})
        schema = f"escalier_test_{uuid.uuid4().hex[:10]}"
        with admin.begin() as connection:
            connection.execute(text(f'CREATE SCHEMA "{schema}"'))
    except Exception as exc:  # any failure to connect means: skip, and say why
        reason = f"PostgreSQL unreachable at {POSTGRES_URL}: {type(exc).__name__}: {exc}"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    separator = "&" if "?" in POSTGRES_URL else "?"
    try:
        yield f"{POSTGRES_URL}{separator}options=-csearch_path%3D{schema}"
    finally:
        with admin.begin() as connection:
            connection.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()
