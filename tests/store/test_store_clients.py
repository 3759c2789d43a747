"""API clients: a key shown once, stored only as its SHA-256, revocable."""

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
