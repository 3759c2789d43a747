"""Configuration: one YAML file (the city) plus environment variables (the machine and secrets).

A bad file is reported with the file, line and field, in words an integrator can act on.
"""

from __future__ import annotations

import os
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from schemas.model import Attribute, Service
from schemas.yaml_keys import repeated_keys

DEFAULT_CONFIG = "deploy/sandbox/civicbus.yaml"
DEFAULT_DATABASE_URL = "sqlite:///civicbus.db"
DEFAULT_AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/%2F"


class ConfigError(Exception):
    """The configuration cannot be used; the message says where and why."""


#: Where in the file a value is: keys and list indexes, as pydantic reports them.
Location = tuple[int | str, ...]


class CrossReferenceError(ValueError):
    """Fields that are valid alone but do not fit together, each with its own location (a
    model validator's errors would otherwise all point at the top of the file)."""

    def __init__(self, problems: list[tuple[Location, str]]) -> None:
        super().__init__("; ".join(message for _, message in problems))
        self.problems = problems


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Jurisdiction(_Strict):
    id: str = Field(min_length=1)
    name: str


class ServiceConfig(_Strict):
    """A service as written in the config; its jurisdiction is given once per entry."""

    code: str
    jurisdiction: str
    name: str
    description: str = ""
    group: str = ""
    keywords: list[str] = []
    type: str = "realtime"
    agency: str | None = None
    service_notice: str | None = None
    attributes: list[Attribute] = []

    def to_service(self) -> Service:
        return Service.model_validate(self.model_dump())


class RoutingRule(_Strict):
    """Content-based router: the first rule whose service and jurisdiction match wins."""

    name: str
    services: list[str] = Field(default=["*"], description="service codes, or '*' for any")
    jurisdictions: list[str] = Field(default=["*"], description="jurisdiction ids, or '*'")
    instance: str

    def matches(self, service_code: str, jurisdiction: str) -> bool:
        return ("*" in self.services or service_code in self.services) and (
            "*" in self.jurisdictions or jurisdiction in self.jurisdictions
        )


class Routing(_Strict):
    rules: list[RoutingRule] = []
    #: Where a request no rule matches goes, so that none is ever dropped silently.
    default: str


class RetryPolicy(_Strict):
    """Redelivery policy of one adapter instance."""

    #: Quick in-process attempts before a message goes to the retry tiers.
    immediate_attempts: int = Field(default=3, ge=1)
    #: Delays of the retry tiers (TTL queues dead-lettering back to the work queue), in seconds.
    tiers: list[float] = [5, 30, 300, 1800]
    #: Attempts (deliveries through the tiers) before the message is dead-lettered.
    max_attempts: int = Field(default=8, ge=1)


class InstanceConfig(_Strict):
    """One adapter instance: a kind, its settings, its mapping, and secrets by env var name."""

    kind: str
    mapping: str | None = None
    settings: dict[str, Any] = {}
    #: setting name -> environment variable holding its value (secrets never in the file).
    secrets: dict[str, str] = {}
    retry: RetryPolicy = RetryPolicy()
    prefetch: int = Field(default=16, ge=1)
    #: Seconds between `updates()` polls, for adapters that poll; 0 turns polling off.
    poll_interval: float = Field(default=30, ge=0)

    def resolved_settings(self, env: Mapping[str, str] | None = None) -> dict[str, Any]:
        """The settings with each secret read from its environment variable."""
        env = os.environ if env is None else env
        missing = [var for var in self.secrets.values() if var not in env]
        if missing:
            raise ConfigError(f"set the environment variable(s) {', '.join(missing)}")
        return {**self.settings, **{key: env[var] for key, var in self.secrets.items()}}


class ApiConfig(_Strict):
    #: The public base URL, used in discovery and for stored media URLs.
    base_url: str = "http://127.0.0.1:8311"
    contact: str = ""
    key_service: str = ""
    changeset: str = "2026-01-01T00:00:00Z"
    environment: str = Field(default="test", pattern="^(production|test)$")
    max_body_bytes: int = 10 * 1024 * 1024
    #: Web origins whose pages may call the API from a browser (CORS), e.g. a city's own "report
    #: a problem" page: `https://www.springfield.example`, or `*` for any. None by default.
    cors_origins: list[str] = []

    @field_validator("cors_origins")
    @classmethod
    def _origins(cls, origins: list[str]) -> list[str]:
        for origin in origins:
            if origin != "*" and not _ORIGIN.fullmatch(origin):
                raise ValueError(
                    f"{origin!r} is no web origin: give scheme, host and port only, as a "
                    "browser sends it (https://www.springfield.example, no path, no slash), "
                    "or * for any"
                )
        return origins


