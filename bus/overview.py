"""`civicbus status` in one object: the store's and the broker's view of the bus, and the problems
an operator should act on, each with what to try.

Read-only: the store is queried, the broker's queues are declared passively. A broker that cannot
be reached is itself a problem, not an error: the store's half of the picture still shows. So is a
store that cannot be read (`take_broker_overview`): the broker's half still shows, what waits in
each queue and who consumes it, which is what an operator needs most while the store is down.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from functools import cached_property
from typing import Any

from bus.broker.connection import BrokerUnavailable, close_quietly
from bus.broker.queues import QueueState, queue_states
from bus.broker.topology import dead_queue, retry_delays, retry_queue, work_queue
from bus.config import InstanceConfig
from bus.liveness import FORGET_AFTER, hung_after, is_current, is_silent
from bus.poller import lease_name as poller_lease
from bus.relay import LEASE as RELAY_LEASE
from bus.store import (
    AuditEntry,
    BrokerBlock,
    PollerRounds,
    Store,
    StoreOverview,
    Subscription,
    WorkerLiveness,
)
from bus.subscription_names import queue_of_route
from bus.subscriptions import queue_name, route_name

#: An outbox event older than this while a relay is active means the relay is not keeping up.
OUTBOX_LAG = timedelta(minutes=1)
#: After a failed delivery's announced next try, how long before that failure is taken as
#: stale (the immediate tries of a round, each up to the webhook's timeout, come first).
RETRY_GRACE = timedelta(minutes=2)
#: How old a subscription's latest delivery outcome can be and still say its subscriber is
#: failing now: the longest next try a webhook worker announces (the last tier of
#: SUBSCRIPTION_RETRY, 240 s; 300 s before 2026-12-05), RETRY_GRACE, and a minute for entries
#: stamped a little before they were chained. Only the audit entries this recent are read.
OUTCOME_HORIZON = timedelta(seconds=300) + RETRY_GRACE + timedelta(minutes=1)
#: How many audit entries before a failing subscriber's latest failure to look for the
#: delivery that preceded its failures (its failing since); a run longer than that is said to
#: be. About a day of a city's traffic, read in tens of milliseconds (tests/bench).
RUN_LOOKBACK = 200_000
#: The webhook workers' audit actions that tell how a delivery went.
_OUTCOMES = ("attempt", "delivered", "dead_lettered")
#: A poller whose rounds have failed for this long (or three of its intervals, if longer) is a
#: problem; one failed round of a back-end's blip is not.
POLLER_FAILING = timedelta(minutes=2)


@dataclass(frozen=True)
class Recipient:
    """Who takes messages off the bus: an adapter instance (commands) or a webhook
    subscription (events), with its queues as the broker and the store see them."""

    name: str
    start_with: str  # the command that runs its worker
    queue: str
    #: What that worker needs besides running, e.g. a subscription's secret in its environment.
    needs: str = ""
    queued: int | None = None  # None: unknown (broker unreachable) or no such queue
    #: Held unacknowledged by its workers that report (in hand and prefetched), which the
    #: broker's `queued` leaves out; None: no worker of it says.
    held: int | None = None
    consumers: int | None = None
    retrying: int | None = None
    dead_queue: str | None = None
    dead_in_queue: int | None = None
    dead_letters: int | None = 0  # None: unknown (the store could not be read)
    missing: tuple[str, ...] = ()
    #: A subscriber failing its deliveries now: since when (or earlier, when not
    #: `failing_since_exact`: further back than status looks), and its last error.
    failing_since: datetime | None = None
    failing_since_exact: bool = True
    last_error: str | None = None
    #: An instance's poller rounds as the store keeps them (None: not polled), and its interval.
    poller: PollerRounds | None = None
    poll_interval: float = 0.0


@dataclass(frozen=True)
class UnconfiguredRoute:
    """A name dead letters wait under that is no recipient: an adapter instance renamed or
    removed from the config, or a removed webhook subscription (`sub.<id>`)."""

    name: str
    dead_letters: int
    removed_subscription: bool


@dataclass(frozen=True)
class RemovedInstance:
    """An adapter instance the relay once declared that is no longer in the config, with what
    is still in its queues: nothing deletes them, and no worker of the config reads them."""

    name: str
    queue: str
    queued: int
    consumers: int
    dead_queue: str
    dead_in_queue: int


@dataclass(frozen=True)
class Overview:
    at: datetime
    store: StoreOverview
    broker_error: str | None
    recipients: list[Recipient]
    #: How long a worker may hold one message before it is taken as hung, by recipient.
    hung_after: Mapping[str, timedelta] = field(default_factory=dict)
    #: Instances removed from the config whose queues still hold messages (or have consumers).
    removed: list[RemovedInstance] = field(default_factory=list)
    #: Why the store could not be read (None: it was): `store` is then empty, not the truth.
    store_error: str | None = None

    @cached_property
    def unconfigured(self) -> list[UnconfiguredRoute]:
        """The routes with dead letters waiting that no recipient answers to, by name: the
        store counts every route's, whatever the config says (and so does /metrics)."""
        recipients = {c.name for c in self.recipients}
        return [
            UnconfiguredRoute(name, count, queue_of_route(name) is not None)
            for name, count in sorted(self.store.dead_letters.items())
            if count and name not in recipients
        ]

    @cached_property
    def broker_blocked(self) -> BrokerBlock | None:
        """A publisher's report that RabbitMQ blocks it for a resource alarm, while current
        (the broker tells only a connection that publishes, not status's own): the relay's,
        or else the longest-standing of the workers' (their retries, dead letters, events)."""
        current = [b for b in self.store.broker_blocks.values() if is_current(b, self.at)]
        relay = [b for b in current if b.publisher == RELAY_LEASE]
        candidates = relay or sorted(current, key=lambda b: b.blocked_since)
        return candidates[0] if candidates else None

    @cached_property
    def problems(self) -> list[str]:
        """What needs an operator, most basic first, each with what to try (against the
        thresholds in force when first asked)."""
        return _problems(self)

    @cached_property
    def notes(self) -> list[str]:
        """What an operator may want to know, though nothing is held up by it."""
        return [*_worker_notes(self), *_removed_instance_notes(self)]


