"""The parks adapter against the REST parks simulator on a loopback port (FastAPI, httpx)."""

from __future__ import annotations

import json
import time
from contextlib import AbstractContextManager
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import pytest
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
from hypothesis import given
from hypothesis import strategies as st
from structlog.testing import capture_logs

from adapters import PermanentError, TransientError
from adapters._exceptions import answer_excerpt
from adapters.mapping import Mapping, load_mapping
from adapters.parks import ParksAdapter
from civicbus.sandbox.parks import SANDBOX_CLIENT_ID, SANDBOX_CLIENT_SECRET
from civicbus.sandbox.runner import Running
from schemas.model import Location, Status

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def mapping() -> Mapping:
    return load_mapping(MAPPINGS / "parks.yaml")


def adapter_for(running: Running, mapping: Mapping, **settings: Any) -> ParksAdapter:
    return ParksAdapter(
        "parks",
        {
            "base_url": running.url,
            "client_id": SANDBOX_CLIENT_ID,
            "client_secret": SANDBOX_CLIENT_SECRET,
            "timeout": 5,
            **settings,
        },
        mapping,
    )


def test_submit_creates_a_work_request_with_the_mapped_fields(
    parks: Running, mapping: Mapping
) -> None:
    request = a_request(
        "TREE_DAMAGE", jurisdiction="shelbyville.example", attributes={"BLOCKING": "road"}
    )
    receipt = adapter_for(parks, mapping).submit(request)

    assert receipt.created and receipt.reference.startswith("WR-")
    assert receipt.status is Status.OPEN
    item = control(parks, "GET", f"/items/{request.id}")
    assert item["id"] == receipt.reference
    payload = item["payload"]
    assert payload["category"] == "TREE"
    assert payload["priority"] == 1
    assert payload["location"] == {"lat": 51.50101, "lon": -0.12412}
    assert payload["address"] == "12 Evergreen Terrace"
    assert payload["reported_at"].startswith("2026-11-20T09:30:00")
    assert payload["contact_email"] is None  # the mapping does not ask for the reporter


def test_unmapped_lookup_values_take_the_defaults(parks: Running, mapping: Mapping) -> None:
    request = a_request(
        "PARK_BENCH",
        description=None,
        attributes={"PARK_NAME": "Riverside"},
        location=Location(lat=51.5, long=-0.1),
    )
    adapter_for(parks, mapping).submit(request)

    payload = control(parks, "GET", f"/items/{request.id}")["payload"]
    assert (payload["category"], payload["park"], payload["priority"]) == (
        "FURNITURE",
        "Riverside",
        3,
    )
    assert payload["description"] == "(no description given)" and payload["address"] is None


def test_submit_twice_creates_one_work_request(parks: Running, mapping: Mapping) -> None:
    adapter = adapter_for(parks, mapping)
    request = a_request("PLAYGROUND")

    first, second = adapter.submit(request), adapter.submit(request)

    assert first.created and not second.created and first.reference == second.reference
    assert len(control(parks, "GET", "/items")) == 1
    found = adapter.find(request.id)
    assert found is not None and found.reference == first.reference
    assert adapter.find("req-unknown") is None


def test_the_token_is_cached_and_renewed_once_after_a_401(parks: Running, mapping: Mapping) -> None:
    adapter = adapter_for(parks, mapping)
    adapter.find("req-1")
    adapter.find("req-2")
    assert adapter.credentials.fetched == 1

    control(parks, "POST", "/revoke-tokens")  # as after a restart of the parks system
    assert adapter.find("req-3") is None

    assert adapter.credentials.fetched == 2


def test_bad_credentials_are_transient_and_named_by_check(parks: Running, mapping: Mapping) -> None:
    # A token request carries no request's data: refused credentials are the set-up's fault,
    # retried, so that a secret fixed in time loses no request to the dead-letter queue.
    adapter = adapter_for(parks, mapping, client_secret="wrong")

    with pytest.raises(TransientError, match="refused the client credentials"):
        adapter.submit(a_request("PLAYGROUND"))
    health = adapter.check()
    assert not health.ok
    assert "check settings.client_id and settings.client_secret of instance parks" in health.detail
    assert "wrong" not in health.detail


