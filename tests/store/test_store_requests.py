"""Requests in and out of the store: round trips, filters, status updates, tokens, idempotency."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from store_factories import T0, make_request, minutes

from bus.store import (
    AlreadyExists,
    HistoryFull,
    InvalidData,
    RequestQuery,
    Store,
    UpdateConflict,
    _requests,
)
from schemas.model import (
    EVENT_HISTORY,
    BackendRef,
    Channel,
    Location,
    Media,
    Reporter,
    Status,
    StatusNote,
    StatusUpdate,
)


def full_request(request_id: str = "req-full") -> object:
    berlin = timezone(timedelta(hours=2))
    return make_request(
        request_id,
        status=Status.IN_PROGRESS,
        status_notes="crew assigned",
        description="Deep hole, call 555-123-4567",
        attributes={"depth": "12", "hazards": ("traffic", "water")},
        location=Location(
            lat=-33.86, long=151.2, address="1 Main St", address_id="A-1", zipcode="2000"
        ),
        reporter=Reporter(
            email="ann@example.org",
            first_name="Ann",
            last_name="Lee",
            phone="+61 2 5550 1234",
            device_id="dev-9",
            account_id="acc-7",
        ),
        media=(Media(url="https://x.test/m/1.jpg", content_type="image/jpeg", sha256="ab" * 32),),
        channel=Channel.MOBILE,
        agency="Roads",
        service_notice="within 5 days",
        requested_at=datetime(2026, 3, 1, 14, 0, tzinfo=berlin),
        updated_at=datetime(2026, 3, 1, 15, 0, 0, 123456, tzinfo=berlin),
        expected_at=datetime(2026, 3, 6, 9, 0, tzinfo=UTC),
        backend_refs=(BackendRef(adapter="sap-roads", reference="1000123", submitted_at=T0),),
        history=(
            StatusNote(status=Status.OPEN, at=T0, source="api"),
            StatusNote(
                status=Status.IN_PROGRESS,
                at=T0 + minutes(5),
                note="crew",
                source="sap",
                update_id="u-1",
                external_status_code="INPR",
                media_url="https://x/1",
            ),
        ),
    )


def test_request_with_every_field_round_trips_equal(store: Store) -> None:
    request = full_request()
    with store.transaction() as tx:
        tx.add_request(request)  # type: ignore[arg-type]

    loaded = store.get_request("req-full")

    assert loaded == request
    assert loaded is not None
    assert loaded.requested_at.tzinfo == UTC and loaded.updated_at.utcoffset() == timedelta(0)
    assert loaded.reporter.email == "ann@example.org"


def test_unknown_request_is_none(store: Store) -> None:
    assert store.get_request("nope") is None


def test_adding_a_known_id_again_raises_already_exists(store: Store) -> None:
    with store.transaction() as tx:
        tx.add_request(make_request("dup"))
    with pytest.raises(AlreadyExists), store.transaction() as tx:
        tx.add_request(make_request("dup"))


def _seed(store: Store) -> None:
    rows = [
        make_request(
            "a",
            requested_at=T0,
            updated_at=T0,
            service_code="pothole",
            location=Location(lat=10, long=10),
        ),
        make_request(
            "b",
            requested_at=T0 + minutes(1),
            updated_at=T0 + minutes(50),
            service_code="graffiti",
            status=Status.CLOSED,
            location=Location(lat=20, long=20),
        ),
        make_request(
            "c",
            requested_at=T0 + minutes(2),
            updated_at=T0 + minutes(2),
            jurisdiction="shelbyville",
            location=Location(lat=10, long=179),
        ),
        make_request(
            "d",
            requested_at=T0 + minutes(2),
            updated_at=T0 + minutes(3),
            status=Status.FIXED,
            location=Location(address="no point"),
        ),
    ]
    with store.transaction() as tx:
        for row in rows:
            tx.add_request(row)


FILTER_CASES = [
    (RequestQuery(), ["d", "c", "b", "a"]),  # c and d requested at once: by id
    (RequestQuery(ids=["a", "d"]), ["d", "a"]),
    (RequestQuery(service_codes=["graffiti"]), ["b"]),
    (RequestQuery(jurisdiction="shelbyville"), ["c"]),
    (RequestQuery(statuses=[Status.CLOSED, Status.FIXED]), ["d", "b"]),
    (RequestQuery(statuses=[]), []),
    (RequestQuery(requested_from=T0 + minutes(1), requested_to=T0 + minutes(2)), ["d", "c", "b"]),
    (RequestQuery(updated_after=T0 + minutes(2), updated_before=T0 + minutes(50)), ["d"]),
    (RequestQuery(bbox=(15, 15, 5, 5)), ["a"]),
    (RequestQuery(bbox=(25, -170, 5, 170)), ["c"]),  # crosses the antimeridian
    (RequestQuery(offset=1, limit=2), ["c", "b"]),
]


def test_find_requests_filters_newest_first_by_requested_time_then_id(store: Store) -> None:
    _seed(store)  # one database for all cases: creating one per case costs more than the test
    for query, expected in FILTER_CASES:
        assert [r.id for r in store.find_requests(query)] == expected, query


def test_find_requests_compares_times_across_zones(store: Store) -> None:
    _seed(store)
    tokyo = timezone(timedelta(hours=9))
    found = store.find_requests(RequestQuery(requested_to=(T0 + minutes(1)).astimezone(tokyo)))
    assert [r.id for r in found] == ["b", "a"]


def test_status_update_sets_status_time_and_history_and_a_repeat_is_harmless(store: Store) -> None:
    with store.transaction() as tx:
        tx.add_request(make_request("r"))
    update = StatusUpdate(
        request_id="r",
        status=Status.CLOSED,
        at=T0 + minutes(10),
        update_id="u-1",
        source="sap-roads",
        note="filled",
        external_status_code="DONE",
    )

    with store.transaction() as tx:
        updated = tx.apply_status_update(update)
    with store.transaction() as tx:
        repeated = tx.apply_status_update(update.model_copy(update={"status": Status.OPEN}))

    assert updated is not None and updated.request.status is Status.CLOSED
    assert repeated is None
    stored = store.get_request("r")
    assert stored is not None
    assert (stored.status, stored.updated_at, stored.status_notes) == (
        Status.CLOSED,
        T0 + minutes(10),
        "filled",
    )
    assert [(n.update_id, n.external_status_code) for n in stored.history] == [("u-1", "DONE")]
    assert store.status_updates(T0, T0 + minutes(10)) == [update]
    assert store.status_updates(T0 + minutes(11), T0 + minutes(20)) == []


def status_update(update_id: str, status: Status, at: datetime, **fields: object) -> StatusUpdate:
    return StatusUpdate.model_validate(
        {"request_id": "r", "status": status, "at": at, "update_id": update_id, "source": "x"}
        | fields
    )


def test_c22_an_update_older_than_the_current_status_is_kept_as_history_only(
    store: Store,
) -> None:
    with store.transaction() as tx:
        tx.add_request(make_request("r"))
    current = status_update("u1", Status.IN_PROGRESS, T0 + minutes(30), note="crew sent")
    late = status_update("u6", Status.CLOSED, T0 + minutes(10), note="filled")
    with store.transaction() as tx:
        applied = tx.apply_status_update(current)
    with store.transaction() as tx:
        kept = tx.apply_status_update(late)

    assert applied is not None and (applied.history_only, applied.status_changed) == (False, True)
    assert kept is not None and (kept.history_only, kept.status_changed) == (True, False)
    assert kept.previous_status is Status.IN_PROGRESS
    stored = store.get_request("r")
    assert stored is not None and kept.request == stored
    assert (stored.status, stored.updated_at, stored.status_notes) == (
        Status.IN_PROGRESS,
        T0 + minutes(30),
        "crew sent",
    )
    # The history is in time order, the late update before the one it came after.
    assert [n.update_id for n in stored.history] == ["u6", "u1"]
    # GET /servicerequestupdates lists updates by their own time, the late one first.
    assert [u.update_id for u in store.status_updates(T0, T0 + minutes(60))] == ["u6", "u1"]

    # An update at the very same instant as the current status applies (same-second updates).
    same_time = status_update("u7", Status.FIXED, T0 + minutes(30))
    with store.transaction() as tx:
        fixed = tx.apply_status_update(same_time)
    assert fixed is not None and (fixed.history_only, fixed.status_changed) == (False, True)
    assert fixed.request.status is Status.FIXED


def test_an_update_dated_before_the_request_applies_while_no_update_has_been_applied(
    store: Store,
) -> None:
    # A back-end clock behind civicbus's: its first status is dated before the request.
    with store.transaction() as tx:
        tx.add_request(make_request("r"))
    first = status_update("u1", Status.FOR_TRIAGE, T0 - minutes(2))
    with store.transaction() as tx:
        applied = tx.apply_status_update(first)
    assert applied is not None and not applied.history_only
    assert (applied.request.status, applied.request.updated_at) == (
        Status.FOR_TRIAGE,
        T0 - minutes(2),
    )
    # From then on its own times order its updates.
    with store.transaction() as tx:
        earlier = tx.apply_status_update(status_update("u2", Status.CLOSED, T0 - minutes(3)))
        later = tx.apply_status_update(status_update("u3", Status.IN_PROGRESS, T0 - minutes(1)))
    assert earlier is not None and earlier.history_only
    assert later is not None and not later.history_only
    assert later.request.status is Status.IN_PROGRESS


def test_the_current_status_again_at_a_later_time_makes_an_older_update_late(
    store: Store,
) -> None:
    # Pushes out of order: in progress at 10, fixed at 20 (delivered last), in progress again at
    # 30 (reopened). The repeat says nothing new, but it dates the current status.
    with store.transaction() as tx:
        tx.add_request(make_request("r"))
    with store.transaction() as tx:
        assert tx.apply_status_update(status_update("u1", Status.IN_PROGRESS, T0 + minutes(10)))
        repeat = tx.apply_status_update(status_update("u3", Status.IN_PROGRESS, T0 + minutes(30)))
        older = tx.apply_status_update(status_update("u2", Status.FIXED, T0 + minutes(20)))
    assert repeat is None  # no history entry, no event
    assert older is not None and older.history_only and not older.status_changed
    stored = store.get_request("r")
    assert stored is not None
    assert (stored.status, stored.updated_at) == (Status.IN_PROGRESS, T0 + minutes(30))
    assert [n.update_id for n in stored.history] == ["u1", "u2"]
    # A repeat dated before the current status leaves its time alone.
    with store.transaction() as tx:
        assert (
            tx.apply_status_update(status_update("u4", Status.IN_PROGRESS, T0 + minutes(25)))
            is None
        )
    stored = store.get_request("r")
    assert stored is not None and stored.updated_at == T0 + minutes(30)


def test_the_current_status_again_with_a_note_media_or_code_is_recorded_as_no_change(
    store: Store,
) -> None:
    with store.transaction() as tx:
        tx.add_request(make_request("r"))
    says_something: list[dict[str, object]] = [
        {"note": "crew booked"},
        {"media_url": "https://example.org/a.jpg"},
        {"external_status_code": "NEW"},
    ]
    for n, fields in enumerate(says_something, start=1):
        with store.transaction() as tx:
            recorded = tx.apply_status_update(
                status_update(f"u{n}", Status.OPEN, T0 + minutes(n), **fields)
            )
        assert recorded is not None and recorded.previous_status is Status.OPEN
        assert (recorded.status_changed, recorded.history_only) == (False, False)
        assert recorded.request.updated_at == T0 + minutes(n)
    with store.transaction() as tx:
        assert tx.apply_status_update(status_update("u9", Status.OPEN, T0 + minutes(9))) is None

    stored = store.get_request("r")
    assert stored is not None and stored.status_notes == "crew booked"
    assert [n.update_id for n in stored.history] == ["u1", "u2", "u3"]


def test_c22_an_update_id_repeated_with_other_content_is_refused_when_asked(
    store: Store,
) -> None:
    with store.transaction() as tx:
        tx.add_request(make_request("r"))
    first = StatusUpdate(
        request_id="r",
        status=Status.IN_PROGRESS,
        at=T0 + minutes(10),
        update_id="u-1",
        source="partner-a",
        note="crew sent",
        external_status_code="WIP",
        media_url="https://example.org/a.jpg",
    )
    closing = StatusUpdate(
        request_id="r", status=Status.CLOSED, at=T0 + minutes(20), update_id="u-2", source="x"
    )
    with store.transaction() as tx:
        assert tx.apply_status_update(first, refuse_conflicts=True) is not None
    with store.transaction() as tx:
        assert tx.apply_status_update(closing, refuse_conflicts=True) is not None
    tokyo = timezone(timedelta(hours=9))
    # The same instant in another zone, from another sender: the same update, a harmless repeat.
    same = first.model_copy(update={"at": first.at.astimezone(tokyo), "source": "partner-b"})
    with store.transaction() as tx:
        assert tx.apply_status_update(same, refuse_conflicts=True) is None

    changes: list[dict[str, object]] = [
        {"status": Status.OPEN},
        {"at": first.at + timedelta(seconds=1)},
        {"note": "crew sent!"},
        {"note": None},
        {"media_url": None},
        {"external_status_code": "DONE"},
        # The status the request has now, without a note: "nothing new" must not hide it.
        {"status": Status.CLOSED, "note": None, "media_url": None},
    ]
    for change in changes:
        with pytest.raises(UpdateConflict), store.transaction() as tx:
            tx.apply_status_update(first.model_copy(update=change), refuse_conflicts=True)
        # Not asked to refuse (the poller), the same repeat is ignored as before.
        with store.transaction() as tx:
            assert tx.apply_status_update(first.model_copy(update=change)) is None

    stored = store.get_request("r")
    assert stored is not None and stored.status is Status.CLOSED
    assert [(n.update_id, n.status, n.note) for n in stored.history] == [
        ("u-1", Status.IN_PROGRESS, "crew sent"),
        ("u-2", Status.CLOSED, None),
    ]


def test_status_update_for_an_unknown_request_raises_key_error_and_writes_nothing(
    store: Store,
) -> None:
    update = StatusUpdate(
        request_id="ghost", status=Status.CLOSED, at=T0, update_id="u", source="x"
    )
    with pytest.raises(KeyError), store.transaction() as tx:
        tx.audit(actor="test", action="status_changed", request_id="ghost")
        tx.apply_status_update(update)
    assert store.audit_trail("ghost") == []


def test_backend_ref_is_idempotent_per_adapter(store: Store) -> None:
    with store.transaction() as tx:
        tx.add_request(make_request("r"))
    for reference in ("SAP-1", "SAP-1", "SAP-2"):
        with store.transaction() as tx:
            tx.add_backend_ref("r", "sap-roads", reference, T0)
    with store.transaction() as tx:
        tx.add_backend_ref("r", "email", "msg-1", T0 + minutes(1))

    stored = store.get_request("r")
    assert stored is not None
    assert [(b.adapter, b.reference) for b in stored.backend_refs] == [
        ("sap-roads", "SAP-1"),
        ("email", "msg-1"),
    ]


def test_requests_are_found_by_a_back_ends_reference_among_the_adapters_asked(
    store: Store,
) -> None:
    with store.transaction() as tx:
        for request_id in ("a", "b", "c"):
            tx.add_request(make_request(request_id))
        tx.add_backend_ref("a", "sap-roads", "1000123", T0)
        tx.add_backend_ref("b", "parks", "1000123", T0)
        tx.add_backend_ref("c", "parks", "P-7", T0)

    assert store.holding_reference("1000123", ["sap-roads", "parks", "email"]) == [
        ("b", "parks"),
        ("a", "sap-roads"),
    ]
    assert store.holding_reference("1000123", ["sap-roads"]) == [("a", "sap-roads")]
    assert store.holding_reference("P-7", []) == []
    assert store.holding_reference("nothing", ["parks"]) == []


def test_batch_token_resolves_to_its_request(store: Store) -> None:
    with store.transaction() as tx:
        tx.add_request(make_request("r"), token="tok-1")
    assert store.resolve_token("tok-1") == "r"
    assert store.resolve_token("tok-unknown") is None


def test_batch_token_resolves_only_in_its_requests_jurisdiction(store: Store) -> None:
    with store.transaction() as tx:
        tx.add_request(make_request("r", jurisdiction="springfield"), token="tok-1")
    assert store.resolve_token("tok-1", jurisdiction="springfield") == "r"
    assert store.resolve_token("tok-1", jurisdiction="shelbyville") is None


def test_idempotent_response_is_remembered_per_client_and_key(store: Store) -> None:
    client, _ = store.add_client("app")
    other, _ = store.add_client("other")
    answer = {"service_request_id": "r", "nested": [1, {"a": None}]}
    with store.transaction() as tx:
        tx.add_request(make_request("r"))
        tx.save_idempotent_response(client.id, "key-1", answer)

    assert store.idempotent_response(client.id, "key-1") == answer
    assert store.idempotent_response(other.id, "key-1") is None
    assert store.idempotent_response(client.id, "key-2") is None


def test_a_raced_idempotency_key_rolls_back_the_second_request(store: Store) -> None:
    client, _ = store.add_client("app")
    with store.transaction() as tx:
        tx.add_request(make_request("first"))
        tx.save_idempotent_response(client.id, "k", {"id": "first"})
    with pytest.raises(AlreadyExists), store.transaction() as tx:
        tx.add_request(make_request("second"))
        tx.save_idempotent_response(client.id, "k", {"id": "second"})
    assert store.get_request("second") is None
    assert store.idempotent_response(client.id, "k") == {"id": "first"}


def test_watermark_is_kept_per_instance(store: Store) -> None:
    assert store.watermark("parks") is None
    with store.transaction() as tx:
        tx.set_watermark("parks", "2026-03-01T12:00:00Z")
    with store.transaction() as tx:
        tx.set_watermark("parks", "cursor-2")
        tx.set_watermark("sap", None)
    assert store.watermark("parks") == "cursor-2"
    assert store.watermark("sap") is None


def test_a_naive_datetime_is_refused_and_nothing_is_written(store: Store) -> None:
    with pytest.raises(InvalidData, match="timezone-aware"), store.transaction() as tx:
        tx.add_request(make_request("r"))
        tx.add_backend_ref("r", "sap", "1", datetime(2026, 1, 1))
    assert store.get_request("r") is None


def test_a_datetime_whose_utc_form_is_out_of_range_is_refused_and_nothing_is_written(
    store: Store,
) -> None:
    # 0001-01-01T00:00+01:00 is year 0 in UTC, which no datetime holds (OverflowError).
    year_zero = datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=1)))
    with pytest.raises(InvalidData), store.transaction() as tx:
        tx.add_request(make_request("r"))
        tx.add_backend_ref("r", "sap", "1", year_zero)
    assert store.get_request("r") is None
    with pytest.raises(InvalidData), store.transaction() as tx:
        tx.add_requests([make_request("r").model_copy(update={"requested_at": year_zero})])
    assert store.get_request("r") is None


def test_a_requests_document_and_reporter_row_are_what_its_model_dumps() -> None:
    from bus.store._requests import _APART, _REPORTER_DUMP, _document
    from schemas.model import Reporter
    from tests.store.store_factories import make_request

    request = make_request(
        "req-dump", reporter=Reporter(email="someone@example.org", first_name="Ana")
    )
    assert _document(request) == request.model_dump_json(exclude=_APART)
    assert _REPORTER_DUMP.to_python(request.reporter) == request.reporter.model_dump()


def test_updated_after_finds_a_status_its_back_end_dated_before_the_clients_last_poll(
    store: Store,
) -> None:
    # A back-end whose clock runs an hour behind civicbus's (or whose feed gives the change an
    # hour late): its status is dated before a time an Open311 client has already polled past.
    created = datetime.now(UTC)
    with store.transaction() as tx:
        tx.add_request(make_request("r", requested_at=created, updated_at=created))
    polled_at = datetime.now(UTC)
    assert [r.id for r in store.find_requests(RequestQuery(updated_after=polled_at))] == []

    with store.transaction() as tx:
        tx.apply_status_update(status_update("u1", Status.IN_PROGRESS, created - minutes(60)))

    (found,) = store.find_requests(RequestQuery(updated_after=polled_at))
    assert found.updated_at == created - minutes(60)  # the status keeps the sender's time
    assert found.changed_at is not None and found.modified_at == found.changed_at > polled_at
    assert store.find_requests(RequestQuery(updated_before=polled_at)) == []


def test_a_late_update_moves_changed_at_and_a_repeat_that_only_dates_the_status_does_not(
    store: Store,
) -> None:
    with store.transaction() as tx:
        tx.add_request(make_request("r"))  # requested and changed at T0
    with store.transaction() as tx:
        tx.apply_status_update(status_update("u1", Status.IN_PROGRESS, T0 + minutes(30)))
    applied = store.get_request("r")
    assert applied is not None and applied.changed_at is not None
    assert applied.changed_at > T0 + minutes(30)  # recorded now, on civicbus's clock

    with store.transaction() as tx:
        late = tx.apply_status_update(status_update("u2", Status.CLOSED, T0 + minutes(10)))
    assert late is not None and late.history_only
    assert late.request.changed_at is not None and late.request.changed_at > applied.changed_at
    assert late.request.updated_at == T0 + minutes(30)

    with store.transaction() as tx:
        repeat = tx.apply_status_update(status_update("u3", Status.IN_PROGRESS, T0 + minutes(40)))
    assert repeat is None
    stored = store.get_request("r")
    assert stored is not None and stored.updated_at == T0 + minutes(40)
    assert stored.changed_at == late.request.changed_at  # nothing an Open311 read shows moved


def test_a_request_holding_the_most_updates_refuses_more_and_events_carry_the_latest(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A sender repeating itself in a loop: the history stops growing at the cap, and each
    # event copies only its latest updates (with the whole of it, each event outgrew the last).
    monkeypatch.setattr(_requests, "MAX_HISTORY", 30)
    with store.transaction() as tx:
        tx.add_request(make_request("r"))
    statuses = (Status.IN_PROGRESS, Status.INVESTIGATING)
    for n in range(30):
        with store.transaction() as tx:
            update = status_update(f"u{n}", statuses[n % 2], T0 + minutes(n), note=f"note {n}")
            assert tx.apply_status_update(update) is not None
    full = pytest.raises(HistoryFull, match="request r has 30 status updates")
    with full, store.transaction() as tx:
        tx.apply_status_update(status_update("u30", Status.CLOSED, T0 + minutes(30)))
    stored = store.get_request("r")
    assert stored is not None and len(stored.history) == 30 and stored.status is not Status.CLOSED
    carried = stored.public_data()["history"]
    assert len(carried) == EVENT_HISTORY == 20
    assert [n["update_id"] for n in carried] == [f"u{n}" for n in range(10, 30)]
