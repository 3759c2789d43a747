"""The SAP adapter's OData transport against the sandbox's SAP simulation of the OData API."""

from __future__ import annotations

import io
import json
import sqlite3
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from backends_support import a_request, free_port, misbehaving_backend, reply, simulator
from sap_support import control, notifications, rejecting_mapping, sap_mapping, settings_for

from adapters import PermanentError, TransientError
from adapters.sap import SapAdapter
from adapters.sap.odata import PAGE_SIZE
from bus.logging import configure_logging
from civicbus.sandbox.runner import Running
from civicbus.sandbox.sap_odata import SERVICE_PATH, ODataError, parse_filter
from civicbus.sandbox.sap_state import Notification, SapStore
from schemas.model import Location, ServiceRequest, Status

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def adapter(sap_sim: Running) -> Iterator[SapAdapter]:
    made = SapAdapter("sap-roads", settings_for("odata", sap_sim.url), rejecting_mapping())
    yield made
    made.close()


def pothole(**changes: Any) -> ServiceRequest:
    fields: dict[str, Any] = {
        "service_name": "Pothole",
        "description": "Deep hole by the bus stop",
        "attributes": {"LANE": "carriageway", "HAZARDS": ("damage",)},
        "location": Location(lat=39.81, long=-89.66, address="1200 North Grand Avenue East"),
        "requested_at": datetime(2026, 11, 20, 15, 4, 5, tzinfo=UTC),
    }
    fields.update(changes)
    return a_request(fields.pop("service_code", "POTHOLE"), **fields)


def test_the_notification_carries_the_mapped_sap_fields(
    adapter: SapAdapter, sap_sim: Running
) -> None:
    request = pothole()
    receipt = adapter.submit(request)

    [stored] = notifications(sap_sim, request.id)
    assert stored["number"] == receipt.reference
    assert stored["notif_type"] == "M1"
    assert stored["short_text"] == "Pothole: 1200 North Grand Avenue East"[:40]
    assert len(stored["short_text"]) <= 40
    assert stored["priority"] == "1"  # HAZARDS=damage
    assert stored["funct_loc"] == "SPR-RD-N"  # 39.81, -89.66 lies in the north polygon
    assert stored["malfunction_date"] == "20261120"  # YYYYMMDD, in America/Chicago
    assert stored["malfunction_time"] == "090405"  # HHMMSS, 15:04:05 UTC is 09:04:05 CST
    assert stored["reported_by"] == "CIVICBUS"
    assert request.id in stored["long_text"]
    # No personal data reaches SAP.
    assert "Marge" not in str(stored) and "resident@example.org" not in str(stored)


def test_a_long_title_is_cut_to_sap_s_40_characters(adapter: SapAdapter, sap_sim: Running) -> None:
    request = pothole(location=Location(lat=39.79, long=-89.66, address="x" * 120))
    adapter.submit(request)
    [stored] = notifications(sap_sim, request.id)
    assert len(stored["short_text"]) == 40
    assert stored["funct_loc"] == "SPR-RD-S"


def test_a_point_outside_every_polygon_gets_the_road_network_root(
    adapter: SapAdapter, sap_sim: Running
) -> None:
    request = pothole(location=Location(lat=40.5, long=-88.0, address="Far away"))
    adapter.submit(request)
    assert notifications(sap_sim, request.id)[0]["funct_loc"] == "SPR-RD"


def test_an_expired_csrf_token_is_fetched_again_once(adapter: SapAdapter, sap_sim: Running) -> None:
    adapter.submit(pothole())  # holds a token now
    control(sap_sim, "POST", "/csrf/expire")
    second = pothole()
    receipt = adapter.submit(second)
    assert receipt.created and len(notifications(sap_sim, second.id)) == 1


def test_a_post_without_a_csrf_token_is_refused_by_the_simulation(sap_sim: Running) -> None:
    response = httpx.post(f"{sap_sim.url}{SERVICE_PATH}/MaintenanceNotification", json={})
    assert response.status_code == 403
    assert response.text == "CSRF token validation failed"
    assert response.headers["x-csrf-token"] == "Required"


