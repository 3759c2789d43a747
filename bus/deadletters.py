"""Dead letters for operators: list, show, replay and drop, each action audited.

The store holds every dead letter (the worker records it there before it acks), so these work
without the broker: a replay puts the stored envelope back through the outbox, which the relay
publishes with confirms, so a replay is as durable as an accepted request.

Two operators may act on one letter at once: a replay or drop changes the letter's state only
while it is still `dead`, first in its transaction, so the first one resolves it and the other
finds it resolved and leaves it alone.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import structlog
from pydantic import ValidationError

from bus.broker.topology import COMMANDS_EXCHANGE, command_routing_key
from bus.store import AuditEntry, DeadLetter, DeadLetterState, Store, Transaction
from bus.subscription_names import queue_of_route, route_name, route_of_queue
from schemas.events import Envelope

log = structlog.get_logger(__name__)


class DeadLetterError(Exception):
    """A dead-letter action cannot be done; the message says which letter and why."""


def live_routes(store: Store, instances: Iterable[str]) -> list[str]:
    """The names dead letters are filed under now: the configured adapter instances and the
    active webhook subscriptions (`sub.<id>`)."""
    return [*instances, *(route_name(s.id) for s in store.list_subscriptions())]


def drained_routes(store: Store, instances: Iterable[str]) -> list[str]:
    """The routes whose dead-letter queues `civicbus dead keep` drains: the live ones, and the
    adapter instances the relay declared once and the config has dropped since (their queues
    stay; what the broker dead-letters there must still reach the store)."""
    live = live_routes(store, instances)
    return [*live, *(name for name in store.declared_instances() if name not in live)]


def known_routes(store: Store, instances: Iterable[str]) -> list[str]:
    """The live routes and every name the store holds dead letters for, sorted: an instance
    since removed from the config keeps its dead letters reachable."""
    return sorted({*live_routes(store, instances), *store.dead_letter_instances()})


def is_removed_subscription(store: Store, route: str) -> bool:
    """Whether `route` is a webhook subscription's that was removed. Its dead letters are
    dropped with it, except those left by a removal before 2026-12-05."""
    active = {route_name(s.id) for s in store.list_subscriptions()}
    return queue_of_route(route) is not None and route not in active


def is_unconfigured_instance(route: str, instances: Iterable[str]) -> bool:
    """Whether `route` names an adapter instance (not a subscription) that is not in the
    config: renamed or removed, while the store still holds its dead letters."""
    return queue_of_route(route) is None and route not in set(instances)


def check_replayable_route(store: Store, route: str, instances: Iterable[str]) -> None:
    """DeadLetterError when `route` is no live route. A removed webhook subscription's queue
    was deleted with it, so no queue would take a replay. An instance no longer in the config
    has no worker: its queue, which nothing deletes, would take the replay and keep it where
    neither `dead list` nor `civicbus status` looks. (A replay queued before its instance left
    the config and that no queue takes comes back to its dead letter, see bus.relay.)"""
    if is_removed_subscription(store, route):
        raise DeadLetterError(
            f"{route} is a removed webhook subscription: its queue is gone, no replay would "
            f"reach it. Drop its dead letters: civicbus dead drop {route} --all"
        )
    if is_unconfigured_instance(route, instances):
        raise DeadLetterError(
            f"{route} is no adapter instance in the config (renamed or removed?): no worker "
            "would take a replay, it would wait in a queue nobody reads. Put the instance back "
            f"in the config to replay its dead letters, or drop them: civicbus dead drop {route} "
            "--all"
        )


def list_dead_letters(store: Store, instance: str) -> list[DeadLetter]:
    """The instance's dead letters waiting for a decision, oldest first."""
    return store.dead_letters(instance, DeadLetterState.DEAD)


def get_dead_letter(store: Store, dead_letter_id: int) -> DeadLetter:
    """One dead letter, in any state; DeadLetterError when there is none with that id (never
    was, or replayed or dropped long ago and deleted by `civicbus store prune`)."""
    letter = store.get_dead_letter(dead_letter_id)
    if letter is None:
        raise DeadLetterError(
            f"there is no dead letter {dead_letter_id}: no such id, or it was replayed or "
            "dropped long ago and `civicbus store prune` deleted it (see its "
            "--dead-letters-resolved-before); its request's audit trail keeps what happened "
            "to it (`civicbus audit trail REQUEST_ID`)"
        )
    return letter