#: A browser's Origin header: scheme, host and an optional port, nothing after.
_ORIGIN = re.compile(r"https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?")


#: An adapter instance's name: part of its queues' names and of routing keys, where a dot
#: would make it look like another route (`sub.3` is webhook subscription 3's) and `*`/`#` are
#: wildcards.
_INSTANCE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")


class Config(_Strict):
    """The whole city: who it is, what it accepts, where each request goes."""

    api: ApiConfig = ApiConfig()
    jurisdictions: list[Jurisdiction] = Field(min_length=1)
    services: list[ServiceConfig] = []
    routing: Routing
    instances: dict[str, InstanceConfig] = {}

    @model_validator(mode="after")
    def _cross_references(self) -> Config:
        problems: list[tuple[Location, str]] = []
        known = {j.id for j in self.jurisdictions}
        seen: set[tuple[str, str]] = set()
        for i, s in enumerate(self.services):
            if s.jurisdiction not in known:
                message = f"service {s.code}: unknown jurisdiction {s.jurisdiction!r}"
                problems.append((("services", i, "jurisdiction"), f"{message} {_among(known)}"))
            elif (s.jurisdiction, s.code) in seen:
                message = f"service {s.code} is defined twice in {s.jurisdiction}"
                problems.append((("services", i, "code"), message))
            seen.add((s.jurisdiction, s.code))
            problems += _attribute_problems(i, s)
        # A rule naming a service or jurisdiction that does not exist never matches, and its
        # requests would go to the default instance without a word.
        codes = {s.code for s in self.services}
        for i, r in enumerate(self.routing.rules):
            for field, what, names, configured in (
                ("services", "service", r.services, codes),
                ("jurisdictions", "jurisdiction", r.jurisdictions, known),
            ):
                for j, name in enumerate(names):
                    if name != "*" and name not in configured:
                        message = f"routing {r.name}: unknown {what} {name!r}"
                        at: Location = ("routing", "rules", i, field, j)
                        problems.append((at, f"{message} {_among(configured)}"))
        problems += _shadowed_services(self.routing.rules, known)
        rule_names: set[str] = set()
        for i, r in enumerate(self.routing.rules):
            if r.name in rule_names:
                at = ("routing", "rules", i, "name")
                problems.append((at, f"routing rule {r.name} is defined twice"))
            rule_names.add(r.name)
        for name in self.instances:
            if not _INSTANCE_NAME.fullmatch(name):
                problems.append(
                    (
                        ("instances", name),
                        f"adapter instance name {name!r}: use letters, digits, '-' and '_' "
                        "(at most 64; it names queues and routing keys, and `sub.` names "
                        "webhook subscriptions)",
                    )
                )
        targets: list[tuple[Location, str, str]] = [
            (("routing", "rules", i, "instance"), r.name, r.instance)
            for i, r in enumerate(self.routing.rules)
        ]
        targets.append((("routing", "default"), "default", self.routing.default))
        for loc, name, instance in targets:
            if instance not in self.instances:
                message = f"routing {name}: unknown adapter instance {instance!r}"
                problems.append((loc, f"{message} {_among(self.instances)}"))
        if problems:
            raise CrossReferenceError(problems)
        return self

    def service_catalogue(self) -> list[Service]:
        return [s.to_service() for s in self.services]

    def route(self, service_code: str, jurisdiction: str) -> tuple[str, str]:
        """The adapter instance for a request and the name of the rule that chose it."""
        for rule in self.routing.rules:
            if rule.matches(service_code, jurisdiction):
                return rule.instance, rule.name
        return self.routing.default, "default"


