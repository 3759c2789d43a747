"""The quick in-process retries of the redelivery policy (no broker, no store)."""

from __future__ import annotations

from contextlib import suppress

import pytest

from adapters import PermanentError, TransientError
from bus.worker._retry import SMALL_RETRY_AFTER, call_with_retries, quick_backoff


class Flaky:
    """Fails with the given errors in turn, then answers "done"."""

    def __init__(self, *errors: BaseException) -> None:
        self.errors = list(errors)
        self.calls = 0

    def __call__(self) -> str:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return "done"


def run(fn: Flaky, attempts: int = 3) -> tuple[list[tuple[int, str]], list[float]]:
    failures: list[tuple[int, str]] = []
    pauses: list[float] = []
    with suppress(Exception):
        call_with_retries(
            fn,
            attempts=attempts,
            on_error=lambda n, exc: failures.append((n, type(exc).__name__)),
            sleep=pauses.append,
        )
    return failures, pauses


def test_a_call_that_succeeds_at_once_is_made_once_without_pause() -> None:
    fn = Flaky()
    assert call_with_retries(fn, attempts=3, on_error=lambda n, e: None) == "done"
    assert fn.calls == 1


def test_transient_failures_are_retried_with_each_try_reported() -> None:
    fn = Flaky(TransientError("busy"), ConnectionError("reset"))
    failures, pauses = run(fn)
    assert fn.calls == 3
    assert failures == [(1, "TransientError"), (2, "ConnectionError")]
    assert len(pauses) == 2 and all(0 < p <= 1.0 for p in pauses)


def test_the_last_error_is_raised_when_every_attempt_failed() -> None:
    fn = Flaky(TransientError("a"), TransientError("b"), TransientError("c"))
    with pytest.raises(TransientError, match="c"):
        call_with_retries(fn, attempts=3, on_error=lambda n, e: None, sleep=lambda s: None)
    assert fn.calls == 3


def test_a_permanent_error_is_not_retried() -> None:
    fn = Flaky(PermanentError("rejected"))
    failures, pauses = run(fn)
    assert fn.calls == 1 and failures == [(1, "PermanentError")] and pauses == []


def test_a_short_retry_after_is_waited_here_and_a_long_one_ends_the_quick_retries() -> None:
    short = Flaky(TransientError("throttled", retry_after=0.5))
    assert run(short)[1] == [0.5] and short.calls == 2
    long = Flaky(TransientError("throttled", retry_after=SMALL_RETRY_AFTER + 1))
    assert run(long)[1] == [] and long.calls == 1


def test_quick_backoff_grows_and_stays_under_a_second() -> None:
    assert 0.05 <= quick_backoff(1) <= 0.1
    assert 0.1 <= quick_backoff(2) <= 0.15
    assert quick_backoff(10) == 1.0
