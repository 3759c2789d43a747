"""Redelivery policy: quick in-process retries (tenacity), then retry tiers, then dead letter."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential_jitter,
)
from tenacity.stop import stop_base

from adapters import PermanentError, TransientError
from bus.config import RetryPolicy
from bus.worker._delivery import MalformedMessage

T = TypeVar("T")

#: A back-end's Retry-After up to this many seconds is waited in-process; longer goes to a tier.
SMALL_RETRY_AFTER = 2.0
_quick_backoff = wait_exponential_jitter(multiplier=0.05, max=1.0, jitter=0.05)


def is_retryable(exc: BaseException) -> bool:
    """Transient and untyped errors are retried; permanent and malformed ones never are."""
    return not isinstance(exc, PermanentError | MalformedMessage)


def retry_after(exc: BaseException | None) -> float | None:
    """The delay a back-end asked for, if the error carries one."""
    return exc.retry_after if isinstance(exc, TransientError) else None


class _LongRetryAfter(stop_base):
    """Stop the quick retries when the back-end asks for a longer pause than we wait here."""

    def __call__(self, retry_state: RetryCallState) -> bool:
        outcome = retry_state.outcome
        delay = retry_after(outcome.exception()) if outcome is not None else None
        return delay is not None and delay > SMALL_RETRY_AFTER


def _wait(state: RetryCallState) -> float:
    outcome = state.outcome
    delay = retry_after(outcome.exception()) if outcome is not None else None
    return delay if delay is not None else _quick_backoff(state)


def call_with_retries(
    fn: Callable[[], T],
    *,
    attempts: int,
    on_error: Callable[[int, BaseException], None],
) -> T:
    """Call `fn` up to `attempts` times while it fails transiently; re-raise the last error.

    `on_error(try_number, error)` is told of every failure (for the audit trail). A permanent
    error, or a Retry-After too long to wait here, ends the in-process retries at once.
    """
    retrying = Retrying(
        stop=stop_after_attempt(attempts) | _LongRetryAfter(),
        wait=_wait,
        retry=retry_if_exception(is_retryable),
        reraise=True,
    )
    for attempt in retrying:
        with attempt:
            try:
                return fn()
            except BaseException as exc:
                on_error(attempt.retry_state.attempt_number, exc)
                raise
    raise AssertionError("unreachable: tenacity re-raises the last error")  # pragma: no cover


def next_tier(policy: RetryPolicy, attempt: int, asked_delay: float | None = None) -> float | None:
    """The retry tier for a message whose round `attempt` failed; None: dead-letter it now.

    Tiers escalate with the attempt and stay on the last one; a back-end's Retry-After picks
    the first tier at least that long.
    """
    if attempt >= policy.max_attempts or not policy.tiers:
        return None
    tiers = sorted(policy.tiers)
    delay = tiers[min(attempt - 1, len(tiers) - 1)]
    if asked_delay is not None and asked_delay > delay:
        delay = next((t for t in tiers if t >= asked_delay), tiers[-1])
    return delay
