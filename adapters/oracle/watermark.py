"""A change-time watermark with a safety overlap: miss nothing committed late, repeat nothing.

Polling "rows changed after T" misses a row whose transaction stamped its change time before T
but committed after we read (and, with coarse clocks, rows sharing T's tick). So each poll
re-reads a window of `overlap` before the watermark and drops what it already reported, keyed by
(row id, change time); those keys travel inside the opaque watermark, so a restarted worker
neither misses nor repeats. The SAP adapter uses it as well (its change times are as coarse).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Generic, TypeVar

from adapters._exceptions import PermanentError

T = TypeVar("T")


@dataclass(frozen=True)
class Changed(Generic[T]):
    """One changed row as polled: its id, its change time (aware), and the row itself."""

    key: str
    at: datetime
    row: T


@dataclass(frozen=True)
class OverlapWatermark:
    """Where the last poll got to, and what it reported inside the overlap window."""

    high: datetime | None
    seen: frozenset[tuple[str, str]]

    @classmethod
    def parse(cls, text: str | None) -> OverlapWatermark:
        """Read a watermark produced by `dump` (None: from the beginning)."""
        if not text:
            return cls(high=None, seen=frozenset())
        try:
            data = json.loads(text)
            high = datetime.fromisoformat(data["high"]) if data.get("high") else None
            seen = frozenset((str(k), str(a)) for k, a in data.get("seen", []))
        except (ValueError, KeyError, TypeError) as exc:
            raise PermanentError(
                f"watermark {text[:80]!r} was not produced by this adapter"
            ) from exc
        return cls(high=high, seen=seen)

    def dump(self) -> str:
        high = self.high.isoformat() if self.high else None
        return json.dumps({"high": high, "seen": sorted(self.seen)}, separators=(",", ":"))

    def window_start(self, overlap: timedelta) -> datetime | None:
        """The change time to read from: the watermark minus the overlap (None: everything)."""
        return None if self.high is None else self.high - overlap

    def advance(
        self, polled: Iterable[Changed[T]], overlap: timedelta
    ) -> tuple[list[Changed[T]], OverlapWatermark]:
        """The polled changes not reported before (in time order), and the watermark after them."""
        fresh: list[Changed[T]] = []
        seen = set(self.seen)
        high = self.high
        for change in sorted(polled, key=lambda c: (c.at, c.key)):
            at = change.at.astimezone(UTC)
            mark = (change.key, at.isoformat())
            if mark in seen:
                continue
            seen.add(mark)
            fresh.append(change)
            high = at if high is None or at > high else high
        if high is not None:
            floor = high - overlap
            seen = {m for m in seen if datetime.fromisoformat(m[1]) >= floor}
        return fresh, OverlapWatermark(high=high, seen=frozenset(seen))
