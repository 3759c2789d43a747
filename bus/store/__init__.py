"""The durable store: requests, status history, cross-references, tokens, idempotency keys,
API clients, the transactional outbox and the hash-chained audit log, plus the bus's leases,
webhook subscriptions, dead letters and workers' heartbeats.

One `Store` per process. Everything that must be atomic (a request, its outbox event and its
audit entry) happens inside one `store.transaction()` unit of work:

    with store.transaction() as tx:
        tx.add_request(request)
        tx.add_outbox(envelope, exchange="civicbus.events", routing_key="request.created.pothole")
        tx.audit(actor="api:fixmyapp", action="accepted", request_id=request.id)

SQLite (WAL) is the embedded default, PostgreSQL (psycopg 3) the shared one. Connection
failures, lock timeouts and a read-only database raise `StoreUnavailable` (a server that did not
answer in time its `NotAnswering`, deadlocks and serialization failures its `WriteConflict`),
unique-key conflicts `AlreadyExists` (and its `UpdateConflict`, for a status update reusing a
recorded update_id with other content, when the caller asks), values the database refuses
`InvalidData`; in every case nothing of the unit of work is written. After a `NotAnswering`, the
store's circuit breaker refuses operations at once with `StoreUnavailable` and pings the
database from a thread of its own every second or so, until a ping gets an answer;
`not_answering_advice` tells an operator what to check then. `shown_url` is the database URL as
it may be printed: without its password.
"""

from bus.store._breaker import BreakerState
from bus.store._errors import (
    AlreadyExists,
    BadDatabaseUrl,
    HistoryFull,
    InvalidData,
    NoSuchStore,
    NotAnswering,
    SchemaTooNew,
    StoreUnavailable,
    UpdateConflict,
    UpdatesNotAllowed,
    WriteConflict,
    not_answering_advice,
)
from bus.store._kept_writer import KeptWriter
from bus.store._records import (
    AuditEntry,
    AuditStreak,
    AuditVerification,
    BrokerBlock,
    Client,
    DeadLetter,
    DeadLetterState,
    Lease,
    OutboxEvent,
    OutboxMessage,
    OutboxRow,
    PollerRounds,
    RecordedUpdate,
    RequestQuery,
    StoreOverview,
    Subscription,
    TakenDownRecord,
    Undelivered,
    WorkerLiveness,
)
from bus.store._store import Store
from bus.store._transaction import Transaction
from bus.store._url import shown_url

__all__ = [
    "AlreadyExists",
    "AuditEntry",
    "AuditStreak",
    "AuditVerification",
    "BadDatabaseUrl",
    "BreakerState",
    "BrokerBlock",
    "Client",
    "DeadLetter",
    "DeadLetterState",
    "HistoryFull",
    "InvalidData",
    "KeptWriter",
    "Lease",
    "NoSuchStore",
    "NotAnswering",
    "OutboxEvent",
    "OutboxMessage",
    "OutboxRow",
    "PollerRounds",
    "RecordedUpdate",
    "RequestQuery",
    "SchemaTooNew",
    "Store",
    "StoreOverview",
    "StoreUnavailable",
    "Subscription",
    "TakenDownRecord",
    "Transaction",
    "Undelivered",
    "UpdateConflict",
    "UpdatesNotAllowed",
    "WorkerLiveness",
    "WriteConflict",
    "not_answering_advice",
    "shown_url",
]
