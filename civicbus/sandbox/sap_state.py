"""State of the SAP **simulation**: maintenance notifications kept in a SQLite file.

This is not SAP. It keeps just what the simulated OData service and BAPIs need (roughly the
notification header QMEL plus its system/user status) in a file under the simulator's state
directory, so that notifications survive a restart of the simulation.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

#: System statuses the simulation knows, in the order auto-progress walks them.
PROGRESSION = ("OSNO", "NOPR", "NOCO")
SYSTEM_STATUSES = frozenset({"OSNO", "NOPR", "ORAS", "NOCO", "DLFL"})
#: The simulated customizing: notification types and priorities that exist.
NOTIFICATION_TYPES = frozenset({"M1", "M2", "M3", "Y1"})
PRIORITIES = frozenset({"1", "2", "3", "4"})
SHORT_TEXT_LENGTH = 40
EXTERNAL_REFERENCE_LENGTH = 64
FIRST_NUMBER = 10000000


@dataclass(frozen=True)
class Notification:
    """One simulated maintenance notification (header fields, status, change time)."""

    number: str
    notif_type: str
    short_text: str
    long_text: str = ""
    priority: str = ""
    funct_loc: str = ""
    ext_ref: str = ""
    reported_by: str = ""
    malfunction_date: str = ""  # YYYYMMDD
    malfunction_time: str = ""  # HHMMSS
    created_at: str = ""  # ISO 8601, UTC
    changed_at: str = ""  # ISO 8601, UTC, microseconds
    system_status: str = "OSNO"
    user_status: str = ""

    def changed(self) -> datetime:
        return datetime.fromisoformat(self.changed_at)

    def created(self) -> datetime:
        return datetime.fromisoformat(self.created_at)


_COLUMNS = tuple(Notification.__dataclass_fields__)

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS notification (
    {", ".join(f"{c} TEXT NOT NULL" for c in _COLUMNS)},
    PRIMARY KEY (number)
);
CREATE INDEX IF NOT EXISTS notification_ext_ref ON notification (ext_ref);
CREATE INDEX IF NOT EXISTS notification_changed ON notification (changed_at);
CREATE TABLE IF NOT EXISTS number_range (last INTEGER NOT NULL);
"""


def now() -> datetime:
    return datetime.now(UTC)


class SapStore:
    """Notifications of the simulation in one SQLite file; safe to share between threads."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._lock = threading.Lock()
        with self._lock:
            self._db.executescript(_SCHEMA)

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def reserve_number(self) -> str:
        """Draw the next notification number from the number range (as SAVE does before commit)."""
        with self._transaction() as db:
            last = db.execute("SELECT last FROM number_range").fetchone()
            following = (last[0] if last else FIRST_NUMBER - 1) + 1
            if last:
                db.execute("UPDATE number_range SET last = ?", (following,))
            else:
                db.execute("INSERT INTO number_range (last) VALUES (?)", (following,))
        return f"{following:012d}"

    def insert(self, draft: Notification) -> Notification:
        """Store `draft` (a committed LUW), numbered from the number range unless already."""
        number = draft.number or self.reserve_number()
        with self._transaction() as db:
            stamp = now().isoformat()
            saved = replace(draft, number=number, created_at=stamp, changed_at=stamp)
            db.execute(
                f"INSERT INTO notification ({', '.join(_COLUMNS)}) "
                f"VALUES ({', '.join('?' for _ in _COLUMNS)})",
                [getattr(saved, c) for c in _COLUMNS],
            )
        return saved

    def get(self, number: str) -> Notification | None:
        with self._lock:
            row = self._db.execute(
                "SELECT * FROM notification WHERE number = ?", (number.zfill(12),)
            ).fetchone()
        return _from_row(row) if row else None

    def all(self) -> list[Notification]:
        with self._lock:
            rows = self._db.execute("SELECT * FROM notification ORDER BY number").fetchall()
        return [_from_row(r) for r in rows]

    def set_status(
        self, number: str, *, system_status: str | None = None, user_status: str | None = None
    ) -> Notification | None:
        """Move a notification to a new system and/or user status; bumps its change time."""
        with self._transaction() as db:
            row = db.execute("SELECT * FROM notification WHERE number = ?", (number,)).fetchone()
            if row is None:
                return None
            current = _from_row(row)
            updated = replace(
                current,
                system_status=current.system_status if system_status is None else system_status,
                user_status=current.user_status if user_status is None else user_status,
                changed_at=now().isoformat(),
            )
            db.execute(
                "UPDATE notification SET system_status = ?, user_status = ?, changed_at = ? "
                "WHERE number = ?",
                (updated.system_status, updated.user_status, updated.changed_at, number),
            )
        return updated

    def auto_progress(self, older_than_seconds: float) -> None:
        """Advance every notification unchanged for `older_than_seconds` one step OSNO→NOPR→NOCO."""
        cutoff = now().timestamp() - older_than_seconds
        for n in self.all():
            if n.system_status in PROGRESSION[:-1] and n.changed().timestamp() <= cutoff:
                following = PROGRESSION[PROGRESSION.index(n.system_status) + 1]
                self.set_status(n.number, system_status=following)

    def close(self) -> None:
        with self._lock:
            self._db.close()


def _from_row(row: Mapping[str, Any]) -> Notification:
    return Notification(**{c: row[c] for c in _COLUMNS})


def validate(draft: Notification, known_locations: frozenset[str] | None) -> list[tuple[str, str]]:
    """What the simulated SAP checks before saving: (message code, text) for each problem."""
    problems: list[tuple[str, str]] = []
    if draft.notif_type not in NOTIFICATION_TYPES:
        problems.append(
            ("SIM/001", f"Notification type {draft.notif_type or '(empty)'} is not defined")
        )
    if not draft.short_text.strip():
        problems.append(("SIM/002", "Enter a short text for the notification"))
    if len(draft.short_text) > SHORT_TEXT_LENGTH:
        problems.append(("SIM/003", f"Short text longer than {SHORT_TEXT_LENGTH} characters"))
    if draft.priority and draft.priority not in PRIORITIES:
        problems.append(("SIM/004", f"Priority {draft.priority} is not defined"))
    if draft.funct_loc and known_locations is not None and draft.funct_loc not in known_locations:
        problems.append(("SIM/005", f"Functional location {draft.funct_loc} does not exist"))
    if len(draft.ext_ref) > EXTERNAL_REFERENCE_LENGTH:
        problems.append(("SIM/006", f"External reference longer than {EXTERNAL_REFERENCE_LENGTH}"))
    for value, name in ((draft.malfunction_date, "date"), (draft.malfunction_time, "time")):
        fmt = "%Y%m%d" if name == "date" else "%H%M%S"
        if value:
            try:
                datetime.strptime(value, fmt)
            except ValueError:
                problems.append(("SIM/007", f"Malfunction start {name} {value} is not valid"))
    return problems


def as_dict(n: Notification) -> dict[str, str]:
    return asdict(n)
