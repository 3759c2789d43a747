"""Open311 GeoReport v2 input: forms and query values in, canonical drafts or Open311 errors out.

Tolerant in what it accepts, as real clients are old and quirky: empty values are absent,
unknown fields are ignored, `attribute[X]=v`, `attribute[X][]=v` and `attribute[X][0]=v` all
work, booleans are true/false/1/0. Every problem is reported at once, each naming the field or
attribute. Pure functions, no I/O.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from schemas.model import (
    Attribute,
    AttributeAnswer,
    Channel,
    Datatype,
    Location,
    Media,
    Reporter,
    Service,
    ServiceRequest,
    Status,
    StatusUpdate,
)

#: A decoded form or query string: every field with all its values, in order.
FormData = Mapping[str, Sequence[str]]

MAX_DESCRIPTION = 4000
#: Longest value accepted in any other single field; longer is a client bug, not a report.
MAX_FIELD = 1000
#: Longest media_url: a pre-signed S3 URL with a session token runs past 1,000 characters.
MAX_MEDIA_URL = 4096
#: How far ahead of our clock a status update may be dated: a sender's clock may run a little
#: fast, but an update from further ahead has not happened yet.
MAX_UPDATE_CLOCK_SKEW = timedelta(hours=1)
#: The years a datetime may name: far enough for any report, and far enough from the ends of
#: Python's range (years 1 to 9999) that a zone offset or a 90-day window cannot overflow it.
DATETIME_YEARS = range(1900, 9001)

#: `attribute[CODE]`, `attribute[CODE][]` (the spec's list) or `attribute[CODE][N]` (the list as
#: PHP's http_build_query and the `qs` library write it); group 2 is None, "" or the index.
_ATTRIBUTE_FIELD = re.compile(r"attribute\[([^\[\]]+)\](?:\[([0-9]*)\])?")
# Characters XML 1.0 cannot carry (and PostgreSQL text cannot hold NUL): rejected on input.
_FORBIDDEN_CHARS = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff\ud800-\udfff]")
_TRUE = frozenset({"true", "1", "yes"})
_FALSE = frozenset({"false", "0", "no"})


@dataclass(frozen=True)
class Open311Error:
    """One Open311 error: an integer code (the HTTP status) and what the client should fix."""

    code: int
    description: str

    def as_dict(self) -> dict[str, object]:
        return {"code": self.code, "description": self.description}


class InvalidValue(ValueError):
    """A single query or form value could not be read; the message names the field."""


# --- single values ------------------------------------------------------------------------


def first(form: FormData, name: str) -> str | None:
    """The first non-empty value of a field, stripped; an empty value counts as absent."""
    for value in form.get(name, ()):
        value = value.strip()
        if value:
            return value
    return None


def parse_bool(name: str, value: str | None, *, default: bool = False) -> bool:
    """Read an Open311 boolean: true/false/1/0; absent gives `default`."""
    if value is None or not value.strip():
        return default
    lowered = value.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise InvalidValue(f"{name}: {_show(value)} is not a boolean (use true or false)")


_DATE_ALONE = re.compile(r"[0-9]{4}-?[0-9]{2}-?[0-9]{2}", re.ASCII)
# A time, a space, and an offset: 2026-12-01T09:30:00 02:00.
_SPACE_FOR_PLUS = re.compile(
    r"([T ][0-9]{2}:[0-9]{2}(?::[0-9]{2}(?:[.,][0-9]+)?)?) ([0-9]{2}(?::?[0-9]{2})?)$", re.ASCII
)


def parse_datetime(name: str, value: str) -> datetime:
    """Read an ISO 8601 datetime that carries a zone (a naive one is refused), in the years
    DATETIME_YEARS."""
    # A '+' left unencoded in a query string or a form arrives as a space (a common client bug,
    # e.g. `curl -d updated_datetime=...+02:00`): a space between a time and an offset can only
    # have been one.
    text = _SPACE_FOR_PLUS.sub(r"\1+\2", value.strip())
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise InvalidValue(
            f"{name}: {_show(value)} is not an ISO 8601 datetime (e.g. 2026-05-01T09:30:00+02:00)"
        ) from None
    if _DATE_ALONE.fullmatch(text):
        # Not read as midnight UTC: whose midnight is a guess, and as an end it would leave out
        # the very day named.
        raise InvalidValue(
            f"{name}: {_show(value)} is a date alone: give a time and a zone too "
            f"(e.g. {parsed.date().isoformat()}T00:00:00Z)"
        )
    if parsed.tzinfo is None or parsed.utcoffset() is None:
        raise InvalidValue(f"{name}: {_show(value)} has no time zone (add Z or +hh:mm)")
    if parsed.year not in DATETIME_YEARS:
        raise InvalidValue(
            f"{name}: {_show(value)} is out of range (years {DATETIME_YEARS.start} to "
            f"{DATETIME_YEARS.stop - 1})"
        )
    return parsed


#: Numbers as a back-end reads them: ASCII digits, no `_` grouping (Python's int() and float()
#: also take `1_000` and other scripts' digits, and the text is passed on as it came).
_WHOLE_NUMBER = re.compile(r"[+-]?[0-9]+", re.ASCII)
_DECIMAL_NUMBER = re.compile(r"[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+)?", re.ASCII)


def parse_int(name: str, value: str, *, low: int, high: int) -> int:
    """Read a whole number within [low, high]."""
    text = value.strip()
    if not _WHOLE_NUMBER.fullmatch(text):
        raise InvalidValue(f"{name}: {_show(value)} is not a whole number")
    number = int(text)
    if not low <= number <= high:
        raise InvalidValue(f"{name}: {_show(value)} is not between {low} and {high}")
    return number


def parse_float(name: str, value: str, *, low: float, high: float) -> float:
    """Read a finite decimal number within [low, high]; an infinite bound is no bound."""
    text = value.strip()
    if text.lower().lstrip("+-") in ("inf", "infinity", "nan"):
        raise InvalidValue(f"{name}: {_show(value)} is not a finite number")
    if not _DECIMAL_NUMBER.fullmatch(text):
        raise InvalidValue(f"{name}: {_show(value)} is not a number")
    number = float(text)
    # Overflows like 1e309 are read as infinity: not a quantity.
    if not math.isfinite(number):
        raise InvalidValue(f"{name}: {_show(value)} is not a finite number")
    if not low <= number <= high:
        if math.isinf(high):
            raise InvalidValue(f"{name}: {_show(value)} is less than {low:g}")
        if math.isinf(low):
            raise InvalidValue(f"{name}: {_show(value)} is more than {high:g}")
        raise InvalidValue(f"{name}: {_show(value)} is not between {low:g} and {high:g}")
    return number


def comma_list(value: str | None) -> list[str]:
    """Split a comma list, dropping empty items: `a, b,,c` is [a, b, c]."""
    if value is None:
        return []
    return [item.strip() for item in value.split(",") if item.strip()]


def parse_status(name: str, value: str) -> Status:
    """Read a status of the extended set in any case (pushed updates send them upper case)."""
    try:
        return Status(value.strip().lower())
    except ValueError:
        allowed = ", ".join(s.value.upper() for s in Status)
        raise InvalidValue(f"{name}: {_show(value)} is not one of {allowed}") from None


def has_control_characters(value: str) -> bool:
    """Whether `value` holds a character refused on input (XML 1.0 cannot carry it, and
    PostgreSQL text cannot hold NUL)."""
    return _FORBIDDEN_CHARS.search(value) is not None


def check_text(name: str, value: str, *, limit: int = MAX_FIELD) -> None:
    """Reject control characters and overlong values in a free-text field."""
    if has_control_characters(value):
        raise InvalidValue(f"{name}: contains control characters")
    if len(value) > limit:
        raise InvalidValue(f"{name}: longer than {limit:,} characters")


def _show(value: str) -> str:
    """A value quoted for an error message, shortened so a huge input gives a short error."""
    shown = value if len(value) <= 40 else value[:37] + "..."
    return repr(_FORBIDDEN_CHARS.sub("?", shown))


# --- create -------------------------------------------------------------------------------


@dataclass(frozen=True)
class RequestDraft:
    """A valid create form, read against its service; the intake turns it into a request."""

    service: Service
    location: Location
    reporter: Reporter
    description: str | None
    attributes: dict[str, AttributeAnswer]
    media_url: str | None

    def to_request(
        self,
        *,
        request_id: str,
        at: datetime,
        channel: Channel = Channel.WEB,
        media: tuple[Media, ...] = (),
    ) -> ServiceRequest:
        """The canonical request; uploaded media win over a `media_url`."""
        if not media and self.media_url:
            media = (Media(url=self.media_url),)
        return ServiceRequest(
            id=request_id,
            jurisdiction=self.service.jurisdiction,
            service_code=self.service.code,
            service_name=self.service.name,
            description=self.description,
            attributes=self.attributes,
            location=self.location,
            reporter=self.reporter,
            media=media,
            channel=channel,
            agency=self.service.agency,
            service_notice=self.service.service_notice,
            requested_at=at,
            updated_at=at,
            changed_at=at,
        )


_REPORTER_FIELDS = ("email", "device_id", "account_id", "first_name", "last_name", "phone")


def parse_create_form(form: FormData, service: Service | None) -> RequestDraft | list[Open311Error]:
    """Read a POST /requests form against its service.

    With `service` None (missing or unknown code, reported by the caller) the rest of the form
    is still checked, so the client learns everything that is wrong at once.
    """
    problems: list[str] = []
    location = _read_location(form, problems)
    reporter_fields: dict[str, str] = {}
    for name in _REPORTER_FIELDS:
        value = _text_field(form, name, problems)
        if value is not None:
            reporter_fields[name] = value
    description = _text_field(form, "description", problems, limit=MAX_DESCRIPTION)
    media_url = _text_field(form, "media_url", problems, limit=MAX_MEDIA_URL)
    if media_url is not None and not re.match(r"^https?://[^\s/]+", media_url, re.IGNORECASE):
        problems.append(f"media_url: {_show(media_url)} is not an http or https URL")
    problems.extend(attribute_field_problems(form))
    attributes = _read_attributes(form, service, problems) if service is not None else {}
    errors = [Open311Error(400, p) for p in problems]
    if errors or service is None or location is None:
        return errors
    return RequestDraft(
        service=service,
        location=location,
        reporter=Reporter(**reporter_fields),
        description=description,
        attributes=attributes,
        media_url=media_url,
    )


def _text_field(
    form: FormData, name: str, problems: list[str], *, limit: int = MAX_FIELD
) -> str | None:
    value = first(form, name)
    if value is None:
        return None
    try:
        check_text(name, value, limit=limit)
    except InvalidValue as exc:
        problems.append(str(exc))
        return None
    return value


def _read_location(form: FormData, problems: list[str]) -> Location | None:
    lat_text, long_text = first(form, "lat"), first(form, "long")
    address = _text_field(form, "address_string", problems)
    address_id = _text_field(form, "address_id", problems)
    zipcode = _text_field(form, "zipcode", problems)
    lat = long = None
    before = len(problems)
    if (lat_text is None) != (long_text is None):
        problems.append("lat and long must be given together")
    elif lat_text is not None and long_text is not None:
        for name, text, limit in (("lat", lat_text, 90.0), ("long", long_text, 180.0)):
            try:
                value = parse_float(name, text, low=-limit, high=limit)
            except InvalidValue as exc:
                problems.append(str(exc))
                continue
            lat, long = (value, long) if name == "lat" else (lat, value)
    if lat_text is None and long_text is None and address is None and address_id is None:
        # An address refused above was a location given: its own error says what to fix.
        if first(form, "address_string") is None and first(form, "address_id") is None:
            problems.append("a location is required: lat and long, address_string, or address_id")
        return None
    if len(problems) > before:
        return None
    return Location(lat=lat, long=long, address=address, address_id=address_id, zipcode=zipcode)


def attribute_values(form: FormData) -> dict[str, list[str]]:
    """Every `attribute[CODE]`, `attribute[CODE][]` and `attribute[CODE][N]` value by code, empty
    values dropped: the first two spellings' in the order of the fields, then the indexed items
    in the order of their indexes (`[2]` before `[10]`), as the array they were written from."""
    found: dict[str, list[str]] = {}
    indexed: dict[str, list[tuple[tuple[int, str], list[str]]]] = {}
    for field, values in form.items():
        match = _ATTRIBUTE_FIELD.fullmatch(field)
        if not match:
            continue
        code, index = match.groups()
        kept = [v.strip() for v in values if v.strip()]
        if not kept:
            continue
        if index:
            # Compared as digits, not int(): a 5,000-digit index is past int()'s limit.
            digits = index.lstrip("0")
            indexed.setdefault(code, []).append(((len(digits), digits), kept))
        else:
            found.setdefault(code, []).extend(kept)
    for code, items in indexed.items():
        for _, kept in sorted(items, key=lambda item: item[0]):
            found.setdefault(code, []).extend(kept)
    return found


def attribute_field_problems(form: FormData) -> list[str]:
    """A problem for each field shaped like an attribute that is none of the three spellings
    (`attribute[X][a]`, `attribute[X`, `attribute[]`): ignoring it would drop an answer the
    client thinks it gave."""
    return [
        f"{_show(field)} is not an attribute field: send attribute[CODE]=value, and for several "
        "values attribute[CODE][]=value or attribute[CODE][0]=value"
        for field in form
        if field.startswith("attribute[") and not _ATTRIBUTE_FIELD.fullmatch(field)
    ]


def _read_attributes(
    form: FormData, service: Service, problems: list[str]
) -> dict[str, AttributeAnswer]:
    given = attribute_values(form)
    answers: dict[str, AttributeAnswer] = {}
    # Unknown codes are ignored (tolerant input); informational attributes take no answer.
    for attribute in sorted(service.attributes, key=lambda a: a.order):
        if not attribute.variable:
            continue
        values = given.get(attribute.code, [])
        if not values:
            if attribute.required:
                problems.append(f"{attribute.code} required")
            continue
        answer = _read_answer(attribute, values, problems)
        if answer is not None:
            answers[attribute.code] = answer
    return answers


def _read_answer(
    attribute: Attribute, values: list[str], problems: list[str]
) -> AttributeAnswer | None:
    code = attribute.code
    limit = MAX_DESCRIPTION if attribute.datatype is Datatype.TEXT else MAX_FIELD
    for value in values:
        try:
            check_text(code, value, limit=limit)
        except InvalidValue as exc:
            problems.append(str(exc))
            return None
    if attribute.datatype is Datatype.MULTIVALUELIST:
        unknown = [v for v in values if not _is_key(attribute, v)]
        if unknown:
            problems.extend(_not_one_of(attribute, v) for v in unknown)
            return None
        return tuple(dict.fromkeys(values))  # repeated keys count once, order kept
    distinct = list(dict.fromkeys(values))
    if len(distinct) > 1:
        problems.append(f"{code}: takes one value, got {len(distinct)}")
        return None
    value = distinct[0]
    try:
        if attribute.datatype is Datatype.NUMBER:
            parse_float(code, value, low=-math.inf, high=math.inf)
        elif attribute.datatype is Datatype.DATETIME:
            return parse_datetime(code, value).isoformat()
        elif attribute.datatype is Datatype.SINGLEVALUELIST and not _is_key(attribute, value):
            problems.append(_not_one_of(attribute, value))
            return None
    except InvalidValue as exc:
        problems.append(str(exc))
        return None
    return value


def _is_key(attribute: Attribute, value: str) -> bool:
    return any(v.key == value for v in attribute.values)


def _not_one_of(attribute: Attribute, value: str) -> str:
    keys = ", ".join(v.key for v in attribute.values)
    return f"{attribute.code}: {_show(value)} is not one of {keys}"


# --- status updates (mySociety servicerequestupdates) ----------------------------------------


def parse_update_form(
    form: FormData, *, source: str, now: datetime
) -> StatusUpdate | list[Open311Error]:
    """Read a POST /servicerequestupdates form into a canonical update, or errors; `now` is
    the server's clock, which `updated_datetime` may pass by MAX_UPDATE_CLOCK_SKEW at most."""
    problems: list[str] = []
    values: dict[str, object] = {"source": source}
    for name, key in (("service_request_id", "request_id"), ("update_id", "update_id")):
        value = _text_field(form, name, problems, limit=200)
        if value is None and not any(p.startswith(name) for p in problems):
            problems.append(f"{name} required")
        values[key] = value
    status_text = first(form, "status")
    if status_text is None:
        problems.append("status required")
    else:
        try:
            values["status"] = parse_status("status", status_text)
        except InvalidValue as exc:
            problems.append(str(exc))
    when = first(form, "updated_datetime")
    if when is None:
        problems.append("updated_datetime required")
    else:
        try:
            at = parse_datetime("updated_datetime", when)
        except InvalidValue as exc:
            problems.append(str(exc))
        else:
            if at > now + MAX_UPDATE_CLOCK_SKEW:
                hours = MAX_UPDATE_CLOCK_SKEW / timedelta(hours=1)
                problems.append(
                    f"updated_datetime: {_show(when)} is in the future (more than {hours:g} h "
                    f"ahead of the server's clock, now {now.replace(microsecond=0).isoformat()})"
                )
            values["at"] = at
    values["note"] = _text_field(form, "description", problems, limit=MAX_DESCRIPTION)
    values["external_status_code"] = _text_field(form, "external_status_code", problems)
    media_url = _text_field(form, "media_url", problems, limit=MAX_MEDIA_URL)
    if media_url is not None and not re.match(r"^https?://[^\s/]+", media_url, re.IGNORECASE):
        problems.append(f"media_url: {_show(media_url)} is not an http or https URL")
    values["media_url"] = media_url
    if problems:
        return [Open311Error(400, p) for p in problems]
    return StatusUpdate.model_validate(values)
