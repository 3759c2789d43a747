"""The permits adapter: creates cases in the permit system over SOAP and reads their changes back.

The contract is `schemas/wsdl/permits.wsdl`. The civicbus request id is the case's
`externalReference`: `submit` looks it up first and creates only when it is missing, so a
redelivered message creates nothing. Status changes are read with `ListCaseChangesSince`, paged
on the permit system's change sequence (the watermark), so none is missed or repeated; a change
that cannot be read is logged and skipped (adapters/_changes.py), so that it cannot hold back
the changes after it.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import AbstractContextManager
from datetime import UTC, datetime
from typing import Any

import structlog
import zeep
import zeep.exceptions

from adapters._changes import (
    UnreadableChange,
    page_parts,
    require,
    status_update,
    unmapped_status,
)
from adapters._contract import Adapter, Health, Receipt, SkippedChange, UpdatePage
from adapters._exceptions import AdapterError, PermanentError
from adapters._http import Bounds, Where, check_settings, require_http_url
from adapters.mapping import Mapping as FieldMapping
from adapters.mapping import UnknownStatus
from adapters.permits._errors import DuplicateCase, soap_errors
from adapters.permits._transport import BoundedTransport
from schemas.model import ServiceRequest, StatusUpdate

log = structlog.get_logger(__name__)

#: The CreateCase parameters a mapping may fill (externalReference is always the request id).
CREATE_CASE_FIELDS = frozenset(
    {"caseType", "description", "address", "lat", "lon", "district", "reportedAt", "contactEmail"}
)
_BINDING = "{http://permits.sandbox.example/soap/v1}PermitCaseService"
_HEALTH_PROBE_REFERENCE = "civicbus-health-check"


class PermitsAdapter(Adapter):
    """A permit system's case API over SOAP 1.1.

    Settings: `wsdl` (URL or file path of the WSDL, required), `endpoint` (service address,
    overriding the WSDL's), `timeout` (seconds per read, default 10), `answer_timeout` and
    `max_answer_mb` (one whole answer's time and size, adapters/_http.py's Bounds), `page_size`
    (changes per call, default 100), `max_pages` (calls per `updates`, default 10).
    Responses are parsed with entities, DTDs and external references forbidden; a SOAP call is
    never redirected (adapters/permits/_transport.py).
    """

    kind = "permits"
    polls = True
    mapping_fields = frozenset({"caseType"})

    def __init__(
        self, instance: str, settings: Mapping[str, Any], mapping: FieldMapping | None = None
    ) -> None:
        super().__init__(instance, settings, mapping)
        if not settings.get("wsdl"):
            raise ValueError(f"permits adapter {instance}: the setting `wsdl` is required")
        if mapping is None:
            raise ValueError(f"permits adapter {instance}: a mapping file is required")
        self.field_mapping: FieldMapping = mapping
        self.wsdl = str(settings["wsdl"])
        self.endpoint: str | None = settings.get("endpoint") or None
        if self.endpoint:
            context = f"permits adapter {instance}"
            self.endpoint = require_http_url(self.endpoint, context=context, setting="endpoint")
        self._wsdl_where = Where("the permit system", check_settings(instance, "wsdl"))
        self._call_where = Where(
            "the permit system",
            check_settings(instance, "endpoint")
            if self.endpoint
            else f"check the service address in the WSDL, or set settings.endpoint of instance "
            f"{instance}",
        )
        self.timeout = float(settings.get("timeout", 10))
        self.bounds = Bounds.from_settings(
            settings, self.timeout, context=f"permits adapter {instance}"
        )
        self.page_size = int(settings.get("page_size", 100))
        self.max_pages = int(settings.get("max_pages", 10))
        self._transport: BoundedTransport | None = None
        # Built on first use: loading the WSDL is a network call, and a constructor must not fail
        # because the back-end is down at start-up.
        self._service: Any = None

    # -- the contract --------------------------------------------------------------------------

    def submit(self, request: ServiceRequest) -> Receipt:
        """Create the case unless one with this external reference exists; idempotent."""
        fields = self._case_fields(request)
        existing = self.find(request.id)
        if existing is not None:
            log.info(
                "permits.case.exists",
                adapter=self.instance,
                request_id=request.id,
                case_id=existing.reference,
            )
            return existing
        context = f"permits adapter {self.instance}: CreateCase for request {request.id}"
        try:
            with self._errors(context):
                answer = self._soap().CreateCase(externalReference=request.id, **fields)
        except DuplicateCase:
            # Another delivery created it between our lookup and our create: that is success.
            raced = self.find(request.id)
            if raced is None:
                raise
            return raced
        log.info(
            "permits.case.created",
            adapter=self.instance,
            request_id=request.id,
            case_id=answer.caseId,
        )
        return Receipt(
            request_id=request.id,
            reference=str(answer.caseId),
            created=True,
            status=self.field_mapping.status_or_none(str(answer.status)),
            at=answer.createdAt,
        )

    def find(self, request_id: str) -> Receipt | None:
        """The case whose external reference is `request_id`, if the permit system has one."""
        context = f"permits adapter {self.instance}: FindCaseByExternalReference {request_id}"
        with self._errors(context):
            case = self._soap().FindCaseByExternalReference(externalReference=request_id)
        if case is None:
            return None
        return Receipt(
            request_id=request_id,
            reference=str(case.caseId),
            created=False,
            status=self.field_mapping.status_or_none(str(case.status)),
            at=case.createdAt,
        )

    def updates(self, since: str | None) -> UpdatePage:
        """Case changes after the change sequence `since`, oldest first, up to `max_pages` pages."""
        after = _sequence(since, self.instance)
        found: list[StatusUpdate | SkippedChange] = []
        for _ in range(self.max_pages):
            with self._errors(f"permits adapter {self.instance}: ListCaseChangesSince {after}"):
                page = self._soap().ListCaseChangesSince(
                    afterSequence=after, maxResults=self.page_size
                )
            found += map(self._update, _changes_of(page))
            asked, after = after, max(after, int(page.lastSequence))
            if not page.more:
                break
            if after == asked:
                # "More" without a sequence that moved on: asking again would read the same page.
                log.warning("permits.changes.sequence_stuck", adapter=self.instance, after=after)
                break
        updates, skipped = page_parts(found)
        watermark = str(after) if after else since
        return UpdatePage(updates=updates, watermark=watermark, skipped=skipped)

    def check(self) -> Health:
        """Load the WSDL, check the mapping's fields against CreateCase, make one read call."""
        unknown = self._unknown_fields(self.field_mapping.field_names)
        if unknown:
            return Health(
                False,
                f"mapping field(s) {', '.join(unknown)} are not CreateCase "
                f"parameters (known: {', '.join(sorted(CREATE_CASE_FIELDS))})",
            )
        missing = sorted(self.mapping_fields - set(self.field_mapping.field_names))
        if missing:
            return Health(
                False, f"the mapping must fill {', '.join(missing)}, which CreateCase requires"
            )
        try:
            with self._errors(f"permits adapter {self.instance}: health check"):
                self._soap().FindCaseByExternalReference(externalReference=_HEALTH_PROBE_REFERENCE)
        except AdapterError as exc:
            return Health(False, f"permit system at {self.endpoint or self.wsdl}: {exc}")
        return Health(True, f"permit system at {self.endpoint or self.wsdl} answers")

    def close(self) -> None:
        if self._transport is not None:
            self._transport.session.close()
        self._service = None
        self._transport = None

    # -- helpers -------------------------------------------------------------------------------

    def _soap(self) -> Any:
        if self._service is None:
            context = f"permits adapter {self.instance}: loading the WSDL {self.wsdl}"
            with soap_errors(context, self._wsdl_where):
                transport = BoundedTransport(self.bounds, self.timeout)
                settings = zeep.Settings(
                    strict=True, forbid_entities=True, forbid_external=True, forbid_dtd=True
                )
                client = zeep.Client(  # type: ignore[no-untyped-call]
                    self.wsdl, transport=transport, settings=settings
                )
                self._service = (
                    client.create_service(_BINDING, self.endpoint)  # type: ignore[no-untyped-call]
                    if self.endpoint
                    else client.service
                )
                self._transport = transport
        return self._service

    def _errors(self, context: str) -> AbstractContextManager[None]:
        """`soap_errors` for a call of the service (after loading the WSDL, which may fail)."""
        service = self._soap()
        address = self.endpoint or getattr(service, "_binding_options", {}).get("address")
        return soap_errors(context, self._call_where, address)

    def _case_fields(self, request: ServiceRequest) -> dict[str, Any]:
        fields = self.field_mapping.apply(request)
        unknown = self._unknown_fields(fields)
        if unknown:
            raise PermanentError(
                f"permits adapter {self.instance}: request {request.id}: mapping field(s) "
                f"{', '.join(unknown)} are not CreateCase parameters"
            )
        return fields

    @staticmethod
    def _unknown_fields(names: Any) -> list[str]:
        return sorted(set(names) - CREATE_CASE_FIELDS)

    def _update(self, change: Any) -> StatusUpdate | SkippedChange:
        """The change as an update, or skipped (so that the watermark moves past it): raising
        would fail every poll at this change, and no later change would ever be read."""
        try:
            return self._read_change(change)
        except UnreadableChange as exc:
            reference = getattr(change, "externalReference", None)
            return SkippedChange(
                change=f"change {getattr(change, 'sequence', None)} of case "
                f"{getattr(change, 'caseId', None)}",
                problem=str(exc),
                request_id=str(reference) if reference is not None else None,
            )

    def _read_change(self, change: Any) -> StatusUpdate | SkippedChange:
        if change is None:
            raise UnreadableChange("an empty CaseChange")
        # zeep reads a value it cannot parse (a changedAt that is no xs:dateTime) as None.
        require(sequence=change.sequence, externalReference=change.externalReference,
                status=change.status, changedAt=change.changedAt)  # fmt: skip
        code = str(change.status)
        try:
            status = self.field_mapping.status(code)
        except UnknownStatus:
            # The operator adds the code to the mapping for the next ones.
            return unmapped_status(f"change {change.sequence} of case {change.caseId}", code,
                                   self.field_mapping, str(change.externalReference))  # fmt: skip
        return status_update(
            request_id=str(change.externalReference),
            status=status,
            at=_aware(change.changedAt),
            update_id=f"{self.instance}:{change.sequence}",
            source=self.instance,
            note=change.note,  # cut to fit if longer than an update holds
            external_status_code=code,
        )


def _changes_of(page: Any) -> list[Any]:
    changes = page.changes
    if changes is None:
        return []
    return list(changes.CaseChange or [])


def _sequence(since: str | None, instance: str) -> int:
    if not since:
        return 0
    try:
        return int(since)
    except ValueError as exc:
        raise PermanentError(
            f"permits adapter {instance}: watermark {since!r} is not a change sequence"
        ) from exc


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)
