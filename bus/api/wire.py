"""How the API answers: an Open311 document in the format the path asked for, or an error list.

JSON and XML are built from the same document; both are UTF-8 with the charset in the content
type.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from enum import StrEnum
from typing import Any

from fastapi import Response

from bus.json_text import json_writer
from schemas import open311_render as render
from schemas.open311 import Open311Error
from schemas.open311_xml import to_xml

JSON_TYPE = "application/json; charset=utf-8"
XML_TYPE = "text/xml; charset=utf-8"


class Format(StrEnum):
    """The `.{fmt}` suffix of every Open311 resource."""

    JSON = "json"
    XML = "xml"


class Open311Problem(Exception):
    """Raised by a handler to answer with an Open311 error list and an HTTP status."""

    def __init__(
        self,
        status: int,
        *descriptions: str,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__("; ".join(descriptions))
        self.status = status
        self.errors = [Open311Error(status, d) for d in descriptions]
        self.headers = dict(headers or {})

    @classmethod
    def of(cls, status: int, errors: Iterable[Open311Error]) -> Open311Problem:
        return cls(status, *(e.description for e in errors))


#: json.dumps(document, ensure_ascii=False, separators=(",", ":"), allow_nan=False), from an
#: encoder built once (json.dumps builds one for each call with these options).
_JSON = json_writer(separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def encode(document: Any, fmt: Format, kind: str) -> tuple[bytes, str]:
    """The body and content type of `document` (kind: a key of schemas.open311_xml.ROOTS)."""
    if fmt is Format.XML:
        return to_xml(document, kind), XML_TYPE
    text = _JSON(document)
    # "replace" only matters for a lone surrogate, which inputs are checked against.
    return text.encode("utf-8", "replace"), JSON_TYPE


def respond(
    document: Any,
    fmt: Format,
    kind: str,
    *,
    status: int = 200,
    headers: Mapping[str, str] | None = None,
) -> Response:
    body, content_type = encode(document, fmt, kind)
    return Response(body, status_code=status, media_type=content_type, headers=headers)


def format_of_path(path: str) -> Format:
    """The format an error should be written in: XML when the path asks for it, else JSON."""
    return Format.XML if path.rstrip("/").endswith(".xml") else Format.JSON


def error_response(
    status: int,
    errors: Iterable[Open311Error],
    path: str,
    headers: Mapping[str, str] | None = None,
) -> Response:
    return respond(
        render.errors(errors), format_of_path(path), "errors", status=status, headers=headers
    )
