"""The adapter conformance kit: checks every civicbus adapter must pass against a test back-end.

Enable the plugin once - `pytest -p civicbus.testing`, or `pytest_plugins = ["civicbus.testing"]`
in the root conftest.py (a test module that imports the kit before the plugin is loaded should
call `pytest.register_assert_rewrite("civicbus.testing")` first, for full assertion messages).
Then, in your adapter's test module::

    import pytest
    from civicbus.testing import AdapterConformance, ConformanceTarget

    class PermitsTarget(ConformanceTarget):
        def __init__(self, server): self.server = server
        def adapter(self): return PermitsAdapter("permits", {"wsdl": self.server.wsdl}, MAPPING)
        def rejected_request(self, request_id): return self.request(request_id, description="")
        @contextmanager
        def unreachable_adapter(self):               # e.g. a port where nothing listens
            adapter = PermitsAdapter("permits", {"wsdl": f"http://127.0.0.1:{closed_port}/"}, ...)
            yield adapter
        def records(self, request_id): return self.server.count_cases(external_ref=request_id)
        def change_status(self, receipt): self.server.advance(receipt.reference); return Status.X

    class TestPermitsConformance(AdapterConformance):
        @pytest.fixture
        def conformance_target(self, permits_server):
            return PermitsTarget(permits_server)

The checks (methods of AdapterConformance, marked `conformance` when the plugin is enabled so
that `pytest -m conformance` selects them): idempotent submit (twice, and from a second adapter
instance -> one back-end record, same reference), `find` (None before, the receipt after),
`updates` watermark semantics (each change made between polls shows up exactly once, nothing is
repeated, a watermark works in a fresh adapter), error typing (a refused connection is a
TransientError, rejected data a PermanentError whose message holds no personal data), and health
(`check()` ok against the running back-end, not ok - without raising - when it is unreachable).
Adapters whose class says `polls = False` skip the `updates` checks.
"""

from __future__ import annotations

import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from datetime import UTC, datetime
from typing import Any

import pytest

from adapters import Adapter, Health, PermanentError, Receipt, StatusUpdate, TransientError
from schemas.model import ServiceRequest, Status

#: Personal data the sample request carries, so the kit can check error messages never hold it.
SAMPLE_REPORTER = {
    "email": "conformance.resident@example.org",
    "first_name": "Conformance",
    "last_name": "Resident-Zyx",
    "phone": "+44 7700 900123",
}

#: How many pages `updates` may take to catch up before the kit calls the watermark stuck.
MAX_PAGES = 100


def sample_request(request_id: str, **changes: Any) -> ServiceRequest:
    """A valid canonical request with reporter data; `changes` override any field."""
    now = datetime.now(UTC).isoformat()
    data: dict[str, Any] = {
        "id": request_id,
        "jurisdiction": "conformance.example",
        "service_code": "CONFORMANCE",
        "service_name": "Conformance check",
        "description": "A request made by the civicbus conformance kit",
        "attributes": {},
        "location": {"lat": 51.5007, "long": -0.1246, "address": "1 Conformance Street"},
        "reporter": SAMPLE_REPORTER,
        "requested_at": now,
        "updated_at": now,
    }
    data.update(changes)
    return ServiceRequest.model_validate(data)


class ConformanceTarget(ABC):
    """What the integrator provides: their adapter against a running test back-end, and levers.

    Each method is called many times; each `adapter()` call must return a new instance
    (a second worker, or a restarted one) talking to the same back-end.
    """

    @abstractmethod
    def adapter(self) -> Adapter:
        """A fresh adapter instance against the running test back-end."""

    def request(self, request_id: str, **changes: Any) -> ServiceRequest:
        """A request the back-end accepts; override if your mapping needs other services."""
        return sample_request(request_id, **changes)

    @abstractmethod
    def rejected_request(self, request_id: str) -> ServiceRequest:
        """A request the back-end (or the mapping) refuses as bad data; keep the reporter data."""

    @abstractmethod
    def unreachable_adapter(self) -> AbstractContextManager[Adapter]:
        """While open, an adapter whose back-end refuses connections; closed on exit.

        For example an adapter pointed at a loopback port where nothing listens, or the
        simulator stopped for the duration.
        """

    @abstractmethod
    def records(self, request_id: str) -> int:
        """How many back-end records hold `request_id` as their external reference."""

    def change_status(self, receipt: Receipt) -> Status:
        """Change the work item's status in the back-end (each call to a new status).

        Return the canonical status the adapter should then report. Back-ends whose adapter
        polls must implement it; the default skips the `updates` checks.
        """
        pytest.skip("the target cannot change a status in its back-end (change_status)")

    def settle(self) -> None:  # noqa: B027 - optional hook, nothing to wait for by default
        """Called after back-end changes, before the next poll (e.g. wait out a clock tick)."""


