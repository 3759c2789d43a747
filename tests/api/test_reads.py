"""The Open311 read methods over real HTTP (C-01, C-02, C-04, C-06, C-08..C-10, C-16..C-20)."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from urllib.parse import parse_qsl

import httpx
import pytest
from defusedxml import ElementTree as SafeET

from bus.api import create_app
from bus.bootstrap import Runtime
from bus.intake import new_request_id
from schemas.model import Status, StatusUpdate
from tests.api.conftest import SHELBYVILLE, SPRINGFIELD, LiveServer, make_runtime
from tests.store.store_factories import make_request

XML_DECLARATION = b'<?xml version="1.0" encoding="utf-8"?>\n'
Create = Callable[..., httpx.Response]


def new_id(create: Create, **fields: str | list[str]) -> str:
    response = create(**fields)
    assert response.status_code == 200, response.text
    request_id: str = response.json()[0]["service_request_id"]
    return request_id


@pytest.mark.parametrize("fmt", ["json", "xml"])
def test_c01_every_resource_answers_in_both_formats(http: httpx.Client, fmt: str) -> None:
    for path in ("/services", "/services/POTHOLE", "/requests"):
        response = http.get(f"{path}.{fmt}", params={"jurisdiction_id": SPRINGFIELD})
        assert response.status_code == 200, (path, response.text)


def test_c01_unknown_format_suffix_is_404_with_an_error_body(http: httpx.Client) -> None:
    response = http.get("/services.csv", params={"jurisdiction_id": SPRINGFIELD})
    assert response.status_code == 404
    assert response.json() == [{"code": 404, "description": "unknown format: use .json or .xml"}]


def test_c01_path_without_suffix_is_404_with_an_error_body(http: httpx.Client) -> None:
    response = http.get("/services")
    assert response.status_code == 404
    assert response.json()[0]["code"] == 404


def test_c02_content_types_carry_utf8_and_xml_declaration(http: httpx.Client) -> None:
    as_json = http.get("/services.json", params={"jurisdiction_id": SPRINGFIELD})
    assert as_json.headers["content-type"] == "application/json; charset=utf-8"
    as_xml = http.get("/services.xml", params={"jurisdiction_id": SPRINGFIELD})
    assert as_xml.headers["content-type"] == "text/xml; charset=utf-8"
    assert as_xml.content.startswith(XML_DECLARATION)


def test_c02_c04_xml_errors_are_errors_error(http: httpx.Client) -> None:
    response = http.get("/services.xml")
    assert response.status_code == 400
    root = SafeET.fromstring(response.content)
    assert root.tag == "errors"
    assert root.findtext("error/code") == "400"


def test_c04_json_is_the_xml_without_root(http: httpx.Client) -> None:
    params = {"jurisdiction_id": SPRINGFIELD}
    services = http.get("/services.json", params=params).json()
    root = SafeET.fromstring(http.get("/services.xml", params=params).content)
    assert root.tag == "services"
    assert [s["service_code"] for s in services] == [
        e.findtext("service_code") for e in root.findall("service")
    ]
    assert root.findtext("service/metadata") == "true"


def test_c06_jurisdiction_required_with_several_and_unknown_is_404(http: httpx.Client) -> None:
    missing = http.get("/services.json", params={"jurisdiction_id": ""})
    assert missing.status_code == 400
    assert "jurisdiction_id required" in missing.json()[0]["description"]
    assert http.get("/services.json", params={"jurisdiction_id": "nowhere"}).status_code == 404


ONE_CITY = """
jurisdictions: [{id: solo.example, name: Solo}]
services:
  - {code: LITTER, jurisdiction: solo.example, name: Litter}
