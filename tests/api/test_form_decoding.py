"""The API's urlencoded form reader decodes exactly as the standard library's parse_qsl does
(the same pairs, in the same order, in the form's charset), which Starlette's own form and query
parsing use; where parse_qsl would replace text not valid in the charset, the reader names the
field instead."""

from __future__ import annotations

from urllib.parse import parse_qsl

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bus.api.urlencoded import content_charset, decode_urlencoded, form_encoding
from bus.api.wire import Open311Problem

# Few characters, so that separators, escapes (good, bad, partial) and pluses meet often.
_PIECES = st.sampled_from(
    ["&", "=", "+", "%", "%2", "%20", "%41", "%C3%A9", "%ff", "%e2%82", "a", "Z", "é", "☃", " "]
)


def _pairs(text: str, encoding: str) -> list[tuple[str, str]]:
    fields: dict[str, list[str]] = {}
    assert decode_urlencoded(text, fields, encoding) == []
    order = [name for name, _ in parse_qsl(text, keep_blank_values=True, encoding=encoding)]
    # The reader groups values by name; parse_qsl lists pairs: compare per name, in order.
    return [(name, fields[name].pop(0)) for name in order]


@given(st.lists(_PIECES, max_size=30).map("".join), st.sampled_from(["utf-8", "latin-1"]))
def test_a_form_decodes_as_parse_qsl_decodes_it(text: str, encoding: str) -> None:
    try:
        expected = parse_qsl(text, keep_blank_values=True, encoding=encoding, errors="strict")
    except UnicodeDecodeError:
        # Refused, never replaced: some field is named as not valid in the charset.
        assert decode_urlencoded(text, {}, encoding)
    else:
        assert _pairs(text, encoding) == expected


def test_a_realistic_form_decodes_with_repeated_keys_blank_values_and_escapes() -> None:
    text = (
        "service_code=POTHOLE&attribute%5BHAZARDS%5D%5B%5D=water&attribute%5BHAZARDS%5D%5B%5D="
        "oil&description=Deep+pothole%2C+50%25+of+the+lane&email=r%40example.org&empty=&bare"
    )
    fields: dict[str, list[str]] = {}
    assert decode_urlencoded(text, fields) == []
    assert fields == {
        "service_code": ["POTHOLE"],
        "attribute[HAZARDS][]": ["water", "oil"],
        "description": ["Deep pothole, 50% of the lane"],
        "email": ["r@example.org"],
        "empty": [""],
        "bare": [""],
    }


def test_escapes_are_read_in_the_forms_charset_and_bad_ones_name_their_field() -> None:
    fields: dict[str, list[str]] = {}
    assert decode_urlencoded("a=Stra%DFe&b=ok", fields, "iso8859-1") == []
    assert fields == {"a": ["Stra\u00dfe"], "b": ["ok"]}
    fields = {}
    assert decode_urlencoded("a=Stra%DFe&b=ok&c%FF=x", fields) == ["a", "c\ufffd"]
    assert fields == {"b": ["ok"]}


@pytest.mark.parametrize(
    ("content_type", "charset"),
    [
        ("application/x-www-form-urlencoded", None),
        ("application/x-www-form-urlencoded; charset=ISO-8859-1", "ISO-8859-1"),
        ('application/x-www-form-urlencoded;CHARSET="utf-8"', "utf-8"),
        ("application/x-www-form-urlencoded; charset=", None),
    ],
)
def test_the_charset_is_read_from_the_content_type(content_type: str, charset: str) -> None:
    assert content_charset(content_type) == charset


def test_a_charset_python_knows_that_can_carry_a_form_is_its_encoding() -> None:
    assert form_encoding(None) == "utf-8"
    assert form_encoding("ISO-8859-1") == "iso8859-1"
    assert form_encoding("windows-1252") == "cp1252"
    assert form_encoding("Shift_JIS") == "shift_jis"


@pytest.mark.parametrize(
    ("charset", "problem"),
    [
        ("x-klingon", "Content-Type charset 'x-klingon' is not known: send the form in UTF-8"),
        (
            "base64",
            "Content-Type charset 'base64' cannot carry a urlencoded form: send it in UTF-8",
        ),
        (
            "utf-16",
            "Content-Type charset 'utf-16' cannot carry a urlencoded form: send it in UTF-8",
        ),
    ],
)
def test_an_unknown_charset_or_one_that_cannot_carry_a_form_is_415(
    charset: str, problem: str
) -> None:
    with pytest.raises(Open311Problem) as raised:
        form_encoding(charset)
    assert raised.value.status == 415
    assert [e.description for e in raised.value.errors] == [problem]
