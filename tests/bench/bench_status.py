"""Benchmark of `civicbus status`'s store side on a long audit log. Prints figures and the
machine; asserts nothing.

Run: `.venv/bin/python tests/bench/bench_status.py [--entries 200000] [--hours 24]
[--failing-hours 6] [--rounds 5] [--only sqlite|postgres]`.

The audit log is filled with `--entries` entries of other actors spread evenly over the last
`--hours`, among them the entries three webhook subscriptions' workers write: sub.1 delivers an
event a minute, then fails for the last `--failing-hours` (a failed round every 240 s, each
seventh followed by a dead letter, as the worker does); sub.2 delivers an event a minute; sub.3
never had an event. Then the store side of `civicbus status` is timed (`take_overview` with no
broker, which status reports as a problem and goes on), and its two audit lookups apart: each
subscription's latest delivery outcome (the entries of the last minutes) and sub.1's failing
run, back to its last delivery. The store is an embedded SQLite file in a temporary folder, and
a fresh PostgreSQL database (CIVICBUS_TEST_PG, as the tests use; dropped afterwards).

Measured 2026-12-05, Intel Xeon VM, 2 vCPUs shared with other work; best of 5 (3 for 1M), in
ms, status / latest outcomes / failing run:
- 200,000 entries over 24 h, sub.1 failing for 6 h (its last delivery 49,901 entries back):
  SQLite 6.5 / 0.7 / 4.6, PostgreSQL 15 10.5 / 1.7 / 5.7.
- the same with sub.1 failing for 24 h (no delivery within overview.RUN_LOOKBACK, the worst
  case: the whole look-back read, "or earlier" said): SQLite 22.1 / 0.7 / 20.2, PostgreSQL
  57.7 / 1.8 / 51.6 (a sequential scan: the look-back is the whole table).
- 1,000,000 entries over 120 h, failing for 30 h (longer than the look-back): SQLite
  20.8 / 0.8 / 18.6, PostgreSQL 31.8 / 1.8 / 26.7: the cost does not grow with the log.
The 10,000-entry window these replace held about an hour of this traffic: it dated sub.1's
failures from the window's start, and a city writing 10,000 entries between two failed rounds
(28 a second) had sub.1 missed altogether.
"""

from __future__ import annotations

import argparse
import os
import platform
import sqlite3
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

from bench_intake import cpu_model

from bus import overview
from bus.broker.connection import BrokerUnavailable
from bus.store import Store

PG_ADMIN_DSN = os.environ.get("CIVICBUS_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
BATCH = 10_000
ROUND_SECONDS = 240  # a failed round's announced next try


def machine() -> str:
    return (
        f"{platform.system()} {platform.release()}, {os.cpu_count()} CPUs ({cpu_model()}), "
        f"Python {platform.python_version()}, SQLite {sqlite3.sqlite_version}"
    )


@contextmanager
def sqlite_store() -> Iterator[Store]:
    with tempfile.TemporaryDirectory() as folder:
        store = Store.open(f"sqlite:///{folder}/civicbus.db")
        try:
            yield store
        finally:
            store.close()


@contextmanager
def postgres_store() -> Iterator[Store]:
    import psycopg

    name = f"civicbus_bench_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    store = Store.open(f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}")
    try:
        with store._engine.connect() as conn:
            version = conn.exec_driver_sql("SHOW server_version").scalar()
        print(f"PostgreSQL {version}")
        yield store
    finally:
        store.close()
        with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE "{name}"')


