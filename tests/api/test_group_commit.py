"""Group commit: creates written together stay each all-or-nothing, a failing member loses no
other, revocation and idempotency are decided inside the writing transaction, and the API's
remembered clients still honour a revocation at once."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest

from bus.api.committer import GroupCommitter
from bus.bootstrap import Runtime
from bus.intake import (
    Accepted,
    ClientRevoked,
    IdempotencyConflict,
    Prepared,
    write_batch,
)
from bus.store import InvalidData, Store
from tests.api.conftest import SPRINGFIELD, make_runtime, prepared_pothole


@pytest.fixture
def pg_rt(postgres_url: str, tmp_path: Path) -> Iterator[Runtime]:
    runtime = make_runtime(postgres_url, tmp_path / "media")
    runtime.store.upgrade()
    yield runtime
    runtime.close()


def _accepted(outcome: Accepted | Exception) -> Accepted:
    assert isinstance(outcome, Accepted), outcome
    return outcome


def test_a_failing_member_loses_no_other_and_the_chain_stays_verifiable(rt: Runtime) -> None:
    client, _ = rt.store.add_client("app")
    good = [prepared_pothole(rt, client) for _ in range(3)]
    # A value the database refuses while binding (a zone-less time) fails that member only.
    broken = prepared_pothole(rt, client)
    naive = broken.request.requested_at.replace(tzinfo=None)
    broken = Prepared(
        broken.request.model_copy(update={"requested_at": naive}),
        *(getattr(broken, f) for f in ("token", "answer", "actor", "client", "key")),
    )
    outcomes = write_batch(rt.store, [good[0], broken, good[1], good[2]])
    assert isinstance(outcomes[1], InvalidData)
    assert rt.store.get_request(broken.request.id) is None
    assert rt.store.audit_trail(broken.request.id) == []
    for prepared, outcome in zip(good, [outcomes[0], *outcomes[2:]], strict=True):
        assert _accepted(outcome).request == prepared.request
        assert rt.store.get_request(prepared.request.id) is not None
        assert [e.action for e in rt.store.audit_trail(prepared.request.id)] == ["accepted"]
    subjects = [row.envelope.subject for row in rt.store.pending_outbox()]
    assert subjects == [p.request.id for p in good]
    assert rt.store.verify_audit().ok


def test_a_revoked_clients_member_is_refused_and_the_others_written(rt: Runtime) -> None:
    kept, _ = rt.store.add_client("kept")
    gone, _ = rt.store.add_client("gone")
    batch = [prepared_pothole(rt, kept), prepared_pothole(rt, gone), prepared_pothole(rt, kept)]
    rt.store.revoke_client("gone")  # after its request was prepared with the remembered client
    outcomes = write_batch(rt.store, batch)
    assert isinstance(outcomes[1], ClientRevoked)
    assert rt.store.get_request(batch[1].request.id) is None
    assert all(rt.store.get_request(p.request.id) for p in (batch[0], batch[2]))
    assert rt.store.verify_audit().ok


def test_one_idempotency_key_twice_in_a_batch_creates_once(rt: Runtime) -> None:
    client, _ = rt.store.add_client("app")
    first, again = prepared_pothole(rt, client, "order-1"), prepared_pothole(rt, client, "order-1")
    one, two = write_batch(rt.store, [first, again])
    assert not _accepted(one).replayed and _accepted(two).replayed
    assert _accepted(two).answer == _accepted(one).answer
    assert rt.store.get_request(again.request.id) is None
    (later,) = write_batch(rt.store, [prepared_pothole(rt, client, "order-1")])
    assert _accepted(later).replayed and _accepted(later).answer == _accepted(one).answer


def test_one_idempotency_key_with_two_different_requests_in_a_batch_creates_the_first(
    rt: Runtime,
) -> None:
    client, _ = rt.store.add_client("app")
    first = prepared_pothole(rt, client, "order-1")
    other = prepared_pothole(rt, client, "order-1", description="another report")
    one, two = write_batch(rt.store, [first, other])
    assert not _accepted(one).replayed
    assert isinstance(two, IdempotencyConflict)
    assert rt.store.get_request(other.request.id) is None
    (later,) = write_batch(rt.store, [other])
    assert isinstance(later, IdempotencyConflict)


def test_a_key_stored_without_a_fingerprint_still_replays_its_answer(rt: Runtime) -> None:
    # Keys answered before fingerprints were kept have only the answer.
    client, _ = rt.store.add_client("app")
    with rt.store.transaction() as tx:
        tx.save_idempotent_response(client.id, "header:old-1", {"answer": [{"id": "old"}]})
    (outcome,) = write_batch(rt.store, [prepared_pothole(rt, client, "old-1")])
    assert _accepted(outcome).replayed and _accepted(outcome).answer == [{"id": "old"}]


def test_creates_submitted_together_are_answered_after_one_commit(rt: Runtime) -> None:
    client, _ = rt.store.add_client("app")
    committer = GroupCommitter(rt.store)
    batch = [prepared_pothole(rt, client) for _ in range(10)]

    async def submit_all() -> list[Accepted]:
        return await asyncio.gather(*(committer.submit(p) for p in batch))

    answers = asyncio.run(submit_all())
    assert [a.request for a in answers] == [p.request for p in batch]
    entries = [rt.store.audit_trail(p.request.id)[0] for p in batch]
    # Consecutive chain entries: one transaction wrote them all.
    assert [e.id for e in entries] == list(range(entries[0].id, entries[0].id + 10))


def test_while_another_writer_holds_the_lock_the_batch_waits_off_the_event_loop(
    rt: Runtime, tmp_path: Path
) -> None:
    client, _ = rt.store.add_client("app")
    committer = GroupCommitter(rt.store)
    holder = sqlite3.connect(
        tmp_path / "civicbus.db", isolation_level=None, check_same_thread=False
    )
    holder.execute("BEGIN IMMEDIATE")

    async def scenario() -> list[Accepted]:
        pending = [
            asyncio.create_task(committer.submit(prepared_pothole(rt, client))) for _ in range(3)
        ]
        # The event loop keeps turning while the lock is held elsewhere.
        await asyncio.sleep(0.3)
        assert not any(task.done() for task in pending)
        holder.execute("ROLLBACK")
        return await asyncio.gather(*pending)

    answers = asyncio.run(scenario())
    holder.close()
    assert all(rt.store.get_request(a.request.id) for a in answers if a.request)
    assert len(answers) == 3


def test_revoking_a_remembered_key_refuses_its_next_create_at_once(tmp_path: Path) -> None:
    from bus.api import create_app
    from tests.api.conftest import LiveServer

    rt = make_runtime(f"sqlite:///{tmp_path}/c.db", tmp_path / "media")
    try:
        _, key = rt.store.add_client("partner")
        _, other_key = rt.store.add_client("other")
        with LiveServer(create_app(rt)) as live:
            url = f"{live.url}/open311/v2/requests.json"
            data = {
                "api_key": key,
                "jurisdiction_id": SPRINGFIELD,
                "service_code": "POTHOLE",
                "lat": "37.7612",
                "long": "-122.4194",
                "attribute[LANE]": "carriageway",
            }
            other = {**data, "api_key": other_key}
            for form in (data, data, other):  # both keys remembered now
                assert httpx.post(url, data=form).status_code == 200
            assert rt.store.revoke_client("partner") and rt.store.revoke_client("other")
            refused = httpx.post(url, data=data)
            assert refused.status_code == 403
            assert "revoked" in refused.json()[0]["description"]
            # A bad form from a remembered, revoked key hears about the key first.
            assert httpx.post(url, data={**other, "lat": "north"}).status_code == 403
            assert httpx.post(url, data=other).status_code == 403
            assert len(rt.store.pending_outbox(limit=100)) == 3
    finally:
        rt.close()


@pytest.mark.postgres
def test_a_deadlock_between_two_processes_batches_loses_no_unrelated_create(
    pg_rt: Runtime, postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Process A batches [k1, k2, unrelated], process B [k2, k1, unrelated] (a client retrying
    two creates through a load balancer). If the two transactions wait on each other,
    PostgreSQL ends one of them: its members are then written one by one, not all refused."""
    from bus.store import _idempotency

    rt = pg_rt
    client, _ = rt.store.add_client("retrier")
    other, _ = rt.store.add_client("bystander")
    batch_a = [
        prepared_pothole(rt, client, "k1"),
        prepared_pothole(rt, client, "k2"),
        prepared_pothole(rt, other),
    ]
    batch_b = [
        prepared_pothole(rt, client, "k2"),
        prepared_pothole(rt, client, "k1"),
        prepared_pothole(rt, other),
    ]
    store_b = Store.open(postgres_url)  # the second API process
    barrier = threading.Barrier(2, timeout=10)
    real_save = _idempotency.save

    def save(conn: Any, answers: Sequence[tuple[int, str, dict[str, Any]]]) -> None:
        # Force the deadlock whatever order the keys are inserted in (the store sorts them,
        # but other locks may still be taken in caller order): each transaction inserts its
        # first key, then its second once the other has inserted its first.
        if len(answers) < 2:
            return real_save(conn, answers)
        real_save(conn, answers[:1])
        with contextlib.suppress(threading.BrokenBarrierError):
            barrier.wait()
        return real_save(conn, answers[1:])

    monkeypatch.setattr(_idempotency, "save", save)
    results: dict[str, list[Accepted | Exception]] = {}

    def run(name: str, store: Store, batch: list[Prepared]) -> None:
        results[name] = write_batch(store, batch)

    threads = [
        threading.Thread(target=run, args=("a", rt.store, batch_a)),
        threading.Thread(target=run, args=("b", store_b, batch_b)),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    store_b.close()
    outcomes = [_accepted(o) for o in results["a"] + results["b"]]
    # Each key created once, the other process's create of it replayed; both bystanders written.
    assert sum(not o.replayed for o in outcomes) == 4
    assert rt.store.get_request(batch_a[2].request.id) is not None
    assert rt.store.get_request(batch_b[2].request.id) is not None


@pytest.mark.postgres
def test_a_revocation_cannot_commit_between_the_check_and_the_creates_commit(
    pg_rt: Runtime, postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under READ COMMITTED a plain SELECT of the client would let `civicbus clients revoke`
    from another process commit between the check and the create's commit: a key whose
    revocation had returned would still create a request. The revocation must wait."""
    from bus.store import _clients

    rt = pg_rt
    client, _ = rt.store.add_client("soon-revoked")
    prepared = prepared_pothole(rt, client)
    revoker = Store.open(postgres_url)  # the operator's CLI
    real_inactive = _clients.inactive
    revoked = threading.Event()
    revoked_while_writing: list[bool] = []

    def inactive(conn: Any, ids: set[int]) -> set[int]:
        found = real_inactive(conn, ids)
        thread = threading.Thread(
            target=lambda: revoker.revoke_client("soon-revoked") and revoked.set()
        )
        thread.start()
        thread.join(2)  # a revocation that waits for this transaction is fine
        revoked_while_writing.append(revoked.is_set())
        return found

    monkeypatch.setattr(_clients, "inactive", inactive)
    (outcome,) = write_batch(rt.store, [prepared])
    assert revoked_while_writing == [False], "the revocation returned before the create committed"
    assert isinstance(outcome, Accepted)
    assert revoked.wait(10)  # once the create committed
    revoker.close()
    monkeypatch.undo()
    (after,) = write_batch(rt.store, [prepared_pothole(rt, client)])
    assert isinstance(after, ClientRevoked)
