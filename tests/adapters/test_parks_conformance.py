"""The parks adapter passes the conformance kit against the REST parks simulator."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

pytest.register_assert_rewrite("civicbus.testing")

from backends_support import MAPPINGS, control, free_port, simulator  # noqa: E402

from adapters import Adapter, Receipt  # noqa: E402
from adapters.mapping import Mapping, load_mapping  # noqa: E402
from adapters.parks import ParksAdapter  # noqa: E402
from civicbus.sandbox.parks import SANDBOX_CLIENT_ID, SANDBOX_CLIENT_SECRET  # noqa: E402
from civicbus.sandbox.runner import Running  # noqa: E402
from civicbus.testing import AdapterConformance, ConformanceTarget  # noqa: E402
from schemas.model import ServiceRequest, Status  # noqa: E402

pytest_plugins = ["civicbus.testing"]
pytestmark = pytest.mark.timeout(60)


def _settings(base_url: str) -> dict[str, object]:
    return {"base_url": base_url, "client_id": SANDBOX_CLIENT_ID,
            "client_secret": SANDBOX_CLIENT_SECRET, "timeout": 5}


class ParksTarget(ConformanceTarget):
    """The parks adapter against a running parks simulator; statuses moved by its control."""

    def __init__(self, running: Running, mapping: Mapping) -> None:
        self.running = running
        self.mapping = mapping

    def adapter(self) -> Adapter:
        return ParksAdapter("parks", _settings(self.running.url), self.mapping)

    def rejected_request(self, request_id: str) -> ServiceRequest:
        # Only an address id, no address or position: the parks system answers 422.
        return self.request(request_id, location={"address_id": "UPRN-100023336956"})

    @contextmanager
    def unreachable_adapter(self) -> Iterator[Adapter]:
        adapter = ParksAdapter("parks", _settings(f"http://127.0.0.1:{free_port()}"),
                               self.mapping)
        try:
            yield adapter
        finally:
            adapter.close()

    def records(self, request_id: str) -> int:
        return sum(1 for i in control(self.running, "GET", "/items")
                   if i["external_reference"] == request_id)

    def change_status(self, receipt: Receipt) -> Status:
        change = control(self.running, "POST", f"/items/{receipt.reference}/advance")
        return self.mapping.status(change["status"])


class TestParksConformance(AdapterConformance):
    @pytest.fixture
    def conformance_target(self, tmp_path: Path) -> Iterator[ConformanceTarget]:
        with simulator("parks", tmp_path) as running:
            yield ParksTarget(running, load_mapping(MAPPINGS / "parks.yaml"))
