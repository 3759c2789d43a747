"""The permits adapter passes the conformance kit against the SOAP permit simulator."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

pytest.register_assert_rewrite("civicbus.testing")

from backends_support import MAPPINGS, control, free_port, simulator  # noqa: E402

from adapters import Adapter, Receipt  # noqa: E402
from adapters.mapping import Mapping, load_mapping  # noqa: E402
from adapters.permits import PermitsAdapter  # noqa: E402
from civicbus.sandbox.runner import Running  # noqa: E402
from civicbus.testing import AdapterConformance, ConformanceTarget  # noqa: E402
from schemas.model import ServiceRequest, Status  # noqa: E402

pytest_plugins = ["civicbus.testing"]
pytestmark = pytest.mark.timeout(60)


class PermitsTarget(ConformanceTarget):
    """The permits adapter against a running permit simulator; statuses moved by its control."""

    def __init__(self, running: Running, mapping: Mapping) -> None:
        self.running = running
        self.mapping = mapping

    def adapter(self) -> Adapter:
        return PermitsAdapter("permits", {"wsdl": self.running.url + "?wsdl", "timeout": 5},
                              self.mapping)

    def rejected_request(self, request_id: str) -> ServiceRequest:
        # Only an address id, no address or position: the permit system refuses such a case.
        return self.request(request_id, location={"address_id": "UPRN-100023336956"})

    @contextmanager
    def unreachable_adapter(self) -> Iterator[Adapter]:
        adapter = PermitsAdapter(
            "permits", {"wsdl": f"http://127.0.0.1:{free_port()}/permits?wsdl", "timeout": 2},
            self.mapping,
        )
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


class TestPermitsConformance(AdapterConformance):
    @pytest.fixture
    def conformance_target(self, tmp_path: Path) -> Iterator[ConformanceTarget]:
        with simulator("permits", tmp_path) as running:
            yield PermitsTarget(running, load_mapping(MAPPINGS / "permits.yaml"))