def take_overview(
    store: Store, instances: Mapping[str, InstanceConfig], connect: Callable[[], Any]
) -> Overview:
    """Look at the store and the broker now; `connect` opens a broker connection."""
    at = datetime.now(UTC)
    seen = store.overview()
    subscriptions = [_subscription(s, seen) for s in store.list_subscriptions()]
    if subscriptions:
        subscriptions = _with_webhook_failures(store, subscriptions, at)
    recipients = [
        *(_instance(name, config, seen) for name, config in instances.items()),
        *subscriptions,
    ]
    removed_names = [name for name in seen.declared_instances if name not in instances]
    recipients = [replace(c, held=_held(seen.workers, c.name, at)) for c in recipients]
    recipients, removed, broker_error = _ask_broker(recipients, instances, removed_names, connect)
    limits = {w.recipient: hung_after(w.recipient, instances) for w in seen.workers}
    return Overview(at, seen, broker_error, recipients, limits, removed)


def _held(workers: list[WorkerLiveness], recipient: str, at: datetime) -> int | None:
    """What the recipient's reporting workers hold unacknowledged; a silent one's count is
    left out: killed, its messages went back to the queue with its connection."""
    counts = [
        w.held
        for w in workers
        if w.recipient == recipient and w.held is not None and not is_silent(w, at)
    ]
    return sum(counts) if counts else None


def take_broker_overview(
    instances: Mapping[str, InstanceConfig],
    connect: Callable[[], Any],
    store_error: str,
) -> Overview:
    """The broker's half alone, for when the store cannot be read: each configured instance's
    queues and consumers (webhook subscriptions and removed instances are known to the store
    only), and the store's outage (`store_error`: what went wrong, and what to check) as the
    first problem."""
    at = datetime.now(UTC)
    recipients = [
        replace(_instance(name, config, _NOTHING_STORED), dead_letters=None)
        for name, config in instances.items()
    ]
    recipients, removed, broker_error = _ask_broker(recipients, instances, [], connect)
    return Overview(
        at, _NOTHING_STORED, broker_error, recipients, removed=removed, store_error=store_error
    )