def timeline(
    now: datetime, entries: int, hours: float, failing_hours: float
) -> list[tuple[datetime, str, str, str, dict[str, Any]]]:
    """(at, actor, action, outcome, details) in time order: the other actors' entries and the
    three subscriptions' workers'."""
    start = now - timedelta(hours=hours)
    step = timedelta(hours=hours) / entries
    found = [
        (start + i * step, "relay", "relayed", "ok", {"exchange": "civicbus.events"})
        for i in range(entries)
    ]
    failing_from = now - timedelta(hours=failing_hours)
    for minute in range(int((hours - failing_hours) * 60)):
        at = start + timedelta(minutes=minute)
        found.append((at, "worker:sub.1", "delivered", "ok", {"attempts": 1}))
    rounds = int(failing_hours * 3600 / ROUND_SECONDS)
    for n in range(rounds):
        at = failing_from + timedelta(seconds=n * ROUND_SECONDS)
        error = {"error": "ConnectError: [Errno 111] Connection refused"}
        if n % 7 == 6:
            found.append((at, "worker:sub.1", "attempt", "error", {"attempt": 7, **error}))
            found.append((at, "worker:sub.1", "dead_lettered", "error", {"attempts": 7}))
        else:
            delay = {"next_delay_seconds": ROUND_SECONDS}
            found.append((at, "worker:sub.1", "attempt", "error", {**error, **delay}))
    for minute in range(int(hours * 60)):
        at = start + timedelta(minutes=minute)
        found.append((at, "worker:sub.2", "delivered", "ok", {"attempts": 1}))
    found.sort(key=lambda entry: entry[0])
    return found


def fill(store: Store, entries: list[tuple[datetime, str, str, str, dict[str, Any]]]) -> None:
    for _ in range(3):
        store.add_subscription("http://127.0.0.1:9/hook", ["request.*"])
    for first in range(0, len(entries), BATCH):
        with store.transaction() as tx:
            for at, actor, action, outcome, details in entries[first : first + BATCH]:
                tx.audit(actor=actor, action=action, outcome=outcome, details=details, at=at)


def no_broker() -> Any:
    raise BrokerUnavailable("no broker in this benchmark")


def timed(work: Callable[[], Any], rounds: int) -> tuple[str, Any]:
    times, result = [], None
    for _ in range(rounds):
        began = time.perf_counter()
        result = work()
        times.append((time.perf_counter() - began) * 1000)
    return f"{min(times):.1f} / {statistics.median(times):.1f} ms", result


def section(kind: str, opened: Callable[[], Any], args: argparse.Namespace) -> None:
    now = datetime.now(UTC)
    entries = timeline(now, args.entries, args.hours, args.failing_hours)
    with opened() as store:
        began = time.perf_counter()
        fill(store, entries)
        if store.dialect == "postgresql":
            # As autovacuum would have by now on a store this size: the planner needs to know
            # how many entries a range of ids holds to read it through the primary key.
            with store._engine.connect() as conn:
                conn.exec_driver_sql("ANALYZE audit_log")
                conn.commit()
        print(
            f"{kind}: {len(entries):,} audit entries written in {time.perf_counter() - began:.1f} s"
        )
        actors = ["worker:sub.1", "worker:sub.2", "worker:sub.3"]
        at = datetime.now(UTC)

        def latest() -> Any:
            since = at - overview.OUTCOME_HORIZON
            return store.latest_audit(
                actors, ("attempt", "delivered", "dead_lettered"), since=since
            )

        status_time, seen = timed(lambda: overview.take_overview(store, {}, no_broker), args.rounds)
        latest_time, outcomes = timed(latest, args.rounds)
        run_time, run = timed(
            lambda: store.audit_streak(
                outcomes["worker:sub.1"], broken_by="delivered", lookback=overview.RUN_LOOKBACK
            ),
            args.rounds,
        )
        back = outcomes["worker:sub.1"].id - run.first.id
        print(f"  status (store side), best / median: {status_time}")
        print(f"  latest outcome of 3 subscriptions: {latest_time}")
        print(f"  sub.1's failing run ({back:,} entries back): {run_time}")
        for problem in seen.problems:
            if "failing" in problem:
                print(f"  problem: {problem[:110]}...")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--entries", type=int, default=200_000)
    parser.add_argument("--hours", type=float, default=24.0)
    parser.add_argument("--failing-hours", type=float, default=6.0)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--only", choices=["sqlite", "postgres"])
    args = parser.parse_args()
    print(machine())
    if args.only in (None, "sqlite"):
        section("SQLite", sqlite_store, args)
    if args.only in (None, "postgres"):
        section("PostgreSQL", postgres_store, args)


if __name__ == "__main__":
    main()
