"""The adapter contract: everything an adapter author needs to know, in one module.

An adapter connects civicbus to one kind of back-end. It is registered under the
`civicbus.adapters` entry-point group, is constructed once per configured instance with that
instance's settings and mapping, and must make `submit` idempotent by the civicbus request id
(stored as the back-end's external reference, and looked up by `find` before creating).

Failures are raised typed (adapters/_exceptions.py): `TransientError` is retried (quick tries,
then the retry tiers, up to the instance's `max_attempts`), `PermanentError` goes to the dead
letter channel at once; any other exception counts as transient.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, ClassVar

from schemas.model import ServiceRequest, Status, StatusUpdate


@dataclass(frozen=True)
class Receipt:
    """Proof that the back-end holds the work: its own reference for the request."""

    request_id: str
    reference: str
    #: False when `submit` found the work already there (a redelivery) and created nothing.
    created: bool = True
    status: Status | None = None
    at: datetime = field(default_factory=lambda: datetime.now(UTC))


@dataclass(frozen=True)
class UpdatePage:
    """Status changes since a watermark, and the watermark to ask from next time.

    The watermark is opaque to civicbus (a timestamp, a sequence number, a cursor): the adapter
    alone knows its back-end's clock, so it alone decides how to miss nothing and repeat nothing.
    """

    updates: tuple[StatusUpdate, ...]
    watermark: str | None
    #: Changes of the page that cannot become updates, skipped so that later ones are read: the
    #: poller logs them and audits them in their request's trail.
    skipped: tuple[SkippedChange, ...] = ()


@dataclass(frozen=True)
class SkippedChange:
    """A back-end change that cannot become a StatusUpdate: a status code the mapping lacks, a
    field missing or unreadable. Its texts name fields and codes, never values a clerk wrote
    (a note may quote a resident)."""

    #: The back-end's name of the change, e.g. `work order 12`, `change 7`.
    change: str
    problem: str
    #: The civicbus request the change is about, when the back-end's data says.
    request_id: str | None = None
    #: What the operator can do, when there is something (e.g. a line to add to the mapping).
    fix: str | None = None


@dataclass(frozen=True)
class Health:
    """Whether the back-end can be reached now, and if not, what to do about it."""

    ok: bool
    detail: str = ""


class Adapter(ABC):
    """Base class of every adapter kind.

    Constructor arguments: the instance name from config, the instance's settings (secrets
    already resolved from the environment), and its mapping (a parsed mapping file, or None
    for adapters that need none, such as webhooks). A constructor refuses settings it cannot
    work with by raising ValueError with a message naming the instance and the setting; it
    connects to nothing (the back-end may be down when the worker starts).
    """

    #: The kind name this class registers as (the entry-point name).
    kind: ClassVar[str]
    #: Whether `updates` is meaningful; back-ends that push use the inbound API instead.
    polls: ClassVar[bool] = False
    #: Back-end fields the instance's mapping must define (checked when the instance is built).
    mapping_fields: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, instance: str, settings: Mapping[str, Any], mapping: Any = None) -> None:
        self.instance = instance
        self.settings = settings
        self.mapping = mapping

    @abstractmethod
    def submit(self, request: ServiceRequest) -> Receipt:
        """Create the work in the back-end; idempotent by `request.id`."""

    @abstractmethod
    def find(self, request_id: str) -> Receipt | None:
        """Look the request up by its external reference; None when the back-end lacks it."""

    def updates(self, since: str | None) -> UpdatePage:
        """Status changes after watermark `since` (None: from the beginning)."""
        return UpdatePage(updates=(), watermark=since)

    @abstractmethod
    def check(self) -> Health:
        """Can the back-end be reached now, with these settings?"""

    def close(self) -> None:  # noqa: B027 - optional hook, nothing to release by default
        """Release connections and pools."""
