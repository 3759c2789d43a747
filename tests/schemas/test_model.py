"""The canonical model's rules."""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime

import pytest
from pydantic import ValidationError

from schemas.events import Envelope, EventType, new_event_id, new_traceparent
from schemas.model import Location, Reporter, ServiceRequest, Status


def _request(**overrides: object) -> ServiceRequest:
    now = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)
    fields: dict[str, object] = {
        "id": "r1",
        "jurisdiction": "springfield.example",
        "service_code": "POTHOLE",
        "service_name": "Pothole",
        "location": Location(lat=51.5, long=-0.1),
        "reporter": Reporter(email="someone@example.org", first_name="Ada"),
        "requested_at": now,
        "updated_at": now,
    }
    return ServiceRequest.model_validate({**fields, **overrides})


@pytest.mark.parametrize("status", list(Status))
def test_c23_every_extended_status_maps_to_open_or_closed(status: Status) -> None:
    assert status.open311 in {"open", "closed"}


def test_c23_fixed_and_closed_are_closed_reopen_is_open() -> None:
    assert Status.FIXED.open311 == Status.CLOSED.open311 == "closed"
    assert Status.REOPEN.open311 == Status.IN_PROGRESS.open311 == "open"


def test_c03_naive_datetimes_are_rejected() -> None:
    with pytest.raises(ValidationError, match="time zone"):
        _request(requested_at=datetime(2026, 11, 1, 12, 0))


def test_without_personal_data_drops_every_reporter_field() -> None:
    clean = _request().without_personal_data()
    assert clean.reporter == Reporter()
    assert "someone@example.org" not in clean.model_dump_json()


def test_public_data_is_the_dump_of_the_request_without_personal_data() -> None:
    request = _request(reporter=Reporter(email="someone@example.org", phone="+44 20 7946 0958"))
    data = request.public_data()
    assert data == request.without_personal_data().model_dump(mode="json")
    assert set(data["reporter"]) == set(Reporter.model_fields)
    assert "someone@example.org" not in str(data) and "7946" not in str(data)


def test_envelope_has_cloudevents_attributes_and_a_trace_context() -> None:
    env = Envelope(type=EventType.CREATED, subject="r1", data={}, correlationid="c1")
    assert env.specversion == "1.0"
    assert env.traceparent.startswith("00-")
    assert EventType.STATUS_CHANGED.short == "request.status_changed"


def test_an_envelope_id_is_a_random_uuid_in_canonical_form() -> None:
    ids = {new_event_id() for _ in range(2000)}
    assert len(ids) == 2000
    for value in ids:
        parsed = uuid.UUID(value)
        assert str(parsed) == value  # lower-case hex, hyphens where uuid puts them
        assert parsed.version == 4 and parsed.variant == uuid.RFC_4122
    # Every random bit is used: no hex digit outside the version and variant is stuck.
    for position in (0, 9, 15, 20, 35):
        assert len({value[position] for value in ids}) > 8
    assert Envelope(type=EventType.CREATED, subject="r1", data={}, correlationid="c1").id not in ids


def test_a_new_traceparent_has_two_fresh_random_ids() -> None:
    values = [new_traceparent() for _ in range(200)]
    for value in values:
        assert re.fullmatch(r"00-[0-9a-f]{32}-[0-9a-f]{16}-01", value)
    assert len({v[3:35] for v in values}) == 200 and len({v[36:52] for v in values}) == 200
    trace_id, parent_id = values[0][3:35], values[0][36:52]
    assert parent_id not in trace_id  # two ids, not one repeated


def test_the_json_form_is_dumped_once_and_each_call_gets_its_own_top_level() -> None:
    request = _request(attributes={"LANE": "carriageway"})
    first = request.json_form()
    assert first == request.model_dump(mode="json")
    first["description"] = "changed by one caller"
    second = request.json_form()
    assert second == request.model_dump(mode="json")
    assert second["location"] is first["location"]  # the one dump, shared below the top level
    assert request.public_data() == request.without_personal_data().model_dump(mode="json")


def test_a_copy_of_a_request_dumps_itself_not_the_json_form_of_the_original() -> None:
    import copy
    import pickle

    request = _request(description="before")
    assert request.json_form()["description"] == "before"
    changed = request.model_copy(update={"description": "after"})
    assert changed.json_form()["description"] == "after"
    assert changed.public_data()["description"] == "after"
    assert copy.deepcopy(changed).json_form()["description"] == "after"
    assert pickle.loads(pickle.dumps(changed)).json_form() == changed.model_dump(mode="json")
    assert changed != request and changed == _request(description="after")
    assert "_json_form" not in repr(changed) and "_json_form" not in changed.model_dump_json()