def drain(adapter: Adapter, since: str | None) -> tuple[list[StatusUpdate], str | None]:
    """Every update after `since`, page by page until a page is empty; and the last watermark."""
    collected: list[StatusUpdate] = []
    watermark = since
    for _ in range(MAX_PAGES):
        page = adapter.updates(watermark)
        if not page.updates:
            return collected, page.watermark if page.watermark is not None else watermark
        assert page.watermark != watermark, (
            "updates() returned changes but did not move the watermark: the next poll would "
            "return the same changes again"
        )
        collected.extend(page.updates)
        watermark = page.watermark
    raise AssertionError(f"updates() did not catch up within {MAX_PAGES} pages")


def _new_id() -> str:
    return f"conformance-{uuid.uuid4()}"


def _assert_no_personal_data(error: BaseException, request: ServiceRequest) -> None:
    text = str(error)
    for name, value in request.reporter.model_dump().items():
        assert not value or str(value) not in text, (
            f"the error message holds the reporter's {name}; errors must never carry "
            f"personal data: {type(error).__name__}"
        )


class AdapterConformance:
    """The conformance checks; subclass it in a class named Test* and give `conformance_target`."""

    @pytest.fixture
    def conformance_target(self) -> ConformanceTarget:
        raise NotImplementedError(
            "provide a `conformance_target` fixture returning your ConformanceTarget"
        )

    @pytest.fixture
    def fresh_adapter(
        self, conformance_target: ConformanceTarget
    ) -> Iterator[Callable[[], Adapter]]:
        """Make adapters from the target; all are closed after the test."""
        made: list[Adapter] = []

        def make() -> Adapter:
            adapter = conformance_target.adapter()
            made.append(adapter)
            return adapter

        yield make
        for adapter in made:
            adapter.close()

    # --- idempotent submit ---------------------------------------------------------------------

    def test_submit_creates_one_record_and_returns_its_reference(
        self, conformance_target: ConformanceTarget, fresh_adapter: Callable[[], Adapter]
    ) -> None:
        request = conformance_target.request(_new_id())
        receipt = fresh_adapter().submit(request)
        assert isinstance(receipt, Receipt)
        assert receipt.request_id == request.id
        assert receipt.reference, "the receipt must carry the back-end's reference"
        assert receipt.created is True
        assert conformance_target.records(request.id) == 1

    def test_submit_twice_creates_one_record_with_the_same_reference(
        self, conformance_target: ConformanceTarget, fresh_adapter: Callable[[], Adapter]
    ) -> None:
        adapter = fresh_adapter()
        request = conformance_target.request(_new_id())
        first = adapter.submit(request)
        second = adapter.submit(request)
        assert second.reference == first.reference
        assert second.created is False, "a redelivered submit must say it created nothing"
        assert conformance_target.records(request.id) == 1

    def test_submit_from_another_adapter_instance_is_still_idempotent(
        self, conformance_target: ConformanceTarget, fresh_adapter: Callable[[], Adapter]
    ) -> None:
        # A redelivery may reach another worker, or this one after a restart: no local memory.
        request = conformance_target.request(_new_id())
        first = fresh_adapter().submit(request)
        second = fresh_adapter().submit(request)
        assert second.reference == first.reference
        assert conformance_target.records(request.id) == 1

    # --- find ----------------------------------------------------------------------------------

    def test_find_returns_none_before_submit(
        self, conformance_target: ConformanceTarget, fresh_adapter: Callable[[], Adapter]
    ) -> None:
        assert fresh_adapter().find(_new_id()) is None

    def test_find_returns_the_receipt_after_submit(
        self, conformance_target: ConformanceTarget, fresh_adapter: Callable[[], Adapter]
    ) -> None:
        request = conformance_target.request(_new_id())
        submitted = fresh_adapter().submit(request)
        found = fresh_adapter().find(request.id)
        assert found is not None, "find() must see work that submit() created"
        assert found.request_id == request.id
        assert found.reference == submitted.reference

    # --- updates -------------------------------------------------------------------------------

    def _polling(self, adapter: Adapter) -> None:
        if not adapter.polls:
            pytest.skip(f"{type(adapter).__name__} does not poll (polls = False)")

    def test_updates_report_each_change_exactly_once(
        self, conformance_target: ConformanceTarget, fresh_adapter: Callable[[], Adapter]
    ) -> None:
        adapter = fresh_adapter()
        self._polling(adapter)
        a = adapter.submit(conformance_target.request(_new_id()))
        b = adapter.submit(conformance_target.request(_new_id()))
        conformance_target.settle()
        seen, watermark = drain(adapter, None)  # whatever happened before, creations included
        ours = {a.request_id, b.request_id}

        expected_a = conformance_target.change_status(a)
        conformance_target.settle()
        first, watermark = drain(adapter, watermark)
        mine = [u for u in first if u.request_id in ours]
        assert [(u.request_id, u.status) for u in mine] == [(a.request_id, expected_a)], (
            "one status change in the back-end must show up exactly once"
        )

        again, watermark = drain(adapter, watermark)
        assert not [u for u in again if u.request_id in ours], "updates repeated a change"

        expected_b = conformance_target.change_status(b)
        expected_a2 = conformance_target.change_status(a)
        conformance_target.settle()
        second, watermark = drain(adapter, watermark)
        mine = [u for u in second if u.request_id in ours]
        assert sorted((u.request_id, u.status) for u in mine) == sorted(
            [(b.request_id, expected_b), (a.request_id, expected_a2)]
        ), "changes made between two polls must each show up exactly once"

        ids = [u.update_id for u in [*seen, *first, *again, *second]]
        assert len(ids) == len(set(ids)), "update ids must be unique (they are idempotency keys)"

    def test_a_watermark_works_in_a_fresh_adapter(
        self, conformance_target: ConformanceTarget, fresh_adapter: Callable[[], Adapter]
    ) -> None:
        # The worker stores the watermark and may poll from another process after a restart.
        adapter = fresh_adapter()
        self._polling(adapter)
        receipt = adapter.submit(conformance_target.request(_new_id()))
        conformance_target.settle()
        _, watermark = drain(adapter, None)
        expected = conformance_target.change_status(receipt)
        conformance_target.settle()
        later, _ = drain(fresh_adapter(), watermark)
        mine = [u for u in later if u.request_id == receipt.request_id]
        assert [u.status for u in mine] == [expected]

    # --- error typing --------------------------------------------------------------------------

    def test_an_unreachable_backend_is_a_transient_error(
        self, conformance_target: ConformanceTarget
    ) -> None:
        request = conformance_target.request(_new_id())
        with conformance_target.unreachable_adapter() as adapter:
            with pytest.raises(TransientError) as caught:
                adapter.submit(request)
            _assert_no_personal_data(caught.value, request)
            with pytest.raises(TransientError):
                adapter.find(request.id)

    def test_rejected_data_is_a_permanent_error_without_personal_data(
        self, conformance_target: ConformanceTarget, fresh_adapter: Callable[[], Adapter]
    ) -> None:
        request = conformance_target.rejected_request(_new_id())
        with pytest.raises(PermanentError) as caught:
            fresh_adapter().submit(request)
        _assert_no_personal_data(caught.value, request)
        assert conformance_target.records(request.id) == 0

    # --- health --------------------------------------------------------------------------------

    def test_check_is_ok_against_the_running_backend(
        self, fresh_adapter: Callable[[], Adapter]
    ) -> None:
        health = fresh_adapter().check()
        assert isinstance(health, Health)
        assert health.ok, f"check() failed against the running back-end: {health.detail}"

    def test_check_is_not_ok_when_the_backend_is_unreachable(
        self, conformance_target: ConformanceTarget
    ) -> None:
        with conformance_target.unreachable_adapter() as adapter:
            health = adapter.check()  # must report, not raise
        assert isinstance(health, Health)
        assert not health.ok
        assert health.detail, "say what is wrong, in words an integrator can act on"


# --- the pytest plugin --------------------------------------------------------------------------


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "conformance: a check of the civicbus adapter conformance kit"
    )


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        cls = getattr(item, "cls", None)
        if cls is not None and issubclass(cls, AdapterConformance):
            item.add_marker(pytest.mark.conformance)