def history(store: Store, letter: DeadLetter) -> list[AuditEntry]:
    """The audit entries of a dead letter, oldest first: each time its message was
    dead-lettered, and this letter's replays (and any given back) or drop. Read from its
    request's trail, so a message that was no civicbus event (no request) has none."""
    if letter.request_id is None:
        return []
    return [
        entry
        for entry in store.audit_trail(letter.request_id)
        if entry.details.get("dead_letter") == letter.id
        or letter.id in entry.details.get("dead_letters", ())  # a replay given back
        or (
            entry.action == "dead_lettered"
            and entry.message_id == letter.message_id
            # The worker audits as worker:<route>, the dead-queue keeper names the route:
            # one event dead-lettered by two subscriptions has the same message id in both.
            and letter.instance in (entry.actor.removeprefix("worker:"), entry.details.get("route"))
        )
    ]


def replay(
    store: Store,
    instance: str,
    ids: Sequence[int] | None = None,
    *,
    actor: str = "cli:dead-replay",
) -> list[DeadLetter]:
    """Send dead letters of `instance` (all waiting ones when `ids` is None; an id named twice
    once) back to its queue; the letters replayed.

    Each replay is one transaction: the state `replayed`, the outbox row and the audit entry.
    A letter someone else replayed or dropped since it was read is left out (and logged).
    Raises DeadLetterError before replaying anything if one of `ids` cannot be replayed.
    """
    letters = (
        list_dead_letters(store, instance)
        if ids is None
        else _replayable(store, instance, _distinct(ids))
    )
    exchange, routing_key = _destination(instance)
    replayed = []
    for letter in letters:
        envelope = _envelope(letter)
        with store.transaction() as tx:
            # Read before this transaction: a take-down may have rewritten the letter since.
            # Its request is locked first, as a take-down locks it before the letter.
            envelope = tx.as_it_reads(envelope)
            if not _resolve(tx, letter, DeadLetterState.REPLAYED):
                continue
            tx.add_outbox(envelope, exchange=exchange, routing_key=routing_key)
            tx.audit(
                actor=actor,
                action="replayed",
                request_id=letter.request_id,
                message_id=letter.message_id,
                details={"dead_letter": letter.id, "instance": instance, "reason": letter.reason},
            )
        log.info("dead_letter.replayed", dead_letter=letter.id, instance=instance)
        replayed.append(letter)
    return replayed


def drop(
    store: Store,
    ids: Sequence[int],
    *,
    instance: str | None = None,
    actor: str = "cli:dead-drop",
) -> list[DeadLetter]:
    """Give up on dead letters for good (they stay in the store, marked `dropped`, until
    `civicbus store prune` deletes them a retention period later); with
    `instance`, each must belong to it. The letters dropped: an id named twice once, none that
    someone else replayed or dropped since it was read (logged). Raises DeadLetterError before
    dropping anything if one of `ids` cannot be dropped."""
    letters = [get_dead_letter(store, i) for i in _distinct(ids)]
    for letter in letters:
        if instance is not None and letter.instance != instance:
            raise DeadLetterError(
                f"dead letter {letter.id} belongs to {letter.instance}, not {instance}"
            )
        if letter.state is not DeadLetterState.DEAD:
            raise DeadLetterError(f"dead letter {letter.id} is already {letter.state.value}")
    dropped = []
    for letter in letters:
        with store.transaction() as tx:
            if not _resolve(tx, letter, DeadLetterState.DROPPED):
                continue
            _audit_drop(tx, letter, actor)
        log.info("dead_letter.dropped", dead_letter=letter.id, instance=letter.instance)
        dropped.append(letter)
    return dropped


def drop_all(store: Store, instance: str, *, actor: str = "cli:dead-drop") -> list[DeadLetter]:
    """Give up on every dead letter of `instance` still waiting, as `drop` does, together."""
    with store.transaction() as tx:
        letters = drop_waiting(tx, instance, actor=actor)
    log.info("dead_letter.dropped_all", instance=instance, dropped=len(letters))
    return letters


