"""The status poller against a real SQLite store (PostgreSQL where it refuses what SQLite
keeps): each change recorded once, the watermark moving, one update that cannot be recorded
skipped and audited, one copy polling an instance at a time."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from structlog.testing import capture_logs
from worker_support import new_request, wait_until

from adapters import Adapter, Health, Receipt, SkippedChange, UpdatePage
from adapters.mapping import Mapping, load_mapping, parse_mapping
from adapters.parks import ParksAdapter
from bus.poller import Poller, lease_name
from bus.store import Store, StoreUnavailable
from civicbus.sandbox.parks import SANDBOX_CLIENT_ID, SANDBOX_CLIENT_SECRET
from civicbus.sandbox.runner import SIMULATORS, ServeOptions
from schemas.events import EventType
from schemas.model import ServiceRequest, Status, StatusUpdate
from tests.asyncapi_support import assert_documented

pytestmark = pytest.mark.timeout(30)


class PollingBackend(Adapter):
    """A back-end whose clerks change statuses; `updates` pages by a sequence number."""

    kind = "test-polling"
    polls = True

    def __init__(self, page_size: int = 2) -> None:
        super().__init__("parks", {})
        self.changes: list[StatusUpdate] = []
        self.page_size = page_size
        self.asked: list[str | None] = []

    def change(
        self, request_id: str, status: Status, *, at: datetime | None = None, **fields: str | None
    ) -> None:
        """A clerk's change, at `at` (now by default); `fields` replace other update fields."""
        seq = len(self.changes) + 1
        self.changes.append(
            StatusUpdate.model_validate(
                {
                    "request_id": request_id,
                    "status": status,
                    "at": at or datetime.now(UTC),
                    "update_id": f"parks-{seq}",
                    "source": "parks",
                    "external_status_code": status.value.upper(),
                    **fields,
                }
            )
        )

    def updates(self, since: str | None) -> UpdatePage:
        self.asked.append(since)
        start = int(since or 0)
        page = self.changes[start : start + self.page_size]
        return UpdatePage(updates=tuple(page), watermark=str(start + len(page)))

    def submit(self, request: ServiceRequest) -> Receipt:
        raise NotImplementedError

    def find(self, request_id: str) -> Receipt | None:
        return None

    def check(self) -> Health:
        return Health(ok=True)


@pytest.fixture
def backend() -> PollingBackend:
    return PollingBackend()


def status_events(store: Store) -> list[tuple[str, str]]:
    return [
        (row.envelope.subject, row.routing_key)
        for row in store.pending_outbox()
        if row.envelope.type in (EventType.STATUS_CHANGED, EventType.CLOSED)
    ]


def test_status_changes_are_recorded_once_with_a_moving_watermark(
    store: Store, backend: PollingBackend
) -> None:
    first = new_request(store).subject
    second = new_request(store).subject
    backend.change(first, Status.IN_PROGRESS)
    backend.change(second, Status.INVESTIGATING)
    backend.change(first, Status.FIXED)
    poller = Poller(store, {"parks": backend}, {"parks": 1.0})

    assert poller.poll_once("parks") == 3
    assert store.watermark("parks") == "3"
    assert backend.asked == [None, "2", "3"]  # two pages, then an empty one
    request = store.get_request(first)
    assert request is not None and request.status is Status.FIXED
    assert [n.status for n in request.history][-2:] == [Status.IN_PROGRESS, Status.FIXED]
    assert sorted(status_events(store)) == sorted(
        [
            (first, "request.status_changed.in_progress"),
            (second, "request.status_changed.investigating"),
            (first, "request.status_changed.fixed"),
            (first, "request.closed.fixed"),
        ]
    )
    for row in store.pending_outbox():
        if row.envelope.type in (EventType.STATUS_CHANGED, EventType.CLOSED):
            assert_documented(row.envelope)

    # Nothing new: nothing recorded, the watermark stays.
    assert poller.poll_once("parks") == 0
    assert store.watermark("parks") == "3"
    backend.change(second, Status.CLOSED)
    assert poller.poll_once("parks") == 1
    assert store.watermark("parks") == "4"
    assert [a.action for a in store.audit_trail(second)].count("status_changed") == 2


