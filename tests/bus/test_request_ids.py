"""Request ids and batch tokens are ULIDs: 26 Crockford base-32 digits that sort by time."""

from __future__ import annotations

import time

from hypothesis import given
from hypothesis import strategies as st

from bus.intake import crockford_base32, new_request_id, new_token

CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def spelled_out(value: int) -> str:
    """Base 32 digit by digit, as the ULID specification describes it."""
    digits = []
    for _ in range(26):
        value, digit = divmod(value, 32)
        digits.append(CROCKFORD[digit])
    return "".join(reversed(digits))


@given(st.integers(min_value=0, max_value=2**128 - 1))
def test_the_digits_are_crockford_base_32_of_the_value(value: int) -> None:
    assert crockford_base32(value) == spelled_out(value)


def test_the_extremes_are_spelled_out() -> None:
    assert crockford_base32(0) == "0" * 26
    assert crockford_base32(2**128 - 1) == "7" + "Z" * 25


def test_ids_sort_by_creation_time_and_do_not_repeat() -> None:
    earlier = [new_request_id() for _ in range(50)]
    time.sleep(0.002)  # the next millisecond at least
    later = [new_request_id() for _ in range(50)]
    assert all(len(i) == 26 and set(i) <= set(CROCKFORD) for i in earlier + later)
    assert max(earlier) < min(later)
    assert len(set(earlier + later)) == 100


def test_a_token_is_a_ulid_after_a_t() -> None:
    token = new_token()
    assert token.startswith("T") and len(token) == 27
    assert set(token[1:]) <= set(CROCKFORD)
