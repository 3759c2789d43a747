"""Change times a back-end keeps in its own local time, without a zone (SAP's AEDAT/AEZEIT, a
legacy work-order database's TIMESTAMP columns): read as UTC, and the hour that repeats when the
clocks go back.

Where daylight saving time ends, local times of one hour happen twice (01:00-02:00 in Chicago
on 2026-11-01, first as CDT, then as CST). A change time in that hour reads two ways; the earlier
reading dates a change of the second pass an hour too early, before the polling watermark minus
its overlap, where it would be dropped for good. So a poll reads from `clock_back` earlier, and
`reading` decides which reading a change in that hour is (see there).
"""

from __future__ import annotations

from collections.abc import Collection
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError


def zone_named(name: str, where: str) -> ZoneInfo:
    """The IANA time zone `name`; a ValueError naming the setting `where` when there is none."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(
            f"{where}: unknown time zone {name!r} (an IANA name, e.g. America/Chicago or UTC)"
        ) from exc


class LocalClock:
    """The local time of a back-end in `zone`."""

    def __init__(self, zone: ZoneInfo) -> None:
        self.zone = zone
        self.clock_back = _clock_back(zone)

    def local(self, moment: datetime) -> datetime:
        """An aware time as the back-end writes it: its local time, without a zone."""
        return moment.astimezone(self.zone).replace(tzinfo=None)

    def window_start(self, start: datetime) -> datetime:
        """The local time to read changes from for those made at `start` or later: earlier by
        `clock_back`, for a change in a repeated hour whose local time reads before `start`'s."""
        return self.local(start - self.clock_back)

    def readings(self, local: datetime) -> tuple[datetime, datetime | None]:
        """A local time as UTC: its earlier reading, and its later one if it is in the hour
        repeated when the clocks went back (None for any other time)."""
        earlier = local.replace(tzinfo=self.zone, fold=0).astimezone(UTC)
        later = local.replace(tzinfo=self.zone, fold=1).astimezone(UTC)
        return earlier, (later if later > earlier else None)


def reading(
    key: str,
    earlier: datetime,
    later: datetime | None,
    seen: Collection[tuple[str, str]],
    start: datetime | None,
) -> datetime:
    """When the change `key` happened, given its two readings and the poll's window `start` (the
    watermark minus the overlap) and the (key, UTC time) pairs reported inside it: the earlier
    reading while it is in the window or was reported under it; else it is a change not seen
    yet that reads as older than the window, which the overlap rules out for the first pass of
    that hour, so it is the repeat: the later reading. (The earlier one would drop it, or date
    it before changes it followed.)"""
    if later is None or start is None or earlier >= start:
        return earlier
    if (key, earlier.astimezone(UTC).isoformat()) in seen:
        return earlier
    return later


def _clock_back(zone: ZoneInfo) -> timedelta:
    """How far the zone's clocks go back at most (an hour where DST ends, zero without DST):
    by how much a local time in the repeated hour can read too early. Its offsets over two
    years, a day apart, span every change of the clocks."""
    start = datetime.now(UTC) - timedelta(days=366)
    offsets = {
        (start + timedelta(days=d)).astimezone(zone).utcoffset() or timedelta(0)
        for d in range(2 * 366)
    }
    return max(offsets) - min(offsets)