def test_a_shared_back_ends_changes_are_recorded_by_the_instance_holding_the_request(
    store: Store, backend: PollingBackend
) -> None:
    # Two instances on one back-end (two departments' accounts on one parks system): each
    # poller reads the other's changes too, and must leave them to it.
    ours, theirs, unsent = (new_request(store).subject for _ in range(3))
    at = datetime.now(UTC)
    with store.transaction() as tx:
        tx.add_backend_ref(ours, "parks", "WR-1", at)
        tx.add_backend_ref(theirs, "sanitation", "WR-2", at)
    backend.change(ours, Status.IN_PROGRESS)
    backend.change(theirs, Status.CLOSED)
    backend.change(unsent, Status.IN_PROGRESS)  # its receipt may not be stored yet: ours
    poller = Poller(store, {"parks": backend}, {"parks": 1.0})

    assert poller.poll_once("parks") == 2
    statuses = {
        r: request.status for r, request in store.get_requests([ours, theirs, unsent]).items()
    }
    assert statuses == {ours: Status.IN_PROGRESS, theirs: Status.OPEN, unsent: Status.IN_PROGRESS}
    assert store.watermark("parks") == "3"  # read past it all the same

    # A change of theirs this instance's mapping cannot read is theirs to skip, not ours: it
    # was audited in the request's trail with the fix for the wrong mapping.
    unreadable = SkippedChange(change="change 9", problem="status code 'X'", request_id=theirs)
    backend.updates = lambda since: UpdatePage(updates=(), watermark="4", skipped=(unreadable,))  # type: ignore[method-assign]
    assert poller.poll_once("parks") == 0
    assert "status_skipped" not in [entry.action for entry in store.audit_trail(theirs)]


def test_a_back_end_repeating_the_status_without_note_media_or_code_records_nothing(
    store: Store, backend: PollingBackend
) -> None:
    request_id = new_request(store).subject
    before = store.get_request(request_id)
    assert before is not None
    backend.change(request_id, before.status, external_status_code=None)
    poller = Poller(store, {"parks": backend}, {"parks": 1.0})

    assert poller.poll_once("parks") == 0
    assert store.watermark("parks") == "1"  # read past, not asked again
    after = store.get_request(request_id)
    assert after is not None and (after.history, after.updated_at) == (
        before.history,
        before.updated_at,
    )
    assert status_events(store) == []
    assert store.audit_trail(request_id) == []


def test_c21_the_first_page_reporting_the_status_a_request_has_publishes_no_status_event(
    store: Store, backend: PollingBackend
) -> None:
    request_id = new_request(store).subject
    before = store.get_request(request_id)
    assert before is not None and before.status is Status.OPEN
    # A parks back-end's first page right after the submit: its NEW, which maps to open.
    backend.change(request_id, Status.OPEN, external_status_code="NEW")
    poller = Poller(store, {"parks": backend}, {"parks": 1.0})

    assert poller.poll_once("parks") == 1
    after = store.get_request(request_id)
    assert after is not None and after.status is Status.OPEN
    # Recorded for Open311 reads (GET /servicerequestupdates shows external_status_code), but
    # the status is the same: subscribers of request.status_changed.* hear nothing.
    assert [(n.update_id, n.external_status_code) for n in after.history] == [("parks-1", "NEW")]
    assert status_events(store) == []
    assert [a.action for a in store.audit_trail(request_id)] == ["status_noted"]

    # A note on the same status is news for residents, not a status change either.
    backend.change(request_id, Status.OPEN, note="crew booked", external_status_code="NEW")
    assert poller.poll_once("parks") == 1
    noted = store.get_request(request_id)
    assert noted is not None and noted.status_notes == "crew booked"
    assert status_events(store) == []

    backend.change(request_id, Status.IN_PROGRESS)
    assert poller.poll_once("parks") == 1
    assert status_events(store) == [(request_id, "request.status_changed.in_progress")]


def test_a_change_delivered_after_a_newer_one_is_history_only(
    store: Store, backend: PollingBackend
) -> None:
    request_id = new_request(store).subject
    now = datetime.now(UTC)
    backend.change(request_id, Status.IN_PROGRESS, at=now)
    # The back-end's page hands out a change made half an hour earlier only now.
    backend.change(request_id, Status.CLOSED, at=now - timedelta(minutes=30))
    poller = Poller(store, {"parks": backend}, {"parks": 1.0})

    assert poller.poll_once("parks") == 2
    request = store.get_request(request_id)
    assert request is not None
    assert (request.status, request.updated_at) == (Status.IN_PROGRESS, now)
    # The history in time order: the change made earlier first, though delivered second.
    assert [n.update_id for n in request.history] == ["parks-2", "parks-1"]
    assert status_events(store) == [(request_id, "request.status_changed.in_progress")]
    (late,) = [a for a in store.audit_trail(request_id) if a.action == "status_history"]
    assert late.details["update_id"] == "parks-2"
    assert late.details["recorded_as"] == "history only: older than the current status"
    assert late.details["current_status"] == "in_progress"


