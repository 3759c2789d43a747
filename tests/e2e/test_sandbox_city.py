"""End to end on the sandbox city (issues 4 and 5, "Done when"): a request posted for each
service reaches the back-end its routing rule names with the mapped fields, a status change made
in each back-end shows up in the Open311 API, and a subscribed back-office system receives the
request's events, signed and without personal data.

Everything runs as it does for an operator: `civicbus sandbox` and `civicbus run` as processes,
requests over HTTP, clients and subscriptions through the CLI. The service catalogue, routing
and the expected back-end values are read from the config and the mapping files, so the test
follows them.
"""

from __future__ import annotations

import functools
import json
import sqlite3
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest
import yaml
from pyproj import Transformer
from shapely.geometry import shape

from bus.store import Store
from civicbus.sandbox import workorders
from tests.asyncapi_support import assert_documented
from tests.e2e.city import SANDBOX_CONFIG, SandboxCity
from tests.e2e.webhook_receiver import WebhookReceiver

pytestmark = [pytest.mark.rabbitmq, pytest.mark.timeout(240)]

#: Bounded waits: generous for a loaded 2-core CI machine, never a fixed sleep.
DELIVERY_TIMEOUT = 60.0
STATUS_TIMEOUT = 30.0

#: The reporter's contact data, sent with every request; no back-end mapping asks for it.
REPORTER = {
    "first_name": "Zebedee",
    "last_name": "Quorndon",
    "email": "zebedee.quorndon@example.org",
    "phone": "+1-555-0199",
    "device_id": "e2e-device-7f3a9c",
}
PERSONAL_DATA = tuple(REPORTER.values())
ADDRESS = "1234 North Industrial Boulevard, Springfield"
DEFAULT_POINT = (39.7817, -89.6501)
#: The back-end status codes each polled kind is moved through (an open one, then a closed one).
MOVES = {
    "sap": ("NOPR", "NOCO"),
    "oracle": ("ASSIGNED", "DONE"),
    "permits": ("UNDER_REVIEW", "APPROVED"),
    "parks": ("IN_PROGRESS", "COMPLETED"),
}
CLOSED = {
    "fixed",
    "closed",
    "duplicate",
    "not_councils_responsibility",
    "no_further_action",
    "internal_referral",
    "cancelled",
}

_SANDBOX = yaml.safe_load(SANDBOX_CONFIG.read_text(encoding="utf-8"))
SERVICES = [(s["code"], s["jurisdiction"]) for s in _SANDBOX["services"]]
POLLED_INSTANCES = sorted(n for n, i in _SANDBOX["instances"].items() if i["kind"] in MOVES)


