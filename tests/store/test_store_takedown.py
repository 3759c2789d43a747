"""A take-down in the store: the request's description and media go from its document and from
every outbox event and dead letter about it, published or not; other requests keep theirs."""

from __future__ import annotations

import sqlalchemy as sa
from store_factories import make_request

from bus.store import Store
from bus.store._tables import dead_letters, outbox
from schemas.events import Envelope, EventType
from schemas.model import Media, ServiceRequest, StatusUpdate

MARKER = "[description removed]"
WRITTEN = "Car HH-AB 123 of my neighbour Jo Smith blocks the drain"
DIGEST = "ab" * 32
PHOTO = Media(
    url=f"https://311.example/media/{DIGEST}.jpg", content_type="image/jpeg", sha256=DIGEST
)


def reported(request_id: str, **changes: object) -> ServiceRequest:
    return make_request(request_id, description=WRITTEN, media=(PHOTO,), **changes)


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
    for message_id in (published, waiting):
        data = stored[message_id]["data"]
        assert isinstance(data, dict)
        assert data["description"] == MARKER and data["media"] == []
        assert data["service_code"] == "pothole"  # the rest of the event is as it was
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
    body = Envelope(
        type=EventType.CREATED,
        subject="r-1",
        data=request.model_dump(mode="json"),
        correlationid="c",
    ).model_dump(mode="json")
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