def drop_waiting(tx: Transaction, instance: str, *, actor: str) -> list[DeadLetter]:
    """Give up on every dead letter of `instance` still waiting, in the caller's transaction,
    each audited as a drop; the letters dropped, oldest first."""
    letters = tx.drop_waiting_dead_letters(instance)
    for letter in letters:
        _audit_drop(tx, letter, actor)
    return letters


def _resolve(tx: Transaction, letter: DeadLetter, state: DeadLetterState) -> bool:
    """Change a letter read as waiting to `state`, first in its transaction (nothing else of
    it is written unless it still waited); False, logged, when someone else resolved it since."""
    if tx.set_dead_letter_state(letter.id, state, expected=DeadLetterState.DEAD):
        return True
    log.warning(
        "dead_letter.resolved_meanwhile",
        dead_letter=letter.id,
        instance=letter.instance,
        not_done=state.value,
        reason="someone else replayed or dropped it since it was read",
    )
    return False


def _distinct(ids: Sequence[int]) -> list[int]:
    """The ids in their order, each once: one letter named twice is acted on once."""
    return list(dict.fromkeys(ids))


def _audit_drop(tx: Transaction, letter: DeadLetter, actor: str) -> None:
    tx.audit(
        actor=actor,
        action="dropped",
        request_id=letter.request_id,
        message_id=letter.message_id,
        details={"dead_letter": letter.id, "instance": letter.instance},
    )


def replayed_route(exchange: str, routing_key: str) -> str | None:
    """The route an outbox row with this address replays to (the inverse of `_destination`);
    None for an address no replay has."""
    if exchange == COMMANDS_EXCHANGE:
        return routing_key  # an instance's command routing key is its name
    if exchange == "":
        return route_of_queue(routing_key)
    return None


def replayed_letters(store: Store, route: str, message_id: str) -> list[DeadLetter]:
    """The dead letters of `route` replayed as the message `message_id`."""
    return [
        letter
        for letter in store.dead_letters(route, DeadLetterState.REPLAYED)
        if letter.message_id == message_id
    ]


def give_back(
    tx: Transaction,
    letters: Sequence[DeadLetter],
    *,
    route: str,
    envelope: Envelope,
    actor: str,
    reason: str,
) -> None:
    """A replay no queue took (the route's queue is gone): its dead letters wait again for an
    operator's decision, and the audit says the replay was returned, not delivered."""
    for letter in letters:
        tx.set_dead_letter_state(letter.id, DeadLetterState.DEAD)
    tx.audit(
        actor=actor,
        action="replay_returned",
        request_id=envelope.subject,
        message_id=envelope.id,
        outcome="error",
        details={
            "instance": route,
            "dead_letters": [letter.id for letter in letters],
            "reason": reason,
        },
    )


def _replayable(store: Store, instance: str, ids: Sequence[int]) -> list[DeadLetter]:
    letters = [get_dead_letter(store, i) for i in ids]
    for letter in letters:
        if letter.instance != instance:
            raise DeadLetterError(
                f"dead letter {letter.id} belongs to {letter.instance}, not {instance}"
            )
        if letter.state is not DeadLetterState.DEAD:
            raise DeadLetterError(f"dead letter {letter.id} is already {letter.state.value}")
        _envelope(letter)
    return letters


def _envelope(letter: DeadLetter) -> Envelope:
    if not isinstance(letter.envelope, dict):
        raise DeadLetterError(
            f"dead letter {letter.id} is not a civicbus event (malformed message): "
            f"it cannot be replayed; drop it"
        )
    try:
        return Envelope.model_validate(letter.envelope)
    except ValidationError as exc:
        raise DeadLetterError(
            f"dead letter {letter.id} is not a valid civicbus event: it cannot be replayed; drop it"
        ) from exc


def _destination(instance: str) -> tuple[str, str]:
    """Commands go back through the instance's exchange; a subscription's events straight to
    its queue (the default exchange routes by queue name)."""
    queue = queue_of_route(instance)
    if queue is not None:
        return "", queue
    return COMMANDS_EXCHANGE, command_routing_key(instance)
