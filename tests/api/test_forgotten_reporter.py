"""A request whose reporter was forgotten (`civicbus privacy forget`) reads as before over real
HTTP, and no copy of the reporter's contact data outlives it in an idempotency record."""

from __future__ import annotations

from collections.abc import Callable

import httpx

from bus import retention
from bus.bootstrap import Runtime
from schemas.model import Reporter
from tests.api.conftest import every_read, pothole_form

CONTACT = {
    "email": "ann@example.org",
    "phone": "555 123 4567",
    "first_name": "Ann",
    "last_name": "Lee",
    "device_id": "device-1",
    "account_id": "acct-1",
}


def test_a_request_whose_reporter_was_forgotten_reads_as_before(
    http: httpx.Client, create: Callable[..., httpx.Response], runtime: Runtime
) -> None:
    created = create(**CONTACT)
    assert created.status_code == 200, created.text
    request_id = created.json()[0]["service_request_id"]
    before = every_read(http, request_id)

    done = retention.forget_request(runtime.store, request_id)

    assert done.held_contact
    stored = runtime.store.get_request(request_id)
    assert stored is not None and stored.reporter == Reporter()
    assert every_read(http, request_id) == before
    assert all(b"ann@example.org" not in body for body in before)


def test_an_idempotency_record_keeps_no_account_id_and_a_replay_echoes_the_repeats(
    http: httpx.Client, api_key: str, runtime: Runtime
) -> None:
    form = pothole_form(api_key, **CONTACT)
    headers = {"Idempotency-Key": "forget-me-1"}
    first = http.post("/requests.json", data=form, headers=headers)
    assert first.status_code == 200, first.text
    request_id = first.json()[0]["service_request_id"]
    retention.forget_request(runtime.store, request_id)

    again = http.post("/requests.json", data=form, headers=headers)

    assert again.status_code == 200 and again.json() == first.json()
    assert again.json()[0]["account_id"] == "acct-1"
    client = runtime.store.authenticate(api_key)
    assert client is not None
    record = runtime.store.idempotent_response(client.id, "header:forget-me-1")
    assert record is not None and record["answer"][0]["account_id"] is None
    assert record["answer"][0]["service_request_id"] == request_id
