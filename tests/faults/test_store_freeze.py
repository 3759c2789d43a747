"""The store freezes under a running bus: every process of its PostgreSQL server is stopped
(SIGSTOP, as a paused VM) for a few seconds while requests are on their way to the back-end and
residents keep posting, then goes on (SIGCONT).

Unlike a stopped server, a frozen one keeps its connections open and its kernel acknowledges
what is sent to it: only the store's own bound on each round trip (`?query_timeout=`, short
here) notices. What must hold: meanwhile the API answers 503 with Retry-After, never a 500 and
never after a hang, and once one answer has waited out that bound the others come at once (the
store's circuit breaker), none of them let through to try the store again; the relay,
the worker and the poller meet the freeze and go on by themselves after it, without a restart;
each accepted request reaches the back-end exactly once; the audit chain is whole.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.city import PARKS_SERVICE, answers, created_id, held_references, run_cli, set_fault
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

#: The store's bound on one round trip, in seconds (15 s by default).
QUERY_TIMEOUT = 2
#: The longest an answer during the freeze may take: a pooled connection's ping and a new
#: connection's attempt both time out, perhaps behind another create's; well above that.
PROMPT = 12.0
#: An answer refused at once takes milliseconds; one that tried the frozen store waits at least
#: the query timeout (a ping) or libpq's shortest connect timeout (2 s). Generous between them.
AT_ONCE = 0.75 * QUERY_TIMEOUT
BEFORE_FREEZE = 10
#: Requests (creates and reads in turn) after the first answer of the freeze.
DURING_FREEZE = 8
#: Of those, how many may have taken that long: none tries the store (the API's store pings it
#: itself), one for a loaded machine.
SLOW_ONES = 1
DELIVERY_TIMEOUT = 60.0


@pytest.fixture
def bus(
    tmp_path: Path, amqp_vhost_factory: Callable[[], str], pg_cluster_url: str
) -> Iterator[Bus]:
    database_url = f"{pg_cluster_url}?query_timeout={QUERY_TIMEOUT}"
    with running_bus(tmp_path, amqp_url=amqp_vhost_factory(), database_url=database_url) as bus:
        yield bus


def test_a_store_frozen_under_the_running_bus_answers_503_and_the_bus_carries_on(
    bus: Bus, pg_cluster: PostgresCluster
) -> None:
    done = run_cli(["clients", "add", "freeze-app"], env=bus.env, cwd=bus.workdir)
    api_key = done.stdout.strip().splitlines()[-1]
    pids = {name: p.popen.pid for name, p in bus.processes.items()}
    _, jurisdiction = PARKS_SERVICE
    # A slow back-end: the worker has receipts to record when the store freezes.
    set_fault(bus.parks_url, {"mode": "slow", "delay": 0.2})
    accepted = [created_id(post(bus, api_key, n)) for n in range(BEFORE_FREEZE)]
    bus.wait_until(
        lambda: set(accepted) & set(held_references(bus.parks_url)),
        timeout=DELIVERY_TIMEOUT,
        what="work under way",
    )
    met = {
        "relay": "relay.store_failed",
        "worker": "worker.store_unavailable",
        "poller": "poller.round_failed",
    }
    before = {part: bus.count(part, event) for part, event in met.items()}
    residents = Residents(bus, api_key)
    keys: list[str] = []
    read = f"{bus.open311}/requests/{accepted[0]}.json?jurisdiction_id={jurisdiction}"
    took_after_first: list[float] = []
    with residents.posting():
        pg_cluster.freeze()
        try:
            keys.append("frozen-0")
            response, first = timed(functools.partial(post, bus, api_key, 100, keys[0]))
            assert_unavailable(response, "the first POST during the freeze")
            slowest = first
            for n in range(1, DURING_FREEZE + 1):
                if n % 2:
                    keys.append(f"frozen-{n}")
                    call = functools.partial(post, bus, api_key, 100 + n, keys[-1])
                else:
                    call = functools.partial(httpx.get, read, timeout=30)
                response, took = timed(call)
                assert_unavailable(response, f"request {n} during the freeze")
                took_after_first.append(took)
                slowest = max(slowest, took)
            frozen_metrics = scrape(bus)
            for part, event in met.items():
                bus.wait_until(
                    lambda part=part, event=event: bus.count(part, event) > before[part],
                    timeout=PROMPT + 5,
                    what=f"the {part} to meet the freeze",
                )
        finally:
            pg_cluster.thaw()
        thawed_at = time.monotonic()
        set_fault(bus.parks_url, {"mode": "none"})
        bus.wait_until(
            functools.partial(answers, f"{bus.api_url}/healthz"),
            timeout=10,
            what="the API to answer again",
        )
    back_after = time.monotonic() - thawed_at
    thawed_metrics = scrape(bus)

    # Each resident's create was taken or refused in time, never failed otherwise.
    frozen = list(keys)
    for key, status, request_id, took in residents.answers:
        assert status in (200, 503), (key, status, request_id)
        if status == 200:
            assert request_id is not None
            accepted.append(request_id)
        else:
            slowest = max(slowest, took)
            keys.append(key)
    tried = [took for took in took_after_first if took >= AT_ONCE]
    print(
        f"{len(residents.answers)} residents' creates, {len(keys) - len(frozen)} refused; "
        f"first 503 of the freeze: {first:.2f}s, the {len(took_after_first)} after it: "
        f"{', '.join(f'{took:.2f}' for took in took_after_first)}s; slowest 503: {slowest:.1f}s; "
        f"API back {back_after:.1f}s after the thaw"
    )
    assert slowest < PROMPT, f"an answer during the freeze took {slowest:.1f}s"
    # Once the store did not answer, the API refuses at once instead of waiting each time.
    assert len(tried) <= SLOW_ONES, (
        f"{len(tried)} of {len(took_after_first)} answers after the first waited for the store"
    )
    assert frozen_metrics["civicbus_store_failing_fast"] == 1
    assert thawed_metrics["civicbus_store_failing_fast"] == 0
    assert thawed_metrics["civicbus_store_refused_operations_total"] > 0
    # Logged once each: the API's breaker opened during the freeze and closed after it.
    bus.wait_until(
        lambda: bus.count("api", "store.breaker_closed"), timeout=10, what="the breaker closed"
    )
    assert bus.count("api", "store.breaker_opened") == 1
    assert bus.count("api", "store.breaker_closed") == 1
    # A refused create sent again with its key is created once. A replay is an honest answer too:
    # a create whose COMMIT reached the server just before it froze is committed as it thaws.
    for key in keys:
        n = int(key.rsplit("-", 1)[1]) + (100 if key.startswith("frozen") else 0)
        again = post(bus, api_key, n, key)
        assert again.status_code == 200, again.text
        accepted.append(again.json()[0]["service_request_id"])

    assert len(set(accepted)) == len(accepted)
    bus.wait_until(
        lambda: set(held_references(bus.parks_url)) >= set(accepted),
        timeout=DELIVERY_TIMEOUT,
        what="every request in the back-end",
    )
    assert sorted(held_references(bus.parks_url)) == sorted(accepted), "each one once"
    engine = sa.create_engine(bus.env["CIVICBUS_DATABASE_URL"].split("?")[0])
    try:
        with engine.connect() as conn:
            stored = set(conn.execute(sa.text("SELECT id FROM requests")).scalars())
        assert stored == set(accepted), "nothing but the accepted requests is stored"
    finally:
        engine.dispose()
    run_cli(["audit", "verify"], env=bus.env, cwd=bus.workdir)
    # Nobody restarted anything: the same processes carried on.
    for name, process in bus.processes.items():
        assert process.popen.poll() is None, f"{name} exited\n{bus.diagnose()}"
        assert process.popen.pid == pids[name]


def scrape(bus: Bus) -> dict[str, float]:
    """The API's /metrics samples without labels, by name."""
    response = httpx.get(f"{bus.api_url}/metrics", timeout=30)
    assert response.status_code == 200, response.text
    return {
        sample.name: sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
        if not sample.labels
    }
