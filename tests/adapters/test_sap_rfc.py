"""The SAP adapter's RFC transport: the BAPI flow against the sandbox's SAP simulation.

The simulation is reached through `adapters.sap.rfc_http.Connection`, which has pyrfc's interface
(pyrfc itself needs SAP's NW RFC SDK, which cannot be installed here).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, ClassVar

import pytest
from backends_support import a_request, free_port, simulator
from sap_support import control, notifications, rejecting_mapping, sap_mapping, settings_for

from adapters import PermanentError, TransientError
from adapters.sap import SapAdapter
from adapters.sap.rfc import PYRFC_MISSING, RfcTransport
from civicbus.sandbox.runner import Running
from schemas.model import Location, ServiceRequest

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def adapter(sap_sim: Running) -> Iterator[SapAdapter]:
    made = SapAdapter("sap-roads", settings_for("rfc", sap_sim.url), rejecting_mapping())
    yield made
    made.close()


def sign(**changes: Any) -> ServiceRequest:
    fields: dict[str, Any] = {
        "service_name": "Damaged street sign",
        "description": "Stop sign bent over\nat the corner",
        "location": Location(lat=39.80, long=-89.63, address="Corner of 5th and Elm"),
        "requested_at": datetime(2026, 7, 1, 12, 0, 0, tzinfo=UTC),
    }
    fields.update(changes)
    return a_request(fields.pop("service_code", "STREET_SIGN"), **fields)


def test_create_save_commit_stores_the_mapped_notification(
    adapter: SapAdapter, sap_sim: Running
) -> None:
    request = sign()
    receipt = adapter.submit(request)

    [stored] = notifications(sap_sim, request.id)
    assert receipt.created and stored["number"] == receipt.reference
    assert stored["notif_type"] == "M2"
    assert stored["funct_loc"] == "SPR-RD-E"
    assert stored["malfunction_date"] == "20260701" and stored["malfunction_time"] == "070000"
    assert stored["long_text"].startswith("Stop sign bent over\nat the corner")


def test_a_bapi_return_of_type_e_is_a_permanent_error_with_sap_s_message(
    adapter: SapAdapter, sap_sim: Running
) -> None:
    request = sign(service_code="REJECT_ME")
    with pytest.raises(PermanentError, match="E SIM/001: Notification type ZZ is not defined"):
        adapter.submit(request)
    assert notifications(sap_sim, request.id) == []


def test_a_create_whose_commit_is_not_confirmed_is_found_instead_of_retried(
    adapter: SapAdapter, sap_sim: Running
) -> None:
    control(sap_sim, "PUT", "/fault", mode="lose_commit_response", count=1)
    request = sign()
    receipt = adapter.submit(request)  # commit lost -> look-up finds it: no error, no duplicate
    assert receipt.reference == notifications(sap_sim, request.id)[0]["number"]
    assert adapter.submit(request).created is False
    assert len(notifications(sap_sim, request.id)) == 1


def test_an_unreachable_sap_is_transient(sap_sim: Running) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    adapter = SapAdapter("sap-roads", settings_for("rfc", url), sap_mapping())
    with pytest.raises(TransientError, match="CommunicationError"):
        adapter.submit(sign())
    assert not adapter.check().ok


def test_a_refused_logon_is_transient_as_the_set_ups_fault(tmp_path: Path) -> None:
    with simulator("sap", tmp_path, sap_user="CIVICBUS", sap_password="right") as sim:
        settings = settings_for("rfc", sim.url, user="CIVICBUS", passwd="wrong")
        adapter = SapAdapter("sap-roads", settings, sap_mapping())
        # An expired password: retried through the tiers until it is fixed, never every
        # request dead-lettered at its first attempt.
        with pytest.raises(TransientError, match="LogonError"):
            adapter.find("anything")
        good = SapAdapter("sap-roads", {**settings, "passwd": "right"}, sap_mapping())
        assert good.check().ok


def test_without_pyrfc_check_says_exactly_what_to_install() -> None:
    try:
        import pyrfc  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("pyrfc is installed on this machine")
    adapter = SapAdapter(
        "sap-roads",
        {"transport": "rfc", "rfc_client": "pyrfc", "ashost": "sap.example", "sysnr": "00"},
        sap_mapping(),
    )
    health = adapter.check()
    assert not health.ok and health.detail == PYRFC_MISSING
    assert health.detail.startswith("pyrfc is not installed: install civicbus[sap]")
    with pytest.raises(PermanentError, match="pyrfc is not installed"):
        adapter.submit(sign())


class _AbortingConnection:
    """Stands in for pyrfc.Connection: SAP answers the create with a RETURN of type A."""

    calls: ClassVar[list[str]] = []

    def __init__(self, **params: Any) -> None:
        pass

    def call(self, name: str, **params: Any) -> dict[str, Any]:
        self.calls.append(name)
        if name == "BAPI_ALM_NOTIF_CREATE":
            abort = {"TYPE": "A", "ID": "IM", "NUMBER": "123", "MESSAGE": "Update terminated"}
            return {"NOTIFHEADER_EXPORT": {}, "RETURN": [abort]}
        return {"RETURN": []}

    def close(self) -> None:
        pass


def test_a_bapi_return_of_type_a_is_permanent_and_rolls_back() -> None:
    transport = RfcTransport("sap-roads", {"rfc_client": "simulation", "url": "http://unused"})
    transport._factory = _AbortingConnection  # a scripted peer: no SAP answers type A on demand
    with pytest.raises(PermanentError, match="A IM/123: Update terminated"):
        transport.create({"notification_type": "M1", "short_text": "x"}, "req-1")
    assert _AbortingConnection.calls == ["BAPI_ALM_NOTIF_CREATE", "BAPI_TRANSACTION_ROLLBACK"]


class _ChicagoQmel:
    """pyrfc's interface over QMEL in a SAP system on Chicago time: number -> (external
    reference, AEDAT, AEZEIT, system status). QMEL keeps only a notification's last change."""

    rows: ClassVar[dict[str, tuple[str, str, str, str]]] = {}

    def __init__(self, **params: Any) -> None:
        pass

    def call(self, name: str, **params: Any) -> dict[str, Any]:
        if name == "RFC_READ_TABLE":
            rows = [[number, *row[:3]] for number, row in sorted(self.rows.items())]
            return {"DATA": [{"WA": "|".join(r)} for r in rows]}
        if name == "BAPI_ALM_NOTIF_GET_DETAIL":
            status = self.rows[params["NUMBER"]][3]
            return {"NOTIFHDTEXT": {"SYSTATUS": status, "USRSTATUS": ""}, "RETURN": []}
        raise AssertionError(name)

    def close(self) -> None:
        pass


