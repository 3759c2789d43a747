"""A kept writer: write transactions on one connection kept between them (the API's group
commit on SQLite), with its own short wait for the write lock, and a fresh connection after
anything failed."""

from __future__ import annotations

import sqlite3

import pytest

from bus.store import AlreadyExists, Store, StoreUnavailable
from tests.store.store_factories import make_request


def _driver_connection(store_writer: object) -> object:
    connection = store_writer._connection  # type: ignore[attr-defined]
    return None if connection is None else connection.connection.driver_connection


def test_transactions_commit_on_one_connection_kept_between_them(store: Store) -> None:
    writer = store.kept_writer()
    with writer.transaction() as tx:
        tx.add_request(make_request("req-1"))
    kept = _driver_connection(writer)
    with writer.transaction() as tx:
        tx.add_request(make_request("req-2"))
        tx.audit(actor="test", action="accepted", request_id="req-2")

    assert kept is not None and _driver_connection(writer) is kept
    assert store.get_request("req-1") is not None
    assert store.get_request("req-2") is not None
    assert [e.action for e in store.audit_trail("req-2")] == ["accepted"]
    assert store.verify_audit().ok
    writer.close()


def test_a_failed_transaction_writes_nothing_and_the_next_one_starts_afresh(store: Store) -> None:
    writer = store.kept_writer()
    with writer.transaction() as tx:
        tx.add_request(make_request("req-1"))
    first = writer._connection

    with pytest.raises(AlreadyExists), writer.transaction() as tx:
        tx.add_request(make_request("req-2"))
        tx.add_request(make_request("req-1"))
    assert writer._connection is None  # given up, not reused in an unknown state

    with writer.transaction() as tx:
        tx.add_request(make_request("req-3"))
    assert store.get_request("req-2") is None
    assert store.get_request("req-3") is not None
    assert writer._connection not in (None, first)  # a new one (the pool's file handle, reset)
    writer.close()


def test_its_short_lock_wait_gives_up_and_the_pool_keeps_the_usual_one(sqlite_url: str) -> None:
    store = Store.open(sqlite_url)
    try:
        writer = store.kept_writer(lock_timeout=0.05)
        with writer.transaction() as tx:  # connected, with its short wait
            tx.add_request(make_request("req-1"))
        holder = sqlite3.connect(sqlite_url.removeprefix("sqlite:///"), isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")
        try:
            # Meanwhile the store's pooled connections wait their usual time.
            with store._engine.connect() as conn:
                assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 5000
            with pytest.raises(StoreUnavailable), writer.transaction() as tx:
                tx.add_request(make_request("req-2"))
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        with writer.transaction() as tx:
            tx.add_request(make_request("req-2"))
        assert store.get_request("req-2") is not None
        kept = writer._connection
        assert kept is not None
        assert kept.exec_driver_sql("PRAGMA busy_timeout").scalar() == 50
        store.close()  # closes the kept writer too: its connection back with the usual wait
        assert writer._connection is None
    finally:
        store.close()
