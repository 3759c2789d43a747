"""A city's own web pages may call the API from a browser when the config names their origin."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from bus.api import create_app
from bus.config import ConfigError, parse_config
from tests.api.conftest import (
    SANDBOX,
    SPRINGFIELD,
    LiveServer,
    cors_config,
    make_runtime,
    pothole_form,
)

PAGE = "https://www.springfield.example"


def test_a_named_origin_may_call_the_api_from_a_browser_and_no_other(tmp_path: Path) -> None:
    runtime = make_runtime(
        f"sqlite:///{tmp_path}/civicbus.db", tmp_path / "media", cors_config(tmp_path, f"[{PAGE}]")
    )
    key = runtime.store.add_client("city-page")[1]
    try:
        with LiveServer(create_app(runtime)) as live:
            url = f"{live.url}/open311/v2/requests.json"
            # The browser's preflight for a POST with an Idempotency-Key header.
            asked = {
                "Origin": PAGE,
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "idempotency-key",
            }
            preflight = httpx.options(url, headers=asked)
            assert preflight.status_code == 200
            assert preflight.headers["access-control-allow-origin"] == PAGE
            assert "POST" in preflight.headers["access-control-allow-methods"]
            assert "idempotency-key" in preflight.headers["access-control-allow-headers"].lower()
            created = httpx.post(url, data=pothole_form(key), headers={"Origin": PAGE})
            assert created.status_code == 200, created.text
            assert created.headers["access-control-allow-origin"] == PAGE
            assert "access-control-allow-credentials" not in created.headers
            read = httpx.get(url, params={"jurisdiction_id": SPRINGFIELD}, headers={"Origin": PAGE})
            assert read.headers["access-control-allow-origin"] == PAGE
            # Another site's page: no permission, so its browser keeps the answer from it.
            other = httpx.get(
                url,
                params={"jurisdiction_id": SPRINGFIELD},
                headers={"Origin": "https://evil.example"},
            )
            assert "access-control-allow-origin" not in other.headers
    finally:
        runtime.close()


def test_without_cors_origins_no_page_elsewhere_may_read_the_answers(tmp_path: Path) -> None:
    runtime = make_runtime(f"sqlite:///{tmp_path}/civicbus.db", tmp_path / "media")
    try:
        with LiveServer(create_app(runtime)) as live:
            read = httpx.get(
                f"{live.url}/open311/v2/services.json",
                params={"jurisdiction_id": SPRINGFIELD},
                headers={"Origin": PAGE},
            )
            assert read.status_code == 200 and "access-control-allow-origin" not in read.headers
    finally:
        runtime.close()


@pytest.mark.parametrize("origin", ["https://www.springfield.example/", "www.springfield.example"])
def test_an_origin_with_a_path_or_without_a_scheme_is_refused(origin: str) -> None:
    text = Path(SANDBOX).read_text().replace("api:\n", f"api:\n  cors_origins: ['{origin}']\n", 1)
    with pytest.raises(ConfigError, match="is no web origin"):
        parse_config(text, source="city.yaml")
