"""`civicbus status` against the real broker (a fresh vhost) and a real SQLite store: what it
sees of queues, consumers, the outbox, leases and dead letters, and the problems it names."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from typer.testing import CliRunner
from worker_support import (
    FAST,
    INSTANCE,
    MemoryBackend,
    channel_on,
    new_request,
    publish,
    running,
    wait_until,
)

from bus import deadletters
from bus import overview as overview_module
from bus.broker.connection import connect
from bus.broker.topology import (
    EVENTS_EXCHANGE,
    dead_queue,
    declare_topology,
    retry_queue,
    work_queue,
)
from bus.cli import app
from bus.config import InstanceConfig, RetryPolicy
from bus.overview import Overview, RemovedInstance, UnconfiguredRoute, take_overview
from bus.relay import LEASE
from bus.store import BrokerBlock, Store, StoreOverview
from bus.subscriptions import declare, queue_name, route_name
from bus.worker import command_consumer

pytestmark = [pytest.mark.rabbitmq, pytest.mark.timeout(60)]

INSTANCES = {INSTANCE: FAST}


def look(store: Store, url: str, instances: dict[str, InstanceConfig] = INSTANCES) -> Overview:
    return take_overview(store, instances, lambda: connect(url))


def test_a_consumed_queue_and_an_empty_outbox_are_no_problem(store: Store, topology: str) -> None:
    with running(command_consumer(topology, store, INSTANCE, FAST, MemoryBackend())):
        wait_until(lambda: look(store, topology).recipients[0].consumers == 1, what="a consumer")
        seen = look(store, topology)

    [roads] = seen.recipients
    assert (roads.name, roads.queue, roads.queued, roads.retrying) == (
        INSTANCE,
        work_queue(INSTANCE),
        0,
        0,
    )
    assert (roads.dead_in_queue, roads.dead_letters, roads.missing) == (0, 0, ())
    assert seen.broker_error is None and seen.problems == []


def test_commands_waiting_without_a_consumer_are_a_problem(store: Store, topology: str) -> None:
    for _ in range(2):
        publish(topology, new_request(store))

    seen = wait_until(lambda: (s := look(store, topology)).recipients[0].queued == 2 and s)

    assert seen.recipients[0].consumers == 0
    assert seen.problems == [
        f"{INSTANCE}: no consumer on {work_queue(INSTANCE)}, 2 waiting: "
        f"is `civicbus worker {INSTANCE}` running?"
    ]


def test_consumers_of_another_installation_on_the_same_vhost_are_a_problem(
    store: Store, topology: str, tmp_path: Path
) -> None:
    # A second civicbus installation (its own store) pointed at the same vhost: its worker
    # takes this installation's commands off the shared queue.
    other = Store.open(f"sqlite:///{tmp_path / 'other.db'}")
    ours = command_consumer(topology, store, INSTANCE, FAST, MemoryBackend())
    theirs = command_consumer(topology, other, INSTANCE, FAST, MemoryBackend())
    try:
        with running(ours), running(theirs):
            seen = wait_until(
                lambda: (s := look(store, topology)).recipients[0].consumers == 2 and s,
                what="both consumers",
            )
            seen_by_other = look(other, topology)
    finally:
        other.close()

    [problem] = seen.problems
    assert problem.startswith(
        f"{INSTANCE}: 2 consumer(s) on {work_queue(INSTANCE)}, but 1 worker(s) report to this "
        "store for it: the others are not this installation's workers"
    )
    assert "a vhost of its own (in CIVICBUS_AMQP_URL)" in problem
    assert seen_by_other.problems == [problem]  # each store sees one worker it does not know


def test_the_outbox_without_an_active_relay_or_lagging_behind_is_a_problem(
    store: Store, topology: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    envelope = new_request(store)
    with store.transaction() as tx:
        tx.add_outbox(envelope, exchange=EVENTS_EXCHANGE, routing_key="request.created.POTHOLE")
    with running(command_consumer(topology, store, INSTANCE, FAST, MemoryBackend())):
        wait_until(lambda: look(store, topology).recipients[0].consumers == 1, what="a consumer")
        no_relay = look(store, topology)
        assert store.try_lease(LEASE, "host-a:1", ttl_seconds=30)
        keeping_up = look(store, topology)
        assert keeping_up.problems == []  # judged with the usual lag, before it is lowered
        monkeypatch.setattr(overview_module, "OUTBOX_LAG", timedelta(0))
        lagging = look(store, topology)

    assert no_relay.store.outbox_waiting == 1 and no_relay.store.oldest_waiting is not None
    assert no_relay.problems == [
        "relay: 1 event(s) wait in the outbox and no relay is active: is `civicbus relay` running?"
    ]
    assert keeping_up.store.leases[LEASE].holder == "host-a:1" and keeping_up.problems == []
    [problem] = lagging.problems
    assert (
        problem.startswith("relay: the oldest of 1 waiting event(s) is") and "host-a:1" in problem
    )


def test_dead_letters_and_missing_queues_are_named_with_what_to_do(
    store: Store, topology: str
) -> None:
    with store.transaction() as tx:
        tx.record_dead_letter(
            instance=INSTANCE,
            message_id="m-1",
            request_id="req-1",
            reason="PermanentError: no such lane",
            envelope=None,
            attempts=1,
            at=None,
        )
    instances = {**INSTANCES, "never-started": FAST}

    seen = look(store, topology, instances)

    roads, never = seen.recipients
    assert roads.dead_letters == 1
    assert never.missing == (
        work_queue("never-started"),
        dead_queue("never-started"),
        retry_queue("never-started", 0.2),
        retry_queue("never-started", 0.4),
    )
    assert f"{INSTANCE}: 1 dead letter(s) wait for a decision: `civicbus dead list {INSTANCE}`" in (
        seen.problems
    )
    assert any(
        p.startswith(f"never-started: the broker has no queue {work_queue('never-started')}")
        for p in seen.problems
    )


def waiting_dead_letters(store: Store, route: str, count: int) -> None:
    with store.transaction() as tx:
        for n in range(count):
            tx.record_dead_letter(
                instance=route, message_id=f"{route}-{n}", reason="PermanentError: x", envelope=None
            )


def test_dead_letters_under_a_name_no_recipient_answers_to_are_a_problem_with_what_to_do(
    store: Store, topology: str
) -> None:
    """An instance renamed or removed from the config, a subscription removed before its
    removal dropped them: their dead letters still wait, and /metrics counts them."""
    removed = store.add_subscription("http://127.0.0.1:9/hook", ["request.*"])
    store.remove_subscription(removed.id)
    old_sub = route_name(removed.id)
    waiting_dead_letters(store, "old-roads", 2)
    waiting_dead_letters(store, old_sub, 1)
    waiting_dead_letters(store, INSTANCE, 1)
    waiting_dead_letters(store, "given-up", 1)
    assert deadletters.drop_all(store, "given-up")

    seen = look(store, topology)

    assert [c.name for c in seen.recipients] == [INSTANCE]
    assert seen.recipients[0].dead_letters == 1
    assert seen.unconfigured == [
        UnconfiguredRoute("old-roads", 2, removed_subscription=False),
        UnconfiguredRoute(old_sub, 1, removed_subscription=True),
    ]
    assert [p for p in seen.problems if "dead letter(s)" in p] == [
        f"{INSTANCE}: 1 dead letter(s) wait for a decision: `civicbus dead list {INSTANCE}`",
        "old-roads: 2 dead letter(s) wait for a decision, and old-roads is no adapter instance "
        "in the config (renamed or removed?): `civicbus dead list old-roads` shows them, "
        "`civicbus dead drop old-roads --all` gives them up; to replay them, put the instance "
        "back in the config",
        f"{old_sub}: 1 dead letter(s) wait for a decision, and {old_sub} is a removed webhook "
        f"subscription: no replay can reach them; `civicbus dead list {old_sub}` shows them, "
        f"`civicbus dead drop {old_sub} --all` gives them up",
    ]


def test_the_command_names_dead_letters_under_a_name_not_in_the_config_until_dropped(
    store: Store, topology: str, use_config: Callable[[str], dict[str, str]]
) -> None:
    use_config(
        "jurisdictions: [{id: springfield.example, name: Springfield}]\n"
        f"routing: {{default: {INSTANCE}}}\n"
        f"instances: {{{INSTANCE}: {{kind: memory, retry: {{tiers: [0.2, 0.4]}}}}}}\n"
    )
    waiting_dead_letters(store, "old-roads", 2)
    cli = CliRunner()

    with running(command_consumer(topology, store, INSTANCE, FAST, MemoryBackend())):
        wait_until(lambda: look(store, topology).recipients[0].consumers == 1, what="a consumer")
        text = cli.invoke(app, ["status"])
        as_json = cli.invoke(app, ["status", "--json"])
        dropped = cli.invoke(app, ["dead", "drop", "old-roads", "--all"])
        text_after = cli.invoke(app, ["status"])
        json_after = cli.invoke(app, ["status", "--json"])

    assert text.exit_code == 1, text.output
    [line] = [line for line in text.output.splitlines() if "old-roads" in line]
    assert line.startswith(
        "  - old-roads: 2 dead letter(s) wait for a decision, and old-roads is no adapter "
        "instance in the config"
    )
    assert "`civicbus dead drop old-roads --all`" in line
    document = json.loads(as_json.output)
    assert as_json.exit_code == 1
    assert document["unconfigured_routes"] == [
        {"name": "old-roads", "dead_letters": 2, "removed_subscription": False}
    ]
    assert [p for p in document["problems"] if p.startswith("old-roads: 2 dead letter(s)")]
    assert [r["name"] for r in document["recipients"]] == [INSTANCE]
    assert dropped.exit_code == 0, dropped.output
    assert text_after.exit_code == 0, text_after.output
    assert "problems: none" in text_after.output and "old-roads" not in text_after.output
    assert json.loads(json_after.output)["unconfigured_routes"] == []


def routed_then_removed(store: Store, topology: str) -> None:
    """INSTANCE as the relay leaves it: its queues declared once (the topology fixture did it
    here) and remembered, two commands routed there; the tests then look with a config
    without it."""
    with store.transaction() as tx:
        tx.remember_declared_instances([INSTANCE])
    for _ in range(2):
        publish(topology, new_request(store))


def test_messages_left_in_the_queues_of_an_instance_taken_out_of_the_config_are_a_problem(
    store: Store, topology: str, use_config: Callable[[str], dict[str, str]]
) -> None:
    routed_then_removed(store, topology)
    with channel_on(topology) as channel:
        channel.basic_publish("", dead_queue(INSTANCE), b"given up by a worker")
    use_config(
        "jurisdictions: [{id: springfield.example, name: Springfield}]\n"
        "routing: {default: desk}\n"
        "instances: {desk: {kind: memory}}\n"
    )

    while_configured = look(store, topology)
    seen = wait_until(lambda: (s := look(store, topology, {})).removed and s, what="removed")
    as_json = json.loads(CliRunner().invoke(app, ["status", "--json"]).output)

    assert while_configured.removed == []
    assert seen.removed == [
        RemovedInstance(INSTANCE, work_queue(INSTANCE), 2, 0, dead_queue(INSTANCE), 1)
    ]
    waiting, dead = seen.problems
    assert waiting.startswith(
        f"{INSTANCE}: 2 message(s) wait in {work_queue(INSTANCE)}, and {INSTANCE} is no adapter "
        "instance in the config (renamed or removed?): no worker takes them."
    )
    assert f"run `civicbus worker {INSTANCE}` until its queue is empty" in waiting
    assert dead.startswith(f"{INSTANCE}: 1 message(s) in {dead_queue(INSTANCE)}, and ")
    assert "`civicbus dead keep` moves them into the store" in dead
    assert as_json["removed_instances"] == [
        {
            "name": INSTANCE,
            "queue": work_queue(INSTANCE),
            "queued": 2,
            "consumers": 0,
            "dead_queue": dead_queue(INSTANCE),
            "dead_in_queue": 1,
        }
    ]


def test_a_worker_still_draining_an_instance_taken_out_of_the_config_is_a_note(
    store: Store, topology: str
) -> None:
    routed_then_removed(store, topology)
    # A worker started with the old config: it holds one message, one waits.
    with channel_on(topology) as channel:
        held: list[int] = []
        channel.basic_qos(prefetch_count=1)
        channel.basic_consume(
            work_queue(INSTANCE), lambda _ch, method, _p, _b: held.append(method.delivery_tag)
        )
        wait_until(lambda: channel.connection.process_data_events(0.1) or held, what="held")
        seen = wait_until(
            lambda: (s := look(store, topology, {})).removed and s.removed[0].queued == 1 and s,
            what="one waiting",
        )

    assert seen.problems == []
    assert seen.notes == [
        f"{INSTANCE}: is no adapter instance in the config, yet 1 worker(s) still consume "
        f"{work_queue(INSTANCE)} (1 waiting); stop them once it is empty"
    ]


def test_an_unreachable_broker_still_shows_the_store(store: Store) -> None:
    envelope = new_request(store)
    with store.transaction() as tx:
        tx.add_outbox(envelope, exchange=EVENTS_EXCHANGE, routing_key="request.created.POTHOLE")

    with socket.socket() as sock:  # a loopback port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]

    seen = look(store, f"amqp://guest:guest@127.0.0.1:{port}/%2F")

    assert seen.store.outbox_waiting == 1
    assert seen.recipients[0].queued is None
    assert seen.broker_error is not None and "127.0.0.1" in seen.broker_error
    assert seen.problems[0].startswith("broker: connecting to RabbitMQ")


def test_the_command_prints_the_table_and_exits_1_on_problems(
    store: Store, topology: str, use_config: Callable[[str], dict[str, str]]
) -> None:
    use_config(
        "jurisdictions: [{id: springfield.example, name: Springfield}]\n"
        f"routing: {{default: {INSTANCE}}}\n"
        f"instances: {{{INSTANCE}: {{kind: memory, retry: {{tiers: [0.2, 0.4]}}}}}}\n"
    )
    publish(topology, new_request(store))

    text = CliRunner().invoke(app, ["status"])
    as_json = CliRunner().invoke(app, ["status", "--json"])

    assert text.exit_code == 1, text.output
    table = text.output.splitlines()
    header = next(i for i, line in enumerate(table) if line.startswith("RECIPIENT"))
    assert table[header + 1].split() == [INSTANCE, "1", "-", "0", "0", "0", "0"]
    assert f"  - {INSTANCE}: no consumer on {work_queue(INSTANCE)}, 1 waiting" in text.output
    document = json.loads(as_json.output)
    assert as_json.exit_code == 1
    assert document["recipients"][0]["queued"] == 1 and document["problems"]


def test_the_command_shows_the_broker_while_the_store_is_down_and_exits_1(
    topology: str, use_config: Callable[[str], dict[str, str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    use_config(
        "jurisdictions: [{id: springfield.example, name: Springfield}]\n"
        f"routing: {{default: {INSTANCE}}}\n"
        f"instances: {{{INSTANCE}: {{kind: memory, retry: {{tiers: [0.2, 0.4]}}}}}}\n"
    )
    with channel_on(topology) as ch:
        ch.basic_publish("", work_queue(INSTANCE), b"{}")
    with socket.socket() as sock:  # a loopback port no database listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("CIVICBUS_DATABASE_URL", f"postgresql+psycopg://civicbus@127.0.0.1:{port}/x")

    text = CliRunner().invoke(app, ["status"])
    as_json = CliRunner().invoke(app, ["status", "--json"])

    assert text.exit_code == 1, text.output
    lines = text.output.splitlines()
    assert lines[1].endswith(", UNAVAILABLE") and lines[2] == "outbox   unknown"
    header = next(i for i, line in enumerate(lines) if line.startswith("RECIPIENT"))
    assert lines[header + 1].split() == [INSTANCE, "1", "-", "0", "0", "0", "-"]
    problems = [line for line in lines if line.startswith("  - ")]
    assert problems[0].startswith(
        f"  - store: unavailable: postgresql+psycopg://civicbus@127.0.0.1:{port}/x"
    )
    assert problems[1].startswith(
        f"  - {INSTANCE}: no consumer on {work_queue(INSTANCE)}, 1 waiting"
    )
    document = json.loads(as_json.output)
    assert as_json.exit_code == 1
    assert document["store_error"] and document["outbox"]["waiting"] is None
    assert document["recipients"][0]["queued"] == 1
    assert document["recipients"][0]["dead_letters"] is None


def test_messages_waiting_in_the_retry_tiers_are_a_problem(store: Store, topology: str) -> None:
    patient = FAST.model_copy(update={"retry": RetryPolicy(tiers=[60], max_attempts=3)})
    with channel_on(topology) as ch:
        declare_topology(ch, {"patient": patient})
        # Where a worker puts a command whose back-end failed (its next try in 60 s).
        ch.basic_publish("", retry_queue("patient", 60), b"{}")
    instances = {"patient": patient}

    seen = wait_until(lambda: (s := look(store, topology, instances)).recipients[0].retrying and s)

    assert seen.recipients[0].retrying == 1
    assert (
        "patient: 1 message(s) wait in the retry tiers: its back-end has been failing; "
        "`civicbus adapters check patient`, `civicbus requests stuck` (the worker's log has the "
        "errors); once it answers, `civicbus adapters retry-now patient`"
    ) in seen.problems


def test_a_subscription_with_no_consumer_names_the_secret_its_worker_needs(
    store: Store, topology: str
) -> None:
    subscription = store.add_subscription("http://127.0.0.1:9/hook", ["request.*"], "HOOK_SECRET")
    with channel_on(topology) as ch:
        declare(ch, subscription)

    seen = look(store, topology)

    assert (
        f"{route_name(subscription.id)}: no consumer on {queue_name(subscription.id)}: is "
        "`civicbus worker --subscriptions` running with $HOOK_SECRET set?"
    ) in seen.problems


def test_a_webhook_subscription_is_a_recipient_with_its_own_queue(
    store: Store, topology: str
) -> None:
    subscription = store.add_subscription("http://127.0.0.1:9/hook", ["request.*"])

    seen = look(store, topology)

    [_, sub] = seen.recipients
    assert (sub.name, sub.queue) == (route_name(subscription.id), queue_name(subscription.id))
    assert sub.missing == (queue_name(subscription.id),) and sub.retrying is None
    assert any(
        p.startswith(f"{sub.name}: the broker has no queue {sub.queue}")
        and "`civicbus worker --subscriptions`" in p
        for p in seen.problems
    )


def test_a_lease_that_lapsed_without_being_released_is_a_problem(
    store: Store, topology: str
) -> None:
    assert store.try_lease("poller:roads", "host-b:2", ttl_seconds=0.05)
    assert store.try_lease("poller:removed-from-config", "host-b:2", ttl_seconds=0.05)
    assert store.try_lease(LEASE, "host-a:1", ttl_seconds=0.05)
    time.sleep(0.1)

    lapsed = [p for p in look(store, topology).problems if "lapsed" in p]

    assert len(lapsed) == 2
    assert lapsed[0].startswith("poller:roads: the lease of host-b:2 lapsed at")
    assert "`civicbus poller`" in lapsed[0]
    assert lapsed[1].startswith(f"{LEASE}: the lease of host-a:1 lapsed at")
    assert "`civicbus relay`" in lapsed[1]


def test_the_command_says_a_lapsed_lease_expired_at_its_time(
    store: Store, topology: str, use_config: Callable[[str], dict[str, str]]
) -> None:
    use_config(
        "jurisdictions: [{id: springfield.example, name: Springfield}]\n"
        f"routing: {{default: {INSTANCE}}}\n"
        f"instances: {{{INSTANCE}: {{kind: memory, retry: {{tiers: [0.2, 0.4]}}}}}}\n"
    )
    assert store.try_lease(LEASE, "host-a:1", ttl_seconds=0.05)
    assert store.try_lease("poller:roads", "host-b:2", ttl_seconds=60)
    time.sleep(0.1)

    output = CliRunner().invoke(app, ["status"]).output

    leases = [line for line in output.splitlines() if line.startswith("lease")]
    assert leases[0].startswith("lease    poller:roads: host-b:2, active until 20")
    assert leases[1].startswith(f"lease    {LEASE}: host-a:1, expired at 20")


def test_a_poller_whose_rounds_keep_failing_is_a_problem(
    store: Store, topology: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with running(command_consumer(topology, store, INSTANCE, FAST, MemoryBackend())):
        wait_until(lambda: look(store, topology).recipients[0].consumers == 1, what="a consumer")
        with store.transaction() as tx:
            tx.poll_round_failed(INSTANCE, "ConnectError: [Errno 111] Connection refused")
        polled = {INSTANCE: FAST.model_copy(update={"poll_interval": 0.01})}
        time.sleep(0.05)  # more than three intervals
        assert look(store, topology, polled).problems == []  # judged before it is lowered
        monkeypatch.setattr(overview_module, "POLLER_FAILING", timedelta(0))
        failing = look(store, topology, polled)
        with store.transaction() as tx:
            tx.poll_round_completed(INSTANCE)
        recovered = look(store, topology, polled)

    [problem] = failing.problems
    assert problem.startswith(f"{INSTANCE}: its poller's rounds have failed since 20")
    assert "(last completed: never): ConnectError: [Errno 111] Connection refused" in problem
    assert f"`civicbus adapters check {INSTANCE}`" in problem
    assert recovered.problems == []


#: More audit entries than `civicbus status` used to read back from the end of the log.
MANY = 12_000


def webhook_outcome(
    store: Store, subscription_id: int, action: str, at: datetime | None = None
) -> datetime:
    """An entry as the webhook worker audits a delivery (a failed round announces its next
    try in 240 s); returns its time."""
    at = at or datetime.now(UTC)
    failed = action == "attempt"
    details = {"error": "ConnectError: connection refused", "next_delay_seconds": 240}
    with store.transaction() as tx:
        tx.audit(
            actor=f"worker:{route_name(subscription_id)}",
            action=action,
            request_id="req-1",
            outcome="error" if failed else "ok",
            details={"subscription": route_name(subscription_id), **(details if failed else {})},
            at=at,
        )
    return at


def other_entries(store: Store, count: int = MANY) -> None:
    """A busy city's other audit entries, in one transaction (fast)."""
    with store.transaction() as tx:
        for i in range(count):
            tx.audit(actor="relay", action="relayed", message_id=f"m-{i}")


