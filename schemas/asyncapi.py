"""The AsyncAPI 3.0 document of the `civicbus.events` exchange, generated from the models.

Back-office consumers in any language read `schemas/asyncapi.yaml` to learn which events exist,
how to bind a queue to them (topic routing keys) and what each message holds: a CloudEvents
envelope whose `data` is the canonical service request. A test fails when the committed file
differs from `render_asyncapi()`, so it never drifts from the models.

This module describes the wire, it does not build it: the exchange name and key layout here are
checked against bus.broker.topology by the tests (schemas/ imports nothing from bus/).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from schemas.events import (
    STRUCTURED_CONTENT_TYPE,
    DeliveryFailure,
    Envelope,
    EventType,
    RoutingDecision,
    SubmittedRequest,
    TakenDownRequest,
)
from schemas.model import EVENT_HISTORY, ServiceRequest

ASYNCAPI_FILE = Path(__file__).parent / "asyncapi.yaml"
EVENTS_EXCHANGE = "civicbus.events"
_REF = "#/components/schemas/{model}"
_AMQP_BINDING_VERSION = "0.3.0"


@dataclass(frozen=True)
class _Event:
    """How one event type is documented."""

    parameter: str  # the routing key's qualifier
    parameter_doc: str
    meaning: str
    data: type[BaseModel]  # what its `data` holds


_EVENTS: dict[EventType, _Event] = {
    EventType.CREATED: _Event(
        "service_code",
        "The request's service code (a dot in it becomes `_`).",
        "A request was accepted (through Open311 or another channel) and stored.",
        ServiceRequest,
    ),
    EventType.ROUTED: _Event(
        "instance",
        "The adapter instance the request was sent to.",
        "The request was sent to the back-end the routing rules chose; `data.rule` names the "
        "rule (`default` when none matched).",
        RoutingDecision,
    ),
    EventType.SUBMITTED: _Event(
        "instance",
        "The adapter instance whose back-end accepted the request.",
        "The back-end accepted the request; `data.reference` is its reference there.",
        SubmittedRequest,
    ),
    EventType.STATUS_CHANGED: _Event(
        "status",
        "The new canonical status, e.g. `in_progress`, `fixed`.",
        "The request's status changed (from a back-end, a partner or an operator).",
        ServiceRequest,
    ),
    EventType.CLOSED: _Event(
        "status",
        "The closing canonical status, e.g. `fixed`, `duplicate`.",
        "The request reached a closed status.",
        ServiceRequest,
    ),
    EventType.NOTED: _Event(
        "status",
        "The request's canonical status, which did not change.",
        "An update was recorded without changing the request's status: a note, a photo or a "
        "back-end status code with the status it has, or an update dated before its current "
        "status, kept in its history. `data` is the request with its `status_notes` and "
        "`history` as they now are.",
        ServiceRequest,
    ),
    EventType.DELIVERY_FAILED: _Event(
        "instance",
        "The adapter instance that could not deliver the request.",
        "Delivery to the back-end failed for good and the command was dead-lettered.",
        DeliveryFailure,
    ),
    EventType.TAKEN_DOWN: _Event(
        "service_code",
        "The request's service code (a dot in it becomes `_`), as in its `created` event.",
        "What the resident wrote or photographed was taken down (an erasure request, "
        "moderation): the request's description now reads `[description removed]` and its "
        "written answers `[answer removed]`, and/or its media are gone. `data` is the request "
        "as it now reads and `data.taken_down` says what was removed: overwrite the "
        "description, attributes and media of every copy you keep. Its status "
        "and `updated_at` (the time of its latest status) do not change; `taken_down_at` says "
        "when.",
        TakenDownRequest,
    ),
}

_NO_PERSONAL_DATA = (
    " Reporter contact data is never sent on the bus: every `reporter` field is null."
    f" `history` holds the latest {EVENT_HISTORY} status updates (Open311's `notes` all)."
)


def _camel(event_type: EventType) -> str:
    """`civicbus.request.status_changed` -> `requestStatusChanged`."""
    words = event_type.short.replace("_", ".").split(".")
    return words[0] + "".join(word.capitalize() for word in words[1:])


def _schema_name(event_type: EventType) -> str:
    """`civicbus.request.created` -> `RequestCreatedEvent`."""
    name = _camel(event_type)
    return f"{name[0].upper()}{name[1:]}Event"


def _model_schema(model: type[BaseModel], schemas: dict[str, Any]) -> None:
    """Add `model`'s JSON Schema (and those it refers to) to `schemas`, by model name."""
    schema = model.model_json_schema(mode="serialization", ref_template=_REF)
    schemas.update(schema.pop("$defs", {}))
    if issubclass(model, ServiceRequest):
        schema["description"] += _NO_PERSONAL_DATA
    schemas[model.__name__] = schema


