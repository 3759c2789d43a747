"""What the bus keeps in the store: leases, webhook subscriptions and dead letters."""

from __future__ import annotations

import threading
import time

from store_factories import T0, minutes

from bus.store import DeadLetter, DeadLetterState, Store


def test_a_lease_has_one_holder_until_released_or_expired(store: Store) -> None:
    assert store.try_lease("relay", "host-a", ttl_seconds=30)
    assert store.try_lease("relay", "host-a", ttl_seconds=30)  # renewal
    assert not store.try_lease("relay", "host-b", ttl_seconds=30)
    assert store.try_lease("poller:parks", "host-b", ttl_seconds=30)  # another name

    assert not store.release_lease("relay", "host-b")
    assert store.release_lease("relay", "host-a")
    assert store.try_lease("relay", "host-b", ttl_seconds=0.05)
    time.sleep(0.1)
    assert store.try_lease("relay", "host-a", ttl_seconds=30)  # b's lease expired


def test_subscriptions_are_added_listed_and_removed(store: Store) -> None:
    first = store.add_subscription("https://crm.test/hook", ["request.*"], secret_env="CRM_SECRET")
    second = store.add_subscription("https://gis.test/in", ["request.created.*", "request.closed"])

    assert first.events == ("request.*",) and first.secret_env == "CRM_SECRET" and first.active
    assert second.secret_env is None
    assert store.list_subscriptions() == [first, second]
    assert store.get_subscription(second.id) == second

    assert store.remove_subscription(first.id)
    assert not store.remove_subscription(first.id)
    assert store.list_subscriptions() == [second]
    assert [s.active for s in store.list_subscriptions(include_removed=True)] == [False, True]


def test_dead_letters_are_recorded_bumped_listed_and_change_state(store: Store) -> None:
    envelope = {"id": "m-1", "subject": "r1", "data": {"id": "r1", "reporter": {"email": "a@b.c"}}}
    with store.transaction() as tx:
        first = tx.record_dead_letter(
            instance="sap-roads",
            message_id="m-1",
            request_id="r1",
            reason="rejected: field too long",
            envelope=envelope,
            attempts=3,
            at=T0,
        )
        tx.record_dead_letter(
            instance="sap-roads", message_id="m-2", reason="malformed", envelope="not json {", at=T0
        )
        tx.record_dead_letter(instance="parks", message_id="m-1", reason="x", envelope=None)
    assert first is not None
    with store.transaction() as tx:
        # Replayed, it failed again: the same letter, waiting again, its attempts added.
        tx.set_dead_letter_state(first.id, DeadLetterState.REPLAYED)
        again = tx.record_dead_letter(
            instance="sap-roads",
            message_id="m-1",
            request_id="r1",
            reason="still rejected",
            envelope=envelope,
            at=T0 + minutes(5),
        )

    assert again is not None and again.id == first.id
    assert again.state is DeadLetterState.DEAD
    assert (again.attempts, again.first_failed_at, again.last_failed_at, again.reason) == (
        4,
        T0,
        T0 + minutes(5),
        "still rejected",
    )
    assert again.envelope is not None and not isinstance(again.envelope, str)
    assert again.envelope["data"]["reporter"] == {"email": None}
    listed = store.dead_letters("sap-roads")
    assert [(d.message_id, d.envelope) for d in listed][1] == ("m-2", "not json {")
    assert [d.message_id for d in listed] == ["m-1", "m-2"]

    with store.transaction() as tx:
        assert tx.set_dead_letter_state(first.id, DeadLetterState.REPLAYED)
        assert not tx.set_dead_letter_state(9999, DeadLetterState.DROPPED)
        tx.audit(actor="cli:dead-replay", action="replayed", request_id="r1", message_id="m-1")
    assert [d.message_id for d in store.dead_letters("sap-roads")] == ["m-2"]
    assert [d.id for d in store.dead_letters("sap-roads", DeadLetterState.REPLAYED)] == [first.id]
    got = store.get_dead_letter(first.id)
    assert got is not None and got.state is DeadLetterState.REPLAYED
    assert store.get_dead_letter(9999) is None


