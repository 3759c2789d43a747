"""Reading an `application/x-www-form-urlencoded` body in the charset its Content-Type names.

GeoReport v2 sends forms as UTF-8, and UTF-8 is what a form without a charset is read as; a
client that names another charset (`charset=ISO-8859-1`) has its text read in it. Text that is
not valid in its charset is refused, naming the field, rather than stored with replacement
characters in it.
"""

from __future__ import annotations

import codecs
from urllib.parse import unquote

from bus.api.wire import Open311Problem

#: Characters a urlencoded form is built of: a charset that writes them otherwise (UTF-16,
#: EBCDIC) cannot carry one.
_FORM_SYNTAX = "&=%+azAZ09"


def content_charset(content_type: str) -> str | None:
    """The `charset` parameter of a Content-Type header, without quotes, or None."""
    for parameter in content_type.split(";")[1:]:
        name, _, value = parameter.partition("=")
        if name.strip().lower() == "charset":
            return value.strip().strip('"').strip() or None
    return None


def form_encoding(charset: str | None) -> str:
    """The codec to read a form in: UTF-8 unless `charset` names another; a charset Python does
    not know, or one that cannot carry a urlencoded form, is refused with 415."""
    if charset is None:
        return "utf-8"
    shown = repr(charset[:40])
    try:
        codec = codecs.lookup(charset)
    except LookupError:
        raise Open311Problem(
            415, f"Content-Type charset {shown} is not known: send the form in UTF-8"
        ) from None
    # codecs also finds base64, rot13 and zlib, which are no charsets.
    if not codec._is_text_encoding or _FORM_SYNTAX.encode(codec.name) != _FORM_SYNTAX.encode():
        raise Open311Problem(
            415, f"Content-Type charset {shown} cannot carry a urlencoded form: send it in UTF-8"
        )
    return codec.name


def not_in_charset(name: str, charset: str | None, *, in_query: bool = False) -> str:
    """The problem of a field whose text is not valid in its charset: the body's `charset`
    (None: UTF-8, the default), or UTF-8 for a field of the query string."""
    shown = name[:80] if name[:80].isprintable() else repr(name[:80])
    if in_query:
        return f"{shown}: not valid UTF-8 in the query string"
    if charset is None:
        return (
            f"{shown}: not valid UTF-8 (a form is read as UTF-8 unless its Content-Type names "
            "a charset)"
        )
    return f"{shown}: not valid {charset[:40]} (the charset its Content-Type names)"


def undecodable_fields(body: bytes, encoding: str) -> list[str]:
    """The names of the fields of `body` whose raw bytes are not valid in `encoding` (called
    once the body as a whole failed to decode, to say which fields to fix)."""
    names = []
    for pair in body.split(b"&"):
        try:
            pair.decode(encoding)
        except UnicodeDecodeError:
            raw_name = pair.partition(b"=")[0].replace(b"+", b" ")
            names.append(unquote(raw_name.decode(encoding, "replace"), encoding, "replace"))
    return names


def decode_urlencoded(
    text: str, fields: dict[str, list[str]], encoding: str = "utf-8"
) -> list[str]:
    """Add the fields of a urlencoded `text` to `fields`, in order, and return the names of the
    fields whose percent-escapes are not valid `encoding` (those fields are left out).

    The pairs are those `parse_qsl(text, keep_blank_values=True, encoding=encoding)` gives,
    without its per-field calls for the plain names and values most fields are.
    """
    undecodable: list[str] = []
    for pair in text.split("&"):
        if not pair:
            continue
        raw_name, _, raw_value = pair.partition("=")
        name = _unescaped(raw_name, encoding)
        if name is None:
            undecodable.append(_unescaped(raw_name, encoding, "replace") or raw_name)
            continue
        value = _unescaped(raw_value, encoding)
        if value is None:
            undecodable.append(name)
            continue
        fields.setdefault(name, []).append(value)
    return undecodable


def _unescaped(text: str, encoding: str, errors: str = "strict") -> str | None:
    """A name or value of a form as sent: `+` a space, percent-escapes in `encoding`; None when
    they are not valid in it. Plain text (most of a form) is returned as it is, untouched."""
    if "+" in text:
        text = text.replace("+", " ")
    if "%" not in text:
        return text
    try:
        return unquote(text, encoding, errors)
    except UnicodeDecodeError:
        return None
