"""The OpenAPI description of the Open311 routes: bodies and responses as JSON Schema.

The handlers read forms themselves (to accept `attribute[CODE][]` and repeated keys), so the
request bodies and the JSON/XML responses are declared here, kept next to nothing else.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from schemas.open311 import MAX_MEDIA_URL

Schema = dict[str, Any]

_STR = {"type": "string"}
_NSTR = {"type": ["string", "null"]}
_NNUM = {"type": ["number", "null"]}
_DT = {"type": "string", "format": "date-time"}
_NDT = {"type": ["string", "null"], "format": "date-time"}


def _obj(props: dict[str, Schema], required: list[str] | None = None) -> Schema:
    return {"type": "object", "properties": props, "required": required or []}


def _list(item: Schema) -> Schema:
    return {"type": "array", "items": item}


ERRORS = _list(_obj({"code": {"type": "integer"}, "description": _STR}, ["code", "description"]))

SERVICES = _list(
    _obj(
        {
            "service_code": _STR,
            "service_name": _STR,
            "description": _STR,
            "metadata": {"type": "boolean"},
            "type": {"enum": ["realtime", "batch", "blackbox"]},
            "keywords": _STR,
            "group": _STR,
            "groups": _list(_STR),
        },
        ["service_code", "service_name", "metadata", "type"],
    )
)

SERVICE_DEFINITION = _obj(
    {
        "service_code": _STR,
        "attributes": _list(
            _obj(
                {
                    "variable": {"type": "boolean"},
                    "code": _STR,
                    "datatype": {
                        "enum": [
                            "string",
                            "number",
                            "datetime",
                            "text",
                            "singlevaluelist",
                            "multivaluelist",
                        ]
                    },
                    "required": {"type": "boolean"},
                    "datatype_description": _NSTR,
                    "order": {"type": "integer", "minimum": 1},
                    "description": _STR,
                    "values": _list(_obj({"key": _STR, "name": _STR}, ["key", "name"])),
                },
                ["variable", "code", "datatype", "required", "order", "description"],
            )
        ),
    },
    ["service_code", "attributes"],
)

_NOTE = _obj(
    {
        "status": _STR,
        "updated_datetime": _DT,
        "description": _NSTR,
        "source": _STR,
        "update_id": _NSTR,
        "external_status_code": _NSTR,
        "media_url": _NSTR,
    }
)

REQUESTS = _list(
    _obj(
        {
            "service_request_id": _STR,
            "status": {"enum": ["open", "closed"]},
            "status_notes": _NSTR,
            "service_name": _STR,
            "service_code": _STR,
            "description": _NSTR,
            "agency_responsible": _NSTR,
            "service_notice": _NSTR,
            "requested_datetime": _DT,
            "updated_datetime": _DT,
            "expected_datetime": _NDT,
            "address": _NSTR,
            "address_id": _NSTR,
            "zipcode": _NSTR,
            "lat": _NNUM,
            "long": _NNUM,
            "media_url": _NSTR,
            "extended_attributes": {"type": "object"},
            "notes": _list(_NOTE),
        },
        ["service_request_id", "status", "service_code", "requested_datetime"],
    )
)

CREATED = _list(
    _obj({"service_request_id": _STR, "token": _STR, "service_notice": _NSTR, "account_id": _NSTR})
)

TOKENS = _list(_obj({"token": _STR, "service_request_id": _NSTR}, ["token"]))

UPDATES = _list(
    _obj(
        {
            "update_id": _STR,
            "service_request_id": _STR,
            "status": _STR,
            "updated_datetime": _DT,
            "description": _STR,
            "media_url": _NSTR,
            "external_status_code": _NSTR,
        },
        ["update_id", "service_request_id", "status", "updated_datetime"],
    )
)

DISCOVERY = _obj(
    {
        "changeset": _STR,
        "contact": _STR,
        "key_service": _STR,
        "endpoints": _list(
            _obj(
                {
                    "specification": _STR,
                    "url": _STR,
                    "changeset": _STR,
                    "type": {"enum": ["production", "test"]},
                    "formats": _list(_STR),
                }
            )
        ),
    },
    ["changeset", "endpoints"],
)


def content(schema: Schema) -> Schema:
    return {
        "application/json": {"schema": schema},
        "text/xml": {"schema": {"type": "string"}},
    }


#: The errors of the methods that take a form, beyond every method's.
FORM_ERRORS = {
    415: "the body is neither application/x-www-form-urlencoded nor multipart/form-data, or "
    "its charset is unknown",
}

#: The errors only the create method answers with, beyond every method's.
CREATE_ERRORS = {
    404: "jurisdiction_id or service_code not found, or unknown format",
    409: "the Idempotency-Key was already used for a different request",
}

#: The errors only the status update method answers with, beyond every method's.
UPDATE_ERRORS = {
    403: "api_key missing, invalid or revoked, not valid for the request's jurisdiction, or not "
    "allowed to post status updates (`civicbus clients add --updates` or "
    "`civicbus clients allow-updates NAME` grants it)",
    409: "the update_id was already recorded for the request with other content, or the request "
    "holds the most status updates civicbus keeps (1,000)",
}


def responses(
    ok: Schema,
    *,
    ok_status: int = 200,
    also: tuple[int, ...] = (),
    errors: Mapping[int, str] | None = None,
) -> dict[int | str, Any]:
    """The responses of an Open311 operation: its document, and the error list otherwise
    (`errors`: statuses and meanings of the operation's own errors)."""
    described = {
        400: "bad input: the errors say what to fix",
        403: "api_key missing, invalid, revoked, or not valid for the jurisdiction",
        404: "unknown resource, jurisdiction or format",
        413: "request body too large",
        **(errors or {}),
        503: "civicbus cannot take work right now; retry after Retry-After seconds",
    }
    result: dict[int | str, Any] = {
        ok_status: {"description": "the Open311 document", "content": content(ok)}
    }
    for status in also:
        result[status] = {"description": "the Open311 document", "content": content(ok)}
    for status, text in described.items():
        result[status] = {"description": text, "content": content(ERRORS)}
    result[503]["headers"] = {"Retry-After": {"schema": {"type": "integer"}}}
    return result


def form_body(fields: dict[str, Schema], *, files: bool = False) -> dict[str, Any]:
    """An `openapi_extra` request body accepted as urlencoded and as multipart form data."""
    schema = {"type": "object", "properties": fields}
    multipart = dict(schema)
    if files:
        multipart = {
            "type": "object",
            "properties": {
                **fields,
                "media": _list({"type": "string", "format": "binary"}),
            },
        }
    return {
        "requestBody": {
            "required": True,
            "content": {
                "application/x-www-form-urlencoded": {"schema": schema},
                "multipart/form-data": {"schema": multipart},
            },
        }
    }


#: The longest Idempotency-Key accepted (bus.api.open311_writes checks it).
MAX_IDEMPOTENCY_KEY = 200

#: What an X-Correlation-Id may hold (bus.api.open311_writes checks it): 1 to 128 printable
#: ASCII characters without spaces, quotes or `@` (a UUID, a ULID, a trace or ticket id).
CORRELATION_ID_PATTERN = r"^[!#$%&()*+,\-./0-9:;=?A-Z\[\]^_`a-z{|}~]{1,128}$"

#: The headers a create reads besides the form (`openapi_extra` parameters, after the path's).
CREATE_HEADERS: list[dict[str, Any]] = [
    {
        "name": "Idempotency-Key",
        "in": "header",
        "required": False,
        "description": "repeating a create with the same key answers the first answer again "
        "with `Idempotent-Replayed: true`; the key reused for a different report "
        "is 409",
        "schema": {"type": "string", "minLength": 1, "maxLength": MAX_IDEMPOTENCY_KEY},
    },
    {
        "name": "X-Correlation-Id",
        "in": "header",
        "required": False,
        "description": "the caller's id for this report, carried by its log lines and events "
        "(`correlationid`); the request's id when absent. It is logged and sent to back-office "
        "systems, so it may not hold personal data: printable ASCII without spaces, quotes or @",
        "schema": {
            "type": "string",
            "pattern": CORRELATION_ID_PATTERN,
        },
    },
]

_TEXT = {"type": "string"}

CREATE_FIELDS: dict[str, Schema] = {
    "api_key": {**_TEXT, "description": "the client's key (also accepted in the query string)"},
    "jurisdiction_id": {**_TEXT, "description": "required when several are served"},
    "service_code": _TEXT,
    "lat": {**_TEXT, "description": "WGS84 latitude, with long"},
    "long": {**_TEXT, "description": "WGS84 longitude, with lat"},
    "address_string": _TEXT,
    "address_id": _TEXT,
    "zipcode": _TEXT,
    "email": _TEXT,
    "device_id": _TEXT,
    "account_id": _TEXT,
    "first_name": _TEXT,
    "last_name": _TEXT,
    "phone": _TEXT,
    "description": {**_TEXT, "maxLength": 4000},
    "media_url": {**_TEXT, "maxLength": MAX_MEDIA_URL},
}

UPDATE_FIELDS: dict[str, Schema] = {
    "api_key": _TEXT,
    "jurisdiction_id": {**_TEXT, "description": "optional: the request's jurisdiction"},
    "service_request_id": _TEXT,
    "update_id": _TEXT,
    "status": {**_TEXT, "description": "extended status, upper case"},
    "updated_datetime": {**_TEXT, "description": "ISO 8601 with a zone"},
    "description": _TEXT,
    "external_status_code": _TEXT,
    "media_url": {**_TEXT, "maxLength": MAX_MEDIA_URL},
}
