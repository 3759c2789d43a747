"""The store goes away under a running bus (issue 2: "A store that cannot be reached gives 503
with Retry-After, and nothing half-written"): its PostgreSQL server is stopped, cleanly
(`pg_ctl stop -m fast`) and as a crash (`-m immediate`), while requests are on their way to the
back-end and residents keep posting.

Real processes (`civicbus api`, `relay`, `worker parks`, `poller parks`, and the parks simulator
of `civicbus sandbox`: tests/faults/store_bus.py) on the private PostgreSQL cluster of
tests/faults/conftest.py, so that stopping it leaves the machine's database alone, and a fresh
vhost of the machine's RabbitMQ.
What must hold: while the store is down the API answers 503 with Retry-After at once, reads
included; the relay, the worker and the poller wait it out and go on by themselves once it is
back; each request that got a 200 reaches the back-end exactly once; each that got a 503 left
nothing behind.
"""

from __future__ import annotations

import functools
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from tests.e2e.city import (
    PARKS_SERVICE,
    answers,
    created_id,
    held_references,
    run_cli,
    set_fault,
)
from tests.faults.pg_cluster import PostgresCluster
from tests.faults.store_bus import (
    Bus,
    Residents,
    assert_unavailable,
    post,
    running_bus,
    timed,
)

pytestmark = [pytest.mark.rabbitmq, pytest.mark.postgres, pytest.mark.timeout(180)]

#: Requests posted before each outage, while the back-end is slow: some are in the worker's
#: hands (submitted, receipts not recorded yet) when the store goes.
BEFORE_OUTAGE = 10
#: Creates tried while the store is down, each with an Idempotency-Key to send again later.
DURING_OUTAGE = 3
AFTER_OUTAGES = 5
#: Seconds each outage lasts: the relay's and the worker's tries fail several times over.
OUTAGE = 4.0
#: An answer the API gives while the store is down may take this long at most: no hang.
PROMPT = 5.0
DELIVERY_TIMEOUT = 60.0


@pytest.fixture
def bus(
    tmp_path: Path, amqp_vhost_factory: Callable[[], str], pg_cluster_url: str
) -> Iterator[Bus]:
    with running_bus(tmp_path, amqp_url=amqp_vhost_factory(), database_url=pg_cluster_url) as bus:
        yield bus


def test_a_store_stopped_under_the_running_bus_answers_503_and_loses_nothing(
    bus: Bus, pg_cluster: PostgresCluster
) -> None:
    done = run_cli(["clients", "add", "outage-app"], env=bus.env, cwd=bus.workdir)
    api_key = done.stdout.strip().splitlines()[-1]
    pids = {name: p.popen.pid for name, p in bus.processes.items()}
    accepted: list[str] = []
    refused: list[str] = []  # the Idempotency-Keys of creates answered 503, sent again later
    timings: dict[str, float] = {}
    residents = Residents(bus, api_key)
    with residents.posting():
        for mode in ("fast", "immediate"):
            _outage(bus, pg_cluster, mode, api_key, accepted, refused, timings)
    # Each resident's create was taken or refused at once; one refused leaves nothing behind.
    for key, status, request_id, took in residents.answers:
        assert status in (200, 503), (key, status, request_id)
        if status == 200:
            assert request_id is not None
            accepted.append(request_id)
            continue
        _slowest(timings, "POST 503 (residents)", took)
        refused.append(key)
        n = int(key.rsplit("-", 1)[1])
        accepted.append(created_id(post(bus, api_key, n, key)))

    accepted += [created_id(post(bus, api_key, 200 + n)) for n in range(AFTER_OUTAGES)]
    print(
        f"{len(residents.answers)} residents' creates, {len(refused)} refused;",
        ", ".join(f"{k}: {v:.2f}s" for k, v in timings.items()),
    )
    slowest = max(v for k, v in timings.items() if "503" in k)
    assert slowest < PROMPT, f"an answer during the outage took {slowest:.1f}s"

    engine = sa.create_engine(bus.env["CIVICBUS_DATABASE_URL"])
    try:

        def submitted() -> dict[str, int]:
            """How many `submitted` entries each request's audit trail has."""
            with engine.connect() as conn:
                rows = conn.execute(
                    sa.text(
                        "SELECT request_id, count(*) FROM audit_log "
                        "WHERE action = 'submitted' GROUP BY request_id"
                    )
                )
                return {str(request_id): int(n) for request_id, n in rows}

        bus.wait_until(
            lambda: set(submitted()) >= set(accepted),
            timeout=DELIVERY_TIMEOUT,
            what="every request submitted",
        )
        assert len(set(accepted)) == len(accepted)
        assert sorted(held_references(bus.parks_url)) == sorted(accepted), (
            "the back-end holds each request once"
        )
        assert submitted() == dict.fromkeys(accepted, 1)
        # Nothing half-written by a refused create: the accepted requests are all there is.
        with engine.connect() as conn:
            stored = set(conn.execute(sa.text("SELECT id FROM requests")).scalars())
            keyed = conn.execute(sa.text("SELECT count(*) FROM idempotency_keys")).scalar()
        assert stored == set(accepted)
        # One key per report sent with one, however often it was sent.
        assert keyed == len(residents.answers) + DURING_OUTAGE * 2

        def outbox_empty() -> bool:
            with engine.connect() as conn:
                query = "SELECT count(*) FROM outbox WHERE sent_at IS NULL"
                return conn.execute(sa.text(query)).scalar() == 0

        bus.wait_until(outbox_empty, timeout=DELIVERY_TIMEOUT, what="the outbox relayed")
    finally:
        engine.dispose()
    run_cli(["audit", "verify"], env=bus.env, cwd=bus.workdir)
    # Nobody restarted anything: the same processes carried on.
    for name, process in bus.processes.items():
        assert process.popen.poll() is None, f"{name} exited\n{bus.diagnose()}"
        assert process.popen.pid == pids[name]


