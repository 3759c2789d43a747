"""Helpers for the tests of the permits, parks and email adapters against their simulators."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from civicbus.sandbox.runner import SIMULATORS, Running, ServeOptions
from schemas.model import Location, Reporter, ServiceRequest

REPO = Path(__file__).resolve().parents[2]
MAPPINGS = REPO / "mappings"


def a_request(service_code: str = "SKIP_PERMIT", **changes: Any) -> ServiceRequest:
    """A canonical request with a fresh id, a location, and a reporter (personal data)."""
    now = datetime(2026, 11, 20, 9, 30, tzinfo=UTC)
    fields: dict[str, Any] = {
        "id": f"req-{uuid.uuid4().hex[:12]}",
        "jurisdiction": "springfield.example",
        "service_code": service_code,
        "service_name": service_code.replace("_", " ").title(),
        "description": "Scaffold blocks the pavement outside number 12.",
        "location": Location(lat=51.50101, long=-0.12412, address="12 Evergreen Terrace"),
        "reporter": Reporter(email="resident@example.org", first_name="Marge", phone="555-0100"),
        "requested_at": now,
        "updated_at": now,
    }
    fields.update(changes)
    return ServiceRequest(**fields)


@contextmanager
def simulator(name: str, state_dir: Path, **extra: str) -> Iterator[Running]:
    """Run one sandbox simulator on a free loopback port for the duration of the block."""
    running = SIMULATORS[name].serve(ServeOptions(state_dir=state_dir, port=0, extra=extra))
    try:
        yield running
    finally:
        running.stop()


def control(running: Running, method: str, path: str, **json: Any) -> Any:
    """Call the simulator's control endpoint (`/_sandbox/...`) and return its JSON answer."""
    response = httpx.request(method, f"{running.control_url}/_sandbox{path}",
                             json=json or None, timeout=5)
    response.raise_for_status()
    return response.json()


def free_port() -> int:
    """A loopback port nothing listens on (bound and released at once)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port
