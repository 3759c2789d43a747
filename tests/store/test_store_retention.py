"""Retention in the store: sent outbox rows, idempotency keys, dead letters replayed or dropped
long ago and reporter contact data go, found a batch at a time and removed only while they still
qualify."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
from store_factories import T0, make_request, minutes

from bus.store import DeadLetterState, Store
from bus.store._tables import dead_letters, idempotency_keys, outbox
from schemas.events import Envelope, EventType
from schemas.model import BackendRef, Reporter, ServiceRequest, Status, StatusNote, StatusUpdate

CONTACT = {"email": "ann@example.org", "phone": "555 123 4567", "account_id": "acct-9"}


def now() -> datetime:
    return datetime.now(UTC)


def queue_events(store: Store, count: int) -> list[int]:
    with store.transaction() as tx:
        for i in range(count):
            event = Envelope(type=EventType.CREATED, subject=f"r{i}", data={}, correlationid="c")
            tx.add_outbox(event, exchange="civicbus.events", routing_key="request.created")
    return [row.id for row in store.pending_outbox()]


def backdate(
    store: Store, column: sa.Column[datetime], days: int, where: sa.ColumnElement[bool]
) -> None:
    """Set `column` to `days` ago on the rows `where` selects (the store stamps them now)."""
    with store._engine.begin() as conn:
        conn.execute(
            column.table.update().where(where).values({column.name: now() - timedelta(days=days)})
        )


def test_sent_outbox_rows_published_before_the_cutoff_go_and_waiting_ones_never(
    store: Store,
) -> None:
    ids = queue_events(store, 5)
    store.mark_sent(ids[:3])
    backdate(store, outbox.c.sent_at, 8, outbox.c.id.in_(ids[:2]))
    # A row stuck for ten days, never published: the relay still owes it to the broker.
    backdate(store, outbox.c.created_at, 10, outbox.c.id == ids[4])

    week_ago = now() - timedelta(days=7)
    found = store.sent_outbox(sent_before=week_ago, limit=100)
    with store.transaction() as tx:
        deleted = tx.delete_sent_outbox(found, sent_before=week_ago)
        # Named by id, a row published since the cutoff or not at all stays.
        kept = tx.delete_sent_outbox(ids[2:], sent_before=week_ago)

    assert found == ids[:2] and deleted == 2 and kept == 0
    assert [row.id for row in store.pending_outbox()] == ids[3:]
    assert store.sent_outbox(sent_before=now(), limit=100) == [ids[2]]


def test_sent_outbox_rows_are_found_a_page_at_a_time_in_id_order(store: Store) -> None:
    ids = queue_events(store, 5)
    store.mark_sent(ids)
    later = now()

    first = store.sent_outbox(sent_before=later, limit=2)
    second = store.sent_outbox(sent_before=later, after=first[-1], limit=2)
    last = store.sent_outbox(sent_before=later, after=second[-1], limit=2)

    assert (first, second, last) == (ids[:2], ids[2:4], ids[4:])


def test_idempotency_keys_of_a_prefix_stored_before_the_cutoff_go(store: Store) -> None:
    one, _ = store.add_client("one")
    two, _ = store.add_client("two")
    with store.transaction() as tx:
        for client in (one, two):
            for key in ("header:a", "header:b", "header:new", "external_id:x", "headerless"):
                tx.save_idempotent_response(client.id, key, {"answer": [{"key": key}]})
    backdate(store, idempotency_keys.c.created_at, 31, idempotency_keys.c.key != "header:new")
    cutoff = now() - timedelta(days=30)

    first = store.idempotency_keys_before(created_before=cutoff, prefix="header:", limit=3)
    rest = store.idempotency_keys_before(
        created_before=cutoff, prefix="header:", after=first[-1], limit=3
    )
    with store.transaction() as tx:
        deleted = tx.delete_idempotency_keys([*first, *rest], created_before=cutoff)
        kept = tx.delete_idempotency_keys([(one.id, "header:new")], created_before=cutoff)

    old = [(c.id, k) for c in (one, two) for k in ("header:a", "header:b")]
    assert first + rest == sorted(old) and len(first) == 3
    assert deleted == 4 and kept == 0
    assert store.idempotent_response(one.id, "header:a") is None
    for client in (one, two):
        for key in ("header:new", "external_id:x", "headerless"):
            assert store.idempotent_response(client.id, key) == {"answer": [{"key": key}]}


def test_a_prefix_with_like_wildcards_matches_only_itself(store: Store) -> None:
    client, _ = store.add_client("one")
    with store.transaction() as tx:
        tx.save_idempotent_response(client.id, "a_b:1", {})
        tx.save_idempotent_response(client.id, "axb:1", {})
    later = now()

    assert store.idempotency_keys_before(created_before=later, prefix="a_b:", limit=9) == [
        (client.id, "a_b:1")
    ]


def closed(
    request_id: str, *, days_ago: float, status: Status = Status.CLOSED, **fields: object
) -> ServiceRequest:
    at = T0 - timedelta(days=days_ago)
    return make_request(
        request_id, status=status, requested_at=at - minutes(60), updated_at=at, **fields
    )


def seed_requests(store: Store) -> None:
    history = (StatusNote(status=Status.OPEN, at=T0 - timedelta(days=200), source="api"),)
    ref = BackendRef(adapter="sap-roads", reference="N-1", submitted_at=T0 - timedelta(days=199))
    with store.transaction() as tx:
        tx.add_requests(
            [
                closed(
                    "old-closed",
                    days_ago=120,
                    reporter=CONTACT,
                    history=history,
                    backend_refs=(ref,),
                ),
                closed("old-fixed", days_ago=100, status=Status.FIXED, reporter=CONTACT),
                closed("old-anonymous", days_ago=120),
                closed("old-open", days_ago=120, status=Status.IN_PROGRESS, reporter=CONTACT),
                closed("recent-closed", days_ago=10, reporter=CONTACT),
            ]
        )
        tx.audit(actor="api:app", action="accepted", request_id="old-closed")


def test_closed_requests_last_updated_before_the_cutoff_lose_their_reporter_only(
    store: Store,
) -> None:
    seed_requests(store)
    cutoff = T0 - timedelta(days=90)
    before = store.get_request("old-closed")

    found = store.closed_with_reporter(closed_before=cutoff, limit=1)
    found += store.closed_with_reporter(closed_before=cutoff, after=found[-1], limit=9)
    with store.transaction() as tx:
        forgotten = tx.forget_reporters(found, closed_before=cutoff)
        tx.audit(actor="cli:test", action="reporter_forgotten", request_id="old-closed")

    assert found == forgotten == ["old-closed", "old-fixed"]
    after = store.get_request("old-closed")
    assert before is not None and after is not None
    assert after.reporter == Reporter()
    assert after == before.model_copy(update={"reporter": Reporter()})
    assert store.get_requests(["old-fixed"])["old-fixed"].reporter == Reporter()
    for kept in ("old-open", "recent-closed"):
        request = store.get_request(kept)
        assert request is not None and request.reporter == Reporter.model_validate(CONTACT)
    assert store.closed_with_reporter(closed_before=cutoff, limit=9) == []
    verified = store.verify_audit()
    assert verified.ok and verified.entries == 2


def test_a_request_reopened_after_it_was_found_keeps_its_reporter(store: Store) -> None:
    seed_requests(store)
    cutoff = T0 - timedelta(days=90)
    found = store.closed_with_reporter(closed_before=cutoff, limit=9)
    reopen = StatusUpdate(
        request_id="old-closed", status=Status.REOPEN, at=T0, update_id="u-reopen", source="api"
    )
    with store.transaction() as tx:
        tx.apply_status_update(reopen)

    with store.transaction() as tx:
        forgotten = tx.forget_reporters(found, closed_before=cutoff)

    assert forgotten == ["old-fixed"]
    request = store.get_request("old-closed")
    assert request is not None and request.reporter.email == CONTACT["email"]


def test_a_reporter_is_forgotten_on_request_whatever_the_status(store: Store) -> None:
    seed_requests(store)

    with store.transaction() as tx:
        forgotten = tx.forget_reporters(["old-open", "old-anonymous", "unknown"])

    assert forgotten == ["old-open"]
    request = store.get_request("old-open")
    assert request is not None and request.reporter == Reporter()
    assert request.status is Status.IN_PROGRESS


def dead_letters_of(store: Store, names: list[str]) -> dict[str, int]:
    """Record a dead letter of instance `roads` for each name (its message id); their ids."""
    ids = {}
    with store.transaction() as tx:
        for name in names:
            envelope = Envelope(
                type=EventType.CREATED, subject=f"r-{name}", data={}, correlationid="c"
            )
            letter = tx.record_dead_letter(
                instance="roads",
                message_id=name,
                request_id=f"r-{name}",
                reason="PermanentError: rejected",
                envelope={**envelope.model_dump(mode="json"), "id": name},
            )
            assert letter is not None
            ids[name] = letter.id
    return ids


def resolve(store: Store, ids: dict[str, int], name: str, state: DeadLetterState) -> None:
    with store.transaction() as tx:
        assert tx.set_dead_letter_state(ids[name], state)


def resolved_days_ago(store: Store, ids: list[int], days: int) -> None:
    backdate(store, dead_letters.c.resolved_at, days, dead_letters.c.id.in_(ids))


def test_dead_letters_resolved_before_the_cutoff_go_and_one_still_dead_never(
    store: Store,
) -> None:
    ids = dead_letters_of(store, ["replayed", "dropped", "dead", "lately", "newest"])
    resolve(store, ids, "replayed", DeadLetterState.REPLAYED)
    resolve(store, ids, "dropped", DeadLetterState.DROPPED)
    resolve(store, ids, "lately", DeadLetterState.DROPPED)
    resolve(store, ids, "newest", DeadLetterState.DROPPED)
    old = [ids["replayed"], ids["dropped"], ids["newest"]]
    resolved_days_ago(store, old, 31)
    # Dead for long, never decided on: it waits for an operator however old it is.
    backdate(store, dead_letters.c.first_failed_at, 90, dead_letters.c.id == ids["dead"])
    backdate(store, dead_letters.c.last_failed_at, 90, dead_letters.c.id == ids["dead"])

    month_ago = now() - timedelta(days=30)
    found = store.resolved_dead_letters(resolved_before=month_ago, limit=100)
    with store.transaction() as tx:
        deleted = tx.delete_resolved_dead_letters(found, resolved_before=month_ago)
        kept = tx.delete_resolved_dead_letters(list(ids.values()), resolved_before=month_ago)

    # The newest letter is kept: on SQLite the next one would get its id back.
    assert found == [ids["replayed"], ids["dropped"]] and deleted == 2 and kept == 0
    assert store.get_dead_letter(ids["replayed"]) is None
    assert store.get_dead_letter(ids["dropped"]) is None
    dead = store.get_dead_letter(ids["dead"])
    assert dead is not None and dead.state is DeadLetterState.DEAD and dead.resolved_at is None
    assert [letter.id for letter in store.dead_letters("roads", DeadLetterState.DEAD)] == [
        ids["dead"]
    ]
    assert store.get_dead_letter(ids["lately"]) is not None
    assert store.get_dead_letter(ids["newest"]) is not None
    # The next dead letter gets a new id, never a deleted one's.
    again = dead_letters_of(store, ["next"])
    assert again["next"] > ids["newest"]


def test_resolving_a_dead_letter_stamps_when_and_its_dying_again_clears_it(store: Store) -> None:
    ids = dead_letters_of(store, ["one", "two", "three", "four"])
    before = now()
    resolve(store, ids, "one", DeadLetterState.REPLAYED)
    with store.transaction() as tx:
        dropped = tx.drop_waiting_dead_letters("roads")
    assert [letter.id for letter in dropped] == [ids["two"], ids["three"], ids["four"]]
    for name in ids:
        letter = store.get_dead_letter(ids[name])
        assert letter is not None and letter.resolved_at is not None
        assert before - timedelta(seconds=1) <= letter.resolved_at <= now()

    resolve(store, ids, "two", DeadLetterState.DEAD)  # a replay given back by the relay
    with store.transaction() as tx:  # the replayed message dead-lettered again
        tx.record_dead_letter(
            instance="roads", message_id="one", reason="PermanentError: again", envelope=None
        )
    for name in ("one", "two"):
        letter = store.get_dead_letter(ids[name])
        assert letter is not None and letter.state is DeadLetterState.DEAD
        assert letter.resolved_at is None


def test_a_dead_letter_dead_again_after_it_was_found_is_kept(store: Store) -> None:
    ids = dead_letters_of(store, ["again", "newest"])
    resolve(store, ids, "again", DeadLetterState.REPLAYED)
    resolved_days_ago(store, [ids["again"]], 40)
    month_ago = now() - timedelta(days=30)
    found = store.resolved_dead_letters(resolved_before=month_ago, limit=100)
    with store.transaction() as tx:  # its replay failed for good meanwhile
        tx.record_dead_letter(
            instance="roads", message_id="again", reason="PermanentError: again", envelope=None
        )
    with store.transaction() as tx:
        deleted = tx.delete_resolved_dead_letters(found, resolved_before=month_ago)

    assert found == [ids["again"]] and deleted == 0
    assert store.get_dead_letter(ids["again"]) is not None


def test_a_replayed_dead_letter_whose_replay_still_waits_in_the_outbox_is_kept(
    store: Store,
) -> None:
    ids = dead_letters_of(store, ["waiting", "sent", "newest"])
    for name in ("waiting", "sent"):
        letter = store.get_dead_letter(ids[name])
        assert letter is not None and isinstance(letter.envelope, dict)
        with store.transaction() as tx:
            tx.add_outbox(
                Envelope.model_validate(letter.envelope),
                exchange="civicbus.commands",
                routing_key="roads",
            )
            tx.set_dead_letter_state(letter.id, DeadLetterState.REPLAYED)
    [waiting_row, sent_row] = [row.id for row in store.pending_outbox()]
    store.mark_sent([sent_row])
    resolved_days_ago(store, [ids["waiting"], ids["sent"]], 40)

    # If no queue takes it, the relay gives the replay back to its dead letter.
    found = store.resolved_dead_letters(resolved_before=now() - timedelta(days=30), limit=100)
    assert found == [ids["sent"]]
    assert [row.id for row in store.pending_outbox()] == [waiting_row]


def test_resolved_dead_letters_are_found_a_page_at_a_time_in_id_order(store: Store) -> None:
    ids = list(dead_letters_of(store, [f"m{i}" for i in range(6)]).values())
    with store.transaction() as tx:
        tx.drop_waiting_dead_letters("roads")
    later = now() + timedelta(seconds=1)

    first = store.resolved_dead_letters(resolved_before=later, limit=2)
    second = store.resolved_dead_letters(resolved_before=later, after=first[-1], limit=2)
    last = store.resolved_dead_letters(resolved_before=later, after=second[-1], limit=2)

    assert (first, second, last) == (ids[:2], ids[2:4], ids[4:5])  # not the newest
