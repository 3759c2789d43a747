"""The store's circuit breaker: once the database did not answer, every operation is refused at
once, none is let through to try it again; a thread of the breaker's own pings the database every
probe interval, and the first answer lets everything through and ends the thread.

The state machine with a ping and a clock of the test's own (no database): each ping waits for
the test's reply. See test_store_unavailable.py for the store's real failures that open it, or
do not, and tests/faults/test_store_freeze_pings.py for a real frozen server.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from structlog.testing import capture_logs

from bus.store import AlreadyExists, NotAnswering, StoreUnavailable, WriteConflict, _breaker
from bus.store._breaker import PINGER_NAME, Breaker
from tests.waiting import wait_until

DATABASE = "postgresql+psycopg://civicbus:***@db/civicbus"
#: Seconds between pings: real ones (the pinging thread waits them out), kept short.
INTERVAL = 0.01
#: How long a test waits for the pinging thread to do something: a bound, never reached.
WAIT = 10.0


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Ping:
    """One ping of the breaker's, waiting for the test's reply."""

    def __init__(self) -> None:
        self._reply: queue.SimpleQueue[Exception | None] = queue.SimpleQueue()

    def reply(self, error: Exception | None = None) -> None:
        """Answer it (None), or make it raise `error`."""
        self._reply.put(error)

    def wait(self) -> None:
        reply = self._reply.get(timeout=WAIT)
        if reply is not None:
            raise reply


class Database:
    """The far end of the breaker's pings: each one waits for the test's reply."""

    def __init__(self) -> None:
        self.pings: list[Ping] = []
        self._arrived: queue.SimpleQueue[Ping] = queue.SimpleQueue()
        self._gone = False

    def __call__(self) -> None:
        ping = Ping()
        self.pings.append(ping)
        self._arrived.put(ping)
        if self._gone:
            raise StoreUnavailable("gone")
        ping.wait()

    def ping_arrives(self) -> Ping:
        """The breaker's next ping, once it reached the database."""
        return self._arrived.get(timeout=WAIT)

    def go_away(self) -> None:
        """Every ping, those waiting included, fails at once from now on."""
        self._gone = True
        for ping in list(self.pings):
            ping.reply(StoreUnavailable("gone"))


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def database() -> Database:
    return Database()


@pytest.fixture
def breaker(clock: Clock, database: Database) -> Iterator[Breaker]:
    breaker = Breaker(DATABASE, database, probe_interval=INTERVAL, clock=clock)
    yield breaker
    database.go_away()
    breaker.stop()


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


def trip(breaker: Breaker) -> threading.Thread:
    """Open the breaker; its pinging thread."""
    fail(breaker, silent())
    assert breaker.state().open
    return pinging(breaker)


def pinging(breaker: Breaker) -> threading.Thread:
    pinger = breaker._pinger
    assert pinger is not None, "no pinging thread"
    return pinger.thread


def closes(breaker: Breaker, thread: threading.Thread) -> None:
    """Wait for the breaker to close and its pinging thread to end."""
    wait_until(lambda: not breaker.state().open, timeout=WAIT, what="closed", interval=0.001)
    thread.join(WAIT)
    assert not thread.is_alive()
    assert breaker._pinger is None


def test_a_closed_breaker_lets_every_operation_through_and_pings_nothing(
    breaker: Breaker, database: Database
) -> None:
    assert all(run(breaker) for _ in range(3))
    assert breaker.state().open is False
    assert breaker._pinger is None
    assert database.pings == []


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
    assert breaker._pinger is None


def test_once_the_database_did_not_answer_operations_are_refused_without_being_tried(
    breaker: Breaker,
) -> None:
    trip(breaker)
    tried = []
    with pytest.raises(StoreUnavailable, match="not tried") as refused, breaker.guard():
        tried.append(True)
    assert tried == []
    assert "no answer from the server within 15 s" in str(refused.value)
    assert "pinged every 0.01 s" in str(refused.value)
    assert not isinstance(refused.value, NotAnswering)  # a refusal does not trip anything
    assert breaker.state().refused == 1


def test_no_operation_is_let_through_to_try_the_database_while_it_is_pinged(
    breaker: Breaker, clock: Clock, database: Database
) -> None:
    thread = trip(breaker)
    for _ in range(3):
        ping = database.ping_arrives()
        clock.advance(10)  # however long since the opening: no caller's turn to try
        assert not run(breaker)
        with pytest.raises(StoreUnavailable, match="not tried"):
            breaker.check()
        ping.reply(silent())
    assert breaker.state().open
    assert breaker.state().refused == 6
    assert thread.is_alive()


def test_the_first_ping_that_gets_an_answer_closes_it_and_ends_the_pinging(
    breaker: Breaker, database: Database
) -> None:
    thread = trip(breaker)
    assert thread.name == PINGER_NAME and thread.daemon
    database.ping_arrives().reply(silent())  # still frozen
    database.ping_arrives().reply()  # answered
    closes(breaker, thread)
    assert len(database.pings) == 2
    assert all(run(breaker) for _ in range(3))
    breaker.check()


def test_a_ping_refused_at_once_keeps_it_open_and_pinging(
    breaker: Breaker, database: Database
) -> None:
    thread = trip(breaker)
    database.ping_arrives().reply(StoreUnavailable("OperationalError: connection refused"))
    again = database.ping_arrives()  # pinged again, after another interval
    assert breaker.state().open
    assert not run(breaker)
    again.reply()
    closes(breaker, thread)


