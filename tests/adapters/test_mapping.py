"""The mapping engine on plain examples: each transform, status codes, personal data, errors."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from adapters import PermanentError
from adapters.mapping import MappingFailed, MappingFileError, UnknownStatus, parse_mapping
from schemas.model import ServiceRequest, Status

GEOJSON = {
    "type": "FeatureCollection",
    "features": [
        {
            "type": "Feature",
            "properties": {"id": "NORTH"},
            "geometry": {
                "type": "Polygon",
                "coordinates": [[[-1, 51], [1, 51], [1, 52], [-1, 52], [-1, 51]]],
            },
        },
        {
            "type": "Feature",
            "properties": {"id": "SOUTH"},
            "geometry": {
                "type": "Polygon",
                "coordinates": [[[-1, 50], [1, 50], [1, 51], [-1, 51], [-1, 50]]],
            },
        },
    ],
}


def request(**changes: Any) -> ServiceRequest:
    data: dict[str, Any] = {
        "id": "req-1",
        "jurisdiction": "springfield.example",
        "service_code": "POTHOLE",
        "service_name": "Pothole",
        "description": "A deep hole by the bus stop",
        "attributes": {"HAZARDS": ["water", "damage"], "LANE": "carriageway"},
        "location": {"lat": 51.5, "long": -0.1, "address": "1 High Street"},
        "reporter": {"email": "resident@example.org", "phone": "+44 7700 900000"},
        "requested_at": "2026-07-01T23:30:05+00:00",
        "updated_at": "2026-07-01T23:30:05+00:00",
    }
    data.update(changes)
    return ServiceRequest.model_validate(data)


def mapping(fields: str, extra: str = "", base_dir: Path | None = None) -> Any:
    return parse_mapping(f"adapter: sap\n{extra}fields:\n{fields}", base_dir=base_dir)


def test_path_const_and_template_sources() -> None:
    m = mapping(
        "  Text: {from: description}\n"
        "  Type: {const: M1}\n"
        '  Long: {template: "{service_name}: {description} ({location.address}) {{ref}}"}\n'
    )
    assert m.apply(request()) == {
        "Text": "A deep hole by the bus stop",
        "Type": "M1",
        "Long": "Pothole: A deep hole by the bus stop (1 High Street) {ref}",
    }


def test_truncate_applies_after_upper_case() -> None:
    m = mapping("  Text: {from: description, upper: true, truncate: 6}\n")
    assert m.apply(request(description="straße works")) == {"Text": "STRASS"}


def test_max_bytes_cuts_multibyte_text_on_a_character_boundary() -> None:
    m = mapping("  Text: {from: description, truncate: 8, max_bytes: 8}\n")
    # "Crème brûlée": 8 characters fit `truncate`; "Crème b" is 8 bytes ("è" takes two).
    assert m.apply(request(description="Crème brûlée")) == {"Text": "Crème b"}
    # Cutting at byte 8 would split "€" (3 bytes at 6-8): the whole character goes.
    assert m.apply(request(description="Price €5")) == {"Text": "Price "}
    assert m.apply(request(description="short")) == {"Text": "short"}


def test_lookup_translates_a_list_and_choose_picks_the_most_urgent() -> None:
    m = mapping(
        "  Priority: {from: attributes.HAZARDS, lookup: {table: prio, default: '3'}, "
        "choose: min}\n",
        extra="tables: {prio: {water: '2', damage: '1'}}\n",
    )
    assert m.apply(request()) == {"Priority": "1"}
    assert m.apply(request(attributes={"HAZARDS": ["growing"]})) == {"Priority": "3"}
    assert m.apply(request(attributes={})) == {"Priority": "3"}


def test_lookup_keys_are_the_text_written_in_yaml() -> None:
    m = mapping(
        "  Offensive: {from: attributes.OFFENSIVE, lookup: {table: yn}}\n",
        extra="tables: {yn: {yes: 'Y', no: 'N', 1: 'one'}}\n",
    )
    assert m.apply(request(attributes={"OFFENSIVE": "yes"})) == {"Offensive": "Y"}
    assert m.apply(request(attributes={"OFFENSIVE": "1"})) == {"Offensive": "one"}


def test_join_writes_a_multi_value_attribute_as_text() -> None:
    m = mapping("  Hazards: {from: attributes.HAZARDS, join: ';'}\n")
    assert m.apply(request()) == {"Hazards": "water;damage"}


def test_sap_date_and_time_are_converted_to_the_configured_zone() -> None:
    m = mapping(
        "  Date: {from: requested_at, format: sap_date}\n"
        "  Time: {from: requested_at, format: sap_time}\n"
        "  Utc: {from: requested_at, format: '%d.%m.%Y %H:%M', timezone: UTC}\n"
        "  Day: {from: requested_at, format: iso_date}\n",
        extra="timezone: Europe/London\n",
    )
    assert m.apply(request()) == {
        "Date": "20260702",
        "Time": "003005",
        "Utc": "01.07.2026 23:30",
        "Day": "2026-07-02",
    }


def test_a_date_attribute_that_is_not_a_date_fails_permanently_without_quoting_it() -> None:
    m = mapping("  Start: {from: attributes.START_DATE, format: sap_date}\n")
    with pytest.raises(MappingFailed) as caught:
        m.apply(request(attributes={"START_DATE": "next tuesday"}))
    assert caught.value.field == "Start"
    assert "req-1" in str(caught.value)
    assert "tuesday" not in str(caught.value)


def test_geo_lookup_finds_the_polygon_or_falls_back_to_the_default(tmp_path: Path) -> None:
    (tmp_path / "geo").mkdir()
    (tmp_path / "geo" / "areas.geojson").write_text(json.dumps(GEOJSON))
    m = mapping(
        "  Area: {from: location, geo_lookup: {file: geo/areas.geojson, property: id, "
        "default: ELSEWHERE}}\n",
        base_dir=tmp_path,
    )
    assert m.apply(request()) == {"Area": "NORTH"}
    assert m.apply(request(location={"lat": 50.5, "long": 0.5})) == {"Area": "SOUTH"}
    assert m.apply(request(location={"lat": 10.0, "long": 10.0})) == {"Area": "ELSEWHERE"}
    assert m.apply(request(location={"address": "no point"})) == {"Area": "ELSEWHERE"}


def test_project_gives_british_national_grid_coordinates() -> None:
    m = mapping(
        "  X: {from: location, project: {to: 'EPSG:27700', axis: x}, round: 0}\n"
        "  Y: {from: location, project: {to: 'EPSG:27700', axis: y}, type: integer}\n"
    )
    out = m.apply(request(location={"lat": 51.5007, "long": -0.1246}))
    # Big Ben: roughly E 530270, N 179640 on the British National Grid.
    assert abs(out["X"] - 530270) < 100 and abs(out["Y"] - 179640) < 100
    assert isinstance(out["Y"], int)


def test_a_location_outside_the_target_crs_area_fails_permanently() -> None:
    m = mapping("  X: {from: location, project: {to: 'EPSG:27700', axis: x}}\n")
    try:
        out = m.apply(request(location={"lat": -89.0, "long": 179.0}))
    except MappingFailed as exc:
        assert exc.field == "X"
    else:  # pyproj extrapolates some points; then the value must at least be a finite number
        assert isinstance(out["X"], float)


def test_required_field_without_value_names_the_field_and_the_request() -> None:
    m = mapping("  Text: {from: description, required: true}\n")
    with pytest.raises(PermanentError, match=r"req-1.*required field Text"):
        m.apply(request(description=None))


def test_default_replaces_a_missing_value_and_empty_fields_are_left_out() -> None:
    m = mapping(
        "  Lane: {from: attributes.LANE, default: unknown}\n  Pole: {from: attributes.POLE}\n"
    )
    assert m.apply(request(attributes={})) == {"Lane": "unknown"}


def test_type_conversions() -> None:
    m = mapping(
        "  Depth: {from: attributes.DEPTH_CM, type: integer}\n"
        "  Lat: {from: location.lat, type: string, round: 2}\n"
        "  Urgent: {from: attributes.URGENT, type: boolean}\n"
    )
    out = m.apply(request(attributes={"DEPTH_CM": "8.4", "URGENT": "yes"}))
    assert out == {"Depth": 8, "Lat": "51.50", "Urgent": True}
    with pytest.raises(MappingFailed, match="Depth: not a number"):
        m.apply(request(attributes={"DEPTH_CM": "deep"}))


def test_reporter_data_is_invisible_unless_the_mapping_lists_it() -> None:
    m = mapping("  All: {from: 'to_string(@)'}\n")
    everything = m.apply(request())["All"]
    assert "1 High Street" in everything
    assert "resident@example.org" not in everything and "7700" not in everything
    allowed = mapping("  ReplyTo: {from: reporter.email}\n", extra="personal_data: [email]\n")
    assert allowed.apply(request()) == {"ReplyTo": "resident@example.org"}
    assert allowed.document(request())["reporter"] == {"email": "resident@example.org"}


def test_reading_reporter_data_without_listing_it_is_a_file_error() -> None:
    with pytest.raises(MappingFileError, match=r":5: fields.Phone.from: reads reporter.phone"):
        mapping(
            "  ReplyTo: {from: reporter.email}\n  Phone: {from: reporter.phone}\n",
            extra="personal_data: [email]\n",
        )


@pytest.mark.parametrize("written", ["@.reporter.email", '"reporter".email', "@.reporter"])
def test_reporter_data_read_by_another_spelling_is_seen_as_reporter_data(written: str) -> None:
    # The check read the expression's text (a regex), and these spellings passed it.
    with pytest.raises(MappingFileError, match=r"fields.Mail.from: reads reporter"):
        mapping(f"  Mail: {{from: '{written}'}}\n")


def test_a_typo_after_the_current_node_is_a_file_error_too() -> None:
    with pytest.raises(MappingFileError, match=r"reads location.lon, which no request has"):
        mapping("  Lon: {from: '@.location.lon'}\n")


def test_a_path_to_a_field_no_request_has_is_a_file_error() -> None:
    # `location.lon` for `location.long` would map to nothing, and a back-end that needs the
    # longitude would refuse every request; the template's `zipcod` likewise.
    with pytest.raises(MappingFileError) as caught:
        mapping(
            "  Lon: {from: location.lon}\n"
            "  Where: {template: '{location.address} {zipcod}'}\n"
            "  Lane: {from: attributes.LANE}\n"
            "  Ref: {from: \"backend_refs[?adapter=='sap'].reference | [0]\"}\n"
            "  Link: {from: links.open311}\n"
        )
    problems = {(p.line, p.where, p.message) for p in caught.value.problems}
    assert problems == {
        (
            3,
            "fields.Lon.from",
            "reads location.lon, which no request has "
            "(fields there: address, address_id, lat, long, zipcode)",
        ),
        (4, "fields.Where.template", problems_message("zipcod")),
    }


def problems_message(field: str) -> str:
    return (
        f"reads {field}, which no request has (fields there: "
        + ", ".join(sorted([*ServiceRequest.model_fields, "links"]))
        + ")"
    )


def test_status_table_and_default() -> None:
    m = mapping(
        "  T: {const: x}\n", extra="statuses: {OSNO: open, NOPR: in_progress, 70: closed}\n"
    )
    assert m.status("NOPR") is Status.IN_PROGRESS
    assert m.status("70") is Status.CLOSED
    with pytest.raises(UnknownStatus, match="'ZZZZ' is not in the status table"):
        m.status("ZZZZ")
    with_default = mapping("  T: {const: x}\n", extra="statuses: {A: open}\nstatus_default: open\n")
    assert with_default.status("ZZZZ") is Status.OPEN
    # A receipt's status is a courtesy: an unlisted code is None there, not an error.
    assert m.status_or_none("NOPR") is Status.IN_PROGRESS
    assert m.status_or_none("ZZZZ") is None
    assert with_default.status_or_none("ZZZZ") is Status.OPEN


def test_a_key_given_twice_is_an_error_naming_both_lines() -> None:
    # YAML keeps the second without a word: every new work item would close its request.
    text = (
        "adapter: sap\n"  # 1
        "statuses:\n"  # 2
        "  NEW: open\n"  # 3
        "  DONE: closed\n"  # 4
        "  NEW: closed\n"  # 5
        "fields:\n"  # 6
        "  T: {from: description}\n"  # 7
        "  T: {const: x}\n"  # 8
    )
    with pytest.raises(MappingFileError) as caught:
        parse_mapping(text, source="m.yaml")
    assert [str(p) for p in caught.value.problems] == [
        "m.yaml:5: statuses.NEW: given twice (first on line 3); YAML would keep the second "
        "without a word",
        "m.yaml:8: fields.T: given twice (first on line 7); YAML would keep the second "
        "without a word",
    ]


def test_file_errors_name_the_line_and_the_field() -> None:
    text = (
        "adapter: sap\n"  # 1
        "fields:\n"  # 2
        "  A: {from: description, trunc: 10}\n"  # 3
        "  B: {const: x, from: y}\n"  # 4
        "  C: {from: 'a[', lookup: {table: nope}}\n"  # 5
        "  D: {from: requested_at, format: YYYY}\n"  # 6
        "statuses: {X: opne}\n"  # 7
    )
    with pytest.raises(MappingFileError) as caught:
        parse_mapping(text, source="roads.yaml")
    found = {(p.line, p.where) for p in caught.value.problems}
    assert found == {(3, "fields.A.trunc"), (4, "fields.B"), (7, "statuses.X")}
    assert "roads.yaml:3: fields.A.trunc: unknown option" in str(caught.value)
    # Once the structure is right, the deeper checks name their lines too.
    fixed = text.replace(", trunc: 10", "").replace(", from: y", "").replace("opne", "open")
    with pytest.raises(MappingFileError) as caught:
        parse_mapping(fixed, source="roads.yaml")
    found = {(p.line, p.where) for p in caught.value.problems}
    assert found == {(5, "fields.C.from"), (5, "fields.C.lookup.table"), (6, "fields.D.format")}


def test_yaml_syntax_errors_name_the_line() -> None:
    with pytest.raises(MappingFileError, match=r"m.yaml:4: not valid YAML"):
        parse_mapping("adapter: sap\nfields:\n  A: {from: x}\n B: {const: y}\n", source="m.yaml")


def test_unknown_time_zone_and_missing_geojson_are_file_errors(tmp_path: Path) -> None:
    with pytest.raises(MappingFileError) as caught:
        mapping(
            "  D: {from: requested_at, format: sap_date, timezone: Mars/Olympus}\n"
            "  G: {from: location, geo_lookup: {file: missing.geojson, property: id}}\n"
            "  P: {from: location, project: {to: 'EPSG:4326', axis: x}}\n",
            base_dir=tmp_path,
        )
    messages = " | ".join(str(p) for p in caught.value.problems)
    assert "unknown time zone 'Mars/Olympus'" in messages
    assert "missing.geojson" in messages
    assert "not a projected coordinate reference system" in messages


MAPPINGS = Path(__file__).resolve().parents[2] / "mappings"


def test_the_example_in_the_mappings_readme_is_a_valid_mapping() -> None:
    readme = (MAPPINGS / "README.md").read_text()
    example = readme.split("```yaml\n", 1)[1].split("```", 1)[0]
    m = parse_mapping(example, source="README.md", base_dir=MAPPINGS)
    out = m.apply(request())
    assert out["Priority"] == "1" and out["RequiredStartDate"] == "20260702"
    assert out["Lane"] == "C" and len(out["NotificationText"]) <= 40
    assert m.status("NOPR") is Status.IN_PROGRESS


@pytest.mark.parametrize("path", sorted(MAPPINGS.glob("*.yaml")), ids=lambda p: p.name)
def test_every_committed_mapping_file_is_valid(path: Path) -> None:
    from adapters.mapping import load_mapping

    assert load_mapping(path).field_names


def test_the_schema_lists_exactly_the_canonical_statuses() -> None:
    from adapters.mapping import schema

    assert schema()["$defs"]["status"]["enum"] == [s.value for s in Status]


def test_links_give_the_request_public_url_once_the_deployment_names_its_api() -> None:
    text = "adapter: email\nfields:\n  Status page: {from: links.open311}\n"
    unaware = parse_mapping(text)
    aware = replace(unaware, public_base_url="https://311.example.gov/")
    assert unaware.apply(request()) == {}  # no base URL: the field is left out
    assert aware.apply(request()) == {
        "Status page": f"https://311.example.gov/open311/v2/requests/{request().id}.json"
    }