def test_sap_s_error_json_becomes_a_permanent_error_with_sap_s_text(
    adapter: SapAdapter, sap_sim: Running
) -> None:
    request = pothole(service_code="REJECT_ME")
    with pytest.raises(PermanentError) as caught:
        adapter.submit(request)
    message = str(caught.value)
    assert "HTTP 400" in message and "Notification type ZZ is not defined" in message
    assert request.id in message
    assert notifications(sap_sim, request.id) == []


def test_the_error_json_has_sap_s_shape(sap_sim: Running) -> None:
    with httpx.Client(base_url=sap_sim.url + SERVICE_PATH) as client:
        token = client.get("/", headers={"x-csrf-token": "fetch"}).headers["x-csrf-token"]
        response = client.post(
            "/MaintenanceNotification",
            headers={"x-csrf-token": token},
            json={"NotificationType": "M1", "NotificationText": "y" * 41},
        )
    error = response.json()["error"]
    assert response.status_code == 400
    assert error["message"]["lang"] == "en" and "40" in error["message"]["value"]
    assert error["innererror"]["errordetails"][0]["severity"] == "error"


def test_503_with_retry_after_is_transient_and_says_how_long(
    adapter: SapAdapter, sap_sim: Running
) -> None:
    control(sap_sim, "PUT", "/fault", mode="down", retry_after=7)
    with pytest.raises(TransientError) as caught:
        adapter.submit(pothole())
    assert caught.value.retry_after == 7
    assert not adapter.check().ok


def test_a_retry_after_given_as_an_http_date_is_honoured() -> None:
    # RFC 9110 allows either form; the date form was read as "no pause asked".
    in_two_minutes = format_datetime(datetime.now(UTC) + timedelta(seconds=120), usegmt=True)
    answer = [("Retry-After", in_two_minutes)]
    with misbehaving_backend(lambda h: reply(h, 503, "busy", "text/plain", answer)) as url:
        adapter = SapAdapter("sap-roads", settings_for("odata", url), sap_mapping())
        with pytest.raises(TransientError, match="HTTP 503") as caught:
            adapter.find("req-1")
        adapter.close()

    assert caught.value.retry_after is not None and 100 < caught.value.retry_after <= 120


def test_an_endless_answer_is_cut_off_at_the_answer_timeout() -> None:
    def endless(handler: Any) -> None:
        handler.send_response(200)
        handler.send_header("Content-Type", "application/json")
        handler.end_headers()  # no length: the body ends when the connection does
        handler.wfile.write(b'{"d": {"results": [')
        for _ in range(40):
            handler.wfile.write(b" ")
            handler.wfile.flush()
            time.sleep(0.2)

    with misbehaving_backend(endless) as url:
        adapter = SapAdapter(
            "sap-roads", settings_for("odata", url, answer_timeout=1), sap_mapping()
        )
        with pytest.raises(TransientError, match=r"was still arriving after 1 s \(settings"):
            adapter.find("req-1")
        adapter.close()


def _odata(*answers: Any) -> Any:
    """A behaviour for `misbehaving_backend`: a CSRF token to a fetch, then each other call
    answered by the next of `answers` (status, body, headers), the last one repeated."""
    left = list(answers)

    def behave(handler: Any) -> None:
        if handler.headers.get("x-csrf-token") == "fetch":
            reply(handler, 200, "{}", headers=[("x-csrf-token", "t0k3n")])
            return
        status, body, *headers = left.pop(0) if len(left) > 1 else left[0]
        reply(handler, status, body, "application/json", *headers)

    return behave


@pytest.mark.parametrize(
    "answer",
    [(200, "<html><body>Welcome to the portal</body></html>"), (200, '{"d": {"results": [')],
    ids=["web-page", "cut-short"],
)
def test_an_answer_that_is_no_odata_json_is_transient_and_names_the_settings(
    answer: tuple[int, str],
) -> None:
    # It was an untyped JSONDecodeError, saying neither the instance nor the request.
    with misbehaving_backend(_odata(answer)) as url, pytest.raises(TransientError) as caught:
        SapAdapter("sap-roads", settings_for("odata", url), sap_mapping()).find("req-1")

    assert str(caught.value).startswith(f"SAP OData find (sap-roads): {url}{SERVICE_PATH}/")
    assert "not OData JSON (a web page, or an answer cut short): is it the OData service? " in (
        str(caught.value)
    )


