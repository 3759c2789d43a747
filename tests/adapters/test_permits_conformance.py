"""The permits adapter passes the conformance kit against the SOAP permit simulator."""

from __future__ import annotations

import pytest

pytest.register_assert_rewrite("civicbus.testing")

from backends_support import MAPPINGS, WorkItemsTarget, free_port  # noqa: E402

from adapters import Adapter  # noqa: E402
from adapters.mapping import load_mapping  # noqa: E402
from adapters.permits import PermitsAdapter  # noqa: E402
from civicbus.sandbox.runner import Running  # noqa: E402
from civicbus.testing import AdapterConformance, ConformanceTarget  # noqa: E402
from schemas.model import ServiceRequest  # noqa: E402

pytest_plugins = ["civicbus.testing"]
pytestmark = pytest.mark.timeout(60)


class PermitsTarget(WorkItemsTarget):
    """The permits adapter against a running permit simulator; statuses moved by its control."""

    def adapter(self) -> Adapter:
        return PermitsAdapter(
            "permits", {"wsdl": self.running.url + "?wsdl", "timeout": 5}, self.mapping
        )

    def rejected_request(self, request_id: str) -> ServiceRequest:
        # Only an address id, no address or position: the permit system refuses such a case.
        return self.request(request_id, location={"address_id": "UPRN-100023336956"})

    def adapter_to_a_closed_port(self) -> Adapter:
        return PermitsAdapter(
            "permits",
            {"wsdl": f"http://127.0.0.1:{free_port()}/permits?wsdl", "timeout": 2},
            self.mapping,
        )


class TestPermitsConformance(AdapterConformance):
    @pytest.fixture
    def conformance_target(self, permits: Running) -> ConformanceTarget:
        return PermitsTarget(permits, load_mapping(MAPPINGS / "permits.yaml"))
