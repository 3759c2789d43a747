"""A take-down tells the back-office systems: `civicbus.request.taken_down` is queued in the
take-down's transaction (the request as it now reads, without personal data, and what was
removed), and the relay publishes it to `civicbus.events` like every other event, to queues
and webhook subscriptions bound to `request.*`; it never becomes a command."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from bus import takedown
from bus.api.media import MediaStore
from bus.broker import topology as t
from bus.config import Config, load_config
from bus.relay import Relay
from bus.store import OutboxMessage, Store
from bus.subscriptions import binding_key, declare, queue_name
from schemas.events import Envelope, EventType
from schemas.model import EVENT_HISTORY, Reporter, ServiceRequest, Status, StatusNote
from tests.asyncapi_support import assert_documented
from tests.media_files import png
from tests.store.store_factories import T0, make_request, minutes

SANDBOX = Path(__file__).parents[2] / "deploy/sandbox/civicbus.yaml"
SERVICES = load_config(SANDBOX).service_catalogue()
WRITTEN = "Car HH-AB 123 of my neighbour Jo Smith blocks the drain"
EMAIL = "jo.smith@example.org"
PNG = png(b"taken down event")


@pytest.fixture
def store(any_store: Store) -> Store:
    return any_store


@pytest.fixture
def files(tmp_path: Path) -> MediaStore:
    return MediaStore(tmp_path / "media", "https://311.example")


def reported(store: Store, files: MediaStore) -> ServiceRequest:
    """A request with a description, a stored photo and the reporter's e-mail, and its
    `created` event queued as the API queues it."""
    request = make_request(
        "r-1",
        service_code="POTHOLE",
        jurisdiction="springfield.example",
        description=WRITTEN,
        media=(files.save(PNG),),
        reporter=Reporter(email=EMAIL, first_name="Jo"),
    )
    created = Envelope(
        type=EventType.CREATED,
        subject=request.id,
        data=request.without_personal_data().model_dump(mode="json"),
        correlationid=request.id,
    )
    with store.transaction() as tx:
        tx.add_request(request)
        tx.add_outbox(
            created,
            exchange=t.EVENTS_EXCHANGE,
            routing_key=t.event_routing_key(EventType.CREATED, request.service_code),
        )
    return request


def taken_down_rows(store: Store) -> list[OutboxMessage]:
    rows = store.pending_outbox_messages()
    return [row for row in rows if row.envelope.type is EventType.TAKEN_DOWN]


def test_a_take_down_queues_one_taken_down_event_without_the_content_or_personal_data(
    store: Store, files: MediaStore
) -> None:
    request = reported(store, files)
    digest = request.media[0].sha256
    assert digest is not None

    done = takedown.take_down(store, files, "r-1", services=SERVICES)

    [row] = taken_down_rows(store)
    event = row.envelope
    assert (row.exchange, row.routing_key) == ("civicbus.events", "request.taken_down.POTHOLE")
    assert event.id == done.event_id and event.subject == "r-1"
    assert event.data["taken_down"] == {"description": True, "attributes": [], "media": 1}
    assert event.data["description"] == takedown.TAKEN_DOWN and event.data["media"] == []
    assert set(event.data["reporter"].values()) == {None}
    # The rest reads as the request does: a consumer overwrites its copy with it.
    assert event.data["status"] == "open" and event.data["service_code"] == "POTHOLE"
    assert event.data["updated_at"] == request.updated_at.isoformat().replace("+00:00", "Z")
    now = store.get_request("r-1")
    assert now is not None and now.taken_down_at is not None
    assert event.data["taken_down_at"] == now.taken_down_at.isoformat().replace("+00:00", "Z")
    for secret in (WRITTEN, EMAIL, "Jo", digest):
        assert secret not in row.body.decode()
    assert_documented(event)
    # The take-down's audit entry is as before: the counts, not the event.
    [entry] = [e for e in store.audit_trail("r-1") if e.action == takedown.TAKEN_DOWN_ACTION]
    assert entry.message_id is None and entry.details["events_waiting"] == 1


def test_a_repeated_take_down_that_changes_nothing_queues_nothing(
    store: Store, files: MediaStore
) -> None:
    reported(store, files)
    takedown.take_down(store, files, "r-1", services=SERVICES)

    again = takedown.take_down(store, files, "r-1", services=SERVICES)

    assert not again.changed and again.event_id is None
    assert len(taken_down_rows(store)) == 1


def test_each_part_taken_down_is_announced_and_the_earlier_announcement_loses_the_photo_too(
    store: Store, files: MediaStore
) -> None:
    reported(store, files)

    takedown.take_down(store, files, "r-1", services=SERVICES, media=False)
    takedown.take_down(store, files, "r-1", services=SERVICES, description=False)

    first, second = (row.envelope.data for row in taken_down_rows(store))
    assert first["taken_down"] == {"description": True, "attributes": [], "media": 0}
    assert second["taken_down"] == {"description": False, "attributes": [], "media": 1}
    assert second["description"] == takedown.TAKEN_DOWN
    # The first one carried the photo (the request then still showed it): rewritten since.
    assert first["media"] == second["media"] == []


def test_the_taken_down_event_carries_the_latest_status_updates_as_every_event_does(
    store: Store, files: MediaStore
) -> None:
    # A request a desk annotated often: its other events carry the latest EVENT_HISTORY updates
    # (the AsyncAPI document says so of taken_down too), not all of the up to 1,000 it keeps.
    notes = tuple(
        StatusNote(status=Status.IN_PROGRESS, at=T0 + minutes(n), source="desk", update_id=f"u{n}")
        for n in range(EVENT_HISTORY + 5)
    )
    request = make_request(
        "r-2",
        service_code="POTHOLE",
        jurisdiction="springfield.example",
        description=WRITTEN,
        status=Status.IN_PROGRESS,
        updated_at=notes[-1].at,
        history=notes,
    )
    with store.transaction() as tx:
        tx.add_request(request)

    takedown.take_down(store, files, "r-2", services=SERVICES)

    [row] = taken_down_rows(store)
    carried = [note["update_id"] for note in row.envelope.data["history"]]
    assert carried == [f"u{n}" for n in range(5, EVENT_HISTORY + 5)]
    assert_documented(row.envelope)


def drain(channel: Any, queue: str, expected: int, timeout: float = 5.0) -> list[dict[str, Any]]:
    """Up to `expected` events from `queue`, with their routing keys as `_key`."""
    got: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    while len(got) < expected and time.monotonic() < deadline:
        method, _, body = channel.basic_get(queue, auto_ack=True)
        if method is None:
            time.sleep(0.02)
        else:
            got.append({**json.loads(body), "_key": method.routing_key})
    return got


def test_the_relay_publishes_it_to_request_star_queues_and_subscriptions_never_as_a_command(
    store: Store, files: MediaStore, config: Config, amqp_url: str, channel: Any
) -> None:
    reported(store, files)
    takedown.take_down(store, files, "r-1", services=SERVICES)
    channel.queue_declare("office.takedowns", exclusive=True)
    channel.queue_bind("office.takedowns", t.EVENTS_EXCHANGE, binding_key("request.taken_down"))
    subscription = store.add_subscription("https://office.example/hook", ["request.*"], None)
    declare(channel, subscription)

    assert Relay(store, config, amqp_url).relay_pending() == 2

    # A queue bound to `request.*` (as `civicbus subscriptions add --events 'request.*'` binds
    # one) gets it after the created event and its routed event, in that order.
    for queue in ("test.events", queue_name(subscription.id)):
        got = drain(channel, queue, 4, timeout=2.0)
        assert [(e["type"], e["_key"]) for e in got] == [
            ("civicbus.request.created", "request.created.POTHOLE"),
            ("civicbus.request.routed", "request.routed.sap-roads"),
            ("civicbus.request.taken_down", "request.taken_down.POTHOLE"),
        ]
        assert got[2]["data"]["taken_down"] == {"description": True, "attributes": [], "media": 1}
        assert WRITTEN not in json.dumps(got) and EMAIL not in json.dumps(got)
    [only] = drain(channel, "office.takedowns", 2, timeout=1.0)
    assert only["type"] == "civicbus.request.taken_down"
    # Only the created event became a command (with the description already scrubbed).
    [command] = drain(channel, t.work_queue("sap-roads"), 2, timeout=1.0)
    assert command["type"] == "civicbus.request.created"
    assert command["data"]["description"] == takedown.TAKEN_DOWN
    actions = [e.action for e in store.audit_trail("r-1")]
    assert actions.count("relayed") == 2 and actions.count("routed") == 1


def test_written_answers_are_taken_down_with_the_description_and_named_without_their_content(
    store: Store, files: MediaStore
) -> None:
    pole = "SL-4411, the one outside Jo Smith's window"
    answers = {"POLE_NUMBER": pole, "NOTICED_AT": "2026-03-01T21:00:00+00:00", "GONE": "Jo's"}
    request = make_request(
        "r-1",
        service_code="STREETLIGHT",
        jurisdiction="springfield.example",
        attributes=answers,
    )
    with store.transaction() as tx:
        tx.add_request(request)

    done = takedown.take_down(store, files, "r-1", services=SERVICES)
    again = takedown.take_down(store, files, "r-1", services=SERVICES)

    # No description, no media: the answers alone are what changed.
    assert done.changed and not done.description and done.answers == ("GONE", "POLE_NUMBER")
    assert not again.changed and again.answers == ()
    [row] = taken_down_rows(store)
    event = row.envelope
    assert event.data["taken_down"] == {
        "description": False,
        "attributes": ["GONE", "POLE_NUMBER"],
        "media": 0,
    }
    assert event.data["attributes"] == {
        "POLE_NUMBER": takedown.ANSWER_TAKEN_DOWN,
        "NOTICED_AT": answers["NOTICED_AT"],  # a time the city asked for: not prose
        "GONE": takedown.ANSWER_TAKEN_DOWN,  # no longer defined: cannot be shown not to be
    }
    assert "Jo" not in row.body.decode()
    assert_documented(event)
    [entry] = store.audit_trail("r-1")
    assert entry.action == takedown.TAKEN_DOWN_ACTION
    assert entry.details["attributes"] == ["GONE", "POLE_NUMBER"]
    assert "Jo" not in str(entry.details)
    # Taking down only the media leaves what was written.
    other = make_request(
        "r-2", service_code="STREETLIGHT", jurisdiction="springfield.example", attributes=answers
    )
    with store.transaction() as tx:
        tx.add_request(other)
    media_only = takedown.take_down(store, files, "r-2", services=SERVICES, description=False)
    kept = store.get_request("r-2")
    assert not media_only.changed and kept is not None and kept.attributes == answers
