"""The canonical model of civicbus and its wire forms. Imports nothing from `bus` or `adapters`."""

from schemas.events import Envelope, EventType
from schemas.model import (
    Attribute,
    AttributeAnswer,
    AttributeValue,
    BackendRef,
    Channel,
    Datatype,
    Location,
    Media,
    Reporter,
    Service,
    ServiceRequest,
    ServiceType,
    Status,
    StatusNote,
    StatusUpdate,
)

__all__ = [
    "Attribute",
    "AttributeAnswer",
    "AttributeValue",
    "BackendRef",
    "Channel",
    "Datatype",
    "Envelope",
    "EventType",
    "Location",
    "Media",
    "Reporter",
    "Service",
    "ServiceRequest",
    "ServiceType",
    "Status",
    "StatusNote",
    "StatusUpdate",
]
