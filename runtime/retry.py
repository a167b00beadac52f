"""The one retry policy of the runtime: transient upstream errors only, with backoff and jitter.

Within one pass over an outbox row, :func:`build_retrying` retries a :class:`TransientError` a
bounded number of times, waiting the longer of its exponential backoff (with jitter) and the
upstream's ``retry_after``, logging before each sleep. Then the row goes back to the outbox with
``next_attempt_at`` set by :func:`requeue_delay`; after :attr:`RetrySettings.max_total_attempts`
it becomes a dead letter. Connectors turn their own library's retries off so attempts do not
multiply.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from datetime import timedelta
from typing import Any

import tenacity

from escalier.core.errors import TransientError

__all__ = ["RetrySettings", "build_retrying", "requeue_delay"]

log = logging.getLogger("escalier.runtime.retry")


@dataclass(frozen=True)
class RetrySettings:
    """How hard to try: within a pass, between passes, and in total before a dead letter."""

    attempts_per_pass: int = 4
    initial_wait: float = 0.5
    max_wait: float = 30.0
    jitter: float = 0.5
    max_total_attempts: int = 40
    requeue_initial: float = 30.0
    requeue_max: float = 900.0

    @classmethod
    def from_config(cls, config: Mapping[str, Any] | None) -> RetrySettings:
        """Settings from a mapping of the field names; unknown keys are an error."""
        config = dict(config or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(config) - known)
        if unknown:
            raise ValueError(f"unknown retry settings: {', '.join(unknown)}")
        return cls(**config)


def _retry_after(exc: BaseException | None) -> float:
    return float(getattr(exc, "retry_after", None) or 0.0)


def build_retrying(
    settings: RetrySettings,
    *,
    sleep: Callable[[float], None] = time.sleep,
    rng: random.Random | None = None,
) -> tenacity.Retrying:
    """A ``tenacity.Retrying`` for one pass: retries only :class:`TransientError`, then re-raises."""
    backoff = tenacity.wait_exponential(multiplier=settings.initial_wait, max=settings.max_wait)
    draw = (rng or random.Random()).uniform

    def wait(state: tenacity.RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        # The upstream's own hint wins when it is longer; jitter spreads workers that failed together.
        return max(backoff(state), _retry_after(exc)) + draw(0, settings.jitter)

    def before_sleep(state: tenacity.RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        log.warning(
            "runtime.retry.sleeping",
            extra={
                "attempt": state.attempt_number,
                "sleep_seconds": round(state.upcoming_sleep, 3),
                "error": type(exc).__name__,
                "status": getattr(exc, "status", None),
                "retry_after": getattr(exc, "retry_after", None),
            },
        )

    return tenacity.Retrying(
        retry=tenacity.retry_if_exception_type(TransientError),
        stop=tenacity.stop_after_attempt(settings.attempts_per_pass),
        wait=wait,
        before_sleep=before_sleep,
        sleep=sleep,
        reraise=True,
    )


def requeue_delay(settings: RetrySettings, passes: int, retry_after: float | None = None) -> timedelta:
    """How long an action that failed ``passes`` passes waits before its next pass."""
    base = min(settings.requeue_max, settings.requeue_initial * (2 ** max(passes - 1, 0)))
    return timedelta(seconds=max(base, retry_after or 0.0))
