"""Kind `memory`: a back-end held in process memory, for tests, demos and benchmarks.

It behaves like a real back-end adapter: `submit` is idempotent by the civicbus request id
(stored as the record's external reference), status changes are read back through `updates`
with a sequence-number watermark, and failures are typed. Tests drive the back-end directly:

    backend = MemoryBackend()
    adapter = MemoryAdapter("roads", {"backend": backend}, mapping)
    backend.set_status(request_id, "NOCO")       # a clerk closes the work item
    backend.go_down()                             # connections are refused (TransientError)
    backend.reject_when(lambda payload: ...)      # the back-end rejects data (PermanentError)

Settings: `backend` (a MemoryBackend, or a name shared by every adapter in the process, default
the instance name), `initial_status` (the status code of a new record, default "open"),
`page_size` (updates per page, default 100).
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, ClassVar

from adapters._contract import Adapter, Health, Receipt, UpdatePage
from adapters._exceptions import ErrorTable, PermanentError, TransientError, map_exceptions
from adapters.mapping import Mapping as FieldMapping
from schemas.model import ServiceRequest, Status, StatusUpdate


class BackendUnreachable(ConnectionRefusedError):
    """The simulated back-end is down."""


class BackendRejected(ValueError):
    """The simulated back-end refused the data."""


@dataclass
class Record:
    """One work item in the back-end."""

    reference: str
    external_reference: str
    payload: dict[str, Any]
    status_code: str
    created_at: datetime


@dataclass(frozen=True)
class Change:
    """One entry of the back-end's change log; `seq` is the watermark."""

    seq: int
    external_reference: str
    status_code: str
    at: datetime
    note: str | None = None


@dataclass
class MemoryBackend:
    """The simulated back-end: records, a change log, and switches for failures."""

    records: dict[str, Record] = field(default_factory=dict)
    changes: list[Change] = field(default_factory=list)
    reachable: bool = True
    _reject: Callable[[dict[str, Any]], bool] | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _numbers: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    _named: ClassVar[dict[str, MemoryBackend]] = {}
    _named_lock: ClassVar[threading.Lock] = threading.Lock()

    @classmethod
    def named(cls, name: str) -> MemoryBackend:
        """The process-wide back-end called `name` (created on first use)."""
        with cls._named_lock:
            return cls._named.setdefault(name, cls())

    # --- what tests do to the back-end ---------------------------------------------------------

    def go_down(self) -> None:
        self.reachable = False

    def come_up(self) -> None:
        self.reachable = True

    def reject_when(self, predicate: Callable[[dict[str, Any]], bool] | None) -> None:
        """Reject payloads for which `predicate` is true (None: accept everything again)."""
        self._reject = predicate

    def set_status(self, external_reference: str, code: str, note: str | None = None) -> Change:
        """A back-office user changes a work item's status (by the civicbus request id)."""
        with self._lock:
            record = self.records[external_reference]
            record.status_code = code
            change = Change(len(self.changes) + 1, external_reference, code, _now(), note)
            self.changes.append(change)
            return change

    def count(self, external_reference: str | None = None) -> int:
        """Records in the back-end (holding `external_reference`, if given)."""
        if external_reference is None:
            return len(self.records)
        return int(external_reference in self.records)

    # --- what the adapter calls ----------------------------------------------------------------

    def _connect(self) -> None:
        if not self.reachable:
            raise BackendUnreachable("connection refused")

    def create(self, external_reference: str, payload: dict[str, Any], code: str) -> Record:
        self._connect()
        with self._lock:
            existing = self.records.get(external_reference)
            if existing is not None:
                return existing
            if self._reject is not None and self._reject(payload):
                raise BackendRejected("the back-end rejected the record")
            record = Record(
                f"MEM-{next(self._numbers):06d}", external_reference, payload, code, _now()
            )
            self.records[external_reference] = record
            return record

    def get(self, external_reference: str) -> Record | None:
        self._connect()
        return self.records.get(external_reference)

    def changes_after(self, seq: int, limit: int) -> list[Change]:
        self._connect()
        with self._lock:
            return self.changes[seq : seq + limit]


def _now() -> datetime:
    return datetime.now(UTC)


#: The canonical statuses by code: a back-end without a mapping speaks them as they are.
_CANONICAL = {status.value: status for status in Status}

#: How the simulated back-end's errors are typed (the map_exceptions table of this adapter).
ERRORS: ErrorTable = {BackendUnreachable: TransientError, BackendRejected: PermanentError}


class MemoryAdapter(Adapter):
    """An adapter to a MemoryBackend; with a mapping, payloads and status codes go through it."""

    kind: ClassVar[str] = "memory"
    polls: ClassVar[bool] = True

    def __init__(self, instance: str, settings: Mapping[str, Any], mapping: Any = None) -> None:
        super().__init__(instance, settings, mapping)
        backend = settings.get("backend", instance)
        self.backend = (
            backend if isinstance(backend, MemoryBackend) else MemoryBackend.named(backend)
        )
        self.initial_status = str(settings.get("initial_status", "open"))
        self.page_size = int(settings.get("page_size", 100))

    def _payload(self, request: ServiceRequest) -> dict[str, Any]:
        if isinstance(self.mapping, FieldMapping):
            return self.mapping.apply(request)
        return request.public_data()

    def _status(self, code: str) -> Status:
        if isinstance(self.mapping, FieldMapping):
            return self.mapping.status(code)
        status = _CANONICAL.get(code)  # as Status(code), without the enum's call machinery
        if status is None:
            raise PermanentError(
                f"memory adapter {self.instance}: status code {code!r} is not a canonical "
                f"status and there is no mapping to translate it"
            )
        return status

    def _receipt(self, request_id: str, record: Record, created: bool) -> Receipt:
        return Receipt(
            request_id=request_id,
            reference=record.reference,
            created=created,
            status=self._status(record.status_code),
            at=record.created_at,
        )

    def submit(self, request: ServiceRequest) -> Receipt:
        context = f"memory adapter {self.instance}: request {request.id}"
        with map_exceptions(ERRORS, context=context):
            existing = self.backend.get(request.id)
            if existing is not None:
                return self._receipt(request.id, existing, created=False)
            record = self.backend.create(request.id, self._payload(request), self.initial_status)
        return self._receipt(request.id, record, created=True)

    def find(self, request_id: str) -> Receipt | None:
        with map_exceptions(ERRORS, context=f"memory adapter {self.instance}: find {request_id}"):
            record = self.backend.get(request_id)
        return None if record is None else self._receipt(request_id, record, created=False)

    def updates(self, since: str | None) -> UpdatePage:
        after = int(since) if since else 0
        with map_exceptions(ERRORS, context=f"memory adapter {self.instance}: updates"):
            changes = self.backend.changes_after(after, self.page_size)
        updates = tuple(
            StatusUpdate(
                request_id=c.external_reference,
                status=self._status(c.status_code),
                at=c.at,
                update_id=f"{self.instance}:{c.seq}",
                source=self.instance,
                note=c.note,
                external_status_code=c.status_code,
            )
            for c in changes
        )
        watermark = str(changes[-1].seq) if changes else since
        return UpdatePage(updates=updates, watermark=watermark)

    def check(self) -> Health:
        if not self.backend.reachable:
            return Health(ok=False, detail="unreachable: the in-memory back-end is down")
        return Health(ok=True, detail=f"{self.backend.count()} records")
