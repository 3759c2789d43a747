"""Where an undelivered request is stuck, in an operator's words, with what to try next.

Read from its audit trail: the last hop on the way to its back-end tells the stage (outbox,
queue, retry tiers, dead letter channel). Hops of webhook deliveries of its events (an
operator's replay or drop of their dead letters included), and the relaying of events other
than the command, say nothing about that way and are skipped.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from bus.broker.topology import work_queue
from bus.store import AuditEntry, DeadLetterState, Undelivered, WorkerLiveness
from bus.subscription_names import ROUTE_PREFIX

#: The audit actions that mark a hop of a request on its way to its back-end; others are skipped.
_WAY_TO_BACKEND = frozenset(
    {
        "accepted",
        "routed",
        "attempt",
        "retry_scheduled",
        "retried_now",
        "dead_lettered",
        "replayed",
        "replay_returned",  # no queue took the replay: dead-lettered again
        "dropped",
    }
)


@dataclass(frozen=True)
class Whereabouts:
    """Where an undelivered request is, for `civicbus requests stuck`."""

    stage: str  # "outbox", "queued", "in-worker", "retrying", "dead-lettered", "dropped"
    instance: str | None
    since: datetime
    detail: str
    hint: str


def whereabouts(
    item: Undelivered,
    *,
    now: datetime | None = None,
    unconsumed: Collection[str] = (),
    held_by: WorkerLiveness | None = None,
    configured: Collection[str] | None = None,
) -> Whereabouts:
    """The stage the request is stuck in, since when, why, and what an operator can try.

    `unconsumed`: the instances whose work queue has no consumer, as the broker said; a
    request waiting for one of them waits for its worker to start, whatever its back-end does.
    `held_by`: the live worker that reports holding the request's command now, if any.
    `configured`: the adapter instances of the config, when known: a request on its way to an
    instance since renamed or removed waits for a worker that will never come, and its dead
    letter cannot be replayed (`civicbus dead replay` refuses such an instance).
    """
    now = now or datetime.now(UTC)
    if held_by is not None and held_by.working_since is not None:
        return _in_worker(held_by, held_by.working_since)
    hop = _last_hop(item.trail)
    if hop is None or hop.action == "accepted":
        return Whereabouts(
            "outbox",
            None,
            hop.at if hop else item.accepted_at,
            "accepted, not yet published to the broker",
            "is `civicbus relay` running, and the broker reachable?",
        )
    instance = _instance(hop)
    gone = configured is not None and instance is not None and instance not in configured
    no_worker = None
    if instance is not None and gone:
        no_worker = (
            f"{instance} is no adapter instance in the config (renamed or removed?): no worker "
            f"will take the message waiting in {work_queue(instance)}; put the instance back in "
            "the config and start its worker"
        )
    elif instance is not None and instance in unconsumed:
        no_worker = (
            f"no worker is consuming {work_queue(instance)}: start `civicbus worker {instance}`"
        )
    if hop.action in ("routed", "replayed", "retried_now"):
        how = {"replayed": "replayed", "retried_now": "retried now by an operator"}.get(
            hop.action, f"rule {hop.details.get('rule')}"
        )
        return Whereabouts(
            "queued",
            instance,
            hop.at,
            f"sent towards {instance} ({how}), no delivery attempt recorded since",
            no_worker
            or (
                f"is `civicbus worker {instance}` running (and `civicbus relay`)? If it is, the "
                "command waits behind earlier ones, in the queue or held by a worker (its "
                "`prefetch`): a slow back-end, see `civicbus status`"
            ),
        )
    if hop.action in ("attempt", "retry_scheduled"):
        attempt = hop.details.get("attempt")
        delay = hop.details.get("delay_seconds")
        then = ""
        if isinstance(delay, int | float):
            due = hop.at + timedelta(seconds=delay)
            when = f"{due.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC"
            # Past its due time the message waits on the work queue for a worker to take it.
            then = (
                f"; next attempt due {when}"
                if due > now
                else f"; next attempt overdue since {when}"
            )
        return Whereabouts(
            "retrying",
            instance,
            hop.at,
            f"attempt {attempt} failed: {hop.details.get('error', '(no reason recorded)')}{then}",
            no_worker
            or f"the back-end keeps failing: `civicbus adapters check {instance}`; once it "
            f"answers, `civicbus adapters retry-now {instance}`",
        )
    letter = hop.details.get("dead_letter")
    if hop.action == "dropped":
        return Whereabouts(
            "dropped",
            instance,
            hop.at,
            f"an operator dropped dead letter {letter}",
            "nothing will deliver it: re-submit the report if it still matters; to tell the "
            "resident, close it with a status update (POST /servicerequestupdates, see README)",
        )
    dead_id = _open_dead_letter(item, instance)
    if dead_id is None:
        hint = f"`civicbus dead list {instance}`"
    elif gone:
        hint = (
            f"`civicbus dead show {dead_id}`; {instance} is no adapter instance in the config "
            "(renamed or removed?): put it back in the config to replay it, or give it up with "
            f"`civicbus dead drop {instance} {dead_id}`"
        )
    else:
        hint = (
            f"`civicbus dead show {dead_id}`; once the cause is fixed, "
            f"`civicbus dead replay {instance} {dead_id}`"
        )
    return Whereabouts(
        "dead-lettered",
        instance,
        hop.at,
        str(hop.details.get("reason", "(no reason recorded)")),
        hint,
    )


def _in_worker(worker: WorkerLiveness, since: datetime) -> Whereabouts:
    return Whereabouts(
        "in-worker",
        worker.recipient,
        since,
        f"worker {worker.name} has held it since {since.astimezone(UTC):%Y-%m-%d %H:%M:%S} "
        "UTC (its back-end call has not returned)",
        f"if that is long, `civicbus status` says whether the worker is hung; its log on "
        f"{worker.host} has the request's last steps",
    )


def _last_hop(trail: list[AuditEntry]) -> AuditEntry | None:
    for entry in reversed(trail):
        if entry.action in _WAY_TO_BACKEND and not _of_a_subscription(entry):
            return entry
    return None


def _of_a_subscription(hop: AuditEntry) -> bool:
    """A hop of an event's way to a webhook subscriber: its worker's, or an operator's on its
    dead letters (dropped with the subscription's removal, say)."""
    named = _instance(hop)
    return named is not None and named.startswith(ROUTE_PREFIX)


def _instance(hop: AuditEntry) -> str | None:
    named = hop.details.get("instance") or hop.details.get("route")
    if isinstance(named, str):
        return named
    actor, _, name = hop.actor.partition(":")
    return name if actor == "worker" and name else None


def _open_dead_letter(item: Undelivered, instance: str | None) -> int | None:
    for letter in reversed(item.dead_letters):
        if letter.instance == instance and letter.state is DeadLetterState.DEAD:
            return letter.id
    return None
