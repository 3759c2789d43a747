"""Redaction of residents' personal data from anything that leaves the request store.

Audit details and log lines pass through `redact`: values under personal-data keys (e-mail,
phone, names, device id, the whole reporter) become "[redacted]", and e-mail addresses or
phone numbers written inside free text are masked. Identifiers (`*_id`, `reference`, a
Message-ID) are left alone: a 12-digit SAP notification number is not a phone number.

A name has no pattern. While a worker handles a request it names that request's reporter
values (`masking`), and free text then has them masked too, as whole words in any case: a
back-end's refusal quoting "Reporter Jane Doe" reaches the log, the dead letter and the
`delivery_failed` event as "Reporter [redacted] [redacted]".
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from functools import lru_cache
from typing import Any

REDACTED = "[redacted]"
EMAIL_MASK = "[redacted-email]"
PHONE_MASK = "[redacted-phone]"

#: Keys (lower case, `-`/space as `_`) whose values are personal data, whatever they hold.
PERSONAL_KEYS = frozenset(
    {
        "reporter",
        "email",
        "e_mail",
        "email_address",
        "phone",
        "phone_number",
        "telephone",
        "mobile",
        "first_name",
        "last_name",
        "full_name",
        "name",
        "device_id",
        "account_id",
    }
)

#: Suffixes that make a compound key personal too ("reporter_email", "contact_phone").
_PERSONAL_SUFFIXES = (
    "_email",
    "_phone",
    "_phone_number",
    "_first_name",
    "_last_name",
    "_device_id",
)

# The local part takes every character RFC 5322 allows unquoted. The user of a URL
# (`postgresql://civicbus@db.internal/civicbus`, as a store error names its database) is matched
# first and kept: it names a service account, and masking it would hide the host an operator
# looks for. A URL's `user:password@` is not kept (its password is masked as before), except
# the `***` SQLAlchemy writes in place of one.
# Both bounded (a scheme of 32 characters, a local part of 64 as RFC 5321 allows): unbounded,
# every start in a long run without an `@` scanned the rest of it, seconds for a crafted note.
_EMAIL_OR_URL_USER = re.compile(
    r"(?P<url_user>\b[A-Za-z][\w+.\-]{0,31}://[^\s/@:]+(?::\*\*\*)?@)"
    r"|[\w.!#$%&'*+/=?^`{|}~\-]{1,64}@[\w\-]+(?:\.[\w\-]+)+"
)
# A run of 7 to 15 digits, optionally led by "+", with single spaces, dots, dashes or
# parentheses between groups; not glued to letters, digits or dashes (ids, UUIDs, hashes).
_PHONE = re.compile(r"(?<![\w\-+])\+?\(?\d(?:[\s.\-()/]{0,2}\d){6,14}(?![\w\-])")
# Digit runs that look like a phone number but are dates, times or decimal numbers.
_NOT_A_PHONE = re.compile(r"^(?:\d{4}-\d{2}-\d{2}|\d{1,2}[.\-/]\d{1,2}[.\-/]\d{2,4}|\d+\.\d+)")


#: Keys whose values are identifiers civicbus or a back-end assigned (an SAP notification
#: number, a Message-ID, a lease holder `host:pid:token`, an Oracle work order, a queue or
#: instance name): never a resident's free text, so never masked as if they were.
_IDENTIFIER_KEYS = frozenset(
    {
        "id",
        "reference",
        "references",
        "message_id",
        "in_reply_to",
        "holder",
        "lease",
        "work_order",
        "instance",
        "route",
        "queue",
        "exchange",
        "routing_key",
    }
)
_IDENTIFIER_SUFFIXES = ("_id", "_reference", "_ref", "_revision")


_OTHER, _PERSONAL, _IDENTIFIER = "other", "personal", "identifier"


# Every log line and audit entry asks this of the same few dozen keys: remember the answers.
@lru_cache(maxsize=4096)
def _key_kind(key: str) -> str:
    normal = key.strip().lower().replace("-", "_").replace(" ", "_")
    # Personal is checked first: device_id and account_id are personal, not identifiers.
    if normal in PERSONAL_KEYS or normal.endswith(_PERSONAL_SUFFIXES):
        return _PERSONAL
    if normal in _IDENTIFIER_KEYS or normal.endswith(_IDENTIFIER_SUFFIXES):
        return _IDENTIFIER
    return _OTHER


def _mask_email(match: re.Match[str]) -> str:
    return match.group("url_user") or EMAIL_MASK


def _mask_phone(match: re.Match[str]) -> str:
    text = match.group(0)
    return text if _NOT_A_PHONE.match(text) else PHONE_MASK


#: The contact values (lower case) of the reporter whose request is being handled, if any.
_KNOWN: ContextVar[tuple[str, ...]] = ContextVar("civicbus_known_personal_data", default=())


@contextmanager
def masking(values: Iterable[str | None]) -> Iterator[None]:
    """Inside the block (on this thread or task), free text has these values masked as well
    (a request's reporter's names, e-mail, phone, ids; those of one letter are left out)."""
    known = tuple({value.strip().lower() for value in values if value and len(value.strip()) > 1})
    token = _KNOWN.set(known)
    try:
        yield
    finally:
        _KNOWN.reset(token)


def redact_text(text: str) -> str:
    """The text with e-mail addresses and phone-number-looking digit runs masked, and the
    values named by `masking` (if any)."""
    if "@" in text:
        text = _EMAIL_OR_URL_USER.sub(_mask_email, text)
    text = _PHONE.sub(_mask_phone, text)
    if known := _KNOWN.get():
        text = _mask_known(text, known)
    return text


def _mask_known(text: str, known: tuple[str, ...]) -> str:
    lowered = text.lower()
    found = [value for value in known if value in lowered]
    if not found:  # the usual case: a look for each value, no pattern built
        return text
    # The longest first, so that "Jane Doe" goes whole before "Jane" is looked for.
    words = "|".join(re.escape(v) for v in sorted(found, key=len, reverse=True))
    return re.sub(rf"(?<!\w)(?:{words})(?!\w)", REDACTED, text, flags=re.IGNORECASE)


def redact(value: Any) -> Any:
    """A copy of `value` with personal data removed; mappings and sequences are walked.

    Pydantic models are dumped to plain data first. The input is never modified.
    """
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, Mapping):
        return {key: _redact_item(key, item) for key, item in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [redact(item) for item in value]
    if hasattr(value, "model_dump"):
        return redact(value.model_dump(mode="json"))
    return value


#: Values that hold no text (bool is an int), returned as they are. A tuple: isinstance with
#: a union type (`int | float`) takes several times as long, on every field of every log line.
_NUMBERS = (int, float)


def _redact_item(key: object, item: Any) -> Any:
    if item is None:
        return None
    kind = _key_kind(key) if isinstance(key, str) else _OTHER
    if kind is _PERSONAL:
        return REDACTED
    if isinstance(item, str):
        return item if kind is _IDENTIFIER else redact_text(item)
    if isinstance(item, _NUMBERS):
        return item
    return redact(item)
