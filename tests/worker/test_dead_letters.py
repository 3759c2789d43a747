"""Dead letters end to end: a rejected request is dead-lettered, the mapping is fixed, a replay
delivers it exactly once; and the `civicbus dead` commands an operator uses."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime

import pytest
from structlog.testing import capture_logs
from typer.testing import CliRunner
from worker_support import (
    FAST,
    INSTANCE,
    MemoryBackend,
    actions,
    new_request,
    publish,
    relay_outbox,
    running,
    wait_until,
)

from bus import deadletters
from bus.cli import app
from bus.deadletters import DeadLetterError
from bus.store import DeadLetter, DeadLetterState, OutboxRow, Store
from bus.worker import command_consumer
from schemas.events import EventType

pytestmark = [pytest.mark.rabbitmq, pytest.mark.timeout(60)]


def test_replay_after_a_mapping_fix_delivers_the_request_exactly_once(
    store: Store, topology: str
) -> None:
    backend = MemoryBackend()
    envelope = new_request(store, description="REJECT: lane code unknown to the back-end")
    publish(topology, envelope)

    with running(command_consumer(topology, store, INSTANCE, FAST, backend)):
        (letter,) = wait_until(lambda: store.dead_letters(INSTANCE), what="the dead letter")
        assert backend.created == {}

        backend.accept_all = True  # the integrator fixed the mapping
        replayed = deadletters.replay(store, INSTANCE, [letter.id])
        assert [r.id for r in replayed] == [letter.id]
        relay_outbox(store, topology)
        wait_until(lambda: ("submitted", "ok") in actions(store, envelope.subject))

    assert backend.created == {envelope.subject: "WO-00001"}
    assert store.dead_letters(INSTANCE) == []
    assert store.get_dead_letter(letter.id).state is DeadLetterState.REPLAYED  # type: ignore[union-attr]
    trail = [a for a, _ in actions(store, envelope.subject)]
    assert trail.index("dead_lettered") < trail.index("replayed") < trail.index("submitted")
    with pytest.raises(DeadLetterError, match="already replayed"):
        deadletters.replay(store, INSTANCE, [letter.id])


def test_a_replayed_request_failing_again_is_dead_lettered_and_announced_again(
    store: Store, topology: str
) -> None:
    envelope = new_request(store, description="REJECT: lane code unknown to the back-end")
    publish(topology, envelope)

    def announced() -> list[str]:
        return [
            r.envelope.id
            for r in store.pending_outbox()
            if r.envelope.type is EventType.DELIVERY_FAILED
        ]

    with running(command_consumer(topology, store, INSTANCE, FAST, MemoryBackend())):
        (letter,) = wait_until(lambda: store.dead_letters(INSTANCE), what="the dead letter")
        first = announced()
        deadletters.replay(store, INSTANCE, [letter.id])  # the mapping is not fixed yet
        relay_outbox(store, topology)
        wait_until(lambda: announced(), what="the second delivery_failed event")

    assert len(first) == 1 and len(announced()) == 1 and announced() != first
    (again,) = store.dead_letters(INSTANCE)
    assert (again.id, again.attempts) == (letter.id, 2)
    trail = actions(store, envelope.subject)
    assert [o for a, o in trail if a == "dead_lettered"] == ["error", "error"]


#: The city the commands read: `desk` is configured; the tests' INSTANCE (`roads`) is not, as
#: an instance removed from the config whose dead letters must stay reachable.
CONFIG = """
jurisdictions: [{id: springfield.example, name: Springfield}]
routing: {default: desk}
instances:
  desk: {kind: memory}
