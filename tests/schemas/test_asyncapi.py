"""The AsyncAPI document of civicbus.events: current, consistent with the topology, and true."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import jsonschema
import pytest
import yaml

from bus.broker import topology
from schemas.asyncapi import ASYNCAPI_FILE, asyncapi_document, render_asyncapi
from schemas.events import Envelope, EventType
from schemas.model import Location, Reporter, ServiceRequest


def test_committed_asyncapi_document_is_current() -> None:
    assert ASYNCAPI_FILE.read_text() == render_asyncapi(), (
        "regenerate: python -c 'from schemas.asyncapi import *; "
        "ASYNCAPI_FILE.write_text(render_asyncapi())'"
    )


def test_channels_use_the_exchange_and_routing_keys_the_broker_uses() -> None:
    document = yaml.safe_load(render_asyncapi())
    assert document["asyncapi"] == "3.0.0"
    for channel in document["channels"].values():
        assert channel["bindings"]["amqp"]["exchange"]["name"] == topology.EVENTS_EXCHANGE
        event_type = EventType(f"civicbus.{channel['address'].rsplit('.', 1)[0]}")
        [parameter] = channel["parameters"]
        assert channel["address"] == topology.event_routing_key(event_type, f"{{{parameter}}}")
    for operation in document["operations"].values():
        channel_ref = operation["channel"]["$ref"].removeprefix("#/channels/")
        assert channel_ref in document["channels"]


def _event(event_type: EventType) -> dict[str, Any]:
    now = datetime(2026, 11, 1, 9, 30, tzinfo=UTC)
    request = ServiceRequest(
        id="req-1",
        jurisdiction="springfield.example",
        service_code="POTHOLE",
        service_name="Pothole",
        location=Location(lat=52.1, long=5.1, address="1 Main St"),
        reporter=Reporter(email="someone@example.org"),
        attributes={"LANE": "carriageway", "HAZARDS": ("water", "growing")},
        requested_at=now,
        updated_at=now,
    ).without_personal_data()
    envelope = Envelope(
        type=event_type,
        subject=request.id,
        data=request.model_dump(mode="json"),
        correlationid="corr-1",
    )
    loaded: dict[str, Any] = json.loads(envelope.model_dump_json())
    return loaded


def _validator(message: dict[str, Any], document: dict[str, Any]) -> jsonschema.Validator:
    # The document itself is the root, so the payload's #/components/... references resolve.
    schema = {**document, "$ref": message["payload"]["$ref"]}
    return jsonschema.Draft202012Validator(schema)


@pytest.mark.parametrize(
    "message_name",
    ["requestCreated", "requestSubmitted", "requestStatusChanged", "requestClosed"],
)
def test_a_published_envelope_matches_its_message_schema(message_name: str) -> None:
    document = asyncapi_document()
    message = document["components"]["messages"][message_name]
    event_type = EventType(message["name"])
    validator = _validator(message, document)

    validator.validate(_event(event_type))
    wrong_type = EventType.CREATED if event_type is not EventType.CREATED else EventType.CLOSED
    assert not validator.is_valid(_event(wrong_type))
    assert not validator.is_valid({**_event(event_type), "data": {"id": 1}})
