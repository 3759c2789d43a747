"""Properties of the mapping engine over arbitrary values and requests (hypothesis)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from adapters import PermanentError
from adapters.mapping import Mapping, UnknownStatus, parse_mapping
from adapters.mapping._transforms import (
    format_datetime,
    lookup,
    truncate,
    truncate_bytes,
    upper,
)
from schemas.model import ServiceRequest, Status

ZONES = ["UTC", "Europe/London", "America/New_York", "Asia/Kolkata", "Pacific/Kiritimati"]

aware_datetimes = st.datetimes(
    min_value=datetime(1900, 1, 1),
    max_value=datetime(2200, 1, 1),
    timezones=st.sampled_from([UTC, timezone(timedelta(hours=-11)), ZoneInfo("Asia/Tokyo")]),
)
scalars = st.one_of(st.text(max_size=20), st.integers(), st.booleans(), st.none())


@given(st.text(), st.integers(min_value=1, max_value=200))
def test_truncate_never_exceeds_the_limit_even_after_upper_case(text: str, limit: int) -> None:
    assert len(truncate(upper(text), limit)) <= limit
    assert text.startswith(truncate(text, limit))


@given(st.text(), st.integers(min_value=1, max_value=200))
def test_max_bytes_keeps_the_longest_whole_character_prefix_within_the_limit(
    text: str, limit: int
) -> None:
    cut = truncate_bytes(text, limit)
    assert len(cut.encode("utf-8")) <= limit
    assert text.startswith(cut)
    if cut != text:  # the next character would not have fitted
        assert len(text[: len(cut) + 1].encode("utf-8")) > limit


@given(
    st.dictionaries(st.text(max_size=8), st.text(max_size=8), max_size=8),
    st.one_of(st.text(max_size=8), st.lists(st.text(max_size=8), max_size=5), st.none()),
    st.text(max_size=8),
)
def test_a_lookup_yields_a_table_value_or_the_default(
    table: dict[str, str], value: Any, default: str
) -> None:
    allowed = {*table.values(), default}
    result = lookup(value, table, default)
    if isinstance(result, list):
        assert result and set(result) <= allowed
    else:
        assert result in allowed


@given(aware_datetimes, st.sampled_from(ZONES))
def test_sap_dates_and_times_always_have_8_and_6_digits(when: datetime, zone: str) -> None:
    date = format_datetime(when.isoformat(), "sap_date", ZoneInfo(zone))
    time = format_datetime(when, "sap_time", ZoneInfo(zone))
    assert len(date) == 8 and date.isdigit()
    assert len(time) == 6 and time.isdigit()
    local = when.astimezone(ZoneInfo(zone))
    assert date == local.strftime("%Y%m%d") or local.year < 1000


status_codes = st.text(
    alphabet=st.characters(categories=["L", "N", "P", "S"]), min_size=1, max_size=6
)


@given(st.dictionaries(status_codes, st.sampled_from(list(Status)), min_size=1))
def test_every_status_in_the_table_maps_to_its_canonical_status(
    table: dict[str, Status],
) -> None:
    # Codes are written as quoted YAML keys, exactly as an integrator would for odd codes.
    lines = "".join(
        f"  {json.dumps(code, ensure_ascii=False)}: {status.value}\n"
        for code, status in table.items()
    )
    m = parse_mapping(f"adapter: x\nfields:\n  F: {{const: 1}}\nstatuses:\n{lines}")
    for code, status in table.items():
        assert m.status(code) is status
    unknown = "".join(sorted(table)) + "?"
    with pytest.raises(UnknownStatus):
        m.status(unknown)


GEOJSON = {
    "type": "FeatureCollection",
    "features": [
        {
            "type": "Feature",
            "properties": {"ward": "W1"},
            "geometry": {
                "type": "Polygon",
                "coordinates": [[[-2, 50], [2, 50], [2, 53], [-2, 53], [-2, 50]]],
            },
        }
    ],
}

RICH_MAPPING = """
adapter: sap
timezone: Europe/London
fields:
  Text: {from: description, truncate: 40, upper: true, required: true}
  Type: {const: M1}
  Priority: {from: attributes.HAZARDS, lookup: {table: prio, default: "3"}, choose: min}
  Lane: {from: attributes.LANE, lookup: {table: lanes}, default: carriageway}
  Depth: {from: attributes.DEPTH_CM, type: integer}
  Noticed: {from: attributes.NOTICED_AT, format: sap_date}
  Date: {from: requested_at, format: sap_date, required: true}
  Time: {from: requested_at, format: sap_time}
  Long: {template: "{service_name}: {description} ({location.address}) {attributes.HAZARDS}"}
  Ward: {from: location, geo_lookup: {file: wards.geojson, property: ward, default: NONE}}
  X: {from: location, project: {to: "EPSG:27700", axis: x}, round: 1}
  Y: {from: location, project: {to: "EPSG:27700", axis: y}, type: integer}
  Everything: {from: "to_string(@)"}
tables:
  prio: {water: "2", damage: "1"}
  lanes: {carriageway: C, cycle_lane: B}
statuses: {OSNO: open}
"""


@pytest.fixture(scope="module")
def rich_mapping(tmp_path_factory: pytest.TempPathFactory) -> Mapping:
    base: Path = tmp_path_factory.mktemp("mapping")
    (base / "wards.geojson").write_text(json.dumps(GEOJSON))
    return parse_mapping(RICH_MAPPING, base_dir=base)


text = st.text(max_size=60)
attribute_values = st.one_of(
    text,
    st.lists(st.sampled_from(["water", "damage", "growing", ""]), max_size=3).map(tuple),
    st.datetimes().map(lambda d: d.isoformat()),
    st.integers().map(str),
)


@st.composite
def requests(draw: st.DrawFn) -> ServiceRequest:
    when = draw(aware_datetimes)
    coords = draw(
        st.one_of(
            st.just({}),
            st.fixed_dictionaries(
                {
                    "lat": st.floats(min_value=-90, max_value=90),
                    "long": st.floats(min_value=-180, max_value=180),
                }
            ),
        )
    )
    keys = st.sampled_from(["HAZARDS", "LANE", "DEPTH_CM", "NOTICED_AT", "OTHER"])
    return ServiceRequest.model_validate(
        {
            "id": draw(st.uuids()).hex,
            "jurisdiction": "springfield.example",
            "service_code": "POTHOLE",
            "service_name": draw(text),
            "description": draw(st.one_of(st.none(), text)),
            "attributes": draw(st.dictionaries(keys, attribute_values, max_size=5)),
            "location": {**coords, "address": draw(st.one_of(st.none(), text))},
            "reporter": {"email": "secret.resident@example.org", "phone": "+44 7700 900999"},
            "requested_at": when,
            "updated_at": when,
        }
    )


@settings(max_examples=300, deadline=None)
@given(requests())
def test_apply_only_ever_raises_permanent_errors_and_never_leaks_the_reporter(
    rich_mapping: Mapping, request: ServiceRequest
) -> None:
    try:
        out = rich_mapping.apply(request)
    except PermanentError as exc:
        assert "secret.resident" not in str(exc) and "900999" not in str(exc)
        assert request.id in str(exc)
        return
    assert len(out["Text"]) <= 40 and out["Text"] == out["Text"].upper()
    assert out["Priority"] in {"1", "2", "3"}
    assert len(out["Date"]) == 8 and out["Date"].isdigit()
    assert out["Ward"] in {"W1", "NONE"}
    assert "secret.resident" not in json.dumps(out) and "900999" not in json.dumps(out)