def test_a_logon_redirect_is_not_followed_and_is_transient() -> None:
    logon = (302, "", [("Location", "https://sso.example.gov/login?from=odata")])
    with misbehaving_backend(_odata(logon)) as url, pytest.raises(TransientError) as caught:
        SapAdapter("sap-roads", settings_for("odata", url), sap_mapping()).find("req-1")

    assert str(caught.value) == (
        "SAP OData find (sap-roads): HTTP 302 redirect to https://sso.example.gov/login, not "
        "followed (a logon page? the service moved?): check settings.base_url and "
        "settings.service_path of instance sap-roads"
    )


def test_a_create_answer_without_the_number_is_looked_up_instead_of_failing() -> None:
    # A KeyError before: untyped, so the adapter did not look for the notification it made.
    made = {"MaintenanceNotification": "10000042", "LastChangeDateTime": "/Date(1795000000000)/",
            "MaintNotifExtReferenceNumber": "req-1", "SystemStatus": "OSNO"}  # fmt: skip
    none, found = json.dumps({"d": {"results": []}}), json.dumps({"d": {"results": [made]}})
    answers = _odata((200, none), (201, '{"d": {}}'), (200, found))
    with misbehaving_backend(answers) as url:
        adapter = SapAdapter("sap-roads", settings_for("odata", url), sap_mapping())
        receipt = adapter.submit(pothole(id="req-1"))

    assert receipt.reference == "10000042"


@pytest.mark.parametrize("missing", ["LastChangeDateTime", "MaintenanceNotification"])
def test_a_notification_without_a_property_the_adapter_reads_is_transient_and_named(
    missing: str,
) -> None:
    # A service without the property in its projection (a custom CDS view, a $select): it was
    # an untyped KeyError, saying neither the instance nor what to check.
    entity = {"MaintenanceNotification": "10000042", "LastChangeDateTime": "/Date(1795000000000)/",
              "MaintNotifExtReferenceNumber": "req-1", "SystemStatus": "OSNO"}  # fmt: skip
    del entity[missing]
    answer = (200, json.dumps({"d": {"results": [entity]}}))
    with misbehaving_backend(_odata(answer)) as url, pytest.raises(TransientError) as caught:
        SapAdapter("sap-roads", settings_for("odata", url), sap_mapping()).find("req-1")

    assert str(caught.value) == (
        f"SAP OData find (sap-roads): a notification in SAP's answer has no {missing}: is it "
        "API_MAINTNOTIFICATION? check settings.base_url and settings.service_path of instance "
        "sap-roads"
    )


def test_sap_s_error_text_has_its_quoted_values_blanked() -> None:
    said = {"code": "IWBEP/1", "message": {"value": "Reporter 'Marge Simpson' is not a user"}}
    refused = (400, json.dumps({"error": said}))
    none = (200, json.dumps({"d": {"results": []}}))
    with misbehaving_backend(_odata(none, refused)) as url, pytest.raises(PermanentError) as caught:
        SapAdapter("sap-roads", settings_for("odata", url), sap_mapping()).submit(pothole())

    assert str(caught.value).endswith("HTTP 400: IWBEP/1: Reporter '…' is not a user")


def test_a_rejection_by_sap_is_permanent(adapter: SapAdapter, sap_sim: Running) -> None:
    control(sap_sim, "PUT", "/fault", mode="reject", count=1)
    request = pothole()
    with pytest.raises(PermanentError, match="rejected by the simulated SAP"):
        adapter.submit(request)
    assert adapter.submit(request).created  # the fault was for one request only


def test_wrong_credentials_are_transient_as_the_set_ups_fault(tmp_path: Path) -> None:
    with simulator("sap", tmp_path, sap_user="CIVICBUS", sap_password="right") as sim:
        wrong = SapAdapter(
            "sap-roads",
            settings_for("odata", sim.url, username="CIVICBUS", password="wrong"),
            sap_mapping(),
        )
        right = SapAdapter(
            "sap-roads",
            settings_for("odata", sim.url, username="CIVICBUS", password="right"),
            sap_mapping(),
        )
        with pytest.raises(TransientError, match="refused the logon") as caught:
            wrong.find("anything")
        assert right.find("anything") is None
        assert right.check().ok
    # The settings named as the config names them (`adapters check` adds a secret's variable).
    assert "check settings.username and settings.password of instance sap-roads" in (
        str(caught.value)
    )


