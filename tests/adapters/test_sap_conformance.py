"""Both SAP transports pass the adapter conformance kit against the sandbox's SAP simulation."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from backends_support import free_port
from sap_support import REJECTED_SERVICE, control, notifications, rejecting_mapping, settings_for

from adapters import Adapter, Receipt
from adapters.sap import SapAdapter
from civicbus.sandbox.runner import Running
from civicbus.testing import AdapterConformance, ConformanceTarget
from schemas.model import ServiceRequest, Status

pytestmark = pytest.mark.timeout(60)
pytest_plugins = ["civicbus.testing"]


class SapTarget(ConformanceTarget):
    """The SAP adapter (one transport) against the running SAP simulation."""

    def __init__(self, sim: Running, transport: str) -> None:
        self.sim, self.transport = sim, transport
        self.mapping = rejecting_mapping()

    def adapter(self) -> Adapter:
        return SapAdapter("sap-roads", settings_for(self.transport, self.sim.url), self.mapping)

    def rejected_request(self, request_id: str) -> ServiceRequest:
        return self.request(request_id, service_code=REJECTED_SERVICE)

    @contextmanager
    def unreachable_adapter(self) -> Iterator[Adapter]:
        url = f"http://127.0.0.1:{free_port()}"
        yield SapAdapter("sap-roads", settings_for(self.transport, url), self.mapping)

    def records(self, request_id: str) -> int:
        return len(notifications(self.sim, request_id))

    def change_status(self, receipt: Receipt) -> Status:
        current = control(self.sim, "GET", f"/items/{receipt.reference}")["system_status"]
        following = {"OSNO": "NOPR", "NOPR": "NOCO", "NOCO": "DLFL"}[current]
        control(self.sim, "POST", f"/items/{receipt.reference}/status", status=following)
        return self.mapping.status(following)


class TestSapODataConformance(AdapterConformance):
    @pytest.fixture
    def conformance_target(self, sap_sim: Running) -> ConformanceTarget:
        return SapTarget(sap_sim, "odata")


class TestSapRfcConformance(AdapterConformance):
    @pytest.fixture
    def conformance_target(self, sap_sim: Running) -> ConformanceTarget:
        return SapTarget(sap_sim, "rfc")
