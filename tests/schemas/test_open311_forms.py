"""Open311 forms → canonical drafts or Open311 errors (C-03, C-05, C-11..C-13, C-22)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bus.config import load_config
from schemas.model import Status, StatusUpdate
from schemas.open311 import (
    MAX_UPDATE_CLOCK_SKEW,
    InvalidValue,
    Open311Error,
    RequestDraft,
    attribute_values,
    comma_list,
    parse_bool,
    parse_create_form,
    parse_datetime,
    parse_float,
    parse_int,
    parse_update_form,
)

CATALOGUE = {s.code: s for s in load_config("deploy/sandbox/civicbus.yaml").service_catalogue()}
POTHOLE = CATALOGUE["POTHOLE"]


def form(**fields: str | list[str]) -> dict[str, list[str]]:
    return {k: v if isinstance(v, list) else [v] for k, v in fields.items()}


def pothole(**extra: str | list[str]) -> dict[str, list[str]]:
    return {
        **form(lat="37.76", long="-122.41", **{"attribute[LANE]": "carriageway"}),
        **form(**extra),
    }


def draft(result: RequestDraft | list[Open311Error]) -> RequestDraft:
    assert isinstance(result, RequestDraft), result
    return result


def descriptions(result: RequestDraft | list[Open311Error]) -> list[str]:
    assert isinstance(result, list), result
    assert all(e.code == 400 for e in result)
    return [e.description for e in result]


def test_c11_valid_point_request_becomes_a_draft() -> None:
    d = draft(parse_create_form(pothole(description="deep one"), POTHOLE))
    assert (d.location.lat, d.location.long) == (37.76, -122.41)
    assert d.attributes == {"LANE": "carriageway"}
    assert d.description == "deep one"


def test_c11_address_string_or_address_id_is_a_location() -> None:
    base = {"attribute[LANE]": ["shoulder"]}
    assert (
        draft(
            parse_create_form({**base, **form(address_string="1 Main St")}, POTHOLE)
        ).location.address
        == "1 Main St"
    )
    assert (
        draft(parse_create_form({**base, **form(address_id="A-17")}, POTHOLE)).location.address_id
        == "A-17"
    )


def test_c11_missing_location_and_required_attribute_are_reported_together() -> None:
    errors = descriptions(parse_create_form(form(description="x"), POTHOLE))
    assert errors == [
        "a location is required: lat and long, address_string, or address_id",
        "LANE required",
    ]


@pytest.mark.parametrize(
    ("lat", "long", "expected"),
    [
        ("91", "0", "lat: '91' is not between -90 and 90"),
        ("0", "-181", "long: '-181' is not between -180 and 180"),
        ("north", "0", "lat: 'north' is not a number"),
        ("nan", "0", "lat: 'nan' is not a finite number"),
    ],
)
def test_c11_lat_long_must_be_wgs84_in_range(lat: str, long: str, expected: str) -> None:
    assert descriptions(parse_create_form(pothole(lat=lat, long=long), POTHOLE)) == [expected]


def test_c11_lat_without_long_is_an_error() -> None:
    result = parse_create_form({**form(lat="1"), "attribute[LANE]": ["shoulder"]}, POTHOLE)
    assert descriptions(result) == ["lat and long must be given together"]


def test_c11_without_service_the_rest_of_the_form_is_still_checked() -> None:
    assert descriptions(parse_create_form(form(lat="100", long="0"), None)) == [
        "lat: '100' is not between -90 and 90"
    ]
    assert parse_create_form(pothole(), None) == []


def test_c12_singlevaluelist_value_must_be_a_key() -> None:
    errors = descriptions(parse_create_form(pothole(**{"attribute[LANE]": "x"}), POTHOLE))
    assert errors == ["LANE: 'x' is not one of carriageway, cycle_lane, shoulder"]


def test_c12_multivaluelist_accepts_bracketed_keys() -> None:
    d = draft(parse_create_form(pothole(**{"attribute[HAZARDS][]": ["water", "damage"]}), POTHOLE))
    assert d.attributes["HAZARDS"] == ("water", "damage")


def test_c12_multivaluelist_accepts_repeated_plain_key() -> None:
    d = draft(
        parse_create_form(pothole(**{"attribute[HAZARDS]": ["water", "growing", "water"]}), POTHOLE)
    )
    assert d.attributes["HAZARDS"] == ("water", "growing")


def test_c12_multivaluelist_reports_each_unknown_key() -> None:
    result = parse_create_form(
        pothole(**{"attribute[HAZARDS][]": ["water", "lava", "ice"]}), POTHOLE
    )
    assert descriptions(result) == [
        "HAZARDS: 'lava' is not one of water, growing, damage",
        "HAZARDS: 'ice' is not one of water, growing, damage",
    ]


def test_c12_empty_attribute_is_absent() -> None:
    errors = descriptions(parse_create_form(pothole(**{"attribute[LANE]": ""}), POTHOLE))
    assert errors == ["LANE required"]
    d = draft(parse_create_form(pothole(**{"attribute[DEPTH_CM]": " "}), POTHOLE))
    assert "DEPTH_CM" not in d.attributes


def test_c12_number_must_parse() -> None:
    assert descriptions(parse_create_form(pothole(**{"attribute[DEPTH_CM]": "deep"}), POTHOLE)) == [
        "DEPTH_CM: 'deep' is not a number"
    ]
    assert (
        draft(parse_create_form(pothole(**{"attribute[DEPTH_CM]": "8.5"}), POTHOLE)).attributes[
            "DEPTH_CM"
        ]
        == "8.5"
    )


@pytest.mark.parametrize("value", ["1e309", "-1e309", "inf", "-Infinity", "nan", "NaN"])
def test_c12_number_must_be_finite(value: str) -> None:
    result = parse_create_form(pothole(**{"attribute[DEPTH_CM]": value}), POTHOLE)
    assert descriptions(result) == [f"DEPTH_CM: {value!r} is not a finite number"]


@pytest.mark.parametrize("value", ["1_000", "\u0663", "\uff11\uff12", "0x10", "1,5", "12cm"])
def test_c12_a_number_is_ascii_digits_as_a_back_end_reads_it(value: str) -> None:
    # int() and float() take `1_000` and other scripts' digits; the text is passed on as given.
    result = parse_create_form(pothole(**{"attribute[DEPTH_CM]": value}), POTHOLE)
    assert descriptions(result) == [f"DEPTH_CM: {value!r} is not a number"]
    with pytest.raises(InvalidValue, match="is not a whole number"):
        parse_int("page_size", value, low=1, high=1000)


@pytest.mark.parametrize("value", ["12", "-3.5", "+.5", "7.", "1e3", " 42 "])
def test_c12_a_plain_decimal_number_is_read(value: str) -> None:
    assert parse_float("n", value, low=-10.0, high=10_000.0) == float(value)


@pytest.mark.parametrize(
    ("low", "high", "expected"),
    [
        (0.0, float("inf"), "n: '-20' is less than 0"),
        (float("-inf"), 10.0, "n: '20' is more than 10"),
        (0.0, 10.0, "n: '-20' is not between 0 and 10"),
    ],
)
def test_a_number_out_of_bounds_names_only_the_bounds_that_exist(
    low: float, high: float, expected: str
) -> None:
    with pytest.raises(InvalidValue) as refused:
        parse_float("n", "-20" if low == 0 else "20", low=low, high=high)
    assert str(refused.value) == expected


def test_c12_datetime_attribute_needs_a_zone() -> None:
    light = CATALOGUE["STREETLIGHT"]
    base = form(address_string="Elm St")
    errors = descriptions(
        parse_create_form(
            {**base, **form(**{"attribute[NOTICED_AT]": "2026-05-01T10:00:00"})}, light
        )
    )
    assert errors == ["NOTICED_AT: '2026-05-01T10:00:00' has no time zone (add Z or +hh:mm)"]
    d = draft(
        parse_create_form(
            {**base, **form(**{"attribute[NOTICED_AT]": "2026-05-01T10:00:00Z"})}, light
        )
    )
    assert d.attributes["NOTICED_AT"] == "2026-05-01T10:00:00+00:00"


def test_c12_single_value_attribute_rejects_two_different_values() -> None:
    errors = descriptions(
        parse_create_form(pothole(**{"attribute[LANE]": ["shoulder", "carriageway"]}), POTHOLE)
    )
    assert errors == ["LANE: takes one value, got 2"]


def test_c12_unknown_and_informational_attributes_are_ignored() -> None:
    event = CATALOGUE["EVENT_PERMIT"]
    d = draft(
        parse_create_form(
            form(address_string="Park", **{"attribute[INFO]": "x", "attribute[NOPE]": "y"}), event
        )
    )
    assert d.attributes == {}


def test_c13_optional_reporter_fields_are_kept_apart() -> None:
    d = draft(
        parse_create_form(
            pothole(email="a@b.example", first_name="Ann", phone="", device_id="d1"), POTHOLE
        )
    )
    assert d.reporter.email == "a@b.example"
    assert d.reporter.first_name == "Ann"
    assert d.reporter.phone is None
    assert d.reporter.device_id == "d1"


def test_c13_description_is_limited_to_4000_characters() -> None:
    assert isinstance(parse_create_form(pothole(description="x" * 4000), POTHOLE), RequestDraft)
    assert descriptions(parse_create_form(pothole(description="x" * 4001), POTHOLE)) == [
        "description: longer than 4,000 characters"
    ]


def test_c13_media_url_must_be_http() -> None:
    assert descriptions(parse_create_form(pothole(media_url="javascript:alert(1)"), POTHOLE)) == [
        "media_url: 'javascript:alert(1)' is not an http or https URL"
    ]
    d = draft(parse_create_form(pothole(media_url="https://img.example/p.jpg"), POTHOLE))
    request = d.to_request(request_id="R1", at=datetime(2026, 5, 1, tzinfo=UTC))
    assert request.media[0].url == "https://img.example/p.jpg"


def test_control_characters_are_rejected_not_stored() -> None:
    assert descriptions(parse_create_form(pothole(description="a\x00b"), POTHOLE)) == [
        "description: contains control characters"
    ]


def test_c11_a_refused_address_is_reported_once_not_also_as_a_missing_location() -> None:
    for field in ("address_string", "address_id"):
        only_address = {**form(**{field: "1 Main\x07St"}), "attribute[LANE]": ["carriageway"]}
        assert descriptions(parse_create_form(only_address, POTHOLE)) == [
            f"{field}: contains control characters"
        ]
    no_location = {**form(zipcode="9\x01"), "attribute[LANE]": ["carriageway"]}
    assert descriptions(parse_create_form(no_location, POTHOLE)) == [
        "zipcode: contains control characters",
        "a location is required: lat and long, address_string, or address_id",
    ]


def test_draft_becomes_a_canonical_request_of_its_service() -> None:
    d = draft(parse_create_form(pothole(email="a@b.example"), POTHOLE))
    at = datetime(2026, 5, 1, 9, tzinfo=UTC)
    request = d.to_request(request_id="01J", at=at)
    assert request.jurisdiction == "springfield.example"
    assert request.service_name == "Pothole"
    assert request.agency == "Springfield Public Works"
    assert request.requested_at == request.updated_at == at
    assert request.status is Status.OPEN
    assert request.reporter.email == "a@b.example"


@pytest.mark.parametrize(
    ("text", "value"), [("true", True), ("1", True), ("FALSE", False), ("0", False), ("", False)]
)
def test_c05_booleans_accept_true_false_1_0(text: str, value: bool) -> None:
    assert parse_bool("extensions", text) is value


def test_c05_other_boolean_text_is_an_error() -> None:
    with pytest.raises(InvalidValue, match="extensions: 'maybe' is not a boolean"):
        parse_bool("extensions", "maybe")


def test_c03_datetime_input_without_zone_is_rejected() -> None:
    with pytest.raises(InvalidValue, match="has no time zone"):
        parse_datetime("start_date", "2026-05-01T10:00:00")
    assert parse_datetime("start_date", "2026-05-01T10:00:00-08:00").utcoffset() is not None


@pytest.mark.parametrize("text", ["2026-12-01", "20261201", " 2026-12-01 "])
def test_c03_a_date_alone_is_rejected_saying_it_needs_a_time_and_a_zone(text: str) -> None:
    expected = f"start_date: {text!r} is a date alone: give a time and a zone too "
    with pytest.raises(InvalidValue) as refused:
        parse_datetime("start_date", text)
    assert str(refused.value) == expected + "(e.g. 2026-12-01T00:00:00Z)"


@pytest.mark.parametrize(
    "text", ["0001-01-01T00:00:00+01:00", "1899-12-31T23:59:59Z", "9001-01-01T00:00:00Z"]
)
def test_c07_datetime_input_outside_years_1900_to_9000_is_rejected(text: str) -> None:
    # Near the ends of Python's calendar, converting to UTC or adding a 90-day window overflows.
    with pytest.raises(InvalidValue, match=r"is out of range \(years 1900 to 9000\)"):
        parse_datetime("start_date", text)


def test_datetime_input_at_the_ends_of_the_range_is_read() -> None:
    assert parse_datetime("start_date", "1900-01-01T00:00:00+01:00").year == 1900
    assert parse_datetime("start_date", "9000-12-31T23:59:59-01:00").year == 9000


def test_comma_lists_drop_empty_items() -> None:
    assert comma_list(" a, b,,c ,") == ["a", "b", "c"]
    assert comma_list(None) == []


def test_attribute_values_collects_both_spellings() -> None:
    values = attribute_values(
        {"attribute[A]": ["1", ""], "attribute[A][]": ["2"], "attribute[]": ["x"], "other": ["y"]}
    )
    assert values == {"A": ["1", "2"]}


def test_c12_indexed_attribute_items_are_a_list_in_the_order_of_their_indexes() -> None:
    # What PHP's http_build_query and the `qs` library send for an array.
    values = attribute_values(
        {
            "attribute[A][10]": ["k"],
            "attribute[A][2]": ["c"],
            "attribute[A][0]": ["a"],
            "attribute[A][1]": [""],
            "attribute[B][0]": ["x"],
        }
    )
    assert values == {"A": ["a", "c", "k"], "B": ["x"]}


def test_c12_a_required_multivaluelist_sent_with_indexes_is_answered() -> None:
    hazards = next(a for a in POTHOLE.attributes if a.code == "HAZARDS")
    required = hazards.model_copy(update={"required": True})
    service = POTHOLE.model_copy(
        update={"attributes": tuple(required if a is hazards else a for a in POTHOLE.attributes)}
    )
    draft = parse_create_form(
        pothole(**{"attribute[HAZARDS][0]": "water", "attribute[HAZARDS][1]": "damage"}), service
    )
    assert isinstance(draft, RequestDraft), draft
    assert draft.attributes["HAZARDS"] == ("water", "damage")


@pytest.mark.parametrize(
    "field",
    ["attribute[HAZARDS][foo]", "attribute[HAZARDS", "attribute[]", "attribute[A][0][1]"],
)
def test_c12_an_attribute_field_of_another_shape_is_refused_naming_it(field: str) -> None:
    result = parse_create_form(pothole(**{field: "water"}), POTHOLE)
    assert result == [
        Open311Error(
            400,
            f"{field!r} is not an attribute field: send attribute[CODE]=value, and for several "
            "values attribute[CODE][]=value or attribute[CODE][0]=value",
        )
    ]


#: The server's clock in the update form tests: the form's update is an hour before it.
NOW = datetime(2026, 5, 2, 8, 0, tzinfo=UTC)


def update_form(**extra: str) -> dict[str, list[str]]:
    return form(
        **{
            "service_request_id": "R1",
            "update_id": "U1",
            "status": "IN_PROGRESS",
            "updated_datetime": "2026-05-02T08:00:00+01:00",
            "description": "crew sent",
            **extra,
        }
    )


def test_c22_update_form_becomes_a_status_update() -> None:
    update = parse_update_form(update_form(), source="api:partner", now=NOW)
    assert isinstance(update, StatusUpdate)
    assert update.status is Status.IN_PROGRESS
    assert update.request_id == "R1"
    assert update.note == "crew sent"
    assert update.source == "api:partner"


def test_c22_update_form_reports_every_problem() -> None:
    result = parse_update_form(
        form(status="MELTED", updated_datetime="yesterday"), source="x", now=NOW
    )
    assert isinstance(result, list)
    texts = [e.description for e in result]
    assert texts[:2] == ["service_request_id required", "update_id required"]
    assert texts[2].startswith("status: 'MELTED' is not one of OPEN, INVESTIGATING")
    assert texts[3].startswith("updated_datetime: 'yesterday' is not an ISO 8601 datetime")


def test_c22_an_update_dated_more_than_the_clock_skew_ahead_is_refused() -> None:
    ahead = NOW + MAX_UPDATE_CLOCK_SKEW
    on_the_edge = parse_update_form(
        update_form(updated_datetime=ahead.isoformat()), source="x", now=NOW
    )
    assert isinstance(on_the_edge, StatusUpdate) and on_the_edge.at == ahead
    too_far = (ahead + timedelta(seconds=1)).astimezone(timezone(timedelta(hours=-5)))
    for when in (too_far.isoformat(), "2099-01-01T00:00:00Z"):
        result = parse_update_form(update_form(updated_datetime=when), source="x", now=NOW)
        assert isinstance(result, list)
        assert [e.description for e in result] == [
            f"updated_datetime: {when!r} is in the future (more than 1 h ahead of the server's "
            "clock, now 2026-05-02T08:00:00+00:00)"
        ]


@pytest.mark.parametrize("status", [s.value for s in Status])
def test_c23_every_extended_status_is_accepted_in_upper_case(status: str) -> None:
    update = parse_update_form(update_form(status=status.upper()), source="x", now=NOW)
    assert isinstance(update, StatusUpdate)
    assert update.status.open311 in ("open", "closed")


# --- properties -----------------------------------------------------------------------------

_text = st.text(max_size=60)
_forms = st.dictionaries(
    st.sampled_from(
        [
            "lat",
            "long",
            "address_string",
            "address_id",
            "description",
            "email",
            "media_url",
            "attribute[LANE]",
            "attribute[HAZARDS][]",
            "attribute[HAZARDS]",
            "attribute[DEPTH_CM]",
            "junk",
            "attribute[",
            "zipcode",
        ]
    ),
    st.lists(_text, max_size=3),
)


@given(_forms)
def test_any_form_gives_a_draft_or_400_errors_never_an_exception(
    data: dict[str, list[str]],
) -> None:
    result = parse_create_form(data, POTHOLE)
    if isinstance(result, list):
        assert result and all(e.code == 400 and e.description for e in result)
    else:
        request = result.to_request(request_id="R", at=datetime(2026, 1, 1, tzinfo=UTC))
        assert request.attributes["LANE"] in ("carriageway", "cycle_lane", "shoulder")


@given(
    st.sampled_from(["carriageway", "cycle_lane", "shoulder"]),
    st.lists(st.sampled_from(["water", "growing", "damage"]), max_size=5),
    st.floats(-90, 90),
    st.floats(-180, 180),
)
def test_valid_forms_always_round_trip_their_values(
    lane: str, hazards: list[str], lat: float, long: float
) -> None:
    data = form(lat=repr(lat), long=repr(long), **{"attribute[LANE]": lane})
    if hazards:
        data["attribute[HAZARDS][]"] = hazards
    d = draft(parse_create_form(data, POTHOLE))
    assert (d.location.lat, d.location.long) == (lat, long)
    assert d.attributes.get("HAZARDS", ()) == tuple(dict.fromkeys(hazards)) or not hazards
