"""What integrators read (the OpenAPI document, schemas/asyncapi.yaml, schemas/json/) stands on
its own: no references to the numbered contracts of the team's design notes (C-06, C-22...),
which are not published with civicbus."""

from __future__ import annotations

import re
from pathlib import Path

import httpx

from tests.api.conftest import LiveServer

ROOT = Path(__file__).resolve().parents[2]
CONTRACT_NUMBER = re.compile(r"\bC-\d{2}\b")


def test_the_openapi_document_cites_no_contract_numbers(server: LiveServer) -> None:
    document = httpx.get(f"{server.url}/openapi.json", timeout=10).text
    assert CONTRACT_NUMBER.findall(document) == []


def test_the_event_and_model_schemas_cite_no_contract_numbers() -> None:
    published = [ROOT / "schemas" / "asyncapi.yaml", *sorted((ROOT / "schemas" / "json").glob("*"))]
    cited = {p.name: CONTRACT_NUMBER.findall(p.read_text()) for p in published}
    assert {name: found for name, found in cited.items() if found} == {}
