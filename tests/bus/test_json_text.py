"""The kept C encoder writes what json.JSONEncoder with the same options writes."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from bus.json_text import json_writer
from bus.store._audit import _utc_text

_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()  # NaN and infinities included, as json.dumps allows them
    | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)


class _Opaque:
    def __repr__(self) -> str:
        return "<opaque>"


@given(_VALUES)
@example({"é": [1.5, None, True], "b": {"x": float("nan")}})
def test_a_log_line_is_json_dumps_output(value: Any) -> None:
    write = json_writer(default=repr, separators=(", ", ": "))
    assert write(value) == json.JSONEncoder(default=repr).encode(value)


@given(_VALUES)
def test_canonical_text_is_the_sorted_compact_json_encoders(value: Any) -> None:
    write = json_writer(default=str, sort_keys=True, separators=(",", ":"))
    expected = json.JSONEncoder(default=str, sort_keys=True, separators=(",", ":")).encode(value)
    assert write(value) == expected


@given(_VALUES)
@example({"é": "ü"})
def test_an_api_body_is_what_json_dumps_wrote_or_the_same_error(value: Any) -> None:
    write = json_writer(separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    try:
        expected = json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    except ValueError:  # NaN or an infinity: not JSON
        with pytest.raises(ValueError):
            write(value)
        return
    assert write(value) == expected


def test_values_json_cannot_hold_go_through_default() -> None:
    write = json_writer(default=repr, separators=(", ", ": "))
    assert write({"what": _Opaque()}) == '{"what": "<opaque>"}'
    with pytest.raises(TypeError):  # no default given: refused, as json.dumps refuses it
        json_writer(separators=(",", ":"))({"what": _Opaque()})


@given(
    st.datetimes(
        min_value=datetime(1970, 1, 2),
        timezones=st.sampled_from([UTC, timezone(timedelta(hours=-5))]),
    )
)
@example(datetime(2026, 12, 7, 4, 0, 0, 0, tzinfo=UTC))  # no microseconds: still written
def test_an_audit_entrys_time_is_written_with_microseconds_in_utc(at: datetime) -> None:
    assert _utc_text(at) == at.astimezone(UTC).isoformat(timespec="microseconds")
