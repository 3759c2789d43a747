"""Events as civicbus builds them, checked against the AsyncAPI document consumers read."""

from __future__ import annotations

import json
from functools import cache
from typing import Any

import jsonschema
import yaml

from schemas.asyncapi import ASYNCAPI_FILE
from schemas.events import Envelope


@cache
def _document() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(ASYNCAPI_FILE.read_text())
    return loaded


def message_validator(event_type: str) -> jsonschema.Validator:
    """A validator of the payload of the committed document's message for `event_type`."""
    document = _document()
    (message,) = [m for m in document["components"]["messages"].values() if m["name"] == event_type]
    # The document itself is the root, so the payload's #/components/... references resolve.
    return jsonschema.Draft202012Validator({**document, "$ref": message["payload"]["$ref"]})


def assert_documented(event: Envelope | dict[str, Any]) -> None:
    """Fail, saying where, unless the event as published (an Envelope, or a received event's
    JSON) matches its message in the document."""
    published = json.loads(event.model_dump_json()) if isinstance(event, Envelope) else event
    event_type = str(published.get("type"))
    errors = [
        f"{'/'.join(map(str, e.absolute_path)) or '(event)'}: {e.message}"
        for e in message_validator(event_type).iter_errors(published)
    ]
    assert not errors, f"{event_type} does not match schemas/asyncapi.yaml: {errors}"
