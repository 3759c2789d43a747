"""`civicbus requests stuck`: an operator finds every request no back-end holds yet, and is told
where it is. The requests get there through the real relay, worker and dead letter commands
(real RabbitMQ, real SQLite store), so the audit entries read are the ones they write."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from typer.testing import CliRunner
from worker_support import (
    INSTANCE,
    MemoryBackend,
    new_request,
    publish,
    queue_depth,
    running,
    wait_until,
)

from bus import deadletters
from bus.broker.topology import EVENTS_EXCHANGE, work_queue
from bus.cli import app
from bus.config import InstanceConfig, RetryPolicy, load_config
from bus.relay import Relay
from bus.store import AuditEntry, DeadLetter, DeadLetterState, Store, Undelivered
from bus.whereabouts import whereabouts
from bus.worker import command_consumer
from schemas.events import Envelope
from schemas.model import Location, ServiceRequest, Status, StatusUpdate

pytestmark = [pytest.mark.rabbitmq, pytest.mark.timeout(90)]

REPO = Path(__file__).resolve().parents[2]

#: A failed first round waits a minute in the retry tier: long enough to be seen there.
SLOW_RETRY = InstanceConfig(
    kind="memory",
    retry=RetryPolicy(immediate_attempts=2, tiers=[60], max_attempts=3),
    prefetch=8,
)


#: The city `requests stuck` reads: the sandbox's sap-roads and the tests' instance, both
#: configured (an instance missing from the config gets other advice).
CONFIG = f"""
jurisdictions: [{{id: springfield.example, name: Springfield}}]
routing: {{default: {INSTANCE}}}
instances:
  sap-roads: {{kind: memory}}
  {INSTANCE}: {{kind: memory}}
