"""API clients: a key shown once, stored only as its SHA-256, revocable; allowed to post status
updates only when made so."""

from __future__ import annotations

import hashlib

import pytest
import sqlalchemy as sa

from bus.store import AlreadyExists, Store


def test_a_new_client_authenticates_with_its_key_which_is_stored_only_hashed(store: Store) -> None:
    client, key = store.add_client("fixmystreet", jurisdiction="springfield")

    assert len(key) >= 40
    assert store.authenticate(key) == client
    assert client.jurisdiction == "springfield" and client.revoked_at is None
    assert store.authenticate(key + "x") is None
    engine = sa.create_engine(store._engine.url)
    with engine.connect() as conn:
        stored = conn.exec_driver_sql("SELECT * FROM api_clients").one()
    engine.dispose()
    assert key not in [str(value) for value in stored]
    assert hashlib.sha256(key.encode()).hexdigest() in list(stored)


def test_keys_differ_and_names_are_unique(store: Store) -> None:
    _, first = store.add_client("a")
    _, second = store.add_client("b")
    assert first != second
    with pytest.raises(AlreadyExists):
        store.add_client("a")
    assert [c.name for c in store.list_clients()] == ["a", "b"]


def test_a_revoked_client_no_longer_authenticates(store: Store) -> None:
    _, key = store.add_client("app")

    assert store.revoke_client("app") is True
    assert store.revoke_client("app") is False
    assert store.revoke_client("nobody") is False
    assert store.authenticate(key) is None
    (listed,) = store.list_clients()
    assert listed.revoked_at is not None


def test_a_client_may_post_updates_only_when_added_so_or_allowed_later(store: Store) -> None:
    resident, resident_key = store.add_client("resident-app")
    desk, desk_key = store.add_client("desk", may_post_updates=True)
    assert (resident.may_post_updates, desk.may_post_updates) == (False, True)
    assert store.authenticate(desk_key) == desk

    assert store.allow_client_updates("resident-app", True) is True
    allowed = store.authenticate(resident_key)
    assert allowed is not None and allowed.may_post_updates
    assert store.allow_client_updates("desk", False) is True
    denied = store.authenticate(desk_key)
    assert denied is not None and not denied.may_post_updates
    assert {c.name: c.may_post_updates for c in store.list_clients()} == {
        "resident-app": True,
        "desk": False,
    }


def test_update_permission_of_a_revoked_or_unknown_client_is_not_changed(store: Store) -> None:
    store.add_client("gone")
    store.revoke_client("gone")

    assert store.allow_client_updates("gone", True) is False
    assert store.allow_client_updates("nobody", True) is False
    (gone,) = store.list_clients()
    assert not gone.may_post_updates


def test_a_client_inserted_without_saying_may_not_post_updates(store: Store) -> None:
    # The column's default is closed: a row written by other means gets no permission.
    with store._writer.begin() as conn:
        conn.exec_driver_sql(
            "INSERT INTO api_clients (name, key_hash, created_at) "
            "VALUES ('raw', 'abc', CURRENT_TIMESTAMP)"
        )
    (raw,) = store.list_clients()
    assert raw.may_post_updates is False
