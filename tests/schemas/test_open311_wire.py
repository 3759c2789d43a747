"""Canonical → Open311 JSON and XML (C-02, C-04, C-05, C-08..C-10, C-14, C-16, C-18..C-21)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone

from defusedxml import ElementTree as SafeET
from hypothesis import given
from hypothesis import strategies as st

from bus.config import load_config
from schemas import open311_render as render
from schemas.model import (
    BackendRef,
    Location,
    Media,
    Reporter,
    ServiceRequest,
    Status,
    StatusNote,
    StatusUpdate,
)
from schemas.open311 import Open311Error
from schemas.open311_xml import to_xml

CATALOGUE = {s.code: s for s in load_config("deploy/sandbox/civicbus.yaml").service_catalogue()}
AT = datetime(2026, 5, 1, 9, 30, tzinfo=timezone(timedelta(hours=2)))


def sample_request(**changes: object) -> ServiceRequest:
    base = ServiceRequest(
        id="01JTEST",
        jurisdiction="springfield.example",
        service_code="POTHOLE",
        service_name="Pothole",
        status=Status.IN_PROGRESS,
        description="deep",
        attributes={"LANE": "carriageway", "HAZARDS": ("water", "growing")},
        location=Location(lat=37.76, long=-122.41, zipcode="94110"),
        reporter=Reporter(
            email="ann@example.org",
            first_name="Ann",
            last_name="Lee",
            phone="555",
            device_id="dev-9",
        ),
        media=(Media(url="http://127.0.0.1/media/abc.jpg", content_type="image/jpeg"),),
        agency="Springfield Public Works",
        requested_at=AT,
        updated_at=AT,
        backend_refs=(BackendRef(adapter="sap-roads", reference="PM-1", submitted_at=AT),),
        history=(
            StatusNote(
                status=Status.IN_PROGRESS, at=AT, note="crew sent", source="worker", update_id="u1"
            ),
        ),
    )
    return base.model_copy(update=changes)


def xml(document: object, kind: str) -> SafeET.Element:  # type: ignore[name-defined]
    data = to_xml(document, kind)  # type: ignore[arg-type]
    assert data.startswith(b'<?xml version="1.0" encoding="utf-8"?>\n')
    return SafeET.fromstring(data)


def test_c08_discovery_lists_one_endpoint_with_both_formats() -> None:
    doc = render.discovery(
        url="http://h/open311/v2/",
        changeset="2026-01-01T00:00:00Z",
        contact="c",
        key_service="k",
        environment="test",
    )
    endpoint = doc["endpoints"][0]
    assert endpoint["url"] == "http://h/open311/v2"
    assert endpoint["specification"] == "http://wiki.open311.org/GeoReport_v2"
    assert endpoint["type"] == "test"
    root = xml(doc, "discovery")
    assert root.tag == "discovery"
    assert [f.text for f in root.findall("endpoints/endpoint/formats/format")] == [
        "text/xml",
        "application/json",
    ]


def test_c09_service_list_entry_has_every_field() -> None:
    doc = render.service(CATALOGUE["POTHOLE"])
    assert doc == {
        "service_code": "POTHOLE",
        "service_name": "Pothole",
        "description": "A hole or sunken patch in the road surface.",
        "metadata": True,
        "type": "realtime",
        "keywords": "road,pothole,street,surface",
        "group": "Roads",
        "groups": ["Roads"],
    }
    assert render.service(CATALOGUE["STREET_SIGN"])["metadata"] is False


def test_c09_c04_services_xml_wraps_plural_singular_and_booleans() -> None:
    root = xml(render.services([CATALOGUE["POTHOLE"], CATALOGUE["NOISE"]]), "services")
    assert root.tag == "services"
    assert [s.findtext("service_code") for s in root.findall("service")] == ["POTHOLE", "NOISE"]
    assert root.find("service/metadata").text == "true"  # type: ignore[union-attr]
    assert root.find("service[2]/metadata").text == "false"  # type: ignore[union-attr]
    assert root.find("service/groups/group").text == "Roads"  # type: ignore[union-attr]


def test_c10_definition_lists_attributes_in_order_with_values_for_lists() -> None:
    doc = render.service_definition(CATALOGUE["POTHOLE"])
    assert [a["code"] for a in doc["attributes"]] == ["DEPTH_CM", "LANE", "HAZARDS"]
    depth, lane = doc["attributes"][0], doc["attributes"][1]
    assert "values" not in depth
    assert lane["values"][0] == {"key": "carriageway", "name": "In the driving lane"}
    assert lane["required"] is True and lane["variable"] is True
    root = xml(doc, "service_definition")
    assert root.findtext("attributes/attribute[2]/values/value[3]/key") == "shoulder"
    # a null datatype_description is sent empty, as in the specification's example
    empty = root.find("attributes/attribute[2]/datatype_description")
    assert empty is not None and empty.text is None


def test_c14_create_answer_by_service_type() -> None:
    assert render.created(CATALOGUE["POTHOLE"], request_id="R", token="T", account_id=None) == [
        {"service_request_id": "R", "service_notice": None, "account_id": None}
    ]
    batch = render.created(CATALOGUE["MISSED_BIN"], request_id="R", token="T", account_id="acc")[0]
    assert batch == {
        "token": "T",
        "service_notice": "Missed collections are reviewed each evening.",
        "account_id": "acc",
    }
    blackbox = render.created(CATALOGUE["NOISE"], request_id="R", token=None, account_id=None)[0]
    assert "service_request_id" not in blackbox and "token" not in blackbox


def test_c16_token_answer() -> None:
    root = xml(render.token("T1", "R1"), "requests")
    assert root.tag == "service_requests"
    assert root.findtext("request/token") == "T1"
    assert root.findtext("request/service_request_id") == "R1"


def test_c18_request_fields_and_open_closed_status() -> None:
    doc = render.request(sample_request())
    assert doc["service_request_id"] == "01JTEST"
    assert doc["status"] == "open"
    assert doc["requested_datetime"] == "2026-05-01T09:30:00+02:00"
    assert doc["lat"] == 37.76 and doc["long"] == -122.41
    assert doc["media_url"] == "http://127.0.0.1/media/abc.jpg"
    assert doc["agency_responsible"] == "Springfield Public Works"
    assert render.request(sample_request(status=Status.FIXED))["status"] == "closed"


def test_c19_extensions_add_canonical_status_refs_and_notes() -> None:
    doc = render.request(sample_request(), extensions=True)
    ext = doc["extended_attributes"]
    assert ext["status"] == "in_progress"
    assert ext["channel"] == "web"
    assert ext["jurisdiction_id"] == "springfield.example"
    assert ext["backend_refs"] == [
        {"adapter": "sap-roads", "reference": "PM-1", "submitted_at": "2026-05-01T09:30:00+02:00"}
    ]
    assert {"code": "HAZARDS", "values": ["water", "growing"]} in ext["answers"]
    assert doc["notes"][0]["description"] == "crew sent"
    root = xml([doc], "requests")
    assert root.findtext("request/extended_attributes/backend_refs/backend_ref/reference") == "PM-1"
    assert root.findtext("request/notes/note/status") == "in_progress"
    assert [
        v.text for v in root.findall("request/extended_attributes/answers/answer[2]/values/value")
    ] == ["water", "growing"]


def test_c20_reads_never_carry_reporter_contact_data() -> None:
    for extensions in (False, True):
        text = json.dumps(render.request(sample_request(), extensions=extensions))
        for secret in ("ann@example.org", "Ann", "Lee", "555", "dev-9"):
            assert secret not in text


def test_c21_update_document() -> None:
    upd = StatusUpdate(
        request_id="R1",
        status=Status.FIXED,
        at=AT,
        update_id="U1",
        source="partner",
        note="done",
        external_status_code="CMPL",
    )
    doc = render.update(upd)
    assert doc["status"] == "FIXED"
    assert doc["external_status_code"] == "CMPL"
    root = xml(render.updates([upd]), "updates")
    assert root.tag == "service_request_updates"
    assert root.findtext("request_update/update_id") == "U1"


def test_c07_errors_list_in_json_and_xml() -> None:
    doc = render.errors([Open311Error(400, "LANE required"), Open311Error(400, "lat: bad")])
    assert doc == [
        {"code": 400, "description": "LANE required"},
        {"code": 400, "description": "lat: bad"},
    ]
    root = xml(doc, "errors")
    assert [e.findtext("code") for e in root.findall("error")] == ["400", "400"]


def test_c03_naive_datetimes_are_never_sent_without_zone() -> None:
    assert render.iso(datetime(2026, 1, 1)) == "2026-01-01T00:00:00+00:00"
    assert render.iso(datetime(2026, 1, 1, tzinfo=UTC)) == "2026-01-01T00:00:00+00:00"


def test_c04_xml_sends_nulls_as_empty_elements_as_the_specifications_examples() -> None:
    # A client reads the elements a request has in the specification (e.g. ElementTree's
    # find(...).text): an empty one reads as no value, a missing one fails it.
    doc = render.request(sample_request())
    root = xml([doc], "requests")
    assert doc["expected_datetime"] is None and doc["address"] is None
    for name in ("expected_datetime", "address"):
        element = root.find(f"request/{name}")
        assert element is not None and element.text is None and len(element) == 0
    # The fields JSON leaves out, XML leaves out too (its extensions, here).
    assert root.find("request/extended_attributes") is None


def test_xml_writes_coordinates_near_zero_as_decimals_not_exponents() -> None:
    near_greenwich = Location(lat=51.4779, long=-0.00005)
    root = xml([render.request(sample_request(location=near_greenwich))], "requests")
    assert (root.findtext("request/lat"), root.findtext("request/long")) == ("51.4779", "-0.00005")


def test_c03_datetimes_go_out_to_the_second_however_precise_the_time() -> None:
    # Strict clients' parsers (Joda's dateTimeNoMillis, Swift's ISO8601DateFormatter) refuse a
    # fraction of a second; a time is cut down, never rounded up.
    at = datetime(2026, 5, 1, 9, 30, 0, 999_999, tzinfo=timezone(timedelta(hours=2)))
    doc = render.request(sample_request(requested_at=at))
    assert doc["requested_datetime"] == "2026-05-01T09:30:00+02:00"


def test_c04_xml_keeps_carriage_returns_as_json_does() -> None:
    # An XML parser reads a raw CR (alone or before LF) as LF: it must travel as &#13;.
    description = "line1\r\nline2\rline3\nline4"
    root = xml([render.request(sample_request(description=description))], "requests")
    assert root.findtext("request/description") == description


@given(st.text(max_size=200))
def test_c02_any_description_becomes_well_formed_utf8_xml(description: str) -> None:
    doc = render.request(sample_request(description=description or None))
    root = xml([doc], "requests")
    assert root.findtext("request/service_request_id") == "01JTEST"
    json.dumps(doc, ensure_ascii=False).encode("utf-8", "surrogatepass")