#: What status takes the store to say when it could not be read.
_NOTHING_STORED = StoreOverview(0, None, {}, {}, {}, [], [])


def _ask_broker(
    recipients: list[Recipient],
    instances: Mapping[str, InstanceConfig],
    removed_names: list[str],
    connect: Callable[[], Any],
) -> tuple[list[Recipient], list[RemovedInstance], str | None]:
    """The recipients with their queues' states, and the removed instances' leftovers; or the
    recipients as they were and why the broker could not be asked."""
    try:
        filled, removed = _with_queue_states(recipients, instances, removed_names, connect)
    except BrokerUnavailable as exc:
        return recipients, [], str(exc)
    return filled, removed, None


def _problems(overview: Overview) -> list[str]:
    found: list[str] = []
    if overview.store_error:
        found.append(
            f"store: unavailable: {overview.store_error}; the API answers 503 to every create "
            "and read, and the relay, workers and pollers wait for it and go on by themselves "
            "once it answers; check the database server and CIVICBUS_DATABASE_URL. Until then "
            "status shows the broker's view alone: no outbox, leases, workers, dead letters or "
            "subscriptions"
        )
    if overview.broker_error:
        found.append(
            f"broker: {overview.broker_error}; nothing is published or delivered meanwhile"
        )
    found.extend(_blocked_problem(overview))
    found.extend(_relay_problems(overview))
    found.extend(_lapsed_leases(overview))
    found.extend(_worker_problems(overview))
    if not overview.store_error:  # with no worker's report to count against the consumers
        found.extend(_unknown_consumers(overview))
    for c in overview.recipients:
        found.extend(_poller_problems(c, overview.at))
        for queue in c.missing:
            found.append(
                f"{c.name}: the broker has no queue {queue}; `{c.start_with}` or "
                "`civicbus relay` declare it when they start"
            )
        if c.consumers == 0:
            found.append(_no_consumer(overview, c))
        if c.failing_since is not None:
            behind = f"; {c.queued} event(s) wait behind it" if c.queued else ""
            since = c.failing_since.isoformat(timespec="seconds")
            since += "" if c.failing_since_exact else " or earlier"
            found.append(
                f"{c.name}: its subscriber has been failing since {since}: {c.last_error}"
                f"{behind} (the worker retries in place, holding the queue); check the receiver "
                "(`civicbus subscriptions list` has its URL): the events flow again once it "
                "answers"
            )
        if c.retrying:
            found.append(
                f"{c.name}: {c.retrying} message(s) wait in the retry tiers: its back-end has "
                f"been failing; `civicbus adapters check {c.name}`, `civicbus requests stuck` "
                "(the worker's log has the errors); once it answers, "
                f"`civicbus adapters retry-now {c.name}`"
            )
        if c.dead_letters:
            found.append(
                f"{c.name}: {c.dead_letters} dead letter(s) wait for a decision: "
                f"`civicbus dead list {c.name}`"
            )
        if c.dead_in_queue:
            found.append(
                f"{c.name}: {c.dead_in_queue} message(s) in {c.dead_queue}: "
                "`civicbus dead keep` moves them into the store; is it running?"
            )
    found.extend(_unconfigured_problem(r) for r in overview.unconfigured)
    found.extend(p for r in overview.removed for p in _removed_instance_problems(r))
    return found


