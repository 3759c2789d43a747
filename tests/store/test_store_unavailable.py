"""A store that cannot be reached or is locked says so (StoreUnavailable) and writes nothing;
one that does not answer (NotAnswering) is then refused at once until it answers again."""

from __future__ import annotations

import socket
import sqlite3
import time
from typing import Any

import psycopg
import pytest
from psycopg import waiting as psycopg_waiting
from sqlalchemy import exc as sa_exc
from store_factories import make_request

from bus.store import NotAnswering, Store, StoreUnavailable, not_answering_advice, shown_url
from bus.store._breaker import PROBE_INTERVAL_S
from bus.store._engine import without_query_timeout
from schemas.events import Envelope, EventType


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port  # nothing listens there once the socket is closed


def test_unreachable_postgres_raises_store_unavailable() -> None:
    url = f"postgresql+psycopg://postgres@127.0.0.1:{closed_port()}/civicbus"

    with pytest.raises(StoreUnavailable, match="OperationalError"):
        Store.open(url)
    store = Store(url)
    with pytest.raises(StoreUnavailable), store.transaction() as tx:
        tx.add_request(make_request("r"))
    with pytest.raises(StoreUnavailable):
        store.get_request("r")
    store.close()


def test_locked_sqlite_raises_store_unavailable_and_writes_nothing(sqlite_url: str) -> None:
    store = Store.open(sqlite_url + "?timeout=0.2")
    with store.transaction() as tx:
        tx.add_request(make_request("before"))
    holder = sqlite3.connect(sqlite_url.removeprefix("sqlite:///"), isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # another process holds the write lock
    try:
        with pytest.raises(StoreUnavailable, match="locked"), store.transaction() as tx:
            tx.add_request(make_request("during"))
        assert store.get_request("before") is not None  # WAL: readers are never blocked
        # One long writer is no database gone: nothing is refused at once.
        assert store.breaker_state().openings == 0
        store.check_answering()
    finally:
        holder.execute("ROLLBACK")
        holder.close()

    assert store.get_request("during") is None
    with store.transaction() as tx:
        tx.add_request(make_request("after"))
    assert store.get_request("after") is not None
    store.close()


def test_a_postgres_server_that_does_not_answer_is_waited_for_once_then_refused_at_once() -> None:
    # Takes connections (the kernel completes them) and never says a word: as a frozen server.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(64)
        port = silent.getsockname()[1]
        store = Store(f"postgresql+psycopg://postgres@127.0.0.1:{port}/civicbus?query_timeout=1")
        try:
            started = time.monotonic()
            with pytest.raises(NotAnswering, match="no answer"):
                store.get_request("r")
            first = time.monotonic() - started
            # connect_timeout: 1 s asked, libpq waits 2 s at least; bounded, with room for a
            # loaded machine (a wait without bound would hang here).
            assert 0.9 < first < 10

            # "not tried": the breaker refuses without a connection attempt, which the count of
            # refusals shows too; their time is not asserted (it says more about a loaded machine).
            for _ in range(20):
                with pytest.raises(StoreUnavailable, match="not tried"):
                    store.get_request("r")
                with pytest.raises(StoreUnavailable, match="not tried"), store.transaction():
                    pass
            assert store.breaker_state().open
            assert store.breaker_state().refused == 40

            # However long it stays silent, no caller is let through to try it again: the
            # store's own thread pings it meanwhile, each ping a new connection here.
            silent.setblocking(False)
            tried = drain(silent)
            deadline = time.monotonic() + 3 * PROBE_INTERVAL_S
            while time.monotonic() < deadline:
                with pytest.raises(StoreUnavailable, match="not tried"):
                    store.get_request("r")
                time.sleep(0.05)
            assert store.breaker_state().open
            assert store.breaker_state().openings == 1
            assert tried >= 1 and drain(silent) >= 1
        finally:
            store.close()


def drain(listening: socket.socket) -> int:
    """How many connections were waiting to be accepted (closed as they are)."""
    count = 0
    while True:
        try:
            connection, _ = listening.accept()
        except BlockingIOError:
            return count
        connection.close()
        count += 1


def store_answers_within(store: Store, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while True:
        try:
            store.verify_audit()
            return True
        except StoreUnavailable:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)


def test_postgres_connection_lost_mid_transaction_leaves_nothing_behind(postgres_url: str) -> None:
    store = Store.open(postgres_url)
    admin_dsn = postgres_url.replace("postgresql+psycopg", "postgresql")

    def kill(pid: int) -> None:
        with psycopg.connect(admin_dsn, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (pid,))

    with pytest.raises(StoreUnavailable), store.transaction() as tx:
        tx.add_request(make_request("r"))
        tx.audit(actor="api:app", action="accepted", request_id="r")
        kill(tx._session.exec_driver_sql("SELECT pg_backend_pid()").scalar_one())
        tx.add_outbox(
            Envelope(type=EventType.CREATED, subject="r", data={}, correlationid="c"),
            exchange="civicbus.events",
            routing_key="request.created",
        )

    assert store.get_request("r") is None  # the pool replaced the dead connection
    assert store.breaker_state().openings == 0  # one lost connection refuses no one else
    assert store.pending_outbox() == []
    assert store.verify_audit().entries == 0
    store.close()


def test_a_socket_failing_mid_ping_is_a_lost_connection_not_a_crash(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # When the server resets the connection, psycopg's wait may see the socket fail (an
    # exceptional condition on it) with the query sent and no answer read: the connection is
    # left looking busy, not broken. SQLAlchemy's pre-ping then failed to put its autocommit
    # back with a ProgrammingError, which no caller takes for an outage (the relay crashed on
    # it once, in the store-outage test). Here the socket fails as it did, once, in the ping.
    store = Store.open(postgres_url)
    store.get_request("warm-up")  # a pooled connection, pinged on its next checkout
    real_wait = psycopg_waiting.wait
    failures = [psycopg.OperationalError("connection socket closed")]

    def failing_once(gen: Any, fileno: int, *args: Any, **kwargs: Any) -> Any:
        if not failures:
            return real_wait(gen, fileno, *args, **kwargs)
        try:
            next(gen)  # the query goes out; its answer is never read
        except StopIteration as done:
            return done.value  # no exchange with the server (autocommit set locally)
        raise failures.pop()

    monkeypatch.setattr(psycopg_waiting, "wait", failing_once)

    assert store.get_request("r") is None  # the pool pinged, dropped it and connected anew
    assert failures == []
    store.close()


def test_postgres_slower_than_its_query_timeout_raises_store_unavailable_and_writes_nothing(
    postgres_url: str,
) -> None:
    store = Store.open(postgres_url + "?query_timeout=1")
    started = time.monotonic()
    # pg_sleep stands for a server that does not answer: the wait is bounded on our side.
    with pytest.raises(StoreUnavailable, match="no answer"), store.transaction() as tx:
        tx.add_request(make_request("r"))
        tx._session.exec_driver_sql("SELECT pg_sleep(5)")
    assert time.monotonic() - started < 3

    # Meanwhile others are refused without a try; within the probe interval the pool's next
    # connection works again (the one given up on is dropped).
    with pytest.raises(StoreUnavailable, match="not tried"):
        store.get_request("r")
    assert store_answers_within(store, PROBE_INTERVAL_S + 1)
    assert store.breaker_state().open is False
    assert store.get_request("r") is None
    with store.transaction() as tx:
        tx.add_request(make_request("after"))
    assert store.get_request("after") is not None
    store.close()


def test_postgres_query_timeout_does_not_bound_migrations(postgres_url: str) -> None:
    store = Store.open(postgres_url + "?query_timeout=1")
    with store._engine.connect() as conn:
        with without_query_timeout(conn):
            conn.exec_driver_sql("SELECT pg_sleep(1.5)")  # what a migration may take
        with pytest.raises(sa_exc.OperationalError, match="no answer"):
            conn.exec_driver_sql("SELECT pg_sleep(5)")  # the usual limit is back
    store.close()


@pytest.mark.parametrize("value", ["-1", "soon", "nan", "inf"])
def test_a_bad_query_timeout_is_refused_without_quoting_the_url(value: str) -> None:
    with pytest.raises(ValueError, match="query_timeout") as refused:
        Store(f"postgresql+psycopg://civicbus:s3cret@db.example/civicbus?query_timeout={value}")
    assert "s3cret" not in str(refused.value)


def test_the_advice_for_a_database_that_does_not_answer_names_it_and_where_to_look() -> None:
    advice = not_answering_advice(
        "postgresql+psycopg://civicbus:s3cret@db.example:5432/civicbus?query_timeout=2"
    )
    assert advice.startswith("postgresql+psycopg://civicbus:***@db.example:5432/civicbus did")
    assert "reachable but not answering" in advice
    assert "paused, frozen, or behind a firewall that drops packets" in advice
    assert "CIVICBUS_DATABASE_URL" in advice
    assert "query_timeout" not in advice and "\n" not in advice


#: Each piece would be a leak: the advice is printed to the operator's terminal and logs.
PIECES = ("Xq7", "Zk9", "Wm4")


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://civicbus:Xq7Zk9Wm4@db.example/civicbus",
        "postgresql://civicbus:Xq7%2FZk9%40Wm4@db.example/civicbus",  # percent-encoded
        "postgresql://civicbus:Xq7@Zk9Wm4@db.example/civicbus",  # an "@" left unencoded
        "postgresql://civicbus:Xq7@Zk9/Wm4@db.example/civicbus",
        "postgresql://civicbus:Xq7:Zk9?Wm4@db.example/civicbus",
        "postgresql://:Xq7Zk9Wm4@db.example/civicbus",
        "postgresql://civicbus@db.example/civicbus?password=Xq7Zk9Wm4&sslmode=require",
        "postgresql://civicbus:Xq7Zk9Wm4@db1.example:5432,db2.example:5432/civicbus",
        "postgresql://civicbus:Xq7Zk9Wm4@db.example:port/civicbus",
        "Xq7Zk9Wm4",
    ],
)
def test_the_advice_never_shows_the_password(url: str) -> None:
    advice = not_answering_advice(url)
    assert [piece for piece in PIECES if piece in advice] == []
    assert "CIVICBUS_DATABASE_URL" in advice
    shown = shown_url(url)  # as errors, logs, `status` and `db upgrade` show the database
    assert [piece for piece in PIECES if piece in shown] == []


def test_a_store_error_names_the_database_without_a_password_given_in_the_query() -> None:
    # libpq takes password= in the query string; port 1 refuses at once.
    store = Store("postgresql+psycopg://civicbus@127.0.0.1:1/test?password=Xq7Zk9Wm4")
    with pytest.raises(StoreUnavailable) as refused:
        store.get_request("r-1")
    store.close()
    assert str(refused.value).startswith("postgresql+psycopg://civicbus@127.0.0.1:1/test: ")
    assert "Xq7Zk9Wm4" not in str(refused.value)
