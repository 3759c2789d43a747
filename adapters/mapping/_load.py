"""Reading a mapping file: YAML with line numbers, JSON Schema validation, then compilation.

Every problem found is reported at once, each with the file, the line and the field path.
"""

from __future__ import annotations

import json
import re
from collections import abc
from collections.abc import Callable
from functools import lru_cache
from importlib.resources import files
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import jmespath
import jmespath.exceptions
import yaml
from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError

from adapters.mapping import _geo, _transforms
from adapters.mapping._engine import Document, FieldRule, Mapping, Step
from adapters.mapping._errors import MappingFileError, Problem
from schemas.model import Location, Reporter, ServiceRequest, Status
from schemas.yaml_keys import repeated_keys

Path_ = tuple[str | int, ...]


def load_mapping(path: str | Path) -> Mapping:
    """Read, validate and compile a mapping file; raise MappingFileError naming file and line."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise MappingFileError(
            [Problem(str(path), None, "", f"cannot read the mapping file ({exc.strerror})")]
        ) from exc
    return parse_mapping(text, source=str(path), base_dir=path.parent)


def parse_mapping(text: str, *, source: str = "<mapping>", base_dir: Path | None = None) -> Mapping:
    """Validate and compile mapping text; relative GeoJSON paths are resolved from `base_dir`."""
    try:
        node, data = _read_yaml(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        reason = getattr(exc, "problem", None) or str(exc)
        raise MappingFileError([Problem(source, line, "", f"not valid YAML: {reason}")]) from exc
    repeated = [
        Problem(source, r.line, ".".join(map(str, r.path)), f"given twice (first on line "
                f"{r.first_line}); YAML would keep the second without a word")
        for r in repeated_keys(node)
    ]  # fmt: skip
    if repeated:
        raise MappingFileError(repeated)
    if not isinstance(data, dict):
        raise MappingFileError([Problem(source, 1, "", "a mapping file is a YAML mapping")])
    problems = [_problem(err, node, source) for err in _validator().iter_errors(data)]
    if problems:
        raise MappingFileError(sorted(problems, key=lambda p: (p.line or 0, p.where)))
    compiler = _Compiler(data, node, source, base_dir or Path.cwd())
    mapping = compiler.compile()
    if compiler.problems:
        raise MappingFileError(sorted(compiler.problems, key=lambda p: (p.line or 0, p.where)))
    return mapping


# --- YAML with lines --------------------------------------------------------------------------


class _KeysAsWritten(yaml.SafeLoader):
    """Mapping keys stay the text written (`yes:` and `1:` are keys "yes" and "1", not True/1)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        self.flatten_mapping(node)  # resolves `<<` merge keys
        return {
            (
                key_node.value
                if isinstance(key_node, yaml.ScalarNode)
                else self.construct_object(key_node, deep=deep)
            ): self.construct_object(value_node, deep=deep)
            for key_node, value_node in node.value
        }


def _read_yaml(text: str) -> tuple[yaml.Node | None, Any]:
    loader = _KeysAsWritten(text)
    try:
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
    finally:
        loader.dispose()
    return node, data


def _node_at(node: yaml.Node | None, path: Path_) -> yaml.Node | None:
    for part in path:
        if isinstance(node, yaml.MappingNode):
            node = next((v for k, v in node.value if k.value == str(part)), None)
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int):
            node = node.value[part] if part < len(node.value) else None
        else:
            return None
    return node


def _key_line(node: yaml.Node | None, path: Path_, key: str) -> int | None:
    parent = _node_at(node, path)
    if isinstance(parent, yaml.MappingNode):
        for k, _ in parent.value:
            if k.value == key:
                return int(k.start_mark.line) + 1
    return _line(node, path)


def _line(node: yaml.Node | None, path: Path_) -> int | None:
    # The deepest node the path reaches: a missing key is reported at its parent.
    for cut in range(len(path), -1, -1):
        found = _node_at(node, path[:cut])
        if found is not None:
            return int(found.start_mark.line) + 1
    return None


def _where(path: Path_) -> str:
    return ".".join(str(p) for p in path)


# --- schema validation ------------------------------------------------------------------------


