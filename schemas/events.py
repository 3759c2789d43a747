"""The event envelope carried on the bus: CloudEvents 1.0 attributes around canonical data."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from schemas.model import AwareDatetime, ServiceRequest


class EventType(StrEnum):
    """What happened to a request; the CloudEvents `type`."""

    CREATED = "civicbus.request.created"
    ROUTED = "civicbus.request.routed"
    SUBMITTED = "civicbus.request.submitted"
    STATUS_CHANGED = "civicbus.request.status_changed"
    CLOSED = "civicbus.request.closed"
    NOTED = "civicbus.request.noted"
    DELIVERY_FAILED = "civicbus.request.delivery_failed"
    TAKEN_DOWN = "civicbus.request.taken_down"

    @property
    def short(self) -> str:
        """The type without the `civicbus.` prefix, e.g. `request.created` (routing keys)."""
        return self.value.removeprefix("civicbus.")


def new_traceparent() -> str:
    """A fresh W3C trace context header value (version 00, sampled)."""
    ids = os.urandom(24).hex()  # the trace id and the parent id: one call to the system
    return f"00-{ids[:32]}-{ids[32:]}-01"


def uuid_text(raw: bytes, version: int) -> str:
    """The UUID of these 16 bytes, stamped with `version` and the RFC 4122 variant, in its
    canonical text form: `str(uuid.UUID(bytes=raw, version=version))` without building the
    UUID object on the way (a third of the cost; every event has an id)."""
    stamped = bytearray(raw)
    stamped[6] = stamped[6] & 0x0F | version << 4
    stamped[8] = stamped[8] & 0x3F | 0x80
    h = stamped.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def new_event_id() -> str:
    """A random (version 4) UUID in its canonical text form, as `str(uuid.uuid4())` gives it."""
    return uuid_text(os.urandom(16), 4)


_TRACEPARENT = r"^00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$"


#: The content type of a CloudEvents structured-mode message, on AMQP (the CloudEvents AMQP
#: binding) and HTTP alike: what CloudEvents SDKs look for to read one.
STRUCTURED_CONTENT_TYPE = "application/cloudevents+json; charset=utf-8"


class Envelope(BaseModel):
    """A CloudEvents 1.0 structured-mode JSON event, as every message on the bus is."""

    # Every attribute is on every published event (`id` is what consumers deduplicate by):
    # the schemas of what is published say so, defaults or not.
    model_config = ConfigDict(
        extra="forbid", frozen=True, json_schema_serialization_defaults_required=True
    )

    specversion: str = "1.0"
    id: str = Field(default_factory=new_event_id, min_length=1)
    type: EventType
    source: str = "/civicbus"
    subject: str = Field(min_length=1, description="the civicbus request id")
    time: AwareDatetime = Field(default_factory=lambda: datetime.now(UTC))
    datacontenttype: str = "application/json"
    data: dict[str, Any]
    correlationid: str = Field(
        min_length=1,
        description="the caller's X-Correlation-Id of the create, on the events of the "
        "request's way to its back-end (created, routed, submitted, delivery_failed, and a status "
        "the back-end answered with), or of a pushed status update, on the events it publishes "
        "(status_changed and closed, or noted); otherwise the request id",
    )
    traceparent: str = Field(default_factory=new_traceparent, pattern=_TRACEPARENT)


class RoutingDecision(BaseModel):
    """The `data` of `civicbus.request.routed`: which back-end was given the request, and why."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    instance: str = Field(description="the adapter instance whose queue got the request")
    rule: str = Field(description="the routing rule that matched; `default` when none did")


class SubmittedRequest(ServiceRequest):
    """The `data` of `civicbus.request.submitted`: the request, and the back-end that took it."""

    # Also in `backend_refs`; named here so a consumer need not search that list.
    instance: str = Field(description="the adapter instance whose back-end took the request")
    reference: str = Field(description="the request's reference in that back-end")


class DeliveryFailure(BaseModel):
    """The `data` of `civicbus.request.delivery_failed`: which back-end gave up, and why."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # The command itself waits as a dead letter (`civicbus dead list INSTANCE`).
    instance: str = Field(description="the adapter instance that could not deliver the request")
    reason: str = Field(description="why, e.g. the back-end's refusal or the last error")
    attempts: int = Field(ge=1, description="deliveries tried before giving up")
    message_id: str = Field(description="the id of the dead-lettered command")


class TakeDown(BaseModel):
    """What a take-down removed from a request (`civicbus requests take-down`): never the
    content itself, only which parts, so a consumer knows what to overwrite in its copy."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    description: bool = Field(
        description="the description was replaced now: it reads `[description removed]`"
    )
    attributes: tuple[str, ...] = Field(
        description="the codes of the attributes whose answers were replaced now: each reads "
        "`[answer removed]` (a list answer: a list of that one value). Those are what the "
        "resident wrote: answers to string and text attributes, and any answer the service's "
        "definition no longer accounts for; numbers, datetimes and keys of a list stay"
    )
    media: int = Field(
        ge=0,
        description="how many media were removed now: the request shows none any more, and "
        "the URLs of photos civicbus stored answer 404",
    )


class TakenDownRequest(ServiceRequest):
    """The `data` of `civicbus.request.taken_down`: the request as it now reads, and what was
    taken down from it; overwrite the description, attributes and media of every copy you
    keep."""

    taken_down: TakeDown = Field(description="what was taken down by this take-down")
