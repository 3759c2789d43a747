"""The store's multi-row writes (one statement per table for a group of new requests), the
checks a group commit makes inside its transaction, and a short wait for SQLite's write lock."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Mapping, Sequence
from typing import Any

import pytest
import sqlalchemy as sa

from bus.store import AlreadyExists, OutboxEvent, Store, StoreUnavailable
from schemas.events import Envelope, EventType
from schemas.model import Reporter
from tests.store.store_factories import make_request


def _event(request_id: str) -> Envelope:
    return Envelope(
        type=EventType.CREATED, subject=request_id, data={"id": request_id}, correlationid="c"
    )


def test_several_requests_their_events_and_tokens_are_written_together(store: Store) -> None:
    first = make_request("req-1", reporter=Reporter(email="a@example.org"))
    second = make_request("req-2")
    with store.transaction() as tx:
        tx.add_requests([first, second], tokens={"req-2": "T-2"})
        tx.add_outbox_events(
            [OutboxEvent(_event(r.id), "civicbus.events", f"rk.{r.id}") for r in (first, second)]
        )
    assert store.get_request("req-1") == first
    assert store.get_request("req-2") == second
    assert store.resolve_token("T-2") == "req-2"
    assert store.resolve_token("T-1") is None
    pending = store.pending_outbox()
    assert [row.envelope.subject for row in pending] == ["req-1", "req-2"]  # in the given order
    assert [row.routing_key for row in pending] == ["rk.req-1", "rk.req-2"]


def test_one_known_id_in_a_group_writes_nothing_of_the_group(store: Store) -> None:
    store._write(lambda tx: tx.add_request(make_request("req-1")))
    with pytest.raises(AlreadyExists), store.transaction() as tx:
        tx.add_requests([make_request("req-2"), make_request("req-1")])
        tx.add_outbox_events([OutboxEvent(_event("req-2"), "civicbus.events", "rk")])
        tx.audit(actor="test", action="accepted", request_id="req-2")
    assert store.get_request("req-2") is None
    assert store.pending_outbox() == []
    assert store.audit_trail("req-2") == []
    assert store.verify_audit().ok


def test_reporter_contact_never_reaches_a_queued_event(store: Store) -> None:
    event = Envelope(
        type=EventType.CREATED,
        subject="req-1",
        data={"id": "req-1", "reporter": {"email": "a@example.org", "phone": None}},
        correlationid="c",
    )
    store._write(lambda tx: tx.add_request(make_request("req-1")))
    with store.transaction() as tx:
        tx.add_outbox_events([OutboxEvent(event, "civicbus.events", "rk")])
    (row,) = store.pending_outbox()
    assert row.envelope.data["reporter"] == {"email": None, "phone": None}
    assert row.envelope.id == event.id


def test_inactive_clients_are_the_revoked_and_the_unknown(store: Store) -> None:
    kept, _ = store.add_client("kept")
    revoked, _ = store.add_client("revoked")
    store.revoke_client("revoked")
    with store.transaction() as tx:
        assert tx.inactive_clients({kept.id, revoked.id, 9999}) == {revoked.id, 9999}
        assert tx.inactive_clients(set()) == set()


def test_idempotent_responses_are_found_per_client_and_key(store: Store) -> None:
    one, _ = store.add_client("one")
    two, _ = store.add_client("two")
    with store.transaction() as tx:
        tx.save_idempotent_responses([(one.id, "k", {"answer": 1}), (two.id, "k", {"answer": 2})])
    with store.transaction() as tx:
        found = tx.idempotent_responses({(one.id, "k"), (two.id, "k"), (one.id, "other")})
    assert found == {(one.id, "k"): {"answer": 1}, (two.id, "k"): {"answer": 2}}
    assert store.idempotent_response(two.id, "k") == {"answer": 2}
    with pytest.raises(AlreadyExists), store.transaction() as tx:
        tx.save_idempotent_responses([(one.id, "k", {"answer": 3})])


def test_idempotency_keys_are_inserted_in_client_and_key_order(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On PostgreSQL an insert waits for a concurrent insert of the same key: two processes
    inserting [k1, k2] and [k2, k1] would wait for each other (a deadlock) in caller order."""
    from bus.store import _idempotency

    one, _ = store.add_client("one")
    two, _ = store.add_client("two")
    inserted: list[tuple[int, str]] = []
    real_insert_rows = _idempotency.insert_rows

    def insert_rows(conn: Any, table: sa.Table, rows: Sequence[Mapping[str, Any]]) -> None:
        inserted.extend((row["client_id"], row["key"]) for row in rows)
        real_insert_rows(conn, table, rows)

    monkeypatch.setattr(_idempotency, "insert_rows", insert_rows)
    with store.transaction() as tx:
        tx.save_idempotent_responses(
            [(two.id, "a", {}), (one.id, "k2", {}), (one.id, "k1", {}), (two.id, "0", {})]
        )
    assert inserted == [(one.id, "k1"), (one.id, "k2"), (two.id, "0"), (two.id, "a")]