"""


def accepted(store: Store, description: str = "Deep pothole by the school") -> Envelope:
    """A request as the API leaves it: stored, its event in the outbox, audited."""
    envelope = new_request(store, description=description)
    with store.transaction() as tx:
        tx.add_outbox(envelope, exchange=EVENTS_EXCHANGE, routing_key="request.created.POTHOLE")
        tx.audit(actor="api:test", action="accepted", request_id=envelope.subject)
    return envelope


def stuck(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["requests", "stuck", *args])
    return result.exit_code, result.output


def test_each_undelivered_request_is_found_where_it_is_stuck(
    store: Store, topology: str, use_config: Callable[[str], dict[str, str]]
) -> None:
    use_config(CONFIG)
    # Relayed and routed to sap-roads, where no worker runs.
    queued = accepted(store)
    config = load_config(REPO / "deploy/sandbox/civicbus.yaml")
    assert Relay(store, config, topology).relay_pending()
    # Accepted after the relay's last round: still in the outbox.
    in_outbox = accepted(store)
    # Commands the test instance's worker handles: the first fails its first round (two quick
    # tries) and waits in the retry tier; three are rejected; one is delivered.
    retrying = new_request(store)
    rejected = [new_request(store, description=f"REJECT {n}") for n in range(3)]
    delivered = new_request(store)
    closed = new_request(store)
    with store.transaction() as tx:
        tx.apply_status_update(
            StatusUpdate(
                request_id=closed.subject,
                status=Status.CLOSED,
                at=datetime.now(UTC),
                update_id="desk-1",
                source="operator",
            )
        )
    for envelope in [retrying, *rejected, delivered]:
        publish(topology, envelope)
    with running(
        command_consumer(topology, store, INSTANCE, SLOW_RETRY, MemoryBackend(transient_failures=2))
    ):
        wait_until(lambda: len(store.dead_letters(INSTANCE)) == 3, what="three dead letters")
        wait_until(lambda: store.get_request(delivered.subject).backend_refs, what="delivery")  # type: ignore[union-attr]
    letters = {letter.request_id: letter.id for letter in store.dead_letters(INSTANCE)}
    dead, dropped, replayed = (letters[envelope.subject] for envelope in rejected)
    deadletters.drop(store, [dropped])
    deadletters.replay(store, INSTANCE, [replayed])

    code, output = stuck("--older-than", "0s", "--json")

    assert code == 1, output
    found = {item["request_id"]: item for item in map(json.loads, output.splitlines())}
    assert delivered.subject not in found and closed.subject not in found
    assert list(found) == [  # oldest first
        queued.subject,
        in_outbox.subject,
        retrying.subject,
        *(envelope.subject for envelope in rejected),
    ]
    stages = {rid: (item["stage"], item["instance"]) for rid, item in found.items()}
    assert stages == {
        queued.subject: ("queued", "sap-roads"),
        in_outbox.subject: ("outbox", None),
        retrying.subject: ("retrying", INSTANCE),
        rejected[0].subject: ("dead-lettered", INSTANCE),
        rejected[1].subject: ("dropped", INSTANCE),
        rejected[2].subject: ("queued", INSTANCE),
    }
    assert "rule roads-to-sap" in found[queued.subject]["detail"]
    assert "civicbus relay" in found[in_outbox.subject]["hint"]
    assert "busy" in found[retrying.subject]["detail"]
    # When, as a clock time: the failed attempt's time plus the retry tier's 60 s.
    failed_at = datetime.fromisoformat(found[retrying.subject]["since"])
    due = (failed_at + timedelta(seconds=60)).astimezone(UTC)
    assert f"next attempt due {due:%Y-%m-%d %H:%M:%S} UTC" in found[retrying.subject]["detail"]
    assert "LANE" in found[rejected[0].subject]["detail"]
    assert f"civicbus dead replay {INSTANCE} {dead}" in found[rejected[0].subject]["hint"]
    assert "replayed" in found[rejected[2].subject]["detail"]

    code, output = stuck("--older-than", "0s")
    assert code == 1
    assert output.splitlines()[0].split()[:3] == ["REQUEST", "SERVICE", "AGE"]
    assert f"try: `civicbus dead show {dead}`" in output


def test_requests_an_operator_dropped_are_listed_but_are_no_fault_for_a_monitoring_check(
    store: Store, sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CIVICBUS_DATABASE_URL", sqlite_url)
    dropped = new_request(store)
    with store.transaction() as tx:
        tx.audit(actor="relay", action="routed", request_id=dropped.subject,
                 details={"instance": INSTANCE, "rule": "default"})  # fmt: skip
        tx.audit(actor=f"worker:{INSTANCE}", action="dead_lettered", request_id=dropped.subject,
                 outcome="error", details={"reason": "PermanentError: no LANE"})  # fmt: skip
        tx.audit(actor="cli:dead-drop", action="dropped", request_id=dropped.subject,
                 details={"dead_letter": 7, "instance": INSTANCE})  # fmt: skip

    code, output = stuck("--older-than", "0s", "--json")

    # Listed, so that it is not forgotten; exit 0: a decision, not a fault, that a check
    # alerting on the exit code would report for ever.
    assert code == 0, output
    [item] = map(json.loads, output.splitlines())
    assert (item["request_id"], item["stage"]) == (dropped.subject, "dropped")
    assert "close it with a status update (POST /servicerequestupdates" in item["hint"]

    # Another request stuck beside it: a fault again.
    accepted(store)
    assert stuck("--older-than", "0s")[0] == 1


def test_nothing_old_enough_is_said_plainly(
    store: Store, sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CIVICBUS_DATABASE_URL", sqlite_url)
    accepted(store)

    code, output = stuck("--older-than", "1h")

    assert code == 0, output
    assert "no open request accepted over 1h ago lacks a back-end" in output


@pytest.mark.parametrize("duration", ["10", "ten minutes", "5w", "-3m"])
def test_a_bad_duration_is_refused_with_the_expected_form(
    duration: str, sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CIVICBUS_DATABASE_URL", sqlite_url)

    code, output = stuck("--older-than", duration)

    assert code == 2
    assert "is not a duration" in output and "10m" in output


@pytest.mark.parametrize("duration", ["99999999d", "36501d", "9" * 30 + "s", "9" * 5000 + "m"])
def test_a_duration_further_back_than_a_century_is_refused_not_a_traceback(
    duration: str, sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CIVICBUS_DATABASE_URL", sqlite_url)

    code, output = stuck("--older-than", duration)

    assert code == 2
    words = " ".join(output.replace("│", " ").split())  # the message may wrap in its box
    assert "is too long ago: at most 36500d" in words


def test_a_request_whose_instance_has_no_worker_says_to_start_it_and_its_retry_is_overdue(
    store: Store, topology: str, use_config: Callable[[str], dict[str, str]]
) -> None:
    use_config(CONFIG)
    brief = InstanceConfig(
        kind="memory", retry=RetryPolicy(immediate_attempts=2, tiers=[1], max_attempts=3)
    )
    retrying = new_request(store)
    publish(topology, retrying)
    with running(
        command_consumer(topology, store, INSTANCE, brief, MemoryBackend(transient_failures=2))
    ):
        wait_until(
            lambda: any(e.action == "retry_scheduled" for e in store.audit_trail(retrying.subject)),
            what="a retry scheduled",
        )
    # The worker stopped; its retry falls due with nobody to take it.
    wait_until(lambda: queue_depth(topology, work_queue(INSTANCE)) == 1, what="retry due")

    code, output = stuck("--older-than", "0s", "--json")

    assert code == 1, output
    [item] = map(json.loads, output.splitlines())
    assert item["stage"] == "retrying"
    assert "next attempt overdue since" in item["detail"]
    assert item["hint"] == (
        f"no worker is consuming {work_queue(INSTANCE)}: start `civicbus worker {INSTANCE}`"
    )


def test_a_webhook_dead_letter_dropped_says_nothing_of_the_way_to_the_back_end() -> None:
    # `subscriptions remove` drops the subscription's dead letters: the request's command is
    # where it was, whatever happened to its events' deliveries.
    at = datetime(2026, 12, 4, 3, 0, tzinfo=UTC)

    def entry(action: str, actor: str, **details: object) -> AuditEntry:
        return AuditEntry(0, at, actor, action, "req-1", "m-1", "ok", dict(details), "", "")

    trail = [
        entry("routed", "relay", instance=INSTANCE, rule="default"),
        entry("dead_lettered", "worker:sub.3", reason="HTTPStatusError: 410 Gone"),
        entry("dropped", "cli:subscriptions", dead_letter=7, instance="sub.3"),
        entry("replayed", "cli:dead-replay", dead_letter=8, instance="sub.4"),
    ]
    item = Undelivered("req-1", "springfield.example", "POTHOLE", at, trail, [])

    where = whereabouts(item)

    assert (where.stage, where.instance) == ("queued", INSTANCE)
    # Its worker may well be running, with the command in hand behind earlier ones.
    assert "held by a worker (its `prefetch`)" in where.hint


def test_an_instance_no_longer_in_the_config_is_named_instead_of_a_replay_or_a_worker() -> None:
    # `dead replay` refuses an instance missing from the config, and no worker of it will start.
    at = datetime(2026, 12, 5, 3, 0, tzinfo=UTC)

    def entry(action: str, actor: str, **details: object) -> AuditEntry:
        return AuditEntry(0, at, actor, action, "req-1", "m-1", "ok", dict(details), "", "")

    routed = entry("routed", "relay", instance="old-roads", rule="roads")
    dead = entry("dead_lettered", "worker:old-roads", reason="rejected", dead_letter=5)
    letter = DeadLetter(
        5, "old-roads", "m-1", "req-1", "rejected", 1, at, at, None, DeadLetterState.DEAD
    )
    queued = Undelivered("req-1", "springfield.example", "POTHOLE", at, [routed], [])
    dead_lettered = Undelivered(
        "req-1", "springfield.example", "POTHOLE", at, [routed, dead], [letter]
    )

    waiting = whereabouts(queued, configured={"sap-roads"}, unconsumed={"old-roads"})
    given_up = whereabouts(dead_lettered, configured={"sap-roads"})
    replayable = whereabouts(dead_lettered, configured={"old-roads"})

    assert waiting.stage == "queued"
    assert "old-roads is no adapter instance in the config" in waiting.hint
    assert "start `civicbus worker old-roads`" not in waiting.hint
    assert given_up.stage == "dead-lettered"
    assert "`civicbus dead drop old-roads 5`" in given_up.hint
    assert "dead replay" not in given_up.hint
    assert "`civicbus dead replay old-roads 5`" in replayable.hint


def show(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["requests", "show", *args])
    return result.exit_code, result.output


def test_requests_show_gives_the_back_end_of_a_delivered_request_and_the_place_of_a_stuck_one(
    store: Store, topology: str, use_config: Callable[[str], dict[str, str]]
) -> None:
    use_config(CONFIG)
    delivered = new_request(store)
    rejected = new_request(store, description="REJECT")
    for envelope in (delivered, rejected):
        publish(topology, envelope)
    with running(command_consumer(topology, store, INSTANCE, SLOW_RETRY, MemoryBackend())):
        wait_until(lambda: store.dead_letters(INSTANCE), what="a dead letter")
        wait_until(lambda: store.get_request(delivered.subject).backend_refs, what="delivery")  # type: ignore[union-attr]
    [letter] = store.dead_letters(INSTANCE)
    [ref] = store.get_request(delivered.subject).backend_refs  # type: ignore[union-attr]

    code, text = show(delivered.subject)
    json_code, as_json = show(delivered.subject, "--json")
    dead_code, dead_text = show(rejected.subject)
    document = json.loads(as_json)
    dead_document = json.loads(show(rejected.subject, "--json")[1])
    unknown_code, unknown = show("01NOSUCHREQUEST")

    assert (code, json_code, dead_code) == (0, 0, 0), text + as_json + dead_text
    assert f"back-end  {INSTANCE}: {ref.reference}" in text
    assert "where" not in text  # a back-end holds it: nothing to look for
    assert f"`civicbus audit trail {delivered.subject}`" in text
    assert document["backend_refs"][0]["reference"] == ref.reference
    assert document["where"] is None and document["audit_entries"] > 0
    assert document["service_code"] == "POTHOLE" and document["status"] == "open"
    assert f"where     dead-lettered at {INSTANCE}" in dead_text
    assert f"try: `civicbus dead show {letter.id}`" in dead_text
    assert f"dead      #{letter.id} {INSTANCE} dead, 1 attempt(s)" in dead_text
    assert dead_document["where"]["stage"] == "dead-lettered"
    assert [d["id"] for d in dead_document["dead_letters"]] == [letter.id]
    assert unknown_code == 1
    assert "no request, batch token or back-end reference '01NOSUCHREQUEST'" in unknown
    # No personal data of the reporter (worker_support's request has some).
    request = store.get_request(delivered.subject)
    assert request is not None and request.reporter.email
    assert request.reporter.email not in text + as_json


def test_requests_show_takes_a_batch_token_for_its_request(
    store: Store, use_config: Callable[[str], dict[str, str]]
) -> None:
    use_config(CONFIG)
    now = datetime.now(UTC)
    batch = ServiceRequest(
        id="req-batch-1",
        jurisdiction="springfield.example",
        service_code="POTHOLE",
        service_name="Pothole",
        location=Location(lat=52.1, long=4.3),
        requested_at=now,
        updated_at=now,
    )
    with store.transaction() as tx:
        tx.add_request(batch, token="T01BATCHTOKEN")

    code, output = show("T01BATCHTOKEN", "--json")
    unknown_code, _ = show("T01UNKNOWN")

    assert code == 0, output
    document = json.loads(output)
    # Not relayed yet: in the outbox, as `requests stuck` would say.
    assert (document["request_id"], document["where"]["stage"]) == ("req-batch-1", "outbox")
    assert unknown_code == 1


def test_requests_show_finds_a_request_by_a_back_ends_reference(
    store: Store, use_config: Callable[[str], dict[str, str]]
) -> None:
    # The back office quotes its own number for the work: the operator finds the request by it,
    # also at an instance since taken out of the config (the relay declared it once).
    use_config(CONFIG)
    at = datetime.now(UTC)
    roads, retired, twice_a, twice_b = (new_request(store).subject for _ in range(4))
    with store.transaction() as tx:
        tx.remember_declared_instances(["old-roads"])
        tx.add_backend_refs(INSTANCE, [(roads, "WO-00017", at), (twice_a, "4711", at)])
        tx.add_backend_refs("old-roads", [(retired, "OLD-3", at)])
        tx.add_backend_refs("sap-roads", [(twice_b, "4711", at)])

    code, output = show("WO-00017", "--json")
    retired_code, retired_output = show("OLD-3", "--json")
    twice_code, twice_output = show("4711")

    assert code == 0, output
    assert json.loads(output)["request_id"] == roads
    assert retired_code == 0, retired_output
    assert json.loads(retired_output)["request_id"] == retired
    # Two back-ends number their work alike: the operator is shown both, and picks.
    assert twice_code == 1
    assert "2 requests have the back-end reference '4711'" in twice_output
    assert f"{twice_a}  ({INSTANCE})" in twice_output
    assert f"{twice_b}  (sap-roads)" in twice_output