def test_a_crash_before_the_watermark_is_saved_repeats_nothing(
    store: Store, backend: PollingBackend
) -> None:
    request_id = new_request(store).subject
    backend.change(request_id, Status.IN_PROGRESS)
    poller = Poller(store, {"parks": backend}, {"parks": 1.0})
    assert poller.poll_once("parks") == 1
    with store.transaction() as tx:
        tx.set_watermark("parks", None)  # as if the process died before saving it

    assert poller.poll_once("parks") == 0
    request = store.get_request(request_id)
    assert request is not None
    assert [n.update_id for n in request.history if n.update_id] == ["parks-1"]


def test_updates_for_requests_civicbus_never_sent_are_skipped(
    store: Store, backend: PollingBackend
) -> None:
    known = new_request(store).subject
    backend.change("req-not-ours", Status.IN_PROGRESS)
    backend.change(known, Status.IN_PROGRESS)
    poller = Poller(store, {"parks": backend}, {"parks": 1.0})
    assert poller.poll_once("parks") == 1
    assert store.watermark("parks") == "2"


@pytest.fixture
def pg_store(postgres_url: str) -> Iterator[Store]:
    s = Store.open(postgres_url)
    yield s
    s.close()


@pytest.mark.parametrize("field", ["note", "update_id", "external_status_code"])
def test_an_update_with_a_nul_character_is_refused_audited_and_later_ones_recorded(
    pg_store: Store, field: str
) -> None:
    """PostgreSQL cannot store NUL; the API refuses it in a pushed update, so a polled
    one is refused too, before the store is asked. The back-end's later changes still count."""
    store = pg_store
    backend = PollingBackend(page_size=5)
    poison = new_request(store).subject
    healthy = new_request(store).subject
    backend.change(poison, Status.IN_PROGRESS, **{field: "crew\x00 assigned"})
    backend.change(healthy, Status.CLOSED)
    poller = Poller(store, {"parks": backend}, {"parks": 0.01})

    poller._round("parks")
    assert store.watermark("parks") == "2"
    request = store.get_request(healthy)
    assert request is not None and request.status is Status.CLOSED
    untouched = store.get_request(poison)
    assert untouched is not None and untouched.status is Status.OPEN
    refused = [a for a in store.audit_trail(poison) if a.action == "status_refused"]
    assert len(refused) == 1 and refused[0].outcome == "error"
    assert refused[0].details["reason"] == f"{field}: contains control characters"
    assert refused[0].details["status"] == "in_progress"
    if field == "note":  # a clerk's note may quote the resident: not repeated in the audit
        assert "crew" not in str(refused[0].details)


def test_an_update_the_store_refuses_is_skipped_and_audited(
    store: Store, backend: PollingBackend
) -> None:
    """Any value refused on the way into the store skips that update only (here a time without
    a zone, from an adapter that built its update without validating it)."""
    refused_id = new_request(store).subject
    later_id = new_request(store).subject
    backend.change(refused_id, Status.IN_PROGRESS)
    backend.changes[-1] = backend.changes[-1].model_construct(
        **{**dict(backend.changes[-1]), "at": datetime.now()}
    )
    backend.change(later_id, Status.IN_PROGRESS)
    poller = Poller(store, {"parks": backend}, {"parks": 1.0})

    assert poller.poll_once("parks") == 1
    assert store.watermark("parks") == "2"
    [entry] = [a for a in store.audit_trail(refused_id) if a.action == "status_refused"]
    assert entry.details["reason"].startswith("ValidationError")
    later = store.get_request(later_id)
    assert later is not None and later.status is Status.IN_PROGRESS


def test_a_store_outage_stops_the_round_and_the_page_is_read_again(sqlite_url: str) -> None:
    """Unlike a refused value, an outage says nothing about the update: nothing is skipped."""
    store = Store.open(sqlite_url + "?timeout=0.2")
    request_id = new_request(store).subject
    holder = sqlite3.connect(sqlite_url.removeprefix("sqlite:///"), isolation_level=None)

    class LockedWhileFirstPolled(PollingBackend):
        def updates(self, since: str | None) -> UpdatePage:
            if not self.asked:
                holder.execute("BEGIN IMMEDIATE")  # another process takes the write lock
            return super().updates(since)

    backend = LockedWhileFirstPolled()
    backend.change(request_id, Status.IN_PROGRESS)
    poller = Poller(store, {"parks": backend}, {"parks": 1.0})
    try:
        with pytest.raises(StoreUnavailable, match="locked"):
            poller.poll_once("parks")
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert store.watermark("parks") is None

    assert poller.poll_once("parks") == 1
    assert store.watermark("parks") == "1"
    actions = [a.action for a in store.audit_trail(request_id)]
    assert "status_changed" in actions and "status_refused" not in actions
    store.close()


