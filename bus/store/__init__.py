"""The durable store: requests, status history, cross-references, tokens, idempotency keys,
API clients, the transactional outbox and the hash-chained audit log.

One `Store` per process. Everything that must be atomic (a request, its outbox event and its
audit entry) happens inside one `store.transaction()` unit of work.

INTERFACE DRAFT: the signatures below are the contract the API, relay and worker code against;
the store work fills in the bodies.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from schemas.events import Envelope
from schemas.model import ServiceRequest, Status, StatusUpdate


class StoreUnavailable(Exception):
    """The database cannot be reached or is locked; the caller answers 503 / retries later."""


@dataclass(frozen=True)
class Client:
    """An API client (an app or partner) identified by a hashed key."""

    id: int
    name: str
    jurisdiction: str | None
    created_at: datetime
    revoked_at: datetime | None = None


@dataclass(frozen=True)
class OutboxRow:
    id: int  # monotonically increasing: the relay publishes in this order
    envelope: Envelope
    exchange: str
    routing_key: str
    created_at: datetime


@dataclass(frozen=True)
class AuditEntry:
    id: int
    at: datetime
    actor: str  # who or what: "api:client-name", "relay", "worker:sap-roads", "cli:dead-replay"
    action: str  # "accepted", "relayed", "routed", "attempt", "retry_scheduled", "submitted", ...
    request_id: str | None
    message_id: str | None
    outcome: str  # "ok", "error", "duplicate", ...
    details: dict[str, Any]  # never personal data
    prev_hash: str
    hash: str


@dataclass(frozen=True)
class AuditVerification:
    ok: bool
    entries: int
    #: The first entry id where the chain breaks (edited, deleted or inserted), if any.
    broken_at: int | None = None
    reason: str = ""


@dataclass(frozen=True)
class RequestQuery:
    """Filters of GET /requests (OPEN311.md C-17, C-19); None means 'not filtered'."""

    ids: Sequence[str] | None = None
    service_codes: Sequence[str] | None = None
    jurisdiction: str | None = None
    statuses: Sequence[Status] | None = None
    requested_from: datetime | None = None
    requested_to: datetime | None = None
    updated_after: datetime | None = None
    updated_before: datetime | None = None
    bbox: tuple[float, float, float, float] | None = None  # lat_ne, long_ne, lat_sw, long_sw
    offset: int = 0
    limit: int = 1000


@dataclass
class Transaction:
    """A unit of work: everything done through it commits together or not at all."""

    _session: Any = field(repr=False)

    def add_request(self, request: ServiceRequest, *, token: str | None = None) -> None:
        """Insert a new request (and its batch token, if any)."""
        raise NotImplementedError

    def save_idempotent_response(
        self, client_id: int, key: str, response: dict[str, Any]
    ) -> None:
        """Remember the answer given to (client, Idempotency-Key) (OPEN311.md C-15)."""
        raise NotImplementedError

    def apply_status_update(self, update: StatusUpdate) -> ServiceRequest | None:
        """Add the update to the request's history and set its status and updated time.

        Returns the updated request, or None when `update.update_id` was already recorded
        for that request (a harmless repeat, C-22). Raises KeyError for an unknown request.
        """
        raise NotImplementedError

    def add_backend_ref(self, request_id: str, adapter: str, reference: str, at: datetime) -> None:
        """Record the back-end's reference for the request (idempotent per adapter)."""
        raise NotImplementedError

    def add_outbox(self, envelope: Envelope, *, exchange: str, routing_key: str) -> None:
        """Queue an event for the relay; it is published only if this transaction commits."""
        raise NotImplementedError

    def audit(
        self,
        *,
        actor: str,
        action: str,
        request_id: str | None = None,
        message_id: str | None = None,
        outcome: str = "ok",
        details: dict[str, Any] | None = None,
    ) -> None:
        """Append an entry to the hash chain (details are redacted of personal data)."""
        raise NotImplementedError

    def set_watermark(self, instance: str, watermark: str | None) -> None:
        raise NotImplementedError


class Store:
    """The database behind civicbus: SQLite (WAL) embedded, or PostgreSQL."""

    def __init__(self, url: str) -> None:
        raise NotImplementedError

    @classmethod
    def open(cls, url: str) -> Store:
        """Connect, creating or upgrading the schema (Alembic) on first use."""
        raise NotImplementedError

    def upgrade(self) -> None:
        """Run the Alembic migrations up to head."""
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    @contextmanager
    def transaction(self) -> Iterator[Transaction]:
        """A unit of work; raises StoreUnavailable when the database cannot be reached."""
        raise NotImplementedError
        yield  # pragma: no cover

    # --- reads ---------------------------------------------------------------------------
    def get_request(self, request_id: str) -> ServiceRequest | None:
        raise NotImplementedError

    def find_requests(self, query: RequestQuery) -> list[ServiceRequest]:
        raise NotImplementedError

    def status_updates(self, start: datetime, end: datetime) -> list[StatusUpdate]:
        """Updates recorded in [start, end] across all requests, oldest first (C-21)."""
        raise NotImplementedError

    def resolve_token(self, token: str) -> str | None:
        """The request id behind a batch token; None for an unknown token (C-16)."""
        raise NotImplementedError

    def idempotent_response(self, client_id: int, key: str) -> dict[str, Any] | None:
        raise NotImplementedError

    def watermark(self, instance: str) -> str | None:
        raise NotImplementedError

    # --- API clients -----------------------------------------------------------------------
    def add_client(self, name: str, jurisdiction: str | None = None) -> tuple[Client, str]:
        """Create a client; returns it with its key, which is stored only hashed."""
        raise NotImplementedError

    def authenticate(self, key: str) -> Client | None:
        """The active client holding this key, or None."""
        raise NotImplementedError

    def list_clients(self) -> list[Client]:
        raise NotImplementedError

    def revoke_client(self, name: str) -> bool:
        raise NotImplementedError

    # --- outbox (the relay's side) ---------------------------------------------------------
    def pending_outbox(self, limit: int = 500) -> list[OutboxRow]:
        """Unsent rows, oldest first."""
        raise NotImplementedError

    def mark_sent(self, ids: Sequence[int]) -> None:
        """Mark rows published (after the broker confirmed them)."""
        raise NotImplementedError

    # --- audit -----------------------------------------------------------------------------
    def audit_trail(self, request_id: str) -> list[AuditEntry]:
        raise NotImplementedError

    def verify_audit(self) -> AuditVerification:
        raise NotImplementedError
