"""The AsyncAPI document of civicbus.events: current, consistent with the topology, and true."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest
import yaml

from bus.broker import topology
from bus.broker.publisher import envelope_message
from schemas.asyncapi import ASYNCAPI_FILE, asyncapi_document, render_asyncapi
from schemas.events import (
    DeliveryFailure,
    Envelope,
    EventType,
    RoutingDecision,
    SubmittedRequest,
    TakeDown,
    TakenDownRequest,
)
from schemas.model import Location, Reporter, ServiceRequest
from tests.asyncapi_support import message_validator


def test_committed_asyncapi_document_is_current() -> None:
    assert ASYNCAPI_FILE.read_text() == render_asyncapi(), "regenerate: civicbus schemas export"


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


def test_the_server_says_the_vhost_is_the_deployments() -> None:
    [server] = yaml.safe_load(render_asyncapi())["servers"].values()
    assert "vhost named by the deployment's CIVICBUS_AMQP_URL" in server["description"]


def test_messages_declare_the_content_type_the_relay_publishes_them_with() -> None:
    document = yaml.safe_load(render_asyncapi())
    published = envelope_message(
        Envelope(type=EventType.CREATED, subject="req-1", data={}, correlationid="c-1"),
        exchange=topology.EVENTS_EXCHANGE,
        routing_key="request.created.POTHOLE",
    ).properties.content_type
    assert published == "application/cloudevents+json; charset=utf-8"
    assert document["defaultContentType"] == published
    for message in document["components"]["messages"].values():
        assert message["contentType"] == published


def _request() -> ServiceRequest:
    now = datetime(2026, 11, 1, 9, 30, tzinfo=UTC)
    return ServiceRequest(
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


def _data(event_type: EventType) -> dict[str, Any]:
    """`data` built from the model the worker and the status code build it from."""
    request = _request()
    if event_type is EventType.SUBMITTED:
        submitted = SubmittedRequest(
            **request.model_dump(), instance="sap-roads", reference="10004711"
        )
        return submitted.model_dump(mode="json")
    if event_type is EventType.ROUTED:
        return RoutingDecision(instance="sap-roads", rule="roads-to-sap").model_dump(mode="json")
    if event_type is EventType.DELIVERY_FAILED:
        failure = DeliveryFailure(
            instance="sap-roads", reason="PermanentError: LANE", attempts=1, message_id="m-1"
        )
        return failure.model_dump(mode="json")
    if event_type is EventType.TAKEN_DOWN:
        # An answer to an attribute the service no longer defines is taken down as written.
        answers = {**request.attributes, "OLD_NOTE": "[answer removed]"}
        removed = request.model_copy(
            update={"description": "[description removed]", "attributes": answers}
        )
        what = TakeDown(description=True, attributes=("OLD_NOTE",), media=1)
        taken_down = TakenDownRequest(**removed.model_dump(), taken_down=what)
        return taken_down.model_dump(mode="json")
    return request.model_dump(mode="json")


def _event(event_type: EventType, data: dict[str, Any] | None = None) -> dict[str, Any]:
    envelope = Envelope(
        type=event_type,
        subject="req-1",
        data=_data(event_type) if data is None else data,
        correlationid="corr-1",
    )
    loaded: dict[str, Any] = json.loads(envelope.model_dump_json())
    return loaded


def test_every_event_type_has_a_message() -> None:
    names = {m["name"] for m in asyncapi_document()["components"]["messages"].values()}
    assert names == {t.value for t in EventType}


@pytest.mark.parametrize("event_type", list(EventType), ids=lambda t: t.short)
def test_a_published_envelope_matches_its_message_schema(event_type: EventType) -> None:
    validator = message_validator(event_type.value)

    validator.validate(_event(event_type))
    wrong_type = EventType.CREATED if event_type is not EventType.CREATED else EventType.CLOSED
    assert not validator.is_valid({**_event(event_type), "type": wrong_type.value})
    assert not validator.is_valid({**_event(event_type), "data": {"id": 1}})
    # Every attribute is always published: an event without one is not a civicbus event.
    for attribute in ("id", "specversion", "time", "traceparent"):
        incomplete = {k: v for k, v in _event(event_type).items() if k != attribute}
        assert not validator.is_valid(incomplete), attribute
    # Each event type's data is its own: another type's data does not pass.
    other = EventType.DELIVERY_FAILED if event_type is EventType.SUBMITTED else EventType.SUBMITTED
    assert not validator.is_valid(_event(event_type, _data(other)))