"""
#: The same city with `roads` configured too: only then can its dead letters be replayed.
WITH_ROADS = f"{CONFIG}  {INSTANCE}: {{kind: memory}}\n"


@pytest.fixture
def cli(store: Store, use_config: Callable[[str], dict[str, str]]) -> CliRunner:
    use_config(CONFIG)
    return CliRunner()


@pytest.fixture
def roads_cli(store: Store, use_config: Callable[[str], dict[str, str]]) -> CliRunner:
    use_config(WITH_ROADS)
    return CliRunner()


def dead_letter_for(store: Store, topology: str, body: bytes | None = None) -> str | None:
    """Dead-letter one rejected request (or a raw body); returns the request id."""
    envelope = None if body is not None else new_request(store, description="REJECT")
    publish(topology, body if body is not None else envelope)  # type: ignore[arg-type]
    count = len(store.dead_letters(INSTANCE))
    with running(command_consumer(topology, store, INSTANCE, FAST, MemoryBackend())):
        wait_until(lambda: len(store.dead_letters(INSTANCE)) > count, what="the dead letter")
    return envelope.subject if envelope else None


def test_dead_list_show_replay_and_drop(roads_cli: CliRunner, store: Store, topology: str) -> None:
    request_id = dead_letter_for(store, topology)
    dead_letter_for(store, topology, b"garbage")
    first, second = store.dead_letters(INSTANCE)

    listed = roads_cli.invoke(app, ["dead", "list", INSTANCE])
    assert listed.exit_code == 0, listed.output
    assert request_id in listed.output and "PermanentError" in listed.output
    assert "MalformedMessage" in listed.output and "note:" not in listed.output
    assert str(first.id) in listed.output and str(second.id) in listed.output

    shown = roads_cli.invoke(app, ["dead", "show", str(first.id)])
    assert shown.exit_code == 0, shown.output
    # Log lines may share the output (logging is configured per process): read the JSON alone.
    start = shown.stdout.index('{\n  "id"')
    document, _ = json.JSONDecoder().raw_decode(shown.stdout, start)
    assert document["request_id"] == request_id and document["attempts"] == 1
    assert document["envelope"]["subject"] == request_id

    refused = roads_cli.invoke(app, ["dead", "replay", INSTANCE, str(second.id)])
    assert refused.exit_code == 1 and "cannot be replayed" in refused.output

    replayed = roads_cli.invoke(app, ["dead", "replay", INSTANCE, str(first.id)])
    assert replayed.exit_code == 0, replayed.output
    assert [r.envelope.subject for r in store.pending_outbox()][-1] == request_id

    dropped = roads_cli.invoke(app, ["dead", "drop", str(second.id)])
    assert dropped.exit_code == 0, dropped.output
    assert store.dead_letters(INSTANCE) == []
    assert "no dead letters for roads" in roads_cli.invoke(app, ["dead", "list", INSTANCE]).output

    audited = [e.action for e in store.audit_trail(request_id)]  # type: ignore[arg-type]
    assert "replayed" in audited


def test_dead_replay_all_and_argument_errors(
    roads_cli: CliRunner, store: Store, topology: str
) -> None:
    ids = [dead_letter_for(store, topology) for _ in range(2)]

    assert roads_cli.invoke(app, ["dead", "replay", INSTANCE]).exit_code == 2
    assert roads_cli.invoke(app, ["dead", "replay", INSTANCE, "1", "--all"]).exit_code == 2
    assert roads_cli.invoke(app, ["dead", "show", "999"]).exit_code == 1
    elsewhere = roads_cli.invoke(app, ["dead", "replay", "desk", "1"])
    assert elsewhere.exit_code == 1 and "belongs to roads, not desk" in elsewhere.output

    result = roads_cli.invoke(app, ["dead", "replay", INSTANCE, "--all"])
    assert result.exit_code == 0, result.output
    assert "2 dead letter(s) replayed" in result.output
    assert {r.envelope.subject for r in store.pending_outbox() if r.routing_key == INSTANCE} == set(
        ids
    )


def test_dead_argument_errors_name_the_bad_value_and_what_to_write(
    cli: CliRunner, store: Store
) -> None:
    neither = cli.invoke(app, ["dead", "replay", INSTANCE])
    assert neither.exit_code == 2
    assert "name dead letter IDs or --all" in neither.output and "not both" not in neither.output
    both = cli.invoke(app, ["dead", "replay", INSTANCE, "1", "--all"])
    assert both.exit_code == 2 and "not both" in both.output

    for command in (["drop", "2", "x7"], ["replay", INSTANCE, "x7"], ["drop", INSTANCE, "x7"]):
        result = cli.invoke(app, ["dead", *command])
        assert result.exit_code == 2, result.output
        assert "'x7' is not a dead letter ID" in result.output
    only_instance = cli.invoke(app, ["dead", "drop", INSTANCE])
    assert only_instance.exit_code == 2 and f"name the dead letter IDs of {INSTANCE}" in (
        only_instance.output
    )


def test_dead_drop_takes_the_instance_first_as_replay_does(cli: CliRunner, store: Store) -> None:
    with store.transaction() as tx:
        first = tx.record_dead_letter(
            instance=INSTANCE, message_id="m-1", reason="x", envelope=None
        )
        second = tx.record_dead_letter(
            instance=INSTANCE, message_id="m-2", reason="x", envelope=None
        )
    assert first is not None and second is not None

    elsewhere = cli.invoke(app, ["dead", "drop", "desk", str(first.id)])
    assert elsewhere.exit_code == 1 and f"belongs to {INSTANCE}, not desk" in elsewhere.output
    with_instance = cli.invoke(app, ["dead", "drop", INSTANCE, str(first.id)])
    assert with_instance.exit_code == 0, with_instance.output
    without = cli.invoke(app, ["dead", "drop", str(second.id)])  # as before
    assert without.exit_code == 0, without.output
    assert store.dead_letters(INSTANCE) == []


def test_dead_show_includes_its_history(roads_cli: CliRunner, store: Store, topology: str) -> None:
    request_id = dead_letter_for(store, topology)
    (letter,) = store.dead_letters(INSTANCE)
    assert roads_cli.invoke(app, ["dead", "replay", INSTANCE, str(letter.id)]).exit_code == 0

    shown = roads_cli.invoke(app, ["dead", "show", str(letter.id)])

    assert shown.exit_code == 0, shown.output
    start = shown.stdout.index('{\n  "id"')
    document, _ = json.JSONDecoder().raw_decode(shown.stdout, start)
    assert [h["action"] for h in document["history"]] == ["dead_lettered", "replayed"]
    assert document["history"][1]["actor"] == "cli:dead-replay"
    assert all(datetime.fromisoformat(h["at"]) for h in document["history"])
    assert request_id is not None


def test_dead_commands_refuse_a_name_nothing_is_known_by(cli: CliRunner, store: Store) -> None:
    store.add_subscription("http://127.0.0.1:9/hook", ["request.*"])
    with store.transaction() as tx:
        tx.record_dead_letter(instance=INSTANCE, message_id="m-1", reason="x", envelope=None)

    for command in (["list", "nope"], ["replay", "nope", "--all"], ["replay", "nope", "1"]):
        result = cli.invoke(app, ["dead", *command])
        assert result.exit_code == 2, result.output
        assert "'nope'" in result.output and "(known: desk, roads, sub.1)" in result.output
    # Configured, a subscription's route, only in the store: all known, even without letters.
    for name in ("desk", "sub.1", INSTANCE):
        assert cli.invoke(app, ["dead", "list", name]).exit_code == 0
    assert (
        "0 dead letter(s) replayed to desk"
        in cli.invoke(app, ["dead", "replay", "desk", "--all"]).output
    )


def test_dead_replay_refuses_a_removed_subscription(cli: CliRunner, store: Store) -> None:
    """`subscriptions remove` deletes the subscription's queue: a replay could only come back."""
    removed = store.add_subscription("http://127.0.0.1:9/hook", ["request.*"])
    store.remove_subscription(removed.id)
    route = f"sub.{removed.id}"
    with store.transaction() as tx:
        tx.record_dead_letter(instance=route, message_id="m-1", reason="x", envelope=None)

    for ids in (["--all"], [str(store.dead_letters(route)[0].id)]):
        result = cli.invoke(app, ["dead", "replay", route, *ids])
        assert result.exit_code == 1, result.output
        assert f"{route} is a removed webhook subscription" in result.output
        assert "civicbus dead drop" in result.output
    assert [letter.state for letter in store.dead_letters(route)] == [DeadLetterState.DEAD]
    assert store.pending_outbox() == []
    assert cli.invoke(app, ["dead", "list", route]).exit_code == 0  # still listed, to drop


