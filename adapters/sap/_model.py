"""What both SAP transports speak: the mapped notification fields in, a notification's state out.

The mapping file produces these transport-neutral field names; each transport puts them where its
interface wants them (OData properties, BAPI parameters). A mapped field whose name starts with
an upper-case letter is passed to the transport unchanged (an OData property or a NOTIFHEADER
field), for systems that need more than the fields below.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol

from adapters._contract import Health

#: The neutral field names a SAP mapping file produces.
FIELDS = (
    "notification_type",  # e.g. M1; required
    "short_text",  # at most 40 characters
    "long_text",
    "priority",  # 1..4
    "functional_location",
    "reported_by",  # a reference without personal data, e.g. CIVICBUS
    "malfunction_start_date",  # YYYYMMDD
    "malfunction_start_time",  # HHMMSS
)
SHORT_TEXT_LENGTH = 40


@dataclass(frozen=True)
class SapNotification:
    """A notification as read back from SAP: number, external reference, statuses, change time.

    A change time kept in SAP's local time that falls in the hour the clocks repeat when
    daylight saving time ends reads two ways: `changed_at` is the earlier reading, and
    `changed_at_later` the later one (None when the time is unambiguous).
    """

    number: str
    external_reference: str
    system_status: str
    user_status: str
    changed_at: datetime
    changed_at_later: datetime | None = None


class Transport(Protocol):
    """One way of talking to SAP (OData or RFC); errors are already Transient/PermanentError."""

    #: The most SAP's clock goes back at once (an hour where DST ends; zero for UTC times).
    clock_back: timedelta

    def find(self, external_reference: str) -> SapNotification | None: ...

    def create(self, fields: Mapping[str, Any], external_reference: str) -> str:
        """Create and commit a notification; its number."""
        ...

    def changed_since(self, moment: datetime | None) -> list[SapNotification]:
        """Notifications changed at or after `moment` (by either reading of their time)."""
        ...

    def check(self) -> Health: ...

    def close(self) -> None: ...


def passthrough(fields: Mapping[str, Any]) -> dict[str, Any]:
    """The mapped fields meant for the transport unchanged (upper-case initial)."""
    return {k: v for k, v in fields.items() if k[:1].isupper()}