def png_pixel() -> bytes:
    """A valid one-pixel PNG (what a phone's photo stands for here)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\x00\xff\x00\x00"))
        + chunk(b"IEND", b"")
    )


PHOTO = png_pixel()
PHOTO_SERVICE = "POTHOLE"


@dataclass
class Posted:
    """One request as the test posted it."""

    code: str
    jurisdiction: str
    service_name: str
    service_type: str
    instance: str
    answer: dict[str, Any]
    request_id: str
    point: tuple[float, float]
    #: For services routed to SAP: the functional location whose polygon holds the point.
    functional_location: str | None = None
    #: The attribute answers sent: code -> values.
    answers: dict[str, list[str]] = field(default_factory=dict)

    def first_answer(self, code: str) -> str | None:
        values = self.answers.get(code)
        return values[0] if values else None


# --- posting -------------------------------------------------------------------------------------


def answers_for(definition: dict[str, Any]) -> list[tuple[str, str]]:
    """A valid answer to every variable attribute of a service definition (C-10, C-12)."""
    samples = {
        "string": "E2E-42",
        "number": "7",
        "datetime": "2026-12-01T08:00:00+00:00",
        "text": "Gate code 1234",
    }
    form = []
    for attribute in definition.get("attributes", []):
        if not attribute["variable"]:
            continue
        code, datatype = attribute["code"], attribute["datatype"]
        if datatype == "singlevaluelist":
            form.append((f"attribute[{code}]", attribute["values"][0]["key"]))
        elif datatype == "multivaluelist":
            form.append((f"attribute[{code}][]", attribute["values"][0]["key"]))
        else:
            form.append((f"attribute[{code}]", samples[datatype]))
    return form


def sap_locations(city: SandboxCity, instance: str) -> Iterator[tuple[tuple[float, float], str]]:
    """Points inside each polygon of the mapping's GeoJSON, with that polygon's location."""
    lookup = city.mapping(instance)["fields"]["functional_location"]["geo_lookup"]
    geojson = Path(city.mapping(instance)["_path"]).parent / lookup["file"]
    features = json.loads(geojson.read_text(encoding="utf-8"))["features"]
    while True:
        for feature in features:
            point = shape(feature["geometry"]).representative_point()
            yield (point.y, point.x), feature["properties"][lookup["property"]]


@pytest.fixture(scope="module")
def posted(city: SandboxCity, api_key: str, subscription: str) -> dict[str, Posted]:
    """One request per service of the catalogue (as GET /services says), all submitted."""
    sap_points: dict[str, Iterator[tuple[tuple[float, float], str]]] = {}
    posted: dict[str, Posted] = {}
    with httpx.Client(base_url=city.open311, timeout=15) as api:
        for jurisdiction in (j["id"] for j in city.config["jurisdictions"]):
            listing = api.get("/services.json", params={"jurisdiction_id": jurisdiction})
            assert listing.status_code == 200, listing.text
            for service in listing.json():
                code = service["service_code"]
                assert code not in posted, f"{code} is in two jurisdictions: key Posted by both"
                definition = {}
                if service["metadata"]:
                    answer = api.get(
                        f"/services/{code}.json", params={"jurisdiction_id": jurisdiction}
                    )
                    assert answer.status_code == 200, answer.text
                    definition = answer.json()
                instance = city.instance_for(code, jurisdiction)
                point, location = DEFAULT_POINT, None
                if city.config["instances"][instance]["kind"] == "sap":
                    points = sap_points.setdefault(instance, sap_locations(city, instance))
                    point, location = next(points)
                answers = answers_for(definition)
                form = [
                    ("api_key", api_key),
                    ("jurisdiction_id", jurisdiction),
                    ("service_code", code),
                    ("lat", str(point[0])),
                    ("long", str(point[1])),
                    ("address_string", ADDRESS),
                    ("description", f"End-to-end check of {code}."),
                    *REPORTER.items(),
                    *answers,
                ]
                files = (
                    {"media": ("photo.png", PHOTO, "image/png")} if code == PHOTO_SERVICE else None
                )
                response = api.post("/requests.json", data=_form_dict(form), files=files)
                assert response.status_code == 200, f"{code}: {response.text}"
                (answer,) = response.json()
                posted[code] = Posted(
                    code,
                    jurisdiction,
                    service["service_name"],
                    service["type"],
                    instance,
                    answer,
                    answer.get("service_request_id", ""),
                    point,
                    location,
                    _answers_by_code(answers),
                )
        for item in posted.values():
            if not item.request_id:
                item.request_id = _find_id(api, item)
        for item in posted.values():
            city.wait_until(
                functools.partial(_backend_refs, api, item),
                timeout=DELIVERY_TIMEOUT,
                what=f"{item.code} ({item.request_id}) to be submitted",
            )
    return posted


def _answers_by_code(form: list[tuple[str, str]]) -> dict[str, list[str]]:
    answers: dict[str, list[str]] = {}
    for name, value in form:
        code = name.removeprefix("attribute[").split("]")[0]
        answers.setdefault(code, []).append(value)
    return answers


def _form_dict(form: list[tuple[str, str]]) -> dict[str, str | list[str]]:
    """httpx's form shape: a list for a repeated field."""
    data: dict[str, str | list[str]] = {}
    for name, value in form:
        if name in data:
            existing = data[name]
            data[name] = [*(existing if isinstance(existing, list) else [existing]), value]
        else:
            data[name] = value
    return data


def _find_id(api: httpx.Client, item: Posted) -> str:
    """The id of a request whose answer carried none (a batch token or a blackbox service)."""
    token = item.answer.get("token")
    if token:
        resolved = api.get(f"/tokens/{token}.json", params={"jurisdiction_id": item.jurisdiction})
        assert resolved.status_code == 200, resolved.text
        return str(resolved.json()[0]["service_request_id"])
    found = api.get(
        "/requests.json", params={"jurisdiction_id": item.jurisdiction, "service_code": item.code}
    )
    assert found.status_code == 200, found.text
    (request,) = found.json()
    return str(request["service_request_id"])


