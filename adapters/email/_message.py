"""Composing the e-mail for one request: a plain-text layout of the mapped fields.

Pure: no I/O. The Message-ID is derived from the civicbus request id, so every message about one
request threads together in the department's mail program, and a resend is recognisably the same.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import datetime
from email.message import EmailMessage
from email.utils import format_datetime
from typing import Any

#: Mapped fields the layout places itself; every other field is a labelled line or block.
_HEADER_FIELDS = ("subject", "to")
_UNSAFE_ID_CHARS = re.compile(r"[^A-Za-z0-9._\-]")
#: Line breaks and other control characters: a header cannot hold them (a line break would
#: start a new header), and request data (an address typed on two lines) may bring them.
_CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]+")


def message_id_for(request_id: str, domain: str = "civicbus.local") -> str:
    """`<request-id@domain>`; characters not allowed in a Message-ID become `_`."""
    return f"<{_UNSAFE_ID_CHARS.sub('_', request_id)}@{domain}>"


def compose(
    request_id: str,
    fields: Mapping[str, Any],
    *,
    sender: str,
    to: str,
    at: datetime,
    domain: str = "civicbus.local",
) -> EmailMessage:
    """The message for one request: headers from `subject`/`to`, a body from the other fields."""
    message = EmailMessage()
    message["From"] = sender
    recipient = _header(fields.get("to") or to)
    try:
        message["To"] = recipient
    except IndexError:
        # The standard library's address parser fails this way on some malformed addresses
        # (e.g. "<" or '"'), where it raises HeaderParseError on others: the same mistake.
        raise ValueError("the To address cannot be parsed") from None
    # An address is sent as ASCII: a non-ASCII one would need SMTPUTF8, and the standard
    # library writes it as an encoded word, which no reader (itself included) parses back.
    if not all(address.addr_spec.isascii() for address in message["To"].addresses):
        raise ValueError(
            "the To address has non-ASCII characters: write its domain in its ASCII form "
            "(xn--...) and its mailbox in ASCII"
        )
    message["Subject"] = _header(fields.get("subject") or f"Service request {request_id}")
    message["Date"] = format_datetime(at)
    message["Message-ID"] = message_id_for(request_id, domain)
    message["X-Civicbus-Request-Id"] = request_id
    message["Auto-Submitted"] = "auto-generated"  # RFC 3834: no auto-replies, please
    message.set_content(_body(request_id, fields))
    return message


def _header(value: Any) -> str:
    """`value` on one line: control characters (CR, LF, tab, ...) become single spaces."""
    return " ".join(_CONTROL_CHARS.sub(" ", str(value)).split())


def _body(request_id: str, fields: Mapping[str, Any]) -> str:
    lines: list[str] = []
    for name, value in fields.items():
        if name in _HEADER_FIELDS:
            continue
        label = name.replace("_", " ").capitalize()
        lines += _section(label, value)
    lines += [
        "",
        "-- ",
        f"Sent by civicbus for service request {request_id}.",
        "Replies to this message are not read by civicbus;",
        "update the request's status through the civicbus API.",
    ]
    return "\n".join(lines).lstrip("\n") + "\n"


def _section(label: str, value: Any) -> list[str]:
    if isinstance(value, Mapping):
        items = [f"  {k}: {_text(v)}" for k, v in value.items() if _text(v)]
        return ["", f"{label}:", *items] if items else []
    text = _text(value)
    if not text:
        return []
    if "\n" in text or len(text) > 60:
        return ["", f"{label}:", text]
    return [f"{label}: {text}"]


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, list | tuple):
        return ", ".join(_text(v) for v in value)
    return str(value).strip()
