"""The state every simulated back-end shares: work items, their status changes, and fault modes.

This is a simulation's bookkeeping, not a real back-office system. Items and changes live in a
SQLite file in the sandbox state dir, so a simulator keeps its state across restarts; each change
gets a strictly increasing sequence number, which is what the simulated "changes since" calls
page on. The fault mode (down, slow, reject) is kept in memory: a restart heals the back-end.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

FAULT_MODES = ("none", "down", "slow", "reject", "throttle")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS items (
    id TEXT PRIMARY KEY,
    external_reference TEXT NOT NULL UNIQUE,
    status TEXT NOT NULL,
    payload TEXT NOT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS changes (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    item_id TEXT NOT NULL REFERENCES items(id),
    status TEXT NOT NULL,
    at TEXT NOT NULL,
    note TEXT
);
"""


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class Item:
    """One work item (a case, a work request) as the simulated back-end holds it."""

    id: str
    external_reference: str
    status: str
    payload: dict[str, Any]
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True)
class Change:
    """One status change of an item, in the order the back-end made it."""

    seq: int
    item_id: str
    external_reference: str
    status: str
    at: datetime
    note: str | None


class DuplicateReference(Exception):
    """An item with this external reference exists already (the back-end's unique key)."""

    def __init__(self, existing: Item) -> None:
        super().__init__(f"external reference already used by {existing.id}")
        self.existing = existing


class UnknownItem(LookupError):
    """No item with this id or external reference."""


class WorkItems:
    """Work items of one simulated back-end, in a SQLite file; safe to use from many threads."""

    def __init__(self, path: Path, *, id_prefix: str, flow: Sequence[str]) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.id_prefix = id_prefix
        #: The statuses an item moves through by `advance`, first one on creation.
        self.flow = tuple(flow)
        self._lock = threading.Lock()
        with self._connect() as db:
            db.executescript(_SCHEMA)

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            db = sqlite3.connect(self.path)
            db.row_factory = sqlite3.Row
            try:
                with db:
                    yield db
            finally:
                db.close()

    def create(self, external_reference: str, payload: dict[str, Any]) -> Item:
        """Create an item in the first status of the flow; the external reference is unique."""
        now = utcnow()
        item_id = f"{self.id_prefix}-{uuid.uuid4().hex[:10].upper()}"
        with self._connect() as db:
            row = db.execute(
                "SELECT * FROM items WHERE external_reference = ?", (external_reference,)
            ).fetchone()
            if row is not None:
                raise DuplicateReference(_item(row))
            db.execute(
                "INSERT INTO items VALUES (?, ?, ?, ?, ?, ?)",
                (
                    item_id,
                    external_reference,
                    self.flow[0],
                    json.dumps(payload),
                    now.isoformat(),
                    now.isoformat(),
                ),
            )
            db.execute(
                "INSERT INTO changes (item_id, status, at, note) VALUES (?, ?, ?, ?)",
                (item_id, self.flow[0], now.isoformat(), "created"),
            )
        return Item(item_id, external_reference, self.flow[0], payload, now, now)

    def get(self, key: str) -> Item:
        """The item with this id, or else with this external reference."""
        with self._connect() as db:
            row = db.execute(
                "SELECT * FROM items WHERE id = ? OR external_reference = ? "
                "ORDER BY id = ? DESC LIMIT 1",
                (key, key, key),
            ).fetchone()
        if row is None:
            raise UnknownItem(key)
        return _item(row)

    def find(self, external_reference: str) -> Item | None:
        with self._connect() as db:
            row = db.execute(
                "SELECT * FROM items WHERE external_reference = ?", (external_reference,)
            ).fetchone()
        return None if row is None else _item(row)

    def all(self) -> list[Item]:
        with self._connect() as db:
            return [_item(r) for r in db.execute("SELECT * FROM items ORDER BY created_at")]

    def set_status(self, key: str, status: str, note: str | None = None) -> Change:
        """Move an item to `status` and record the change (what the control endpoint does)."""
        item = self.get(key)
        now = utcnow()
        with self._connect() as db:
            db.execute(
                "UPDATE items SET status = ?, updated_at = ? WHERE id = ?",
                (status, now.isoformat(), item.id),
            )
            cur = db.execute(
                "INSERT INTO changes (item_id, status, at, note) VALUES (?, ?, ?, ?)",
                (item.id, status, now.isoformat(), note),
            )
            seq = cur.lastrowid
        assert seq is not None
        return Change(seq, item.id, item.external_reference, status, now, note)

    def advance(self, key: str) -> Change | None:
        """Move an item to the next status of the flow; None when it is at the end."""
        item = self.get(key)
        position = self.flow.index(item.status) if item.status in self.flow else -1
        if position + 1 >= len(self.flow):
            return None
        return self.set_status(item.id, self.flow[position + 1], "advanced")

    def changes(
        self, *, after_seq: int = 0, since: datetime | None = None, limit: int = 100
    ) -> list[Change]:
        """Changes with a sequence above `after_seq` (and at or after `since`), oldest first."""
        query = (
            "SELECT c.seq, c.item_id, i.external_reference, c.status, c.at, c.note "
            "FROM changes c JOIN items i ON i.id = c.item_id WHERE c.seq > ?"
        )
        params: list[Any] = [after_seq]
        if since is not None:
            query += " AND c.at >= ?"
            params.append(since.astimezone(UTC).isoformat())
        query += " ORDER BY c.seq LIMIT ?"
        params.append(limit)
        with self._connect() as db:
            rows = db.execute(query, params).fetchall()
        return [
            Change(
                r["seq"],
                r["item_id"],
                r["external_reference"],
                r["status"],
                datetime.fromisoformat(r["at"]),
                r["note"],
            )
            for r in rows
        ]