def _read(api: httpx.Client, item: Posted) -> dict[str, Any]:
    response = api.get(
        f"/requests/{item.request_id}.json",
        params={"jurisdiction_id": item.jurisdiction, "extensions": "true"},
    )
    assert response.status_code == 200, response.text
    (request,) = response.json()
    assert isinstance(request, dict)
    return request


def _backend_refs(api: httpx.Client, item: Posted) -> list[dict[str, Any]]:
    refs: list[dict[str, Any]] = _read(api, item)["extended_attributes"]["backend_refs"]
    return refs


@pytest.fixture(scope="module")
def api(city: SandboxCity) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=city.open311, timeout=15) as client:
        yield client


@pytest.fixture(scope="module")
def store(city: SandboxCity) -> Iterator[Store]:
    opened = Store.open(city.env["CIVICBUS_DATABASE_URL"])
    yield opened
    opened.close()


# --- what each back-end holds --------------------------------------------------------------------


def _lookup(mapping: dict[str, Any], name: str, key: str | None) -> Any:
    """What the mapping's lookup table gives field `name` for `key` (or its default)."""
    spec = mapping["fields"][name]["lookup"]
    return mapping["tables"][spec["table"]].get(key, spec.get("default"))


def _items(city: SandboxCity, simulator: str) -> list[dict[str, Any]]:
    response = httpx.get(f"{city.control_urls[simulator]}/_sandbox/items", timeout=10)
    assert response.status_code == 200, response.text
    items: list[dict[str, Any]] = response.json()
    return items


def _mails(city: SandboxCity) -> list[EmailMessage]:
    return [
        message_from_bytes(p.read_bytes(), policy=policy.default)
        for p in sorted(city.mailbox_dir.glob("*.eml"))
    ]


def _work_orders(city: SandboxCity, request_id: str) -> list[dict[str, Any]]:
    path = city.workorders_url.removeprefix("sqlite:///")
    with sqlite3.connect(path) as db:
        db.row_factory = sqlite3.Row
        rows = db.execute(
            "SELECT * FROM work_orders WHERE external_ref = ?", (request_id,)
        ).fetchall()
    return [dict(r) for r in rows]


def check_sap(city: SandboxCity, item: Posted, request: dict[str, Any]) -> tuple[str, Any]:
    mapping = city.mapping(item.instance)
    (record,) = [n for n in _items(city, "sap") if n["ext_ref"] == item.request_id]
    assert record["notif_type"] == _lookup(mapping, "notification_type", item.code)
    assert len(record["short_text"]) <= 40
    assert record["short_text"] == f"{item.service_name}: {ADDRESS}"[:40]
    assert f"request {item.request_id}" in record["long_text"]
    assert record["priority"] == _lookup(mapping, "priority", item.first_answer("HAZARDS"))
    assert record["funct_loc"] == item.functional_location
    assert record["reported_by"] == mapping["fields"]["reported_by"]["const"]
    # SAP dates and times are the plant's local time (the mapping's zone), not UTC.
    local = datetime.fromisoformat(request["requested_datetime"]).astimezone(
        ZoneInfo(mapping["timezone"])
    )
    assert (record["malfunction_date"], record["malfunction_time"]) == (
        local.strftime("%Y%m%d"),
        local.strftime("%H%M%S"),
    )
    return record["number"], record


def check_oracle(city: SandboxCity, item: Posted, request: dict[str, Any]) -> tuple[str, Any]:
    mapping = city.mapping(item.instance)
    (record,) = _work_orders(city, item.request_id)
    assert record["work_type"] == _lookup(mapping, "work_type", item.code)
    assert record["priority"] == _lookup(mapping, "priority", item.code)
    crs = mapping["fields"]["x"]["project"]["to"]
    x, y = Transformer.from_crs("EPSG:4326", crs, always_xy=True).transform(
        item.point[1], item.point[0]
    )
    assert abs(record["x"] - x) < 0.01 and abs(record["y"] - y) < 0.01, (record, x, y)
    assert record["address"] == ADDRESS
    assert record["description"].endswith(f"civicbus request {item.request_id}")
    assert record["status"] == "NEW"
    return str(record["id"]), record


