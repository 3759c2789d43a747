"""The config file: the sandbox city loads, and mistakes are reported with file, line and field."""

from __future__ import annotations

from pathlib import Path

import pytest

from bus.config import ConfigError, Environment, load_config, parse_config
from schemas.model import Datatype, ServiceType

SANDBOX = Path(__file__).parent.parent / "deploy" / "sandbox" / "civicbus.yaml"


def problems(text: str, source: str = "city.yaml") -> list[str]:
    """The problems parse_config refuses `text` for, one a line (the heading line left out)."""
    with pytest.raises(ConfigError) as err:
        parse_config(text, source=source)
    return [line.strip() for line in str(err.value).splitlines()[1:]]


def test_sandbox_city_has_two_jurisdictions_ten_services_and_every_datatype() -> None:
    config = load_config(SANDBOX)
    services = config.service_catalogue()
    assert len(config.jurisdictions) == 2
    assert len(services) >= 10
    assert {a.datatype for s in services for a in s.attributes} == set(Datatype)
    assert {ServiceType.REALTIME, ServiceType.BATCH} <= {s.type for s in services}
    assert {s.group for s in services} >= {"Roads", "Sanitation", "Parks", "Permits"}


def test_routing_picks_the_first_matching_rule_or_the_default() -> None:
    config = load_config(SANDBOX)
    assert config.route("POTHOLE", "springfield.example") == ("sap-roads", "roads-to-sap")
    assert config.route("GRAFFITI", "springfield.example") == ("email-311", "default")


def test_a_bad_field_is_reported_with_file_line_and_path() -> None:
    text = SANDBOX.read_text().replace("datatype: number", "datatype: numbr", 1)
    with pytest.raises(ConfigError) as err:
        parse_config(text, source="city.yaml")
    line = next(n for n, row in enumerate(text.splitlines(), 1) if "numbr" in row)
    assert f"city.yaml:{line}: services.0.attributes.0.datatype" in str(err.value)


def test_routing_to_an_unknown_instance_is_refused() -> None:
    text = SANDBOX.read_text().replace("default: email-311", "default: nowhere")
    with pytest.raises(ConfigError, match="unknown adapter instance 'nowhere'"):
        parse_config(text)


def test_cross_reference_errors_point_at_the_field_they_are_about() -> None:
    text = """# the city
# (comments first, as config files have)
jurisdictions: [{id: springfield.example, name: Springfield}]
services:
  - {code: POTHOLE, jurisdiction: springfield.example, name: Pothole}
  - {code: POTHOLE, jurisdiction: springfield.example, name: Pothole again}
  - {code: SIGN, jurisdiction: shelbyville.example, name: Sign}
routing:
  rules:
    - {name: roads, services: [POTHOLE], instance: desk}
    - name: parks
      services: [SIGN]
      instance: parkz
  default: nowhere
instances:
  desk: {kind: memory}
"""
    assert problems(text, source="bad2.yaml") == [
        "bad2.yaml:6: services.1.code: service POTHOLE is defined twice in springfield.example",
        "bad2.yaml:7: services.2.jurisdiction: service SIGN: unknown jurisdiction "
        "'shelbyville.example' (configured: springfield.example)",
        "bad2.yaml:13: routing.rules.1.instance: routing parks: unknown adapter instance "
        "'parkz' (configured: desk)",
        "bad2.yaml:14: routing.default: routing default: unknown adapter instance 'nowhere' "
        "(configured: desk)",
    ]


def test_routing_rules_naming_unknown_services_or_jurisdictions_are_refused() -> None:
    # A typo in a rule would otherwise send those requests to the default instance silently.
    text = """jurisdictions: [{id: springfield.example, name: Springfield}]
services:
  - {code: DOG_FOULING, jurisdiction: springfield.example, name: Dog fouling}
  - {code: POTHOLE, jurisdiction: springfield.example, name: Pothole}
routing:
  rules:
    - {name: dogs, services: [POTHOLE, DOG_FOLING], instance: desk}
    - name: springfield
      jurisdictions: [springfeld.example]
      instance: desk
    - {name: anything, services: ["*"], jurisdictions: ["*"], instance: desk}
  default: desk
instances:
  desk: {kind: memory}
"""
    assert problems(text) == [
        "city.yaml:7: routing.rules.0.services.1: routing dogs: unknown service 'DOG_FOLING' "
        "(configured: DOG_FOULING, POTHOLE)",
        "city.yaml:9: routing.rules.1.jurisdictions.0: routing springfield: unknown "
        "jurisdiction 'springfeld.example' (configured: springfield.example)",
    ]


