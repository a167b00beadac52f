"""What the backtest tests share: a settable clock, policies on a sandbox, the engine's own view."""

from __future__ import annotations

import io
import json
import threading
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from escalier import backtest
from escalier.core.config import load_policy
from escalier.core.model import TicketEvent
from escalier.core.policy import Policy
from escalier.replay import replay_ticket

TOKEN = "sandbox-token"


class Clock:
    """A clock the sandbox reads and the test moves."""

    def __init__(self, start: datetime):
        self._now = start
        self._lock = threading.Lock()

    def now(self) -> datetime:
        with self._lock:
            return self._now

    def advance(self, **delta: float) -> datetime:
        with self._lock:
            self._now += timedelta(**delta)
            return self._now


def write_policy(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def run_json(argv: Sequence[str], *, environ: dict[str, str], now: datetime) -> tuple[int, dict[str, Any], str]:
    """``escalier backtest ... --json``: the exit status, the report and what went to stderr."""
    out, err = io.StringIO(), io.StringIO()
    status = backtest.main([*argv, "--json"], out=out, err=err, environ=environ, now=now)
    return status, (json.loads(out.getvalue()) if out.getvalue() else {}), err.getvalue()


def engine_moves(policy: Policy, events: list[TicketEvent], until: datetime) -> list[tuple[str, int | None, int | None, str]]:
    """The moves the engine makes of one ticket's events, driven here turn by turn."""
    moves = []
    for turn in replay_ticket(policy, events, until=until):
        for entry in turn.decision.history:
            if entry.kind in ("escalated", "functional", "hierarchical", "deescalated", "corrected"):
                moves.append((entry.at.astimezone(UTC).isoformat(), entry.from_tier, entry.to_tier, entry.kind))
    return moves


def report_moves(outcome: dict[str, Any]) -> list[tuple[str, int | None, int | None, str]]:
    """The same from an outcome of the backtest's JSON report."""
    return [
        (datetime.fromisoformat(m["at"]).astimezone(UTC).isoformat(), m["from_tier"], m["to_tier"], m["kind"])
        for m in outcome["moves"]
    ]


def load(path: Path) -> Policy:
    return load_policy(path)
