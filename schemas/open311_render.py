"""Canonical model → Open311 GeoReport v2 JSON documents (open311_xml makes the XML of them).

Strict in what it sends: datetimes ISO 8601 with a zone, to the second, identifiers as strings,
real booleans, and never the reporter's contact data in a read. Pure functions, no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

from schemas.model import Attribute, Service, ServiceRequest, StatusNote, StatusUpdate
from schemas.open311 import Open311Error

SPECIFICATION = "http://wiki.open311.org/GeoReport_v2"
FORMATS = ("text/xml", "application/json")

Document = dict[str, Any]


def iso(value: datetime | None) -> str | None:
    """ISO 8601 with a zone, to the second; a naive value (never expected) is taken as UTC,
    never sent bare.

    Whole seconds as the specification's examples: strict clients' parsers refuse a fraction
    (Joda's dateTimeNoMillis, Swift's default ISO8601DateFormatter). Cut down, never rounded up:
    a client polling `updated_after` the time it saw is shown that change again, never misses
    one made in the same second.
    """
    if value is None:
        return None
    if value.tzinfo is None or value.utcoffset() is None:
        value = value.replace(tzinfo=UTC)
    return value.isoformat(timespec="seconds")


def discovery(
    *, url: str, changeset: str, contact: str, key_service: str, environment: str
) -> Document:
    """The service discovery document; `url` is the v2 base without a trailing slash."""
    endpoint = {
        "specification": SPECIFICATION,
        "url": url.rstrip("/"),
        "changeset": changeset,
        "type": environment,
        "formats": list(FORMATS),
    }
    return {
        "changeset": changeset,
        "contact": contact,
        "key_service": key_service,
        "endpoints": [endpoint],
    }


def service(svc: Service) -> Document:
    """One entry of GET /services."""
    return {
        "service_code": svc.code,
        "service_name": svc.name,
        "description": svc.description,
        "metadata": svc.metadata,
        "type": svc.type.value,
        "keywords": ",".join(svc.keywords),
        "group": svc.group,
        "groups": [svc.group] if svc.group else [],
    }


def services(catalogue: Iterable[Service]) -> list[Document]:
    return [service(s) for s in catalogue]


def attribute(attr: Attribute) -> Document:
    doc: Document = {
        "variable": attr.variable,
        "code": attr.code,
        "datatype": attr.datatype.value,
        "required": attr.required,
        "datatype_description": attr.datatype_description,
        "order": attr.order,
        "description": attr.description,
    }
    if attr.datatype.is_list:
        doc["values"] = [{"key": v.key, "name": v.name} for v in attr.values]
    return doc


def service_definition(svc: Service) -> Document:
    """GET /services/{code}: the attributes in their order."""
    ordered = sorted(svc.attributes, key=lambda a: a.order)
    return {"service_code": svc.code, "attributes": [attribute(a) for a in ordered]}


def created(
    svc: Service, *, request_id: str | None, token: str | None, account_id: str | None
) -> list[Document]:
    """The create answer: an id for realtime, a token for batch, neither for blackbox."""
    doc: Document = {}
    if svc.type.value == "realtime":
        doc["service_request_id"] = request_id
    elif svc.type.value == "batch":
        doc["token"] = token
    doc["service_notice"] = svc.service_notice
    doc["account_id"] = account_id
    return [doc]


def token(token_value: str, request_id: str | None) -> list[Document]:
    """GET /tokens/{token}: the request id a batch token stands for."""
    return [{"token": token_value, "service_request_id": request_id}]


def request(req: ServiceRequest, *, extensions: bool = False) -> Document:
    """One request as GET /requests reads it; `extensions` adds extended_attributes and the
    status history as `notes`. Never the reporter's contact data."""
    loc = req.location
    doc: Document = {
        "service_request_id": req.id,
        "status": req.status.open311,
        "status_notes": req.status_notes,
        "service_name": req.service_name,
        "service_code": req.service_code,
        "description": req.description,
        "agency_responsible": req.agency,
        "service_notice": req.service_notice,
        "requested_datetime": iso(req.requested_at),
        "updated_datetime": iso(req.modified_at),
        "expected_datetime": iso(req.expected_at),
        "address": loc.address,
        "address_id": loc.address_id,
        "zipcode": loc.zipcode,
        "lat": loc.lat,
        "long": loc.long,
        "media_url": req.media[0].url if req.media else None,
    }
    if extensions:
        doc["extended_attributes"] = {
            "status": req.status.value,
            "channel": req.channel.value,
            "jurisdiction_id": req.jurisdiction,
            "answers": [
                {"code": code, "values": list(value) if isinstance(value, tuple) else [value]}
                for code, value in req.attributes.items()
            ],
            "media_urls": [m.url for m in req.media],
            "backend_refs": [
                {
                    "adapter": r.adapter,
                    "reference": r.reference,
                    "submitted_at": iso(r.submitted_at),
                }
                for r in req.backend_refs
            ],
        }
        doc["notes"] = [_note(n) for n in req.history]
    return doc


def requests(found: Sequence[ServiceRequest], *, extensions: bool = False) -> list[Document]:
    return [request(r, extensions=extensions) for r in found]


def _note(note: StatusNote) -> Document:
    return {
        "status": note.status.value,
        "updated_datetime": iso(note.at),
        "description": note.note,
        "source": note.source,
        "update_id": note.update_id,
        "external_status_code": note.external_status_code,
        "media_url": note.media_url,
    }


def update(upd: StatusUpdate) -> Document:
    """One `request_update` of GET/POST /servicerequestupdates, status upper case."""
    return {
        "update_id": upd.update_id,
        "service_request_id": upd.request_id,
        "status": upd.status.value.upper(),
        "updated_datetime": iso(upd.at),
        "description": upd.note or "",
        "media_url": upd.media_url,
        "external_status_code": upd.external_status_code,
    }


def updates(found: Iterable[StatusUpdate]) -> list[Document]:
    return [update(u) for u in found]


def errors(problems: Iterable[Open311Error]) -> list[Document]:
    """The Open311 error list."""
    return [p.as_dict() for p in problems]