def test_dead_letters_left_by_an_earlier_removal_are_listed_with_how_to_drop_them_all(
    cli: CliRunner, store: Store
) -> None:
    """A removal before `subscriptions remove` dropped them left them waiting, for ever."""
    removed = store.add_subscription("http://127.0.0.1:9/hook", ["request.*"])
    store.remove_subscription(removed.id)  # as the removal did then: letters left
    route = f"sub.{removed.id}"
    with store.transaction() as tx:
        for message_id in ("m-1", "m-2"):
            tx.record_dead_letter(
                instance=route, message_id=message_id, request_id="req-1", reason="x", envelope=None
            )
        tx.record_dead_letter(instance=INSTANCE, message_id="m-3", reason="x", envelope=None)

    listed = cli.invoke(app, ["dead", "list", route])
    refused = cli.invoke(app, ["dead", "replay", route, "--all"])
    dropped = cli.invoke(app, ["dead", "drop", route, "--all"])

    assert listed.exit_code == 0, listed.output
    assert f"`civicbus dead drop {route} --all`" in listed.output
    assert f"civicbus dead drop {route} --all" in refused.output
    assert dropped.exit_code == 0, dropped.output
    assert dropped.output.splitlines()[-1] == f"2 dead letter(s) of {route} dropped"
    assert store.dead_letters(route) == []
    assert route not in store.overview().dead_letters  # /metrics stops counting them
    assert [letter.message_id for letter in store.dead_letters(INSTANCE)] == ["m-3"]
    audited = [e for e in store.audit_trail("req-1") if e.action == "dropped"]
    assert [(e.actor, e.details["instance"]) for e in audited] == [("cli:dead-drop", route)] * 2
    again = cli.invoke(app, ["dead", "drop", route, "--all"])
    assert again.exit_code == 0 and f"0 dead letter(s) of {route} dropped" in again.output


