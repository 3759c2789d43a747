"""The permits adapter against the SOAP permit simulator on a loopback port (spyne, zeep)."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest
import zeep.exceptions
from backends_support import (
    MAPPINGS,
    a_request,
    control,
    drip,
    free_port,
    long_note_is_cut_and_later_changes_arrive,
    loopback_server,
    mapping_without_status,
    misbehaving_backend,
    reply,
    simulator,
    unmapped_status_is_skipped_and_later_changes_arrive,
)
from structlog.testing import capture_logs

from adapters import PermanentError, TransientError
from adapters.mapping import Mapping, load_mapping, parse_mapping
from adapters.permits import PermitsAdapter
from adapters.permits._errors import fault_kind, safe_fault_text
from civicbus.sandbox.permits import committed_wsdl
from civicbus.sandbox.runner import Running
from schemas.model import Status

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def mapping() -> Mapping:
    return load_mapping(MAPPINGS / "permits.yaml")


def adapter_for(running: Running, mapping: Mapping, **settings: Any) -> PermitsAdapter:
    return PermitsAdapter(
        "permits", {"wsdl": running.url + "?wsdl", "timeout": 5, **settings}, mapping
    )


def test_submit_creates_a_case_with_the_mapped_fields(permits: Running, mapping: Mapping) -> None:
    request = a_request("SKIP_PERMIT")
    receipt = adapter_for(permits, mapping).submit(request)

    assert receipt.created and receipt.reference.startswith("PRM-")
    assert receipt.status is Status.OPEN
    case = control(permits, "GET", f"/items/{receipt.reference}")
    assert case["external_reference"] == request.id
    payload = case["payload"]
    assert payload["caseType"] == "SKIP_SCAFFOLD"
    assert payload["district"] == "SPRINGFIELD"
    assert payload["address"] == "12 Evergreen Terrace"
    assert (payload["lat"], payload["lon"]) == (51.50101, -0.12412)
    assert payload["description"].startswith("Scaffold blocks")
    assert payload["reportedAt"].startswith("2026-11-20T09:30:00")
    # The mapping does not ask for the reporter's contact: it never reaches the permit system.
    assert payload["contactEmail"] is None


def test_submit_twice_creates_one_case(permits: Running, mapping: Mapping) -> None:
    adapter = adapter_for(permits, mapping)
    request = a_request()

    first, second = adapter.submit(request), adapter.submit(request)

    assert first.created and not second.created
    assert first.reference == second.reference
    assert len(control(permits, "GET", "/items")) == 1


def test_find_answers_by_external_reference(permits: Running, mapping: Mapping) -> None:
    adapter = adapter_for(permits, mapping)
    request = a_request("EVENT_PERMIT")
    receipt = adapter.submit(request)

    found = adapter.find(request.id)

    assert found is not None and found.reference == receipt.reference and not found.created
    assert adapter.find("req-unknown") is None


def test_a_status_moved_in_the_simulator_is_reported_once(
    permits: Running, mapping: Mapping
) -> None:
    adapter = adapter_for(permits, mapping)
    request = a_request()
    adapter.submit(request)
    first = adapter.updates(None)
    assert [(u.request_id, u.status) for u in first.updates] == [(request.id, Status.OPEN)]

    control(permits, "POST", f"/items/{request.id}/advance")
    control(permits, "POST", f"/items/{request.id}/status", status="APPROVED", note="granted")
    second = adapter.updates(first.watermark)
    third = adapter.updates(second.watermark)

    assert [u.status for u in second.updates] == [Status.INVESTIGATING, Status.FIXED]
    assert second.updates[-1].external_status_code == "APPROVED"
    assert second.updates[-1].note == "granted"
    assert len({u.update_id for u in (*first.updates, *second.updates)}) == 3
    assert third.updates == () and third.watermark == second.watermark


def test_updates_page_through_a_backlog_without_loss(permits: Running, mapping: Mapping) -> None:
    adapter = adapter_for(permits, mapping, page_size=2, max_pages=2)
    requests = [a_request() for _ in range(3)]
    for request in requests:
        adapter.submit(request)

    seen: list[str] = []
    watermark = None
    for _ in range(3):
        page = adapter.updates(watermark)
        seen += [u.request_id for u in page.updates]
        watermark = page.watermark

    assert seen == [r.id for r in requests]


def test_a_status_the_mapping_lacks_is_skipped_and_later_changes_still_arrive(
    permits: Running,
) -> None:
    unmapped_status_is_skipped_and_later_changes_arrive(
        adapter_for(permits, mapping_without_status("permits.yaml", "WITHDRAWN")),
        permits,
        a_request(),
        a_request(),
        code="WITHDRAWN",
        mapping_file="permits.yaml",
    )


#: A clerk's note quoting a resident, longer than a StatusUpdate holds (4,000 characters).
def test_a_note_longer_than_an_update_holds_is_cut_and_later_changes_still_arrive(
    permits: Running, mapping: Mapping
) -> None:
    long_note_is_cut_and_later_changes_arrive(
        adapter_for(permits, mapping), permits, a_request(), a_request(), closing="APPROVED"
    )


def test_a_rejected_case_is_a_permanent_error(permits: Running, mapping: Mapping) -> None:
    control(permits, "PUT", "/fault", mode="reject")
    request = a_request()

    with pytest.raises(PermanentError, match=f"request {request.id}.*Client.Rejected"):
        adapter_for(permits, mapping).submit(request)


def test_a_reject_fault_with_a_count_rejects_that_many_cases_then_heals(
    permits: Running, mapping: Mapping
) -> None:
    assert control(permits, "PUT", "/fault", mode="reject", count=1)["count"] == 1
    adapter = adapter_for(permits, mapping)

    with pytest.raises(PermanentError, match=r"Client\.Rejected"):
        adapter.submit(a_request())
    assert adapter.submit(a_request()).created
    assert control(permits, "GET", "/")["fault"]["mode"] == "none"


def test_data_the_wsdl_refuses_is_a_permanent_error(permits: Running) -> None:
    # caseType must match [A-Z_]+ in the WSDL; the server's schema validation refuses it.
    bad = parse_mapping("adapter: permits\nfields:\n  caseType: {const: 'not valid'}\n")
    request = a_request()

    with pytest.raises(PermanentError, match="Client") as caught:
        adapter_for(permits, bad).submit(request)
    assert "not valid" not in str(caught.value)  # fault text is redacted of values


def test_a_mapping_field_that_is_no_parameter_is_a_permanent_error(permits: Running) -> None:
    bad = parse_mapping("adapter: permits\nfields:\n  caseType: {const: X}\n  colour: {const: 1}\n")
    adapter = adapter_for(permits, bad)

    with pytest.raises(PermanentError, match="colour"):
        adapter.submit(a_request())
    assert not adapter.check().ok and "colour" in adapter.check().detail


def test_a_simulator_that_is_down_gives_transient_errors(
    permits: Running, mapping: Mapping
) -> None:
    adapter = adapter_for(permits, mapping)
    adapter.find("req-warm-up")  # the WSDL is loaded while the back-end is up
    control(permits, "PUT", "/fault", mode="down")

    with pytest.raises(TransientError, match="HTTP 503"):
        adapter.submit(a_request())
    assert not adapter.check().ok


def test_a_slow_simulator_times_out_as_transient(permits: Running, mapping: Mapping) -> None:
    # 1 s: the warm-up (loading the WSDL) must fit in it on a loaded machine; 0.3 s once did not.
    adapter = adapter_for(permits, mapping, timeout=1.0)
    adapter.find("req-warm-up")
    control(permits, "PUT", "/fault", mode="slow", delay=3)

    with pytest.raises(TransientError, match="Timeout"):
        adapter.find("req-anything")


def test_a_refused_connection_is_transient(mapping: Mapping) -> None:
    adapter = PermitsAdapter(
        "permits", {"wsdl": f"http://127.0.0.1:{free_port()}/permits?wsdl", "timeout": 2}, mapping
    )

    with pytest.raises(TransientError, match="connection refused"):
        adapter.submit(a_request())
    health = adapter.check()
    assert not health.ok
    assert health.detail.endswith(
        "(connection refused): is the permit system running there, on that port? check "
        "settings.wsdl of instance permits"
    )


def test_a_wrong_endpoint_path_is_transient_and_names_the_setting(
    permits: Running, mapping: Mapping
) -> None:
    # A 404 at the SOAP address is a wrong URL, not the request's data: retried, so that a
    # setting fixed in time loses no request to the dead-letter queue.
    adapter = adapter_for(permits, mapping, endpoint=f"{permits.url}/v2")

    with pytest.raises(TransientError) as caught:
        adapter.submit(a_request())

    assert str(caught.value).endswith(
        f": HTTP 404 Not Found (no SOAP service at {permits.url}/v2: check settings.endpoint "
        "of instance permits)"
    )
    assert "no SOAP service at" in adapter.check().detail


def test_a_wrong_wsdl_url_is_transient_and_names_the_setting(
    permits: Running, mapping: Mapping
) -> None:
    adapter = PermitsAdapter("permits", {"wsdl": f"{permits.url}/v2?wsdl"}, mapping)

    with pytest.raises(TransientError) as caught:
        adapter.find("req-1")

    assert str(caught.value).endswith(
        f": HTTP 404 Not Found (no WSDL at {permits.url}/v2?wsdl: check settings.wsdl of "
        "instance permits)"
    )


def test_an_endpoint_without_an_http_scheme_is_refused_when_built(mapping: Mapping) -> None:
    with pytest.raises(ValueError, match=r"^permits adapter permits: the setting `endpoint` must"):
        PermitsAdapter(
            "permits", {"wsdl": "x.wsdl", "endpoint": "permits.example.gov/soap"}, mapping
        )


def test_check_says_the_permit_system_answers(permits: Running, mapping: Mapping) -> None:
    health = adapter_for(permits, mapping).check()
    assert health.ok, health.detail


def test_cases_survive_a_simulator_restart(tmp_path: Path, mapping: Mapping) -> None:
    request = a_request()
    with simulator("permits", tmp_path) as first:
        receipt = adapter_for(first, mapping).submit(request)
        control(first, "POST", f"/items/{request.id}/advance")
    with simulator("permits", tmp_path) as second:
        adapter = adapter_for(second, mapping)
        found = adapter.find(request.id)
        again = adapter.submit(request)

    assert found is not None and found.reference == receipt.reference
    assert found.status is Status.INVESTIGATING
    assert not again.created and again.reference == receipt.reference


def test_an_explicit_endpoint_overrides_the_wsdl_address(
    permits: Running, mapping: Mapping
) -> None:
    # The committed WSDL file names the default sandbox address; the endpoint setting wins.
    wsdl = Path(__file__).resolve().parents[2] / "schemas" / "wsdl" / "permits.wsdl"
    adapter = PermitsAdapter("permits", {"wsdl": str(wsdl), "endpoint": permits.url}, mapping)

    assert adapter.submit(a_request()).created


def test_soap_faults_are_classified_by_code() -> None:
    assert fault_kind(zeep.exceptions.Fault("x", code="soap11env:Client.Rejected")) is (
        PermanentError
    )
    assert fault_kind(zeep.exceptions.Fault("x", code="env:Sender")) is PermanentError
    assert fault_kind(zeep.exceptions.Fault("x", code="soap11env:Server")) is TransientError
    assert fault_kind(zeep.exceptions.Fault("x", code=None)) is TransientError


def test_soap_fault_texts_blank_quoted_values_and_keep_element_names() -> None:
    text = safe_fault_text(
        zeep.exceptions.Fault(
            "Element '{urn:x}contactEmail': 'marge@example.org' is too long", code="Client"
        )
    )
    assert "marge" not in text and "{urn:x}contactEmail" in text
    # The apostrophe does not end the value: nothing of the name is left.
    text = safe_fault_text(
        zeep.exceptions.Fault(
            "Element '{urn:x}contactName': 'Marge O'Brien' is not accepted", code="Client"
        )
    )
    assert text == "SOAP fault Client: Element '{urn:x}contactName': '…' is not accepted"


class _EntityBomb(BaseHTTPRequestHandler):
    """Answers every request with an XML document that declares an entity."""

    def do_GET(self) -> None:
        body = (
            b'<?xml version="1.0"?><!DOCTYPE d [<!ENTITY x "boom">]>'
            b'<definitions xmlns="http://schemas.xmlsoap.org/wsdl/">&x;</definitions>'
        )
        self.send_response(200)
        self.send_header("Content-Type", "text/xml")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


def test_documents_with_entities_are_refused(mapping: Mapping) -> None:
    with loopback_server(_EntityBomb) as url:
        adapter = PermitsAdapter("permits", {"wsdl": f"{url}/permits?wsdl"}, mapping)
        with pytest.raises(PermanentError, match="Forbidden"):
            adapter.find("req-1")


class _Canned(BaseHTTPRequestHandler):
    """The permit system's WSDL on GET; to every SOAP call, the answer in `server.answer`
    (HTTP status, content type, body)."""

    def do_GET(self) -> None:
        body = committed_wsdl(f"http://127.0.0.1:{self.server.server_address[1]}/permits")
        self._send(200, "text/xml; charset=utf-8", body)

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        status, content_type, body = self.server.answer  # type: ignore[attr-defined]
        self._send(status, content_type, body.encode())

    def _send(self, status: int, content_type: str, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextmanager
def canned_permit_system(status: int, content_type: str, body: str) -> Iterator[str]:
    """A permit system on a loopback port answering every call so; yields its WSDL URL."""
    with loopback_server(_Canned, answer=(status, content_type, body)) as url:
        yield f"{url}/permits?wsdl"


_XHTML_PAGE = (
    '<?xml version="1.0" encoding="utf-8"?>\n<!DOCTYPE html PUBLIC "-//W3C//DTD XHTML 1.0 '
    'Strict//EN" "http://www.w3.org/TR/xhtml1/DTD/xhtml1-strict.dtd">\n<html '
    'xmlns="http://www.w3.org/1999/xhtml"><head><title>Service Unavailable</title></head>'
    "<body><h1>Down for maintenance</h1></body></html>"
)


@pytest.mark.parametrize(
    ("status", "page"),
    [
        (503, _XHTML_PAGE),
        (503, "<!DOCTYPE html><html><body><h1>503 Service Unavailable</h1></body></html>"),
        (200, "<!DOCTYPE html><html><body>Back soon</body></html>"),  # a proxy's page
    ],
    ids=["503-xhtml", "503-html5", "200-html5"],
)
def test_an_html_page_instead_of_soap_is_transient(
    status: int, page: str, mapping: Mapping
) -> None:
    """A maintenance page is a back-end not working right now: dead-lettering the message at
    once lost it for good. (Its DOCTYPE is still never processed.)"""
    with canned_permit_system(status, "text/html", page) as wsdl:
        adapter = PermitsAdapter("permits", {"wsdl": wsdl, "timeout": 5}, mapping)
        for call in (lambda: adapter.find("req-1"), lambda: adapter.updates("1")):
            with pytest.raises(TransientError, match="an HTML page, not SOAP"):
                call()


def _changes_answer(*changes: str, last: int) -> str:
    ns = "http://permits.sandbox.example/soap/v1"
    return (
        '<?xml version="1.0"?><soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/'
        f'envelope/" xmlns:tns="{ns}"><soap:Body><tns:ListCaseChangesSinceResponse>'
        "<tns:ListCaseChangesSinceResult><tns:changes>"
        + "".join(changes)
        + f"</tns:changes><tns:lastSequence>{last}</tns:lastSequence><tns:more>false</tns:more>"
        "</tns:ListCaseChangesSinceResult></tns:ListCaseChangesSinceResponse></soap:Body>"
        "</soap:Envelope>"
    )


def _change(sequence: int, reference: str, status: str, changed_at: str, note: str) -> str:
    return (
        f"<tns:CaseChange><tns:sequence>{sequence}</tns:sequence><tns:caseId>PRM-{sequence}"
        f"</tns:caseId><tns:externalReference>{reference}</tns:externalReference><tns:status>"
        f"{status}</tns:status><tns:changedAt>{changed_at}</tns:changedAt><tns:note>{note}"
        "</tns:note></tns:CaseChange>"
    )


def test_a_change_that_cannot_be_read_is_skipped_and_later_changes_still_arrive(
    mapping: Mapping,
) -> None:
    answer = _changes_answer(
        _change(5, "req-1", "APPROVED", "20/11/2026 10:00", "Marge called"),  # zeep reads None
        _change(6, "req-2", "APPROVED", "2026-11-20T10:00:00+00:00", "granted"),
        last=6,
    )
    with canned_permit_system(200, "text/xml", answer) as wsdl:
        page = PermitsAdapter("permits", {"wsdl": wsdl, "timeout": 5}, mapping).updates("4")

    # Raising here failed every poll at this change: the watermark never moved again.
    assert [(u.request_id, u.update_id) for u in page.updates] == [("req-2", "permits:6")]
    assert page.watermark == "6"
    [skipped] = page.skipped
    assert (skipped.change, skipped.request_id, skipped.problem) == (
        "change 5 of case PRM-5",
        "req-1",
        "missing changedAt",
    )
    assert "Marge" not in str(skipped)


def test_real_soap_faults_keep_their_class(mapping: Mapping) -> None:
    def fault(code: str) -> str:
        return (
            '<?xml version="1.0"?><soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/'
            f'envelope/"><soap:Body><soap:Fault><faultcode>soap:{code}</faultcode><faultstring>'
            "no</faultstring></soap:Fault></soap:Body></soap:Envelope>"
        )

    for code, kind in (("Client", PermanentError), ("Server", TransientError)):
        with canned_permit_system(500, "text/xml", fault(code)) as wsdl:
            adapter = PermitsAdapter("permits", {"wsdl": wsdl, "timeout": 5}, mapping)
            with pytest.raises(kind, match=f"SOAP fault soap:{code}"):
                adapter.find("req-1")


_NS = "http://permits.sandbox.example/soap/v1"


def _envelope(body: str) -> str:
    return (
        '<?xml version="1.0"?><soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/'
        f'envelope/" xmlns:tns="{_NS}"><soap:Body>{body}</soap:Body></soap:Envelope>'
    )


_NOT_FOUND = _envelope("<tns:FindCaseByExternalReferenceResponse/>")


def _permit_system(*answers: Any) -> Any:
    """A behaviour for `misbehaving_backend`: the WSDL on GET, then each SOAP call answered by
    the next of `answers` (a document to send with 200, or a behaviour), the last one repeated."""
    left = list(answers)

    def behave(handler: Any) -> None:
        if handler.command == "GET":
            url = f"http://127.0.0.1:{handler.server.server_address[1]}/permits"
            reply(handler, 200, committed_wsdl(url), "text/xml; charset=utf-8")
            return
        answer = left.pop(0) if len(left) > 1 else left[0]
        if callable(answer):
            answer(handler)
        else:
            reply(handler, 200, answer, "text/xml; charset=utf-8")

    return behave


def _adapter(url: str, mapping: Mapping, **settings: Any) -> PermitsAdapter:
    return PermitsAdapter("permits", {"wsdl": f"{url}/permits?wsdl", "timeout": 5, **settings},
                          mapping)  # fmt: skip


def test_a_create_redirected_elsewhere_is_not_followed_and_says_where(mapping: Mapping) -> None:
    # requests re-sent the POST, with the resident's address and e-mail, to the Location.
    received: list[bytes] = []

    def elsewhere(handler: Any) -> None:
        received.append(handler.body)
        reply(handler, 500)

    with misbehaving_backend(elsewhere) as other:
        moved = [("Location", f"{other}/new?token=secret")]
        redirect = _permit_system(_NOT_FOUND, lambda h: reply(h, 307, "", "text/plain", moved))
        with misbehaving_backend(redirect) as url, pytest.raises(TransientError) as caught:
            _adapter(url, mapping).submit(a_request())

    assert received == []
    assert str(caught.value).endswith(
        f": {url}/permits answered HTTP 307 redirect to {other}/new, not followed: if the "
        "permit system moved, check the service address in the WSDL, or set settings.endpoint "
        "of instance permits"
    )


@pytest.mark.parametrize("status", [429, 503])
def test_a_busy_permit_system_s_retry_after_is_kept(status: int, mapping: Mapping) -> None:
    busy = _permit_system(lambda h: reply(h, status, "busy", "text/plain", [("Retry-After", "30")]))
    with misbehaving_backend(busy) as url, pytest.raises(TransientError) as caught:
        _adapter(url, mapping).find("req-1")

    assert caught.value.retry_after == 30
    assert str(caught.value).endswith(f"is busy (HTTP {status}, asking to wait 30 s)")


def test_a_create_answer_without_a_case_id_is_transient_and_says_it_does_not_fit(
    mapping: Mapping,
) -> None:
    # zeep's XMLParseError was no error of ours: retried as untyped, with zeep's words only.
    no_case_id = _envelope(
        "<tns:CreateCaseResponse><tns:CreateCaseResult><tns:status>OPEN</tns:status>"
        "<tns:createdAt>2026-11-20T10:00:00Z</tns:createdAt></tns:CreateCaseResult>"
        "</tns:CreateCaseResponse>"
    )
    with (
        misbehaving_backend(_permit_system(_NOT_FOUND, no_case_id)) as url,
        pytest.raises(TransientError) as caught,
    ):
        _adapter(url, mapping).submit(a_request())

    assert "the permit system's answer does not fit its WSDL (Unexpected element" in str(
        caught.value
    )
    assert str(caught.value).endswith("is the WSDL the one this permit system serves?")


def test_a_cut_answer_is_transient_and_not_called_an_http_error(mapping: Mapping) -> None:
    with (
        misbehaving_backend(_permit_system(_NOT_FOUND[:120])) as url,
        pytest.raises(TransientError) as caught,
    ):
        _adapter(url, mapping).find("req-1")

    assert str(caught.value).endswith(
        ": the permit system answered HTTP 200 with a document that is not well-formed XML "
        "(cut short?)"
    )


def _dripping(handler: Any) -> None:
    """A whole answer in the end, one byte every 0.2 s after the first (about 10 s)."""
    body = (_NOT_FOUND[:-16] + " " * 40 + _NOT_FOUND[-16:]).encode()
    drip(handler, body, "text/xml", dripped=50)


def test_an_answer_dripping_byte_by_byte_is_cut_off_at_the_answer_timeout(
    mapping: Mapping,
) -> None:
    # Each byte came well within the read timeout: the worker was held for the whole answer.
    with misbehaving_backend(_permit_system(_dripping)) as url:
        adapter = _adapter(url, mapping, timeout=2, answer_timeout=1)
        adapter.check()  # the WSDL loaded
        started = time.monotonic()
        with pytest.raises(TransientError, match=r"was still arriving after 1 s \(settings"):
            adapter.find("req-1")

    assert time.monotonic() - started < 4


def _stalling(handler: Any) -> None:
    """The answer's head and its first bytes, then nothing for longer than the read timeout."""
    _first_bytes(handler)
    time.sleep(2.5)