def test_a_failing_subscriber_is_a_problem_however_many_audit_entries_came_after(
    store: Store, topology: str
) -> None:
    failing = store.add_subscription("http://127.0.0.1:9/down", ["request.*"])
    recovered = store.add_subscription("http://127.0.0.1:9/back", ["request.*"])
    webhook_outcome(store, failing.id, "delivered")
    failing_since = webhook_outcome(store, failing.id, "attempt")
    webhook_outcome(store, recovered.id, "attempt")
    webhook_outcome(store, recovered.id, "delivered")
    other_entries(store)

    seen = look(store, topology)

    _, down, back = seen.recipients
    assert down.failing_since == failing_since and down.failing_since_exact
    assert down.last_error == "ConnectError: connection refused"
    assert back.failing_since is None
    assert [p for p in seen.problems if "failing" in p] == [
        f"{route_name(failing.id)}: its subscriber has been failing since "
        f"{failing_since.isoformat(timespec='seconds')}: ConnectError: connection refused "
        "(the worker retries in place, holding the queue); check the receiver (`civicbus "
        "subscriptions list` has its URL): the events flow again once it answers"
    ]


def test_a_subscriber_failing_since_long_before_its_latest_failure_says_since_when(
    store: Store, topology: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    subscription = store.add_subscription("http://127.0.0.1:9/down", ["request.*"])
    webhook_outcome(store, subscription.id, "delivered")
    first_failure = datetime.now(UTC) - timedelta(hours=3)
    webhook_outcome(store, subscription.id, "attempt", at=first_failure)
    other_entries(store)
    webhook_outcome(store, subscription.id, "attempt")

    since = look(store, topology).recipients[1]
    assert since.failing_since == first_failure and since.failing_since_exact
    monkeypatch.setattr(overview_module, "RUN_LOOKBACK", MANY // 2)
    looked_less_far = look(store, topology)

    [problem] = [p for p in looked_less_far.problems if "failing" in p]
    assert " or earlier: ConnectError: connection refused" in problem


def test_the_command_in_json_gives_a_failing_subscribers_times(
    store: Store, topology: str, use_config: Callable[[str], dict[str, str]]
) -> None:
    use_config(
        "jurisdictions: [{id: springfield.example, name: Springfield}]\n"
        f"routing: {{default: {INSTANCE}}}\n"
        f"instances: {{{INSTANCE}: {{kind: memory}}}}\n"
    )
    subscription = store.add_subscription("http://127.0.0.1:9/down", ["request.*"])
    failing_since = webhook_outcome(store, subscription.id, "attempt")

    result = CliRunner().invoke(app, ["status", "--json"])

    assert result.exit_code == 1, result.output
    [sub] = [r for r in json.loads(result.output)["recipients"] if r["name"].startswith("sub.")]
    assert sub["failing_since"] == failing_since.isoformat()


def test_a_broker_blocking_the_relay_is_a_problem_while_the_relay_says_so(
    store: Store,
    topology: str,
    use_config: Callable[[str], dict[str, str]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    use_config(
        "jurisdictions: [{id: springfield.example, name: Springfield}]\n"
        f"routing: {{default: {INSTANCE}}}\n"
        f"instances: {{{INSTANCE}: {{kind: memory}}}}\n"
    )
    envelope = new_request(store)
    with store.transaction() as tx:
        tx.add_outbox(envelope, exchange=EVENTS_EXCHANGE, routing_key="request.created.POTHOLE")
    assert store.try_lease(LEASE, "host-a:1", ttl_seconds=30)
    since = datetime.now(UTC) - timedelta(minutes=5)
    store.note_broker_blocked(LEASE, "host-a:1", since, "low on disk")
    monkeypatch.setattr(overview_module, "OUTBOX_LAG", timedelta(0))

    with running(command_consumer(topology, store, INSTANCE, FAST, MemoryBackend())):
        wait_until(lambda: look(store, topology).recipients[0].consumers == 1, what="a consumer")
        blocked = look(store, topology)
        assert blocked.problems  # judged now, before the threshold is lowered below
        text = CliRunner().invoke(app, ["status"])
        as_json = CliRunner().invoke(app, ["status", "--json"])
        monkeypatch.setattr("bus.liveness.BLOCK_REPORT_STALE", timedelta(0))
        stale = look(store, topology)

    assert blocked.broker_blocked is not None and blocked.broker_blocked.reason == "low on disk"
    # The lagging outbox is not a problem of its own: the block says why it lags.
    assert blocked.problems == [
        f"broker: RabbitMQ blocks publishing since {since.isoformat(timespec='seconds')} "
        "(low on disk): nothing is published until the alarm clears (1 event(s) wait in the "
        "outbox; workers' retries and dead letters wait too); free disk space on the broker "
        "host; `rabbitmq-diagnostics alarms` names the alarm; publishing goes on by itself once "
        "it clears"
    ]
    assert text.exit_code == 1, text.output
    assert "BLOCKS PUBLISHING since" in text.output and "(low on disk)" in text.output
    document = json.loads(as_json.output)
    assert document["broker_blocked"]["reason"] == "low on disk"
    assert document["broker_blocked"]["blocked_since"] == since.isoformat()
    assert document["problems"][0].startswith("broker: RabbitMQ blocks publishing")
    # A report the relay stopped renewing (it died) is not taken as the broker's state.
    assert stale.broker_blocked is None
    [problem] = stale.problems
    assert problem.startswith("relay: the oldest of 1 waiting event(s)")


def test_the_advice_for_a_blocked_broker_follows_its_reason() -> None:
    at = datetime.now(UTC)
    for reason, todo in [
        ("low on memory", "free memory on the broker host"),
        ("low on disk", "free disk space on the broker host"),
        ("", "free disk space or memory on the broker host"),
    ]:
        block = BrokerBlock("relay", "host-a:1", at, reason, at)
        seen = StoreOverview(0, None, {}, {}, {}, [], [], {"relay": block})
        [problem] = Overview(at, seen, None, []).problems
        assert f"; {todo}" in problem and "0 event(s) wait" in problem