@pytest.mark.parametrize(
    "wrong", [{"base_url_path": "/api"}, {"service_path": "/sap/opu/odata/sap/API_NOPE"}]
)
def test_a_wrong_service_url_is_transient_and_names_the_settings(
    wrong: dict[str, str], sap_sim: Running
) -> None:
    # A 404 of the service's root, $metadata or entity set is a wrong URL, never bad data:
    # retried, so that the setting fixed in time loses no request to the dead-letter queue.
    settings = settings_for("odata", sap_sim.url + wrong.pop("base_url_path", ""), **wrong)
    adapter = SapAdapter("sap-roads", settings, sap_mapping())
    service = f"{settings['base_url']}{settings.get('service_path', SERVICE_PATH)}"

    with pytest.raises(TransientError) as caught:
        adapter.submit(pothole())

    assert str(caught.value) == (
        f"SAP OData find (sap-roads): HTTP 404 Not Found (no OData service at "
        f"{service}/MaintenanceNotification: check settings.base_url and settings.service_path "
        "of instance sap-roads)"
    )
    health = adapter.check()
    assert not health.ok and f"no OData service at {service}/$metadata" in health.detail


def test_a_refused_connection_names_the_address_and_base_url() -> None:
    port = free_port()
    adapter = SapAdapter(
        "sap-roads", settings_for("odata", f"http://127.0.0.1:{port}"), sap_mapping()
    )

    with pytest.raises(TransientError) as caught:
        adapter.find("anything")

    assert str(caught.value) == (
        f"SAP OData find (sap-roads): cannot connect to 127.0.0.1:{port} (connection refused): "
        "is the SAP system running there, on that port? check settings.base_url of instance "
        "sap-roads"
    )


@pytest.mark.parametrize("base_url", ["s4.example.gov:44300", "s4.example.gov/sap"])
def test_a_base_url_without_an_http_scheme_is_refused_when_built(base_url: str) -> None:
    with pytest.raises(ValueError, match=r"^sap adapter sap-roads: the setting `base_url` must"):
        SapAdapter("sap-roads", settings_for("odata", base_url), sap_mapping())


def test_status_changes_are_reported_with_the_sap_code(
    adapter: SapAdapter, sap_sim: Running
) -> None:
    receipt = adapter.submit(pothole())
    page = adapter.updates(None)
    control(
        sap_sim, "POST", f"/items/{receipt.reference}/status", status="NOPR", user_status="DUPL"
    )
    [update] = [
        u for u in adapter.updates(page.watermark).updates if u.request_id == receipt.request_id
    ]
    assert update.status is Status.DUPLICATE  # the user status wins when the mapping lists it
    assert update.external_status_code == "DUPL"
    assert update.source == "sap-roads"


def test_the_simulation_filters_and_serves_metadata(adapter: SapAdapter, sap_sim: Running) -> None:
    request = pothole()
    adapter.submit(request)
    base = sap_sim.url + SERVICE_PATH
    metadata = httpx.get(f"{base}/$metadata").text
    assert 'EntitySet Name="MaintenanceNotification"' in metadata
    found = httpx.get(
        f"{base}/MaintenanceNotification",
        params={"$filter": f"MaintNotifExtReferenceNumber eq '{request.id}'", "$format": "json"},
    ).json()
    assert [e["MaintNotifExtReferenceNumber"] for e in found["d"]["results"]] == [request.id]
    later = httpx.get(
        f"{base}/MaintenanceNotification",
        params={
            "$filter": "LastChangeDateTime gt datetimeoffset'2999-01-01T00:00:00Z'",
            "$format": "json",
        },
    ).json()
    assert later["d"]["results"] == []


def test_notifications_survive_a_restart_of_the_simulation(tmp_path: Path) -> None:
    request = pothole()
    with simulator("sap", tmp_path) as sim:
        SapAdapter("sap-roads", settings_for("odata", sim.url), sap_mapping()).submit(request)
    with simulator("sap", tmp_path) as sim:
        found = SapAdapter("sap-roads", settings_for("odata", sim.url), sap_mapping()).find(
            request.id
        )
        assert found is not None and found.created is False