def _cut(handler: Any) -> None:
    """The answer's head and its first bytes, then the connection closed."""
    _first_bytes(handler)
    handler.close_connection = True
    handler.connection.shutdown(socket.SHUT_RDWR)


def _first_bytes(handler: Any) -> None:
    body = _NOT_FOUND.encode()
    handler.send_response(200)
    handler.send_header("Content-Type", "text/xml")
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body[:100])
    handler.wfile.flush()


@pytest.mark.parametrize(
    ("stop", "said"),
    [(_stalling, "ReadTimeout: "), (_cut, "ChunkedEncodingError: ")],
    ids=["stalled", "cut"],
)
def test_an_answer_that_stops_midway_is_transient_and_check_says_so(
    stop: Any, said: str, mapping: Mapping
) -> None:
    # urllib3's ReadTimeoutError and ProtocolError, read by the bounded transport itself, went
    # out untyped (requests had made them its own errors): check raised instead of answering.
    with misbehaving_backend(_permit_system(stop)) as url:
        adapter = _adapter(url, mapping, timeout=1)
        health = adapter.check()
        with pytest.raises(TransientError) as caught:
            adapter.find("req-1")

    assert not health.ok and said in health.detail
    assert str(caught.value).startswith(
        "permits adapter permits: FindCaseByExternalReference req-1: "
    )
    assert said in str(caught.value)