@lru_cache(maxsize=1)
def schema() -> dict[str, Any]:
    """The JSON Schema of mapping files (schemas/mapping.schema.json)."""
    loaded: dict[str, Any] = json.loads(
        files("schemas").joinpath("mapping.schema.json").read_text("utf-8")
    )
    return loaded


@lru_cache(maxsize=1)
def _validator() -> Draft202012Validator:
    return Draft202012Validator(schema())


def _problem(err: ValidationError, node: yaml.Node | None, source: str) -> Problem:
    path: Path_ = tuple(err.absolute_path)
    where, line, message = _where(path), _line(node, path), err.message
    rule: Any = err.validator_value
    instance: Any = err.instance
    subschema: Any = err.schema
    if err.validator == "additionalProperties" and isinstance(instance, dict):
        allowed = sorted(subschema.get("properties", {}))
        extra = [k for k in instance if k not in allowed]
        if extra and allowed:
            line = _key_line(node, path, str(extra[0]))
            where = _where((*path, extra[0]))
            message = f"unknown option (allowed: {', '.join(allowed)})"
    elif err.validator == "oneOf" and len(path) == 2 and path[0] == "fields":
        message = "give exactly one source: from, const or template"
    elif err.validator == "enum":
        choices = ", ".join(str(c) for c in rule)
        message = f"{instance!r} is not one of: {choices}"
    elif err.validator == "required":
        missing = [k for k in rule if k not in instance]
        message = f"missing {', '.join(missing)}"
    return Problem(source, line, where, message)


# --- compilation ------------------------------------------------------------------------------

_TEMPLATE_TOKEN = re.compile(r"\{\{|\}\}|\{([^{}]*)\}|[{}]")


#: The fields a path can read: the request's JSON form (mapping._engine.Mapping.document), by
#: name, with the objects whose fields are known too. `attributes` holds whatever the service
#: defines, and list items are not followed: neither is checked below its name.
_DOCUMENT_FIELDS: dict[str, frozenset[str] | None] = {
    **dict.fromkeys(ServiceRequest.model_fields),
    "location": frozenset(Location.model_fields),
    "reporter": frozenset(Reporter.model_fields),
    "links": frozenset({"open311"}),
}

#: JMESPath nodes whose children are all read from the same place as the node itself.
_SAME_PLACE = frozenset(
    {
        "function_expression",
        "multi_select_list",
        "or_expression",
        "and_expression",
        "not_expression",
        "comparator",
        "key_val_pair",
        "multi_select_dict",
    }
)
#: Nodes whose first child is read from the same place and the rest from its result.
_LEFT_ONLY = frozenset(
    {"pipe", "index_expression", "projection", "value_projection", "filter_projection", "flatten"}
)


#: A field read from the request's root: its name and, for an object, the field read in it
#: (None: the whole of it). `@` is the whole request.
Read = tuple[str, str | None]


def _reads(node: abc.Mapping[str, Any]) -> list[Read]:
    """The fields a parsed JMESPath expression reads from the request's root, in order. Both
    checks of an expression (a field no request has, a reporter field not declared personal
    data) look at these, so `@.reporter.email` and `"reporter".email` are seen as written
    plainly. List items and `attributes` are not followed below their name."""
    kind = node.get("type")
    children: list[abc.Mapping[str, Any]] = node.get("children", [])
    if kind == "current":
        return [("@", None)]
    if kind == "field":
        return [(str(node["value"]), None)]
    if kind == "subexpression":
        parts = [child for child in children if child.get("type") != "current"] or children
        first = parts[0]
        if first.get("type") != "field":
            return _reads(first)
        inner = parts[1] if len(parts) > 1 and parts[1].get("type") == "field" else None
        return [(str(first["value"]), str(inner["value"]) if inner is not None else None)]
    if kind in _SAME_PLACE:
        return [read for child in children for read in _reads(child)]
    if kind in _LEFT_ONLY and children:
        return _reads(children[0])
    return []


