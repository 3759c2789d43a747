"""adapters/_http.py: an HTTP call's failure in words to act on, for httpx's and requests' errors
alike, against real sockets on loopback."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
import requests
from backends_support import free_port

from adapters import TransientError, map_exceptions
from adapters._http import Where, check_settings, require_http_url, retry_after

pytestmark = pytest.mark.timeout(60)

WHERE = Where("the parks system", check_settings("sanitation", "base_url"))
ADVICE = "check settings.base_url of instance sanitation"
TABLE = {httpx.TransportError: TransientError, requests.RequestException: TransientError}


def _httpx_get(url: str) -> None:
    with httpx.Client(timeout=5) as client:
        client.get(url)


def _requests_get(url: str) -> None:
    requests.get(url, timeout=5)


CLIENTS = pytest.mark.parametrize("get", [_httpx_get, _requests_get], ids=["httpx", "requests"])


def failure(get: Callable[[str], None], url: str) -> str:
    with (
        pytest.raises(TransientError) as caught,
        map_exceptions(TABLE, context="ctx", describe=WHERE.describe),
    ):
        get(url)
    return str(caught.value)


class _Hello(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def plain_http() -> Iterator[int]:
    """A plain-http server on a loopback port; yields the port."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Hello)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_port
    server.shutdown()
    server.server_close()


@CLIENTS
def test_a_refused_connection_names_the_address_and_the_setting(
    get: Callable[[str], None],
) -> None:
    port = free_port()
    assert failure(get, f"http://127.0.0.1:{port}/api") == (
        f"ctx: cannot connect to 127.0.0.1:{port} (connection refused): is the parks system "
        f"running there, on that port? {ADVICE}"
    )


@CLIENTS
def test_an_unknown_host_names_the_host_and_the_setting(get: Callable[[str], None]) -> None:
    said = failure(get, "http://no-such-host.invalid/api")
    assert said.startswith("ctx: cannot find the host no-such-host.invalid (")
    assert said.endswith(f"is the host name right, and known to this machine's DNS? {ADVICE}")


@CLIENTS
def test_https_to_a_plain_http_port_says_so(plain_http: int, get: Callable[[str], None]) -> None:
    assert failure(get, f"https://127.0.0.1:{plain_http}/api") == (
        f"ctx: https to 127.0.0.1:{plain_http}, which answers plain http (TLS: wrong version "
        f"number): use http://, or the port that serves https; {ADVICE}"
    )


@CLIENTS
def test_a_url_without_a_scheme_says_so(get: Callable[[str], None]) -> None:
    assert failure(get, "127.0.0.1/api") == (
        f"ctx: the URL has no http:// or https:// scheme: {ADVICE}"
    )


def test_an_error_of_no_known_kind_keeps_its_type_and_text() -> None:
    with (
        pytest.raises(TransientError, match=r"^ctx: ReadError: cut$"),
        map_exceptions(TABLE, context="ctx", describe=WHERE.describe),
    ):
        raise httpx.ReadError("cut")


def test_not_served_names_the_endpoint_without_the_query() -> None:
    said = WHERE.not_served(404, "Not Found", "http://h:1/api/items?ref=r1", "item endpoint")
    assert said == f"HTTP 404 Not Found (no item endpoint at http://h:1/api/items: {ADVICE})"


@pytest.mark.parametrize(
    "url", ["127.0.0.1:8322", "parks.example.gov/api", "ftp://parks.example.gov", "http://", ""]
)
def test_require_http_url_refuses_what_no_http_client_can_use(url: str) -> None:
    with pytest.raises(ValueError, match=r"^parks adapter p: the setting `base_url` must be"):
        require_http_url(url, context="parks adapter p", setting="base_url")
    assert require_http_url(" https://h.example/api ", context="c", setting="s") == (
        "https://h.example/api"
    )


def test_retry_after_reads_seconds_and_http_dates_from_either_client_s_headers() -> None:
    assert retry_after(httpx.Headers({"retry-after": "12"})) == 12.0
    assert retry_after(requests.structures.CaseInsensitiveDict({"Retry-After": "3"})) == 3.0
    past = {"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}
    assert retry_after(httpx.Headers(past)) == 0.0
    assert retry_after(httpx.Headers({"Retry-After": "soon"})) is None
    assert retry_after(httpx.Headers()) is None
