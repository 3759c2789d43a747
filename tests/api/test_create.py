"""POST /requests over real HTTP (C-05, C-07, C-11..C-15) with media and body limits.

Every test runs twice, on two servers with stores of their own: one writing creates on its
event loop, one through the intake writer process (as `civicbus api` does on a machine with
more than one core).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from defusedxml import ElementTree as SafeET

from bus.api import create_app
from bus.bootstrap import Runtime
from tests.api.conftest import (
    SHELBYVILLE,
    SPRINGFIELD,
    LiveServer,
    make_runtime,
    pothole_form,
)
from tests.media_files import jpeg, png

Create = Callable[..., httpx.Response]
PNG = png(b"create")
JPEG = jpeg(b"create")


@pytest.fixture(scope="module", params=["event loop", "writer process"])
def intake(request: pytest.FixtureRequest) -> str:
    """Where the server writes its creates."""
    return str(request.param)


@pytest.fixture(scope="module")
def runtime(tmp_path_factory: pytest.TempPathFactory, intake: str) -> Iterator[Runtime]:
    base = tmp_path_factory.mktemp("create")
    rt = make_runtime(f"sqlite:///{base}/civicbus.db", base / "media")
    yield rt
    rt.close()


@pytest.fixture(scope="module")
def server(runtime: Runtime, intake: str) -> Iterator[LiveServer]:
    app = create_app(runtime, intake_process=intake == "writer process")
    with LiveServer(app, lifespan=True) as live:
        yield live


def descriptions(response: httpx.Response) -> list[str]:
    return [e["description"] for e in response.json()]


def test_c11_realtime_create_answers_201_with_the_id(create: Create, runtime: Runtime) -> None:
    response = create()
    assert response.status_code == 200
    (answer,) = response.json()
    request_id = answer["service_request_id"]
    assert isinstance(request_id, str) and len(request_id) == 26
    assert "token" not in answer
    stored = runtime.store.get_request(request_id)
    assert stored is not None and stored.attributes == {"LANE": "carriageway"}


def test_c01_create_with_an_unknown_format_suffix_is_404(create: Create) -> None:
    response = create(fmt="csv")
    assert response.status_code == 404
    assert response.json() == [{"code": 404, "description": "unknown format: use .json or .xml"}]


def test_the_create_route_is_documented_in_the_openapi_document(server: LiveServer) -> None:
    # Served by a plain route for speed; the document must still describe it.
    document = httpx.get(f"{server.url}/openapi.json", timeout=10)
    operation = document.json()["paths"]["/open311/v2/requests.{fmt}"]["post"]
    assert "application/x-www-form-urlencoded" in operation["requestBody"]["content"]
    assert {"200", "400", "403", "404"} <= set(operation["responses"])
    assert "201" not in operation["responses"]  # a create is answered 200, as clients expect


def test_c14_xml_create_answer(create: Create) -> None:
    response = create(fmt="xml")
    assert response.status_code == 200
    root = SafeET.fromstring(response.content)
    assert root.tag == "service_requests"
    assert root.findtext("request/service_request_id")


def test_c14_blackbox_service_returns_neither_id_nor_token(
    http: httpx.Client, api_key: str
) -> None:
    response = http.post(
        "/requests.json",
        data={
            "api_key": api_key,
            "jurisdiction_id": SHELBYVILLE,
            "service_code": "NOISE",
            "address_string": "The Square",
            "account_id": "acct-1",
        },
    )
    assert response.status_code == 200, response.text
    (answer,) = response.json()
    assert "service_request_id" not in answer and "token" not in answer
    assert answer["account_id"] == "acct-1"


def test_c14_batch_service_returns_token_and_notice(http: httpx.Client, api_key: str) -> None:
    response = http.post(
        "/requests.json",
        data={
            "api_key": api_key,
            "jurisdiction_id": SHELBYVILLE,
            "service_code": "MISSED_BIN",
            "address_string": "4 Elm Row",
            "attribute[BIN_TYPE]": "garden",
        },
    )
    (answer,) = response.json()
    assert answer["token"].startswith("T") and "service_request_id" not in answer
    assert answer["service_notice"] == "Missed collections are reviewed each evening."


def test_c11_api_key_missing_invalid_or_revoked_is_403(create: Create, runtime: Runtime) -> None:
    assert create(api_key="").status_code == 403
    assert create(api_key="not-a-key").status_code == 403
    runtime.store.add_client("soon-revoked")
    _, key = runtime.store.add_client("revoked-app")
    assert create(api_key=key).status_code == 200
    assert runtime.store.revoke_client("revoked-app")
    response = create(api_key=key)
    assert response.status_code == 403
    assert response.json()[0]["code"] == 403


def test_c11_api_key_in_the_query_string_of_a_post(http: httpx.Client, api_key: str) -> None:
    response = http.post(
        "/requests.json",
        params={"api_key": api_key},
        data={
            "jurisdiction_id": SPRINGFIELD,
            "service_code": "STREET_SIGN",
            "address_string": "Main St / 3rd",
            "api_key": "",
        },
    )
    assert response.status_code == 200, response.text


def test_client_bound_to_a_jurisdiction_may_only_post_there(
    create: Create, runtime: Runtime
) -> None:
    _, key = runtime.store.add_client("shelby-app", SHELBYVILLE)
    response = create(api_key=key)
    assert response.status_code == 403
    assert "not valid for jurisdiction springfield.example" in descriptions(response)[0]


def test_c06_create_needs_jurisdiction(create: Create) -> None:
    assert create(jurisdiction_id="").status_code == 400
    assert create(jurisdiction_id="atlantis.example").status_code == 404


def test_c07_several_errors_at_once_each_naming_its_field(create: Create) -> None:
    response = create(lat="", long="", **{"attribute[LANE]": "x", "attribute[DEPTH_CM]": "deep"})
    assert response.status_code == 400
    assert descriptions(response) == [
        "a location is required: lat and long, address_string, or address_id",
        "DEPTH_CM: 'deep' is not a number",
        "LANE: 'x' is not one of carriageway, cycle_lane, shoulder",
    ]
    assert all(e["code"] == 400 for e in response.json())


@pytest.mark.parametrize("fmt", ["json", "xml"])
def test_c11_unknown_service_code_or_jurisdiction_is_404_in_the_format_asked(
    create: Create, fmt: str
) -> None:
    # GeoReport v2, POST Service Request: "404 - service_code or jurisdiction_id was not found".
    for fields, expected in (
        (
            {"service_code": "UFO", "lat": "100"},
            "service_code 'UFO' is not a service of springfield.example",
        ),
        (
            {"jurisdiction_id": "atlantis.example"},
            "jurisdiction_id 'atlantis.example' is not served here",
        ),
    ):
        response = create(fmt, **fields)
        assert response.status_code == 404, response.text
        if fmt == "json":
            assert response.json() == [{"code": 404, "description": expected}]
        else:
            root = SafeET.fromstring(response.content)
            assert [(e.findtext("code"), e.findtext("description")) for e in root] == [
                ("404", expected)
            ]


def test_c11_an_unknown_service_code_is_404_only_for_a_valid_api_key(create: Create) -> None:
    response = create(service_code="UFO", api_key="not-a-key")
    assert response.status_code == 403


def test_c07_missing_service_code(create: Create) -> None:
    response = create(service_code="")
    assert response.status_code == 400
    assert "service_code required" in descriptions(response)


def test_c07_xml_error_list_for_xml_calls(create: Create) -> None:
    response = create(fmt="xml", **{"attribute[LANE]": ""})
    assert response.status_code == 400
    root = SafeET.fromstring(response.content)
    assert root.findtext("error/description") == "LANE required"


def test_c12_multivaluelist_both_spellings_over_http(create: Create, runtime: Runtime) -> None:
    bracketed = create(**{"attribute[HAZARDS][]": ["water", "growing"]}).json()[0]
    repeated = create(**{"attribute[HAZARDS]": ["water", "damage"]}).json()[0]
    first = runtime.store.get_request(bracketed["service_request_id"])
    second = runtime.store.get_request(repeated["service_request_id"])
    assert first is not None and first.attributes["HAZARDS"] == ("water", "growing")
    assert second is not None and second.attributes["HAZARDS"] == ("water", "damage")


def test_c12_multivaluelist_with_indexes_as_php_and_qs_send_it(
    http: httpx.Client, api_key: str, runtime: Runtime
) -> None:
    # `http_build_query(['attribute' => ['HAZARDS' => ['water', 'damage']]])`, items reordered.
    body = "&".join(f"{k}={v}" for k, v in pothole_form(api_key).items())
    response = http.post(
        "/requests.json",
        content=body + "&attribute%5BHAZARDS%5D%5B1%5D=damage&attribute%5BHAZARDS%5D%5B0%5D=water",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert response.status_code == 200, response.text
    stored = runtime.store.get_request(response.json()[0]["service_request_id"])
    assert stored is not None and stored.attributes["HAZARDS"] == ("water", "damage")


@pytest.mark.parametrize("fmt", ["json", "xml"])
def test_c12_an_attribute_field_of_another_shape_is_400_not_dropped(
    create: Create, fmt: str
) -> None:
    response = create(fmt, **{"attribute[HAZARDS][first]": "water"})
    assert response.status_code == 400
    expected = (
        "'attribute[HAZARDS][first]' is not an attribute field: send attribute[CODE]=value, and "
        "for several values attribute[CODE][]=value or attribute[CODE][0]=value"
    )
    if fmt == "json":
        assert descriptions(response) == [expected]
    else:
        assert SafeET.fromstring(response.content).findtext("error/description") == expected


def test_urlencoded_and_multipart_forms_are_read_alike(
    http: httpx.Client, api_key: str, runtime: Runtime
) -> None:
    fields = {
        "api_key": api_key,
        "jurisdiction_id": SPRINGFIELD,
        "service_code": "POTHOLE",
        "lat": "37.76",
        "long": "-122.41",
        "attribute[LANE]": "carriageway",
        "attribute[HAZARDS][]": ["water", "growing"],
        "description": "Stra\u00dfe caf\u00e9 \u2014 100% deep & wide; a+b=c",
    }
    urlencoded = http.post("/requests.json", data=fields)
    multipart = http.post("/requests.json", data=fields, files={"unused": ("", b"")})

    stored = [
        runtime.store.get_request(response.json()[0]["service_request_id"])
        for response in (urlencoded, multipart)
    ]
    assert [s and (s.description, s.attributes) for s in stored] == [
        (fields["description"], {"LANE": "carriageway", "HAZARDS": ("water", "growing")})
    ] * 2


def test_a_urlencoded_body_with_raw_utf8_is_read_as_utf8(
    http: httpx.Client, api_key: str, runtime: Runtime
) -> None:
    # What `curl -d 'description=Café ☃'` sends: the text's UTF-8 bytes, not percent-escaped.
    body = "&".join(f"{k}={v}" for k, v in pothole_form(api_key).items() if k != "description")
    response = http.post(
        "/requests.json",
        content=(body + "&description=Caf\u00e9 \u2603 100%25").encode(),
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert response.status_code == 200, response.text
    stored = runtime.store.get_request(response.json()[0]["service_request_id"])
    assert stored is not None and stored.description == "Caf\u00e9 \u2603 100%"


def _form_body(api_key: str) -> str:
    return "&".join(f"{k}={v}" for k, v in pothole_form(api_key).items())


@pytest.mark.parametrize("description", [b"Stra%DFe", b"Stra\xdfe"], ids=["percent-escaped", "raw"])
def test_a_form_in_a_declared_charset_is_read_in_it(
    http: httpx.Client, api_key: str, runtime: Runtime, description: bytes
) -> None:
    response = http.post(
        "/requests.json",
        content=_form_body(api_key).encode() + b"&description=" + description,
        headers={"Content-Type": "application/x-www-form-urlencoded; charset=ISO-8859-1"},
    )
    assert response.status_code == 200, response.text
    stored = runtime.store.get_request(response.json()[0]["service_request_id"])
    assert stored is not None and stored.description == "Stra\u00dfe"


@pytest.mark.parametrize("description", [b"Stra%DFe", b"Stra\xdfe"], ids=["percent-escaped", "raw"])
def test_text_not_valid_in_the_forms_charset_is_400_naming_the_field(
    http: httpx.Client, api_key: str, description: bytes
) -> None:
    # ISO-8859-1 text sent without its charset: read as UTF-8, it is not valid UTF-8.
    response = http.post(
        "/requests.json",
        content=_form_body(api_key).encode() + b"&description=" + description,
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert (response.status_code, descriptions(response)) == (
        400,
        [
            "description: not valid UTF-8 (a form is read as UTF-8 unless its Content-Type "
            "names a charset)"
        ],
    )


def test_a_form_in_an_unknown_charset_is_415(http: httpx.Client, api_key: str) -> None:
    response = http.post(
        "/requests.json",
        content=_form_body(api_key) + "&description=Stra%DFe",
        headers={"Content-Type": "application/x-www-form-urlencoded; charset=x-klingon"},
    )
    assert (response.status_code, descriptions(response)) == (
        415,
        ["Content-Type charset 'x-klingon' is not known: send the form in UTF-8"],
    )
    multipart = http.post(
        "/requests.json",
        content=b'--b\r\nContent-Disposition: form-data; name="api_key"\r\n\r\nx\r\n--b--\r\n',
        headers={"Content-Type": "multipart/form-data; boundary=b; charset=x-klingon"},
    )
    assert (multipart.status_code, descriptions(multipart)) == (
        415,
        ["Content-Type charset 'x-klingon' is not known: send the form in UTF-8"],
    )


NOT_A_FORM = (
    "is not accepted: send the form as application/x-www-form-urlencoded or multipart/form-data"
)


@pytest.mark.parametrize("fmt", ["json", "xml"])
def test_c02_a_json_body_is_415_naming_the_form_types(
    http: httpx.Client, api_key: str, fmt: str
) -> None:
    response = http.post(f"/requests.{fmt}", json=pothole_form(api_key))
    assert response.status_code == 415
    expected = f"Content-Type 'application/json' {NOT_A_FORM}"
    if fmt == "json":
        assert response.json() == [{"code": 415, "description": expected}]
    else:
        root = SafeET.fromstring(response.content)
        assert [(e.findtext("code"), e.findtext("description")) for e in root] == [
            ("415", expected)
        ]


def test_c02_any_body_that_is_not_a_form_is_415_and_an_empty_one_needs_no_type(
    http: httpx.Client, api_key: str
) -> None:
    text = http.post(
        "/requests.json", content=b"api_key=x", headers={"Content-Type": "Text/Plain; x=1"}
    )
    assert (text.status_code, descriptions(text)) == (
        415,
        [f"Content-Type 'text/plain' {NOT_A_FORM}"],
    )
    untyped = http.post("/requests.json", content=b"api_key=x")
    assert "content-type" not in untyped.request.headers
    assert (untyped.status_code, descriptions(untyped)) == (
        415,
        [f"a body without Content-Type {NOT_A_FORM}"],
    )
    # No body at all: the fields are missing, as before.
    empty = http.post("/requests.json")
    assert empty.status_code == 400
    assert descriptions(empty) == [
        "jurisdiction_id required (one of springfield.example, shelbyville.example)"
    ]
    # Everything in the query string: a stray type on an empty body is no reason to refuse.
    query = pothole_form(api_key)
    in_query = http.post(
        "/requests.json", params=query, headers={"Content-Type": "application/json"}
    )
    assert in_query.status_code == 200, in_query.text
    # The form types are recognised in any case.
    shouting = http.post(
        "/requests.json",
        content="&".join(f"{k}={v}" for k, v in query.items()),
        headers={"Content-Type": "Application/X-WWW-Form-Urlencoded"},
    )
    assert shouting.status_code == 200, shouting.text


def test_c02_the_415_is_in_the_openapi_document(server: LiveServer) -> None:
    paths = httpx.get(f"{server.url}/openapi.json", timeout=10).json()["paths"]
    for path in ("/open311/v2/requests.{fmt}", "/open311/v2/servicerequestupdates.{fmt}"):
        assert "415" in paths[path]["post"]["responses"]


#: Every free-text field of a create, and the name its error gives.
CREATE_TEXT_FIELDS = {
    "description": "description",
    "address_string": "address_string",
    "address_id": "address_id",
    "zipcode": "zipcode",
    "email": "email",
    "phone": "phone",
    "first_name": "first_name",
    "last_name": "last_name",
    "device_id": "device_id",
    "account_id": "account_id",
    "media_url": "media_url",
    "attribute[POLE_NUMBER]": "POLE_NUMBER",
}


@pytest.mark.parametrize("multipart", [False, True], ids=["urlencoded", "multipart"])
def test_c13_a_nul_character_is_refused_in_every_free_text_field(
    http: httpx.Client, api_key: str, runtime: Runtime, multipart: bool
) -> None:
    # urlencoded, httpx sends the NUL as `%00`; multipart, as the raw byte.
    for field, name in CREATE_TEXT_FIELDS.items():
        form = {
            "api_key": api_key,
            "jurisdiction_id": SPRINGFIELD,
            "service_code": "STREETLIGHT",
            "address_string": "1 Main St",
            field: ("https://example.org/a\x00b" if field == "media_url" else "a\x00b"),
        }
        files = {"unused": ("", b"")} if multipart else None
        response = http.post("/requests.json", data=form, files=files)
        assert (response.status_code, descriptions(response)) == (
            400,
            [f"{name}: contains control characters"],
        ), field


def test_a_form_with_too_many_fields_is_400(http: httpx.Client, api_key: str) -> None:
    body = "&".join(f"f{i}=x" for i in range(1001)) + f"&api_key={api_key}"
    response = http.post(
        "/requests.json",
        content=body,
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert response.status_code == 400
    assert descriptions(response) == ["the form has more than 1000 fields"]


def test_a_urlencoded_form_of_megabytes_is_413_before_it_is_decoded(
    http: httpx.Client, api_key: str
) -> None:
    # Decoding runs on the event loop: megabytes of percent-escapes held every request up.
    escaped = "%C3%A9" * (300 * 1024 // 6)
    body = f"api_key={api_key}&service_code=POTHOLE&description={escaped}"
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    response = http.post("/requests.json", content=body, headers=form)
    assert response.status_code == 413
    assert descriptions(response) == [
        "a urlencoded form is at most 262,144 bytes; send photos as multipart/form-data"
    ]
    # The longest report a form may carry still fits: a 4,000-character description, each
    # character three bytes of UTF-8, percent-encoded.
    longest = {**pothole_form(api_key), "description": "é" * 4000}
    assert http.post("/requests.json", data=longest).status_code == 200


def test_c03_datetime_attribute_without_zone_is_400(http: httpx.Client, api_key: str) -> None:
    response = http.post(
        "/requests.json",
        data={
            "api_key": api_key,
            "jurisdiction_id": SPRINGFIELD,
            "service_code": "SKIP_PERMIT",
            "address_string": "2 Quay",
            "attribute[START_DATE]": "2026-06-01T08:00:00",
        },
    )
    assert response.status_code == 400
    assert descriptions(response) == [
        "START_DATE: '2026-06-01T08:00:00' has no time zone (add Z or +hh:mm)"
    ]


def test_c03_datetime_attribute_out_of_the_calendars_range_is_400(
    http: httpx.Client, api_key: str
) -> None:
    response = http.post(
        "/requests.json",
        data={
            "api_key": api_key,
            "jurisdiction_id": SPRINGFIELD,
            "service_code": "SKIP_PERMIT",
            "address_string": "2 Quay",
            "attribute[START_DATE]": "0001-01-01T00:00:00+01:00",  # in UTC, year 0
        },
    )
    assert response.status_code == 400
    assert descriptions(response) == [
        "START_DATE: '0001-01-01T00:00:00+01:00' is out of range (years 1900 to 9000)"
    ]


def test_c13_reporter_data_is_stored_apart(create: Create, runtime: Runtime) -> None:
    answer = create(email="r@example.org", first_name="Ada", phone="555-0101").json()[0]
    stored = runtime.store.get_request(answer["service_request_id"])
    assert stored is not None
    assert stored.reporter.email == "r@example.org" and stored.reporter.phone == "555-0101"


@pytest.mark.parametrize("multipart", [True, False], ids=["part-without-filename", "urlencoded"])
def test_media_sent_as_text_is_refused_not_dropped(
    http: httpx.Client, api_key: str, multipart: bool
) -> None:
    form = pothole_form(api_key, description="Photo attached?")
    if multipart:  # no filename: multipart parsers read such a part as a text field
        response = http.post("/requests.json", data=form, files={"media": (None, PNG, "image/png")})
    else:
        response = http.post("/requests.json", data={**form, "media": "iVBORw0KGgo="})
    assert response.status_code == 400, response.text
    assert "media must be sent as a file" in response.json()[0]["description"]


def test_c13_media_upload_is_stored_by_content_and_served_back(
    http: httpx.Client, server: LiveServer, api_key: str, runtime: Runtime
) -> None:
    response = http.post(
        "/requests.json",
        data={
            "api_key": api_key,
            "jurisdiction_id": SPRINGFIELD,
            "service_code": "STREET_SIGN",
            "address_string": "Elm St",
            "media_url": "https://elsewhere.example/x.jpg",
        },
        files={"media": ("photo.bin", PNG, "application/octet-stream")},
    )
    assert response.status_code == 200, response.text
    request_id = response.json()[0]["service_request_id"]
    (doc,) = http.get(
        f"/requests/{request_id}.json", params={"jurisdiction_id": SPRINGFIELD}
    ).json()
    digest = hashlib.sha256(PNG).hexdigest()
    assert doc["media_url"].endswith(f"/media/{digest}.png")  # the upload wins over media_url
    served = httpx.get(f"{server.url}/media/{digest}.png")
    assert served.status_code == 200
    assert served.headers["content-type"] == "image/png"
    assert served.content == PNG
    assert httpx.get(f"{server.url}/media/{'0' * 64}.png").status_code == 404


def test_c13_media_is_served_so_that_it_never_runs_as_a_page_of_the_api(
    http: httpx.Client, server: LiveServer, api_key: str
) -> None:
    pdf = b"%PDF-1.7\n1 0 obj << /OpenAction << /S /JavaScript /JS (app.alert(1)) >> >>"
    response = http.post(
        "/requests.json",
        data=pothole_form(api_key),
        files=[("media", ("a.png", PNG, "image/png")), ("media", ("b.pdf", pdf, "text/html"))],
    )
    assert response.status_code == 200, response.text
    photo, document = (
        f"{server.url}/media/{hashlib.sha256(PNG).hexdigest()}.png",
        f"{server.url}/media/{hashlib.sha256(pdf).hexdigest()}.pdf",
    )
    for answer in (
        *(httpx.get(url) for url in (photo, document)),
        *(httpx.head(url) for url in (photo, document)),
    ):
        assert answer.status_code == 200
        assert answer.headers["x-content-type-options"] == "nosniff"
        assert answer.headers["content-security-policy"] == "default-src 'none'; sandbox"
        assert answer.headers["cache-control"] == "public, max-age=3600"
    assert "content-disposition" not in httpx.get(photo).headers  # a photo shows in the browser
    assert httpx.get(document).headers["content-disposition"] == "attachment"
    assert httpx.get(document).headers["content-type"] == "application/pdf"
    missing = httpx.get(f"{server.url}/media/{'0' * 64}.png")
    assert missing.status_code == 404
    assert missing.headers["x-content-type-options"] == "nosniff"
    assert missing.headers["content-security-policy"] == "default-src 'none'; sandbox"


def test_c13_a_media_name_with_a_trailing_newline_is_not_a_media_name(
    server: LiveServer, runtime: Runtime
) -> None:
    # No upload is stored under such a name; one put in the media directory by other means
    # must not be served either, with the content type its name's "extension" claims.
    digest = hashlib.sha256(b"planted").hexdigest()
    planted = Path(runtime.env.media_dir) / digest[:2] / f"{digest}.png\n"
    planted.parent.mkdir(parents=True, exist_ok=True)
    planted.write_bytes(b"<script>alert(1)</script>")
    answer = httpx.get(f"{server.url}/media/{digest}.png%0A")
    assert answer.status_code == 404
    assert b"<script>" not in answer.content


def test_c13_media_type_is_checked_by_content(http: httpx.Client, api_key: str) -> None:
    response = http.post(
        "/requests.json",
        data={
            "api_key": api_key,
            "jurisdiction_id": SPRINGFIELD,
            "service_code": "STREET_SIGN",
            "address_string": "Elm St",
        },
        files={"media": ("photo.jpg", b"<script>not an image</script>", "image/jpeg")},
    )
    assert response.status_code == 400
    assert descriptions(response) == ["media 1: not a JPEG, PNG, GIF, WebP or PDF file"]


def test_c13_media_url_is_kept_when_nothing_is_uploaded(create: Create, http: httpx.Client) -> None:
    answer = create(media_url="https://img.example/pothole.jpg").json()[0]
    (doc,) = http.get(
        f"/requests/{answer['service_request_id']}.json", params={"jurisdiction_id": SPRINGFIELD}
    ).json()
    assert doc["media_url"] == "https://img.example/pothole.jpg"


def _presigned_url(length: int) -> str:
    """A URL of `length` characters shaped like a pre-signed S3 URL with a session token."""
    head = "https://bucket.s3.eu-west-1.amazonaws.com/pothole.jpg?X-Amz-Security-Token="
    return head + "A" * (length - len(head))


@pytest.mark.parametrize("fmt", ["json", "xml"])
def test_c13_a_media_url_of_up_to_4096_characters_is_kept(
    create: Create, http: httpx.Client, fmt: str
) -> None:
    url = _presigned_url(4096)
    response = create(fmt, media_url=url)
    assert response.status_code == 200, response.text
    request_id = (
        response.json()[0]["service_request_id"]
        if fmt == "json"
        else SafeET.fromstring(response.content).findtext("request/service_request_id")
    )
    (doc,) = http.get(
        f"/requests/{request_id}.json", params={"jurisdiction_id": SPRINGFIELD}
    ).json()
    assert doc["media_url"] == url


def test_c13_a_longer_media_url_is_400_naming_the_limit(create: Create) -> None:
    response = create(media_url=_presigned_url(4097))
    assert descriptions(response) == ["media_url: longer than 4,096 characters"]


def test_c13_media_url_is_documented_up_to_4096_characters(server: LiveServer) -> None:
    paths = httpx.get(f"{server.url}/openapi.json", timeout=10).json()["paths"]
    for path in ("/open311/v2/requests.{fmt}", "/open311/v2/servicerequestupdates.{fmt}"):
        body = paths[path]["post"]["requestBody"]["content"]
        for media_type in ("application/x-www-form-urlencoded", "multipart/form-data"):
            assert body[media_type]["schema"]["properties"]["media_url"]["maxLength"] == 4096


def test_body_over_the_limit_is_413(http: httpx.Client, runtime: Runtime, api_key: str) -> None:
    limit = runtime.config.api.max_body_bytes
    response = http.post(
        "/requests.json",
        data={"api_key": api_key},
        files={"media": ("big.jpg", JPEG + b"\x00" * limit, "image/jpeg")},
    )
    assert response.status_code == 413
    assert response.json()[0]["code"] == 413


def test_chunked_body_over_the_limit_is_413(http: httpx.Client, runtime: Runtime) -> None:
    limit = runtime.config.api.max_body_bytes

    def chunks() -> object:
        for _ in range(limit // 65536 + 2):
            yield b"a" * 65536

    response = http.post(
        "/requests.xml",
        content=chunks(),  # type: ignore[arg-type]
        headers={"content-type": "application/x-www-form-urlencoded"},
    )
    assert response.status_code == 413
    assert SafeET.fromstring(response.content).findtext("error/code") == "413"


def test_c15_idempotency_key_replays_the_first_answer(
    create: Create, http: httpx.Client, api_key: str, runtime: Runtime
) -> None:
    data = {
        "api_key": api_key,
        "jurisdiction_id": SPRINGFIELD,
        "service_code": "GRAFFITI",
        "address_string": "Bridge",
        "attribute[SURFACE]": "bridge",
    }
    headers = {"Idempotency-Key": "order-77"}
    first = http.post("/requests.json", data=data, headers=headers)
    again = http.post("/requests.json", data=data, headers=headers)
    assert first.status_code == again.status_code == 200
    assert again.json() == first.json()
    assert "idempotent-replayed" not in first.headers
    assert again.headers["idempotent-replayed"] == "true"
    other = http.post("/requests.json", data=data, headers={"Idempotency-Key": "order-78"})
    assert other.json()[0]["service_request_id"] != first.json()[0]["service_request_id"]


@pytest.mark.parametrize(
    "given", ["0b6f7c7e-3a41-4d0e-9d55-2f3f1c0e8a11", "TICKET-2026/4711", "4155550123"]
)
def test_a_correlation_id_is_carried_by_the_created_event(
    http: httpx.Client, api_key: str, runtime: Runtime, given: str
) -> None:
    response = http.post(
        "/requests.json", data=pothole_form(api_key), headers={"X-Correlation-Id": given}
    )
    assert response.status_code == 200, response.text
    request_id = response.json()[0]["service_request_id"]
    (event,) = [
        row.envelope
        for row in runtime.store.pending_outbox(limit=10_000)
        if row.envelope.subject == request_id
    ]
    assert event.correlationid == given


@pytest.mark.parametrize(
    "given",
    ["resident@example.org", "Jane Doe", "x" * 129, "caf\u00e9", '"quoted"'],
    ids=["e-mail", "space", "too-long", "non-ascii", "quotes"],
)
def test_a_correlation_id_that_could_carry_personal_data_is_400_and_creates_nothing(
    http: httpx.Client, api_key: str, runtime: Runtime, given: str
) -> None:
    # Logged on every line of the request and sent with its events, where identifiers are not
    # redacted: an e-mail address or a name in it would reach every log and back-office system.
    before = len(runtime.store.pending_outbox(limit=10_000))
    response = http.post(
        "/requests.json",
        data=pothole_form(api_key),
        headers={"X-Correlation-Id": given.encode()},  # UTF-8 on the wire
    )
    assert response.status_code == 400
    (problem,) = descriptions(response)
    assert problem.startswith("X-Correlation-Id: must be 1 to 128 printable ASCII characters")
    assert len(runtime.store.pending_outbox(limit=10_000)) == before


def test_c15_idempotency_key_reused_for_a_different_request_is_409_and_creates_nothing(
    http: httpx.Client, api_key: str, runtime: Runtime
) -> None:
    data = {
        "api_key": api_key,
        "jurisdiction_id": SPRINGFIELD,
        "service_code": "GRAFFITI",
        "address_string": "idem",
        "attribute[SURFACE]": "bridge",
    }
    headers = {"Idempotency-Key": "abc-123"}
    first = http.post("/requests.json", data=data, headers=headers)
    assert first.status_code == 200, first.text
    before = len(runtime.store.pending_outbox(limit=10_000))

    other = {**data, "address_string": "idem DIFFERENT"}
    conflict = http.post("/requests.json", data=other, headers=headers)
    assert conflict.status_code == 409
    assert conflict.json() == [
        {
            "code": 409,
            "description": "Idempotency-Key 'abc-123' was already used for a different request; "
            "send this request with a new Idempotency-Key",
        }
    ]
    xml = http.post("/requests.xml", data=other, headers=headers)
    assert xml.status_code == 409
    assert SafeET.fromstring(xml.content).findtext("error/code") == "409"
    assert len(runtime.store.pending_outbox(limit=10_000)) == before

    # The same report again, its fields in another order and its api_key in the query
    # string, still replays the first answer.
    moved = {k: v for k, v in reversed(data.items()) if k != "api_key"}
    again = http.post("/requests.json", data=moved, params={"api_key": api_key}, headers=headers)
    assert again.status_code == 200 and again.json() == first.json()


def test_c15_external_id_attribute_makes_a_create_idempotent(tmp_path: object) -> None:
    from pathlib import Path

    from bus.api import create_app
    from tests.api.conftest import make_runtime

    base = Path(str(tmp_path))
    (base / "city.yaml").write_text(
        """
