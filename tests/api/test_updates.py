"""Status updates: POST and GET /servicerequestupdates (C-21..C-23) and bus.status."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone

import httpx
import pytest
from defusedxml import ElementTree as SafeET

from bus.api import open311_reads
from bus.api.context import ApiContext
from bus.bootstrap import Runtime
from bus.status import record_status_update
from schemas import open311_render as render
from schemas.events import Envelope, EventType
from schemas.model import Status, StatusUpdate
from tests.api.conftest import SHELBYVILLE, SPRINGFIELD, pothole_form

Create = Callable[..., httpx.Response]


def new_id(create: Create) -> str:
    request_id: str = create().json()[0]["service_request_id"]
    return request_id


def post_update(
    http: httpx.Client,
    api_key: str,
    fmt: str = "json",
    headers: dict[str, str] | None = None,
    **fields: str,
) -> httpx.Response:
    data = {
        "api_key": api_key,
        "update_id": "U-1",
        "status": "IN_PROGRESS",
        "updated_datetime": datetime.now(UTC).isoformat(),
        "description": "crew dispatched",
        **fields,
    }
    return http.post(f"/servicerequestupdates.{fmt}", data=data, headers=headers)


def test_c22_posted_update_changes_status_history_and_emits_events(
    http: httpx.Client, desk_key: str, create: Create, runtime: Runtime
) -> None:
    request_id = new_id(create)
    response = post_update(
        http, desk_key, service_request_id=request_id, external_status_code="WIP"
    )
    assert response.status_code == 200, response.text
    (doc,) = response.json()
    assert doc["update_id"] == "U-1" and doc["status"] == "IN_PROGRESS"
    params = {"jurisdiction_id": SPRINGFIELD, "extensions": "true"}
    (read,) = http.get(f"/requests/{request_id}.json", params=params).json()
    assert read["status"] == "open"
    assert read["extended_attributes"]["status"] == "in_progress"
    assert read["notes"][-1]["description"] == "crew dispatched"
    assert read["notes"][-1]["external_status_code"] == "WIP"
    events = [r for r in runtime.store.pending_outbox(10_000) if r.envelope.subject == request_id]
    assert [(e.envelope.type.value, e.routing_key) for e in events] == [
        ("civicbus.request.created", "request.created.POTHOLE"),
        ("civicbus.request.status_changed", "request.status_changed.in_progress"),
    ]
    assert [a.action for a in runtime.store.audit_trail(request_id)] == [
        "accepted",
        "status_changed",
    ]


def test_c22_repeating_an_update_id_is_harmless(
    http: httpx.Client, desk_key: str, create: Create, runtime: Runtime
) -> None:
    request_id = new_id(create)
    # The same update sent twice, its time included (a different time is other content).
    fields = {"update_id": "same", "updated_datetime": datetime.now(UTC).isoformat()}
    first = post_update(http, desk_key, service_request_id=request_id, **fields)
    again = post_update(http, desk_key, service_request_id=request_id, **fields)
    assert first.status_code == again.status_code == 200
    assert again.json() == first.json()
    stored = runtime.store.get_request(request_id)
    assert stored is not None
    assert [n.update_id for n in stored.history].count("same") == 1
    events = [r for r in runtime.store.pending_outbox(10_000) if r.envelope.subject == request_id]
    assert len(events) == 2  # created + one status_changed


@pytest.mark.parametrize("fmt", ["json", "xml"])
def test_c22_repeating_an_update_id_with_other_content_is_409_and_records_nothing(
    http: httpx.Client, desk_key: str, create: Create, runtime: Runtime, fmt: str
) -> None:
    request_id = new_id(create)
    at = datetime.now(UTC).replace(microsecond=0)
    fields = {"service_request_id": request_id, "update_id": "U-409", "status": "CLOSED"}
    closed = post_update(http, desk_key, fmt, **fields, updated_datetime=at.isoformat())
    assert closed.status_code == 200, closed.text

    # An exact repeat still answers as before, whatever zone its time is written in.
    paris = timezone(timedelta(hours=1))
    again = post_update(
        http, desk_key, fmt, **fields, updated_datetime=at.astimezone(paris).isoformat()
    )
    assert again.status_code == 200, again.text

    reopen = post_update(
        http, desk_key, fmt, **{**fields, "status": "REOPEN"}, updated_datetime=at.isoformat()
    )
    assert reopen.status_code == 409
    expected = (
        f"update_id 'U-409' was already recorded for service_request_id {request_id!r} with "
        "other content (status, updated_datetime, description, media_url or "
        "external_status_code); send a new update with a new update_id"
    )
    if fmt == "json":
        assert reopen.headers["content-type"] == "application/json; charset=utf-8"
        assert reopen.json() == [{"code": 409, "description": expected}]
    else:
        assert reopen.headers["content-type"] == "text/xml; charset=utf-8"
        root = SafeET.fromstring(reopen.content)
        assert [(e.findtext("code"), e.findtext("description")) for e in root] == [
            ("409", expected)
        ]
    for change in (
        {"updated_datetime": (at + timedelta(seconds=1)).isoformat()},
        {"updated_datetime": at.isoformat(), "description": "other words"},
        {"updated_datetime": at.isoformat(), "media_url": "https://example.org/x.jpg"},
    ):
        assert post_update(http, desk_key, fmt, **{**fields, **change}).status_code == 409

    stored = runtime.store.get_request(request_id)
    assert stored is not None and stored.status is Status.CLOSED
    assert [n.update_id for n in stored.history].count("U-409") == 1
    events = [r for r in runtime.store.pending_outbox(10_000) if r.envelope.subject == request_id]
    assert len(events) == 3  # created, status_changed, closed: nothing for the refused repeats


def test_c22_an_update_id_repeated_as_the_current_status_without_notes_is_still_409(
    http: httpx.Client, desk_key: str, create: Create
) -> None:
    request_id = new_id(create)
    first = post_update(http, desk_key, service_request_id=request_id, update_id="U-a")
    later = post_update(
        http, desk_key, service_request_id=request_id, update_id="U-b", status="CLOSED"
    )
    assert first.status_code == later.status_code == 200
    # U-a again, as the CLOSED the request now has, with no description: says nothing new,
    # yet U-a was recorded as IN_PROGRESS with a description.
    again = post_update(
        http,
        desk_key,
        service_request_id=request_id,
        update_id="U-a",
        status="CLOSED",
        description="",
    )
    assert again.status_code == 409, again.text


NOT_ALLOWED = (
    "api_key may not post status updates: client 'test-app' may create and read requests "
    "only; an operator of this civicbus grants it with `civicbus clients allow-updates test-app`"
)


@pytest.mark.parametrize("fmt", ["json", "xml"])
def test_c22_a_key_not_allowed_to_post_updates_is_403_saying_how_to_grant_it(
    http: httpx.Client, api_key: str, create: Create, runtime: Runtime, fmt: str
) -> None:
    request_id = new_id(create)
    before = runtime.store.get_request(request_id)

    refused = post_update(http, api_key, fmt, service_request_id=request_id, status="CLOSED")

    assert refused.status_code == 403
    if fmt == "json":
        assert refused.json() == [{"code": 403, "description": NOT_ALLOWED}]
    else:
        root = SafeET.fromstring(refused.content)
        assert [(e.findtext("code"), e.findtext("description")) for e in root] == [
            ("403", NOT_ALLOWED)
        ]
    assert runtime.store.get_request(request_id) == before  # not closed, no note
    # Refused before the request is looked up: such a key does not learn which ids exist.
    unknown = post_update(http, api_key, fmt, service_request_id="01ARZ3NDEKTSV4RRFFQ69G5FAV")
    assert unknown.status_code == 403
    # Creating and reading are unchanged for it.
    assert create().status_code == 200
    read = http.get(f"/requests/{request_id}.{fmt}", params={"jurisdiction_id": SPRINGFIELD})
    assert read.status_code == 200


def test_c22_a_change_of_update_permission_holds_from_the_next_update(
    http: httpx.Client, create: Create, runtime: Runtime
) -> None:
    _, key = runtime.store.add_client("changing-desk", may_post_updates=True)
    request_id = new_id(create)
    # A create remembers the client in the API's cache: updates must not go by that copy.
    created = http.post(
        "/requests.json", data={**pothole_form(key), "description": "via the desk's key"}
    )
    assert created.status_code == 200, created.text

    def update(n: int) -> httpx.Response:
        return post_update(http, key, service_request_id=request_id, update_id=f"U-perm-{n}")

    assert update(1).status_code == 200
    assert runtime.store.allow_client_updates("changing-desk", False) is True
    denied = update(2)
    assert denied.status_code == 403 and "may not post status updates" in denied.text
    assert http.post("/requests.json", data=pothole_form(key)).status_code == 200
    assert runtime.store.allow_client_updates("changing-desk", True) is True
    assert update(3).status_code == 200
    request = runtime.store.get_request(request_id)
    assert request is not None
    assert [n.update_id for n in request.history if n.update_id] == ["U-perm-1", "U-perm-3"]


def test_c22_the_409_of_a_conflicting_update_is_in_the_openapi_document(
    http: httpx.Client,
) -> None:
    document = http.get("/../../openapi.json").json()
    operation = document["paths"]["/open311/v2/servicerequestupdates.{fmt}"]["post"]
    assert "409" in operation["responses"]
    assert "application/json" in operation["responses"]["409"]["content"]
    # As is a 403 for a key not allowed to post updates, and how it is granted.
    forbidden = operation["responses"]["403"]["description"]
    assert "not allowed to post status updates" in forbidden
    assert "civicbus clients allow-updates NAME" in forbidden


def test_c22_an_update_older_than_the_current_status_is_history_only(
    http: httpx.Client, desk_key: str, create: Create, runtime: Runtime
) -> None:
    request_id = new_id(create)
    now = datetime.now(UTC)
    current = post_update(
        http,
        desk_key,
        service_request_id=request_id,
        update_id="u1",
        updated_datetime=now.isoformat(),
    )
    late_at = now - timedelta(minutes=30)
    late = post_update(
        http,
        desk_key,
        service_request_id=request_id,
        update_id="u6",
        status="CLOSED",
        description="filled",
        updated_datetime=late_at.isoformat(),
    )
    assert current.status_code == late.status_code == 200, late.text

    params = {"jurisdiction_id": SPRINGFIELD, "extensions": "true"}
    (read,) = http.get(f"/requests/{request_id}.json", params=params).json()
    assert (read["status"], read["extended_attributes"]["status"]) == ("open", "in_progress")
    assert read["status_notes"] == "crew dispatched"
    # updated_datetime: when civicbus recorded the latest change (the late note), not the
    # sender's time of the current status.
    stored = runtime.store.get_request(request_id)
    assert stored is not None and stored.changed_at is not None
    assert stored.changed_at > now > stored.requested_at
    assert read["updated_datetime"] == render.iso(stored.changed_at)
    window = {
        "start_date": (now - timedelta(hours=1)).isoformat(),
        "end_date": (now + timedelta(minutes=5)).isoformat(),
    }
    listed = http.get("/servicerequestupdates.json", params=window).json()
    assert [
        (u["update_id"], u["status"]) for u in listed if u["service_request_id"] == request_id
    ] == [("u6", "CLOSED"), ("u1", "IN_PROGRESS")]  # in the order they happened

    events = [r for r in runtime.store.pending_outbox(10_000) if r.envelope.subject == request_id]
    assert [e.routing_key for e in events] == [
        "request.created.POTHOLE",
        "request.status_changed.in_progress",
        "request.noted.in_progress",  # the history changed: subscribers' copies follow
    ]
    noted = events[-1].envelope
    assert noted.data["status"] == "in_progress"
    # The history in time order too: the late update before the current status.
    assert [n["update_id"] for n in noted.data["history"]] == ["u6", "u1"]
    audit = runtime.store.audit_trail(request_id)
    assert [a.action for a in audit] == ["accepted", "status_changed", "status_history"]
    assert audit[-1].message_id == noted.id
    assert audit[-1].details["recorded_as"] == "history only: older than the current status"
    assert (audit[-1].details["update_id"], audit[-1].details["status"]) == ("u6", "closed")


def test_c22_the_current_status_with_a_new_description_publishes_noted_not_status_changed(
    http: httpx.Client, desk_key: str, create: Create, runtime: Runtime
) -> None:
    request_id = new_id(create)
    first = post_update(http, desk_key, service_request_id=request_id, update_id="U-a")
    again = post_update(
        http, desk_key, service_request_id=request_id, update_id="U-b", description="crew on site"
    )
    assert first.status_code == again.status_code == 200, again.text

    params = {"jurisdiction_id": SPRINGFIELD, "extensions": "true"}
    (read,) = http.get(f"/requests/{request_id}.json", params=params).json()
    assert read["status_notes"] == "crew on site"
    assert [n["description"] for n in read["notes"]] == ["crew dispatched", "crew on site"]
    events = [r for r in runtime.store.pending_outbox(10_000) if r.envelope.subject == request_id]
    assert [r.routing_key for r in events] == [
        "request.created.POTHOLE",
        "request.status_changed.in_progress",
        "request.noted.in_progress",
    ]
    assert events[-1].envelope.data["status_notes"] == "crew on site"
    assert [a.action for a in runtime.store.audit_trail(request_id)] == [
        "accepted",
        "status_changed",
        "status_noted",
    ]


def test_c23_closing_status_is_closed_in_core_and_emits_closed_event(
    http: httpx.Client, desk_key: str, create: Create, runtime: Runtime
) -> None:
    request_id = new_id(create)
    response = post_update(
        http, desk_key, service_request_id=request_id, status="FIXED", update_id="U-fix"
    )
    assert response.status_code == 200, response.text
    (read,) = http.get(
        f"/requests/{request_id}.json", params={"jurisdiction_id": SPRINGFIELD}
    ).json()
    assert read["status"] == "closed"
    keys = [
        r.routing_key
        for r in runtime.store.pending_outbox(10_000)
        if r.envelope.subject == request_id
    ]
    assert keys == [
        "request.created.POTHOLE",
        "request.status_changed.fixed",
        "request.closed.fixed",
    ]


def test_c22_update_errors(http: httpx.Client, desk_key: str, create: Create) -> None:
    request_id = new_id(create)
    no_key = post_update(http, "", service_request_id=request_id)
    assert no_key.status_code == 403
    unknown = post_update(http, desk_key, service_request_id="01ARZ3NDEKTSV4RRFFQ69G5FAV")
    assert unknown.status_code == 404
    bad = post_update(
        http,
        desk_key,
        service_request_id=request_id,
        status="MELTED",
        updated_datetime="2026-01-01",
    )
    assert bad.status_code == 400
    texts = [e["description"] for e in bad.json()]
    assert texts[0].startswith("status: 'MELTED' is not one of")
    assert texts[1] == (
        "updated_datetime: '2026-01-01' is a date alone: give a time and a zone too "
        "(e.g. 2026-01-01T00:00:00Z)"
    )


@pytest.mark.parametrize("fmt", ["json", "xml"])
def test_c22_an_update_sent_as_json_is_415_naming_the_form_types(
    http: httpx.Client, desk_key: str, create: Create, fmt: str
) -> None:
    update = {
        "api_key": desk_key,
        "service_request_id": new_id(create),
        "update_id": "U-json",
        "status": "CLOSED",
        "updated_datetime": datetime.now(UTC).isoformat(),
    }
    response = http.post(f"/servicerequestupdates.{fmt}", json=update)
    assert response.status_code == 415
    expected = (
        "Content-Type 'application/json' is not accepted: send the form as "
        "application/x-www-form-urlencoded or multipart/form-data"
    )
    if fmt == "json":
        assert response.json() == [{"code": 415, "description": expected}]
    else:
        root = SafeET.fromstring(response.content)
        assert [e.findtext("description") for e in root] == [expected]


def test_c22_an_update_dated_in_the_future_is_400_and_a_little_clock_drift_is_not(
    http: httpx.Client, desk_key: str, create: Create, runtime: Runtime
) -> None:
    request_id = new_id(create)
    future = post_update(
        http,
        desk_key,
        service_request_id=request_id,
        update_id="U-2099",
        updated_datetime="2099-01-01T00:00:00Z",
    )
    assert future.status_code == 400
    (error,) = future.json()
    assert error["description"].startswith(
        "updated_datetime: '2099-01-01T00:00:00Z' is in the future (more than 1 h ahead of the "
        "server's clock, now "
    )
    stored = runtime.store.get_request(request_id)
    assert stored is not None and stored.history == ()

    drifted = datetime.now(UTC) + timedelta(minutes=5)
    ahead = post_update(
        http,
        desk_key,
        service_request_id=request_id,
        update_id="U-drift",
        updated_datetime=drifted.isoformat(),
    )
    assert ahead.status_code == 200, ahead.text


def test_c07_an_update_dated_year_one_is_400_not_500(
    http: httpx.Client, desk_key: str, create: Create, runtime: Runtime
) -> None:
    # Not in the future, so it passed the form's checks; in UTC it is year 0, which no
    # datetime can hold, and storing it crashed.
    request_id = new_id(create)
    response = post_update(
        http, desk_key, service_request_id=request_id, updated_datetime="0001-01-01T00:00:00+01:00"
    )
    assert response.status_code == 400, response.text
    (error,) = response.json()
    assert "is out of range (years 1900 to 9000)" in error["description"]
    stored = runtime.store.get_request(request_id)
    assert stored is not None and stored.history == ()


@pytest.mark.parametrize(
    "dates", [{"end_date": "0001-01-01T00:00:00Z"}, {"start_date": "9999-12-31T23:00:00Z"}]
)
def test_c07_update_queries_near_the_ends_of_the_calendar_are_400_not_500(
    http: httpx.Client, dates: dict[str, str]
) -> None:
    response = http.get("/servicerequestupdates.json", params=dates)
    assert response.status_code == 400, response.text


def test_c06_an_update_naming_an_unknown_jurisdiction_is_404_and_records_nothing(
    http: httpx.Client, desk_key: str, create: Create, runtime: Runtime
) -> None:
    request_id = new_id(create)
    response = post_update(
        http, desk_key, service_request_id=request_id, jurisdiction_id="nowhere.example"
    )
    assert response.status_code == 404, response.text
    assert "jurisdiction_id 'nowhere.example' is not served here" in response.text
    stored = runtime.store.get_request(request_id)
    assert stored is not None and stored.history == ()


def test_c06_an_update_naming_another_jurisdiction_than_the_requests_is_not_found(
    http: httpx.Client, desk_key: str, create: Create, runtime: Runtime
) -> None:
    request_id = new_id(create)  # a Springfield request
    elsewhere = post_update(
        http, desk_key, service_request_id=request_id, jurisdiction_id=SHELBYVILLE
    )
    assert elsewhere.status_code == 404, elsewhere.text
    assert elsewhere.json() == [
        {"code": 404, "description": f"service_request_id {request_id!r} not found"}
    ]
    stored = runtime.store.get_request(request_id)
    assert stored is not None and stored.history == ()
    here = post_update(http, desk_key, service_request_id=request_id, jurisdiction_id=SPRINGFIELD)
    assert here.status_code == 200, here.text


@pytest.mark.parametrize(
    "field", ["description", "update_id", "service_request_id", "external_status_code", "media_url"]
)
def test_c22_a_nul_character_in_an_update_is_refused(
    http: httpx.Client, desk_key: str, create: Create, runtime: Runtime, field: str
) -> None:
    request_id = new_id(create)
    value = "https://example.org/a\x00b" if field == "media_url" else "a\x00b"
    response = post_update(http, desk_key, **{"service_request_id": request_id, field: value})
    assert response.status_code == 400
    assert [e["description"] for e in response.json()] == [f"{field}: contains control characters"]
    stored = runtime.store.get_request(request_id)
    assert stored is not None and stored.history == ()


def test_c22_an_updates_media_url_of_up_to_4096_characters_is_kept(
    http: httpx.Client, desk_key: str, create: Create, runtime: Runtime
) -> None:
    # A pre-signed S3 URL with a session token runs past 1,000 characters.
    head = "https://bucket.s3.eu-west-1.amazonaws.com/fixed.jpg?X-Amz-Security-Token="
    url = head + "A" * (4096 - len(head))
    request_id = new_id(create)
    response = post_update(http, desk_key, service_request_id=request_id, media_url=url)
    assert response.status_code == 200, response.text
    stored = runtime.store.get_request(request_id)
    assert stored is not None and stored.history[-1].media_url == url
    longer = post_update(
        http, desk_key, service_request_id=request_id, update_id="U-2", media_url=url + "A"
    )
    assert [e["description"] for e in longer.json()] == ["media_url: longer than 4,096 characters"]


def test_c22_partner_bound_to_another_jurisdiction_cannot_update(
    http: httpx.Client, create: Create, runtime: Runtime
) -> None:
    _, key = runtime.store.add_client("shelby-partner", SHELBYVILLE, may_post_updates=True)
    response = post_update(http, key, service_request_id=new_id(create))
    assert response.status_code == 403
    assert "not valid for jurisdiction springfield.example" in response.text


def test_c21_updates_in_a_time_range_in_json_and_xml(
    http: httpx.Client, desk_key: str, create: Create
) -> None:
    request_id = new_id(create)
    post_update(http, desk_key, service_request_id=request_id, update_id="U-range")
    now = datetime.now(UTC)
    params = {
        "start_date": (now - timedelta(minutes=5)).isoformat(),
        "end_date": (now + timedelta(minutes=5)).isoformat(),
    }
    found = http.get("/servicerequestupdates.json", params=params).json()
    mine = [u for u in found if u["update_id"] == "U-range"]
    assert mine and mine[0]["service_request_id"] == request_id
    assert set(mine[0]) >= {
        "update_id",
        "service_request_id",
        "status",
        "updated_datetime",
        "description",
        "external_status_code",
    }
    root = SafeET.fromstring(http.get("/servicerequestupdates.xml", params=params).content)
    assert root.tag == "service_request_updates"
    assert "U-range" in [e.findtext("update_id") for e in root.findall("request_update")]
    other = http.get(
        "/servicerequestupdates.json", params={**params, "jurisdiction_id": SHELBYVILLE}
    ).json()
    assert "U-range" not in [u["update_id"] for u in other]
    past = {"start_date": "2020-01-01T00:00:00Z", "end_date": "2020-01-02T00:00:00Z"}
    assert http.get("/servicerequestupdates.json", params=past).json() == []


def test_c21_an_answer_holds_the_oldest_updates_of_its_window_up_to_its_limit(
    http: httpx.Client, desk_key: str, create: Create, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(open311_reads, "MAX_UPDATES", 2)
    request_id = new_id(create)
    start = datetime.now(UTC) - timedelta(hours=2)
    for n in range(3):
        at = (start + timedelta(minutes=n)).isoformat()
        sent = post_update(
            http, desk_key, service_request_id=request_id, update_id=f"U-{n}", updated_datetime=at
        )
        assert sent.status_code == 200, sent.text
    window = {"start_date": start.isoformat(), "end_date": datetime.now(UTC).isoformat()}
    first = http.get("/servicerequestupdates.json", params=window).json()
    assert [u["update_id"] for u in first] == ["U-0", "U-1"]
    # Read on from the last one's time (it comes again: the start is inclusive).
    on = {**window, "start_date": first[-1]["updated_datetime"]}
    assert [u["update_id"] for u in http.get("/servicerequestupdates.json", params=on).json()] == [
        "U-1",
        "U-2",
    ]
    mine = {**window, "jurisdiction_id": SPRINGFIELD}
    assert len(http.get("/servicerequestupdates.json", params=mine).json()) == 2


def test_record_status_update_is_the_pollers_entry_point_too(
    create: Create, runtime: Runtime
) -> None:
    request_id = new_id(create)
    update = StatusUpdate(
        request_id=request_id,
        status=Status.ACTION_SCHEDULED,
        at=datetime.now(UTC),
        update_id="poll-1",
        source="worker:sap-roads",
    )
    updated = record_status_update(runtime.store, update, actor="worker:sap-roads")
    assert updated is not None and updated.status is Status.ACTION_SCHEDULED
    assert record_status_update(runtime.store, update, actor="worker:sap-roads") is None
    with pytest.raises(KeyError):
        record_status_update(
            runtime.store,
            update.model_copy(update={"request_id": "01ARZ3NDEKTSV4RRFFQ69G5FAV"}),
            actor="worker:sap-roads",
        )


def test_polling_updated_after_finds_an_update_its_sender_dated_before_the_last_poll(
    http: httpx.Client, desk_key: str, create: Create
) -> None:
    # A partner whose clock runs an hour behind civicbus's: its update is dated before a time
    # an Open311 client has already polled past, and the client must still be told.
    request_id = new_id(create)
    (read,) = http.get(
        f"/requests/{request_id}.json", params={"jurisdiction_id": SPRINGFIELD}
    ).json()
    # The latest updated_datetime this client saw. Open311 times are whole seconds, and a poll
    # from that second would show the request again: the client polls from the next one.
    seen = (datetime.fromisoformat(read["updated_datetime"]) + timedelta(seconds=1)).isoformat()
    time.sleep(max(0.0, (datetime.fromisoformat(seen) - datetime.now(UTC)).total_seconds()) + 0.01)
    polled = {"jurisdiction_id": SPRINGFIELD, "updated_after": seen}
    assert request_id not in {
        r["service_request_id"] for r in http.get("/requests.json", params=polled).json()
    }

    an_hour_behind = datetime.now(UTC) - timedelta(hours=1)
    sent = post_update(
        http, desk_key, service_request_id=request_id, updated_datetime=an_hour_behind.isoformat()
    )
    assert sent.status_code == 200, sent.text

    found = {r["service_request_id"]: r for r in http.get("/requests.json", params=polled).json()}
    assert found[request_id]["status"] == "open"  # IN_PROGRESS reads as open in Open311
    assert datetime.fromisoformat(found[request_id]["updated_datetime"]) >= datetime.fromisoformat(
        seen
    )
    before = {"jurisdiction_id": SPRINGFIELD, "updated_before": seen}
    assert request_id not in {
        r["service_request_id"] for r in http.get("/requests.json", params=before).json()
    }


def test_a_pushed_updates_x_correlation_id_goes_with_its_events_as_a_creates_does(
    http: httpx.Client, desk_key: str, create: Create, runtime: Runtime
) -> None:
    request_id = new_id(create)
    fields = {"service_request_id": request_id, "update_id": "desk-7", "status": "closed"}
    refused = post_update(http, desk_key, headers={"X-Correlation-Id": "Zed Quorn"}, **fields)
    assert refused.status_code == 400
    assert refused.json()[0]["description"].startswith("X-Correlation-Id: must be 1 to 128")

    sent = post_update(http, desk_key, headers={"X-Correlation-Id": "desk-ticket-7"}, **fields)
    assert sent.status_code == 200, sent.text
    events = [r.envelope for r in runtime.store.pending_outbox(10_000)]
    mine = [e for e in events if e.subject == request_id and e.type is not EventType.CREATED]
    assert [e.type for e in mine] == [EventType.STATUS_CHANGED, EventType.CLOSED]
    assert {e.correlationid for e in mine} == {"desk-ticket-7"}


def test_a_pushed_notes_x_correlation_id_goes_with_its_noted_event_as_the_documents_say(
    http: httpx.Client, desk_key: str, create: Create, runtime: Runtime
) -> None:
    request_id = new_id(create)
    for n, status in enumerate(("in_progress", "in_progress")):  # a change, then a note
        fields = {"service_request_id": request_id, "update_id": f"desk-8-{n}", "status": status}
        sent = post_update(http, desk_key, headers={"X-Correlation-Id": f"desk-8-{n}"}, **fields)
        assert sent.status_code == 200, sent.text

    events = [r.envelope for r in runtime.store.pending_outbox(10_000)]
    mine = [e for e in events if e.subject == request_id and e.type is not EventType.CREATED]
    assert [(e.type, e.correlationid) for e in mine] == [
        (EventType.STATUS_CHANGED, "desk-8-0"),
        (EventType.NOTED, "desk-8-1"),
    ]
    # What consumers read of it (schemas/asyncapi.yaml) names each event a pushed update
    # publishes with its sender's id.
    described = Envelope.model_fields["correlationid"].description or ""
    pushed = described.split("pushed status update", 1)[1].split(";", 1)[0]
    for kind in (EventType.STATUS_CHANGED, EventType.CLOSED, EventType.NOTED):
        assert kind.short.removeprefix("request.") in pushed, described


def test_an_updated_datetime_whose_plus_was_left_unencoded_in_the_form_is_read_as_plus(
    http: httpx.Client, desk_key: str, create: Create, runtime: Runtime
) -> None:
    # `curl -d updated_datetime=...+05:00` sends the '+' as it is, which a form decodes as a
    # space; read as no zone it was refused, read as '-' it would be ten hours off.
    request_id = new_id(create)
    at = (datetime.now(UTC) - timedelta(minutes=5)).astimezone(timezone(timedelta(hours=5)))
    as_sent = at.isoformat(timespec="seconds")
    assert as_sent.endswith("+05:00")
    body = (
        f"api_key={desk_key}&service_request_id={request_id}&update_id=plus-1"
        f"&status=IN_PROGRESS&updated_datetime={as_sent}"
    )
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    response = http.post("/servicerequestupdates.json", content=body, headers=form)
    assert response.status_code == 200, response.text
    stored = runtime.store.get_request(request_id)
    assert stored is not None and stored.updated_at == at.replace(microsecond=0)


def test_a_permission_taken_away_after_the_key_was_read_still_refuses_the_update(
    http: httpx.Client, create: Create, runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    # deny-updates committing between the API's read of the client and its write: the
    # transaction that writes checks again.
    request_id = new_id(create)
    _, key = runtime.store.add_client("racy-desk", may_post_updates=True)
    read_before = runtime.store.authenticate(key)
    assert runtime.store.allow_client_updates("racy-desk", False)
    monkeypatch.setattr(ApiContext, "authenticate", lambda self, api_key, where: read_before)
    response = post_update(http, key, service_request_id=request_id, update_id="racy-1")
    assert response.status_code == 403, response.text
    assert "may not post status updates" in response.json()[0]["description"]
    stored = runtime.store.get_request(request_id)
    assert stored is not None and stored.history == ()