def test_a_base_url_with_a_wrong_path_is_transient_and_says_what_to_check(
    parks: Running, mapping: Mapping
) -> None:
    adapter = adapter_for(parks, mapping, base_url=f"{parks.url}/api")

    with pytest.raises(TransientError) as caught:
        adapter.submit(a_request("PLAYGROUND"))

    assert str(caught.value) == (
        f"parks adapter parks: token request: HTTP 404 Not Found (no token endpoint at "
        f"{parks.url}/api/oauth/token: check settings.base_url of instance parks "
        "(or set settings.token_url))"
    )
    health = adapter.check()
    assert not health.ok and "no token endpoint at" in health.detail


def test_a_404_of_the_work_request_endpoint_is_transient_and_names_base_url(
    parks: Running, mapping: Mapping
) -> None:
    # The token endpoint found (token_url), the API not: a wrong base path, not bad data.
    adapter = adapter_for(
        parks, mapping, base_url=f"{parks.url}/api", token_url=f"{parks.url}/oauth/token"
    )

    with pytest.raises(TransientError) as caught:
        adapter.submit(a_request("PLAYGROUND"))

    assert f"HTTP 404 Not Found (no work-request endpoint at {parks.url}/api/work-requests: " in (
        str(caught.value)
    )
    assert str(caught.value).endswith("check settings.base_url of instance parks)")


