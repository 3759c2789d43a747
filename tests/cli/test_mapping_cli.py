"""`civicbus mapping check FILE` and `civicbus mapping try FILE REQUEST.json`."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from bus.cli import app

MAPPING = """\
adapter: sap
timezone: Europe/London
fields:
  NotificationText: {from: description, truncate: 40, required: true}
  NotificationType: {const: M1}
  Priority: {from: attributes.HAZARDS, lookup: {table: hazard_priority, default: "3"}, choose: min}
  RequiredStartDate: {from: requested_at, format: sap_date}
tables:
  hazard_priority: {water: "2", damage: "1"}
statuses: {OSNO: open, NOPR: in_progress, NOCO: closed}
"""

REQUEST = {
    "service_code": "POTHOLE",
    "description": "A deep hole by the bus stop on the High Street, near number 12",
    "attributes": {"HAZARDS": ["water", "damage"]},
    "location": {"lat": 51.5, "long": -0.1},
    "requested_at": "2026-07-01T23:30:00Z",
    "reporter": {"email": "resident@example.org"},
}


def invoke(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.output


def write(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_check_accepts_a_valid_mapping(tmp_path: Path) -> None:
    code, out = invoke("mapping", "check", write(tmp_path, "sap.yaml", MAPPING))
    assert code == 0, out
    assert "ok:" in out and "adapter sap, 4 fields, 3 status codes" in out


def test_check_names_the_line_of_each_problem(tmp_path: Path) -> None:
    broken = MAPPING.replace("truncate: 40", "truncate: forty").replace("closed}", "shut}")
    path = write(tmp_path, "sap.yaml", broken)
    code, out = invoke("mapping", "check", path)
    assert code == 1
    assert f"{path}:4: fields.NotificationText.truncate" in out
    assert f"{path}:10: statuses.NOCO: 'shut' is not one of" in out


def test_check_names_the_fields_the_adapter_kinds_back_end_needs(tmp_path: Path) -> None:
    # The same verdict as `civicbus adapters check` on an instance using this file.
    parks = "adapter: parks\nfields:\n  description: {from: description}\n"
    path = write(tmp_path, "parks.yaml", parks)
    code, out = invoke("mapping", "check", path)
    assert code == 1
    assert f"{path}: missing mapping field(s) category, which the parks back-end needs" in out


def test_check_of_a_mapping_for_a_kind_not_installed_says_what_it_could_not_check(
    tmp_path: Path,
) -> None:
    path = write(tmp_path, "x.yaml", MAPPING.replace("adapter: sap", "adapter: telex"))
    code, out = invoke("mapping", "check", path)
    assert code == 0, out
    assert "adapter kind 'telex' is not installed" in out
    assert "the fields its back-end needs are not checked" in out


def test_check_a_missing_file(tmp_path: Path) -> None:
    code, out = invoke("mapping", "check", str(tmp_path / "nope.yaml"))
    assert code == 1 and "cannot read the mapping file" in out


def test_try_prints_the_backend_fields_and_the_status_table(tmp_path: Path) -> None:
    mapping = write(tmp_path, "sap.yaml", MAPPING)
    request = write(tmp_path, "request.json", json.dumps(REQUEST))
    code, out = invoke("mapping", "try", mapping, request)
    assert code == 0, out
    payload = json.loads(out[out.index("{") : out.index("}") + 1])
    assert payload == {
        "NotificationText": "A deep hole by the bus stop on the High ",
        "NotificationType": "M1",
        "Priority": "1",
        "RequiredStartDate": "20260702",
    }
    assert "NOPR             in_progress  open" in out
    assert "resident@example.org" not in out


def test_try_shows_why_a_request_would_be_dead_lettered(tmp_path: Path) -> None:
    mapping = write(tmp_path, "sap.yaml", MAPPING)
    request = write(tmp_path, "request.json", json.dumps({**REQUEST, "description": None}))
    code, out = invoke("mapping", "try", mapping, request)
    assert code == 1
    assert "would be dead-lettered" in out and "required field NotificationText" in out


def test_try_with_a_request_that_is_not_canonical(tmp_path: Path) -> None:
    mapping = write(tmp_path, "sap.yaml", MAPPING)
    bad_json = write(tmp_path, "bad.json", '{"service_code": "POTHOLE",\n "x": }')
    code, out = invoke("mapping", "try", mapping, bad_json)
    assert code == 2 and "bad.json:2: not valid JSON" in out
    not_canonical = write(tmp_path, "odd.json", json.dumps({"service_code": "X", "colour": 1}))
    code, out = invoke("mapping", "try", mapping, not_canonical)
    assert code == 2 and "colour: Extra inputs are not permitted" in out
    # An answer given as a JSON number: said in a request's words, once (pydantic named each
    # member of the union it tried: `attributes.BAG_COUNT.str`, `...tuple[str, ...]`).
    number = write(tmp_path, "n.json", json.dumps({**REQUEST, "attributes": {"BAG_COUNT": 3}}))
    code, out = invoke("mapping", "try", mapping, number)
    assert code == 2
    assert out.count("attributes.BAG_COUNT: an answer is a text, as a form sends it") == 1
    assert ".str" not in out and "tuple[str" not in out


def test_the_readmes_example_request_maps_through_the_sandboxs_sap_mapping() -> None:
    code, out = invoke(
        "mapping", "try", "mappings/sap-roads.yaml", "mappings/examples/pothole-request.json"
    )
    assert code == 0, out
    assert '"short_text": "POTHOLE: 742 Evergreen Terrace"' in out
