"""The one retry policy: transient errors only, bounded, honouring Retry-After, logging, re-raising."""

from __future__ import annotations

import logging
import random

import pytest

from escalier.core.errors import RejectedError, TransientError
from escalier.runtime.retry import RetrySettings, build_retrying, requeue_delay


class Flaky:
    """Fails with the given errors, then succeeds."""

    def __init__(self, *errors: Exception):
        self.errors = list(errors)
        self.calls = 0

    def __call__(self) -> str:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return "ok"


def test_transient_errors_are_retried_with_backoff_and_retry_after(caplog: pytest.LogCaptureFixture) -> None:
    slept: list[float] = []
    retrying = build_retrying(
        RetrySettings(attempts_per_pass=4, initial_wait=1, max_wait=8, jitter=0.5),
        sleep=slept.append, rng=random.Random(1),
    )
    call = Flaky(TransientError("503"), TransientError("429", retry_after=30), TransientError("503"))
    with caplog.at_level(logging.WARNING, logger="escalier.runtime.retry"):
        assert retrying(call) == "ok"
    assert call.calls == 4
    assert 1 <= slept[0] <= 1.5 and 30 <= slept[1] <= 30.5 and 4 <= slept[2] <= 4.5
    assert [r.msg for r in caplog.records] == ["runtime.retry.sleeping"] * 3
    assert caplog.records[1].retry_after == 30


def test_attempts_are_bounded_and_the_last_error_is_reraised() -> None:
    slept: list[float] = []
    retrying = build_retrying(RetrySettings(attempts_per_pass=3), sleep=slept.append)
    call = Flaky(*(TransientError(f"503 #{n}") for n in range(5)))
    with pytest.raises(TransientError, match="503 #2"):
        retrying(call)
    assert call.calls == 3 and len(slept) == 2


def test_other_errors_are_not_retried() -> None:
    slept: list[float] = []
    call = Flaky(RejectedError("422"))
    with pytest.raises(RejectedError):
        build_retrying(RetrySettings(), sleep=slept.append)(call)
    assert call.calls == 1 and slept == []


def test_requeue_delay_grows_is_capped_and_honours_retry_after() -> None:
    settings = RetrySettings(requeue_initial=30, requeue_max=300)
    assert [requeue_delay(settings, n).total_seconds() for n in (1, 2, 3, 10)] == [30, 60, 120, 300]
    assert requeue_delay(settings, 1, retry_after=90).total_seconds() == 90


def test_settings_from_config_refuse_unknown_keys() -> None:
    assert RetrySettings.from_config({"attempts_per_pass": 2}).attempts_per_pass == 2
    with pytest.raises(ValueError, match="attempt_per_pass"):
        RetrySettings.from_config({"attempt_per_pass": 2})