def _shadowed_services(
    rules: list[RoutingRule], jurisdictions: set[str]
) -> list[tuple[Location, str]]:
    """A problem for each service a rule names that earlier rules always take first (the first
    rule that matches wins): that part of the rule never applies, though it reads as if it did."""
    problems: list[tuple[Location, str]] = []
    for i, rule in enumerate(rules):
        places = jurisdictions if "*" in rule.jurisdictions else set(rule.jurisdictions)
        for j, code in enumerate(rule.services):
            if code == "*" or not places:
                continue
            takers = [
                next((e for e in rules[:i] if e.matches(code, place)), None) for place in places
            ]
            if all(takers):
                names = sorted({t.name for t in takers if t is not None})
                earlier = (
                    f"rule {names[0]} before it takes"
                    if len(names) == 1
                    else f"rules {', '.join(names)} before it take"
                )
                problems.append(
                    (
                        ("routing", "rules", i, "services", j),
                        f"routing {rule.name}: service {code!r} never reaches this rule: the "
                        f"{earlier} it first (the first rule that matches wins); remove it "
                        "from one of them",
                    )
                )
    return problems


def _attribute_problems(i: int, service: ServiceConfig) -> list[tuple[Location, str]]:
    problems: list[tuple[Location, str]] = []
    codes: set[str] = set()
    for k, a in enumerate(service.attributes):
        at: Location = ("services", i, "attributes", k)
        if a.code in codes:
            message = f"service {service.code}: attribute {a.code} is defined twice"
            problems.append(((*at, "code"), message))
        codes.add(a.code)
        if a.datatype.is_list and not a.values:
            message = (
                f"service {service.code}: attribute {a.code} is a {a.datatype} with no values, "
                "so every answer would be refused"
            )
            problems.append(((*at, "values"), message))
    return problems


def _among(names: Collection[str]) -> str:
    return f"(configured: {', '.join(sorted(names)) or 'none'})"


@dataclass(frozen=True)
class Environment:
    """What comes from the machine's environment rather than the city's config."""

    config_path: str
    database_url: str
    amqp_url: str
    media_dir: str
    log_format: str  # "json", "console", or "auto" (console on a terminal)
    log_level: str = ""  # "" for each command's own: warnings for one-shot ones, info for services

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Environment:
        env = os.environ if env is None else env
        return cls(
            config_path=env.get("CIVICBUS_CONFIG", DEFAULT_CONFIG),
            database_url=env.get("CIVICBUS_DATABASE_URL", DEFAULT_DATABASE_URL),
            amqp_url=env.get("CIVICBUS_AMQP_URL", DEFAULT_AMQP_URL),
            media_dir=env.get("CIVICBUS_MEDIA_DIR", "media"),
            log_format=env.get("CIVICBUS_LOG_FORMAT", "auto"),
            log_level=env.get("CIVICBUS_LOG_LEVEL", ""),
        )


def load_config(path: str | Path) -> Config:
    """Read and validate a config file; raise ConfigError naming file, line and field."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the config file ({exc.strerror})") from exc
    return parse_config(text, source=str(path))


def parse_config(text: str, *, source: str = "<config>") -> Config:
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: not valid YAML: {exc}") from exc
    duplicates = list(repeated_keys(node))
    if duplicates:
        lines = [f"{source}:{repeated.line}: {repeated}" for repeated in duplicates]
        raise ConfigError("invalid config:\n  " + "\n  ".join(lines))
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the config must be a mapping at the top level")
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        lines = []
        for loc, message in _problems(exc):
            line = _line_of(node, loc)
            where = ".".join(str(p) for p in loc) or "(top level)"
            at = f"{source}:{line}" if line else source
            lines.append(f"{at}: {where}: {message}")
        raise ConfigError("invalid config:\n  " + "\n  ".join(lines)) from exc


def _problems(exc: ValidationError) -> list[tuple[Location, str]]:
    """Each error with the location of the field it is about: a cross-reference error of the
    whole model is split into its problems, each at its own field."""
    found: list[tuple[Location, str]] = []
    for err in exc.errors():
        cause = err.get("ctx", {}).get("error")
        if isinstance(cause, CrossReferenceError):
            found += [(tuple(err["loc"]) + loc, message) for loc, message in cause.problems]
        else:
            found.append((tuple(err["loc"]), err["msg"]))
    return found


def _line_of(node: yaml.Node | None, loc: tuple[int | str, ...]) -> int | None:
    """The 1-based line of the deepest YAML node that `loc` reaches."""
    line = node.start_mark.line + 1 if node is not None else None
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            node = next((v for k, v in node.value if k.value == part), None)
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int):
            node = node.value[part] if part < len(node.value) else None
        else:
            break
        if node is None:
            break
        line = node.start_mark.line + 1
    return line
