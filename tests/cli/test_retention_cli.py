"""`civicbus store prune` and `civicbus privacy forget` on a real store."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from bus.cli import app
from bus.store import DeadLetterState, Store
from bus.store._tables import dead_letters, idempotency_keys, outbox
from schemas.events import Envelope, EventType
from schemas.model import BackendRef, Reporter, Status
from tests.store.store_factories import make_request

CONTACT = {"email": "ann@example.org", "phone": "555 123 4567", "first_name": "Ann"}
TOKEN = "T01M92GEHJHKC12PZZEKSM78Q7R"


def now() -> datetime:
    return datetime.now(UTC)


@pytest.fixture
def store(sqlite_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Store]:
    """The store the commands use (CIVICBUS_DATABASE_URL), open for setting up and looking."""
    monkeypatch.setenv("CIVICBUS_DATABASE_URL", sqlite_url)
    opened = Store.open(sqlite_url)
    yield opened
    opened.close()


def days_ago(
    store: Store, column: sa.Column[datetime], days: int, where: sa.ColumnElement[bool]
) -> None:
    with store._engine.begin() as conn:
        conn.execute(
            column.table.update().where(where).values({column.name: now() - timedelta(days=days)})
        )


def invoke(*args: str) -> tuple[int, str, str]:
    """Exit code, output and error output (its words: a usage error wraps in a box)."""
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.stdout, " ".join(result.stderr.replace("│", " ").split())


def audited(store: Store, actor: str, action: str) -> dict[str, object]:
    entry = store.latest_audit([actor], [action], since=now() - timedelta(minutes=5)).get(actor)
    assert entry is not None, f"no {action} entry by {actor}"
    return entry.details


def test_store_prune_deletes_old_published_events_and_idempotency_keys_and_audits_counts(
    store: Store,
) -> None:
    with store.transaction() as tx:
        for i in range(3):
            event = Envelope(type=EventType.CREATED, subject=f"r{i}", data={}, correlationid="c")
            tx.add_outbox(event, exchange="civicbus.events", routing_key="request.created")
    old, recent, waiting = (row.id for row in store.pending_outbox())
    store.mark_sent([old, recent])
    days_ago(store, outbox.c.sent_at, 8, outbox.c.id == old)
    client, _ = store.add_client("app")
    with store.transaction() as tx:
        for key in ("header:old", "header:recent", "external_id:springfield:POTHOLE:p-1"):
            tx.save_idempotent_response(client.id, key, {"answer": [{"key": key}]})
    days_ago(store, idempotency_keys.c.created_at, 31, idempotency_keys.c.key != "header:recent")

    code, out, err = invoke("store", "prune")

    assert code == 0, err
    assert "1 outbox event(s) published before" in out
    assert "1 Idempotency-Key record(s) stored before" in out
    assert [row.id for row in store.pending_outbox()] == [waiting]
    assert store.sent_outbox(sent_before=now(), limit=9) == [recent]
    assert store.idempotent_response(client.id, "header:old") is None
    assert store.idempotent_response(client.id, "header:recent") is not None
    # A partner's own id names its report for good: a resend must never make a second one.
    assert store.idempotent_response(client.id, "external_id:springfield:POTHOLE:p-1")
    details = audited(store, "cli:store-prune", "pruned")
    assert details["outbox_events"] == 1 and details["idempotency_keys"] == 1
    cutoff = datetime.fromisoformat(str(details["outbox_sent_before"]))
    assert abs(cutoff - (now() - timedelta(days=7))) < timedelta(minutes=1)


@pytest.mark.parametrize("option", ["--idempotency-before", "--dead-letters-resolved-before"])
def test_store_prune_refuses_a_window_under_a_day_and_deletes_nothing(
    store: Store, option: str
) -> None:
    with store.transaction() as tx:
        event = Envelope(type=EventType.CREATED, subject="r", data={}, correlationid="c")
        tx.add_outbox(event, exchange="civicbus.events", routing_key="request.created")
    store.mark_sent([row.id for row in store.pending_outbox()])

    code, _, err = invoke("store", "prune", "--outbox-sent-before", "0s", option, "12h")

    assert code == 2
    assert option in err and "at least 1d" in err
    assert store.sent_outbox(sent_before=now(), limit=9) != []


def test_store_prune_names_the_option_whose_duration_is_wrong(store: Store) -> None:
    code, _, err = invoke("store", "prune", "--outbox-sent-before", "a week")

    assert code == 2
    assert "--outbox-sent-before" in err and "is not a duration" in err


def test_store_prune_deletes_dead_letters_resolved_long_ago_never_a_waiting_one(
    store: Store,
) -> None:
    ids = {}
    with store.transaction() as tx:
        for name in ("replayed", "dropped", "waiting", "lately"):
            letter = tx.record_dead_letter(
                instance="roads",
                message_id=name,
                request_id=f"r-{name}",
                reason="PermanentError: rejected",
                envelope=None,
            )
            assert letter is not None
            ids[name] = letter.id
        tx.set_dead_letter_state(ids["replayed"], DeadLetterState.REPLAYED)
        tx.set_dead_letter_state(ids["dropped"], DeadLetterState.DROPPED)
        tx.set_dead_letter_state(ids["lately"], DeadLetterState.DROPPED)
    old = dead_letters.c.id.in_([ids["replayed"], ids["dropped"]])
    days_ago(store, dead_letters.c.resolved_at, 31, old)
    days_ago(store, dead_letters.c.last_failed_at, 60, dead_letters.c.id == ids["waiting"])

    code, out, err = invoke("store", "prune")

    assert code == 0, err
    assert "2 dead letter(s) replayed or dropped before" in out
    assert store.get_dead_letter(ids["replayed"]) is None
    assert store.get_dead_letter(ids["dropped"]) is None
    assert [letter.id for letter in store.dead_letters("roads", DeadLetterState.DEAD)] == [
        ids["waiting"]
    ]
    assert store.get_dead_letter(ids["lately"]) is not None
    details = audited(store, "cli:store-prune", "pruned")
    assert details["dead_letters"] == 2
    cutoff = datetime.fromisoformat(str(details["dead_letters_resolved_before"]))
    assert abs(cutoff - (now() - timedelta(days=30))) < timedelta(minutes=1)

    code, _, err = invoke("dead", "show", str(ids["replayed"]))
    assert code != 0
    assert f"there is no dead letter {ids['replayed']}" in err
    assert "`civicbus store prune` deleted it" in err and "civicbus audit trail" in err


def seed_requests(store: Store) -> None:
    def at(days: int, request_id: str, status: Status, **fields: object) -> object:
        when = now() - timedelta(days=days)
        return make_request(
            request_id,
            status=status,
            requested_at=when,
            updated_at=when,
            reporter=CONTACT,
            **fields,
        )

    ref = BackendRef(adapter="sap-roads", reference="N-7", submitted_at=now() - timedelta(days=99))
    with store.transaction() as tx:
        tx.add_requests(
            [
                at(100, "closed-long-ago", Status.FIXED, backend_refs=(ref,)),
                at(100, "open-long-ago", Status.IN_PROGRESS),
                at(10, "closed-lately", Status.CLOSED),
            ],
            tokens={"open-long-ago": TOKEN},
        )
        tx.audit(actor="api:app", action="accepted", request_id="closed-long-ago")


def contact_of(store: Store, request_id: str) -> Reporter:
    request = store.get_request(request_id)
    assert request is not None
    return request.reporter


def test_privacy_forget_closed_before_forgets_requests_closed_long_ago_and_audits_each(
    store: Store,
) -> None:
    seed_requests(store)

    code, out, err = invoke("privacy", "forget", "--closed-before", "90d")

    assert code == 0, err
    assert "reporter contact data forgotten for 1 closed request(s) last updated before" in out
    assert contact_of(store, "closed-long-ago") == Reporter()
    assert contact_of(store, "open-long-ago").email == CONTACT["email"]
    assert contact_of(store, "closed-lately").email == CONTACT["email"]
    [entry] = [e for e in store.audit_trail("closed-long-ago") if e.action == "reporter_forgotten"]
    assert entry.actor == "cli:privacy-forget" and set(entry.details) == {"closed_before"}
    assert store.audit_trail("open-long-ago") == []
    verified = invoke("audit", "verify")
    assert verified[0] == 0 and "audit log intact: 2 entries" in verified[1]


def test_privacy_forget_request_forgets_one_request_found_by_its_batch_token_whatever_its_status(
    store: Store,
) -> None:
    seed_requests(store)

    code, out, err = invoke("privacy", "forget", "--request", TOKEN)
    again = invoke("privacy", "forget", "--request", "open-long-ago")

    assert code == 0, err
    assert out.strip() == "reporter contact data of request open-long-ago forgotten"
    # Allowed before delivery: the report still goes, without a way to contact the resident.
    assert "has reached no back-end yet" in err
    assert contact_of(store, "open-long-ago") == Reporter()
    [entry] = store.audit_trail("open-long-ago")
    assert (entry.action, entry.details) == (
        "reporter_forgotten",
        {"on_request": True, "delivered": False},
    )
    assert again[0] == 0 and "holds no reporter contact data" in again[1]
    assert len(store.audit_trail("open-long-ago")) == 1


def test_privacy_forget_request_of_a_delivered_request_says_the_back_end_keeps_its_copy(
    store: Store,
) -> None:
    seed_requests(store)

    code, _, err = invoke("privacy", "forget", "--request", "closed-long-ago")

    assert code == 0
    assert "delivered to sap-roads" in err and "erase it there" in err


def test_privacy_forget_of_an_unknown_request_fails(store: Store) -> None:
    code, _, err = invoke("privacy", "forget", "--request", "nope")

    assert code == 1
    assert "there is no request (nor batch token) nope" in err


@pytest.mark.parametrize(
    "args", [[], ["--closed-before", "90d", "--request", "r-1"]], ids=["neither", "both"]
)
def test_privacy_forget_takes_either_a_duration_or_a_request(store: Store, args: list[str]) -> None:
    code, _, err = invoke("privacy", "forget", *args)

    assert code == 2
    assert "--closed-before DURATION or --request ID" in err
