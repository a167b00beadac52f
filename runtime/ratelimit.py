"""Upstream write budgets: a token bucket per account, so the worker spends a short budget well.

Each upstream account (``system``, ``instance``) gets a :class:`TokenBucket` holding
``writes_per_minute`` tokens (from the connector's configuration, see
:class:`~escalier.connectors._config.ConnectorSettings`), refilled continuously over ``period``
seconds. A write takes one token. What the upstream says wins over what we believe:

* a reported :class:`~escalier.core.connector.RateLimit` lowers the tokens to its ``remaining``,
  and a ``remaining`` of zero pauses the bucket until ``reset_after``;
* a ``Retry-After`` on a 429 (surfaced as :class:`~escalier.core.errors.TransientError`)
  pauses the bucket for that long. A 503's ``Retry-After`` speaks of an outage, not of the
  budget: the retry policy honours it for the one action.

Upstreams round their reset times, so every pause they ask for is lengthened by ``margin``.
An account without a configured budget is unlimited but still honours pauses and an exhausted
``remaining``. The worker asks :meth:`RateLimiter.acquire` before each write: it gets ``0.0`` and
a token, or the seconds to wait for one. The bucket reads an injectable clock (seconds), so tests
compress time.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Mapping

import pluggy

from escalier.core.connector import ConnectorSpec, RateLimit
from escalier.core.policy import Policy

__all__ = ["RateLimiter", "TokenBucket", "budgets_from_policy"]

Account = tuple[str, str]

# A token that refill arithmetic leaves a hair short of whole is whole: clocks tick in microseconds
# and an epoch timestamp in a float keeps about a quarter of one.
_EPSILON = 1e-3
# Waits are rounded up to whole microseconds, so sleeping the wait always earns the token.
_TICK = 1e-6


class TokenBucket:
    """The write budget of one upstream account: ``capacity`` writes a ``period``, refilled evenly.

    ``capacity=None`` is an unlimited budget that still honours pauses.
    """

    def __init__(
        self,
        capacity: int | None,
        *,
        period: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
        margin: float = 0.05,
    ):
        if capacity is not None and capacity < 1:
            raise ValueError("a bucket holds at least one token")
        if period <= 0:
            raise ValueError("the refill period must be positive")
        self.capacity = capacity
        self.period = period
        self.clock = clock
        self.margin = margin
        self._tokens = math.inf if capacity is None else float(capacity)
        self._updated = clock()
        self._paused_until = -math.inf
        self._lock = threading.Lock()

    @property
    def rate(self) -> float:
        """Tokens added per second."""
        return math.inf if self.capacity is None else self.capacity / self.period

    @property
    def tokens(self) -> float:
        """Tokens available now (``inf`` for an unlimited bucket that is not paused)."""
        with self._lock:
            now = self.clock()
            self._refill(now)
            return 0.0 if now < self._paused_until else self._tokens

    def wait_time(self) -> float:
        """Seconds until a token can be taken; 0.0 when one can be taken now."""
        with self._lock:
            now = self.clock()
            self._refill(now)
            return self._wait(now)

    def acquire(self) -> float:
        """Take a token and return 0.0, or take nothing and return the seconds until one is there."""
        with self._lock:
            now = self.clock()
            self._refill(now)
            wait = self._wait(now)
            if wait == 0.0:
                self._tokens -= 1
            return wait

    def charge(self, tokens: int) -> None:
        """Spend ``tokens`` more, already sent: the budget may run below zero and then refills."""
        if tokens <= 0 or self.capacity is None:
            return
        with self._lock:
            self._refill(self.clock())
            self._tokens -= tokens

    def observe(self, rate_limit: RateLimit | None) -> None:
        """Believe the upstream: never more tokens than it has left; none until its reset at zero."""
        if rate_limit is None or rate_limit.remaining is None:
            return
        with self._lock:
            now = self.clock()
            self._refill(now)
            remaining = max(0, rate_limit.remaining)
            if self.capacity is not None:
                self._tokens = min(self._tokens, float(remaining))
            if remaining == 0 and rate_limit.reset_after is not None:
                self._pause(now, rate_limit.reset_after)

    def pause(self, seconds: float | None) -> None:
        """Send nothing for ``seconds`` (an upstream's ``Retry-After``); None changes nothing."""
        if seconds is None:
            return
        with self._lock:
            self._pause(self.clock(), seconds)

    # the arithmetic, under the lock

    def _refill(self, now: float) -> None:
        start = max(self._updated, self._paused_until)
        if self.capacity is not None and now > start:
            self._tokens = min(float(self.capacity), self._tokens + (now - start) * self.rate)
        self._updated = max(self._updated, now)

    def _wait(self, now: float) -> float:
        if now < self._paused_until:
            # After a pause the bucket starts empty and fills at its rate.
            refill = 0.0 if self.capacity is None else 1.0 / self.rate
            wait = self._paused_until - now + refill
        elif self._tokens >= 1.0 - _EPSILON:
            return 0.0
        else:
            wait = (1.0 - self._tokens) / self.rate
        return max(_TICK, math.ceil(wait / _TICK) * _TICK)

    def _pause(self, now: float, seconds: float) -> None:
        until = now + max(0.0, seconds) + self.margin
        if until > self._paused_until:
            self._paused_until = until
        if self.capacity is not None:
            self._tokens = 0.0
        self._updated = max(self._updated, now)


class RateLimiter:
    """A :class:`TokenBucket` per upstream account, made on first use from the configured budgets.

    :param budgets: writes per ``period`` by account ``(system, instance)`` or by ``system``;
        an account found in neither is unlimited.
    """

    def __init__(
        self,
        budgets: Mapping[Account | str, int | None] | None = None,
        *,
        period: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
        margin: float = 0.05,
    ):
        self.budgets = dict(budgets or {})
        self.period = period
        self.clock = clock
        self.margin = margin
        self._buckets: dict[Account, TokenBucket] = {}
        self._lock = threading.Lock()

    @classmethod
    def from_policy(
        cls,
        policy: Policy,
        plugin_manager: pluggy.PluginManager,
        *,
        period: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
        margin: float = 0.05,
    ) -> RateLimiter:
        """A limiter with the ``writes_per_minute`` of each connector the policy configures."""
        return cls(
            budgets_from_policy(policy, plugin_manager), period=period, clock=clock, margin=margin
        )

    def bucket(self, system: str, instance: str) -> TokenBucket:
        """The bucket of one account."""
        with self._lock:
            found = self._buckets.get((system, instance))
            if found is None:
                capacity = self.budgets.get((system, instance), self.budgets.get(system))
                found = self._buckets[(system, instance)] = TokenBucket(
                    capacity, period=self.period, clock=self.clock, margin=self.margin
                )
            return found

    def acquire(self, system: str, instance: str) -> float:
        """Take a token of the account (0.0) or learn how many seconds until one is there."""
        return self.bucket(system, instance).acquire()

    def charge(self, system: str, instance: str, tokens: int) -> None:
        """Spend ``tokens`` of one account's budget on writes already sent."""
        self.bucket(system, instance).charge(tokens)

    def observe(self, system: str, instance: str, rate_limit: RateLimit | None) -> None:
        """Adjust the account's bucket to the budget its upstream reported."""
        self.bucket(system, instance).observe(rate_limit)

    def pause(self, system: str, instance: str, seconds: float | None) -> None:
        """Pause the account's bucket for an upstream's ``Retry-After``."""
        self.bucket(system, instance).pause(seconds)


def budgets_from_policy(policy: Policy, plugin_manager: pluggy.PluginManager) -> dict[Account, int | None]:
    """``writes_per_minute`` per account of every connector section of the policy.

    The connector's own section sets its ``default`` instance; each entry of its ``instances``
    sets that instance. A connector whose settings have no ``writes_per_minute`` is unlimited.
    """
    specs: dict[str, ConnectorSpec] = {}
    for registered in plugin_manager.hook.register_connectors():
        specs.update({spec.name: spec for spec in registered})
    budgets: dict[Account, int | None] = {}
    for name, section in policy.connectors.items():
        spec = specs.get(name)
        if spec is None:
            continue
        config = spec.config_model.model_validate(section or {})
        budgets[(name, "default")] = getattr(config, "writes_per_minute", None)
        for instance, settings in (getattr(config, "instances", None) or {}).items():
            budgets[(name, instance)] = getattr(settings, "writes_per_minute", None)
    return budgets
