"""A take-down in the store: the request's description and media go from its document and from
every outbox event and dead letter about it, published or not; other requests keep theirs."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from store_factories import T0, make_request, minutes

from bus.store import DeadLetterState, RequestQuery, Store
from bus.store._tables import dead_letters, outbox
from schemas.events import Envelope, EventType
from schemas.model import Media, Reporter, ServiceRequest, Status, StatusUpdate

MARKER = "[description removed]"
WRITTEN = "Car HH-AB 123 of my neighbour Jo Smith blocks the drain"
DIGEST = "ab" * 32
PHOTO = Media(
    url=f"https://311.example/media/{DIGEST}.jpg", content_type="image/jpeg", sha256=DIGEST
)


def reported(request_id: str, **changes: object) -> ServiceRequest:
    return make_request(request_id, description=WRITTEN, media=(PHOTO,), **changes)


def created_body(request: ServiceRequest) -> dict[str, Any]:
    """The `created` event of `request` as a queue holds it, and a dead letter keeps it."""
    return Envelope(
        type=EventType.CREATED,
        subject=request.id,
        data=request.model_dump(mode="json"),
        correlationid="c",
    ).model_dump(mode="json")


def queue_created(store: Store, request: ServiceRequest) -> str:
    """A `created` event of the request, queued for the relay; its message id."""
    envelope = Envelope(
        type=EventType.CREATED,
        subject=request.id,
        data=request.model_dump(mode="json"),
        correlationid=request.id,
    )
    with store.transaction() as tx:
        tx.add_outbox(envelope, exchange="civicbus.events", routing_key="request.created")
    return envelope.id


def envelopes(store: Store) -> dict[str, dict[str, object]]:
    """Every outbox envelope by message id, as stored."""
    with store._engine.connect() as conn:
        rows = conn.execute(sa.select(outbox.c.message_id, outbox.c.envelope))
        return {message_id: envelope for message_id, envelope in rows}


def test_a_take_down_rewrites_the_request_and_its_waiting_and_published_events(
    store: Store,
) -> None:
    mine, other = reported("r-1"), reported("r-2")
    with store.transaction() as tx:
        tx.add_requests([mine, other])
    published = queue_created(store, mine)
    store.mark_sent([row.id for row in store.pending_outbox()])
    waiting = queue_created(store, mine)
    untouched = queue_created(store, other)

    with store.transaction() as tx:
        done = tx.take_down("r-1", marker=MARKER, media=True)

    assert done is not None
    assert done.description and done.media == (PHOTO,)
    assert (done.events_waiting, done.events_published, done.dead_letters) == (1, 1, 0)
    request = store.get_request("r-1")
    assert request is not None and request.description == MARKER and request.media == ()
    stored = envelopes(store)
    assert request.taken_down_at is not None
    for message_id in (published, waiting):
        data = stored[message_id]["data"]
        assert isinstance(data, dict)
        assert data["description"] == MARKER and data["media"] == []
        # Dated as the request: its copy says it was taken down, and when.
        assert data["taken_down_at"] == request.taken_down_at.isoformat().replace("+00:00", "Z")
        assert data["service_code"] == "pothole"  # the rest of the event is as it was
        assert data["changed_at"] == mine.model_dump(mode="json")["changed_at"]
    assert WRITTEN in str(stored[untouched]) and DIGEST in str(stored[untouched])
    # What the relay publishes next is the rewritten event.
    [pending_waiting, pending_other] = store.pending_outbox()
    assert pending_waiting.envelope.data["description"] == MARKER
    assert pending_other.envelope.data["description"] == WRITTEN
    kept = store.get_request("r-2")
    assert kept is not None and kept.description == WRITTEN and kept.media == (PHOTO,)


def test_a_take_down_rewrites_the_dead_letters_of_the_request(store: Store) -> None:
    request = reported("r-1")
    with store.transaction() as tx:
        tx.add_request(request)
    body = created_body(request)
    with store.transaction() as tx:
        tx.record_dead_letter(
            instance="sap-roads", message_id="m-1", request_id="r-1", reason="x", envelope=body
        )
        tx.record_dead_letter(
            instance="parks", message_id="m-2", reason="not json", envelope="garbage"
        )

    with store.transaction() as tx:
        done = tx.take_down("r-1", marker=MARKER, media=True)

    assert done is not None and done.dead_letters == 1
    with store._engine.connect() as conn:
        rows = conn.execute(sa.select(dead_letters.c.message_id, dead_letters.c.envelope))
        stored = {message_id: envelope for message_id, envelope in rows}
    assert stored["m-1"]["data"]["description"] == MARKER and stored["m-1"]["data"]["media"] == []
    assert stored["m-2"] == "garbage"


def test_a_second_take_down_rewrites_nothing(store: Store) -> None:
    with store.transaction() as tx:
        tx.add_request(reported("r-1"))
    queue_created(store, reported("r-1"))
    with store.transaction() as tx:
        tx.take_down("r-1", marker=MARKER, media=True)

    with store.transaction() as tx:
        again = tx.take_down("r-1", marker=MARKER, media=True)
        unknown = tx.take_down("nope", marker=MARKER, media=True)

    assert again is not None and not again.changed
    assert unknown is None


def test_only_the_description_or_only_the_media_can_be_taken_down(store: Store) -> None:
    with store.transaction() as tx:
        tx.add_requests([reported("r-1"), reported("r-2"), make_request("r-3", media=(PHOTO,))])

    with store.transaction() as tx:
        text = tx.take_down("r-1", marker=MARKER, media=False)
        photo = tx.take_down("r-2", marker=None, media=True)
        no_text = tx.take_down("r-3", marker=MARKER, media=False)

    assert text is not None and text.description and text.media == ()
    assert photo is not None and not photo.description and photo.media == (PHOTO,)
    # A request reported without a description gets none: Open311's description is optional.
    assert no_text is not None and not no_text.changed
    one, two, three = (store.get_request(f"r-{i}") for i in (1, 2, 3))
    assert one is not None and (one.description, one.media) == (MARKER, (PHOTO,))
    assert two is not None and (two.description, two.media) == (WRITTEN, ())
    assert three is not None and (three.description, three.media) == (None, (PHOTO,))


def test_a_file_stays_in_use_while_another_request_shows_the_same_content(store: Store) -> None:
    other_digest = "cd" * 32
    with store.transaction() as tx:
        tx.add_requests([reported("r-1"), reported("r-2"), make_request("r-3")])
        tx.apply_status_update(
            StatusUpdate(
                request_id="r-3",
                status="in_progress",
                at=make_request().requested_at,
                update_id="u-1",
                source="parks",
                media_url=f"https://311.example/media/{other_digest}.png",
            )
        )

    both = store.media_in_use({DIGEST, other_digest, "ef" * 32}, besides="r-1")
    with store.transaction() as tx:
        tx.take_down("r-2", marker=MARKER, media=True)
    after = store.media_in_use({DIGEST}, besides="r-1")
    by_itself = store.media_in_use({other_digest}, besides="r-3")

    assert both == {DIGEST, other_digest}
    assert after == set()  # r-2 no longer shows it: r-1's take-down may delete the file
    assert by_itself == set()


def test_a_worker_recording_a_receipt_sees_a_take_down_made_meanwhile(store: Store) -> None:
    with store.transaction() as tx:
        tx.add_requests([reported("r-1"), reported("r-2"), reported("r-3")])
    read = store.get_requests(["r-1", "r-2", "r-3"])  # the worker's batch, before the back-end
    with store.transaction() as tx:
        tx.take_down("r-1", marker=MARKER, media=False)
        tx.take_down("r-2", marker=None, media=True)

    with store.transaction() as tx:
        changed = tx.changed_requests(read)

    assert set(changed) == {"r-1", "r-2"}
    assert changed["r-1"].description == MARKER and changed["r-2"].media == ()


def update(request_id: str, status: Status, at: datetime, update_id: str) -> StatusUpdate:
    return StatusUpdate(
        request_id=request_id, status=status, at=at, update_id=update_id, source="sap-roads"
    )


def test_a_take_down_is_when_the_request_last_changed_for_updated_after_not_its_updated_at(
    store: Store,
) -> None:
    with store.transaction() as tx:
        tx.add_requests([reported("r-1"), reported("r-2")])
    started = datetime.now(UTC) - timedelta(seconds=1)

    with store.transaction() as tx:
        tx.take_down("r-1", marker=MARKER, media=True)
    first = store.get_request("r-1")
    with store.transaction() as tx:
        tx.take_down("r-1", marker=MARKER, media=True)  # changes nothing: the time stays

    request = store.get_request("r-1")
    assert request is not None and request.taken_down_at is not None
    taken_down_at = request.taken_down_at
    assert started < taken_down_at <= datetime.now(UTC)
    assert first is not None and first.taken_down_at == taken_down_at
    # updated_at stays the time of its latest status; Open311's updated_datetime moves.
    assert request.updated_at == T0 and request.modified_at == taken_down_at
    assert store.get_requests(["r-1"])["r-1"].taken_down_at == taken_down_at

    def found(after: datetime, before: datetime | None = None) -> list[str]:
        query = RequestQuery(updated_after=after, updated_before=before)
        return [r.id for r in store.find_requests(query)]

    assert found(started) == ["r-1"]
    assert found(T0 - minutes(1), started) == ["r-2"]
    assert found(T0 - minutes(1), taken_down_at) == ["r-2"]
    assert found(taken_down_at) == []


def test_a_back_end_update_dated_before_the_take_down_still_moves_the_status(
    store: Store,
) -> None:
    with store.transaction() as tx:
        tx.add_requests([reported("r-1"), reported("r-2")])
        tx.apply_status_update(update("r-1", Status.IN_PROGRESS, T0 + minutes(5), "u-1"))
    with store.transaction() as tx:
        tx.take_down("r-1", marker=MARKER, media=True)
        tx.take_down("r-2", marker=MARKER, media=True)

    # Dated by the back-end's clock, after the status known but before the take-down: it is
    # the newest status, not a late one. So is a first status dated before the request
    # itself (a back-end clock running behind ours).
    with store.transaction() as tx:
        fixed = tx.apply_status_update(update("r-1", Status.FIXED, T0 + minutes(10), "u-2"))
        first = tx.apply_status_update(update("r-2", Status.IN_PROGRESS, T0 - minutes(1), "u-1"))

    assert fixed is not None and not fixed.history_only and fixed.status_changed
    assert first is not None and not first.history_only and first.status_changed
    request = store.get_request("r-1")
    assert request is not None and request.taken_down_at is not None
    assert (request.status, request.updated_at) == (Status.FIXED, T0 + minutes(10))
    # Recorded after the take-down, the status is the latest change an Open311 client sees.
    assert request.changed_at is not None and request.changed_at > request.taken_down_at
    assert request.modified_at == request.changed_at


def test_a_take_down_of_a_closed_request_does_not_postpone_forgetting_its_reporter(
    store: Store,
) -> None:
    contact = Reporter(email="jo.smith@example.org")
    with store.transaction() as tx:
        tx.add_request(reported("r-1", status=Status.FIXED, reporter=contact))
    with store.transaction() as tx:
        tx.take_down("r-1", marker=MARKER, media=True)
    cutoff = T0 + minutes(1)  # closed (last updated) before it; taken down after it

    found = store.closed_with_reporter(closed_before=cutoff, limit=9)
    with store.transaction() as tx:
        forgotten = tx.forget_reporters(found, closed_before=cutoff)

    assert found == forgotten == ["r-1"]
    request = store.get_request("r-1")
    assert request is not None and request.reporter == Reporter()
    assert request.taken_down_at is not None and request.taken_down_at > cutoff


ANSWER = "[answer removed]"
PLATE = "HH-AB 123, Jo Smith's car"


def test_a_take_down_replaces_the_named_answers_in_the_request_and_every_copy(
    store: Store,
) -> None:
    answers = {"PLATE": PLATE, "LANE": "carriageway", "OLD": ("kerb", "Jo's drive")}
    request = reported("r-1", attributes=answers)
    other = reported("r-2", attributes=answers)
    with store.transaction() as tx:
        tx.add_requests([request, other])
    published = queue_created(store, request)
    store.mark_sent([row.id for row in store.pending_outbox()])
    waiting, untouched = queue_created(store, request), queue_created(store, other)
    letter = Envelope(
        type=EventType.CREATED,
        subject="r-1",
        data=request.model_dump(mode="json"),
        correlationid="c",
    )
    with store.transaction() as tx:
        tx.record_dead_letter(
            instance="sap-roads",
            message_id="m-1",
            request_id="r-1",
            reason="x",
            envelope=letter.model_dump(mode="json"),
        )

    with store.transaction() as tx:
        done = tx.take_down(
            "r-1", marker=None, media=False, answers={"PLATE", "OLD", "NONE"}, answer_marker=ANSWER
        )
    with store.transaction() as tx:
        again = tx.take_down(
            "r-1", marker=None, media=False, answers={"PLATE", "OLD"}, answer_marker=ANSWER
        )

    assert done is not None and done.answers == ("OLD", "PLATE")
    assert not done.description and done.media == ()
    assert (done.events_waiting, done.events_published, done.dead_letters) == (1, 1, 1)
    assert again is not None and not again.changed
    # A list answer stays a list; the others are left as they were.
    expected = {"PLATE": ANSWER, "LANE": "carriageway", "OLD": (ANSWER,)}
    taken = store.get_request("r-1")
    assert taken is not None and taken.attributes == expected
    assert taken.description == WRITTEN and taken.media == (PHOTO,)
    stored = envelopes(store)
    for message_id in (published, waiting):
        data = stored[message_id]["data"]
        assert isinstance(data, dict) and data["attributes"] == {**expected, "OLD": [ANSWER]}
    assert PLATE in str(stored[untouched])
    with store._engine.connect() as conn:
        [kept] = conn.execute(sa.select(dead_letters.c.envelope)).scalars()
    assert kept["data"]["attributes"] == {**expected, "OLD": [ANSWER]}
    copies = str(stored[waiting]) + str(stored[published]) + str(kept)
    assert PLATE not in copies and "Jo's drive" not in copies
    kept_other = store.get_request("r-2")
    assert kept_other is not None and kept_other.attributes["PLATE"] == PLATE


def test_a_worker_recording_a_receipt_sees_answers_taken_down_meanwhile(store: Store) -> None:
    # Neither a description nor media: only an answer changes.
    with store.transaction() as tx:
        tx.add_requests([make_request("r-1", attributes={"PLATE": PLATE}), make_request("r-2")])
    read = store.get_requests(["r-1", "r-2"])
    with store.transaction() as tx:
        tx.take_down("r-1", marker=MARKER, media=True, answers={"PLATE"}, answer_marker=ANSWER)
        tx.take_down("r-2", marker=MARKER, media=True, answers={"PLATE"}, answer_marker=ANSWER)

    with store.transaction() as tx:
        changed = tx.changed_requests(read)

    assert set(changed) == {"r-1"}
    assert changed["r-1"].attributes == {"PLATE": ANSWER}
    assert changed["r-1"].taken_down_at is not None


def test_a_message_dead_lettered_after_the_take_down_is_kept_as_the_request_now_reads(
    store: Store,
) -> None:
    # The command or event was on the broker (a retry tier, a subscriber's queue) when the
    # request was taken down: it dies afterwards, still holding what was removed.
    request = reported("r-1", attributes={"PLATE": PLATE, "LANE": "carriageway"})
    with store.transaction() as tx:
        tx.add_request(request)
    on_the_broker = created_body(request)
    with store.transaction() as tx:
        tx.take_down("r-1", marker=MARKER, media=True, answers={"PLATE"}, answer_marker=ANSWER)
    taken = store.get_request("r-1")
    assert taken is not None and taken.taken_down_at is not None

    for message_id in ("m-new", "m-again"):
        with store.transaction() as tx:
            if message_id == "m-again":  # known, replayed, and dead again: its copy rewritten
                letter = tx.record_dead_letter(
                    instance="sap-roads",
                    message_id=message_id,
                    request_id="r-1",
                    reason="x",
                    envelope=None,
                )
                assert letter is not None
                tx.set_dead_letter_state(letter.id, DeadLetterState.REPLAYED)
        with store.transaction() as tx:
            tx.record_dead_letter(
                instance="sap-roads",
                message_id=message_id,
                request_id="r-1",
                reason="x",
                envelope=on_the_broker,
            )

    with store._engine.connect() as conn:
        rows = conn.execute(sa.select(dead_letters.c.message_id, dead_letters.c.envelope))
        kept = {message_id: envelope for message_id, envelope in rows}
    for message_id in ("m-new", "m-again"):
        data = kept[message_id]["data"]
        assert data["description"] == MARKER and data["media"] == []
        assert data["attributes"] == {"PLATE": ANSWER, "LANE": "carriageway"}
        assert data["taken_down_at"] == taken.taken_down_at.isoformat().replace("+00:00", "Z")
        assert WRITTEN not in str(data) and PLATE not in str(data) and DIGEST not in str(data)
    # A letter of another request, or no envelope, is kept as given.
    with store.transaction() as tx:
        tx.record_dead_letter(
            instance="sap-roads",
            message_id="m-other",
            request_id="r-2",
            reason="x",
            envelope=on_the_broker | {"subject": "r-2"},
        )
    with store._engine.connect() as conn:
        other = conn.execute(
            sa.select(dead_letters.c.envelope).where(dead_letters.c.message_id == "m-other")
        ).scalar_one()
    assert other["data"]["description"] == WRITTEN