def _unknown(read: Read) -> str | None:
    """The path of `read` if no request has it (`location.lon` for `location.long`): a typo
    would map to nothing, silently."""
    name, inner = read
    if name == "@":
        return None
    if name not in _DOCUMENT_FIELDS:
        return name
    known = _DOCUMENT_FIELDS[name]
    return None if inner is None or known is None or inner in known else f"{name}.{inner}"


def _known_at(unknown: str) -> str:
    """The fields known where `unknown` was looked for, to say what was meant."""
    parent, _, _ = unknown.rpartition(".")
    known = _DOCUMENT_FIELDS.get(parent) if parent else frozenset(_DOCUMENT_FIELDS)
    return f"(fields there: {', '.join(sorted(known or ()))})"


class _Compiler:
    """Turns validated mapping data into a Mapping, collecting problems instead of stopping."""

    def __init__(self, data: dict[str, Any], node: yaml.Node | None, source: str, base: Path):
        self.data, self.node, self.source, self.base = data, node, source, base
        self.problems: list[Problem] = []
        self.personal_data = frozenset(data.get("personal_data", ()))
        self.tables: dict[str, dict[str, Any]] = {
            name: {str(k): v for k, v in table.items()}
            for name, table in data.get("tables", {}).items()
        }
        self.zone = self._zone(data.get("timezone", "UTC"), ("timezone",))

    def problem(self, path: Path_, message: str) -> None:
        self.problems.append(Problem(self.source, _line(self.node, path), _where(path), message))

    def compile(self) -> Mapping:
        rules = tuple(self._rule(name, spec) for name, spec in self.data["fields"].items())
        statuses = {str(code): Status(s) for code, s in self.data.get("statuses", {}).items()}
        default = self.data.get("status_default")
        return Mapping(
            adapter=self.data["adapter"],
            source=self.source,
            rules=rules,
            statuses=statuses,
            status_default=Status(default) if default is not None else None,
            personal_data=self.personal_data,
        )

    def _zone(self, name: str, path: Path_) -> ZoneInfo:
        try:
            return ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError):
            self.problem(path, f"unknown time zone {name!r} (use an IANA name, e.g. Europe/London)")
            return ZoneInfo("UTC")

    def _search(self, expression: str, path: Path_) -> Callable[[Document], Any]:
        try:
            compiled = jmespath.compile(expression)
        except jmespath.exceptions.ParseError as exc:
            self.problem(
                path, f"not a valid JMESPath expression ({exc.msg} at column {exc.lex_position})"
            )
            return lambda doc: None
        reads = _reads(compiled.parsed)
        self._check_personal_data(reads, path)
        for read in reads:
            if (unknown := _unknown(read)) is not None:
                self.problem(path, f"reads {unknown}, which no request has {_known_at(unknown)}")
        return compiled.search

    def _check_personal_data(self, reads: list[Read], path: Path_) -> None:
        for field, name in reads:
            if field != "reporter":
                continue
            if name is None and not self.personal_data:
                self.problem(
                    path,
                    "reads reporter data; list the reporter fields it needs under personal_data",
                )
            elif name is not None and name not in self.personal_data:
                self.problem(
                    path,
                    f"reads reporter.{name}, which is personal data; "
                    f"add {name} to personal_data if the back-end really needs it",
                )

    def _template(self, text: str, path: Path_) -> Callable[[Document], Any]:
        pieces: list[str | Callable[[Document], Any]] = []
        position = 0
        for token in _TEMPLATE_TOKEN.finditer(text):
            pieces.append(text[position : token.start()])
            position = token.end()
            literal = token.group(0)
            if literal in ("{{", "}}"):
                pieces.append(literal[0])
            elif token.group(1) is not None and token.group(1).strip():
                pieces.append(self._search(token.group(1).strip(), path))
            else:
                self.problem(
                    path, "unbalanced or empty {} in template (write {{ or }} for a brace)"
                )
        pieces.append(text[position:])

        def render(doc: Document) -> str:
            return "".join(p if isinstance(p, str) else _transforms.to_text(p(doc)) for p in pieces)

        return render

    def _rule(self, name: str, spec: dict[str, Any]) -> FieldRule:
        path: Path_ = ("fields", name)
        source: Callable[[Document], Any]
        if "from" in spec:
            source = self._search(spec["from"], (*path, "from"))
        elif "template" in spec:
            source = self._template(spec["template"], (*path, "template"))
        else:
            constant = spec["const"]
            source = lambda doc: constant  # noqa: E731 - a constant source
        steps = [s for s in self._steps(spec, path) if s is not None]
        return FieldRule(
            name=name,
            source=source,
            steps=tuple(steps),
            default=spec.get("default"),
            required=bool(spec.get("required", False)),
        )

    def _steps(self, spec: dict[str, Any], path: Path_) -> list[Step | None]:
        # The order here is the documented order of transforms (mappings/README.md).
        return [
            self._geo_step(spec, path),
            self._lookup_step(spec, path),
            Step("choose", lambda v: _transforms.choose(v, spec["choose"]))
            if "choose" in spec
            else None,
            Step("join", lambda v: _transforms.join(v, spec["join"])) if "join" in spec else None,
            self._format_step(spec, path),
            self._type_step(spec),
            Step("upper", _transforms.upper) if spec.get("upper") else None,
            Step("truncate", lambda v: _transforms.truncate(v, spec["truncate"]))
            if "truncate" in spec
            else None,
            Step("max_bytes", lambda v: _transforms.truncate_bytes(v, spec["max_bytes"]))
            if "max_bytes" in spec
            else None,
        ]

    def _geo_step(self, spec: dict[str, Any], path: Path_) -> Step | None:
        if "geo_lookup" in spec and "project" in spec:
            self.problem(path, "use either geo_lookup or project in one field, not both")
            return None
        if "geo_lookup" in spec:
            options = spec["geo_lookup"]
            try:
                index = _geo.polygon_index(self.base / options["file"], options["property"])
            except _geo.GeoError as exc:
                self.problem((*path, "geo_lookup", "file"), str(exc))
                return None
            fallback = options.get("default")

            def geo_lookup(value: Any) -> Any:
                point = _transforms.flatten_location(value)
                found = index.value_at(*point) if point is not None else None
                return fallback if found is None else found

            return Step("geo_lookup", geo_lookup, takes_none=True)
        if "project" in spec:
            options = spec["project"]
            try:
                transformer = _geo.projector(options["to"])
            except _geo.GeoError as exc:
                self.problem((*path, "project", "to"), str(exc))
                return None
            axis = 0 if options["axis"] == "x" else 1

            def project(value: Any) -> Any:
                point = _transforms.flatten_location(value)
                return None if point is None else _geo.project(transformer, *point)[axis]

            return Step("project", project)
        return None

    def _lookup_step(self, spec: dict[str, Any], path: Path_) -> Step | None:
        if "lookup" not in spec:
            return None
        options = spec["lookup"]
        table = self.tables.get(options["table"])
        if table is None:
            known = ", ".join(sorted(self.tables)) or "none defined"
            self.problem(
                (*path, "lookup", "table"), f"unknown table {options['table']!r} (tables: {known})"
            )
            return None
        fallback = options.get("default")
        return Step("lookup", lambda v: _transforms.lookup(v, table, fallback), takes_none=True)

    def _format_step(self, spec: dict[str, Any], path: Path_) -> Step | None:
        zone = (
            self._zone(spec["timezone"], (*path, "timezone")) if "timezone" in spec else self.zone
        )
        if "format" not in spec:
            if "timezone" in spec:
                self.problem((*path, "timezone"), "a timezone needs a format to apply to")
            return None
        fmt = spec["format"]
        if not _transforms.is_valid_format(fmt):
            names = ", ".join(_transforms.NAMED_FORMATS)
            self.problem(
                (*path, "format"),
                f"unknown format {fmt!r} (use {names}, or a strftime pattern with %)",
            )
            return None
        return Step("format", lambda v: _transforms.format_datetime(v, fmt, zone))

    def _type_step(self, spec: dict[str, Any]) -> Step | None:
        decimals = spec.get("round")
        if "type" in spec:
            return Step("type", lambda v: _transforms.convert(v, spec["type"], decimals))
        if decimals is not None:
            return Step("round", lambda v: _transforms.round_number(v, decimals))
        return None
