"""A compiled mapping: canonical request -> back-end fields, back-end status code -> Status.

Compiled once by `load_mapping`; applying it is a pure function of the request (no I/O: GeoJSON
indexes and CRS transformers are built at load time).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from adapters.mapping._errors import MappingFailed, UnknownStatus
from adapters.mapping._transforms import Scalar, Unfit, is_blank
from schemas.model import ServiceRequest, Status

#: The canonical request as the JSON document that paths and templates read.
Document = dict[str, Any]


@dataclass(frozen=True)
class Step:
    """One transform of a field, named after its option in the mapping file."""

    option: str
    apply: Callable[[Any], Any]
    #: Most transforms pass "no value" through untouched; lookups turn it into their default.
    takes_none: bool = False


@dataclass(frozen=True)
class FieldRule:
    """How one back-end field gets its value: a source, a default, transforms, required or not."""

    name: str
    source: Callable[[Document], Any]
    steps: tuple[Step, ...] = ()
    default: Scalar = None
    required: bool = False

    def value(self, doc: Document) -> Any:
        value = self.source(doc)
        if is_blank(value) and self.default is not None:
            value = self.default
        for step in self.steps:
            if value is None and not step.takes_none:
                continue
            value = step.apply(value)
        return value


@dataclass(frozen=True)
class Mapping:
    """One adapter instance's mapping file, validated and compiled."""

    adapter: str
    source: str
    rules: tuple[FieldRule, ...]
    statuses: dict[str, Status] = field(default_factory=dict)
    status_default: Status | None = None
    #: Reporter fields this mapping may read; the others never reach paths or templates.
    personal_data: frozenset[str] = frozenset()
    #: The public Open311 API's base URL of this deployment (config `api.base_url`), for the
    #: `links` a path may read; set when the adapter instance is built.
    public_base_url: str | None = None

    @property
    def field_names(self) -> tuple[str, ...]:
        return tuple(rule.name for rule in self.rules)

    def document(self, request: ServiceRequest) -> Document:
        """The request as paths see it: its JSON form with only the allowed reporter fields, and
        `links.open311`, the request's public Open311 URL, when the base URL is known."""
        doc = request.model_dump(mode="json", exclude={"reporter"})
        reporter = request.reporter.model_dump(mode="json")
        doc["reporter"] = {k: v for k, v in reporter.items() if k in self.personal_data}
        doc["links"] = {}
        if self.public_base_url:
            base = self.public_base_url.rstrip("/")
            doc["links"]["open311"] = f"{base}/open311/v2/requests/{request.id}.json"
        return doc

    def apply(self, request: ServiceRequest) -> dict[str, Any]:
        """The back-end fields for `request`; a field with no value is left out.

        Raises MappingFailed (a PermanentError) naming the field and the request when a required
        field has no value or a value cannot be transformed; never with the value itself.
        """
        doc = self.document(request)
        out: dict[str, Any] = {}
        for rule in self.rules:
            value = self._field_value(rule, doc, request.id)
            if rule.required and is_blank(value):
                raise MappingFailed(
                    f"mapping {self.source}: request {request.id}: required field "
                    f"{rule.name} has no value",
                    field=rule.name,
                )
            if value is not None:
                out[rule.name] = value
        return out

    def _field_value(self, rule: FieldRule, doc: Document, request_id: str) -> Any:
        try:
            return rule.value(doc)
        except Unfit as exc:
            reason = str(exc)
        except Exception as exc:
            # A library's message may quote the value (personal data): name only the type.
            reason = f"unexpected {type(exc).__name__}"
        raise MappingFailed(
            f"mapping {self.source}: request {request_id}: field {rule.name}: {reason}",
            field=rule.name,
        )

    def status(self, code: str) -> Status:
        """The canonical status of back-end status `code` (the default for an unlisted code).

        Raises UnknownStatus (a PermanentError) for an unlisted code when there is no default.
        """
        found = self.statuses.get(str(code).strip())
        if found is not None:
            return found
        if self.status_default is not None:
            return self.status_default
        known = ", ".join(sorted(self.statuses)) or "none"
        raise UnknownStatus(
            f"mapping {self.source}: back-end status {code!r} is not in the status table "
            f"(known: {known}); add it under statuses, or set status_default",
            code=str(code),
        )

    def status_or_none(self, code: str) -> Status | None:
        """The canonical status of `code`, or None where `status` would raise UnknownStatus:
        for a receipt, whose status is a courtesy that an unlisted code must not fail."""
        try:
            return self.status(code)
        except UnknownStatus:
            return None
