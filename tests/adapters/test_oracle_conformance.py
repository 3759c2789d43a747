"""The Oracle adapter passes the conformance kit against PostgreSQL and against SQLite."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from backends_support import free_port
from oracle_support import adapter_for, facilities_mapping, prepared, rows

from adapters import Adapter, Receipt
from civicbus.sandbox.workorders import set_status
from civicbus.testing import AdapterConformance, ConformanceTarget
from schemas.model import ServiceRequest, Status

pytestmark = pytest.mark.timeout(60)
pytest_plugins = ["civicbus.testing"]

FLOW = {"NEW": "TRIAGED", "TRIAGED": "ASSIGNED", "ASSIGNED": "IN_PROGRESS", "IN_PROGRESS": "DONE"}


class WorkOrderTarget(ConformanceTarget):
    def __init__(self, url: str, unreachable_url: str) -> None:
        self.url, self.unreachable_url = url, unreachable_url
        self.mapping = facilities_mapping()

    def adapter(self) -> Adapter:
        return adapter_for(self.url)

    def request(self, request_id: str, **changes: object) -> ServiceRequest:
        return super().request(request_id, **{"service_code": "STREETLIGHT", **changes})

    def rejected_request(self, request_id: str) -> ServiceRequest:
        return self.request(request_id, service_code="NOT_A_FACILITY")  # no work_type

    @contextmanager
    def unreachable_adapter(self) -> Iterator[Adapter]:
        yield adapter_for(self.unreachable_url, pool_timeout=2)

    def records(self, request_id: str) -> int:
        return len(rows(self.url, request_id))

    def change_status(self, receipt: Receipt) -> Status:
        [row] = rows(self.url, receipt.request_id)
        following = FLOW[row.status]
        set_status(self.url, receipt.request_id, following)
        return self.mapping.status(following)


class TestOracleAdapterOnPostgresConformance(AdapterConformance):
    @pytest.fixture
    def conformance_target(self, postgres_url: str) -> ConformanceTarget:
        closed = f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/nothing?connect_timeout=2"
        return WorkOrderTarget(prepared(postgres_url), closed)


class TestOracleAdapterOnSqliteConformance(AdapterConformance):
    @pytest.fixture
    def conformance_target(self, tmp_path: Path) -> ConformanceTarget:
        url = prepared(f"sqlite:///{tmp_path}/workorders.db")
        return WorkOrderTarget(url, f"sqlite:///{tmp_path}/missing-dir/workorders.db")