def _schemas() -> dict[str, Any]:
    schemas: dict[str, Any] = {}
    models: list[type[BaseModel]] = [Envelope, *dict.fromkeys(e.data for e in _EVENTS.values())]
    for model in models:
        _model_schema(model, schemas)
    schemas["AmqpHeaders"] = {
        "type": "object",
        "description": "Application headers of every civicbus message (copies of envelope fields).",
        "properties": {
            "correlationid": {"type": "string", "description": "The envelope's correlationid."},
            "traceparent": {"type": "string", "description": "W3C trace context."},
            "type": {"type": "string", "description": "The envelope's (CloudEvents) type."},
        },
        "required": ["correlationid", "traceparent", "type"],
    }
    for event_type, event in _EVENTS.items():
        schemas[_schema_name(event_type)] = {
            "allOf": [
                {"$ref": _REF.format(model="Envelope")},
                {
                    "properties": {
                        "type": {"const": event_type.value},
                        "data": {"$ref": _REF.format(model=event.data.__name__)},
                    }
                },
            ]
        }
    return dict(sorted(schemas.items()))


def asyncapi_document(version: str = "1.0.0") -> dict[str, Any]:
    """The AsyncAPI 3.0 document as a plain mapping."""
    exchange = {
        "name": EVENTS_EXCHANGE,
        "type": "topic",
        "durable": True,
        "autoDelete": False,
        "vhost": "/",
    }
    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    messages: dict[str, Any] = {}
    for event_type, event in _EVENTS.items():
        name = _camel(event_type)
        messages[name] = {
            "name": event_type.value,
            "title": event_type.value,
            "summary": event.meaning,
            "contentType": STRUCTURED_CONTENT_TYPE,
            "correlationId": {"location": "$message.header#/correlationid"},
            "headers": {"$ref": _REF.format(model="AmqpHeaders")},
            "payload": {"$ref": _REF.format(model=_schema_name(event_type))},
            "bindings": {
                "amqp": {
                    "deliveryMode": 2,
                    "messageType": event_type.value,
                    "bindingVersion": _AMQP_BINDING_VERSION,
                }
            },
        }
        channels[name] = {
            "address": f"{event_type.short}.{{{event.parameter}}}",
            "title": f"{event_type.short} events",
            "description": f"{event.meaning} Bind with `{event_type.short}.*` for all of them.",
            "parameters": {event.parameter: {"description": event.parameter_doc}},
            "messages": {name: {"$ref": f"#/components/messages/{name}"}},
            "bindings": {
                "amqp": {
                    "is": "routingKey",
                    "exchange": dict(exchange),  # a copy each: no YAML anchors
                    "bindingVersion": _AMQP_BINDING_VERSION,
                }
            },
        }
        operations[f"publish{name[0].upper()}{name[1:]}"] = {
            "action": "send",
            "channel": {"$ref": f"#/channels/{name}"},
            "summary": f"civicbus publishes {event_type.value}.",
            "messages": [{"$ref": f"#/channels/{name}/messages/{name}"}],
            "bindings": {
                "amqp": {
                    "deliveryMode": 2,
                    "mandatory": False,
                    "bindingVersion": _AMQP_BINDING_VERSION,
                }
            },
        }
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "civicbus events",
            "version": version,
            "description": (
                "Canonical events about city service requests, published by civicbus on the "
                f"topic exchange `{EVENTS_EXCHANGE}`. Each message is a CloudEvents 1.0 "
                "structured-mode JSON envelope (`id` is unique and the idempotency key; "
                "`subject` is the request id) whose `data` is the canonical service request "
                "(for `routed` and `delivery_failed`: where it went, and who gave up on it; "
                "for `taken_down`: also what was taken down from it). "
                "Routing keys have three words, `request.<what>.<qualifier>`: bind your own "
                "durable queue with e.g. `request.#` (everything), `request.created.*` or "
                "`request.status_changed.fixed`. Delivery is at-least-once: deduplicate by "
                "the envelope `id` (also the AMQP message_id). Events of one request are "
                "published in the order they happened."
            ),
        },
        "defaultContentType": STRUCTURED_CONTENT_TYPE,
        "servers": {
            "rabbitmq": {
                "host": "127.0.0.1:5672",
                "protocol": "amqp",
                "protocolVersion": "0-9-1",
                "description": (
                    "The broker and vhost named by the deployment's CIVICBUS_AMQP_URL; host "
                    "and the exchanges' `vhost: /` are the sandbox's defaults (a deployment "
                    "such as deploy/systemd's uses the vhost `civicbus`). A consumer connects "
                    "to that vhost with a RabbitMQ user of its own (see the README, For "
                    "back-office systems: events)."
                ),
            }
        },
        "channels": channels,
        "operations": operations,
        "components": {"messages": messages, "schemas": _schemas()},
    }


def render_asyncapi() -> str:
    """The AsyncAPI document as the YAML text committed in schemas/asyncapi.yaml."""
    header = "# Generated from the models by schemas/asyncapi.py (render_asyncapi); do not edit.\n"
    body = yaml.safe_dump(asyncapi_document(), sort_keys=False, allow_unicode=True, width=100)
    return header + body
