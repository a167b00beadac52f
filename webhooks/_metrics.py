"""Counters of this process and gauges read from the store, in Prometheus text format."""

from __future__ import annotations

import threading
from collections import Counter
from datetime import datetime

from sqlalchemy import Engine, func, select
from sqlalchemy.exc import SQLAlchemyError

from escalier.store.schema import escalations, inbox, outbox


class Counters:
    """Thread-safe labelled counters for one receiver process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values: Counter[tuple[str, tuple[tuple[str, str], ...]]] = Counter()

    def inc(self, name: str, **labels: str) -> None:
        """Add one to ``name`` with ``labels``."""
        key = (name, tuple(sorted(labels.items())))
        with self._lock:
            self._values[key] += 1

    def value(self, name: str, **labels: str) -> int:
        """The current count of ``name`` with exactly ``labels``."""
        with self._lock:
            return self._values[(name, tuple(sorted(labels.items())))]

    def snapshot(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], int]:
        """A copy of every counter."""
        with self._lock:
            return dict(self._values)


COUNTERS = {
    "escalier_webhooks_received_total": "Deliveries received, by source (this process).",
    "escalier_webhooks_rejected_total": "Deliveries rejected, by source and reason (this process).",
    "escalier_webhooks_duplicates_total": "Deliveries that were duplicates, by source (this process).",
    "escalier_webhooks_ignored_total": "Deliveries stored as ignored, by source (this process).",
    "escalier_webhooks_own_changes_total": "Escalier's own changes seen again, by source (this process).",
}


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _sample(name: str, labels: tuple[tuple[str, str], ...], value: float) -> str:
    if not labels:
        return f"{name} {value}"
    inner = ",".join(f'{key}="{_escape(val)}"' for key, val in labels)
    return f"{name}{{{inner}}} {value}"


def _from_store(engine: Engine):
    with engine.connect() as conn:
        oldest = conn.execute(
            select(func.min(inbox.c.received_at)).where(inbox.c.state == "pending")
        ).scalar()
        by_state = dict(conn.execute(select(inbox.c.state, func.count()).group_by(inbox.c.state)).all())
        actions = dict(conn.execute(select(outbox.c.state, func.count()).group_by(outbox.c.state)).all())
        tiers = dict(
            conn.execute(
                select(escalations.c.tier, func.count())
                .where(escalations.c.status == "open")
                .group_by(escalations.c.tier)
            ).all()
        )
    return oldest, by_state, actions, tiers


def render(counters: Counters, engine: Engine, now: datetime, sources: list[str]) -> str:
    """The whole exposition: process counters, then gauges from the store."""
    lines: list[str] = []
    snapshot = counters.snapshot()
    for name, help_text in COUNTERS.items():
        lines += [f"# HELP {name} {help_text}", f"# TYPE {name} counter"]
        samples = {labels: value for (metric, labels), value in snapshot.items() if metric == name}
        if not samples and name == "escalier_webhooks_received_total":
            samples = {(("source", source),): 0 for source in sources}
        lines += [_sample(name, labels, value) for labels, value in sorted(samples.items())]
    try:
        oldest, by_state, actions, tiers = _from_store(engine)
    except SQLAlchemyError:
        # The counters are still worth scraping when the store is down; readyz says why.
        lines += ["# TYPE escalier_store_up gauge", "escalier_store_up 0"]
        return "\n".join(lines) + "\n"
    lines += ["# TYPE escalier_store_up gauge", "escalier_store_up 1"]
    lag = 0.0
    if oldest is not None:
        if oldest.tzinfo is None:
            oldest = oldest.replace(tzinfo=now.tzinfo)
        lag = max(0.0, (now - oldest).total_seconds())
    lines += [
        "# HELP escalier_inbox_lag_seconds Age of the oldest pending inbox row (0 if none).",
        "# TYPE escalier_inbox_lag_seconds gauge",
        _sample("escalier_inbox_lag_seconds", (), round(lag, 3)),
        "# HELP escalier_inbox_rows Inbox rows by state (the whole store).",
        "# TYPE escalier_inbox_rows gauge",
    ]
    for state in sorted({"pending", "done", "ignored", "failed", *by_state}):
        lines.append(_sample("escalier_inbox_rows", (("state", state),), by_state.get(state, 0)))
    lines += [
        "# HELP escalier_outbox_actions Upstream actions by final state (the whole store).",
        "# TYPE escalier_outbox_actions gauge",
    ]
    for state in ("dead", "done"):
        lines.append(_sample("escalier_outbox_actions", (("state", state),), actions.get(state, 0)))
    lines += [
        "# HELP escalier_escalations_open Open escalations by tier (the whole store).",
        "# TYPE escalier_escalations_open gauge",
    ]
    if not tiers:
        lines.append(_sample("escalier_escalations_open", (), 0))
    for tier in sorted(tiers):
        lines.append(_sample("escalier_escalations_open", (("tier", str(tier)),), tiers[tier]))
    from escalier.runtime.health import invariant_violations

    lines += [
        "# HELP escalier_escalations_without_wakeup Open escalations with no future wake-up "
        "(should be 0).",
        "# TYPE escalier_escalations_without_wakeup gauge",
        _sample("escalier_escalations_without_wakeup", (), invariant_violations(engine, now=now)),
    ]
    return "\n".join(lines) + "\n"