jurisdictions: [{id: solo.example, name: Solo}]
services:
  - code: LITTER
    jurisdiction: solo.example
    name: Litter
    attributes:
      - {code: external_id, datatype: string, description: Partner reference, order: 1}
routing: {default: mail}
instances: {mail: {kind: email}}
"""
    )
    rt = make_runtime(f"sqlite:///{base}/c.db", base / "media", str(base / "city.yaml"))
    try:
        _, key = rt.store.add_client("partner")
        with LiveServer(create_app(rt)) as live:
            data = {
                "api_key": key,
                "service_code": "LITTER",
                "address_string": "Pier",
                "attribute[external_id]": "P-1",
            }
            url = f"{live.url}/open311/v2/requests.json"
            first, again = httpx.post(url, data=data), httpx.post(url, data=data)
            assert first.status_code == again.status_code == 200
            assert "idempotent-replayed" not in first.headers
            assert again.headers["idempotent-replayed"] == "true"
            assert first.json() == again.json()
            other = httpx.post(url, data={**data, "attribute[external_id]": "P-2"})
            assert other.json() != first.json()
    finally:
        rt.close()


def test_accepted_request_has_its_outbox_event_and_audit_entry(
    create: Create, runtime: Runtime
) -> None:
    request_id = create(email="secret@example.org").json()[0]["service_request_id"]
    rows = [
        r for r in runtime.store.pending_outbox(limit=10_000) if r.envelope.subject == request_id
    ]
    assert len(rows) == 1
    row = rows[0]
    assert row.exchange == "civicbus.events"
    assert row.routing_key == "request.created.POTHOLE"
    assert row.envelope.type.value == "civicbus.request.created"
    assert row.envelope.data["service_code"] == "POTHOLE"
    assert "secret@example.org" not in row.envelope.model_dump_json()
    trail = runtime.store.audit_trail(request_id)
    assert [e.action for e in trail] == ["accepted"]
    assert trail[0].actor == "api:test-app"
    assert "secret@example.org" not in str(trail[0].details)


@pytest.mark.parametrize("value", ["true", "1", "FALSE", "0"])
def test_c05_booleans_in_input(http: httpx.Client, value: str) -> None:
    params = {"jurisdiction_id": SPRINGFIELD, "extensions": value}
    assert http.get("/requests.json", params=params).status_code == 200


def test_c05_bad_boolean_is_400(http: httpx.Client) -> None:
    params = {"jurisdiction_id": SPRINGFIELD, "extensions": "perhaps"}
    response = http.get("/requests.json", params=params)
    assert response.status_code == 400


def test_c15_concurrent_creates_with_one_key_store_one_request(
    http: httpx.Client, api_key: str, runtime: Runtime
) -> None:
    from concurrent.futures import ThreadPoolExecutor

    data = {
        "api_key": api_key,
        "jurisdiction_id": SPRINGFIELD,
        "service_code": "FLYTIPPING",
        "address_string": "Lay-by 4",
    }
    url = str(http.base_url).rstrip("/") + "/requests.json"

    def post(_: int) -> httpx.Response:
        return httpx.post(url, data=data, headers={"Idempotency-Key": "burst-1"}, timeout=10)

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(post, range(8)))
    assert all(a.status_code == 200 for a in answers)
    ids = {a.json()[0]["service_request_id"] for a in answers}
    assert len(ids) == 1
    assert sum("idempotent-replayed" not in a.headers for a in answers) == 1


def test_concurrent_creates_are_each_stored_with_their_event(
    http: httpx.Client, api_key: str, runtime: Runtime
) -> None:
    from concurrent.futures import ThreadPoolExecutor

    url = str(http.base_url).rstrip("/") + "/requests.json"
    data = {
        "api_key": api_key,
        "jurisdiction_id": SPRINGFIELD,
        "service_code": "FLYTIPPING",
        "address_string": "Lay-by 5",
    }
    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(lambda _: httpx.post(url, data=data, timeout=10), range(32)))
    ids = [a.json()[0]["service_request_id"] for a in answers]
    assert len(set(ids)) == 32
    subjects = {r.envelope.subject for r in runtime.store.pending_outbox(100_000)}
    assert set(ids) <= subjects
    assert all(runtime.store.get_request(i) is not None for i in ids)
