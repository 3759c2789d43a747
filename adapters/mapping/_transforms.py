"""The value transforms of a mapping field: small pure functions, one per option.

Each takes a value from the canonical request's JSON document (None meaning "no value") and
returns the transformed value; a value that cannot be transformed raises Unfit, which the
engine turns into a MappingFailed naming the field (never the value).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo


class Unfit(ValueError):
    """A value that a transform cannot take; the message describes the problem, never the value."""


#: What a mapping may write as a constant, default or table value.
Scalar = str | int | float | bool | None

#: Named date/time formats; anything else containing % is a strftime pattern.
NAMED_FORMATS = ("sap_date", "sap_time", "iso", "iso_date")


def is_blank(value: Any) -> bool:
    """No value: missing, null, an empty string or an empty list."""
    return value is None or value == "" or (isinstance(value, list | tuple) and not value)


def to_text(value: Any) -> str:
    """A value as the text a back-end field holds: lists comma-joined, booleans lower-case."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | tuple):
        return ", ".join(to_text(v) for v in value)
    if isinstance(value, dict):
        raise Unfit("an object cannot be written as text; select one of its fields")
    return str(value)


def truncate(value: Any, limit: int) -> str:
    """Cut text to at most `limit` characters (the back-end's field length)."""
    return to_text(value)[:limit]


def truncate_bytes(value: Any, limit: int) -> str:
    """Cut text to at most `limit` bytes in UTF-8, never inside a character.

    For columns sized in bytes (Oracle's VARCHAR2(n) under BYTE length semantics), where
    accented or non-Latin text holds fewer characters than the declared length.
    """
    text = to_text(value)
    encoded = text.encode("utf-8", "surrogatepass")
    if len(encoded) <= limit:
        return text
    cut = limit
    while cut > 0 and encoded[cut] & 0xC0 == 0x80:  # a continuation byte: inside a character
        cut -= 1
    return encoded[:cut].decode("utf-8", "surrogatepass")


def upper(value: Any) -> str:
    return to_text(value).upper()


def lookup(value: Any, table: Mapping[str, Scalar], default: Scalar) -> Any:
    """Translate through a table; a list is translated element by element (duplicates dropped).

    A value the table lacks becomes `default` (None when no default is given).
    """
    if isinstance(value, list | tuple):
        out: list[Scalar] = []
        for item in value:
            mapped = table.get(to_text(item), default)
            if mapped is not None and mapped not in out:
                out.append(mapped)
        return out or default
    if value is None:
        return default
    return table.get(to_text(value), default)


def _sort_key(value: Any) -> tuple[int, float, str]:
    # Numbers (and numeric text such as priority "2") compare as numbers, the rest as text.
    try:
        return (0, float(value), "")
    except (TypeError, ValueError):
        return (1, 0.0, to_text(value))


def choose(value: Any, how: str) -> Any:
    """Reduce a list to one element: first, last, min or max."""
    if not isinstance(value, list | tuple):
        return value
    if not value:
        return None
    if how == "first":
        return value[0]
    if how == "last":
        return value[-1]
    if how == "min":
        return min(value, key=_sort_key)
    if how == "max":
        return max(value, key=_sort_key)
    raise Unfit(f"unknown choice {how!r}")


def join(value: Any, separator: str) -> Any:
    if isinstance(value, list | tuple):
        return separator.join(to_text(v) for v in value)
    return value


def parse_datetime(value: Any) -> datetime:
    """A datetime from an ISO 8601 string (the JSON form of canonical datetimes) or a datetime.

    A value without a zone is taken as UTC.
    """
    if isinstance(value, datetime):
        parsed = value
    elif isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.strip())
        except ValueError:
            raise Unfit("not an ISO 8601 date/time") from None
    else:
        raise Unfit("not a date or time")
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


def format_datetime(value: Any, fmt: str, zone: ZoneInfo) -> str:
    """Convert to `zone`, then format: sap_date (YYYYMMDD), sap_time (HHMMSS), iso, strftime."""
    try:
        local = parse_datetime(value).astimezone(zone)
    except OverflowError as exc:
        raise Unfit("date out of range after time-zone conversion") from exc
    if fmt == "sap_date":
        return f"{local.year:04d}{local.month:02d}{local.day:02d}"
    if fmt == "sap_time":
        return f"{local.hour:02d}{local.minute:02d}{local.second:02d}"
    if fmt == "iso":
        return local.isoformat()
    if fmt == "iso_date":
        return local.date().isoformat()
    return local.strftime(fmt)


def is_valid_format(fmt: str) -> bool:
    return fmt in NAMED_FORMATS or "%" in fmt


def convert(value: Any, type_name: str, decimals: int | None = None) -> Any:
    """Convert to a JSON type: string, integer, number or boolean; round numbers if asked."""
    if type_name == "string":
        if isinstance(value, float) and decimals is not None:
            return f"{value:.{decimals}f}"
        return to_text(value)
    if type_name == "integer":
        if isinstance(value, bool):
            return int(value)
        number = value if isinstance(value, int | float) else _parse_number(value)
        if not math.isfinite(number):
            raise Unfit("not a finite number")
        return round(number)
    if type_name == "number":
        number = value if isinstance(value, int | float) else _parse_number(value)
        if isinstance(number, bool) or not math.isfinite(number):
            raise Unfit("not a finite number")
        return round(number, decimals) if decimals is not None else number
    if type_name == "boolean":
        if isinstance(value, bool):
            return value
        text = to_text(value).strip().lower()
        if text in ("true", "yes", "y", "1", "x"):
            return True
        if text in ("false", "no", "n", "0", ""):
            return False
        raise Unfit("not a yes/no value")
    raise Unfit(f"unknown type {type_name!r}")


def _parse_number(value: Any) -> float:
    try:
        return float(to_text(value))
    except ValueError:
        raise Unfit("not a number") from None


def round_number(value: Any, decimals: int) -> Any:
    if isinstance(value, float) and not isinstance(value, bool):
        return round(value, decimals)
    return value


def flatten_location(value: Any) -> tuple[float, float] | None:
    """(longitude, latitude) of a location or a [long, lat] pair; None when it lacks them."""
    if isinstance(value, dict):
        lon, lat = value.get("long"), value.get("lat")
    elif isinstance(value, Sequence) and not isinstance(value, str) and len(value) == 2:
        lon, lat = value[0], value[1]
    else:
        return None
    if isinstance(lon, int | float) and isinstance(lat, int | float):
        return float(lon), float(lat)
    return None
