"""A request taken down (`civicbus requests take-down`) over real HTTP: its description reads as
the marker and its photo is gone from every read, in JSON and XML; the photo's URL no longer
serves it, unless another request shows the same photo (files are stored once per content)."""

from __future__ import annotations

import hashlib
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
from defusedxml import ElementTree as SafeET

from bus import takedown
from bus.api.media import MediaStore
from bus.bootstrap import Runtime
from schemas import open311_render as render
from schemas.events import EventType
from tests.api.conftest import SPRINGFIELD, LiveServer, every_read, pothole_form
from tests.media_files import gif, jpeg, png

WRITTEN = "Car HH-AB 123 of my neighbour Jo Smith blocks the drain"
PHOTO = png(b"take-down")
OTHER = jpeg(b"take-down")


def files(runtime: Runtime) -> MediaStore:
    return MediaStore(Path(runtime.env.media_dir), runtime.config.api.base_url)


def take_down(runtime: Runtime, request_id: str) -> takedown.TakenDown:
    """What `civicbus requests take-down ID` does, where the API runs."""
    services = runtime.config.service_catalogue()
    return takedown.take_down(runtime.store, files(runtime), request_id, services=services)


def post(http: httpx.Client, api_key: str, *photos: bytes) -> str:
    response = http.post(
        "/requests.json",
        data=pothole_form(api_key, description=WRITTEN),
        files=[
            ("media", (f"p{i}", photo, "application/octet-stream"))
            for i, photo in enumerate(photos)
        ],
    )
    assert response.status_code == 200, response.text
    request_id: str = response.json()[0]["service_request_id"]
    return request_id


def test_a_request_taken_down_reads_with_the_marker_and_without_its_photo(
    http: httpx.Client, server: LiveServer, api_key: str, runtime: Runtime
) -> None:
    request_id = post(http, api_key, PHOTO, OTHER)
    photo_url, other_url = (
        f"{server.url}/media/{hashlib.sha256(PHOTO).hexdigest()}.png",
        f"{server.url}/media/{hashlib.sha256(OTHER).hexdigest()}.jpg",
    )
    before = every_read(http, request_id)
    assert all(WRITTEN.encode() in body and b"/media/" in body for body in before)
    served = httpx.get(photo_url)
    assert served.content == PHOTO
    # Caches keep it an hour at most once taken down (not the year a content address allows).
    assert served.headers["cache-control"] == "public, max-age=3600"

    done = take_down(runtime, request_id)

    assert done.description and done.media == 2 and done.files_deleted == 2
    after = every_read(http, request_id)
    for body in after:
        assert WRITTEN.encode() not in body and b"/media/" not in body
        assert takedown.TAKEN_DOWN.encode() in body
    (doc,) = http.get(
        f"/requests/{request_id}.json", params={"jurisdiction_id": SPRINGFIELD}
    ).json()
    assert doc["description"] == "[description removed]" and doc["media_url"] is None
    xml = http.get(f"/requests/{request_id}.xml", params={"jurisdiction_id": SPRINGFIELD}).text
    assert "<description>[description removed]</description>" in xml and "<media_url />" in xml
    assert doc["status"] == "open" and doc["service_code"] == "POTHOLE"
    for url in (photo_url, other_url):
        gone = httpx.get(url)
        assert gone.status_code == 404 and gone.content != PHOTO


def test_a_photo_another_request_shows_too_stays_served_for_it(
    http: httpx.Client, server: LiveServer, api_key: str, runtime: Runtime
) -> None:
    shared = gif(b"shared photo")
    url = f"{server.url}/media/{hashlib.sha256(shared).hexdigest()}.gif"
    first, second = post(http, api_key, shared), post(http, api_key, shared)

    done = take_down(runtime, first)

    assert (done.media, done.files_deleted, done.files_shared) == (1, 0, 1)
    assert all(b"/media/" not in body for body in every_read(http, first))
    (doc,) = http.get(f"/requests/{second}.json", params={"jurisdiction_id": SPRINGFIELD}).json()
    assert doc["media_url"].endswith(url.rpartition("/")[2])
    assert httpx.get(url).content == shared

    # The last request showing it taken down too, the file goes.
    last = take_down(runtime, second)

    assert (last.media, last.files_deleted, last.files_shared) == (1, 1, 0)
    assert httpx.get(url).status_code == 404


def test_a_request_taken_down_is_audited_without_the_content_and_the_chain_holds(
    http: httpx.Client, api_key: str, runtime: Runtime
) -> None:
    request_id = post(http, api_key, png(b"audit"))

    take_down(runtime, request_id)
    again = take_down(runtime, request_id)

    assert not again.changed
    [entry] = [e for e in runtime.store.audit_trail(request_id) if e.action == "report_taken_down"]
    assert entry.actor == "cli:requests-take-down"
    assert entry.details == {
        "description": True,
        "attributes": [],
        "media": 1,
        "files_deleted": 1,
        "events_waiting": 1,  # the `created` event: no relay runs in these tests
        "events_published": 0,
        "dead_letters": 0,
        "delivered": False,
    }
    assert WRITTEN not in str(entry.details)
    assert runtime.store.verify_audit().ok
    [created] = [
        row
        for row in runtime.store.pending_outbox()
        if row.envelope.subject == request_id and row.envelope.type is EventType.CREATED
    ]
    assert created.envelope.data["description"] == takedown.TAKEN_DOWN
    assert created.envelope.data["media"] == []


