"""A store that cannot be reached or is locked says so (StoreUnavailable) and writes nothing."""

from __future__ import annotations

import socket
import sqlite3

import psycopg
import pytest
from store_factories import make_request

from bus.store import Store, StoreUnavailable
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
    finally:
        holder.execute("ROLLBACK")
        holder.close()

    assert store.get_request("during") is None
    with store.transaction() as tx:
        tx.add_request(make_request("after"))
    assert store.get_request("after") is not None
    store.close()


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
    assert store.pending_outbox() == []
    assert store.verify_audit().entries == 0
    store.close()
