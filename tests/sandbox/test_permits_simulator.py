"""The permit simulator serves the committed WSDL, and spyne's rendering of it has not drifted."""

from __future__ import annotations

from pathlib import Path

import httpx
from lxml import etree

from civicbus.sandbox.permits import WSDL_PATH, rendered_wsdl
from civicbus.sandbox.runner import SIMULATORS, ServeOptions

_NAMED = "{*}types/{*}schema/*[@name] | {*}message | {*}portType | {*}binding | {*}service"


def _definitions(wsdl: bytes) -> dict[tuple[str, str], bytes]:
    """Each named definition of a WSDL, canonicalized, keyed by (tag, name): order-insensitive."""
    parser = etree.XMLParser(resolve_entities=False, no_network=True, remove_blank_text=True)
    root = etree.fromstring(wsdl, parser)
    found: dict[tuple[str, str], bytes] = {}
    for path in _NAMED.split(" | "):
        for node in root.iterfind(path):
            for address in node.iter("{*}address"):
                address.set("location", "ADDRESS")
            found[(etree.QName(node).localname, node.get("name", ""))] = etree.tostring(
                node, method="c14n", exclusive=True
            )
    return found


def test_the_committed_wsdl_matches_what_the_simulator_implements() -> None:
    committed = _definitions(WSDL_PATH.read_bytes())
    rendered = _definitions(rendered_wsdl().encode())

    assert sorted(committed) == sorted(rendered), "regenerate schemas/wsdl/permits.wsdl"
    for key in committed:
        assert committed[key] == rendered[key], f"{key} differs: regenerate the committed WSDL"


def test_the_simulator_serves_the_committed_wsdl_at_its_own_address(tmp_path: Path) -> None:
    running = SIMULATORS["permits"].serve(ServeOptions(state_dir=tmp_path, port=0))
    try:
        served = httpx.get(running.url + "?wsdl", timeout=5)
        info = httpx.get(running.control_url + "/_sandbox/", timeout=5).json()
    finally:
        running.stop()

    assert served.status_code == 200
    assert f'location="{running.url}"'.encode() in served.content
    assert _definitions(served.content) == _definitions(WSDL_PATH.read_bytes())
    assert info["simulator"] == "permits" and info["flow"][0] == "RECEIVED"
