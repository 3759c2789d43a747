"""The store's circuit breaker: once the database did not answer, operations are refused at once
and one at a time, every probe interval, tries it again; an answer lets everything through.

The state machine on a clock of the test's own (no database, no sleeping); see
test_store_unavailable.py for the store's real failures that open it, or do not.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

import pytest
from structlog.testing import capture_logs

from bus.store import AlreadyExists, NotAnswering, StoreUnavailable, WriteConflict
from bus.store._breaker import Breaker

DATABASE = "postgresql+psycopg://civicbus:***@db/civicbus"
INTERVAL = 1.0


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def breaker(clock: Clock) -> Breaker:
    return Breaker(DATABASE, probe_interval=INTERVAL, clock=clock)


def silent() -> NotAnswering:
    return NotAnswering(f"{DATABASE}: NoAnswer: no answer from the server within 15 s")


def fail(breaker: Breaker, error: BaseException) -> None:
    with pytest.raises(type(error)), breaker.guard():
        raise error


def run(breaker: Breaker) -> bool:
    """Whether an operation was let through (True) or refused without being tried."""
    try:
        with breaker.guard():
            return True
    except StoreUnavailable as refused:
        assert "not tried" in str(refused)
        return False


def trip(breaker: Breaker) -> None:
    fail(breaker, silent())
    assert breaker.state().open


def test_a_closed_breaker_lets_every_operation_through(breaker: Breaker) -> None:
    assert all(run(breaker) for _ in range(3))
    assert breaker.state().open is False


@pytest.mark.parametrize(
    "error",
    [
        StoreUnavailable("OperationalError: connection refused"),  # fast: a stopped server
        StoreUnavailable("OperationalError: database is locked"),  # SQLite: a long writer
        WriteConflict("SerializationFailure: could not serialize access"),
        AlreadyExists("UniqueViolation: duplicate key"),
        ValueError("the caller's own error"),
    ],
)
def test_failures_that_came_at_once_or_from_the_database_refuse_no_one(
    breaker: Breaker, error: Exception
) -> None:
    fail(breaker, error)
    assert run(breaker)
    assert breaker.state().open is False


def test_once_the_database_did_not_answer_operations_are_refused_without_being_tried(
    breaker: Breaker,
) -> None:
    trip(breaker)
    tried = []
    with pytest.raises(StoreUnavailable, match="not tried") as refused, breaker.guard():
        tried.append(True)
    assert tried == []
    assert "no answer from the server within 15 s" in str(refused.value)
    assert not isinstance(refused.value, NotAnswering)  # a refusal does not trip anything
    assert breaker.state().refused == 1


def test_one_probe_after_the_interval_and_an_answer_closes_it(
    breaker: Breaker, clock: Clock
) -> None:
    trip(breaker)
    clock.advance(INTERVAL - 0.01)
    assert not run(breaker)
    clock.advance(0.01)
    assert run(breaker)  # the probe, answered
    assert breaker.state().open is False
    assert all(run(breaker) for _ in range(3))


def test_a_probe_that_gets_no_answer_keeps_it_open_for_another_interval(
    breaker: Breaker, clock: Clock
) -> None:
    trip(breaker)
    clock.advance(INTERVAL)
    with pytest.raises(NotAnswering), breaker.guard():
        clock.advance(15)  # the probe waits out the timeout
        raise silent()
    assert not run(breaker)  # the interval runs from the probe's end
    clock.advance(INTERVAL)
    assert run(breaker)


def test_a_probe_refused_at_once_keeps_it_open_too(breaker: Breaker, clock: Clock) -> None:
    trip(breaker)
    clock.advance(INTERVAL)
    fail(breaker, StoreUnavailable("OperationalError: connection refused"))
    assert breaker.state().open
    assert not run(breaker)
    clock.advance(INTERVAL)
    assert run(breaker)


@pytest.mark.parametrize(
    "error", [AlreadyExists("UniqueViolation"), WriteConflict("DeadlockDetected")]
)
def test_a_probe_the_database_answered_with_a_refusal_closes_it(
    breaker: Breaker, clock: Clock, error: Exception
) -> None:
    trip(breaker)
    clock.advance(INTERVAL)
    fail(breaker, error)
    assert breaker.state().open is False


def test_an_interrupted_probe_lets_the_next_operation_probe_at_once(
    breaker: Breaker, clock: Clock
) -> None:
    trip(breaker)
    clock.advance(INTERVAL)
    fail(breaker, KeyboardInterrupt())
    assert run(breaker)
    assert breaker.state().open is False


def test_only_one_probe_at_a_time_however_many_threads_try(breaker: Breaker, clock: Clock) -> None:
    trip(breaker)
    clock.advance(INTERVAL)
    release = threading.Event()

    def operation() -> bool:
        try:
            with breaker.guard():
                release.wait(10)  # the probe, waiting for the database
                return True
        except StoreUnavailable:
            return False

    with ThreadPoolExecutor(16) as pool:
        futures = [pool.submit(operation) for _ in range(16)]
        # Every other thread is refused while the probe waits.
        refused = wait_for(lambda: [f for f in futures if f.done()], count=15)
        assert [f.result() for f in refused] == [False] * 15
        release.set()
    assert sum(f.result() for f in futures) == 1
    assert breaker.state().open is False


def wait_for(found: Callable[[], list[Future[bool]]], count: int) -> list[Future[bool]]:
    deadline = time.monotonic() + 10
    while len(done := found()) < count and time.monotonic() < deadline:
        time.sleep(0.001)
    return done


def test_the_probe_s_own_nested_operations_are_part_of_it(breaker: Breaker, clock: Clock) -> None:
    trip(breaker)
    clock.advance(INTERVAL)
    with breaker.guard():
        assert run(breaker)
        with ThreadPoolExecutor(1) as other:
            assert other.submit(run, breaker).result() is False
    assert breaker.state().open is False


def test_a_timeout_of_an_operation_started_before_the_last_closing_is_old_news(
    breaker: Breaker, clock: Clock
) -> None:
    slow = breaker.guard()
    slow.__enter__()  # started while the database answered
    trip(breaker)
    clock.advance(INTERVAL)
    assert run(breaker)  # the probe closed it
    error = silent()
    assert not slow.__exit__(NotAnswering, error, None)  # its wait began before the closing
    assert breaker.state().open is False
    assert run(breaker)


def test_check_refuses_while_open_without_taking_the_probe_s_turn(
    breaker: Breaker, clock: Clock
) -> None:
    breaker.check()
    trip(breaker)
    with pytest.raises(StoreUnavailable, match="not tried"):
        breaker.check()
    clock.advance(INTERVAL)
    breaker.check()  # a probe is due: the caller may queue its work
    breaker.check()
    assert run(breaker)  # and the probe's turn is still there


def test_opening_and_closing_are_logged_once_each_without_row_data(
    breaker: Breaker, clock: Clock
) -> None:
    with capture_logs() as logs:
        started = [breaker.guard() for _ in range(3)]
        for operation in started:
            operation.__enter__()
        for operation in started:  # three operations timed out together: one opening
            error = silent()
            assert not operation.__exit__(NotAnswering, error, None)
        for _ in range(5):
            run(breaker)
        clock.advance(INTERVAL)
        fail(breaker, silent())  # a probe in vain: no new line
        clock.advance(INTERVAL + 2)
        assert run(breaker)
    events = [(e["event"], e["log_level"]) for e in logs]
    assert events == [("store.breaker_opened", "warning"), ("store.breaker_closed", "info")]
    opened, closed = logs
    assert opened["reason"] == "NoAnswer: no answer from the server within 15 s"
    assert opened["probe_interval_s"] == INTERVAL
    assert closed["refused"] == 5
    assert closed["silent_s"] == pytest.approx(2 * INTERVAL + 2)
    assert breaker.state().openings == 1
