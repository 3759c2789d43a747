"""The API on the PostgreSQL store: create, read back, token, update, idempotency (real server)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from bus.api import create_app
from bus.bootstrap import Runtime
from bus.store import RequestQuery
from tests.api.conftest import SHELBYVILLE, SPRINGFIELD, LiveServer, make_runtime, pothole_form

pytestmark = pytest.mark.postgres


@pytest.fixture
def pg_api(postgres_url: str, tmp_path: Path) -> Iterator[tuple[httpx.Client, str, Runtime]]:
    runtime = make_runtime(postgres_url, tmp_path / "media")
    # Creates and posts updates, as a back-office desk's key may.
    _, key = runtime.store.add_client("pg-app", may_post_updates=True)
    with (
        LiveServer(create_app(runtime)) as live,
        httpx.Client(base_url=f"{live.url}/open311/v2", timeout=10) as client,
    ):
        yield client, key, runtime
    runtime.close()


def test_api_round_trip_on_postgresql(pg_api: tuple[httpx.Client, str, Runtime]) -> None:
    http, key, runtime = pg_api
    form = {
        "api_key": key,
        "jurisdiction_id": SPRINGFIELD,
        "service_code": "POTHOLE",
        "lat": "37.76",
        "long": "-122.41",
        "attribute[LANE]": "shoulder",
        "attribute[HAZARDS]": ["water", "damage"],
        "email": "pg@example.org",
    }
    created = http.post("/requests.json", data=form, headers={"Idempotency-Key": "pg-1"})
    assert created.status_code == 200, created.text
    request_id = created.json()[0]["service_request_id"]
    replay = http.post("/requests.json", data=form, headers={"Idempotency-Key": "pg-1"})
    assert replay.status_code == 200 and replay.json() == created.json()

    params = {"jurisdiction_id": SPRINGFIELD, "extensions": "true"}
    (doc,) = http.get(f"/requests/{request_id}.json", params=params).json()
    assert {"code": "HAZARDS", "values": ["water", "damage"]} in doc["extended_attributes"][
        "answers"
    ]
    assert "pg@example.org" not in str(doc)
    listed = http.get("/requests.json", params={"jurisdiction_id": SPRINGFIELD, "status": "open"})
    assert request_id in [d["service_request_id"] for d in listed.json()]

    update = http.post(
        "/servicerequestupdates.json",
        data={
            "api_key": key,
            "service_request_id": request_id,
            "update_id": "pg-u1",
            "status": "CLOSED",
            "updated_datetime": datetime.now(UTC).isoformat(),
        },
    )
    assert update.status_code == 200, update.text
    (closed,) = http.get(f"/requests/{request_id}.json", params=params).json()
    assert closed["status"] == "closed"
    keys = [
        r.routing_key for r in runtime.store.pending_outbox() if r.envelope.subject == request_id
    ]
    assert keys == [
        "request.created.POTHOLE",
        "request.status_changed.closed",
        "request.closed.closed",
    ]

    batch = http.post(
        "/requests.json",
        data={
            "api_key": key,
            "jurisdiction_id": SHELBYVILLE,
            "service_code": "MISSED_BIN",
            "address_string": "9 Oak",
            "attribute[BIN_TYPE]": "general",
        },
    )
    token = batch.json()[0]["token"]
    (resolved,) = http.get(f"/tokens/{token}.json", params={"jurisdiction_id": SHELBYVILLE}).json()
    assert resolved["service_request_id"]


def test_c22_only_a_key_allowed_to_post_updates_may_on_postgresql(
    pg_api: tuple[httpx.Client, str, Runtime],
) -> None:
    http, _, runtime = pg_api
    _, resident = runtime.store.add_client("pg-resident-app")
    created = http.post("/requests.json", data=pothole_form(resident))
    assert created.status_code == 200, created.text
    update = {
        "api_key": resident,
        "service_request_id": created.json()[0]["service_request_id"],
        "update_id": "pg-resident-1",
        "status": "CLOSED",
        "updated_datetime": datetime.now(UTC).isoformat(),
    }
    refused = http.post("/servicerequestupdates.json", data=update)
    assert refused.status_code == 403
    assert "may not post status updates" in refused.json()[0]["description"]

    assert runtime.store.allow_client_updates("pg-resident-app", True) is True
    assert http.post("/servicerequestupdates.json", data=update).status_code == 200


def test_c22_an_update_id_repeated_with_other_content_is_409_on_postgresql(
    pg_api: tuple[httpx.Client, str, Runtime],
) -> None:
    http, key, runtime = pg_api
    created = http.post("/requests.json", data=pothole_form(key))
    request_id = created.json()[0]["service_request_id"]
    update = {
        "api_key": key,
        "service_request_id": request_id,
        "update_id": "pg-409",
        "status": "CLOSED",
        "updated_datetime": datetime.now(UTC).isoformat(),
    }
    assert http.post("/servicerequestupdates.json", data=update).status_code == 200
    assert http.post("/servicerequestupdates.json", data=update).status_code == 200
    conflict = http.post("/servicerequestupdates.json", data={**update, "status": "REOPEN"})
    assert conflict.status_code == 409, conflict.text
    assert conflict.json()[0]["code"] == 409
    stored = runtime.store.get_request(request_id)
    assert stored is not None and stored.status.value == "closed"
    assert [n.update_id for n in stored.history] == ["pg-409"]


def test_c15_concurrent_creates_with_one_key_and_two_reports_store_one_on_postgresql(
    pg_api: tuple[httpx.Client, str, Runtime],
) -> None:
    from concurrent.futures import ThreadPoolExecutor

    http, key, runtime = pg_api
    reports = [{**pothole_form(key), "description": f"report {n % 2}"} for n in range(8)]
    url = str(http.base_url).rstrip("/") + "/requests.json"

    def post(form: dict[str, str]) -> httpx.Response:
        return httpx.post(url, data=form, headers={"Idempotency-Key": "pg-two"}, timeout=10)

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(post, reports))
    (winner,) = [n for n, a in enumerate(answers) if a.status_code == 200 and not replayed(a)]
    for n, answer in enumerate(answers):
        if n % 2 == winner % 2:
            assert answer.json() == answers[winner].json(), answer.text
        else:
            assert answer.status_code == 409, answer.text
    stored = runtime.store.find_requests(RequestQuery(jurisdiction=SPRINGFIELD))
    assert len(stored) == 1


def test_c13_c22_a_nul_character_is_a_400_on_postgresql_and_nothing_is_stored(
    pg_api: tuple[httpx.Client, str, Runtime],
) -> None:
    # PostgreSQL text cannot hold NUL at all: the API must refuse it before the store is asked.
    http, key, runtime = pg_api
    form = pothole_form(key)
    refused = http.post("/requests.json", data={**form, "description": "a\x00b"})
    assert refused.status_code == 400
    assert refused.json() == [
        {"code": 400, "description": "description: contains control characters"}
    ]
    created = http.post("/requests.json", data=form)
    request_id = created.json()[0]["service_request_id"]
    update = {
        "api_key": key,
        "service_request_id": request_id,
        "update_id": "pg-nul",
        "status": "CLOSED",
        "updated_datetime": datetime.now(UTC).isoformat(),
        "description": "a\x00b",
    }
    refused_update = http.post("/servicerequestupdates.json", data=update)
    assert refused_update.status_code == 400
    assert refused_update.json()[0]["description"] == "description: contains control characters"
    stored = runtime.store.find_requests(RequestQuery())
    assert [(r.id, r.description, r.history) for r in stored] == [(request_id, None, ())]


def replayed(answer: httpx.Response) -> bool:
    """Whether a create's 200 replays an earlier answer to its Idempotency-Key."""
    return answer.headers.get("Idempotent-Replayed") == "true"
