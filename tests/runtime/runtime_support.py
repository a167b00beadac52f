"""Constants the runtime tests share."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

DESK = Path(__file__).resolve().parent / "policies" / "desk.yaml"
START = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
