"""The API's urlencoded form reader decodes exactly as the standard library's parse_qsl does
(the same pairs, in the same order), which Starlette's own form and query parsing use."""

from __future__ import annotations

from urllib.parse import parse_qsl

from hypothesis import given
from hypothesis import strategies as st

from bus.api.open311_writes import _decode_urlencoded

# Few characters, so that separators, escapes (good, bad, partial) and pluses meet often.
_PIECES = st.sampled_from(
    ["&", "=", "+", "%", "%2", "%20", "%41", "%C3%A9", "%ff", "%e2%82", "a", "Z", "é", "☃", " "]
)


def _pairs(text: str) -> list[tuple[str, str]]:
    fields: dict[str, list[str]] = {}
    _decode_urlencoded(text, fields)
    order = [name for name, _ in parse_qsl(text, keep_blank_values=True)]
    # The reader groups values by name; parse_qsl lists pairs: compare per name, in order.
    return [(name, fields[name].pop(0)) for name in order]


@given(st.lists(_PIECES, max_size=30).map("".join))
def test_a_form_decodes_as_parse_qsl_decodes_it(text: str) -> None:
    assert _pairs(text) == parse_qsl(text, keep_blank_values=True, errors="replace")


def test_a_realistic_form_decodes_with_repeated_keys_blank_values_and_escapes() -> None:
    text = (
        "service_code=POTHOLE&attribute%5BHAZARDS%5D%5B%5D=water&attribute%5BHAZARDS%5D%5B%5D="
        "oil&description=Deep+pothole%2C+50%25+of+the+lane&email=r%40example.org&empty=&bare"
    )
    fields: dict[str, list[str]] = {}
    _decode_urlencoded(text, fields)
    assert fields == {
        "service_code": ["POTHOLE"],
        "attribute[HAZARDS][]": ["water", "oil"],
        "description": ["Deep pothole, 50% of the lane"],
        "email": ["r@example.org"],
        "empty": [""],
        "bare": [""],
    }
