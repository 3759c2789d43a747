"""GET /metrics: Prometheus text with the store's view of the bus and this process's counters,
read from a real app under uvicorn on a real SQLite store."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from bus.api import create_app
from bus.bootstrap import Runtime
from bus.store import WorkerLiveness
from tests.api.conftest import SPRINGFIELD, LiveServer, unreachable_store_runtime

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(url: str) -> Samples:
    response = httpx.get(f"{url}/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def accepted(samples: Samples) -> float:
    key = (
        "civicbus_requests_accepted_total",
        (("channel", "web"), ("jurisdiction", SPRINGFIELD), ("service_code", "POTHOLE")),
    )
    return samples.get(key, 0.0)


def test_metrics_show_accepted_requests_and_the_outbox_backlog(
    server: LiveServer, runtime: Runtime, create: Callable[..., httpx.Response]
) -> None:
    before = scrape(server.url)
    waiting = before[("civicbus_outbox_waiting_events", ())]

    assert create().status_code == 200
    assert create().status_code == 200
    after = scrape(server.url)

    assert after[("civicbus_store_up", ())] == 1
    assert after[("civicbus_store_failing_fast", ())] == 0
    assert after[("civicbus_store_refused_operations_total", ())] == 0
    assert accepted(after) == accepted(before) + 2
    assert after[("civicbus_outbox_waiting_events", ())] == waiting + 2
    assert after[("civicbus_outbox_oldest_waiting_seconds", ())] >= 0
    for instance in runtime.config.instances:
        assert after[("civicbus_dead_letters_waiting", (("recipient", instance),))] == 0
    assert ("process_resident_memory_bytes", ()) in after


def test_dead_letters_and_leases_are_reported(server: LiveServer, runtime: Runtime) -> None:
    with runtime.store.transaction() as tx:
        tx.record_dead_letter(
            instance="permits",
            message_id="m-metrics",
            request_id=None,
            reason="PermanentError: rejected",
            envelope=None,
            attempts=1,
            at=None,
        )
    assert runtime.store.try_lease("relay", "host-a:1", ttl_seconds=30)

    samples = scrape(server.url)

    assert samples[("civicbus_dead_letters_waiting", (("recipient", "permits"),))] == 1
    assert 0 < samples[("civicbus_lease_remaining_seconds", (("lease", "relay"),))] <= 30


def test_an_unreachable_store_is_reported_as_down_not_as_an_error(tmp_path: Path) -> None:
    runtime = unreachable_store_runtime(tmp_path)
    with LiveServer(create_app(runtime)) as live:
        samples = scrape(live.url)
    assert samples[("civicbus_store_up", ())] == 0
    assert ("civicbus_outbox_waiting_events", ()) not in samples


def test_failed_poller_rounds_are_counted_per_instance(
    server: LiveServer, runtime: Runtime
) -> None:
    for _ in range(3):
        with runtime.store.transaction() as tx:
            tx.poll_round_failed("parks", "ConnectError: refused")

    failing = scrape(server.url)
    with runtime.store.transaction() as tx:
        tx.poll_round_completed("parks")
    recovered = scrape(server.url)

    assert failing[("civicbus_poller_failed_rounds_total", (("instance", "parks"),))] == 3
    assert failing[("civicbus_poller_failing_seconds", (("instance", "parks"),))] > 0
    assert recovered[("civicbus_poller_failed_rounds_total", (("instance", "parks"),))] == 3
    assert recovered[("civicbus_poller_failing_seconds", (("instance", "parks"),))] == 0


def test_reporting_workers_and_the_longest_message_held_are_reported(
    server: LiveServer, runtime: Runtime
) -> None:
    now = datetime.now(UTC)
    busy = WorkerLiveness(
        "w-1", "permits", "host-a", 11, now, now, "m-1", "req-1", now - timedelta(minutes=5)
    )
    idle = WorkerLiveness("w-2", "permits", "host-b", 12, now, now)
    dead = WorkerLiveness("w-3", "parks", "host-c", 13, now, now - timedelta(hours=0.5))
    with runtime.store.transaction() as tx:
        tx.report_workers([busy, idle, dead])

    samples = scrape(server.url)

    assert samples[("civicbus_workers_reporting", (("recipient", "permits"),))] == 2
    assert samples[("civicbus_workers_reporting", (("recipient", "parks"),))] == 0
    held = samples[("civicbus_worker_message_held_seconds", (("recipient", "permits"),))]
    assert held >= 300
    assert samples[("civicbus_worker_message_held_seconds", (("recipient", "parks"),))] == 0


def test_a_broker_blocking_the_relay_is_reported_until_the_relay_stops_saying_so(
    server: LiveServer, runtime: Runtime
) -> None:
    key = ("civicbus_broker_blocked_seconds", (("publisher", "relay"),))
    assert scrape(server.url)[key] == 0
    since = datetime.now(UTC) - timedelta(seconds=90)
    runtime.store.note_broker_blocked("relay", "host-a:1", since, "low on disk")

    assert 90 <= scrape(server.url)[key] < 120

    runtime.store.note_broker_unblocked("relay", "host-a:1")
    assert scrape(server.url)[key] == 0
