"""Redelivery policy: quick in-process retries, then retry tiers, then dead letter."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import TypeVar

from adapters import PermanentError, TransientError
from bus.config import RetryPolicy
from bus.worker._delivery import MalformedMessage

T = TypeVar("T")

#: A back-end's Retry-After up to this many seconds is waited in-process; longer goes to a tier.
SMALL_RETRY_AFTER = 2.0


def is_retryable(exc: BaseException) -> bool:
    """Transient and untyped errors are retried; permanent and malformed ones never are."""
    return not isinstance(exc, PermanentError | MalformedMessage)


def retry_after(exc: BaseException | None) -> float | None:
    """The delay a back-end asked for, if the error carries one."""
    return exc.retry_after if isinstance(exc, TransientError) else None


def quick_backoff(try_number: int) -> float:
    """The pause after failed try `try_number`: 50 ms doubling up to 1 s, plus up to 50 ms
    of jitter so that workers retrying together spread out."""
    return min(0.05 * 2.0 ** (try_number - 1) + random.uniform(0, 0.05), 1.0)


def call_with_retries(
    fn: Callable[[], T],
    *,
    attempts: int,
    on_error: Callable[[int, BaseException], None],
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """Call `fn` up to `attempts` times while it fails transiently; re-raise the last error.

    `on_error(try_number, error)` is told of every failure (for the audit trail). A permanent
    error, or a Retry-After too long to wait here, ends the in-process retries at once.
    """
    # A plain loop rather than a retry library: nearly every call succeeds at once, and the
    # worker makes one per message, so the happy path must cost no more than the call.
    try_number = 1
    while True:
        try:
            return fn()
        except BaseException as exc:
            on_error(try_number, exc)
            asked = retry_after(exc)
            if (
                try_number >= attempts
                or not isinstance(exc, Exception)  # an interrupt is no failed try
                or not is_retryable(exc)
                or (asked is not None and asked > SMALL_RETRY_AFTER)
            ):
                raise
            sleep(asked if asked is not None else quick_backoff(try_number))
            try_number += 1


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
