"""Constants the runtime tests share."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path

DESK = Path(__file__).resolve().parent / "policies" / "desk.yaml"
START = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
POSTGRES_URL = os.environ.get(
    "ESCALIER_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
