"""UTCDateTime's own SQLite text conversion keeps SQLAlchemy's storage format: rows written
before it (by SQLAlchemy's DATETIME processing) read the same, and text order stays time order."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
import sqlalchemy as sa
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy.dialects import sqlite

from bus.store._tables import UTCDateTime

DIALECT = sqlite.dialect()
BIND = UTCDateTime().dialect_impl(DIALECT).bind_processor(DIALECT)
RESULT = UTCDateTime().dialect_impl(DIALECT).result_processor(DIALECT, None)
# SQLAlchemy's own SQLite DATETIME processing, as UTCDateTime used it before (naive UTC in).
GENERIC_BIND = sa.DateTime().dialect_impl(DIALECT).bind_processor(DIALECT)
GENERIC_RESULT = sa.DateTime().dialect_impl(DIALECT).result_processor(DIALECT, None)

aware = st.datetimes(
    min_value=datetime(1000, 1, 2), max_value=datetime(9999, 12, 30), timezones=st.just(UTC)
).map(lambda value: value.astimezone(timezone(timedelta(hours=5, minutes=30))))


@given(aware)
def test_text_is_sqlalchemys_storage_format_and_reads_back(value: datetime) -> None:
    assert BIND is not None and RESULT is not None and GENERIC_BIND is not None
    text = BIND(value)
    assert text == GENERIC_BIND(value.astimezone(UTC).replace(tzinfo=None))
    back = RESULT(text)
    assert back == value and back.tzinfo is UTC


@given(aware, aware)
def test_text_order_is_time_order(first: datetime, second: datetime) -> None:
    assert BIND is not None
    assert (BIND(first) < BIND(second)) == (first < second)


def test_reads_text_without_microseconds_as_sql_writes_it() -> None:
    assert RESULT is not None and GENERIC_RESULT is not None
    assert RESULT("2026-12-06 21:28:49") == datetime(2026, 12, 6, 21, 28, 49, tzinfo=UTC)
    assert RESULT("2026-12-06 21:28:49") == GENERIC_RESULT("2026-12-06 21:28:49").replace(
        tzinfo=UTC
    )


def test_naive_datetimes_are_refused() -> None:
    assert BIND is not None
    with pytest.raises(ValueError, match="timezone-aware"):
        BIND(datetime(2026, 12, 6, 21, 28))
    assert BIND(None) is None


@pytest.mark.parametrize(
    "text",
    [
        "2026-12-06 21:28:49.000001",
        "2026-12-06T21:28:49",
        "2026-12-06",
        "20261206",
        "2026-12-06T21",
        "2026-12-06 21:28:49Z",
        "2026-12-06 21:28:49.5+02:00",
    ],
)
def test_reads_any_stored_text_as_the_zone_overriding_parse_did(text: str) -> None:
    assert RESULT is not None
    back = RESULT(text)
    assert back == datetime.fromisoformat(text).replace(tzinfo=UTC) and back.tzinfo is UTC


@given(aware)
def test_reading_what_was_written_gives_the_utc_instant_with_utc_itself(value: datetime) -> None:
    assert BIND is not None and RESULT is not None
    back = RESULT(BIND(value))
    assert back == datetime.fromisoformat(BIND(value)).replace(tzinfo=UTC)
    assert back.tzinfo is UTC and back.utcoffset() == timedelta(0)