def polled(http: httpx.Client, after: datetime) -> dict[str, str]:
    """The updated_datetime of each request a client polling with `updated_after` reads, by
    id; the same in JSON and in XML."""
    params = {"jurisdiction_id": SPRINGFIELD, "updated_after": after.isoformat()}
    listed = http.get("/requests.json", params=params).json()
    xml = SafeET.fromstring(http.get("/requests.xml", params=params).content)
    in_json = {d["service_request_id"]: d["updated_datetime"] for d in listed}
    in_xml = {r.findtext("service_request_id"): r.findtext("updated_datetime") for r in xml}
    assert in_json == in_xml
    return in_json


def test_a_take_down_is_read_by_updated_after_polls_and_a_later_update_still_applies(
    http: httpx.Client, api_key: str, desk_key: str, runtime: Runtime
) -> None:
    request_id = post(http, api_key)

    def status_update(update_id: str, status: str, at: datetime) -> None:
        form = {
            "api_key": desk_key,
            "service_request_id": request_id,
            "update_id": update_id,
            "status": status,
            "updated_datetime": at.isoformat(),
        }
        response = http.post("/servicerequestupdates.json", data=form)
        assert response.status_code == 200, response.text

    in_progress = datetime.now(UTC)
    status_update("u-1", "IN_PROGRESS", in_progress)
    seen = datetime.fromisoformat(polled(http, in_progress - timedelta(seconds=1))[request_id])
    # Open311 times are whole seconds: a poll from the second a change was seen in shows it
    # again; from the next one it shows later changes only.
    assert request_id in polled(http, seen)
    after_seen = seen + timedelta(seconds=1)
    wait_until(after_seen)
    assert request_id not in polled(http, after_seen)
    # The back-end's next update, dated by its clock before the take-down, arrives after it.
    fixed = datetime.now(UTC)

    take_down(runtime, request_id)

    request = runtime.store.get_request(request_id)
    assert request is not None and request.taken_down_at is not None
    assert request.updated_at == in_progress
    assert polled(http, after_seen)[request_id] == render.iso(request.taken_down_at)
    status_update("u-2", "FIXED", fixed)
    (doc,) = http.get(
        f"/requests/{request_id}.json", params={"jurisdiction_id": SPRINGFIELD}
    ).json()
    assert doc["status"] == "closed"  # the update applied: not refused as late
    # Recorded after the take-down, though dated before it: a client that polled after the
    # take-down is told of it.
    closed = runtime.store.get_request(request_id)
    assert closed is not None and closed.changed_at is not None
    assert closed.changed_at > request.taken_down_at
    assert doc["updated_datetime"] == render.iso(closed.changed_at)
    assert polled(http, request.taken_down_at)[request_id] == doc["updated_datetime"]


def wait_until(moment: datetime) -> None:
    """Sleep until the clock has passed `moment` (under a second here)."""
    time.sleep(max(0.0, (moment - datetime.now(UTC)).total_seconds()) + 0.01)


def test_a_request_taken_down_reads_without_its_written_answers_in_json_and_xml(
    http: httpx.Client, api_key: str, runtime: Runtime
) -> None:
    pole = "SL-4411 outside Jo Smith's bedroom window"
    noticed = "2026-03-01T21:00:00+00:00"
    form = {
        "api_key": api_key,
        "jurisdiction_id": SPRINGFIELD,
        "service_code": "STREETLIGHT",
        "lat": "37.76",
        "long": "-122.41",
        "description": WRITTEN,
        "attribute[POLE_NUMBER]": pole,
        "attribute[NOTICED_AT]": noticed,
    }
    response = http.post("/requests.json", data=form)
    assert response.status_code == 200, response.text
    request_id = response.json()[0]["service_request_id"]
    params = {"jurisdiction_id": SPRINGFIELD, "extensions": "true"}
    (before,) = http.get(f"/requests/{request_id}.json", params=params).json()
    assert {"code": "POLE_NUMBER", "values": [pole]} in before["extended_attributes"]["answers"]

    done = take_down(runtime, request_id)

    assert done.description and done.answers == ("POLE_NUMBER",)
    for body in every_read(http, request_id):
        assert pole.encode() not in body and WRITTEN.encode() not in body
    (doc,) = http.get(f"/requests/{request_id}.json", params=params).json()
    assert doc["extended_attributes"]["answers"] == [
        {"code": "POLE_NUMBER", "values": ["[answer removed]"]},
        {"code": "NOTICED_AT", "values": [noticed]},
    ]
    xml = SafeET.fromstring(http.get(f"/requests/{request_id}.xml", params=params).content)
    shown = {
        answer.findtext("code"): [v.text for v in answer.iterfind("values/value")]
        for answer in xml.iterfind("request/extended_attributes/answers/answer")
    }
    assert shown == {"POLE_NUMBER": ["[answer removed]"], "NOTICED_AT": [noticed]}
    [entry] = [e for e in runtime.store.audit_trail(request_id) if e.action == "report_taken_down"]
    assert entry.details["attributes"] == ["POLE_NUMBER"] and pole not in str(entry.details)