def _outage(
    bus: Bus,
    pg_cluster: PostgresCluster,
    mode: str,
    api_key: str,
    accepted: list[str],
    refused: list[str],
    timings: dict[str, float],
) -> None:
    """Requests on their way, then the store stopped (`pg_ctl stop -m MODE`) for OUTAGE
    seconds and started again: what the API answers meanwhile, and that the bus carries on."""
    _, jurisdiction = PARKS_SERVICE
    # A slow back-end: the worker is inside a batch (found or submitted, receipts not yet
    # recorded) when the store goes away, and goes on submitting while it is away.
    set_fault(bus.parks_url, {"mode": "slow", "delay": 0.2})
    first = len(accepted)
    accepted += [created_id(post(bus, api_key, n)) for n in range(first, first + BEFORE_OUTAGE)]
    bus.wait_until(
        lambda first=first: set(accepted[first:]) & set(held_references(bus.parks_url)),
        timeout=DELIVERY_TIMEOUT,
        what="work under way",
    )
    relay_failures = bus.count("relay", "relay.store_failed")
    worker_waits = bus.count("worker", "worker.store_unavailable")
    poller_failures = bus.count("poller", "poller.round_failed")
    stopped_at = time.monotonic()
    pg_cluster.stop(mode)

    keys = [f"outage-{mode}-{uuid.uuid4().hex[:8]}" for _ in range(DURING_OUTAGE)]
    for n, key in enumerate(keys):
        response, took = timed(functools.partial(post, bus, api_key, 100 + n, key))
        assert_unavailable(response, f"POST during the {mode} outage")
        _slowest(timings, f"POST 503 ({mode})", took)
    refused += keys
    reads = {
        "GET /requests.json": f"{bus.open311}/requests.json?jurisdiction_id={jurisdiction}",
        "GET /requests/{id}.json": (
            f"{bus.open311}/requests/{accepted[0]}.json?jurisdiction_id={jurisdiction}"
        ),
    }
    for what, url in reads.items():
        response, took = timed(functools.partial(httpx.get, url, timeout=30))
        assert_unavailable(response, f"{what} during the {mode} outage")
        _slowest(timings, f"GET 503 ({mode})", took)
    assert httpx.get(f"{bus.api_url}/healthz", timeout=30).status_code == 503

    # The relay and the worker meet the outage, and wait it out.
    bus.wait_until(
        lambda n=relay_failures: bus.count("relay", "relay.store_failed") > n,
        timeout=10,
        what="the relay to meet the outage",
    )
    bus.wait_until(
        lambda n=worker_waits: bus.count("worker", "worker.store_unavailable") > n,
        timeout=10,
        what="the worker to meet the outage (with receipts to record)",
    )
    bus.wait_until(
        lambda n=poller_failures: bus.count("poller", "poller.round_failed") > n,
        timeout=10,
        what="the poller to meet the outage",
    )
    # The store stays away a while: several of the relay's and the worker's tries fail.
    bus.wait_until(
        lambda: time.monotonic() - stopped_at >= OUTAGE,
        timeout=OUTAGE + 1,
        what="the outage to last",
    )
    for name, process in bus.processes.items():
        assert process.popen.poll() is None, f"{name} exited\n{bus.diagnose()}"

    pg_cluster.start()
    restarted_at = time.monotonic()
    recorded = bus.count("poller", "poller.recorded")
    set_fault(bus.parks_url, {"mode": "none"})
    bus.wait_until(
        functools.partial(answers, f"{bus.api_url}/healthz"),
        timeout=10,
        what="the API to answer again",
    )
    timings[f"API back after restart ({mode})"] = time.monotonic() - restarted_at
    # A resident whose report got a 503 sends it again, with its key: created once.
    for n, key in enumerate(keys):
        request_id = created_id(post(bus, api_key, 100 + n, key))
        again = post(bus, api_key, 100 + n, key)
        assert again.status_code == 200, again.text
        assert again.json()[0]["service_request_id"] == request_id
        accepted.append(request_id)
    bus.wait_until(
        lambda: set(accepted) <= set(held_references(bus.parks_url)),
        timeout=DELIVERY_TIMEOUT,
        what="every request so far in the back-end",
    )
    timings[f"all delivered after restart ({mode})"] = time.monotonic() - restarted_at
    bus.wait_until(
        lambda: bus.count("poller", "poller.recorded") > recorded,
        timeout=DELIVERY_TIMEOUT,
        what="the poller to record status changes again",
    )


def _slowest(timings: dict[str, float], what: str, took: float) -> None:
    timings[what] = max(timings.get(what, 0.0), took)
