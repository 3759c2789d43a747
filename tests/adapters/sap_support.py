"""Helpers for the SAP adapter tests: the sandbox's SAP simulation on a free loopback port."""

from __future__ import annotations

from typing import Any

import httpx
from backends_support import MAPPINGS

from adapters.mapping import Mapping, load_mapping, parse_mapping
from civicbus.sandbox.runner import Running

#: A service code the test mapping turns into a notification type the simulated SAP lacks.
REJECTED_SERVICE = "REJECT_ME"


def sap_mapping() -> Mapping:
    """The sandbox's sap-roads mapping."""
    return load_mapping(MAPPINGS / "sap-roads.yaml")


def rejecting_mapping() -> Mapping:
    """sap-roads plus one service whose notification type (ZZ) SAP does not know."""
    text = (MAPPINGS / "sap-roads.yaml").read_text(encoding="utf-8")
    extra = f"    STREET_SIGN: M2\n    {REJECTED_SERVICE}: ZZ\n"
    text = text.replace("    STREET_SIGN: M2\n", extra)
    return parse_mapping(text, source="sap-roads (test)", base_dir=MAPPINGS)


def settings_for(transport: str, url: str, **extra: Any) -> dict[str, Any]:
    if transport == "odata":
        return {"transport": "odata", "base_url": url, "timeout": 5, **extra}
    return {"transport": "rfc", "rfc_client": "simulation", "url": url, "timeout": 5, **extra}


def control(sim: Running, method: str, path: str, **body: Any) -> Any:
    response = httpx.request(method, f"{sim.url}/_sandbox{path}", json=body or None, timeout=5)
    response.raise_for_status()
    return response.json()


def notifications(sim: Running, request_id: str) -> list[dict[str, Any]]:
    return [n for n in control(sim, "GET", "/items") if n["ext_ref"] == request_id]
