"""Property: any canonical request the model accepts comes back from the store equal."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bus.store import InvalidData, Store
from schemas.model import (
    BackendRef,
    Channel,
    Location,
    Media,
    Reporter,
    ServiceRequest,
    Status,
    StatusNote,
)

# Any text but NUL, which PostgreSQL cannot store (the store refuses it: InvalidData).
texts = st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\x00"), max_size=40)
names = texts.filter(bool)
optional = st.none() | texts
zones = st.sampled_from(
    [UTC, timezone(timedelta(hours=5, minutes=30)), timezone(-timedelta(hours=8))]
)
times = st.datetimes(datetime(1970, 1, 2), datetime(2100, 1, 1), timezones=zones)
notes = st.builds(
    StatusNote,
    status=st.sampled_from(Status),
    at=times,
    note=optional,
    source=names,
    update_id=st.none() | st.just("set below"),
    external_status_code=optional,
    media_url=optional,
)
requests = st.builds(
    ServiceRequest,
    id=st.just("set below"),
    jurisdiction=names,
    service_code=names,
    service_name=texts,
    status=st.sampled_from(Status),
    status_notes=optional,
    description=optional,
    attributes=st.dictionaries(names, texts | st.lists(texts, max_size=3).map(tuple), max_size=3),
    location=st.builds(
        Location,
        lat=st.none() | st.floats(-90, 90),
        long=st.none() | st.floats(-180, 180),
        address=optional,
        address_id=optional,
        zipcode=optional,
    ),
    reporter=st.builds(
        Reporter,
        email=optional,
        first_name=optional,
        last_name=optional,
        phone=optional,
        device_id=optional,
        account_id=optional,
    ),
    media=st.lists(
        st.builds(Media, url=names, content_type=optional, sha256=optional), max_size=2
    ).map(tuple),
    channel=st.sampled_from(Channel),
    agency=optional,
    service_notice=optional,
    requested_at=times,
    updated_at=times,
    changed_at=times,  # the store records one for every request: None would not read back
    expected_at=st.none() | times,
    backend_refs=st.lists(
        st.builds(BackendRef, adapter=names, reference=names, submitted_at=times),
        max_size=3,
        unique_by=lambda ref: ref.adapter,
    ).map(tuple),
    # In time order, as the store keeps a history (equal times in the order given).
    history=st.lists(notes, max_size=4).map(
        lambda items: tuple(
            sorted(
                (
                    n.model_copy(update={"update_id": f"u-{i}" if n.update_id else None})
                    for i, n in enumerate(items)
                ),
                key=lambda n: n.at,
            )
        )
    ),
)


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(request=requests)
def test_any_request_round_trips_equal(store: Store, request: ServiceRequest) -> None:
    request = request.model_copy(update={"id": uuid.uuid4().hex})
    with store.transaction() as tx:
        tx.add_request(request)
    assert store.get_request(request.id) == request


def test_a_nul_character_postgres_cannot_store_is_refused_cleanly(postgres_url: str) -> None:
    store = Store.open(postgres_url)
    with pytest.raises(InvalidData), store.transaction() as tx:
        tx.add_request(
            ServiceRequest(
                id="r",
                jurisdiction="j\x00",
                service_code="s",
                service_name="n",
                location=Location(),
                requested_at=datetime.now(UTC),
                updated_at=datetime.now(UTC),
            )
        )
    assert store.get_request("r") is None
    store.close()
