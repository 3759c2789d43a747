"""The API's /docs page, which the README points integrators to, works without the internet:
Swagger UI's script and styles are served by the API itself (a CDN's were a blank page on a
city's intranet)."""

from __future__ import annotations

import httpx
import pytest
from playwright.sync_api import expect

from tests.api.conftest import LiveServer
from tests.conftest import BrowserPage


@pytest.mark.browser
def test_the_docs_page_shows_the_operations_with_nothing_loaded_from_beyond_loopback(
    server: LiveServer, browser_page: BrowserPage
) -> None:
    page = browser_page.page
    page.goto(f"{server.url}/docs")
    create = page.locator(".opblock-post", has_text="/open311/v2/requests.{fmt}")
    expect(create.get_by_text("Create a request")).to_be_visible()
    expect(page.get_by_text("Find requests")).to_be_visible()
    assert browser_page.offsite == []


def test_redoc_is_not_served(server: LiveServer) -> None:
    # Its page loads Redocly's logo from their CDN, and /docs shows the same document.
    assert httpx.get(f"{server.url}/redoc", timeout=10).status_code == 404
