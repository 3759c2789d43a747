"""JSON text from a kept C encoder, for the hot paths that write JSON with fixed options."""

from __future__ import annotations

from collections.abc import Callable
from json import JSONEncoder
from json.encoder import (  # type: ignore[attr-defined]
    c_make_encoder,
    encode_basestring,
    encode_basestring_ascii,
)
from typing import Any


def json_writer(
    *,
    default: Callable[[Any], Any] | None = None,
    sort_keys: bool = False,
    separators: tuple[str, str],
    ensure_ascii: bool = True,
    allow_nan: bool = True,
) -> Callable[[Any], str]:
    """What `json.JSONEncoder(...).encode` writes given these options, from one C encoder built
    here. `JSONEncoder.encode` builds a new C encoder on every call, more than half of the time
    of encoding a log line (4.2 against 1.6 us); json.dumps with options, a JSONEncoder too.

    Without the check for circular references (a shared check would need a lock): a value that
    contains itself raises RecursionError rather than ValueError.
    """
    options = JSONEncoder(
        default=default,
        sort_keys=sort_keys,
        separators=separators,
        ensure_ascii=ensure_ascii,
        allow_nan=allow_nan,
        check_circular=False,
    )
    if c_make_encoder is None:  # a Python without the C accelerator
        return options.encode
    item_separator, key_separator = separators
    encoder = c_make_encoder(
        None,  # markers: no circular-reference check
        options.default,  # JSONEncoder's own (a TypeError) unless `default` is given
        encode_basestring_ascii if ensure_ascii else encode_basestring,
        None,  # indent
        key_separator,
        item_separator,
        sort_keys,
        False,  # skipkeys
        allow_nan,
    )

    def write(value: Any) -> str:
        return "".join(encoder(value, 0))

    return write