def test_an_answer_larger_than_max_answer_mb_is_not_read_to_its_end(mapping: Mapping) -> None:
    huge = _NOT_FOUND.replace("<soap:Body>", "<soap:Body><!--" + "x" * (4 << 20) + "-->")
    with (
        misbehaving_backend(_permit_system(huge)) as url,
        pytest.raises(TransientError) as caught,
    ):
        _adapter(url, mapping, max_answer_mb=1).find("req-1")

    assert str(caught.value).endswith(
        f": the answer of {url}/permits is larger than 1 MB (settings.max_answer_mb), and was "
        "not read to its end"
    )


def test_a_changes_page_whose_sequence_does_not_move_is_read_once(mapping: Mapping) -> None:
    # "more" with a lastSequence that stayed put was asked again up to max_pages times.
    calls: list[bytes] = []
    page = _changes_answer(
        _change(3, "req-1", "APPROVED", "2026-11-20T10:00:00+00:00", "granted"), last=5
    ).replace("<tns:more>false</tns:more>", "<tns:more>true</tns:more>")

    def stuck(handler: Any) -> None:
        calls.append(handler.body)
        reply(handler, 200, page, "text/xml")

    with misbehaving_backend(_permit_system(stuck)) as url, capture_logs() as logs:
        read = _adapter(url, mapping).updates("5")

    assert [u.update_id for u in read.updates] == ["permits:3"] and read.watermark == "5"
    assert len(calls) == 1
    assert [line["event"] for line in logs] == ["permits.changes.sequence_stuck"]
