"""The runtime's invariant: every open escalation has a wake-up still to come, or is terminal.

An open escalation without a timer would never warn, breach or move again: a silent failure.
A timer that is overdue by more than ``grace`` counts as missing too, because no worker is
sweeping it. The count of violators is the health check and the metric.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import Engine, exists, func, select

from escalier.store import utc
from escalier.store.schema import escalations, timers

__all__ = ["DEFAULT_GRACE", "invariant_violations", "invariant_violators"]

DEFAULT_GRACE = timedelta(minutes=5)


def _violating(now: datetime, grace: timedelta):  # noqa: ANN202 - a SQLAlchemy clause
    return escalations.c.status == "open", ~exists().where(
        timers.c.escalation_id == escalations.c.id, timers.c.due_at >= utc(now) - grace
    )


def invariant_violations(engine: Engine, *, now: datetime, grace: timedelta = DEFAULT_GRACE) -> int:
    """How many open escalations have neither a future (or barely overdue) wake-up nor a terminal state."""
    with engine.connect() as connection:
        return int(
            connection.execute(
                select(func.count()).select_from(escalations).where(*_violating(now, grace))
            ).scalar_one()
        )


def invariant_violators(
    engine: Engine, *, now: datetime, grace: timedelta = DEFAULT_GRACE, limit: int = 100
) -> list[tuple[str, str, str]]:
    """Up to ``limit`` violators as (system, instance, ticket id), for an operator to look at."""
    with engine.connect() as connection:
        rows = connection.execute(
            select(escalations.c.system, escalations.c.instance, escalations.c.ticket_id)
            .where(*_violating(now, grace))
            .order_by(escalations.c.id)
            .limit(limit)
        ).all()
    return [(row.system, row.instance, row.ticket_id) for row in rows]