def _no_consumer(overview: Overview, c: Recipient) -> str:
    """No consumer on the queue: no worker runs, or one that runs does not consume it now (it
    is connecting again to the broker, or its queue waits for a handler still busy with a
    message of the connection it lost)."""
    waiting = f", {c.queued} waiting" if c.queued else ""
    alive = [
        w for w in overview.store.workers if w.recipient == c.name and not is_silent(w, overview.at)
    ]
    if not alive:
        return f"{c.name}: no consumer on {c.queue}{waiting}: is `{c.start_with}` running{c.needs}?"
    said = [
        f"{w.name} (on {_on(w)} since {w.working_since.isoformat(timespec='seconds')})"
        if w.working_since
        else w.name
        for w in alive
    ]
    return (
        f"{c.name}: no consumer on {c.queue}{waiting}, though its worker(s) {', '.join(said)} "
        "report: connecting to the broker again, or waiting for a handler still busy from a lost "
        "connection before consuming again (its log: worker.connection_lost, "
        "worker.queue_waits_for_handler); if that lasts, restart it"
    )


def _removed_instance_problems(r: RemovedInstance) -> list[str]:
    """Messages left in the queues of an instance taken out of the config: the relay routes
    nothing new there, but what it routed before waits for a worker that no longer runs."""
    gone = f"{r.name} is no adapter instance in the config (renamed or removed?)"
    found = []
    if r.queued and not r.consumers:
        found.append(
            f"{r.name}: {r.queued} message(s) wait in {r.queue}, and {gone}: no worker takes "
            f"them. Put the instance back in the config and run `civicbus worker {r.name}` "
            "until its queue is empty, then remove it again; or give them up: "
            f"rabbitmqctl -p <vhost> delete_queue {r.queue}"
        )
    if r.dead_in_queue:
        found.append(
            f"{r.name}: {r.dead_in_queue} message(s) in {r.dead_queue}, and {gone}: "
            f"`civicbus dead keep` moves them into the store (then `civicbus dead list {r.name}`); "
            "is it running?"
        )
    return found


def _unconfigured_problem(route: UnconfiguredRoute) -> str:
    """Dead letters no recipient answers to wait for a decision as much as any other (and
    civicbus_dead_letters_waiting counts them): only the advice differs."""
    name = route.name
    waiting = f"{name}: {route.dead_letters} dead letter(s) wait for a decision, and {name}"
    if route.removed_subscription:
        return (
            f"{waiting} is a removed webhook subscription: no replay can reach them; "
            f"`civicbus dead list {name}` shows them, `civicbus dead drop {name} --all` gives "
            "them up"
        )
    return (
        f"{waiting} is no adapter instance in the config (renamed or removed?): "
        f"`civicbus dead list {name}` shows them, `civicbus dead drop {name} --all` gives them "
        "up; to replay them, put the instance back in the config"
    )


def _blocked_problem(overview: Overview) -> list[str]:
    """A resource alarm on the broker: it holds every publish (the relay's, and the workers'
    retries, dead letters and events) until the alarm clears."""
    block = overview.broker_blocked
    if block is None:
        return []
    if "disk" in block.reason:
        todo = "free disk space on the broker host"
    elif "memory" in block.reason:
        todo = "free memory on the broker host (its largest queues hold most of it)"
    else:
        todo = "free disk space or memory on the broker host"
    waiting = overview.store.outbox_waiting
    return [
        f"broker: RabbitMQ blocks publishing since "
        f"{block.blocked_since.isoformat(timespec='seconds')} ({block.reason}): nothing is "
        f"published until the alarm clears ({waiting} event(s) wait in the outbox; workers' "
        f"retries and dead letters wait too); {todo}; `rabbitmq-diagnostics alarms` names "
        "the alarm; publishing goes on by itself once it clears"
    ]


def _relay_problems(overview: Overview) -> list[str]:
    seen = overview.store
    if not seen.outbox_waiting:
        return []
    lease = seen.leases.get(RELAY_LEASE)
    if lease is None or lease.expires_at < overview.at:
        return [
            f"relay: {seen.outbox_waiting} event(s) wait in the outbox and no relay is active: "
            "is `civicbus relay` running?"
        ]
    if overview.broker_blocked is not None:
        return []  # the relay cannot publish: the broker's problem says why
    if seen.oldest_waiting is not None and overview.at - seen.oldest_waiting > OUTBOX_LAG:
        age = int((overview.at - seen.oldest_waiting).total_seconds())
        return [
            f"relay: the oldest of {seen.outbox_waiting} waiting event(s) is {age} s old: the "
            f"relay ({lease.holder}) is not keeping up or cannot publish; see its log"
        ]
    return []


