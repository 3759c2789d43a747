"""select_for_ids answers as SQLAlchemy's own execution does, on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import timedelta

import pytest
import sqlalchemy as sa

from bus.store import Store
from bus.store._sql import select_for_ids
from bus.store._tables import requests
from tests.store.store_factories import T0, make_request

IDS = sa.bindparam("ids", expanding=True)
# A datetime column (processed on reading), a nullable one, and the row order by id.
BY_IDS = (
    sa.select(requests.c.id, requests.c.updated_at, requests.c.taken_down_at, requests.c.status)
    .where(requests.c.id.in_(IDS))
    .order_by(requests.c.id)
)


@pytest.mark.parametrize("count", [1, 3, 300])
def test_rows_are_those_of_sqlalchemys_execution(store: Store, count: int) -> None:
    made = [
        make_request(f"sfi-{count}-{i:03d}", updated_at=T0 + timedelta(seconds=i))
        for i in range(count)
    ]
    with store.transaction() as tx:
        for request in made:
            tx.add_request(request)
    ids = [request.id for request in made]
    asked = [*ids[: count - 1], "sfi-unknown", ids[-1]]  # an unknown id is simply absent
    with store._engine.connect() as conn:
        expected = [tuple(row) for row in conn.execute(BY_IDS, {"ids": asked})]
        got = select_for_ids(conn, BY_IDS, asked)
        again = select_for_ids(conn, BY_IDS, asked)  # from the kept plan
    assert got == expected == again
    assert [row[0] for row in got] == sorted(ids)
    assert got[0][1] == T0 and got[0][1].tzinfo is not None and got[0][2] is None


def test_no_ids_asks_nothing(store: Store) -> None:
    with store._engine.connect() as conn:
        assert select_for_ids(conn, BY_IDS, []) == []


def test_a_statement_with_another_parameter_is_refused(store: Store) -> None:
    # A value bound in the statement itself would be left out of the driver's parameters.
    other = sa.select(requests.c.id).where(requests.c.id.in_(IDS), requests.c.status == "open")
    with store._engine.connect() as conn, pytest.raises(ValueError, match="only parameter"):
        select_for_ids(conn, other, ["a"])