def test_a_short_lock_timeout_gives_up_while_another_writer_holds_the_lock(
    sqlite_url: str,
) -> None:
    store = Store.open(sqlite_url)
    try:
        holder = sqlite3.connect(
            sqlite_url.removeprefix("sqlite:///"), isolation_level=None, check_same_thread=False
        )
        holder.execute("BEGIN IMMEDIATE")
        try:
            with pytest.raises(StoreUnavailable), store.transaction(lock_timeout=0.05) as tx:
                tx.add_request(make_request("req-1"))
        finally:
            holder.execute("ROLLBACK")
        # The pooled connection waits its usual time again afterwards.
        with store._engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 5000
        # A writer with the usual timeout waits for the lock to be released.
        holder.execute("BEGIN IMMEDIATE")
        threading.Timer(0.2, lambda: holder.execute("ROLLBACK")).start()
        with store.transaction() as tx:
            tx.add_request(make_request("req-1"))
        holder.close()
        assert store.get_request("req-1") is not None
    finally:
        store.close()


def test_the_fast_multi_row_insert_stores_exactly_what_sqlalchemy_would(store: Store) -> None:
    from datetime import UTC, datetime

    from bus.store._sql import JsonText, insert_rows
    from bus.store._tables import requests

    def row(request_id: str, document: object) -> dict[str, object]:
        at = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)  # zero microseconds: the format matters
        return {
            "id": request_id,
            "jurisdiction": "j",
            "service_code": "s",
            "status": "open",
            "requested_at": at,
            "updated_at": at.replace(microsecond=7),
            "changed_at": at,
            "lat": 1.5,
            "long": None,
            "document": document,
        }

    with store.transaction() as tx:
        tx._session.execute(requests.insert(), [row("by-sqlalchemy", {"a": [1, "é"]})])
        insert_rows(tx._session, requests, [row("fast", JsonText('{"a": [1, "é"]}'))])
    with store._engine.connect() as conn:
        raw = conn.exec_driver_sql(
            "SELECT requested_at, updated_at, lat, long FROM requests ORDER BY id"
        ).all()
        documents = (
            conn.execute(sa.select(requests.c.document).order_by(requests.c.id)).scalars().all()
        )
    assert raw[0] == raw[1]
    assert documents[0] == documents[1] == {"a": [1, "é"]}


def test_a_value_refused_while_binding_in_a_fast_insert_is_invalid_data(store: Store) -> None:
    from bus.store import InvalidData

    naive = make_request("req-1").model_copy(
        update={"requested_at": make_request().requested_at.replace(tzinfo=None)}
    )
    with pytest.raises(InvalidData), store.transaction() as tx:
        tx.add_requests([naive])
    assert store.get_request("req-1") is None


def test_rows_sharing_a_value_are_stored_as_sqlalchemy_stores_them_processed_once(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    from datetime import UTC, datetime, timedelta, timezone

    from bus.store import _sql
    from bus.store._sql import insert_rows
    from bus.store._tables import requests

    shared = datetime(2026, 3, 1, 12, 0, tzinfo=timezone(timedelta(hours=1)))  # one object

    def row(request_id: str, updated_at: datetime) -> dict[str, object]:
        return {
            "id": request_id,
            "jurisdiction": "j",
            "service_code": "s",
            "status": "open",
            "requested_at": shared,
            "updated_at": updated_at,
            "changed_at": updated_at,
            "lat": None,
            "long": 2.5,
            "document": {"n": request_id},
        }

    times = [shared, datetime(2026, 3, 1, 12, 0, 0, 5, tzinfo=UTC), shared]
    processed: list[object] = []
    real_plan = _sql._plan

    def counting_plan(conn: Any, table: sa.Table, columns: tuple[str, ...]) -> Any:
        plan = real_plan(conn, table, columns)
        at = plan.names.index("requested_at")

        def process(value: object) -> object:
            processed.append(value)
            return plan.processors[at](value)  # type: ignore[misc]

        processors = (*plan.processors[:at], process, *plan.processors[at + 1 :])
        return _sql._InsertPlan(plan.sql, plan.names, processors, plan.positional)

    with store.transaction() as tx:
        tx._session.execute(
            requests.insert(), [row(f"by-sqlalchemy-{i}", at) for i, at in enumerate(times)]
        )
        monkeypatch.setattr(_sql, "_plan", counting_plan)
        insert_rows(tx._session, requests, [row(f"fast-{i}", at) for i, at in enumerate(times)])

    assert processed == [shared]  # the requested_at of all three rows: one object, once
    with store._engine.connect() as conn:
        query = "SELECT id, requested_at, updated_at, lat, long FROM requests"
        raw = {name: rest for name, *rest in conn.exec_driver_sql(query)}
        documents = {
            name: doc for name, doc in conn.execute(sa.select(requests.c.id, requests.c.document))
        }
    for i in range(3):
        assert raw[f"fast-{i}"] == raw[f"by-sqlalchemy-{i}"]
        assert documents[f"fast-{i}"] == {"n": f"fast-{i}"}