def _lapsed_leases(overview: Overview) -> list[str]:
    """A lease is released on a clean stop: one that lapsed means its holder died or hangs
    (the relay's is reported above when events wait)."""
    found = []
    configured = {poller_lease(r.name) for r in overview.recipients}
    for lease in overview.store.leases.values():
        if lease.expires_at >= overview.at:
            continue
        if lease.name == RELAY_LEASE and overview.store.outbox_waiting:
            continue
        if lease.name != RELAY_LEASE and lease.name not in configured:
            continue  # an instance no longer in the config: nobody will poll it again
        command = "civicbus relay" if lease.name == RELAY_LEASE else "civicbus poller"
        found.append(
            f"{lease.name}: the lease of {lease.holder} lapsed at "
            f"{lease.expires_at.isoformat(timespec='seconds')} without being released: "
            f"did `{command}` die? is one running?"
        )
    return found


def _worker_problems(overview: Overview) -> list[str]:
    """A worker on one message for longer than its instance's time budget allows (it looks
    hung: its heartbeat goes on, its messages do not), and a worker that went silent while
    messages wait that no other worker of its recipient is there to take."""
    found = []
    for worker in overview.store.workers:
        if is_silent(worker, overview.at):
            if _held_up_by_silence(overview, worker):
                found.append(_silent(overview, worker, held_up=True))
            continue
        since, limit = worker.working_since, overview.hung_after.get(worker.recipient)
        if since is None or limit is None or overview.at - since <= limit:
            continue
        on = _on(worker)
        found.append(
            f"{worker.recipient}: worker {worker.name} has been on {on} since "
            f"{since.isoformat(timespec='seconds')} ({_minutes(overview.at - since)}; its "
            f"timeouts and retries allow {_minutes(limit)}): it looks hung (a call that never "
            f"returns, a deadlock) and keeps {_its_messages(worker)} unacknowledged until the "
            f"broker's consumer timeout; its log has the last steps of {on}, `py-spy dump --pid "
            f"{worker.pid}` on {worker.host} shows where it waits; restart it (SIGTERM waits its "
            "stop grace, 8 s by default, for the message in hand, then leaves it to the broker): "
            "its messages go back to the queue, and a command that reached the back-end is found "
            "there, not made twice"
        )
    return found


def _unknown_consumers(overview: Overview) -> list[str]:
    """More consumers on a recipient's queue than workers reporting to this store for it.

    Every worker reports to its store while it runs, and a report stays (stale) for an hour
    after it stops, so the extra consumers are most likely workers of another civicbus
    installation using the same broker vhost: they take this store's messages and dead-letter
    them as requests they do not know."""
    reporting: dict[str, int] = {}
    for worker in overview.store.workers:
        reporting[worker.recipient] = reporting.get(worker.recipient, 0) + 1
    found = []
    for c in overview.recipients:
        known = reporting.get(c.name, 0)
        if c.consumers is None or c.consumers <= known:
            continue
        found.append(
            f"{c.name}: {c.consumers} consumer(s) on {c.queue}, but {known} worker(s) report to "
            "this store for it: the others are not this installation's workers (another "
            "civicbus installation on the same broker vhost takes this one's messages and "
            "dead-letters them as unknown requests), or workers that cannot reach this store; "
            "give each installation a vhost of its own (in CIVICBUS_AMQP_URL)"
        )
    return found


def _removed_instance_notes(overview: Overview) -> list[str]:
    """A worker still consuming an instance taken out of the config (started before): it
    drains what was routed there; stop it once the queue is empty."""
    return [
        f"{r.name}: is no adapter instance in the config, yet {r.consumers} worker(s) still "
        f"consume {r.queue} ({r.queued} waiting); stop them once it is empty"
        for r in overview.removed
        if r.consumers
    ]