def test_a_dead_letter_changes_from_the_state_expected_only(store: Store) -> None:
    with store.transaction() as tx:
        letter = tx.record_dead_letter(
            instance="sap-roads", message_id="m-1", reason="x", envelope=None
        )
    assert letter is not None
    with store.transaction() as tx:
        assert tx.set_dead_letter_state(
            letter.id, DeadLetterState.DROPPED, expected=DeadLetterState.DEAD
        )
    dropped = store.get_dead_letter(letter.id)

    with store.transaction() as tx:
        assert not tx.set_dead_letter_state(
            letter.id, DeadLetterState.REPLAYED, expected=DeadLetterState.DEAD
        )

    assert store.get_dead_letter(letter.id) == dropped
    with store.transaction() as tx:  # without `expected`, as a replay given back: any state
        assert tx.set_dead_letter_state(letter.id, DeadLetterState.DEAD)


def test_of_two_transactions_resolving_one_dead_letter_at_once_only_the_first_does(
    store: Store,
) -> None:
    """The second waits for the first (PostgreSQL: the row; SQLite: the write lock), then finds
    the letter resolved."""
    with store.transaction() as tx:
        letter = tx.record_dead_letter(
            instance="sap-roads", message_id="m-1", reason="x", envelope=None
        )
    assert letter is not None
    second: list[bool] = []

    def replay() -> None:
        with store.transaction() as tx:
            second.append(
                tx.set_dead_letter_state(
                    letter.id, DeadLetterState.REPLAYED, expected=DeadLetterState.DEAD
                )
            )

    with store.transaction() as tx:
        assert tx.set_dead_letter_state(
            letter.id, DeadLetterState.DROPPED, expected=DeadLetterState.DEAD
        )
        racing = threading.Thread(target=replay)
        racing.start()
        time.sleep(0.3)  # the second is waiting now
    racing.join(10)

    assert second == [False]
    got = store.get_dead_letter(letter.id)
    assert got is not None and got.state is DeadLetterState.DROPPED


def test_a_message_waiting_as_a_dead_letter_is_not_recorded_again(store: Store) -> None:
    def record(reason: str, attempts: int) -> DeadLetter | None:
        with store.transaction() as tx:
            return tx.record_dead_letter(
                instance="sap-roads",
                message_id="m-1",
                reason=reason,
                envelope=None,
                attempts=attempts,
                at=T0 + minutes(attempts),
            )

    first = record("rejected", 2)
    assert record("rejected once more", 3) is None  # redelivered after a cut, or a second copy

    assert store.dead_letters("sap-roads") == [first]


def test_the_names_with_dead_letters_in_any_state_are_known(store: Store) -> None:
    assert store.dead_letter_instances() == []
    with store.transaction() as tx:
        for instance, message_id in [("sap-roads", "m-1"), ("parks", "m-2"), ("sap-roads", "m-3")]:
            tx.record_dead_letter(
                instance=instance, message_id=message_id, reason="x", envelope=None
            )
    (parks,) = store.dead_letters("parks")
    with store.transaction() as tx:
        tx.set_dead_letter_state(parks.id, DeadLetterState.DROPPED)

    assert store.dead_letter_instances() == ["parks", "sap-roads"]


def test_dropping_an_instances_waiting_dead_letters_leaves_the_others(store: Store) -> None:
    with store.transaction() as tx:
        for instance, message_id in [("sub.1", "m-1"), ("sub.2", "m-2"), ("sub.1", "m-3")]:
            tx.record_dead_letter(
                instance=instance, message_id=message_id, reason="x", envelope=None
            )
        replayed = tx.record_dead_letter(
            instance="sub.1", message_id="m-4", reason="x", envelope=None
        )
        assert replayed is not None
        tx.set_dead_letter_state(replayed.id, DeadLetterState.REPLAYED)

    with store.transaction() as tx:
        dropped = tx.drop_waiting_dead_letters("sub.1")

    assert [(d.message_id, d.state) for d in dropped] == [
        ("m-1", DeadLetterState.DROPPED),
        ("m-3", DeadLetterState.DROPPED),
    ]
    assert store.dead_letters("sub.1") == []
    assert [d.message_id for d in store.dead_letters("sub.1", DeadLetterState.DROPPED)] == [
        "m-1",
        "m-3",
    ]
    assert [d.id for d in store.dead_letters("sub.1", DeadLetterState.REPLAYED)] == [replayed.id]
    assert [d.message_id for d in store.dead_letters("sub.2")] == ["m-2"]
    with store.transaction() as tx:
        assert tx.drop_waiting_dead_letters("sub.1") == []
