"""Alembic migrations: empty to head on both databases, matching the tables the code uses."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy.exc as sa_exc
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from bus.store import DeadLetterState, SchemaTooNew, Store
from bus.store._migrate import alembic_config, current_revision, head_revision, migrating
from bus.store._tables import metadata
from schemas.model import Reporter, Status, StatusUpdate
from tests.store.store_factories import T0, make_request, minutes


def test_an_empty_database_migrates_to_head_and_matches_the_tables(store_url: str) -> None:
    store = Store(store_url)
    store.upgrade()

    with store._engine.connect() as conn:
        assert current_revision(conn) == head_revision()
        differences = compare_metadata(MigrationContext.configure(conn), metadata)
    assert differences == []
    store.close()


def test_downgrade_to_base_and_upgrade_again(store_url: str) -> None:
    store = Store.open(store_url)
    with migrating(store._writer) as conn:
        command.downgrade(alembic_config(conn), "base")
    with store._engine.connect() as conn:
        assert current_revision(conn) is None
    store.upgrade()
    assert store.verify_audit().ok
    store.close()


def test_several_processes_opening_a_new_store_at_once_migrate_it_once(store_url: str) -> None:
    errors: list[BaseException] = []
    stores: list[Store] = []

    def open_store() -> None:
        try:
            stores.append(Store.open(store_url))
        except BaseException as error:  # reported below
            errors.append(error)

    threads = [threading.Thread(target=open_store) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    with stores[0].transaction() as tx:
        tx.audit(actor="test", action="opened")
    assert stores[-1].verify_audit().entries == 1
    for store in stores:
        store.close()


def test_a_database_migrated_by_a_newer_civicbus_is_refused_clearly(store_url: str) -> None:
    store = Store.open(store_url)
    with store._engine.begin() as conn:
        conn.exec_driver_sql("UPDATE alembic_version SET version_num = '9999_from_the_future'")
    store.close()

    with pytest.raises(SchemaTooNew, match="9999_from_the_future"):
        Store.open(store_url)


_CHILD_TABLES = ("reporters", "status_history", "backend_refs", "batch_tokens")


def _rows(store: Store) -> dict[str, int]:
    with store._engine.connect() as conn:
        return {
            table: conn.exec_driver_sql(f"SELECT count(*) FROM {table}").scalar_one()
            for table in ("requests", *_CHILD_TABLES)
        }


def test_migrations_that_rebuild_requests_keep_every_row_that_refers_to_a_request(
    store_url: str,
) -> None:
    # 0007's downgrade and 0008's upgrade rebuild `requests` on SQLite (copy, drop, rename); with
    # foreign keys on, the drop deleted each request's reporter, history and references.
    store = Store.open(store_url)
    with store.transaction() as tx:
        tx.add_request(make_request("r-1", reporter=Reporter(email="ann@example.org")), token="t")
        tx.add_backend_ref("r-1", "sap-roads", "4711", T0)
        tx.apply_status_update(
            StatusUpdate(
                request_id="r-1",
                status=Status.CLOSED,
                at=T0 + minutes(5),
                update_id="u-1",
                source="sap-roads",
                note="fixed",
            )
        )
    request = store.get_request("r-1")
    rows = _rows(store)
    assert rows == {
        "requests": 1,
        "reporters": 1,
        "status_history": 1,
        "backend_refs": 1,
        "batch_tokens": 1,
    }

    with migrating(store._writer) as conn:
        command.downgrade(alembic_config(conn), "0006")
    assert _rows(store) == rows
    store.upgrade()

    assert _rows(store) == rows
    after = store.get_request("r-1")
    assert after is not None and request is not None
    # changed_at is dated anew by 0008 (its own test); all else reads as before.
    assert after.model_dump(exclude={"changed_at"}) == request.model_dump(exclude={"changed_at"})
    store.close()


def test_a_migration_leaving_a_row_that_refers_to_nothing_changes_nothing(tmp_path) -> None:
    store = Store.open(f"sqlite:///{tmp_path}/store.db")
    refused = pytest.raises(RuntimeError, match=r"1 rows referring .*backend_refs -> requests")
    with refused, migrating(store._writer) as conn:
        command.downgrade(alembic_config(conn), "0006")
        conn.exec_driver_sql(
            "INSERT INTO backend_refs (request_id, adapter, reference, at) "
            "VALUES ('no-such-request', 'sap-roads', '4711', CURRENT_TIMESTAMP)"
        )

    with store._engine.connect() as conn:
        assert current_revision(conn) == head_revision()
        assert conn.exec_driver_sql("SELECT count(*) FROM backend_refs").scalar_one() == 0
    store.close()


def test_foreign_keys_hold_again_once_a_migration_is_over(tmp_path) -> None:
    store = Store.open(f"sqlite:///{tmp_path}/store.db")
    with migrating(store._writer) as conn:
        command.downgrade(alembic_config(conn), "0008")
    store.upgrade()

    refused = pytest.raises(sa_exc.IntegrityError, match="FOREIGN KEY")
    with refused, store._writer.begin() as conn:
        conn.exec_driver_sql(
            "INSERT INTO backend_refs (request_id, adapter, reference, at) "
            "VALUES ('no-such-request', 'sap-roads', '4711', CURRENT_TIMESTAMP)"
        )
    store.close()


def test_0002_keeps_the_watermarks_and_starts_with_no_failed_rounds(store_url: str) -> None:
    store = Store.open(store_url)
    with migrating(store._writer) as conn:
        command.downgrade(alembic_config(conn), "0001")
        conn.exec_driver_sql(
            "INSERT INTO adapter_watermarks (instance, watermark, updated_at) "
            "VALUES ('parks', '41', CURRENT_TIMESTAMP)"
        )
    store.upgrade()

    assert store.watermark("parks") == "41"
    rounds = store.overview().pollers["parks"]
    assert (rounds.polled_at, rounds.failing_since, rounds.failed_rounds) == (None, None, 0)
    with store.transaction() as tx:
        tx.poll_round_failed("parks", "ConnectError: refused")
    assert store.overview().pollers["parks"].failed_rounds == 1
    store.close()


def test_0005_stamps_dead_letters_resolved_before_it_with_the_upgrade_time(store_url: str) -> None:
    store = Store.open(store_url)
    with migrating(store._writer) as conn:
        command.downgrade(alembic_config(conn), "0004")
        for number, state in enumerate(["dead", "replayed", "dropped"]):
            conn.exec_driver_sql(
                "INSERT INTO dead_letters (instance, message_id, reason, attempts, "
                "first_failed_at, last_failed_at, state) VALUES ('roads', "
                f"'m{number}', 'rejected', 1, CURRENT_TIMESTAMP, CURRENT_TIMESTAMP, '{state}')"
            )
    before = datetime.now(UTC) - timedelta(seconds=1)
    store.upgrade()

    letters = {
        state: store.dead_letters("roads", state)
        for state in (DeadLetterState.DEAD, DeadLetterState.REPLAYED, DeadLetterState.DROPPED)
    }
    [dead] = letters[DeadLetterState.DEAD]
    assert dead.resolved_at is None
    for state in (DeadLetterState.REPLAYED, DeadLetterState.DROPPED):
        [resolved] = letters[state]
        # Never deleted sooner than a retention period after the upgrade.
        assert resolved.resolved_at is not None
        assert before <= resolved.resolved_at <= datetime.now(UTC)
    store.close()


def test_0007_stamps_requests_taken_down_before_it_with_the_upgrade_time(store_url: str) -> None:
    store = Store.open(store_url)
    with store.transaction() as tx:
        tx.add_requests([make_request("r-1"), make_request("r-2")])
        tx.audit(actor="cli:requests-take-down", action="report_taken_down", request_id="r-1")
        tx.audit(actor="api", action="request_created", request_id="r-2")
    with migrating(store._writer) as conn:
        command.downgrade(alembic_config(conn), "0006")
    before = datetime.now(UTC) - timedelta(seconds=1)
    store.upgrade()

    taken_down, other = (store.get_request(f"r-{i}") for i in (1, 2))
    # Open311 clients polling with updated_after were never told: they read it next time.
    assert taken_down is not None and taken_down.taken_down_at is not None
    assert before <= taken_down.taken_down_at <= datetime.now(UTC)
    assert taken_down.updated_at == T0
    assert other is not None and other.taken_down_at is None
    assert store.verify_audit().ok
    store.close()


def test_0008_dates_each_request_changed_as_it_read_before_the_upgrade(store_url: str) -> None:
    store = Store.open(store_url)
    with store.transaction() as tx:
        tx.add_requests(
            [
                make_request("r-1", description="Deep hole"),
                make_request("r-2", updated_at=T0 + timedelta(days=1)),
            ]
        )
    with store.transaction() as tx:
        tx.take_down("r-1", marker="(taken down)", media=False, at=T0 + timedelta(hours=2))
    with migrating(store._writer) as conn:
        command.downgrade(alembic_config(conn), "0007")
    store.upgrade()

    taken_down, updated = (store.get_request(f"r-{i}") for i in (1, 2))
    # Open311's updated_datetime before the upgrade: the later of status time and take-down.
    assert taken_down is not None and taken_down.changed_at == T0 + timedelta(hours=2)
    assert updated is not None and updated.changed_at == T0 + timedelta(days=1)
    with store._engine.connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn), metadata) == []
    store.close()


def test_0009_clients_made_before_it_may_still_post_updates_and_new_ones_may_not(
    store_url: str,
) -> None:
    store = Store.open(store_url)
    before, before_key = store.add_client("running-partner")
    store.add_client("old-resident-app")
    store.revoke_client("old-resident-app")
    with migrating(store._writer) as conn:
        conn.exec_driver_sql(
            f"INSERT INTO idempotency_keys (client_id, key, response, created_at) "
            f"VALUES ({before.id}, 'k-1', '{{}}', CURRENT_TIMESTAMP)"
        )
        command.downgrade(alembic_config(conn), "0008")
    store.upgrade()

    # A back office posting updates before the upgrade keeps working after it.
    kept = store.authenticate(before_key)
    assert kept is not None and kept.may_post_updates
    assert {c.name: c.may_post_updates for c in store.list_clients()} == {
        "running-partner": True,
        "old-resident-app": True,
    }
    new, _ = store.add_client("new-app")
    assert not new.may_post_updates
    with store._engine.connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn), metadata) == []

    # Down again: the column goes, the clients and their Idempotency-Keys stay.
    with migrating(store._writer) as conn:
        command.downgrade(alembic_config(conn), "0008")
    with store._engine.connect() as conn:
        rows = conn.exec_driver_sql("SELECT name FROM api_clients ORDER BY id").all()
        assert [r.name for r in rows] == ["running-partner", "old-resident-app", "new-app"]
        assert conn.exec_driver_sql("SELECT count(*) FROM idempotency_keys").scalar() == 1
    store.upgrade()
    store.close()
