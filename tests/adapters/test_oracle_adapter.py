"""The Oracle work-order adapter on PostgreSQL and SQLite: fields, idempotency, polling, errors."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa
import sqlalchemy.exc as sa_exc
from backends_support import a_request, free_port, mapping_without_status
from oracle_support import adapter_for, prepared, rows, silent_server
from pyproj import Transformer

from adapters import PermanentError, TransientError
from adapters.oracle import OracleAdapter
from adapters.oracle import _statements as sql
from adapters.oracle._errors import db_errors
from civicbus.sandbox.workorders import set_status
from schemas.model import Location, ServiceRequest, Status

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(params=["postgres", "sqlite"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "postgres":
        return prepared(request.getfixturevalue("postgres_url"))
    return prepared(f"sqlite:///{tmp_path}/workorders.db")


def streetlight(**changes: Any) -> ServiceRequest:
    fields: dict[str, Any] = {
        "service_name": "Streetlight out",
        "description": "Dark since Tuesday",
        "attributes": {"POLE_NUMBER": "SL-0042"},
        "location": Location(lat=39.8012, long=-89.6436, address="Main Street by the library"),
    }
    fields.update(changes)
    return a_request(fields.pop("service_code", "STREETLIGHT"), **fields)


def test_the_work_order_carries_the_mapped_and_projected_fields(db_url: str) -> None:
    request = streetlight()
    receipt = adapter_for(db_url).submit(request)

    [row] = rows(db_url, request.id)
    assert receipt.created and receipt.reference == str(row.id)
    assert receipt.status is Status.OPEN
    assert (row.work_type, row.priority, row.status) == ("LIGHTING", 2, "NEW")
    assert row.address == "Main Street by the library"
    assert row.description.startswith("Dark since Tuesday\nPole: SL-0042")
    x, y = Transformer.from_crs("EPSG:4326", "EPSG:32616", always_xy=True).transform(
        -89.6436, 39.8012
    )
    assert row.x == pytest.approx(x, abs=0.001) and row.y == pytest.approx(y, abs=0.001)
    assert 270_000 < row.x < 280_000 and 4_400_000 < row.y < 4_420_000  # UTM 16N, metres
    assert "Marge" not in str(row) and "resident@example.org" not in str(row)


def test_accented_text_is_cut_to_the_columns_length_in_bytes(postgres_url: str) -> None:
    # Oracle's VARCHAR2(n) under the default BYTE semantics holds n bytes (else ORA-12899, a dead
    # letter); PostgreSQL counts characters, so byte-sized columns are imitated by checks.
    url = prepared(postgres_url)
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        for column, size in (("description", 2000), ("address", 200)):
            conn.execute(sa.text(f"ALTER TABLE work_orders ADD CONSTRAINT {column}_bytes "
                                 f"CHECK (octet_length({column}) <= {size})"))  # fmt: skip
    engine.dispose()
    request = streetlight(
        description="Lampe défectueuse, câble arraché près de l'église. " * 60,
        location=Location(lat=39.8012, long=-89.6436, address="Rue de l'Église, " * 15),
    )

    adapter_for(url).submit(request)

    [row] = rows(url, request.id)
    assert 1900 < len(row.description.encode()) <= 2000
    assert 190 < len(row.address.encode()) <= 200
    assert row.description.startswith("Lampe défectueuse")


def test_a_unique_violation_means_already_there(db_url: str) -> None:
    # Another worker inserted between our find and our insert: the constraint answers.
    request = streetlight()
    adapter = adapter_for(db_url)
    engine = sa.create_engine(db_url)
    with engine.begin() as conn:
        conn.execute(
            sql.insert_work_order(
                request.id, {"work_type": "LIGHTING"}, "NEW", datetime.now(UTC).replace(tzinfo=None)
            )
        )
    engine.dispose()
    receipt = _submit_racing(adapter, request)
    assert receipt.created is False
    assert len(rows(db_url, request.id)) == 1


def _submit_racing(adapter: Any, request: ServiceRequest) -> Any:
    """Submit as if the other insert came just after our look-up (the first find sees nothing)."""
    calls = {"n": 0}
    real_find = type(adapter).find

    def find(request_id: str) -> Any:
        calls["n"] += 1
        return None if calls["n"] == 1 else real_find(adapter, request_id)

    adapter.find = find
    return adapter.submit(request)


def test_a_change_committed_late_inside_the_overlap_is_reported_once(db_url: str) -> None:
    adapter = adapter_for(db_url, poll_overlap_seconds=60)
    early, late = streetlight(), streetlight()
    adapter.submit(early)
    adapter.submit(late)
    _, watermark = _drain(adapter, None)

    set_status(db_url, early.id, "ASSIGNED")
    first, watermark = _drain(adapter, watermark)
    assert [(u.request_id, u.status) for u in first] == [(early.id, Status.ACTION_SCHEDULED)]

    # A transaction that stamped UPDATED_AT 20 s ago commits only now: older than the watermark.
    stamped = datetime.now(UTC) - timedelta(seconds=20)
    set_status(db_url, late.id, "IN_PROGRESS", at=stamped)
    second, watermark = _drain(adapter, watermark)
    assert [(u.request_id, u.status) for u in second] == [(late.id, Status.IN_PROGRESS)]

    again, _ = _drain(adapter, watermark)
    assert again == []  # nothing inside the overlap window is reported twice


def test_a_change_older_than_the_overlap_is_outside_the_window(db_url: str) -> None:
    adapter = adapter_for(db_url, poll_overlap_seconds=5)
    request = streetlight()
    adapter.submit(request)
    _, watermark = _drain(adapter, None)
    set_status(db_url, request.id, "DONE", at=datetime.now(UTC) - timedelta(minutes=10))
    missed, _ = _drain(adapter, watermark)
    assert missed == []  # the overlap is the promise: size it above the longest transaction


def _drain(adapter: Any, since: str | None) -> tuple[list[Any], str | None]:
    page = adapter.updates(since)
    return list(page.updates), page.watermark


def test_a_request_the_mapping_cannot_place_is_permanent(db_url: str) -> None:
    with pytest.raises(PermanentError, match="work_type"):
        adapter_for(db_url).submit(streetlight(service_code="GRAFFITI"))


def test_an_unreachable_postgres_is_transient() -> None:
    url = f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/x?connect_timeout=2"
    adapter = adapter_for(url)
    with pytest.raises(TransientError):
        adapter.submit(streetlight())
    health = adapter.check()
    assert not health.ok and "OperationalError" in health.detail


def test_an_unreachable_oracle_in_thin_mode_is_transient() -> None:
    pytest.importorskip("oracledb")
    url = f"oracle+oracledb://civicbus:secret@127.0.0.1:{free_port()}/?service_name=FREEPDB1"
    adapter = adapter_for(url, pool_timeout=2)
    with pytest.raises(TransientError) as caught:
        adapter.find("req-x")
    assert "DPY-6005" in str(caught.value) or "ORA-12541" in str(caught.value)
    assert "secret" not in adapter.check().detail


def test_a_call_longer_than_call_timeout_is_cut_off_and_retried(postgres_url: str) -> None:
    # Another transaction inserted the same EXTERNAL_REF and has not committed: our insert
    # waits on the unique index, as it would behind a hung database.
    request = streetlight()
    url = prepared(postgres_url)
    other = sa.create_engine(url)
    with other.connect() as blocker:
        blocker.execute(
            sql.insert_work_order(request.id, {"work_type": "LIGHTING"}, "NEW", datetime.now())
        )
        started = time.monotonic()
        with pytest.raises(TransientError, match="QueryCanceled"):
            adapter_for(url, call_timeout=1).submit(request)
        assert time.monotonic() - started < 10
        blocker.rollback()
    other.dispose()


def test_a_postgres_that_never_answers_the_connect_is_transient() -> None:
    with silent_server() as port:
        adapter = adapter_for(
            f"postgresql+psycopg://postgres@127.0.0.1:{port}/x", connect_timeout=1
        )
        started = time.monotonic()
        with pytest.raises(TransientError):
            adapter.find("req-x")
        assert time.monotonic() - started < 10  # libpq's least connect_timeout is 2 s


def test_an_oracle_host_that_drops_the_connect_is_transient_after_connect_timeout() -> None:
    pytest.importorskip("oracledb")
    with silent_server(full=True) as port:
        url = f"oracle+oracledb://civicbus:secret@127.0.0.1:{port}/?service_name=FREEPDB1"
        adapter = adapter_for(url, connect_timeout=1)
        started = time.monotonic()
        with pytest.raises(TransientError, match="DPY-6005"):
            adapter.find("req-x")
        assert time.monotonic() - started < 5  # python-oracledb's own default is 20 s


def test_each_oracle_connection_gets_the_call_timeout_in_milliseconds() -> None:
    pytest.importorskip("oracledb")
    # No Oracle here: the listener SQLAlchemy calls on each new connection, on a stand-in.
    url = "oracle+oracledb://civicbus:secret@db.invalid/?service_name=W"
    adapter = adapter_for(url, call_timeout=2.5)
    assert sa.event.contains(adapter.engine, "connect", adapter.timeouts.set_call_timeout)
    connection = SimpleNamespace()
    adapter.timeouts.set_call_timeout(connection, None)
    assert connection.call_timeout == 2500  # oracledb's unit; exceeded: DPY-4024, retried


def test_a_statement_timeout_in_the_postgres_url_wins(postgres_url: str) -> None:
    url = sa.make_url(postgres_url).update_query_dict({"options": "-c statement_timeout=7s"})
    adapter = adapter_for(url.render_as_string(hide_password=False), call_timeout=1)
    with adapter.engine.connect() as conn:
        assert conn.execute(sa.text("SHOW statement_timeout")).scalar() == "7s"
    adapter.close()


@pytest.mark.parametrize("setting", ["call_timeout", "connect_timeout"])
def test_a_timeout_must_be_positive(setting: str) -> None:
    with pytest.raises(ValueError, match="positive"):
        adapter_for("sqlite://", **{setting: 0})


@pytest.mark.parametrize(
    ("code", "kind"),
    [
        ("ORA-12541: TNS:no listener", TransientError),
        ("ORA-03113: end-of-file on communication channel", TransientError),
        ("ORA-12170: TNS:Connect timeout occurred", TransientError),
        ("DPY-4024: call timeout of 30000 ms exceeded", TransientError),
        ("ORA-00060: deadlock detected while waiting for resource", TransientError),
        ('ORA-01400: cannot insert NULL into ("CIVIC"."WORK_ORDERS"."WORK_TYPE")', PermanentError),
        ("ORA-12899: value too large for column", PermanentError),
        (
            "ORA-00001: unique constraint (CIVIC.UQ_WORK_ORDERS_EXTERNAL_REF) violated",
            PermanentError,
        ),
    ],
)
def test_oracle_error_codes_are_classified_by_one_table(code: str, kind: type) -> None:
    # Oracle cannot run here: the driver error is built as python-oracledb words it.
    wrapped = sa_exc.DatabaseError(
        "INSERT ...", {"description": "a resident's words"}, Exception(code)
    )
    with pytest.raises(kind) as caught, db_errors("oracle adapter t: create"):
        raise wrapped
    assert code.split(":")[0] in str(caught.value)
    assert "resident" not in str(caught.value)  # bound values never reach the message


CHICAGO = ZoneInfo("America/Chicago")


def test_times_are_written_and_read_in_the_databases_time_zone(db_url: str) -> None:
    adapter = adapter_for(db_url, timezone="America/Chicago")
    request = streetlight()
    adapter.submit(request)
    (row,) = rows(db_url, request.id)
    # The back office's clerks and reports read the local time: so does the new work order.
    local_now = datetime.now(CHICAGO).replace(tzinfo=None)
    assert abs(row.created_at - local_now) < timedelta(minutes=1)
    _, watermark = _drain(adapter, None)

    changed = datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=20)
    set_status(db_url, request.id, "ASSIGNED", at=changed, zone=CHICAGO)
    (update,), _ = _drain(adapter, watermark)
    assert (update.status, update.at) == (Status.ACTION_SCHEDULED, changed)


def test_changes_in_the_hour_repeated_when_clocks_go_back_are_each_reported_once(
    db_url: str,
) -> None:
    """On 2026-11-01 Chicago lives 01:00-02:00 twice, first as CDT (UTC-5), then as CST (UTC-6),
    and the table holds local times: a change at 01:10 CST (07:10Z) read as 01:10 CDT (06:10Z)
    would lie before the watermark (01:50 CDT, 06:50Z) minus the overlap, and be dropped."""
    adapter = adapter_for(db_url, timezone="America/Chicago", poll_overlap_seconds=60)
    assert adapter.clock.clock_back == timedelta(hours=1)
    a, b = streetlight(), streetlight()
    adapter.submit(a)
    adapter.submit(b)

    def at(utc: str) -> datetime:
        return datetime.fromisoformat(f"2026-11-01T{utc}:00+00:00")

    def poll(since: str | None) -> tuple[list[tuple[str, Status, datetime]], str | None]:
        page = adapter.updates(since)
        return [(u.request_id, u.status, u.at) for u in page.updates], page.watermark

    for request in (a, b):  # back before the night of the change
        set_status(db_url, request.id, "NEW", at=at("04:00"), zone=CHICAGO)
    _, mark = poll(None)

    set_status(db_url, a.id, "ASSIGNED", at=at("06:50"), zone=CHICAGO)  # 01:50 CDT
    assert poll(mark)[0] == [(a.id, Status.ACTION_SCHEDULED, at("06:50"))]
    _, mark = poll(mark)

    set_status(db_url, b.id, "IN_PROGRESS", at=at("07:10"), zone=CHICAGO)  # 01:10 CST
    reported, mark = poll(mark)
    assert reported == [(b.id, Status.IN_PROGRESS, at("07:10"))]

    set_status(db_url, a.id, "DONE", at=at("07:20"), zone=CHICAGO)  # 01:20 CST
    reported, mark = poll(mark)
    assert reported == [(a.id, Status.FIXED, at("07:20"))]  # after its 06:50Z change: applies
    assert poll(mark)[0] == []


def test_an_unknown_time_zone_is_refused_when_the_adapter_is_built(db_url: str) -> None:
    with pytest.raises(ValueError, match="timezone: unknown time zone 'Mars/Olympus'"):
        adapter_for(db_url, timezone="Mars/Olympus")


def test_a_status_the_mapping_lacks_is_skipped_for_the_poller_with_the_fix(db_url: str) -> None:
    adapter = OracleAdapter(
        "oracle-facilities",
        {"url": db_url},
        mapping_without_status("oracle-facilities.yaml", "DONE"),
    )
    done, assigned = streetlight(), streetlight()
    adapter.submit(done)
    adapter.submit(assigned)
    _, watermark = _drain(adapter, None)
    order = set_status(db_url, done.id, "DONE")
    set_status(db_url, assigned.id, "ASSIGNED")

    page = adapter.updates(watermark)
    assert [(u.request_id, u.status) for u in page.updates] == [
        (assigned.id, Status.ACTION_SCHEDULED)
    ]
    [skipped] = page.skipped
    assert (skipped.change, skipped.request_id) == (f"work order {order}", done.id)
    assert skipped.fix == "add `DONE: <canonical status>` under `statuses`"
