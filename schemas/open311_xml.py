"""Open311 JSON documents → XML: JSON is the XML without its root.

Lists become plural/singular pairs (`services/service`, `errors/error`, ...), a null field is an
empty element (`<account_id/>`, as in the specification's examples: clients read the element
the JSON form has as null), booleans are `true`/`false`. Builds XML with the standard library;
never parses it (untrusted XML is read only through defusedxml).
"""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Any
from xml.etree import ElementTree as etree

DECLARATION = b'<?xml version="1.0" encoding="utf-8"?>\n'

#: Element names of list items inside a list-valued field.
SINGULAR = {
    "services": "service",
    "service_requests": "request",
    "attributes": "attribute",
    "values": "value",
    "errors": "error",
    "endpoints": "endpoint",
    "formats": "format",
    "service_request_updates": "request_update",
    "groups": "group",
    "notes": "note",
    "answers": "answer",
    "backend_refs": "backend_ref",
    "media_urls": "media_url",
}

#: The root element and item element for each top-level document kind.
ROOTS = {
    "services": ("services", "service"),
    "service_definition": ("service_definition", None),
    "requests": ("service_requests", "request"),
    "updates": ("service_request_updates", "request_update"),
    "errors": ("errors", "error"),
    "discovery": ("discovery", None),
}

# XML 1.0 cannot carry these; inputs are checked, this guards output built from older data.
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff\ud800-\udfff]")


def to_xml(document: dict[str, Any] | list[dict[str, Any]], kind: str) -> bytes:
    """Serialize an Open311 JSON document of `kind` (a key of ROOTS) to UTF-8 XML bytes."""
    root_name, item_name = ROOTS[kind]
    root = etree.Element(root_name)
    if isinstance(document, list):
        for item in document:
            _fill(etree.SubElement(root, item_name or _singular(root_name)), item)
    else:
        _fill(root, document)
    text = etree.tostring(root, encoding="unicode")
    if "\r" in text:
        # A parser reads a raw CR as LF (XML 1.0, 2.11): escaped, it comes back as sent, as
        # in the JSON form. Only text holds one: element names cannot.
        text = text.replace("\r", "&#13;")
    return DECLARATION + text.encode("utf-8")


def _fill(element: etree.Element, value: Any) -> None:
    if isinstance(value, dict):
        for key, child in value.items():
            _fill(etree.SubElement(element, key), child)
    elif isinstance(value, list):
        item_name = _singular(element.tag)
        for child in value:
            if child is not None:
                _fill(etree.SubElement(element, item_name), child)
    elif value is not None:
        element.text = _text(value)


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        # Positional, as a decimal: str() writes a longitude near 0 as `-5e-05`, which a
        # reader of decimal degrees (xs:decimal) refuses. The shortest digits that read back.
        return format(Decimal(repr(value)), "f")
    return _NOT_XML.sub("", str(value))


def _singular(plural: str) -> str:
    return SINGULAR.get(plural, plural.removesuffix("s") if plural.endswith("s") else "item")
