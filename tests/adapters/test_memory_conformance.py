"""The memory adapter passes the conformance kit, with and without a mapping."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

# Before the import below, so the kit's asserts are rewritten (pytest explains failures fully).
pytest.register_assert_rewrite("civicbus.testing")

from adapters import Adapter, Receipt  # noqa: E402
from adapters.mapping import Mapping, parse_mapping  # noqa: E402
from adapters.memory import MemoryAdapter, MemoryBackend  # noqa: E402
from civicbus.testing import AdapterConformance, ConformanceTarget  # noqa: E402
from schemas.model import ServiceRequest, Status  # noqa: E402

pytest_plugins = ["civicbus.testing", "pytester"]

MAPPING = """
adapter: memory
fields:
  Text: {from: description, truncate: 40, required: true}
  Service: {from: service_code}
statuses: {OSNO: open, NOPR: in_progress, NOCO: closed}
"""


class MemoryTarget(ConformanceTarget):
    """A MemoryBackend per test; rejects requests whose description says so."""

    def __init__(self, mapping: Mapping | None) -> None:
        self.backend = MemoryBackend()
        self.mapping = mapping
        self.codes = ["NOPR", "NOCO"] if mapping else ["in_progress", "closed"]
        self.steps: dict[str, int] = {}
        self.backend.reject_when(lambda payload: "REJECT ME" in str(payload))

    def adapter(self) -> Adapter:
        settings: dict[str, Any] = {"backend": self.backend, "page_size": 1}
        if self.mapping:
            settings["initial_status"] = "OSNO"
        return MemoryAdapter("memory-test", settings, self.mapping)

    def rejected_request(self, request_id: str) -> ServiceRequest:
        return self.request(request_id, description="REJECT ME please")

    @contextmanager
    def unreachable_adapter(self) -> Iterator[Adapter]:
        self.backend.go_down()
        try:
            yield self.adapter()
        finally:
            self.backend.come_up()

    def records(self, request_id: str) -> int:
        return self.backend.count(request_id)

    def change_status(self, receipt: Receipt) -> Status:
        step = self.steps.get(receipt.request_id, 0)
        self.steps[receipt.request_id] = step + 1
        code = self.codes[step % len(self.codes)]
        self.backend.set_status(receipt.request_id, code)
        return {"NOPR": Status.IN_PROGRESS, "NOCO": Status.CLOSED}.get(code) or Status(code)


class TestMemoryAdapterConformance(AdapterConformance):
    @pytest.fixture
    def conformance_target(self) -> ConformanceTarget:
        return MemoryTarget(mapping=None)


class TestMemoryAdapterWithMappingConformance(AdapterConformance):
    @pytest.fixture
    def conformance_target(self) -> ConformanceTarget:
        return MemoryTarget(mapping=parse_mapping(MAPPING))


def test_the_conformance_checks_are_marked(request: pytest.FixtureRequest) -> None:
    items = [
        i for i in request.session.items if getattr(i, "cls", None) is TestMemoryAdapterConformance
    ]
    assert items and all(i.get_closest_marker("conformance") for i in items)


def test_a_mapping_shapes_the_stored_payload_without_personal_data() -> None:
    target = MemoryTarget(mapping=parse_mapping(MAPPING))
    request = target.request("req-payload")
    target.adapter().submit(request)
    assert target.backend.records["req-payload"].payload == {
        "Text": "A request made by the civicbus conforman",
        "Service": "CONFORMANCE",
    }
    unmapped = MemoryTarget(mapping=None)
    unmapped.adapter().submit(request)
    assert unmapped.backend.records["req-payload"].payload["reporter"] == {
        k: None for k in request.reporter.model_dump()
    }


def test_an_unknown_backend_status_code_is_a_permanent_error() -> None:
    from adapters import PermanentError

    target = MemoryTarget(mapping=parse_mapping(MAPPING))
    target.adapter().submit(target.request("req-status"))
    target.backend.set_status("req-status", "WHAT")
    with pytest.raises(PermanentError, match="'WHAT' is not in the status table"):
        target.adapter().updates(None)


def test_without_a_mapping_canonical_codes_are_statuses_and_others_permanent_errors() -> None:
    from adapters import PermanentError

    target = MemoryTarget(mapping=None)
    receipt = target.adapter().submit(target.request("req-plain"))
    assert receipt.status is Status.OPEN
    target.backend.set_status("req-plain", "for_triage")
    assert [u.status for u in target.adapter().updates(None).updates] == [Status.FOR_TRIAGE]
    target.backend.set_status("req-plain", "NOCO")
    with pytest.raises(PermanentError, match="status code 'NOCO' is not a canonical status"):
        target.adapter().updates("1")  # pages of one change: the second


def test_backends_named_in_settings_are_shared_across_instances() -> None:
    one = MemoryAdapter("a", {"backend": "shared-test-backend"})
    two = MemoryAdapter("b", {"backend": "shared-test-backend"})
    assert one.backend is two.backend
    assert MemoryAdapter("c", {}).backend is MemoryBackend.named("c")


BROKEN_ADAPTER_MODULE = """
import pytest
from contextlib import contextmanager
from adapters import UpdatePage
from adapters.memory import MemoryAdapter, MemoryBackend
from civicbus.testing import AdapterConformance, ConformanceTarget
from schemas.model import Status

class Forgetful(MemoryAdapter):
    # Creates a new record on every submit, and always polls from the beginning.
    def submit(self, request):
        self.backend.records.pop(request.id, None)
        return super().submit(request)
    def updates(self, since):
        page = super().updates(None)
        return UpdatePage(page.updates, since)

class Target(ConformanceTarget):
    def __init__(self):
        self.backend = MemoryBackend()
        self.submits = 0
    def adapter(self):
        return Forgetful("broken", {"backend": self.backend})
    def rejected_request(self, request_id):
        return self.request(request_id)
    @contextmanager
    def unreachable_adapter(self):
        yield self.adapter()
    def records(self, request_id):
        return 2 if request_id in self.backend.records else 0
    def change_status(self, receipt):
        self.backend.set_status(receipt.request_id, "closed")
        return Status.CLOSED

class TestBroken(AdapterConformance):
    @pytest.fixture
    def conformance_target(self):
        return Target()
"""


def test_the_kit_fails_an_adapter_that_breaks_the_contract(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_broken=BROKEN_ADAPTER_MODULE)
    result = pytester.runpytest_inprocess("-p", "civicbus.testing", "-q")
    outcomes = result.parseoutcomes()
    failed = {
        line.split("::")[-1].split(" ")[0] for line in result.outlines if line.startswith("FAILED")
    }
    assert outcomes.get("passed", 0) >= 1  # find-before-submit still holds
    assert {
        "test_submit_creates_one_record_and_returns_its_reference",
        "test_submit_twice_creates_one_record_with_the_same_reference",
        "test_updates_report_each_change_exactly_once",
        "test_an_unreachable_backend_is_a_transient_error",
        "test_rejected_data_is_a_permanent_error_without_personal_data",
        "test_check_is_not_ok_when_the_backend_is_unreachable",
    } <= failed
