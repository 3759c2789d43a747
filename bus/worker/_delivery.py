"""One message as the worker sees it, and the headers that carry its redelivery history."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from schemas.events import Envelope

#: How many delivery rounds (each: the in-process attempts) have failed before this delivery.
ATTEMPT_HEADER = "x-civicbus-attempt"
#: When the first round failed (ISO 8601), so a dead letter can say how long it was tried.
FIRST_FAILURE_HEADER = "x-civicbus-first-failure"
#: Why a message was dead-lettered (on messages in `civicbus.dead`).
REASON_HEADER = "x-civicbus-reason"
#: The AMQP properties a copy of a message (in a retry tier, the dead-letter queue) keeps as
#: they came: what a consumer of those queues reads the message by. Headers and the message id
#: are set on each copy; delivery mode is always persistent.
KEPT_PROPERTIES = (
    "content_type",
    "content_encoding",
    "type",
    "correlation_id",
    "app_id",
    "timestamp",
)


class MalformedMessage(Exception):
    """The message cannot be processed whatever happens later: dead-letter it at once."""


@dataclass(frozen=True)
class Delivery:
    """A message taken off a queue: its body, its AMQP properties that matter, its history."""

    body: bytes
    headers: dict[str, Any] = field(default_factory=dict)
    message_id: str | None = None
    #: KEPT_PROPERTIES the message came with (those set), for its copies.
    properties: dict[str, Any] = field(default_factory=dict)
    routing_key: str = ""
    redelivered: bool = False

    @property
    def attempt(self) -> int:
        """The 1-based delivery round this is (the header counts failed rounds before it)."""
        value = self.headers.get(ATTEMPT_HEADER, 0)
        try:
            return max(int(value), 0) + 1
        except (TypeError, ValueError):
            return 1

    @property
    def first_failure(self) -> datetime | None:
        value = self.headers.get(FIRST_FAILURE_HEADER)
        if isinstance(value, bytes):
            value = value.decode("utf-8", "replace")
        try:
            return datetime.fromisoformat(value) if isinstance(value, str) else None
        except ValueError:
            return None

    @property
    def key(self) -> str:
        """An id for the message even when it is malformed: its message id or a body hash."""
        if self.message_id:
            return self.message_id
        return "sha256:" + hashlib.sha256(self.body).hexdigest()[:32]

    def failure_headers(self, failed_at: datetime) -> dict[str, Any]:
        """The headers the message carries onward after this round failed."""
        first = self.first_failure or failed_at
        return {
            **self.headers,
            ATTEMPT_HEADER: self.attempt,
            FIRST_FAILURE_HEADER: first.astimezone(UTC).isoformat(),
        }


#: What `Envelope(...)` and `Envelope.model_validate_json` call, called directly: the methods'
#: keyword arguments cost a tenth of a message's decode (the worker's `submitted` event too).
ENVELOPE_VALIDATOR = Envelope.__pydantic_validator__


def decode(delivery: Delivery) -> Envelope:
    """The CloudEvents envelope in the body; MalformedMessage when it is not one."""
    # Parsed and validated in one pass by pydantic-core, without building Python dicts first.
    try:
        envelope: Envelope = ENVELOPE_VALIDATOR.validate_json(delivery.body)
    except ValidationError as exc:
        errors = exc.errors(include_url=False, include_input=False)
        if errors and errors[0]["type"] == "json_invalid":
            reason = errors[0]["msg"]
            raise MalformedMessage(f"message {delivery.key}: body is not JSON ({reason})") from exc
        fields = ", ".join(".".join(str(p) for p in e["loc"]) or "(body)" for e in errors)
        raise MalformedMessage(
            f"message {delivery.key}: not a civicbus event envelope (bad fields: {fields})"
        ) from exc
    return envelope