def test_a_ping_that_waited_in_vain_says_why_in_the_next_refusals(
    breaker: Breaker, database: Database
) -> None:
    trip(breaker)
    connecting = NotAnswering(f"{DATABASE}: NoAnswer: no answer while connecting")
    database.ping_arrives().reply(connecting)
    database.ping_arrives()  # the next one: the first one's reason is in by then
    with pytest.raises(StoreUnavailable, match="not tried") as refused, breaker.guard():
        pass
    assert "(NoAnswer: no answer while connecting)" in str(refused.value)


@pytest.mark.parametrize(
    "answer", [WriteConflict("DeadlockDetected"), RuntimeError("not the store's outage")]
)
def test_a_ping_the_database_answered_otherwise_closes_it(
    breaker: Breaker, database: Database, answer: Exception
) -> None:
    thread = trip(breaker)
    database.ping_arrives().reply(answer)
    closes(breaker, thread)
    assert run(breaker)


def test_operations_timing_out_together_open_it_once_with_one_pinging_thread(
    breaker: Breaker, database: Database
) -> None:
    started = [breaker.guard() for _ in range(8)]
    for operation in started:
        operation.__enter__()

    def time_out(operation: object) -> None:
        assert not operation.__exit__(NotAnswering, silent(), None)  # type: ignore[attr-defined]

    before = set(pinging_threads())
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(time_out, started))
    assert breaker.state().openings == 1
    thread = pinging(breaker)
    assert set(pinging_threads()) - before == {thread}
    database.ping_arrives().reply()
    closes(breaker, thread)
    assert len(database.pings) == 1


def pinging_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == PINGER_NAME]


def test_a_new_opening_after_a_closing_starts_a_new_pinging_thread(
    breaker: Breaker, database: Database
) -> None:
    first = trip(breaker)
    database.ping_arrives().reply()
    closes(breaker, first)
    second = trip(breaker)
    assert second is not first and second.is_alive()
    assert breaker.state().openings == 2


def test_a_timeout_of_an_operation_started_before_the_last_closing_is_old_news(
    breaker: Breaker, database: Database
) -> None:
    slow = breaker.guard()
    slow.__enter__()  # started while the database answered
    thread = trip(breaker)
    database.ping_arrives().reply()
    closes(breaker, thread)
    error = silent()
    assert not slow.__exit__(NotAnswering, error, None)  # its wait began before the closing
    assert breaker.state().open is False
    assert breaker._pinger is None
    assert run(breaker)


def test_stop_ends_the_pinging_and_a_store_used_again_tries_the_database_anew(
    breaker: Breaker, database: Database
) -> None:
    thread = trip(breaker)
    database.ping_arrives().reply(silent())
    under_way = database.ping_arrives()
    stopping = threading.Thread(target=breaker.stop)
    stopping.start()
    wait_until(lambda: breaker._pinger is None, timeout=WAIT, what="stopping", interval=0.001)
    under_way.reply(silent())  # it ends, and no ping follows it
    stopping.join(WAIT)
    assert not thread.is_alive()
    assert breaker.state().open is False
    pings = len(database.pings)
    assert run(breaker)
    time.sleep(10 * INTERVAL)
    assert len(database.pings) == pings


def test_stop_waits_for_a_ping_under_way_a_bounded_while_and_its_answer_is_old_news(
    breaker: Breaker, database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_breaker, "STOP_WAIT_S", 0.05)
    thread = trip(breaker)
    late = database.ping_arrives()  # and waits for the database, which says nothing
    breaker.stop()
    assert thread.is_alive()  # given up on: a daemon thread, it holds no exit
    fail(breaker, silent())  # used again, and the database is silent again
    second = pinging(breaker)
    late.reply()  # the first ping's answer comes late: it closes nothing
    thread.join(WAIT)
    assert not thread.is_alive()
    assert breaker.state().open and breaker.state().openings == 2
    database.ping_arrives().reply()  # the new opening's own ping
    closes(breaker, second)


def test_opening_and_closing_are_logged_once_each_without_row_data(
    breaker: Breaker, clock: Clock, database: Database
) -> None:
    with capture_logs() as logs:
        started = [breaker.guard() for _ in range(3)]
        for operation in started:
            operation.__enter__()
        for operation in started:  # three operations timed out together: one opening
            error = silent()
            assert not operation.__exit__(NotAnswering, error, None)
        thread = pinging(breaker)
        for _ in range(5):
            run(breaker)
        ping = database.ping_arrives()
        clock.advance(2)
        ping.reply(silent())  # a ping in vain: no new line
        ping = database.ping_arrives()
        clock.advance(1.5)
        ping.reply()
        closes(breaker, thread)
    events = [(e["event"], e["log_level"]) for e in logs]
    assert events == [("store.breaker_opened", "warning"), ("store.breaker_closed", "info")]
    opened, closed = logs
    assert opened["reason"] == "NoAnswer: no answer from the server within 15 s"
    assert opened["probe_interval_s"] == INTERVAL
    assert "503" in opened["todo"] and "reachable" in opened["todo"]
    assert closed["refused"] == 5
    assert closed["silent_s"] == pytest.approx(3.5)
    assert breaker.state().openings == 1
