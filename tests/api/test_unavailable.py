"""When the store cannot take work: 503 with Retry-After, and nothing half-written (C-07)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from bus.api import create_app
from tests.api.conftest import (
    SPRINGFIELD,
    LiveServer,
    make_runtime,
    pothole_form,
    unreachable_store_runtime,
)


def test_c07_locked_store_gives_503_with_retry_after_and_writes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "civicbus.db"
    runtime = make_runtime(f"sqlite:///{path}?timeout=0.2", tmp_path / "media")
    _, key = runtime.store.add_client("app")
    form = {
        "api_key": key,
        "jurisdiction_id": SPRINGFIELD,
        "service_code": "STREET_SIGN",
        "address_string": "Main St",
    }
    with LiveServer(create_app(runtime)) as live:
        url = f"{live.url}/open311/v2/requests"
        before = len(runtime.store.pending_outbox(10_000))
        blocker = sqlite3.connect(path, timeout=0)
        blocker.execute("BEGIN EXCLUSIVE")  # another writer holds the database
        try:
            for fmt in ("json", "xml"):
                response = httpx.post(f"{url}.{fmt}", data=form, timeout=10)
                assert response.status_code == 503, response.text
                assert int(response.headers["retry-after"]) > 0
            assert response.headers["content-type"] == "text/xml; charset=utf-8"
        finally:
            blocker.rollback()
            blocker.close()
        assert len(runtime.store.pending_outbox(10_000)) == before
        ok = httpx.post(f"{url}.json", data=form, timeout=10)
        assert ok.status_code == 200
        assert len(runtime.store.pending_outbox(10_000)) == before + 1
    runtime.close()


def test_c07_unreachable_database_gives_503_on_reads(tmp_path: Path) -> None:
    runtime = unreachable_store_runtime(tmp_path)
    with LiveServer(create_app(runtime)) as live:
        response = httpx.get(
            f"{live.url}/open311/v2/requests.json", params={"jurisdiction_id": SPRINGFIELD}
        )
        assert response.status_code == 503
        assert response.headers["retry-after"]
        assert response.json()[0]["code"] == 503
        assert httpx.get(f"{live.url}/healthz").status_code == 503
        # what needs no store still works
        services = httpx.get(
            f"{live.url}/open311/v2/services.json", params={"jurisdiction_id": SPRINGFIELD}
        )
        assert services.status_code == 200


def _set_read_only(url: str, on: bool) -> None:
    engine = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        database = conn.execute(sa.text("SELECT current_database()")).scalar()
        conn.execute(sa.text("SET default_transaction_read_only = off"))  # for this session
        value = "on" if on else "off"
        conn.execute(
            sa.text(f'ALTER DATABASE "{database}" SET default_transaction_read_only = {value}')
        )
    engine.dispose()


@pytest.mark.postgres
def test_c07_a_read_only_postgresql_gives_503_with_retry_after(
    postgres_url: str, tmp_path: Path
) -> None:
    """After a fail-over the old primary may come back read-only (a standby, or
    default_transaction_read_only): writes fail with SQLSTATE 25006, which psycopg raises as
    an InternalError, not as the OperationalError of a lost connection."""
    runtime = make_runtime(postgres_url, tmp_path / "media")
    _, key = runtime.store.add_client("ro-app", may_post_updates=True)
    try:
        with LiveServer(create_app(runtime)) as live:
            url = f"{live.url}/open311/v2"
            created = httpx.post(f"{url}/requests.json", data=pothole_form(key), timeout=10)
            request_id = created.json()[0]["service_request_id"]
            _set_read_only(postgres_url, True)
            runtime.store._engine.dispose()  # new sessions take the setting up
            update = {
                "api_key": key,
                "service_request_id": request_id,
                "update_id": "U-ro",
                "status": "IN_PROGRESS",
                "updated_datetime": "2026-01-01T00:00:00Z",
            }
            for response in (
                httpx.post(f"{url}/requests.json", data=pothole_form(key), timeout=10),
                httpx.post(f"{url}/servicerequestupdates.json", data=update, timeout=10),
            ):
                assert response.status_code == 503, response.text
                assert int(response.headers["retry-after"]) > 0
    finally:
        _set_read_only(postgres_url, False)
        runtime.close()