routing: {default: mail}
instances: {mail: {kind: email}}
"""


def test_c06_jurisdiction_optional_with_one(tmp_path: Path) -> None:
    (tmp_path / "one.yaml").write_text(ONE_CITY)
    rt = make_runtime(
        f"sqlite:///{tmp_path}/one.db", tmp_path / "media", str(tmp_path / "one.yaml")
    )
    try:
        with LiveServer(create_app(rt)) as live:
            url = f"{live.url}/open311/v2/services.json"
            for params in ({}, {"jurisdiction_id": ""}, {"jurisdiction_id": "solo.example"}):
                response = httpx.get(url, params=params)
                assert response.status_code == 200, response.text
                assert response.json()[0]["service_code"] == "LITTER"
            assert httpx.get(url, params={"jurisdiction_id": "x"}).status_code == 404
    finally:
        rt.close()


def test_c08_discovery(server: LiveServer) -> None:
    doc = httpx.get(f"{server.url}/open311/discovery.json").json()
    assert datetime.fromisoformat(doc["changeset"]) < datetime.now(UTC)
    endpoint = doc["endpoints"][0]
    assert endpoint["specification"] == "http://wiki.open311.org/GeoReport_v2"
    assert not endpoint["url"].endswith("/")
    assert endpoint["url"].endswith("/open311/v2")
    assert endpoint["type"] in ("production", "test")
    assert set(endpoint["formats"]) == {"text/xml", "application/json"}
    root = SafeET.fromstring(httpx.get(f"{server.url}/open311/discovery.xml").content)
    assert root.findtext("endpoints/endpoint/formats/format") == "text/xml"


def test_c09_service_list_of_a_jurisdiction(http: httpx.Client) -> None:
    services = http.get("/services.json", params={"jurisdiction_id": SHELBYVILLE}).json()
    by_code = {s["service_code"]: s for s in services}
    assert "POTHOLE" not in by_code
    assert by_code["MISSED_BIN"]["type"] == "batch"
    assert by_code["NOISE"]["type"] == "blackbox"
    assert by_code["MISSED_BIN"]["metadata"] is True
    assert by_code["PLAYGROUND"]["metadata"] is False
    assert by_code["MISSED_BIN"]["keywords"] == "bin,collection,waste"
    assert by_code["MISSED_BIN"]["groups"] == ["Sanitation"]


def test_c10_service_definition_and_unknown_code(http: httpx.Client) -> None:
    params = {"jurisdiction_id": SPRINGFIELD}
    definition = http.get("/services/POTHOLE.json", params=params).json()
    assert definition["service_code"] == "POTHOLE"
    orders = [a["order"] for a in definition["attributes"]]
    assert orders == sorted(set(orders)) and min(orders) >= 1
    lane = next(a for a in definition["attributes"] if a["code"] == "LANE")
    assert lane["datatype"] == "singlevaluelist" and lane["required"] is True
    assert {"key": "shoulder", "name": "On the shoulder or kerb"} in lane["values"]
    root = SafeET.fromstring(http.get("/services/POTHOLE.xml", params=params).content)
    assert root.tag == "service_definition"
    assert root.findtext("attributes/attribute[2]/values/value/key") == "carriageway"
    assert http.get("/services/NOPE.json", params=params).status_code == 404
    # a service of the other jurisdiction is unknown here
    assert http.get("/services/NOISE.json", params=params).status_code == 404


def test_c18_single_request_is_a_one_element_list(http: httpx.Client, create: Create) -> None:
    request_id = new_id(create, description="by the school", address_string="1 School Rd")
    found = http.get(f"/requests/{request_id}.json", params={"jurisdiction_id": SPRINGFIELD})
    assert found.status_code == 200
    (doc,) = found.json()
    assert doc["service_request_id"] == request_id
    assert doc["status"] == "open"
    assert doc["service_code"] == "POTHOLE" and doc["service_name"] == "Pothole"
    assert doc["description"] == "by the school"
    assert doc["address"] == "1 School Rd"
    assert doc["lat"] == 37.76 and doc["long"] == -122.41
    assert datetime.fromisoformat(doc["requested_datetime"]).utcoffset() is not None
    assert doc["agency_responsible"] == "Springfield Public Works"


def test_c18_unknown_id_is_404(http: httpx.Client) -> None:
    params = {"jurisdiction_id": SPRINGFIELD}
    assert http.get("/requests/01ARZ3NDEKTSV4RRFFQ69G5FAV.json", params=params).status_code == 404
    assert http.get("/requests/not-an-id.xml", params=params).status_code == 404


def test_c18_request_of_another_jurisdiction_is_not_found(
    http: httpx.Client, create: Create
) -> None:
    request_id = new_id(create)
    response = http.get(f"/requests/{request_id}.json", params={"jurisdiction_id": SHELBYVILLE})
    assert response.status_code == 404


def test_c18_empty_result_is_an_empty_list(http: httpx.Client) -> None:
    params = {"jurisdiction_id": SPRINGFIELD, "service_code": "NO_SUCH_SERVICE"}
    response = http.get("/requests.json", params=params)
    assert response.status_code == 200 and response.json() == []
    root = SafeET.fromstring(http.get("/requests.xml", params=params).content)
    assert root.tag == "service_requests" and len(root) == 0


def test_c17_service_request_id_list_overrides_other_filters(
    http: httpx.Client, create: Create
) -> None:
    first, second = new_id(create), new_id(create)
    params = {
        "jurisdiction_id": SPRINGFIELD,
        "service_request_id": f"{first}, {second},",
        "service_code": "GRAFFITI",
        "status": "closed",
    }
    found = {d["service_request_id"] for d in http.get("/requests.json", params=params).json()}
    assert found == {first, second}


def test_c17_filters_by_service_code_status_and_dates(http: httpx.Client, create: Create) -> None:
    pothole = new_id(create)
    sign = new_id(create, service_code="STREET_SIGN")
    base = {"jurisdiction_id": SPRINGFIELD}

    def ids(**params: str) -> set[str]:
        response = http.get("/requests.json", params={**base, **params})
        assert response.status_code == 200, response.text
        return {d["service_request_id"] for d in response.json()}

    assert sign in ids(service_code="STREET_SIGN,GRAFFITI")
    assert pothole not in ids(service_code="STREET_SIGN")
    assert pothole in ids(status="open")
    assert pothole not in ids(status="closed")
    now = datetime.now(UTC)
    assert pothole in ids(start_date=(now - timedelta(hours=1)).isoformat())
    assert pothole not in ids(
        start_date=(now - timedelta(days=3)).isoformat(),
        end_date=(now - timedelta(days=2)).isoformat(),
    )


def test_c17_list_parameters_may_be_repeated_comma_delimited_or_both(
    http: httpx.Client, create: Create
) -> None:
    # The spec's "may be declared multiple times, comma delimited"; Retrofit's @Query List and
    # other clients send a list as repeated keys: no value may be dropped.
    pothole, sign, light = (
        new_id(create, service_code=code) for code in ("POTHOLE", "STREET_SIGN", "STREETLIGHT")
    )
    mine = {pothole, sign, light}

    def ids(query: list[tuple[str, str]]) -> set[str]:
        response = http.get("/requests.json", params=[("jurisdiction_id", SPRINGFIELD), *query])
        assert response.status_code == 200, response.text
        return {d["service_request_id"] for d in response.json()} & mine

    codes = [("service_code", "POTHOLE"), ("service_code", "STREETLIGHT")]
    assert ids(codes) == {pothole, light}
    assert ids([("service_code", "POTHOLE,STREET_SIGN"), ("service_code", "STREETLIGHT")]) == mine
    assert ids([("status", "closed"), ("status", "open")]) == mine
    assert ids([("status", "open"), ("status", "closed")]) == mine
    assert ids([("service_code", "POTHOLE"), ("service_code", "GRAFFITI")]) == {pothole}
    looked_up = [("service_request_id", f"{pothole},{sign}"), ("service_request_id", light)]
    assert ids(looked_up) == mine
    bad = http.get(
        "/requests.json",
        params=[("jurisdiction_id", SPRINGFIELD), ("status", "open"), ("status", "sideways")],
    )
    assert bad.status_code == 400
    assert bad.json()[0]["description"] == "status: 'sideways' is not open or closed"


def test_c17_date_range_over_90_days_and_zone_less_dates_are_400(http: httpx.Client) -> None:
    base = {"jurisdiction_id": SPRINGFIELD}
    too_long = http.get(
        "/requests.json",
        params={**base, "start_date": "2026-01-01T00:00:00Z", "end_date": "2026-06-01T00:00:00Z"},
    )
    assert too_long.status_code == 400
    assert "at most 90 days" in too_long.json()[0]["description"]
    no_zone = http.get("/requests.json", params={**base, "start_date": "2026-01-01T00:00:00"})
    assert no_zone.status_code == 400
    assert "has no time zone" in no_zone.json()[0]["description"]


def test_c17_a_date_alone_is_400_saying_a_time_and_zone_are_needed(http: httpx.Client) -> None:
    # Valid W3C, but whose midnight is a guess, and as an end_date it would leave out the day.
    for name in ("start_date", "end_date", "updated_after"):
        response = http.get(
            "/requests.json", params={"jurisdiction_id": SPRINGFIELD, name: "2026-12-01"}
        )
        assert response.status_code == 400
        assert response.json()[0]["description"] == (
            f"{name}: '2026-12-01' is a date alone: give a time and a zone too "
            "(e.g. 2026-12-01T00:00:00Z)"
        )


def test_c17_an_offset_whose_plus_was_left_unencoded_is_read_as_plus(
    http: httpx.Client, create: Create
) -> None:
    request_id = new_id(create)
    an_hour_ago = datetime.now(UTC).astimezone(timezone(timedelta(hours=5))) - timedelta(hours=1)
    # The '+' as a client forgot to encode it: it arrives as a space; read as '-' or as no
    # zone, the start would be ten hours later or refused.
    as_sent = an_hour_ago.isoformat(timespec="seconds")
    assert as_sent.endswith("+05:00")
    for form in (as_sent, as_sent.replace("+05:00", "+0500"), as_sent.replace("T", " ")):
        response = http.get(f"/requests.json?jurisdiction_id={SPRINGFIELD}&start_date={form}")
        assert response.status_code == 200, (form, response.text)
        assert request_id in {d["service_request_id"] for d in response.json()}, form
    updates = http.get(f"/servicerequestupdates.json?start_date={as_sent}")
    assert updates.status_code == 200, updates.text
    # The space between a date and a time is no '+': without an offset, still no zone.
    no_zone = http.get(f"/requests.json?jurisdiction_id={SPRINGFIELD}&start_date=2026-12-01+10:00")
    assert no_zone.status_code == 400
    assert "'2026-12-01 10:00' has no time zone" in no_zone.json()[0]["description"]


@pytest.mark.parametrize(
    "dates",
    [
        {"end_date": "0001-01-01T00:00:00Z"},  # the default start, 90 days before, is year 0
        {"start_date": "9999-12-31T23:00:00Z"},  # the default end, 90 days after, is year 10000
        {"start_date": "0001-01-01T00:30:00+01:00", "end_date": "0001-01-02T00:00:00+01:00"},
        {"updated_after": "0001-01-01T00:00:00+01:00"},  # in UTC, year 0
        {"updated_before": "9999-12-31T23:59:59-01:00"},  # in UTC, year 10000
    ],
)
def test_c07_dates_near_the_ends_of_the_calendar_are_400_not_500(
    http: httpx.Client, dates: dict[str, str]
) -> None:
    response = http.get("/requests.json", params={"jurisdiction_id": SPRINGFIELD, **dates})
    assert response.status_code == 400, response.text
    for error in response.json():
        assert "is out of range (years 1900 to 9000)" in error["description"]


def test_c03_several_bad_query_values_are_reported_at_once(http: httpx.Client) -> None:
    response = http.get(
        "/requests.json",
        params={
            "jurisdiction_id": SPRINGFIELD,
            "status": "sideways",
            "page": "zero",
            "start_date": "yesterday",
        },
    )
    assert response.status_code == 400
    assert len(response.json()) == 3


def test_c19_paging_and_page_size_limits(http: httpx.Client, create: Create) -> None:
    for _ in range(3):
        new_id(create, service_code="FLYTIPPING")
    base = {"jurisdiction_id": SPRINGFIELD, "service_code": "FLYTIPPING", "page_size": "2"}
    page1 = http.get("/requests.json", params={**base, "page": "1"}).json()
    page2 = http.get("/requests.json", params={**base, "page": "2"}).json()
    assert len(page1) == 2 and len(page2) >= 1
    assert not {d["service_request_id"] for d in page1} & {d["service_request_id"] for d in page2}
    too_big = http.get("/requests.json", params={**base, "page_size": "501"})
    assert too_big.status_code == 400


def test_c17_c19_requests_are_listed_newest_first_unfiltered_and_by_page(
    http: httpx.Client, create: Create
) -> None:
    # A client showing recent reports reads the first page: the new ones must be on it, however
    # many older ones the window holds.
    first, second, third = (new_id(create) for _ in range(3))
    base = {"jurisdiction_id": SPRINGFIELD}

    def listed(**params: str) -> list[str]:
        response = http.get("/requests.json", params={**base, **params})
        assert response.status_code == 200, response.text
        return [d["service_request_id"] for d in response.json()]

    assert listed()[:3] == [third, second, first]
    assert listed(page_size="2") == [third, second]
    assert listed(page_size="2", page="2")[0] == first
    times = [d["requested_datetime"] for d in http.get("/requests.json", params=base).json()]
    assert [datetime.fromisoformat(t) for t in times] == sorted(
        (datetime.fromisoformat(t) for t in times), reverse=True
    )


def test_c19_bounding_box(http: httpx.Client, create: Create) -> None:
    inside = new_id(create, service_code="FLYTIPPING", lat="10.5", long="20.5")
    outside = new_id(create, service_code="FLYTIPPING", lat="-10", long="-20")
    box = {"lat_ne": "11", "long_ne": "21", "lat_sw": "10", "long_sw": "20"}
    params = {"jurisdiction_id": SPRINGFIELD, **box}
    found = {d["service_request_id"] for d in http.get("/requests.json", params=params).json()}
    assert inside in found and outside not in found
    as_one = http.get(
        "/requests.json", params={"jurisdiction_id": SPRINGFIELD, "bbox": "11,21,10,20"}
    )
    assert inside in {d["service_request_id"] for d in as_one.json()}
    partial = http.get("/requests.json", params={"jurisdiction_id": SPRINGFIELD, "lat_ne": "1"})
    assert partial.status_code == 400


def test_c19_updated_after_filter(http: httpx.Client, create: Create) -> None:
    request_id = new_id(create, service_code="FLYTIPPING")
    future = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    params = {"jurisdiction_id": SPRINGFIELD, "updated_after": future}
    assert request_id not in {
        d["service_request_id"] for d in http.get("/requests.json", params=params).json()
    }


def test_the_readmes_catch_up_read_for_back_office_systems_answers_as_written(
    http: httpx.Client, create: Create
) -> None:
    """The events chapter's catch-up read, its `...` filled in, on a city of two jurisdictions
    (the sandbox's): it answers, and tells of a request changed since then."""
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    chapter = readme.split("## For back-office systems: events", 1)[1].split("\n## ", 1)[0]
    [query] = re.findall(r"`GET (/requests\.json\?[^`]*)`", chapter)
    since = datetime.now(UTC) - timedelta(seconds=5)
    request_id = new_id(create)
    filled = {"jurisdiction_id": SPRINGFIELD, "updated_after": since.isoformat()}
    path, _, documented = query.partition("?")
    params = {k: filled[k] if v == "..." else v for k, v in parse_qsl(documented)}

    response = http.get(path, params=params)

    assert response.status_code == 200, response.text
    assert request_id in {d["service_request_id"] for d in response.json()}


def test_c19_updated_after_tells_of_a_change_to_a_request_made_over_90_days_ago(
    http: httpx.Client, create: Create, runtime: Runtime
) -> None:
    now = datetime.now(UTC)
    made_long_ago = make_request(
        new_request_id(),
        jurisdiction=SPRINGFIELD,
        service_code="POTHOLE",
        requested_at=now - timedelta(days=200),
        updated_at=now - timedelta(days=200),
    )
    with runtime.store.transaction() as tx:
        tx.add_request(made_long_ago)
    polled_at = datetime.now(UTC)
    with runtime.store.transaction() as tx:
        tx.apply_status_update(
            StatusUpdate(
                request_id=made_long_ago.id,
                status=Status.CLOSED,
                at=datetime.now(UTC),
                update_id="closed-at-last",
                source="test",
            )
        )
    made_now = new_id(create)
    base = {"jurisdiction_id": SPRINGFIELD, "updated_after": polled_at.isoformat()}

    def ids(**params: str) -> list[str]:
        response = http.get("/requests.json", params={**base, **params})
        assert response.status_code == 200, response.text
        return [d["service_request_id"] for d in response.json()]

    assert ids() == [made_now, made_long_ago.id]
    until = datetime.now(UTC).isoformat()
    assert ids(updated_before=until) == [made_now, made_long_ago.id]
    assert ids(page_size="1") == [made_now]  # the limit still applies
    assert ids(page_size="1", page="2") == [made_long_ago.id]
    # A requested range given with it still applies.
    assert ids(start_date=(now - timedelta(days=30)).isoformat()) == [made_now]
    assert ids(end_date=datetime.now(UTC).isoformat()) == [made_now]
    before = http.get(
        "/requests.json", params={"jurisdiction_id": SPRINGFIELD, "updated_before": until}
    )
    assert made_long_ago.id in {d["service_request_id"] for d in before.json()}


def test_c19_extensions_true_adds_extended_attributes_and_notes(
    http: httpx.Client, create: Create
) -> None:
    request_id = new_id(create, **{"attribute[HAZARDS][]": ["water", "damage"]})
    params = {"jurisdiction_id": SPRINGFIELD, "extensions": "true"}
    (doc,) = http.get(f"/requests/{request_id}.json", params=params).json()
    ext = doc["extended_attributes"]
    assert ext["status"] == "open" and ext["channel"] == "web"
    assert ext["jurisdiction_id"] == SPRINGFIELD
    assert {"code": "HAZARDS", "values": ["water", "damage"]} in ext["answers"]
    assert isinstance(doc["notes"], list)
    (plain,) = http.get(
        f"/requests/{request_id}.json", params={"jurisdiction_id": SPRINGFIELD}
    ).json()
    assert "extended_attributes" not in plain


def test_c20_reads_never_return_reporter_contact_data(http: httpx.Client, create: Create) -> None:
    personal = {
        "email": "resident@example.org",
        "phone": "+15550100",
        "first_name": "Rosalind",
        "last_name": "Quimby",
        "device_id": "device-7f3a",
    }
    request_id = new_id(create, **personal)
    bodies = []
    for fmt in ("json", "xml"):
        for extensions in ("false", "true"):
            params = {"jurisdiction_id": SPRINGFIELD, "extensions": extensions}
            bodies.append(http.get(f"/requests/{request_id}.{fmt}", params=params).text)
            bodies.append(
                http.get(
                    f"/requests.{fmt}", params={**params, "service_request_id": request_id}
                ).text
            )
    for body in bodies:
        assert request_id in body
        for value in personal.values():
            assert value not in body


def test_c16_token_resolves_to_the_request(http: httpx.Client, api_key: str) -> None:
    created = http.post(
        "/requests.json",
        data={
            "api_key": api_key,
            "jurisdiction_id": SHELBYVILLE,
            "service_code": "MISSED_BIN",
            "address_string": "4 Elm Row",
            "attribute[BIN_TYPE]": "recycling",
        },
    )
    assert created.status_code == 200, created.text
    (answer,) = created.json()
    assert "service_request_id" not in answer
    token = answer["token"]
    params = {"jurisdiction_id": SHELBYVILLE}
    (resolved,) = http.get(f"/tokens/{token}.json", params=params).json()
    assert resolved["token"] == token
    request_id = resolved["service_request_id"]
    assert request_id != token
    assert http.get(f"/requests/{request_id}.json", params=params).status_code == 200
    root = SafeET.fromstring(http.get(f"/tokens/{token}.xml", params=params).content)
    assert root.findtext("request/service_request_id") == request_id
    assert http.get("/tokens/T01ARZ3NDEKTSV4RRFFQ69G5FAV.json", params=params).status_code == 404


def test_c16_a_token_of_another_jurisdiction_is_404_like_an_unknown_token(
    http: httpx.Client, api_key: str
) -> None:
    created = http.post(
        "/requests.json",
        data={
            "api_key": api_key,
            "jurisdiction_id": SHELBYVILLE,
            "service_code": "MISSED_BIN",
            "address_string": "5 Elm Row",
            "attribute[BIN_TYPE]": "recycling",
        },
    )
    token = created.json()[0]["token"]
    other = http.get(f"/tokens/{token}.json", params={"jurisdiction_id": SPRINGFIELD})
    assert other.status_code == 404
    assert other.json() == [{"code": 404, "description": f"token {token!r} not found"}]
    own = http.get(f"/tokens/{token}.json", params={"jurisdiction_id": SHELBYVILLE})
    assert own.status_code == 200


def test_unknown_parameters_are_ignored(http: httpx.Client) -> None:
    params = {"jurisdiction_id": SPRINGFIELD, "page_size_x": "9", "foo": "bar", "api_key": ""}
    assert http.get("/services.json", params=params).status_code == 200


def test_healthz(server: LiveServer) -> None:
    response = httpx.get(f"{server.url}/healthz")
    assert response.status_code == 200 and response.json() == {"status": "ok"}


def test_a_method_a_path_does_not_take_is_405_with_every_method_it_does_take(
    http: httpx.Client,
) -> None:
    # RFC 9110 15.5.6: the Allow header lists the methods the resource supports.
    for method, path, allowed in [
        ("DELETE", "/requests.json", "GET, HEAD, POST"),
        ("PUT", "/requests.xml", "GET, HEAD, POST"),
        ("POST", "/services.json", "GET, HEAD"),
        ("DELETE", "/requests/01ARZ3NDEKTSV4RRFFQ69G5FAV.json", "GET, HEAD"),
    ]:
        response = http.request(method, path, params={"jurisdiction_id": SPRINGFIELD})
        assert response.status_code == 405, (method, path)
        assert response.headers["allow"] == allowed, (method, path)


def test_head_on_a_read_answers_its_get_headers_without_a_body(http: httpx.Client) -> None:
    params = {"jurisdiction_id": SPRINGFIELD}
    for path in ("/services.json", "/services.xml", "/../discovery.json"):
        get = http.get(path, params=params)
        head = http.head(path, params=params)
        assert (head.status_code, get.status_code) == (200, 200), path
        assert head.content == b""
        assert head.headers["content-type"] == get.headers["content-type"]
        assert head.headers["content-length"] == str(len(get.content))


def test_a_filter_that_takes_one_value_given_twice_is_refused_not_guessed(
    http: httpx.Client,
) -> None:
    twice = (
        f"/requests.json?jurisdiction_id={SPRINGFIELD}"
        "&start_date=2026-11-01T00:00:00Z&start_date=2026-12-01T00:00:00Z"
    )
    response = http.get(twice)
    assert response.status_code == 400
    assert [e["description"] for e in response.json()] == [
        "start_date: given 2 times; it takes one value"
    ]
    pages = http.get(f"/requests.json?jurisdiction_id={SPRINGFIELD}&page=1&page=2")
    assert pages.status_code == 400 and "page: given 2 times" in pages.text
    updates = http.get("/servicerequestupdates.json?end_date=2026-12-01T00:00:00Z&end_date=x")
    assert updates.status_code == 400 and "end_date: given 2 times" in updates.text
    # The list filters take several, as the spec says.
    listed = http.get(f"/requests.json?jurisdiction_id={SPRINGFIELD}&status=open&status=closed")
    assert listed.status_code == 200, listed.text


def test_updated_after_not_before_updated_before_is_refused(http: httpx.Client) -> None:
    params = {
        "jurisdiction_id": SPRINGFIELD,
        "updated_after": "2026-12-02T00:00:00Z",
        "updated_before": "2026-12-01T00:00:00Z",
    }
    response = http.get("/requests.json", params=params)
    assert response.status_code == 400
    assert "updated_after: must be before updated_before" in response.text