def test_changes_in_the_hour_repeated_when_clocks_go_back_are_each_reported_once() -> None:
    """AEDAT/AEZEIT are the SAP system's local time. On 2026-11-01 Chicago lives 01:00-02:00
    twice, first as CDT (UTC-5), then as CST (UTC-6). A change at 01:10 CST (07:10Z) read as
    01:10 CDT (06:10Z) would lie before the watermark (01:50 CDT, 06:50Z) minus the overlap, and
    be dropped for good; or, for the same notification, be dated before the change it follows."""
    adapter = SapAdapter(
        "sap-roads",
        settings_for("rfc", "http://unused", system_timezone="America/Chicago"),
        sap_mapping(),
    )
    transport: Any = adapter.transport
    transport._factory = _ChicagoQmel  # a scripted peer: the simulation keeps UTC
    assert adapter.transport.clock_back == timedelta(hours=1)

    def poll(since: str | None) -> tuple[list[tuple[str, str, str]], str | None]:
        page = adapter.updates(since)
        seen = [(u.request_id, u.status.value, f"{u.at:%H:%MZ}") for u in page.updates]
        return seen, page.watermark

    _ChicagoQmel.rows = {"1": ("req-a", "20261101", "015000", "NOPR")}  # 01:50 CDT
    reported, mark = poll(None)
    assert reported == [("req-a", "in_progress", "06:50Z")]

    _ChicagoQmel.rows["2"] = ("req-b", "20261101", "011000", "NOPR")  # 01:10 CST
    reported, mark = poll(mark)
    assert reported == [("req-b", "in_progress", "07:10Z")]

    _ChicagoQmel.rows["1"] = ("req-a", "20261101", "012000", "NOCO")  # 01:20 CST
    reported, mark = poll(mark)
    assert reported == [("req-a", "fixed", "07:20Z")]  # after its 06:50Z change, so it applies

    _ChicagoQmel.rows["3"] = ("req-c", "20261101", "023000", "NOPR")  # 02:30 CST
    reported, mark = poll(mark)
    assert reported == [("req-c", "in_progress", "08:30Z")]
    assert poll(mark)[0] == []