def test_the_log_line_of_a_new_notification_keeps_its_number(adapter: SapAdapter) -> None:
    # A 12-digit notification number looks like a phone number to the redaction of free text:
    # logged as an identifier, an operator can still look it up in SAP.
    stream = io.StringIO()
    configure_logging("json", stream=stream)
    try:
        receipt = adapter.submit(pothole())
    finally:
        configure_logging("json")
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    [created] = [line for line in lines if line["event"] == "sap.notification.created"]
    assert len(receipt.reference) >= 10 and receipt.reference.isdigit()
    assert created["reference"] == receipt.reference


def _notifications_changed_at(db: Path, times: list[datetime]) -> list[str]:
    """Notifications stored straight into the simulation's database, changed at `times`."""
    store = SapStore(db)
    numbers = [
        store.insert(
            Notification(number="", notif_type="M1", short_text=f"n{i}", ext_ref=f"req-{i:04d}")
        ).number
        for i in range(len(times))
    ]
    store.close()
    with sqlite3.connect(db) as conn:
        conn.executemany(
            "UPDATE notification SET changed_at = ? WHERE number = ?",
            [(t.isoformat(), n) for t, n in zip(times, numbers, strict=True)],
        )
    return numbers


def test_a_change_while_paging_pushes_no_other_change_out_of_reach(
    sap_sim: Running, tmp_path: Path
) -> None:
    """A notification of page 1 that changes while we read on moves to the end. Paged by
    offset, everything after it would shift left by one and the first of page 2 be skipped, for
    good (it is older than the overlap); paged by the last (time, number) read, none is."""
    old = datetime.now(UTC) - timedelta(hours=1)
    times = [old + timedelta(milliseconds=i) for i in range(PAGE_SIZE + 1)]
    numbers = _notifications_changed_at(tmp_path / "sap.db", times)
    adapter = SapAdapter("sap-roads", settings_for("odata", sap_sim.url), sap_mapping())
    transport: Any = adapter.transport
    query = transport._query

    def a_clerk_works_on_the_first_during_the_first_page(*args: Any, **kwargs: Any) -> Any:
        page = query(*args, **kwargs)
        transport._query = query
        control(sap_sim, "POST", f"/items/{numbers[0]}/status", status="NOPR")
        return page

    transport._query = a_clerk_works_on_the_first_during_the_first_page
    page = adapter.updates(None)
    reported = {u.request_id for u in page.updates}
    reported |= {u.request_id for u in adapter.updates(page.watermark).updates}
    adapter.close()
    assert reported == {f"req-{i:04d}" for i in range(PAGE_SIZE + 1)}


def test_more_changes_in_one_instant_than_a_page_holds_are_each_read_once(
    sap_sim: Running, tmp_path: Path
) -> None:
    moment = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)
    numbers = _notifications_changed_at(tmp_path / "sap.db", [moment] * (2 * PAGE_SIZE + 1))
    adapter = SapAdapter("sap-roads", settings_for("odata", sap_sim.url), sap_mapping())
    transport: Any = adapter.transport
    query, pages = transport._query, []

    def counted(*args: Any, **kwargs: Any) -> Any:
        pages.append(query(*args, **kwargs))
        return pages[-1]

    transport._query = counted
    found = adapter.transport.changed_since(moment)
    adapter.close()
    assert [n.number for n in found] == numbers  # ties in number order, no repeats
    assert [len(p) for p in pages] == [PAGE_SIZE, PAGE_SIZE, 1]


def test_the_simulation_s_filter_nests_or_and_parentheses_as_odata_does() -> None:
    at = datetime(2026, 12, 1, 8, 0, tzinfo=UTC)
    items = [
        Notification(f"00001000000{i}", "M1", "x", ext_ref=ref, changed_at=(at + delta).isoformat())
        for i, (ref, delta) in enumerate(
            [("a", timedelta(0)), ("", timedelta(0)), ("b", timedelta(0)), ("c", timedelta(1))]
        )
    ]
    stamp = "datetimeoffset'2026-12-01T08:00:00.000Z'"
    keep = parse_filter(
        f"MaintNotifExtReferenceNumber ne '' and (LastChangeDateTime gt {stamp} or "
        f"(LastChangeDateTime eq {stamp} and MaintenanceNotification gt '000010000000'))"
    )
    assert [n.ext_ref for n in items if keep(n)] == ["b", "c"]
    with pytest.raises(ODataError, match="unsupported filter"):
        parse_filter("ReportedByUser eq '' or (ReportedByUser eq 'x'")