def check_permits(city: SandboxCity, item: Posted, request: dict[str, Any]) -> tuple[str, Any]:
    mapping = city.mapping(item.instance)
    (record,) = [c for c in _items(city, "permits") if c["external_reference"] == item.request_id]
    case = record["payload"]
    assert case["caseType"] == _lookup(mapping, "caseType", item.code)
    assert case["district"] == _lookup(mapping, "district", item.jurisdiction)
    assert (case["lat"], case["lon"], case["address"]) == (*item.point, ADDRESS)
    # The back-end has the time to the microsecond; Open311 shows it to the second.
    reported_at = datetime.fromisoformat(case["reportedAt"])
    assert reported_at.replace(microsecond=0) == datetime.fromisoformat(
        request["requested_datetime"]
    )
    return record["id"], record


def check_parks(city: SandboxCity, item: Posted, request: dict[str, Any]) -> tuple[str, Any]:
    mapping = city.mapping(item.instance)
    (record,) = [w for w in _items(city, "parks") if w["external_reference"] == item.request_id]
    work = record["payload"]
    assert work["category"] == _lookup(mapping, "category", item.code)
    assert work["location"] == {"lat": item.point[0], "lon": item.point[1]}
    assert work["park"] == item.first_answer("PARK_NAME")
    assert work["priority"] == _lookup(mapping, "priority", item.first_answer("BLOCKING"))
    assert work.get("contact_email") is None
    return record["id"], record


def check_email(city: SandboxCity, item: Posted, request: dict[str, Any]) -> tuple[str, Any]:
    (mail,) = [m for m in _mails(city) if m["X-Civicbus-Request-Id"] == item.request_id]
    message_id = str(mail["Message-ID"])
    assert message_id.startswith(f"<{item.request_id}@"), message_id
    assert item.request_id in str(mail["Subject"])
    assert str(mail["To"]) == city.config["instances"][item.instance]["settings"]["to"]
    body = mail.get_body()
    assert body is not None
    text = body.get_content()
    assert f"End-to-end check of {item.code}." in text
    for code, values in item.answers.items():
        assert code in text and all(v in text for v in values), (code, text)
    return message_id, mail.as_string()


CHECKS = {
    "sap": check_sap,
    "oracle": check_oracle,
    "permits": check_permits,
    "parks": check_parks,
    "email": check_email,
}


# --- delivery ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("code", "jurisdiction"), SERVICES, ids=[c for c, _ in SERVICES])
def test_each_service_reaches_its_routed_back_end_once_with_the_mapped_fields(
    city: SandboxCity,
    posted: dict[str, Posted],
    api: httpx.Client,
    store: Store,
    code: str,
    jurisdiction: str,
) -> None:
    item = posted[code]
    assert item.jurisdiction == jurisdiction
    trail = store.audit_trail(item.request_id)
    routed = [e for e in trail if e.action == "routed"]
    assert [e.details["instance"] for e in routed] == [item.instance]
    submitted = [e for e in trail if e.action == "submitted"]
    assert [e.outcome for e in submitted] == ["ok"], [(e.actor, e.details) for e in trail]

    kind = city.config["instances"][item.instance]["kind"]
    request = _read(api, item)
    reference, record = CHECKS[kind](city, item, request)

    refs = request["extended_attributes"]["backend_refs"]
    assert [(r["adapter"], r["reference"]) for r in refs] == [(item.instance, reference)]
    held = record if isinstance(record, str) else json.dumps(record)
    leaked = [value for value in PERSONAL_DATA if value in held]
    assert not leaked, f"{item.instance} holds the reporter's personal data: {leaked}"


def test_the_audit_trail_keeps_each_back_end_reference(
    posted: dict[str, Posted], api: httpx.Client, store: Store
) -> None:
    lost = {}
    for item in posted.values():
        (ref,) = _backend_refs(api, item)
        audited = [
            e.details.get("reference")
            for e in store.audit_trail(item.request_id)
            if e.action == "submitted"
        ]
        if audited != [ref["reference"]]:
            lost[item.instance] = (ref["reference"], audited)
    assert not lost, lost


def test_every_back_end_holds_exactly_the_requests_routed_to_it(
    city: SandboxCity, posted: dict[str, Posted]
) -> None:
    by_instance: dict[str, set[str]] = {}
    for item in posted.values():
        by_instance.setdefault(item.instance, set()).add(item.request_id)
    held = {
        "sap-roads": [n["ext_ref"] for n in _items(city, "sap")],
        "permits": [c["external_reference"] for c in _items(city, "permits")],
        "parks": [w["external_reference"] for w in _items(city, "parks")],
        "email-311": [str(m["X-Civicbus-Request-Id"]) for m in _mails(city)],
    }
    with sqlite3.connect(city.workorders_url.removeprefix("sqlite:///")) as db:
        held["oracle-facilities"] = [
            r[0] for r in db.execute("SELECT external_ref FROM work_orders")
        ]
    for instance, references in held.items():
        assert sorted(references) == sorted(by_instance.get(instance, set())), instance


