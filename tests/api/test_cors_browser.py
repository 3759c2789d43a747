"""A city's own web page calls the API from a real browser (CORS, `api.cors_origins`): a page
on an origin the config names reads the answers and posts reports; a page on any other origin
has its browser reject every call, the answers kept from it.

The page is served on one loopback port, the API on another: two origins, as a city's site and
its API are."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from bus.bootstrap import Runtime
from tests.api.conftest import SPRINGFIELD, LiveServer, cors_config, make_runtime
from tests.conftest import BrowserPage

pytestmark = pytest.mark.browser

#: What a city's "report a problem" page does with the API; `api` is its Open311 v2 base URL.
PAGE = b"""<!doctype html>
<title>Report a problem</title>
<script>
const JURISDICTION = "springfield.example";

async function answer(response) {
  return {
    status: response.status,
    replayed: response.headers.get("Idempotent-Replayed"),
    body: await response.json(),
  };
}

async function services(api) {
  return answer(await fetch(`${api}/services.json?jurisdiction_id=${JURISDICTION}`));
}

async function request(api, id) {
  return answer(await fetch(`${api}/requests/${id}.json?jurisdiction_id=${JURISDICTION}`));
}

// With an Idempotency-Key, so that a resident's second click reports the pothole once.
async function report(api, key, idempotencyKey) {
  const form = new URLSearchParams({
    api_key: key, jurisdiction_id: JURISDICTION, service_code: "POTHOLE",
    lat: "37.76", long: "-122.41", "attribute[LANE]": "carriageway",
  });
  const headers = {"Idempotency-Key": idempotencyKey};
  return answer(await fetch(`${api}/requests.json`, {method: "POST", body: form, headers}));
}

// The page's view of a call: the answer, or how its fetch failed.
async function attempt(call, ...args) {
  try { return await call(...args); } catch (error) { return {rejected: String(error)}; }
}
</script>
"""

#: How Chromium rejects a fetch whose answer the page may not read (as it rejects one that found
#: no server: a page cannot tell them apart).
REFUSED = {"rejected": "TypeError: Failed to fetch"}


class _PageHandler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(PAGE)))
        self.end_headers()
        self.wfile.write(PAGE)

    def log_message(self, *_: Any) -> None:
        pass  # no line on stderr for each page served


class PageServer:
    """The page, served on a loopback port of its own: an origin other than the API's."""

    def __init__(self) -> None:
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _PageHandler)
        self.origin = f"http://127.0.0.1:{self.httpd.server_port}"

    def __enter__(self) -> PageServer:
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *_: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def city_page() -> Iterator[PageServer]:
    with PageServer() as page:
        yield page


@pytest.fixture(scope="module")
def elsewhere_page() -> Iterator[PageServer]:
    with PageServer() as page:
        yield page


@pytest.fixture(scope="module")
def runtime(tmp_path_factory: pytest.TempPathFactory, city_page: PageServer) -> Iterator[Runtime]:
    """The sandbox city whose config lets the city's page call the API, and no other page (the
    API's `server`, `http` and `api_key` fixtures are built on it)."""
    base = tmp_path_factory.mktemp("cors")
    config = cors_config(base, f"['{city_page.origin}']")
    rt = make_runtime(f"sqlite:///{base}/civicbus.db", base / "media", config)
    yield rt
    rt.close()


def call(browser_page: BrowserPage, function: str, *args: str) -> Any:
    """Call one of the page's functions as its script would; its answer, or how it failed."""
    return browser_page.page.evaluate(f"(args) => attempt({function}, ...args)", list(args))


def test_a_page_on_a_named_origin_reads_services_and_requests_and_posts_reports(
    server: LiveServer, api_key: str, city_page: PageServer, browser_page: BrowserPage
) -> None:
    api = f"{server.url}/open311/v2"
    browser_page.page.goto(f"{city_page.origin}/report.html")

    listed = call(browser_page, "services", api)
    assert listed.get("status") == 200, listed
    assert "POTHOLE" in [service["service_code"] for service in listed["body"]]

    created = call(browser_page, "report", api, api_key, "pothole-by-the-bus-stop")
    assert created["status"] == 200, created
    [receipt] = created["body"]
    # Clicked twice: the first answer again, and the page may read the header that says so.
    again = call(browser_page, "report", api, api_key, "pothole-by-the-bus-stop")
    assert again["body"] == created["body"] and again["replayed"] == "true"

    read = call(browser_page, "request", api, receipt["service_request_id"])
    assert read["status"] == 200
    assert read["body"][0]["service_request_id"] == receipt["service_request_id"]


def test_a_page_on_another_origin_has_every_call_rejected_by_its_browser(
    server: LiveServer,
    http: httpx.Client,
    create: Callable[..., httpx.Response],
    api_key: str,
    elsewhere_page: PageServer,
    browser_page: BrowserPage,
) -> None:
    api = f"{server.url}/open311/v2"
    [receipt] = create().json()
    known = len(http.get("/requests.json", params={"jurisdiction_id": SPRINGFIELD}).json())
    page = browser_page.page
    blocked: list[str] = []
    page.on("console", lambda message: blocked.append(message.text))
    page.goto(f"{elsewhere_page.origin}/report.html")

    assert call(browser_page, "services", api) == REFUSED
    assert call(browser_page, "request", api, receipt["service_request_id"]) == REFUSED
    assert call(browser_page, "report", api, api_key, "from-elsewhere") == REFUSED
    # Refused for CORS, each of them, not for want of a server.
    assert len([text for text in blocked if "has been blocked by CORS policy" in text]) == 3
    # The report's Idempotency-Key header made the browser ask first (a preflight), and, refused,
    # it never sent the report. A plain form post would be sent and only its answer kept from
    # the page: what stops a page elsewhere from reporting is the API key, not CORS.
    after = http.get("/requests.json", params={"jurisdiction_id": SPRINGFIELD}).json()
    assert len(after) == known
