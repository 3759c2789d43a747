"""The parks adapter passes the conformance kit against the REST parks simulator."""

from __future__ import annotations

import pytest

pytest.register_assert_rewrite("civicbus.testing")

from backends_support import MAPPINGS, WorkItemsTarget, free_port  # noqa: E402

from adapters import Adapter  # noqa: E402
from adapters.mapping import load_mapping  # noqa: E402
from adapters.parks import ParksAdapter  # noqa: E402
from civicbus.sandbox.parks import SANDBOX_CLIENT_ID, SANDBOX_CLIENT_SECRET  # noqa: E402
from civicbus.sandbox.runner import Running  # noqa: E402
from civicbus.testing import AdapterConformance, ConformanceTarget  # noqa: E402
from schemas.model import ServiceRequest  # noqa: E402

pytest_plugins = ["civicbus.testing"]
pytestmark = pytest.mark.timeout(60)


def _settings(base_url: str) -> dict[str, object]:
    return {
        "base_url": base_url,
        "client_id": SANDBOX_CLIENT_ID,
        "client_secret": SANDBOX_CLIENT_SECRET,
        "timeout": 5,
    }


class ParksTarget(WorkItemsTarget):
    """The parks adapter against a running parks simulator; statuses moved by its control."""

    def adapter(self) -> Adapter:
        return ParksAdapter("parks", _settings(self.running.url), self.mapping)

    def rejected_request(self, request_id: str) -> ServiceRequest:
        # Only an address id, no address or position: the parks system answers 422.
        return self.request(request_id, location={"address_id": "UPRN-100023336956"})

    def adapter_to_a_closed_port(self) -> Adapter:
        return ParksAdapter("parks", _settings(f"http://127.0.0.1:{free_port()}"), self.mapping)


class TestParksConformance(AdapterConformance):
    @pytest.fixture
    def conformance_target(self, parks: Running) -> ConformanceTarget:
        return ParksTarget(parks, load_mapping(MAPPINGS / "parks.yaml"))