def test_the_audit_trail_cli_shows_the_route_a_request_took(
    city: SandboxCity, posted: dict[str, Posted]
) -> None:
    item = posted[PHOTO_SERVICE]
    lines = city.cli("audit", "trail", item.request_id, "--json").stdout.splitlines()
    actions = [json.loads(line)["action"] for line in lines]
    assert actions[0] == "accepted"
    # In the order the hops happened, though the relay commits its entries after the broker's
    # confirms, perhaps after the worker committed its `submitted`.
    assert actions.index("relayed") < actions.index("routed") < actions.index("submitted")
    routed = next(json.loads(ln) for ln in lines if json.loads(ln)["action"] == "routed")
    assert routed["details"]["instance"] == item.instance
    assert not [v for v in PERSONAL_DATA if v in "\n".join(lines)]


def test_c14_answers_an_id_for_realtime_a_token_for_batch_and_neither_for_blackbox(
    posted: dict[str, Posted], api: httpx.Client
) -> None:
    by_type: dict[str, list[Posted]] = {}
    for item in posted.values():
        by_type.setdefault(item.service_type, []).append(item)
    assert set(by_type) == {"realtime", "batch", "blackbox"}
    for item in by_type["realtime"]:
        assert item.answer.get("service_request_id") and "token" not in item.answer, item
    for item in by_type["batch"]:
        assert item.answer.get("token") and "service_request_id" not in item.answer, item
        resolved = api.get(
            f"/tokens/{item.answer['token']}.json", params={"jurisdiction_id": item.jurisdiction}
        )
        assert resolved.json() == [
            {"token": item.answer["token"], "service_request_id": item.request_id}
        ]
    for item in by_type["blackbox"]:
        assert "service_request_id" not in item.answer and "token" not in item.answer, item
        # Still a request like any other: routed, submitted, readable by whoever knows its id.
        assert _backend_refs(api, item), item


def test_the_photo_is_served_back_and_reads_carry_no_contact_data(
    posted: dict[str, Posted], api: httpx.Client
) -> None:
    item = posted[PHOTO_SERVICE]
    request = _read(api, item)
    assert request["media_url"], request
    photo = httpx.get(request["media_url"], timeout=10)
    assert photo.status_code == 200 and photo.content == PHOTO
    assert photo.headers["content-type"] == "image/png"
    everything = api.get(
        "/requests.json", params={"jurisdiction_id": item.jurisdiction, "extensions": "true"}
    ).text
    assert not [v for v in PERSONAL_DATA if v in everything]


# --- status changes ------------------------------------------------------------------------------


def _move(city: SandboxCity, instance: str, request_id: str, code: str) -> None:
    """Change a work item's status in the simulated back-end, as its back office would."""
    kind = city.config["instances"][instance]["kind"]
    if kind == "oracle":
        workorders.set_status(city.workorders_url, request_id, code, note="e2e")
        return
    response = httpx.post(
        f"{city.control_urls[kind]}/_sandbox/items/{request_id}/status",
        json={"status": code},
        timeout=10,
    )
    assert response.status_code == 200, response.text


def _read_when_status(api: httpx.Client, item: Posted, status: str) -> dict[str, Any] | None:
    request = _read(api, item)
    return request if request["extended_attributes"]["status"] == status else None


def _first_routed_to(posted: dict[str, Posted], instance: str) -> Posted:
    return next(p for p in posted.values() if p.instance == instance)