def _item(row: sqlite3.Row) -> Item:
    return Item(
        id=row["id"],
        external_reference=row["external_reference"],
        status=row["status"],
        payload=json.loads(row["payload"]),
        created_at=datetime.fromisoformat(row["created_at"]),
        updated_at=datetime.fromisoformat(row["updated_at"]),
    )


class Faults:
    """How the simulated back-end misbehaves right now; set through the control endpoint.

    Modes: `none`; `down` (refuse service: HTTP 503, SMTP 421); `slow` (wait `delay` seconds
    before answering); `reject` (refuse the data as a client fault); `throttle` (HTTP 429 with
    Retry-After: `delay` seconds, where the protocol has it). With a `count`, the fault affects
    that many requests and then switches itself off, as the SAP simulation's does.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.mode = "none"
        self.delay = 0.0
        #: How many more requests the fault affects; None: until switched off.
        self.remaining: int | None = None

    def set(self, mode: str, delay: float | None = None, count: int | None = None) -> None:
        if mode not in FAULT_MODES:
            raise ValueError(f"fault mode must be one of {', '.join(FAULT_MODES)}")
        if count is not None and (type(count) is not int or count < 1):
            raise ValueError(
                f"count must be a whole number of requests of at least 1, or null (got {count!r})"
            )
        default = 5.0 if mode in ("slow", "throttle") else 0.0
        with self._lock:
            self.mode = mode
            self.delay = float(delay) if delay is not None else default
            self.remaining = count

    def describe(self) -> dict[str, Any]:
        return {"mode": self.mode, "delay": self.delay, "count": self.remaining}

    def take(self, *modes: str) -> bool:
        """Whether the fault now is one of `modes`, counting one request it affects."""
        with self._lock:
            if self.mode not in modes:
                return False
            if self.remaining is not None:
                self.remaining -= 1
                if self.remaining <= 0:
                    # `delay` stays: the request that took the last use may still read it.
                    self.mode, self.remaining = "none", None
            return True

    def pause_if_slow(self) -> None:
        if self.take("slow"):
            time.sleep(self.delay)


class AutoProgress:
    """Optionally moves every unfinished item one status on, every `interval` seconds (demos)."""

    def __init__(self, items: WorkItems, interval: float) -> None:
        self.items = items
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sandbox-auto-progress", daemon=True)

    def start(self) -> AutoProgress:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            for item in self.items.all():
                self.items.advance(item.id)
