"""The content-based router: first rule matching service and jurisdiction wins, else default."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bus.config import Config, load_config
from bus.routing import _ROUTED_IDS, route, routed_event_id
from schemas.events import Envelope, EventType

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def config() -> Config:
    return load_config(REPO / "deploy/sandbox/civicbus.yaml")


def _created(
    service_code: str | None, jurisdiction: str | None = "springfield.example"
) -> Envelope:
    data = {"id": "req-1", "service_code": service_code, "jurisdiction": jurisdiction}
    data = {k: v for k, v in data.items() if v is not None}
    return Envelope(type=EventType.CREATED, subject="req-1", data=data, correlationid="c-1")


@pytest.mark.parametrize(
    ("service_code", "jurisdiction", "expected"),
    [
        ("POTHOLE", "springfield.example", ("sap-roads", "roads-to-sap")),
        ("STREETLIGHT", "springfield.example", ("oracle-facilities", "facilities-to-oracle")),
        ("TREE_DAMAGE", "shelbyville.example", ("parks", "parks")),
        ("EVENT_PERMIT", "shelbyville.example", ("permits", "permits")),
    ],
)
def test_a_matching_rule_names_the_instance_and_itself(
    config: Config, service_code: str, jurisdiction: str, expected: tuple[str, str]
) -> None:
    assert route(config, _created(service_code, jurisdiction)) == expected


def test_a_request_no_rule_matches_goes_to_the_default(config: Config) -> None:
    assert route(config, _created("GRAFFITI")) == ("email-311", "default")


def test_a_request_without_service_code_still_goes_to_the_default(config: Config) -> None:
    assert route(config, _created(None)) == ("email-311", "default")


def test_rules_restricted_to_a_jurisdiction_and_first_match_wins() -> None:
    config = Config.model_validate(
        {
            "jurisdictions": [{"id": "a", "name": "A"}, {"id": "b", "name": "B"}],
            "services": [
                {"code": code, "jurisdiction": j, "name": code}
                for code in ("POTHOLE", "NOISE")
                for j in ("a", "b")
            ],
            "routing": {
                "rules": [
                    {
                        "name": "b-potholes",
                        "services": ["POTHOLE"],
                        "jurisdictions": ["b"],
                        "instance": "two",
                    },
                    {"name": "all-potholes", "services": ["POTHOLE"], "instance": "one"},
                    {"name": "catch-b", "jurisdictions": ["b"], "instance": "two"},
                ],
                "default": "one",
            },
            "instances": {"one": {"kind": "email"}, "two": {"kind": "email"}},
        }
    )
    assert route(config, _created("POTHOLE", "b")) == ("two", "b-potholes")
    assert route(config, _created("POTHOLE", "a")) == ("one", "all-potholes")
    assert route(config, _created("NOISE", "b")) == ("two", "catch-b")
    assert route(config, _created("NOISE", "a")) == ("one", "default")


def test_only_created_events_are_routed(config: Config) -> None:
    event = Envelope(type=EventType.SUBMITTED, subject="r", data={}, correlationid="c")
    with pytest.raises(ValueError, match=r"only civicbus\.request\.created"):
        route(config, event)


@given(st.text(min_size=1))
def test_a_routed_event_id_is_the_uuid5_of_the_created_event_id_it_always_was(
    created_id: str,
) -> None:
    # Consumers deduplicate by it across relay versions: the shortcut must not change it.
    assert routed_event_id(created_id) == str(uuid.uuid5(_ROUTED_IDS, created_id))
