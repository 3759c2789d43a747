"""Where an undelivered request is stuck, in an operator's words, with what to try next.

Read from its audit trail: the last hop on the way to its back-end tells the stage (outbox,
queue, retry tiers, dead letter channel). Hops of webhook deliveries of its events, and the
relaying of events other than the command, say nothing about that way and are skipped.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from bus.store import AuditEntry, DeadLetterState, Undelivered
from bus.subscriptions import ROUTE_PREFIX

#: The audit actions of a request's way to its back-end (DESIGN.md, audit contract).
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

    stage: str  # "outbox", "queued", "retrying", "dead-lettered", "dropped"
    instance: str | None
    since: datetime
    detail: str
    hint: str


def whereabouts(item: Undelivered) -> Whereabouts:
    """The stage the request is stuck in, since when, why, and what an operator can try."""
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
    if hop.action in ("routed", "replayed", "retried_now"):
        how = {"replayed": "replayed", "retried_now": "retried now by an operator"}.get(
            hop.action, f"rule {hop.details.get('rule')}"
        )
        return Whereabouts(
            "queued",
            instance,
            hop.at,
            f"sent towards {instance} ({how}), no delivery attempt recorded since",
            f"is `civicbus worker {instance}` running (and `civicbus relay`)?",
        )
    if hop.action in ("attempt", "retry_scheduled"):
        attempt = hop.details.get("attempt")
        delay = hop.details.get("delay_seconds")
        then = ""
        if isinstance(delay, int | float):
            due = hop.at + timedelta(seconds=delay)
            then = f"; next attempt due {due.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC"
        return Whereabouts(
            "retrying",
            instance,
            hop.at,
            f"attempt {attempt} failed: {hop.details.get('error', '(no reason recorded)')}{then}",
            f"the back-end keeps failing: `civicbus adapters check {instance}`; once it "
            f"answers, `civicbus adapters retry-now {instance}`",
        )
    letter = hop.details.get("dead_letter")
    if hop.action == "dropped":
        return Whereabouts(
            "dropped",
            instance,
            hop.at,
            f"an operator dropped dead letter {letter}",
            "nothing will deliver it; re-submit the report if it still matters",
        )
    dead_id = _open_dead_letter(item, instance)
    return Whereabouts(
        "dead-lettered",
        instance,
        hop.at,
        str(hop.details.get("reason", "(no reason recorded)")),
        f"`civicbus dead show {dead_id}`; once the cause is fixed, "
        f"`civicbus dead replay {instance} {dead_id}`"
        if dead_id is not None
        else f"`civicbus dead list {instance}`",
    )


def _last_hop(trail: list[AuditEntry]) -> AuditEntry | None:
    webhook_actor = f"worker:{ROUTE_PREFIX}"
    for entry in reversed(trail):
        if entry.action in _WAY_TO_BACKEND and not entry.actor.startswith(webhook_actor):
            return entry
    return None


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