@pytest.mark.parametrize("instance", POLLED_INSTANCES)
def test_a_status_change_in_the_back_end_shows_up_in_open311(
    city: SandboxCity, posted: dict[str, Posted], api: httpx.Client, instance: str
) -> None:
    item = _first_routed_to(posted, instance)
    kind = city.config["instances"][instance]["kind"]
    statuses = city.mapping(instance)["statuses"]
    since = (datetime.now(UTC) - timedelta(minutes=5)).isoformat()
    for code in MOVES[kind]:
        canonical = statuses[code]
        _move(city, instance, item.request_id, code)
        request = city.wait_until(
            functools.partial(_read_when_status, api, item, canonical),
            timeout=STATUS_TIMEOUT,
            what=f"{item.request_id} to become {canonical} after {instance} moved it to {code}",
        )
        assert request["status"] == ("closed" if canonical in CLOSED else "open")
        assert request["notes"][-1]["external_status_code"] == code
        updates = api.get(
            "/servicerequestupdates.json",
            params={"jurisdiction_id": item.jurisdiction, "start_date": since},
        )
        assert updates.status_code == 200, updates.text
        mine = [
            u
            for u in updates.json()
            if u["service_request_id"] == item.request_id and u["external_status_code"] == code
        ]
        assert [u["status"] for u in mine] == [canonical.upper()]


def test_the_email_department_reports_progress_through_servicerequestupdates(
    city: SandboxCity, posted: dict[str, Posted], api: httpx.Client, api_key: str, desk_key: str
) -> None:
    email_instances = [n for n, i in city.config["instances"].items() if i["kind"] == "email"]
    item = _first_routed_to(posted, email_instances[0])
    form = {
        "api_key": desk_key,
        "jurisdiction_id": item.jurisdiction,
        "service_request_id": item.request_id,
        "update_id": f"desk-{item.request_id}-1",
        "status": "FIXED",
        "updated_datetime": datetime.now(UTC).isoformat(),
        "description": "Cleaned by the sanitation crew.",
    }
    # The residents' app may not close the department's request; the department's desk may.
    refused = api.post("/servicerequestupdates.json", data={**form, "api_key": api_key})
    assert refused.status_code == 403, refused.text
    first = api.post("/servicerequestupdates.json", data=form)
    assert first.status_code == 200, first.text
    again = api.post("/servicerequestupdates.json", data=form)
    assert again.status_code == 200 and again.json() == first.json()

    request = _read(api, item)
    assert (request["status"], request["extended_attributes"]["status"]) == ("closed", "fixed")
    assert [n["update_id"] for n in request["notes"]].count(form["update_id"]) == 1


# --- webhooks ------------------------------------------------------------------------------------


def test_a_subscribed_back_office_receives_the_requests_events_in_order(
    city: SandboxCity,
    posted: dict[str, Posted],
    webhook: WebhookReceiver,
    webhook_secret: str,
) -> None:
    parks = [p for p in posted.values() if city.config["instances"][p.instance]["kind"] == "parks"]
    item = parks[-1]
    code = MOVES["parks"][0]
    canonical = city.mapping(item.instance)["statuses"][code]
    _move(city, item.instance, item.request_id, code)

    def status_event_arrived() -> list[str] | None:
        types = [
            (d.event["type"], d.event["data"].get("status"))
            for d in webhook.for_request(item.request_id)
        ]
        return (
            [t for t, _ in types]
            if ("civicbus.request.status_changed", canonical) in types
            else None
        )

    types = city.wait_until(
        status_event_arrived,
        timeout=DELIVERY_TIMEOUT,
        what=f"the webhook to receive {item.request_id} {canonical}",
    )
    created, submitted = (
        types.index("civicbus.request.created"),
        types.index("civicbus.request.submitted"),
    )
    changed = [
        i
        for i, d in enumerate(webhook.for_request(item.request_id))
        if d.event["type"] == "civicbus.request.status_changed"
        and d.event["data"].get("status") == canonical
    ]
    assert created == 0 and created < submitted < changed[0], types

    everything = webhook.received()
    assert {d.event["subject"] for d in everything} >= {p.request_id for p in posted.values()}
    problems = [p for p in (d.signature_problem(webhook_secret) for d in everything) if p]
    assert not problems, problems
    leaked = [v for d in everything for v in PERSONAL_DATA if v.encode() in d.body]
    assert not leaked, f"webhook bodies carry personal data: {sorted(set(leaked))}"
    for delivery in everything:  # as schemas/asyncapi.yaml tells consumers to expect
        assert_documented(delivery.event)


# --- failures: retries and dead letters (after the delivery checks: these add requests) ----------