def _worker_notes(overview: Overview) -> list[str]:
    """Workers that went silent with nothing held up by it: crashed, killed or frozen, while
    another worker of theirs reports or nothing waits."""
    return [
        _silent(overview, worker, held_up=False)
        for worker in overview.store.workers
        if is_silent(worker, overview.at) and not _held_up_by_silence(overview, worker)
    ]


def _held_up_by_silence(overview: Overview, worker: WorkerLiveness) -> bool:
    """Messages wait for the silent worker's recipient and no other of its workers reports."""
    recipient = _recipient(overview, worker.recipient)
    return bool(recipient and recipient.queued) and not any(
        w.recipient == worker.recipient and not is_silent(w, overview.at)
        for w in overview.store.workers
    )


def _silent(overview: Overview, worker: WorkerLiveness, *, held_up: bool) -> str:
    on = f", on {_on(worker)}" if worker.working_since else ""
    said = (
        f"{worker.recipient}: worker {worker.name} (started "
        f"{worker.started_at.isoformat(timespec='seconds')}) last reported at "
        f"{worker.heartbeat_at.isoformat(timespec='seconds')}{on} and never said it stopped: "
        "it crashed, was killed or is frozen"
    )
    recipient = _recipient(overview, worker.recipient)
    if not held_up or recipient is None:
        forgotten = f"{FORGET_AFTER.total_seconds() / 3600:g} h"
        return f"{said}; nothing waits for it (this note goes {forgotten} after its last report)"
    return (
        f"{said}; {recipient.queued} message(s) wait and no other worker of {recipient.name} "
        f"reports: start `{recipient.start_with}` (and end {worker.name} on {worker.host} if "
        "it is still there)"
    )


def _recipient(overview: Overview, name: str) -> Recipient | None:
    return next((c for c in overview.recipients if c.name == name), None)


def _on(worker: WorkerLiveness) -> str:
    if worker.request_id:
        return f"request {worker.request_id} (message {worker.message_id})"
    return f"message {worker.message_id}"


def _its_messages(worker: WorkerLiveness) -> str:
    if worker.held and worker.held > 1:
        return f"its {worker.held} messages (in hand and prefetched)"
    return "its messages"


def _minutes(duration: timedelta) -> str:
    seconds = int(duration.total_seconds())
    return f"{seconds // 60} min {seconds % 60} s" if seconds >= 60 else f"{seconds} s"


def _poller_problems(c: Recipient, at: datetime) -> list[str]:
    rounds = c.poller
    if rounds is None or rounds.failing_since is None:
        return []
    if at - rounds.failing_since < max(POLLER_FAILING, timedelta(seconds=3 * c.poll_interval)):
        return []
    last = rounds.polled_at.isoformat(timespec="seconds") if rounds.polled_at else "never"
    return [
        f"{c.name}: its poller's rounds have failed since "
        f"{rounds.failing_since.isoformat(timespec='seconds')} (last completed: {last}): "
        f"{rounds.last_error}; no status change of its back-end is read until a round "
        f"completes; `civicbus adapters check {c.name}` (the poller's log has each failure)"
    ]


def _instance(name: str, config: InstanceConfig, seen: StoreOverview) -> Recipient:
    return Recipient(
        name=name,
        start_with=f"civicbus worker {name}",
        queue=work_queue(name),
        dead_queue=dead_queue(name),
        dead_letters=seen.dead_letters.get(name, 0),
        poller=seen.pollers.get(name),
        poll_interval=config.poll_interval,
    )


def _subscription(subscription: Subscription, seen: StoreOverview) -> Recipient:
    route = route_name(subscription.id)
    # The webhook worker skips a subscription whose secret is not in its environment.
    needs = f" with ${subscription.secret_env} set" if subscription.secret_env else ""
    return Recipient(
        name=route,
        start_with="civicbus worker --subscriptions",
        needs=needs,
        queue=queue_name(subscription.id),
        dead_letters=seen.dead_letters.get(route, 0),
    )


