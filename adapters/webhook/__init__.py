"""The `webhook` adapter kind: signed HTTP pushes of civicbus events to subscribers."""

from adapters.webhook._adapter import DEFAULT_TIMEOUT, WebhookAdapter
from adapters.webhook._signing import (
    EVENT_ID_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    sign,
    verify,
)

__all__ = [
    "DEFAULT_TIMEOUT",
    "EVENT_ID_HEADER",
    "SIGNATURE_HEADER",
    "TIMESTAMP_HEADER",
    "WebhookAdapter",
    "sign",
    "verify",
]