def _post_one(api: httpx.Client, api_key: str, code: str, jurisdiction: str) -> str:
    """Post one valid request for a service; its id."""
    definition = api.get(f"/services/{code}.json", params={"jurisdiction_id": jurisdiction})
    assert definition.status_code == 200, definition.text
    form = [
        ("api_key", api_key),
        ("jurisdiction_id", jurisdiction),
        ("service_code", code),
        ("lat", str(DEFAULT_POINT[0])),
        ("long", str(DEFAULT_POINT[1])),
        ("description", "Failure path check."),
        *answers_for(definition.json()),
    ]
    created = api.post("/requests.json", data=_form_dict(form))
    assert created.status_code == 200, created.text
    return str(created.json()[0]["service_request_id"])


def _set_fault(city: SandboxCity, simulator: str, mode: str) -> None:
    response = httpx.put(
        f"{city.control_urls[simulator]}/_sandbox/fault", json={"mode": mode}, timeout=10
    )
    assert response.status_code == 200, response.text


def _service_routed_to(city: SandboxCity, kind: str) -> tuple[str, str, str]:
    """(service code, jurisdiction, instance) of the first service routed to a `kind` instance."""
    for code, jurisdiction in SERVICES:
        instance = city.instance_for(code, jurisdiction)
        if city.config["instances"][instance]["kind"] == kind:
            return code, jurisdiction, instance
    raise AssertionError(f"no service of the sandbox city is routed to a {kind} instance")


def test_a_back_end_outage_is_retried_until_the_back_end_is_back(
    city: SandboxCity,
    posted: dict[str, Posted],
    api: httpx.Client,
    api_key: str,
    store: Store,
) -> None:
    code, jurisdiction, instance = _service_routed_to(city, "sap")
    _set_fault(city, "sap", "down")
    try:
        request_id = _post_one(api, api_key, code, jurisdiction)
        city.wait_until(
            lambda: any(
                e.action == "attempt" and e.outcome == "error"
                for e in store.audit_trail(request_id)
            ),
            timeout=DELIVERY_TIMEOUT,
            what=f"a failed attempt to deliver {request_id}",
        )
    finally:
        _set_fault(city, "sap", "none")
    item = Posted(code, jurisdiction, "", "realtime", instance, {}, request_id, DEFAULT_POINT)
    city.wait_until(
        functools.partial(_backend_refs, api, item),
        timeout=DELIVERY_TIMEOUT,
        what=f"{request_id} to be delivered once SAP is back",
    )
    trail = store.audit_trail(request_id)
    assert [e.outcome for e in trail if e.action == "submitted"] == ["ok"]
    assert not [e for e in trail if e.action == "dead_lettered"]
    assert len([n for n in _items(city, "sap") if n["ext_ref"] == request_id]) == 1


def test_a_rejected_request_is_dead_lettered_then_replayed_after_the_fix(
    city: SandboxCity,
    posted: dict[str, Posted],
    api: httpx.Client,
    api_key: str,
    store: Store,
) -> None:
    code, jurisdiction, instance = _service_routed_to(city, "parks")
    _set_fault(city, "parks", "reject")
    try:
        request_id = _post_one(api, api_key, code, jurisdiction)
        listing = city.wait_until(
            lambda: (lambda out: out if request_id in out else None)(
                city.cli("dead", "list", instance).stdout
            ),
            timeout=DELIVERY_TIMEOUT,
            what=f"{request_id} in `civicbus dead list {instance}`",
        )
    finally:
        _set_fault(city, "parks", "none")
    (row,) = [line for line in listing.splitlines() if request_id in line]
    assert "PermanentError" in row and "422" in row, row
    assert not [w for w in _items(city, "parks") if w["external_reference"] == request_id]

    city.cli("dead", "replay", instance, row.split()[0])
    item = Posted(code, jurisdiction, "", "realtime", instance, {}, request_id, DEFAULT_POINT)
    city.wait_until(
        functools.partial(_backend_refs, api, item),
        timeout=DELIVERY_TIMEOUT,
        what=f"{request_id} to be delivered after the replay",
    )
    assert len([w for w in _items(city, "parks") if w["external_reference"] == request_id]) == 1
    actions = [e.action for e in store.audit_trail(request_id)]
    assert actions.index("dead_lettered") < actions.index("replayed") < actions.index("submitted")
    assert request_id not in city.cli("dead", "list", instance).stdout


def test_the_audit_log_is_intact_after_the_whole_run(city: SandboxCity) -> None:
    done = city.cli("audit", "verify")
    assert "intact" in done.stdout
