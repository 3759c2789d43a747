"""The simulators' shared control endpoint, fault switch and auto-progress mode."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from civicbus.sandbox._control import Control
from civicbus.sandbox._workitems import AutoProgress, Faults, WorkItems
from civicbus.sandbox.runner import SIMULATORS, ServeOptions

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def items(tmp_path: Path) -> WorkItems:
    return WorkItems(tmp_path / "items.db", id_prefix="T", flow=("NEW", "DOING", "DONE"))


def test_items_move_through_the_flow_and_record_each_change(items: WorkItems) -> None:
    item = items.create("req-1", {"what": "bench"})
    control = Control("test", Faults(), items)

    assert control.handle("POST", "/_sandbox/items/req-1/advance", b"")[0] == 200
    assert control.handle("POST", f"/_sandbox/items/{item.id}/advance", b"")[0] == 200
    status, answer = control.handle("POST", "/_sandbox/items/req-1/advance", b"")

    assert (status, answer["error"]) == (409, "the item is at the end of the flow")
    assert [c.status for c in items.changes()] == ["NEW", "DOING", "DONE"]
    assert [c.status for c in items.changes(after_seq=2)] == ["DONE"]


def test_the_control_endpoint_explains_bad_input(items: WorkItems) -> None:
    control = Control("test", Faults(), items)
    items.create("req-1", {})

    assert control.handle("POST", "/_sandbox/items/nope/advance", b"")[0] == 404
    assert control.handle("POST", "/_sandbox/items/req-1/status", b"not json")[0] == 400
    assert control.handle("POST", "/_sandbox/items/req-1/status", b"{}")[0] == 400
    status, answer = control.handle("PUT", "/_sandbox/fault", b'{"mode": "broken"}')
    assert status == 400 and "down" in answer["error"]
    for count, shown in ((b"0", "0"), (b'"2"', "'2'"), (b"1.5", "1.5"), (b"true", "True")):
        status, answer = control.handle(
            "PUT", "/_sandbox/fault", b'{"mode": "reject", "count": ' + count + b"}"
        )
        assert status == 400 and "count must be a whole number" in answer["error"]
        assert f"(got {shown})" in answer["error"]
    assert control.handle("GET", "/_sandbox/unknown", b"")[0] == 404


def test_auto_progress_moves_open_items_on_its_own(items: WorkItems) -> None:
    items.create("req-1", {})
    progress = AutoProgress(items, 0.05).start()
    try:
        deadline = time.monotonic() + 10
        while items.get("req-1").status != "DONE" and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        progress.stop()

    assert [c.status for c in items.changes()] == ["NEW", "DOING", "DONE"]


def test_the_control_endpoint_is_never_down(tmp_path: Path) -> None:
    running = SIMULATORS["parks"].serve(ServeOptions(state_dir=tmp_path, port=0))
    try:
        httpx.put(f"{running.control_url}/_sandbox/fault", json={"mode": "down"}, timeout=5)
        api = httpx.post(
            f"{running.url}/oauth/token", data={"grant_type": "client_credentials"}, timeout=5
        )
        healed = httpx.put(
            f"{running.control_url}/_sandbox/fault", json={"mode": "none"}, timeout=5
        )
    finally:
        running.stop()

    assert api.status_code == 503
    assert healed.json() == {"mode": "none", "delay": 0.0, "count": None}