def test_dead_letters_of_an_instance_no_longer_in_the_config_are_listed_and_dropped_not_replayed(
    cli: CliRunner, store: Store
) -> None:
    """Renamed or removed from the config, `roads` has no worker: a replay would wait in its
    queue (nothing deletes it) where no one reads it, marked replayed."""
    envelopes = [new_request(store) for _ in range(2)]
    with store.transaction() as tx:
        for envelope in envelopes:
            tx.record_dead_letter(
                instance=INSTANCE,
                message_id=envelope.id,
                request_id=envelope.subject,
                reason="PermanentError: rejected",
                envelope=envelope.model_dump(mode="json"),
            )
        tx.record_dead_letter(instance="desk", message_id="m-3", reason="x", envelope=None)
    first = store.dead_letters(INSTANCE)[0]

    listed = cli.invoke(app, ["dead", "list", INSTANCE])
    refused = [
        cli.invoke(app, ["dead", "replay", INSTANCE, *ids]) for ids in (["--all"], [str(first.id)])
    ]
    dropped = cli.invoke(app, ["dead", "drop", INSTANCE, "--all"])

    assert listed.exit_code == 0, listed.output
    assert str(first.id) in listed.output
    assert f"note: {INSTANCE} is no adapter instance in the config (renamed or removed?)" in (
        listed.output
    )
    assert f"`civicbus dead drop {INSTANCE} --all`" in listed.output
    for result in refused:
        assert result.exit_code == 1, result.output
        assert f"{INSTANCE} is no adapter instance in the config" in result.output
        assert "Put the instance back in the config" in result.output
        assert f"civicbus dead drop {INSTANCE} --all" in result.output
    assert dropped.exit_code == 0, dropped.output
    assert dropped.output.splitlines()[-1] == f"2 dead letter(s) of {INSTANCE} dropped"
    assert [r for r in store.pending_outbox() if r.routing_key == INSTANCE] == []
    assert store.dead_letters(INSTANCE) == []
    assert store.overview().dead_letters == {"desk": 1}
    again = cli.invoke(app, ["dead", "list", INSTANCE])
    assert again.exit_code == 0 and f"no dead letters for {INSTANCE}" in again.output


def test_dead_drop_all_takes_the_instance_and_no_ids(cli: CliRunner, store: Store) -> None:
    with store.transaction() as tx:
        letter = tx.record_dead_letter(
            instance=INSTANCE, message_id="m-1", reason="x", envelope=None
        )
    assert letter is not None

    for args in ([str(letter.id), "--all"], [INSTANCE, str(letter.id), "--all"]):
        result = cli.invoke(app, ["dead", "drop", *args])
        assert result.exit_code == 2, result.output
        assert "with --all, name the instance only: dead drop INSTANCE --all" in result.output
    assert [d.id for d in store.dead_letters(INSTANCE)] == [letter.id]


