"""Helpers for the Oracle adapter tests: work-order tables on PostgreSQL or SQLite."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import sqlalchemy as sa
from backends_support import MAPPINGS

from adapters.mapping import Mapping, load_mapping
from adapters.oracle import OracleAdapter, create_schema
from adapters.oracle._tables import work_orders


def facilities_mapping() -> Mapping:
    return load_mapping(MAPPINGS / "oracle-facilities.yaml")


def prepared(url: str) -> str:
    """`url` with the work-order tables created."""
    engine = sa.create_engine(url)
    create_schema(engine)
    engine.dispose()
    return url


def adapter_for(url: str, **settings: Any) -> OracleAdapter:
    return OracleAdapter("oracle-facilities", {"url": url, **settings}, facilities_mapping())


def rows(url: str, external_ref: str) -> list[Any]:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            query = sa.select(work_orders).where(work_orders.c.external_ref == external_ref)
            return list(conn.execute(query).all())
    finally:
        engine.dispose()


@contextmanager
def silent_server(*, full: bool = False) -> Iterator[int]:
    """A loopback port whose server never answers, as a hung database does.

    With `full`, its accept queue is full, so the kernel drops new connection attempts (SYNs)
    like a dropped network path: even the TCP connect hangs.
    """
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(0)
        port: int = server.getsockname()[1]
        fillers = []
        for _ in range(3 if full else 0):
            filler = socket.socket()
            filler.setblocking(False)
            filler.connect_ex(("127.0.0.1", port))
            fillers.append(filler)
        try:
            yield port
        finally:
            for filler in fillers:
                filler.close()