class _LoopbackParks(BaseHTTPRequestHandler):
    """A stand-in parks API on a loopback port: JSON answers (or a web page), no access log."""

    def _answer(self, status: int, body: dict[str, Any] | str) -> None:
        data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
        self.send_response(status)
        kind = "text/html" if isinstance(body, str) else "application/json"
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _NoCreate(_LoopbackParks):
    """A parks API that finds nothing and answers each create with `server.create_status`;
    `/welcome` is a web page, as at a base_url that names a web site."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if self.path.endswith("/oauth/token"):
            self._answer(200, {"access_token": "t", "expires_in": 3600})
        elif self.path == "/welcome":
            self._answer(200, "<html><body>Welcome to our parks!</body></html>")
        else:
            status: int = self.server.create_status  # type: ignore[attr-defined]
            self._answer(status, {"detail": "Not Found"} if status == 404 else {"error": "no"})

    def do_GET(self) -> None:
        self._answer(200, {"items": []})


def no_create(status: int = 404) -> AbstractContextManager[str]:
    """A `_NoCreate` parks API on a loopback port answering creates with `status`; its URL."""
    return loopback_server(_NoCreate, create_status=status)


@pytest.mark.parametrize(
    ("status", "kind", "said"),
    [
        (404, TransientError, "HTTP 404 Not Found (no work-request endpoint at"),
        (405, TransientError, "HTTP 405 Method Not Allowed (no work-request endpoint at"),
        (400, PermanentError, "HTTP 400 Bad Request from the parks system: no"),
        (422, PermanentError, "HTTP 422 Unprocessable Entity from the parks system: no"),
    ],
)
def test_a_create_answered_404_is_transient_but_one_refusing_the_data_is_permanent(
    status: int, kind: type[Exception], said: str, mapping: Mapping
) -> None:
    with no_create(status) as url:
        adapter = ParksAdapter(
            "parks", {"base_url": url, "client_id": "c", "client_secret": "s"}, mapping
        )
        with pytest.raises(kind) as caught:
            adapter.submit(a_request("PLAYGROUND"))

    assert type(caught.value) is kind and said in str(caught.value)


def test_a_token_url_that_serves_a_web_page_is_transient_and_named(mapping: Mapping) -> None:
    with no_create() as url:
        adapter = ParksAdapter(
            "parks",
            {
                "base_url": url,
                "token_url": f"{url}/welcome",
                "client_id": "c",
                "client_secret": "s",
            },
            mapping,
        )
        with pytest.raises(TransientError) as caught:
            adapter.find("req-1")

    assert str(caught.value) == (
        f"parks adapter parks: token request: {url}/welcome answered HTTP 200 with text/html, "
        "not a JSON token: is it the token endpoint? check settings.token_url of instance parks"
    )


@pytest.mark.parametrize(
    ("settings", "refused"),
    [
        ({"base_url": "127.0.0.1:8322"}, "`base_url` must be an http:// or https:// URL"),
        ({"base_url": "parks.example.gov/api"}, "not 'parks.example.gov/api'"),
        ({"base_url": "ftp://parks.example.gov"}, "`base_url` must be an http://"),
        ({"token_url": "idp.example.gov/token"}, "`token_url` must be an http://"),
    ],
)
def test_a_url_setting_without_an_http_scheme_is_refused_when_built(
    settings: dict[str, str], refused: str, mapping: Mapping
) -> None:
    given = {"base_url": "http://127.0.0.1:8322", "client_id": "c", "client_secret": "s"}
    with pytest.raises(ValueError, match=refused) as caught:
        ParksAdapter("parks", {**given, **settings}, mapping)
    assert str(caught.value).startswith("parks adapter parks: the setting `")


def test_status_changes_are_reported_once(parks: Running, mapping: Mapping) -> None:
    adapter = adapter_for(parks, mapping)
    request = a_request("PARK_BENCH", attributes={"PARK_NAME": "Central"})
    adapter.submit(request)
    first = adapter.updates(None)

    control(parks, "POST", f"/items/{request.id}/advance")
    control(parks, "POST", f"/items/{request.id}/status", status="COMPLETED", note="replaced")
    second = adapter.updates(first.watermark)
    third = adapter.updates(second.watermark)

    assert [u.status for u in first.updates] == [Status.OPEN]
    assert [u.status for u in second.updates] == [Status.INVESTIGATING, Status.FIXED]
    assert second.updates[-1].note == "replaced" and second.updates[-1].request_id == request.id
    assert third.updates == () and third.watermark == second.watermark


def test_a_status_the_mapping_lacks_is_skipped_and_later_changes_still_arrive(
    parks: Running,
) -> None:
    unmapped_status_is_skipped_and_later_changes_arrive(
        adapter_for(parks, mapping_without_status("parks.yaml", "DUPLICATE")),
        parks,
        a_request("PARK_BENCH"),
        a_request("PARK_BENCH"),
        code="DUPLICATE",
        mapping_file="parks.yaml",
    )


#: A clerk's note quoting a resident, longer than a StatusUpdate holds (4,000 characters).
def test_a_note_longer_than_an_update_holds_is_cut_and_later_changes_still_arrive(
    parks: Running, mapping: Mapping
) -> None:
    long_note_is_cut_and_later_changes_arrive(
        adapter_for(parks, mapping),
        parks,
        a_request("PARK_BENCH"),
        a_request("PARK_BENCH"),
        closing="COMPLETED",
    )


class _ChangesFeed(_LoopbackParks):
    """A parks API serving tokens and a changes feed of chosen changes (`server.changes`)."""

    def do_POST(self) -> None:  # the token endpoint
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self._answer(200, {"access_token": "t", "token_type": "Bearer", "expires_in": 3600})

    def do_GET(self) -> None:
        after = int(parse_qs(urlparse(self.path).query).get("since", ["0"])[0])
        changes: list[dict[str, Any]] = self.server.changes  # type: ignore[attr-defined]
        page = [c for c in changes if c.get("change_id", 0) > after]
        last = max((c.get("change_id", 0) for c in page), default=after)
        self._answer(200, {"changes": page, "next": str(last), "more": False})


def changes_feed(changes: list[dict[str, Any]]) -> AbstractContextManager[str]:
    """A parks API on a loopback port whose changes feed holds `changes`; yields its URL."""
    return loopback_server(_ChangesFeed, changes=changes)


def test_a_change_that_cannot_be_read_is_skipped_and_later_changes_still_arrive(
    mapping: Mapping,
) -> None:
    at = "2026-11-20T10:00:00+00:00"
    changes: list[dict[str, Any]] = [
        {"change_id": 1, "external_reference": "req-1", "changed_at": at, "note": "Marge"},
        {
            "change_id": 2,
            "external_reference": "req-1",
            "status": "NEW",
            "changed_at": at,
            "note": {"text": "Marge"},
        },
        {"change_id": 3, "external_reference": "req-2", "status": "COMPLETED", "changed_at": at},
    ]
    with changes_feed(changes) as url:
        adapter = ParksAdapter(
            "parks", {"base_url": url, "client_id": "c", "client_secret": "s"}, mapping
        )
        page = adapter.updates(None)

    # Raising here failed every poll at this change: the cursor never moved again.
    assert [(u.request_id, u.update_id) for u in page.updates] == [("req-2", "parks:3")]
    assert page.watermark == "3"
    assert [(s.change, s.request_id, s.problem) for s in page.skipped] == [
        ("change 1", "req-1", "missing status"),
        ("change 2", "req-1", "note: string_type"),
    ]
    assert "Marge" not in str(page.skipped)  # a note may quote a resident


def test_throttling_is_transient_with_the_servers_retry_after(
    parks: Running, mapping: Mapping
) -> None:
    control(parks, "PUT", "/fault", mode="throttle", delay=7)

    with pytest.raises(TransientError) as caught:
        adapter_for(parks, mapping).submit(a_request("PLAYGROUND"))

    assert caught.value.retry_after == 7.0 and "429" in str(caught.value)


def test_a_rejected_work_request_is_permanent(parks: Running, mapping: Mapping) -> None:
    control(parks, "PUT", "/fault", mode="reject")
    request = a_request("PLAYGROUND")

    with pytest.raises(PermanentError, match=f"request {request.id}: HTTP 422") as caught:
        adapter_for(parks, mapping).submit(request)
    # What the parks system said, as SAP's and the permit system's reasons carry theirs.
    assert str(caught.value).endswith(
        "from the parks system: the parks system rejected the request (simulated)"
    )


@pytest.mark.parametrize("mode", ["reject", "down", "throttle"])
def test_a_fault_with_a_count_affects_that_many_calls_then_heals(
    mode: str, parks: Running, mapping: Mapping
) -> None:
    adapter = adapter_for(parks, mapping)
    adapter.find("warm-up")  # the token, so that the fault meets the create
    control(parks, "PUT", "/fault", mode=mode, count=1, delay=0)

    with pytest.raises((PermanentError, TransientError)):
        adapter.submit(a_request("PLAYGROUND"))
    assert adapter.submit(a_request("PLAYGROUND")).created
    assert control(parks, "GET", "/")["fault"]["mode"] == "none"


@pytest.mark.parametrize(
    ("answer", "excerpt"),
    [
        ('{"error": "category TREE is closed"}', "category TREE is closed"),
        ('{"message": "no", "code": 7}', "no"),
        (
            '{"error": {"message": "email \'jane@example.org\' is not valid"}}',
            "email '…' is not valid",
        ),
        # An apostrophe inside the value does not end it; an unclosed value runs to the end.
        ('{"error": "reporter \'Marge O\'Brien\' is unknown"}', "reporter '…' is unknown"),
        ("reporter 'Marge O'Brien is unknown", "reporter '…'"),
        ("can't match \"Marge\" or the users' 'Marge'", "can't match '…' or the users' '…'"),
        ("<html>\n  <p>Bad gateway</p>\n</html>", "<html> <p>Bad gateway</p> </html>"),
        ("", ""),
    ],
)
def test_error_answers_are_quoted_short_on_one_line_without_quoted_values(
    answer: str, excerpt: str
) -> None:
    assert answer_excerpt(answer) == excerpt
    long = answer_excerpt("word " * 100)
    assert len(long) == 200 and long.endswith("…")


@given(st.from_regex(r"[A-Za-z]+('[A-Za-z]+)*( [A-Za-z]+('[A-Za-z]+)*)*", fullmatch=True))
def test_a_quoted_name_is_blanked_whatever_its_apostrophes(name: str) -> None:
    assert answer_excerpt(f"reporter '{name}' is unknown") == "reporter '…' is unknown"


def test_a_parks_system_that_is_down_gives_transient_errors(
    parks: Running, mapping: Mapping
) -> None:
    control(parks, "PUT", "/fault", mode="down")
    adapter = adapter_for(parks, mapping)

    with pytest.raises(TransientError, match="503"):
        adapter.submit(a_request("PLAYGROUND"))
    assert not adapter.check().ok


def test_a_slow_parks_system_times_out_as_transient(parks: Running, mapping: Mapping) -> None:
    control(parks, "PUT", "/fault", mode="slow", delay=2)

    with pytest.raises(TransientError, match="Timeout"):
        adapter_for(parks, mapping, timeout=0.3).find("req-1")


def test_a_refused_connection_is_transient(mapping: Mapping) -> None:
    adapter = ParksAdapter(
        "parks",
        {"base_url": f"http://127.0.0.1:{free_port()}", "client_id": "c", "client_secret": "s"},
        mapping,
    )
    with pytest.raises(TransientError) as caught:
        adapter.find("req-1")
    assert "cannot connect to 127.0.0.1:" in str(caught.value)
    assert "(connection refused): is the parks system running there" in str(caught.value)


def test_work_requests_survive_a_simulator_restart(tmp_path: Path, mapping: Mapping) -> None:
    request = a_request("PLAYGROUND")
    with simulator("parks", tmp_path) as first:
        receipt = adapter_for(first, mapping).submit(request)
    with simulator("parks", tmp_path) as second:
        again = adapter_for(second, mapping).submit(request)

    assert not again.created and again.reference == receipt.reference


def _token_then(answer: Any) -> Any:
    """A parks API that grants a token, then answers every other call by `answer`."""

    def behave(handler: Any) -> None:
        if handler.path.endswith("/oauth/token"):
            reply(handler, 200, json.dumps({"access_token": "t", "expires_in": 3600}))
        else:
            answer(handler)

    return behave


def _dripping(handler: Any) -> None:
    """A whole `{"items": []}` in the end, one byte every 0.2 s after the first (8 s)."""
    drip(handler, b'{"items": []' + b" " * 40 + b"}", "application/json")


def test_an_answer_dripping_byte_by_byte_is_cut_off_at_the_answer_timeout(
    mapping: Mapping,
) -> None:
    # Each byte came well within the read timeout: the worker was held for the whole answer.
    with misbehaving_backend(_token_then(_dripping)) as url:
        settings = {"client_id": "c", "client_secret": "s", "timeout": 2, "answer_timeout": 1}
        adapter = ParksAdapter("parks", {"base_url": url, **settings}, mapping)
        started = time.monotonic()
        with pytest.raises(TransientError) as caught:
            adapter.find("req-1")
        adapter.close()

    assert time.monotonic() - started < 4
    assert str(caught.value) == (
        f"parks adapter parks: find req-1: the answer of {url}/work-requests was still arriving "
        "after 1 s (settings.answer_timeout): the back-end is overloaded, or sends an endless "
        "answer"
    )


def test_an_answer_larger_than_max_answer_mb_is_not_read_to_its_end(mapping: Mapping) -> None:
    # 8 MB of one JSON string: held whole in the worker's memory, as 500 MB would have been.
    huge = '{"items": [], "padding": "' + "x" * (8 * 1024 * 1024) + '"}'
    with misbehaving_backend(_token_then(lambda h: reply(h, 200, huge))) as url:
        settings = {"client_id": "c", "client_secret": "s", "max_answer_mb": 1}
        adapter = ParksAdapter("parks", {"base_url": url, **settings}, mapping)
        with pytest.raises(TransientError) as caught:
            adapter.find("req-1")
        adapter.close()

    assert str(caught.value) == (
        f"parks adapter parks: find req-1: the answer of {url}/work-requests is larger than "
        "1 MB (settings.max_answer_mb), and was not read to its end"
    )


@pytest.mark.parametrize("given", [{"answer_timeout": 0}, {"max_answer_mb": "lots"}])
def test_answer_bounds_must_be_positive_numbers(given: dict[str, Any], mapping: Mapping) -> None:
    with pytest.raises(ValueError, match=r"^parks adapter p: the settings `answer_timeout`"):
        ParksAdapter("p", {"base_url": "http://h", "client_id": "c", "client_secret": "s",
                           **given}, mapping)  # fmt: skip


def test_duplicates_in_the_parks_system_are_logged_and_the_first_listed_wins(
    mapping: Mapping,
) -> None:
    # Two work requests carry the same external reference: the first was taken silently.
    two = {"items": [{"id": "W7", "status": "NEW"}, {"id": "W9", "status": "NEW"}]}
    with misbehaving_backend(_token_then(lambda h: reply(h, 200, json.dumps(two)))) as url:
        adapter = ParksAdapter("parks", {"base_url": url, "client_id": "c", "client_secret": "s"},
                               mapping)  # fmt: skip
        with capture_logs() as logs:
            found = adapter.find("req-1")
        adapter.close()

    assert found is not None and found.reference == "W7"
    [warning] = [line for line in logs if line["event"] == "parks.work_request.duplicates"]
    assert warning["log_level"] == "warning"
    assert (warning["request_id"], warning["references"]) == ("req-1", ["W7", "W9"])


def test_a_changes_cursor_that_does_not_move_is_read_once(mapping: Mapping) -> None:
    # "more" with the same `next` was asked again up to max_pages times: ten copies of one change.
    calls: list[str] = []
    change = {"change_id": 1, "external_reference": "req-1", "status": "NEW"}
    page = {"changes": [change], "next": "5", "more": True}

    def stuck(handler: Any) -> None:
        calls.append(handler.path)
        reply(handler, 200, json.dumps(page))

    with misbehaving_backend(_token_then(stuck)) as url:
        adapter = ParksAdapter("parks", {"base_url": url, "client_id": "c", "client_secret": "s"},
                               mapping)  # fmt: skip
        with capture_logs() as logs:
            read = adapter.updates("5")
        adapter.close()

    assert [u.update_id for u in read.updates] == ["parks:1"] and read.watermark == "5"
    assert len(calls) == 1
    assert [line["event"] for line in logs] == ["parks.changes.cursor_stuck"]


def test_a_redirect_is_not_followed_and_says_where_it_pointed(mapping: Mapping) -> None:
    moved = [("Location", "https://parks.example.gov/api/v2/work-requests?x=1")]
    with misbehaving_backend(_token_then(lambda h: reply(h, 301, "", headers=moved))) as url:
        adapter = ParksAdapter("parks", {"base_url": url, "client_id": "c", "client_secret": "s"},
                               mapping)  # fmt: skip
        with pytest.raises(TransientError) as caught:
            adapter.find("req-1")
        adapter.close()

    # It said "answered HTTP 301 with application/json, not JSON: is it the parks API?".
    assert str(caught.value) == (
        "parks adapter parks: find req-1: HTTP 301 redirect to https://parks.example.gov/api/v2/"
        "work-requests, not followed: if the parks system moved, check settings.base_url of "
        "instance parks"
    )


def test_a_create_answer_without_an_id_is_retried_and_the_retry_finds_the_work_request(
    mapping: Mapping,
) -> None:
    # A PermanentError before: dead-lettered, though the parks system had made the work request.
    made: list[dict[str, Any]] = []

    def api(handler: Any) -> None:
        if handler.command == "POST":
            made.append({"id": "W1", "status": "NEW"})
            reply(handler, 201, json.dumps({"status": "NEW"}))
        else:
            reply(handler, 200, json.dumps({"items": made}))

    with misbehaving_backend(_token_then(api)) as url:
        adapter = ParksAdapter("parks", {"base_url": url, "client_id": "c", "client_secret": "s"},
                               mapping)  # fmt: skip
        request = a_request("PLAYGROUND")
        with pytest.raises(TransientError, match=r"the parks system's work request lacks id$"):
            adapter.submit(request)
        receipt = adapter.submit(request)  # the worker's retry
        adapter.close()

    assert (receipt.reference, receipt.created, len(made)) == ("W1", False, 1)