def test_dead_list_columns_are_as_wide_as_their_contents(cli: CliRunner, store: Store) -> None:
    request_id = "01JD4Z8Q6V3N5XKQ2W7R9T1M0P"  # a 26-character ULID
    at = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
    with store.transaction() as tx:
        for message_id, request in (("m-1", request_id), ("m-2", None)):
            tx.record_dead_letter(
                instance=INSTANCE,
                message_id=message_id,
                request_id=request,
                reason="PermanentError: field LANE is not a known lane code",
                envelope=None,
                attempts=12,
                at=at,
            )

    output = cli.invoke(app, ["dead", "list", INSTANCE]).output
    header = next(line for line in output.splitlines() if line.lstrip().startswith("ID "))
    rows = [line for line in output.splitlines() if "PermanentError" in line]
    assert [row.index("PermanentError") for row in rows] == [header.index("REASON")] * 2
    first = rows[0]
    assert first.index(request_id) == header.index("REQUEST")
    assert first.index("2026-03-01T12:00:00") == header.index("FIRST FAILURE")
    # Numbers end where their heading ends.
    assert first.index("12 ") + 2 == header.index("ATTEMPTS") + len("ATTEMPTS")


def test_dead_keep_drains_the_dead_letter_queues_of_instances_taken_out_of_the_config(
    store: Store,
) -> None:
    # Their queues stay on the broker; what lands in them must still reach the store.
    with store.transaction() as tx:
        tx.remember_declared_instances(["old-roads", INSTANCE])
        subscription = tx.add_subscription("http://127.0.0.1:9/hook", ["request.*"])

    routes = deadletters.drained_routes(store, [INSTANCE, "desk"])

    assert routes == [INSTANCE, "desk", f"sub.{subscription.id}", "old-roads"]


def waiting_letter(store: Store) -> DeadLetter:
    """A dead letter of INSTANCE waiting for a decision, holding a request's envelope."""
    envelope = new_request(store)
    with store.transaction() as tx:
        letter = tx.record_dead_letter(
            instance=INSTANCE,
            message_id=envelope.id,
            request_id=envelope.subject,
            reason="PermanentError: rejected",
            envelope=envelope.model_dump(mode="json"),
        )
    assert letter is not None
    return letter


def replays_of(store: Store, letter: DeadLetter) -> list[OutboxRow]:
    return [row for row in store.pending_outbox() if row.envelope.id == letter.message_id]


def decisions(store: Store, letter: DeadLetter) -> list[tuple[str, str]]:
    """(actor, action) of the letter's replays and drops, oldest first."""
    assert letter.request_id is not None
    return [
        (entry.actor, entry.action)
        for entry in store.audit_trail(letter.request_id)
        if entry.action in ("replayed", "dropped")
    ]


def state_of(store: Store, letter: DeadLetter) -> DeadLetterState:
    got = store.get_dead_letter(letter.id)
    assert got is not None
    return got.state


def meanwhile(
    monkeypatch: pytest.MonkeyPatch, owner: object, read: str, other: Callable[[], object]
) -> None:
    """Another operator acts (`other`) right after the first call of `owner.read` returned: the
    interleaving of two operators where one reads a letter still waiting and the other resolves
    it before the first writes."""
    real = getattr(owner, read)

    def read_then_other(*args: object, **kwargs: object) -> object:
        monkeypatch.setattr(owner, read, real)  # the other operator reads unhindered
        result = real(*args, **kwargs)
        other()
        return result

    monkeypatch.setattr(owner, read, read_then_other)


ACTIONS: dict[str, Callable[[Store, DeadLetter, str], list[DeadLetter]]] = {
    "replayed": lambda store, letter, actor: deadletters.replay(
        store, INSTANCE, [letter.id], actor=actor
    ),
    "dropped": lambda store, letter, actor: deadletters.drop(
        store, [letter.id], instance=INSTANCE, actor=actor
    ),
}