def test_only_the_lease_holder_polls_an_instance(store: Store, backend: PollingBackend) -> None:
    new_request(store)
    one = Poller(store, {"parks": backend}, {"parks": 1.0}, holder="one")
    two = Poller(store, {"parks": backend}, {"parks": 1.0}, holder="two")
    assert one.poll_once("parks") == 0
    assert two.poll_once("parks") is None
    assert store.release_lease(lease_name("parks"), "one")
    assert two.poll_once("parks") == 0


def test_the_poller_loop_records_changes_and_stops(store: Store, backend: PollingBackend) -> None:
    request_id = new_request(store).subject
    poller = Poller(store, {"parks": backend}, {"parks": 0.1})
    thread = threading.Thread(target=poller.run)
    thread.start()
    try:
        backend.change(request_id, Status.ACTION_SCHEDULED)
        wait_until(lambda: status_events(store), what="the status change")
    finally:
        poller.stop.set()
        thread.join(timeout=10)
    assert not thread.is_alive()
    assert store.try_lease(lease_name("parks"), "someone-else", 10)  # released on stop


def test_failing_rounds_are_kept_in_the_store_until_a_round_completes(store: Store) -> None:
    """So `civicbus status` and /metrics see a poller that keeps failing, not only its log."""
    down = threading.Event()
    down.set()

    class Unreachable(PollingBackend):
        def updates(self, since: str | None) -> UpdatePage:
            if down.is_set():
                raise ConnectionError("parks back-end refused the connection")
            return super().updates(since)

    backend = Unreachable()
    backend.change(new_request(store).subject, Status.IN_PROGRESS)
    poller = Poller(store, {"parks": backend}, {"parks": 0.05})
    thread = threading.Thread(target=poller.run)
    thread.start()
    try:
        wait_until(
            lambda: (r := store.overview().pollers.get("parks")) and r.failed_rounds >= 2,
            what="two failed rounds",
        )
        failing = store.overview().pollers["parks"]
        down.clear()
        wait_until(lambda: store.overview().pollers["parks"].failing_since is None, what="a round")
    finally:
        poller.stop.set()
        thread.join(timeout=10)

    assert failing.polled_at is None and failing.failing_since is not None
    assert failing.last_error == "ConnectionError: parks back-end refused the connection"
    recovered = store.overview().pollers["parks"]
    assert recovered.failed_rounds >= failing.failed_rounds  # a count, never reset
    assert recovered.polled_at is not None and recovered.polled_at > failing.failing_since
    assert store.watermark("parks") == "1"


#: What a back-end's clerk may write: a resident's words, quoted in an exception's text.
CLERK_NOTE = "Resident Marge Simpson (555-0100) says the bench is still broken. " * 70


@pytest.mark.parametrize(
    ("failure", "reason"),
    [
        # An adapter that validates a too-long note inside `updates` (pydantic quotes it).
        (
            lambda: StatusUpdate.model_validate(
                {
                    "request_id": "r",
                    "status": "open",
                    "at": datetime.now(UTC),
                    "update_id": "u",
                    "source": "parks",
                    "note": CLERK_NOTE,
                }
            ),
            "ValidationError: StatusUpdate note: string_too_long",
        ),
        (lambda: {}[CLERK_NOTE], "KeyError (raised in worker/test_poller.py"),
    ],
    ids=["validation-error", "key-error"],
)
def test_a_failing_round_logs_and_keeps_no_back_end_text(
    store: Store, failure: Callable[[], object], reason: str
) -> None:
    """The round's failure goes to the log and into the store (`civicbus status`, /metrics):
    an exception's text may quote back-end data, so only its type and fields are kept."""

    class Failing(PollingBackend):
        def updates(self, since: str | None) -> UpdatePage:
            failure()
            raise AssertionError("unreachable")

    poller = Poller(store, {"parks": Failing()}, {"parks": 1.0})
    with capture_logs() as logs:
        poller._round("parks")

    [failed] = [e for e in logs if e["event"] == "poller.round_failed"]
    stored = store.overview().pollers["parks"].last_error
    assert stored is not None and stored.startswith(reason) and failed["error"] == stored
    assert "Marge" not in str(logs) and "Marge" not in stored
    assert store.watermark("parks") is None


