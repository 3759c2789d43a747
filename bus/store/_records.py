"""Plain records the store hands out and takes in (re-exported by `bus.store`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any, NamedTuple

from schemas.events import Envelope
from schemas.model import Media, ServiceRequest, Status


@dataclass(frozen=True)
class Client:
    """An API client (an app or partner) identified by a hashed key; `may_post_updates`: whether
    it may post status updates (a back-office desk or partner system), not only create and read."""

    id: int
    name: str
    jurisdiction: str | None
    created_at: datetime
    revoked_at: datetime | None = None
    may_post_updates: bool = False


class OutboxEvent(NamedTuple):
    """An event to queue in the outbox, and where the relay publishes it."""

    envelope: Envelope
    exchange: str
    routing_key: str


@dataclass(frozen=True)
class OutboxRow:
    id: int  # monotonically increasing: the relay publishes in this order
    envelope: Envelope
    exchange: str
    routing_key: str
    created_at: datetime


@dataclass(frozen=True)
class OutboxMessage:
    """An unsent outbox row as the relay publishes it: the envelope, and its JSON exactly as
    stored (the message body, so nothing is serialised twice)."""

    id: int
    envelope: Envelope
    body: bytes
    exchange: str
    routing_key: str


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
class AuditStreak:
    """An actor's unbroken run of entries of one action (failed attempts, say), oldest and
    latest; not `complete` when it may begin further back than was looked."""

    first: AuditEntry
    last: AuditEntry
    complete: bool


@dataclass(frozen=True)
class AuditVerification:
    ok: bool
    entries: int
    #: The first entry id where the chain breaks (edited, deleted or inserted), if any; None
    #: when the chain holds but the expected head is not on it.
    broken_at: int | None = None
    reason: str = ""
    #: The hash of the last entry of an intact chain: recorded elsewhere, it lets a later
    #: verification detect entries cut from the end along with the head row.
    head: str = ""


@dataclass(frozen=True)
class RecordedUpdate:
    """A status update the store recorded: the request after it, the status it had before, and
    whether the update was older than the request's current status and so went into the
    history only (leaving status, status notes and updated time as they were)."""

    request: ServiceRequest
    previous_status: Status
    history_only: bool = False

    @property
    def status_changed(self) -> bool:
        """Whether the request's canonical status is another one than before the update."""
        return self.request.status is not self.previous_status


@dataclass(frozen=True)
class TakenDownRecord:
    """What a take-down changed in the store: whether it replaced the description, the codes of
    the attributes whose answers it replaced, the media it removed from the request, and how
    many stored copies it rewrote (outbox events waiting for the relay, outbox events already
    published, dead letters)."""

    description: bool
    answers: tuple[str, ...]
    media: tuple[Media, ...]
    events_waiting: int
    events_published: int
    dead_letters: int

    @property
    def changed(self) -> bool:
        """Whether anything was rewritten."""
        return bool(
            self.description
            or self.answers
            or self.media
            or self.events_waiting
            or self.events_published
            or self.dead_letters
        )


@dataclass(frozen=True)
class RequestQuery:
    """Filters of GET /requests, the standard ones and the paging, updated-time and bounding-box
    extensions; None means 'not filtered'."""

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


@dataclass(frozen=True)
class Subscription:
    """A back-office system's webhook: events matching `events` are POSTed, signed, to `url`."""

    id: int
    url: str
    events: tuple[str, ...]  # patterns on the short event type, e.g. "request.*"
    secret_env: str | None  # the environment variable holding the HMAC secret
    created_at: datetime
    active: bool = True


class DeadLetterState(StrEnum):
    DEAD = "dead"
    REPLAYED = "replayed"
    DROPPED = "dropped"


@dataclass(frozen=True)
class DeadLetter:
    """A message an adapter instance gave up on (dead letter channel), kept for replay."""

    id: int
    instance: str
    message_id: str
    request_id: str | None
    reason: str
    attempts: int
    first_failed_at: datetime
    last_failed_at: datetime
    #: The envelope as JSON data, or the raw body as text when it was not valid JSON.
    envelope: dict[str, Any] | str | None
    state: DeadLetterState
    #: When it was last replayed or dropped; None while it waits as a dead letter. A resolved
    #: letter is deleted by `civicbus store prune` some time after (bus.retention).
    resolved_at: datetime | None = None


@dataclass(frozen=True)
class Undelivered:
    """An open request no back-end holds yet, with what was last heard of it."""

    request_id: str
    jurisdiction: str
    service_code: str
    accepted_at: datetime
    #: Its audit entries, oldest first (webhook deliveries of its events included).
    trail: list[AuditEntry]
    #: Its dead letters in any state (dead, replayed, dropped), oldest first.
    dead_letters: list[DeadLetter]


@dataclass(frozen=True)
class Lease:
    """Who holds a named lease (the active relay, a poller) and until when, unless renewed."""

    name: str
    holder: str
    expires_at: datetime


@dataclass(frozen=True)
class PollerRounds:
    """How an instance's poller rounds have gone: the last one that completed, since when they
    fail (None while they succeed), the failed rounds ever counted and the latest error."""

    instance: str
    polled_at: datetime | None
    failing_since: datetime | None
    failed_rounds: int
    last_error: str | None


@dataclass(frozen=True)
class WorkerLiveness:
    """A worker's latest report of itself on one queue: which process, since when it runs,
    when it last reported, the message in hand (None while idle), and how many it holds."""

    worker_id: str  # one run of a worker process (a pid is reused, a host may be a container)
    recipient: str  # the adapter instance or subscription route (`sub.<id>`) it consumes for
    host: str
    pid: int
    started_at: datetime
    heartbeat_at: datetime
    message_id: str | None = None
    request_id: str | None = None
    working_since: datetime | None = None
    #: Messages the broker delivered to it and it has not acked: in hand and prefetched behind
    #: (None: a worker from before the store's migration 0010 does not say).
    held: int | None = None

    @property
    def name(self) -> str:
        """How an operator finds the process: `host:pid`."""
        return f"{self.host}:{self.pid}"


@dataclass(frozen=True)
class BrokerBlock:
    """RabbitMQ blocks a publisher's connection for a resource alarm (memory or disk): since
    when, the broker's reason, and when the publishing process last said it still does."""

    publisher: str  # "relay", or "worker:HOST:PID"
    holder: str
    blocked_since: datetime
    reason: str
    seen_at: datetime


@dataclass(frozen=True)
class StoreOverview:
    """What the store says of the bus's health at one moment."""

    outbox_waiting: int
    oldest_waiting: datetime | None
    leases: dict[str, Lease]
    #: Dead letters waiting for a decision, by adapter instance (or subscription route).
    dead_letters: dict[str, int]
    #: By adapter instance, for those a poller has ever polled.
    pollers: dict[str, PollerRounds]
    #: The workers' latest reports (stopped workers removed theirs), by recipient then host.
    workers: list[WorkerLiveness]
    #: Every adapter instance whose queues the relay has declared, in the config or not.
    declared_instances: list[str]
    #: Publishers the broker blocks (or blocked, when their process stopped saying so), by name.
    broker_blocks: dict[str, BrokerBlock] = field(default_factory=dict)
