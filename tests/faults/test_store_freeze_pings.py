"""The store's PostgreSQL server freezes (every process of it stopped with SIGSTOP, as a paused VM)
for a few seconds, then goes on: once one operation has waited out the round-trip bound, every
caller is refused at once for as long as the freeze lasts, none is let through to try the frozen
server again; the store pings it from a thread of its own meanwhile, and after the thaw a ping's
answer closes the breaker, with no caller's operation needed.

One store in the test's process, on the private cluster of tests/faults/conftest.py; the whole
bus meeting a freeze is tests/faults/test_store_freeze.py.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

import pytest
from structlog.testing import capture_logs

from bus.store import NotAnswering, Store, StoreUnavailable
from bus.store._breaker import PROBE_INTERVAL_S
from tests.faults.pg_cluster import PostgresCluster

pytestmark = [pytest.mark.postgres, pytest.mark.timeout(120)]

#: The store's bound on one round trip, in seconds (15 s by default); libpq's shortest
#: connect timeout is 2 s as well.
QUERY_TIMEOUT = 2
#: How long the server stays frozen after the breaker opened: several pings' worth.
FROZEN_FOR = 4 * PROBE_INTERVAL_S
#: A bound on the wait for the breaker to close after the thaw, never reached: the ping under
#: way (a connection in the frozen server's backlog) and the next one.
CLOSE_TIMEOUT = 30.0


class Pings:
    """Counts the store's pings and what became of each: None (answered) or the error."""

    def __init__(self, ping: Callable[[], None]) -> None:
        self._ping = ping
        self.outcomes: list[BaseException | None] = []

    def __call__(self) -> None:
        try:
            self._ping()
        except BaseException as error:
            self.outcomes.append(error)
            raise
        self.outcomes.append(None)


@pytest.fixture
def store(pg_cluster_url: str) -> Iterator[Store]:
    store = Store.open(f"{pg_cluster_url}?query_timeout={QUERY_TIMEOUT}")
    yield store
    store.close()


def test_while_the_server_is_frozen_callers_are_refused_at_once_and_a_ping_closes_the_breaker(
    store: Store, pg_cluster: PostgresCluster
) -> None:
    pings = Pings(store._breaker._ping)
    store._breaker._ping = pings  # the store's own ping, counted
    assert store.get_request("warm-up") is None  # a pooled connection, open as it freezes

    with capture_logs() as logs:
        pg_cluster.freeze()
        try:
            started = time.monotonic()
            with pytest.raises(NotAnswering):  # the one operation that waits in vain
                store.get_request("r")
            first = time.monotonic() - started
            assert store.breaker_state().open
            pinger = store._breaker._pinger
            assert pinger is not None

            refusals = refuse_while_frozen(store)
            assert pings.outcomes, "the frozen server was never pinged"
            assert all(isinstance(o, StoreUnavailable) for o in pings.outcomes)
            refused = store.breaker_state().refused
        finally:
            pg_cluster.thaw()
        # No store operation from here on: only the store's pings may find the server back.
        deadline = time.monotonic() + CLOSE_TIMEOUT
        while store.breaker_state().open:
            assert time.monotonic() < deadline, "the breaker did not close after the thaw"
            time.sleep(0.05)

    print(
        f"first operation of the freeze: {first:.2f}s; {len(refusals)} refused meanwhile, "
        f"slowest {max(refusals):.4f}s; {len(pings.outcomes)} pings"
    )
    # None of the callers after the opening waited anywhere near the server's bound.
    assert len(refusals) >= 10
    assert max(refusals) < QUERY_TIMEOUT
    # The breaker closed on a ping's answer, with nobody's operation refused or tried since.
    assert pings.outcomes[-1] is None
    assert store.breaker_state().refused == refused
    assert store.breaker_state().openings == 1
    pinger.thread.join(timeout=10)
    assert not pinger.thread.is_alive()
    assert store._breaker._pinger is None
    events = [e["event"] for e in logs if e["event"].startswith("store.breaker_")]
    assert events == ["store.breaker_opened", "store.breaker_closed"]
    assert store.get_request("r") is None
    assert store.try_lease("freeze", "test", 30)


def refuse_while_frozen(store: Store) -> list[float]:
    """Reads, writes and checks from two threads for FROZEN_FOR seconds, each refused without
    being tried; how long each refusal took."""
    took: list[float] = []
    failures: list[BaseException] = []
    calls: list[Callable[[], object]] = [
        lambda: store.get_request("r"),
        lambda: store.try_lease("freeze", "test", 30),
        store.check_answering,
    ]

    def caller() -> None:
        deadline = time.monotonic() + FROZEN_FOR
        n = 0
        while time.monotonic() < deadline:
            started = time.monotonic()
            try:
                calls[n % len(calls)]()
            except StoreUnavailable as refused:
                took.append(time.monotonic() - started)
                if "not tried" not in str(refused) or isinstance(refused, NotAnswering):
                    failures.append(refused)
            else:
                failures.append(AssertionError("an operation went through the frozen server"))
            n += 1
            time.sleep(0.02)

    threads = [threading.Thread(target=caller) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=FROZEN_FOR + 60)
    assert failures == []
    return took