MAPPINGS = Path(__file__).resolve().parents[2] / "mappings"


@contextmanager
def parks_system(
    tmp_path: Path, mapping: Mapping
) -> Iterator[tuple[ParksAdapter, Callable[..., None]]]:
    """The parks simulator on a free port, an adapter for it, and how its clerks change a
    work request (`move(path, **body)` on its control API)."""
    parks = SIMULATORS["parks"].serve(ServeOptions(state_dir=tmp_path, port=0))
    adapter = ParksAdapter(
        "parks",
        {
            "base_url": parks.url,
            "client_id": SANDBOX_CLIENT_ID,
            "client_secret": SANDBOX_CLIENT_SECRET,
            "timeout": 5,
        },
        mapping,
    )

    def move(path: str, **body: str) -> None:
        url = f"{parks.control_url}/_sandbox{path}"
        httpx.post(url, json=body or None, timeout=5).raise_for_status()

    try:
        yield adapter, move
    finally:
        adapter.close()
        parks.stop()


def submitted_to_parks(store: Store, adapter: ParksAdapter, count: int) -> list[str]:
    """`count` new requests, submitted to the parks system."""
    ids = [new_request(store).subject for _ in range(count)]
    for request in store.get_requests(set(ids)).values():
        adapter.submit(request.model_copy(update={"service_code": "PARK_BENCH"}))
    return ids


def test_a_clerks_note_too_long_for_an_update_is_recorded_cut_and_later_changes_too(
    store: Store, tmp_path: Path
) -> None:
    """Against the parks simulator: the note was refused inside the adapter's `updates`, the
    whole page failed, and no later change of the parks system was ever recorded."""
    with parks_system(tmp_path, load_mapping(MAPPINGS / "parks.yaml")) as (adapter, move):
        ids = submitted_to_parks(store, adapter, 2)
        poller = Poller(store, {"parks": adapter}, {"parks": 1.0})
        poller._round("parks")
        start = store.watermark("parks")
        move(f"/items/{ids[0]}/status", status="COMPLETED", note=CLERK_NOTE)
        move(f"/items/{ids[1]}/advance")
        with capture_logs() as logs:
            poller._round("parks")

    assert store.watermark("parks") != start
    first, second = (store.get_request(i) for i in ids)
    assert first is not None and first.status is Status.FIXED
    assert second is not None and second.status is Status.INVESTIGATING
    note = first.history[-1].note
    assert note is not None and len(note) == 4000 and note == CLERK_NOTE[:3999] + "…"
    assert not [e for e in logs if e["event"] == "poller.round_failed"]


def test_a_status_code_the_mapping_lacks_is_audited_in_its_requests_trail_with_the_fix(
    store: Store, tmp_path: Path
) -> None:
    """The parks system marks a work request DUPLICATE, a code the city's mapping lacks: the
    change is skipped (later ones still arrive), and an operator asking why the request never
    moved finds it in its trail, with the line to add; it was in the log only."""
    text = (MAPPINGS / "parks.yaml").read_text()
    lacking = "\n".join(ln for ln in text.splitlines() if not ln.strip().startswith("DUPLICATE:"))
    mapping = parse_mapping(lacking, source=str(MAPPINGS / "parks.yaml"), base_dir=MAPPINGS)
    with parks_system(tmp_path, mapping) as (adapter, move):
        duplicate, other = submitted_to_parks(store, adapter, 2)
        poller = Poller(store, {"parks": adapter}, {"parks": 1.0})
        poller._round("parks")
        move(f"/items/{duplicate}/status", status="DUPLICATE", note="same as Marge's report")
        move(f"/items/{other}/advance")
        poller._round("parks")
        poller._round("parks")  # read past: audited once

    moved = store.get_request(other)
    assert moved is not None and moved.status is Status.INVESTIGATING
    [skipped] = [a for a in store.audit_trail(duplicate) if a.action == "status_skipped"]
    assert skipped.actor == "poller:parks" and skipped.outcome == "skipped"
    assert skipped.details["problem"] == (
        f"status code 'DUPLICATE' is not in the mapping {MAPPINGS / 'parks.yaml'}"
    )
    assert skipped.details["fix"] == "add `DUPLICATE: <canonical status>` under `statuses`"
    assert skipped.details["change"].startswith("change ")
    assert "Marge" not in str(skipped.details)  # the clerk's note is not repeated
