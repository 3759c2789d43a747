"""Redelivery policy: quick in-process retries (tenacity), then retry tiers, then dead letter;
a store outage is waited out rather than counted against the message."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from typing import TypeVar

import structlog
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception,
    retry_if_exception_type,
    wait_exponential,
    wait_random,
)

from adapters import PermanentError, TransientError
from bus.config import RetryPolicy
from bus.store import StoreUnavailable
from bus.worker._delivery import MalformedMessage

log = structlog.get_logger(__name__)

T = TypeVar("T")

#: Longest pause between two tries of a store that does not answer: a fail-over is noticed
#: within this long after it ends.
STORE_MAX_BACKOFF = 2.0

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


def _pause(exc: BaseException | None, try_number: int) -> float:
    asked = retry_after(exc)
    return asked if asked is not None else quick_backoff(try_number)


def _ends_quick_retries(exc: BaseException) -> bool:
    """Not worth another try here: an interrupt, a permanent error, or a back-end asking for
    a longer pause than we wait in-process (a retry tier takes it)."""
    asked = retry_after(exc)
    return (
        not isinstance(exc, Exception)
        or not is_retryable(exc)
        or (asked is not None and asked > SMALL_RETRY_AFTER)
    )


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
    # The first try outside tenacity: nearly every call succeeds at once, and the worker makes
    # one per message, so the happy path costs only the call.
    try:
        return fn()
    except BaseException as exc:
        on_error(1, exc)
        if attempts <= 1 or _ends_quick_retries(exc):
            raise
        sleep(_pause(exc, 1))
    # Tries 2..attempts: tenacity numbers them 1..attempts-1.
    retrying = Retrying(
        stop=lambda state: state.attempt_number >= attempts - 1,
        wait=lambda state: _pause(_error(state), state.attempt_number + 1),
        retry=retry_if_exception(lambda exc: not _ends_quick_retries(exc)),
        sleep=sleep,
        reraise=True,
    )
    for attempt in retrying:
        with attempt:
            try:
                return fn()
            except BaseException as exc:
                on_error(attempt.retry_state.attempt_number + 1, exc)
                raise
    raise AssertionError("unreachable: tenacity re-raises the last error")  # pragma: no cover


def _error(state: RetryCallState) -> BaseException | None:
    return state.outcome.exception() if state.outcome is not None else None


def until_store_answers(fn: Callable[[], T], *, stop: threading.Event, route: str) -> T:
    """Call `fn` (a store step) until the store answers, with backoff, and return its result.

    The messages in hand stay unacknowledged meanwhile: requeued, each store outage would
    count toward the work queue's delivery limit, and a short fail-over would dead-letter
    commands that never reached their back-end. Raises the last StoreUnavailable once `stop`
    is set, so a stopping worker requeues them instead of waiting.
    """
    try:
        return fn()  # the happy path costs only the call
    except StoreUnavailable as exc:
        if stop.is_set():
            raise
        # Once per outage, not per try.
        log.warning("worker.store_unavailable", route=route, error=str(exc), waiting=True)

    def pause(seconds: float) -> None:
        stop.wait(seconds)  # ends at once on SIGTERM

    started = time.monotonic()
    pause(0.1)  # tenacity's first try comes at once
    retrying = Retrying(
        retry=retry_if_exception_type(StoreUnavailable),
        wait=wait_exponential(multiplier=0.1, max=STORE_MAX_BACKOFF) + wait_random(0, 0.1),
        stop=lambda _state: stop.is_set(),
        sleep=pause,
        reraise=True,
    )
    result = retrying(fn)
    log.info("worker.store_back", route=route, waited_s=round(time.monotonic() - started, 1))
    return result


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
