"""Builders of canonical test data for the store tests."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from schemas.model import Location, ServiceRequest

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def make_request(request_id: str = "req-1", **changes: object) -> ServiceRequest:
    """A minimal valid request; keyword arguments replace fields."""
    fields: dict[str, object] = {
        "id": request_id,
        "jurisdiction": "springfield",
        "service_code": "pothole",
        "service_name": "Pothole",
        "location": Location(lat=52.52, long=13.40),
        "requested_at": T0,
        "updated_at": T0,
    }
    fields.update(changes)
    request = ServiceRequest.model_validate(fields)
    if request.changed_at is not None:
        return request
    # As the store records it: the time of its latest change (the later of its status's time and
    # a take-down), so that the request reads back equal.
    return request.model_copy(update={"changed_at": request.modified_at})


def minutes(n: float) -> timedelta:
    return timedelta(minutes=n)