def test_a_service_an_earlier_rule_always_takes_is_refused_in_the_later_rule() -> None:
    # The first rule that matches wins: PARK_BENCH added to the new rule would never reach it.
    text = """jurisdictions:
  - {id: springfield.example, name: Springfield}
  - {id: shelbyville.example, name: Shelbyville}
services:
  - {code: PARK_BENCH, jurisdiction: springfield.example, name: Park bench}
  - {code: DUMPING, jurisdiction: springfield.example, name: Dumping}
routing:
  rules:
    - {name: parks, services: [PARK_BENCH], instance: desk}
    - {name: sanitation, services: [DUMPING, PARK_BENCH], instance: desk}
    - {name: springfield-only, services: [DUMPING], jurisdictions: [springfield.example],
       instance: desk}
    - {name: layered, services: [DUMPING], instance: desk}
  default: desk
instances:
  desk: {kind: memory}
"""
    assert problems(text) == [
        "city.yaml:10: routing.rules.1.services.1: routing sanitation: service 'PARK_BENCH' "
        "never reaches this rule: the rule parks before it takes it first (the first rule "
        "that matches wins); remove it from one of them",
        "city.yaml:11: routing.rules.2.services.0: routing springfield-only: service 'DUMPING' "
        "never reaches this rule: the rule sanitation before it takes it first (the first rule "
        "that matches wins); remove it from one of them",
        "city.yaml:13: routing.rules.3.services.0: routing layered: service 'DUMPING' never "
        "reaches this rule: the rule sanitation before it takes it first (the first rule that "
        "matches wins); remove it from one of them",
    ]
    # A rule for one jurisdiction before a rule for the rest is layering, not a mistake.
    layered = text.replace("[DUMPING, PARK_BENCH]", "[PARK_BENCH]").replace(
        "    - {name: parks, services: [PARK_BENCH], instance: desk}\n", ""
    )
    parse_config(layered)


def test_an_instance_name_that_could_pass_for_another_route_is_refused() -> None:
    text = """jurisdictions: [{id: springfield.example, name: Springfield}]
routing: {default: desk}
instances:
  desk: {kind: memory}
  sub.3: {kind: memory}
  roads#: {kind: memory}
"""
    lines = problems(text)
    assert [line.split(": ", 2)[1] for line in lines] == ["instances.sub.3", "instances.roads#"]
    assert all("use letters, digits, '-' and '_'" in line for line in lines)


def test_a_key_given_twice_is_refused_at_its_second_line() -> None:
    # YAML would keep the last one silently: one of two instances would vanish.
    text = """jurisdictions: [{id: springfield.example, name: Springfield}]
routing: {default: desk}
instances:
  desk: {kind: memory}
  desk:
    kind: email
    kind: memory
"""
    assert problems(text) == [
        "city.yaml:5: instances.desk: 'desk' is given twice (first on line 4)",
        "city.yaml:7: instances.desk.kind: 'kind' is given twice (first on line 6)",
    ]


def test_duplicate_attributes_empty_value_lists_and_duplicate_rule_names_are_refused() -> None:
    text = """jurisdictions: [{id: springfield.example, name: Springfield}]
services:
  - code: POTHOLE
    jurisdiction: springfield.example
    name: Pothole
    attributes:
      - {code: DEPTH, datatype: number, description: How deep, order: 1}
      - {code: DEPTH, datatype: string, description: How deep again, order: 2}
      - {code: LANE, datatype: singlevaluelist, description: Which lane, order: 3}
routing:
  rules:
    - {name: roads, services: [POTHOLE], instance: desk}
    - {name: roads, jurisdictions: [springfield.example], instance: desk}
  default: desk
instances:
  desk: {kind: memory}
"""
    assert problems(text) == [
        "city.yaml:8: services.0.attributes.1.code: service POTHOLE: attribute DEPTH is "
        "defined twice",
        "city.yaml:9: services.0.attributes.2.values: service POTHOLE: attribute LANE is a "
        "singlevaluelist with no values, so every answer would be refused",
        "city.yaml:13: routing.rules.1.name: routing rule roads is defined twice",
    ]


def test_missing_file_and_invalid_yaml_say_so(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "absent.yaml")
    with pytest.raises(ConfigError, match="not valid YAML"):
        parse_config("a: [unclosed")


def test_secrets_come_from_the_environment_only() -> None:
    config = load_config(SANDBOX)
    parks = config.instances["parks"]
    if parks.secrets:
        var = next(iter(parks.secrets.values()))
        with pytest.raises(ConfigError, match=var):
            parks.resolved_settings(env={})
        assert parks.resolved_settings(env={var: "s3cret"})[next(iter(parks.secrets))] == "s3cret"


def test_environment_defaults() -> None:
    env = Environment.from_env({})
    assert env.amqp_url == "amqp://guest:guest@127.0.0.1:5672/%2F"
    assert env.database_url.startswith("sqlite:///")