def test_a_dead_letter_named_twice_is_replayed_once_and_dropped_once(any_store: Store) -> None:
    store = any_store
    first, second, third = (waiting_letter(store) for _ in range(3))

    replayed = deadletters.replay(store, INSTANCE, [second.id, first.id, second.id])
    dropped = deadletters.drop(store, [third.id, third.id], instance=INSTANCE)

    assert [letter.id for letter in replayed] == [second.id, first.id]
    assert [letter.id for letter in dropped] == [third.id]
    assert [len(replays_of(store, letter)) for letter in (first, second, third)] == [1, 1, 0]
    assert decisions(store, second) == [("cli:dead-replay", "replayed")]
    assert decisions(store, third) == [("cli:dead-drop", "dropped")]


@pytest.mark.parametrize("theirs", ["replayed", "dropped"])
@pytest.mark.parametrize("ours", ["replayed", "dropped"])
def test_a_dead_letter_someone_else_resolves_after_we_read_it_is_left_as_they_left_it(
    any_store: Store, monkeypatch: pytest.MonkeyPatch, ours: str, theirs: str
) -> None:
    store = any_store
    letter = waiting_letter(store)
    meanwhile(
        monkeypatch, store, "get_dead_letter", lambda: ACTIONS[theirs](store, letter, "other")
    )

    with capture_logs() as logs:
        done = ACTIONS[ours](store, letter, "us")

    assert done == []
    assert state_of(store, letter) is DeadLetterState(theirs)
    assert decisions(store, letter) == [("other", theirs)]
    assert len(replays_of(store, letter)) == (1 if theirs == "replayed" else 0)
    (warning,) = [log for log in logs if log["log_level"] == "warning"]
    assert warning["dead_letter"] == letter.id and warning["instance"] == INSTANCE


def test_replay_all_leaves_a_letter_someone_else_dropped_after_the_list_was_read(
    any_store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = any_store
    first, second = waiting_letter(store), waiting_letter(store)
    meanwhile(monkeypatch, store, "dead_letters", lambda: ACTIONS["dropped"](store, first, "other"))

    replayed = deadletters.replay(store, INSTANCE)

    assert [letter.id for letter in replayed] == [second.id]
    assert (state_of(store, first), state_of(store, second)) == (
        DeadLetterState.DROPPED,
        DeadLetterState.REPLAYED,
    )
    assert replays_of(store, first) == [] and len(replays_of(store, second)) == 1


def test_dead_replay_and_drop_of_an_id_named_twice_act_once(
    roads_cli: CliRunner, store: Store
) -> None:
    replayed, dropped = waiting_letter(store), waiting_letter(store)

    replay = roads_cli.invoke(app, ["dead", "replay", INSTANCE, str(replayed.id), str(replayed.id)])
    drop = roads_cli.invoke(app, ["dead", "drop", INSTANCE, str(dropped.id), str(dropped.id)])

    assert replay.exit_code == 0, replay.output
    assert replay.output.count(f"replayed {replayed.id} ") == 1
    assert f"1 dead letter(s) replayed to {INSTANCE}" in replay.output
    assert drop.exit_code == 0, drop.output
    assert drop.output.count(f"dropped {dropped.id} ") == 1
    assert len(replays_of(store, replayed)) == 1
    assert decisions(store, dropped) == [("cli:dead-drop", "dropped")]


def test_dead_replay_says_which_letters_someone_else_resolved_first(
    roads_cli: CliRunner, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    taken, ours = waiting_letter(store), waiting_letter(store)
    # The command opens a store of its own: the other operator drops right after it read.
    meanwhile(
        monkeypatch, Store, "get_dead_letter", lambda: ACTIONS["dropped"](store, taken, "other")
    )

    result = roads_cli.invoke(app, ["dead", "replay", INSTANCE, str(taken.id), str(ours.id)])

    assert result.exit_code == 1, result.output
    assert f"replayed {ours.id} " in result.output and f"replayed {taken.id} " not in result.output
    assert f"1 dead letter(s) replayed to {INSTANCE}" in result.output
    assert f"dead letter {taken.id} was not replayed: someone else dropped it first" in (
        result.output
    )
    assert replays_of(store, taken) == [] and len(replays_of(store, ours)) == 1
