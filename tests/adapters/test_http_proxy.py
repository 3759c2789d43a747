"""The HTTP adapters behind a city's egress proxy: the proxy the environment names (HTTP_PROXY,
HTTPS_PROXY, ALL_PROXY, NO_PROXY) carries their calls, as it carries zeep's (permits), against a
real forward proxy on a loopback port."""

from __future__ import annotations

import json
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from typing import Any

import pytest
from backends_support import a_request, free_port, loopback_server, reply

from adapters.webhook import WebhookAdapter

pytestmark = pytest.mark.timeout(60)

PROXY_VARIABLES = ("http_proxy", "https_proxy", "all_proxy", "no_proxy")


class _Accepting(BaseHTTPRequestHandler):
    """Answers every POST 202 and notes the request line's target (a forward proxy is asked for
    an absolute URL; a server, for its path)."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        self.server.targets.append(self.path)  # type: ignore[attr-defined]
        reply(self, 202, json.dumps({"reference": "R-1"}))

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def environment(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """The environment without any proxy of the machine running the tests."""
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)
    return monkeypatch


@pytest.fixture
def proxy() -> Iterator[tuple[str, list[Any]]]:
    """A forward proxy's address, and the targets it was asked for."""
    targets: list[Any] = []
    with loopback_server(_Accepting, targets=targets) as url:
        yield url, targets


def test_a_webhook_is_posted_through_the_proxy_the_environment_names(
    environment: pytest.MonkeyPatch, proxy: tuple[str, list[Any]]
) -> None:
    proxy_url, targets = proxy
    environment.setenv("HTTP_PROXY", proxy_url)
    # .invalid never resolves: only the proxy can reach the receiver.
    adapter = WebhookAdapter("contractor", {"url": "http://receiver.invalid/hook"})
    try:
        receipt = adapter.submit(a_request())
    finally:
        adapter.close()

    assert targets == ["http://receiver.invalid/hook"]
    assert receipt.reference == "R-1"


def test_a_host_that_no_proxy_lists_is_reached_directly(
    environment: pytest.MonkeyPatch, proxy: tuple[str, list[Any]]
) -> None:
    receiver_url, targets = proxy
    environment.setenv("HTTP_PROXY", f"http://127.0.0.1:{free_port()}")  # nothing listens
    environment.setenv("NO_PROXY", "localhost,127.0.0.1")
    adapter = WebhookAdapter("contractor", {"url": f"{receiver_url}/hook"})
    try:
        adapter.submit(a_request())
    finally:
        adapter.close()

    assert targets == ["/hook"]
