"""Prometheus metrics, served by the API at `GET /metrics`.

Two kinds. What the store knows of the whole bus (the outbox backlog, dead letters waiting, the
leases of the relay and the pollers, the pollers' failed rounds, the workers' liveness reports,
a resource alarm of the broker blocking the relay)
is read when Prometheus scrapes, so any API copy reports the same figures and no other part
needs an endpoint of its own. What happens inside this process (requests accepted, store
operations refused at once by its circuit breaker) is counted as it happens. Queue depths and
consumers are the broker's to report: RabbitMQ's own Prometheus plugin has them; `civicbus
status` shows both.
No label ever holds personal data: only jurisdictions, service codes, channels and the names of
instances and leases from the config.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime

from prometheus_client import CollectorRegistry, Counter, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from bus.liveness import is_current, is_silent
from bus.store import BreakerState, Store, StoreUnavailable, WorkerLiveness

#: Counted when the transaction holding the request committed (any channel, any API copy).
REQUESTS_ACCEPTED = Counter(
    "civicbus_requests_accepted",
    "Requests accepted and stored by this process.",
    ["jurisdiction", "service_code", "channel"],
    registry=None,
)


class StoreCollector(Collector):
    """The bus's backlog as the store holds it, read at each scrape."""

    def __init__(self, store: Callable[[], Store], recipients: Callable[[], Iterable[str]]) -> None:
        self._store = store
        #: The adapter instances (and subscriptions) to report even with nothing waiting.
        self._recipients = recipients

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("civicbus_store_up", "1 when the store answered this scrape.")
        try:
            store = self._store()
        except StoreUnavailable:  # could not be opened: no breaker to report either
            up.add_metric([], 0)
            yield up
            return
        try:
            seen = store.overview()
            recipients = {*self._recipients(), *seen.dead_letters}
        except StoreUnavailable:
            up.add_metric([], 0)
            yield up
            yield from _breaker(store.breaker_state())
            return
        up.add_metric([], 1)
        yield up
        yield from _breaker(store.breaker_state())
        now = datetime.now(UTC)
        yield GaugeMetricFamily(
            "civicbus_outbox_waiting_events",
            "Events in the outbox not yet published to the broker.",
            value=seen.outbox_waiting,
        )
        oldest = seen.oldest_waiting
        yield GaugeMetricFamily(
            "civicbus_outbox_oldest_waiting_seconds",
            "Age of the oldest event waiting in the outbox (0 when none waits).",
            value=(now - oldest).total_seconds() if oldest else 0.0,
        )
        dead = GaugeMetricFamily(
            "civicbus_dead_letters_waiting",
            "Dead letters waiting for an operator's decision (civicbus dead list).",
            labels=["recipient"],
        )
        for recipient in sorted(recipients):
            dead.add_metric([recipient], seen.dead_letters.get(recipient, 0))
        yield dead
        lease = GaugeMetricFamily(
            "civicbus_lease_remaining_seconds",
            "Seconds until a lease (relay, poller:<instance>) lapses unless renewed; "
            "negative once lapsed, i.e. its holder stopped.",
            labels=["lease"],
        )
        for name, held in seen.leases.items():
            lease.add_metric([name], (held.expires_at - now).total_seconds())
        yield lease
        failed = CounterMetricFamily(
            "civicbus_poller_failed_rounds",
            "Poller rounds that failed (back-end or store error), by adapter instance.",
            labels=["instance"],
        )
        failing = GaugeMetricFamily(
            "civicbus_poller_failing_seconds",
            "How long an instance's poller rounds have failed without one completing "
            "(0 while they complete).",
            labels=["instance"],
        )
        for instance, rounds in seen.pollers.items():
            failed.add_metric([instance], rounds.failed_rounds)
            since = rounds.failing_since
            failing.add_metric([instance], (now - since).total_seconds() if since else 0.0)
        yield failed
        yield failing
        blocked = GaugeMetricFamily(
            "civicbus_broker_blocked_seconds",
            "How long RabbitMQ has blocked a publisher (the relay, or a worker: worker:HOST:PID) "
            "for a resource alarm, memory or disk (0 while it publishes): nothing it publishes "
            "gets through meanwhile.",
            labels=["publisher"],
        )
        blocked_for = {"relay": 0.0}
        for name, block in seen.broker_blocks.items():
            if is_current(block, now):
                blocked_for[name] = (now - block.blocked_since).total_seconds()
        for name, seconds in sorted(blocked_for.items()):
            blocked.add_metric([name], seconds)
        yield blocked
        yield from _workers(seen.workers, recipients, now)


def _breaker(state: BreakerState) -> Iterator[Metric]:
    yield GaugeMetricFamily(
        "civicbus_store_failing_fast",
        "1 while this process refuses store operations without trying them: the database "
        "stopped answering, and is pinged every second until it answers.",
        value=int(state.open),
    )
    yield CounterMetricFamily(
        "civicbus_store_refused_operations",
        "Store operations this process refused without trying them (each a 503 in the API).",
        value=state.refused,
    )


def _workers(
    workers: Iterable[WorkerLiveness], recipients: Iterable[str], now: datetime
) -> Iterator[Metric]:
    reporting = GaugeMetricFamily(
        "civicbus_workers_reporting",
        "Workers whose liveness reports are current, by adapter instance or subscription.",
        labels=["recipient"],
    )
    holding = GaugeMetricFamily(
        "civicbus_worker_message_held_seconds",
        "The longest a reporting worker has held one message (0 when all are idle): a worker "
        "hung on a back-end call shows here long before the broker's consumer timeout.",
        labels=["recipient"],
    )
    count: dict[str, int] = dict.fromkeys(recipients, 0)
    held: dict[str, float] = dict.fromkeys(recipients, 0.0)
    for worker in workers:
        count.setdefault(worker.recipient, 0)
        held.setdefault(worker.recipient, 0.0)
        if is_silent(worker, now):
            continue
        count[worker.recipient] += 1
        if worker.working_since is not None:
            age = (now - worker.working_since).total_seconds()
            held[worker.recipient] = max(held[worker.recipient], age)
    for recipient in sorted(count):
        reporting.add_metric([recipient], count[recipient])
        holding.add_metric([recipient], held[recipient])
    yield reporting
    yield holding


def api_registry(
    store: Callable[[], Store], recipients: Callable[[], Iterable[str]]
) -> CollectorRegistry:
    """The registry one API app serves: store figures, this process's counters and its
    CPU and memory."""
    registry = CollectorRegistry()
    registry.register(StoreCollector(store, recipients))
    registry.register(REQUESTS_ACCEPTED)
    ProcessCollector(registry=registry)
    return registry
