"""The store's query behind `civicbus requests stuck`: open requests no back-end holds yet."""

from __future__ import annotations

from store_factories import T0, make_request, minutes

from bus.store import Store
from schemas.model import Status


def test_open_requests_without_a_backend_reference_are_listed_oldest_first(store: Store) -> None:
    with store.transaction() as tx:
        tx.add_request(make_request("req-newer", requested_at=T0 + minutes(5)))
        tx.add_request(make_request("req-older", requested_at=T0))
        tx.add_request(make_request("req-delivered", requested_at=T0))
        tx.add_request(make_request("req-closed", requested_at=T0, status=Status.CLOSED))
        tx.add_request(make_request("req-recent", requested_at=T0 + minutes(30)))
        tx.add_backend_ref("req-delivered", "sap-roads", "000010000001", T0 + minutes(1))
        tx.audit(actor="api:app", action="accepted", request_id="req-older")
        tx.audit(actor="relay", action="routed", request_id="req-older", details={"rule": "r"})
        tx.record_dead_letter(
            instance="sap-roads",
            message_id="m-1",
            request_id="req-older",
            reason="PermanentError: no such lane",
            envelope=None,
            attempts=1,
            at=T0 + minutes(2),
        )

    found = store.undelivered(accepted_before=T0 + minutes(10))

    assert [item.request_id for item in found] == ["req-older", "req-newer"]
    older = found[0]
    assert (older.service_code, older.accepted_at) == ("pothole", T0)
    assert [entry.action for entry in older.trail] == ["accepted", "routed"]
    assert [(d.instance, d.reason) for d in older.dead_letters] == [
        ("sap-roads", "PermanentError: no such lane")
    ]
    assert found[1].trail == [] and found[1].dead_letters == []
    assert [
        item.request_id for item in store.undelivered(accepted_before=T0 + minutes(10), limit=1)
    ] == ["req-older"]
    assert store.undelivered(accepted_before=T0) == []