def _with_webhook_failures(
    store: Store, subscriptions: list[Recipient], at: datetime
) -> list[Recipient]:
    """A subscription whose latest delivery outcome is a failed attempt, with its next try
    still to come, has a failing subscriber: the webhook worker audits every failed round
    (its retries hold the queue, so no retry tier shows them). Read from each subscription's
    latest outcome, however many other entries came after it."""
    actors = {f"worker:{c.name}": c for c in subscriptions}
    latest = store.latest_audit(list(actors), _OUTCOMES, since=at - OUTCOME_HORIZON)
    filled = []
    for actor, c in actors.items():
        outcome = latest.get(actor)
        if outcome is not None and _next_try_due(outcome, at):
            failures = store.audit_streak(outcome, broken_by="delivered", lookback=RUN_LOOKBACK)
            c = replace(
                c,
                failing_since=failures.first.at,
                failing_since_exact=failures.complete,
                last_error=_error(outcome),
            )
        filled.append(c)
    return filled


def _next_try_due(outcome: AuditEntry, at: datetime) -> bool:
    """Whether `outcome` is a failed attempt whose announced next try is due (or only just
    overdue)."""
    if (outcome.action, outcome.outcome) != ("attempt", "error"):
        return False
    delay = outcome.details.get("next_delay_seconds")
    if not isinstance(delay, int | float):
        return False  # the last try: a dead letter follows
    # Long past it, nothing was tried since: no worker holds it (its consumer count tells).
    return at <= outcome.at + timedelta(seconds=delay) + RETRY_GRACE


def _error(entry: AuditEntry) -> str:
    return str(entry.details.get("error", "(no reason recorded)"))


def _with_queue_states(
    recipients: list[Recipient],
    instances: Mapping[str, InstanceConfig],
    removed: list[str],
    connect: Callable[[], Any],
) -> tuple[list[Recipient], list[RemovedInstance]]:
    retry_queues = {
        name: [retry_queue(name, delay) for delay in retry_delays(config)]
        for name, config in instances.items()
    }
    names = [c.queue for c in recipients]
    names += [c.dead_queue for c in recipients if c.dead_queue]
    names += [queue for queues in retry_queues.values() for queue in queues]
    # A removed instance's retry tiers dead-letter back into its work queue: that one is enough.
    names += [queue for name in removed for queue in (work_queue(name), dead_queue(name))]
    connection = connect()
    try:
        states = queue_states(connection, names)
    finally:
        close_quietly(connection)
    filled = [_filled(c, states, retry_queues.get(c.name, [])) for c in recipients]
    return filled, [r for name in removed if (r := _removed(name, states)) is not None]


def _removed(name: str, states: Mapping[str, QueueState | None]) -> RemovedInstance | None:
    """The removed instance with what its queues hold; None when they hold nothing (or are
    gone) and nothing consumes them."""
    work, dead = states.get(work_queue(name)), states.get(dead_queue(name))
    queued, consumers = (work.messages, work.consumers) if work else (0, 0)
    dead_in_queue = dead.messages if dead else 0
    if not (queued or consumers or dead_in_queue):
        return None
    return RemovedInstance(
        name, work_queue(name), queued, consumers, dead_queue(name), dead_in_queue
    )


def _filled(
    c: Recipient, states: Mapping[str, QueueState | None], retry_queues: list[str]
) -> Recipient:
    work = states.get(c.queue)
    dead = states.get(c.dead_queue) if c.dead_queue else None
    retrying = [states.get(queue) for queue in retry_queues]
    missing = [c.queue] if work is None else []
    if c.dead_queue and dead is None:
        missing.append(c.dead_queue)
    missing += [queue for queue, state in zip(retry_queues, retrying, strict=True) if state is None]
    return replace(
        c,
        queued=work.messages if work else None,
        consumers=work.consumers if work else None,
        retrying=sum(s.messages for s in retrying if s) if retry_queues else None,
        dead_in_queue=dead.messages if dead else None,
        missing=tuple(missing),
    )
