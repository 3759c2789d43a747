"""Webhook signatures: HMAC-SHA256 over "<timestamp>.<body>", so a receiver can check both the
sender and the freshness of a delivery (a replayed old body fails the timestamp check)."""

from __future__ import annotations

import hashlib
import hmac
import time

TIMESTAMP_HEADER = "X-Civicbus-Timestamp"
SIGNATURE_HEADER = "X-Civicbus-Signature"
EVENT_ID_HEADER = "X-Civicbus-Event-Id"
#: How old a delivery may be before `verify` refuses it.
DEFAULT_TOLERANCE_SECONDS = 300


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """The signature header value: `sha256=<hex HMAC-SHA256 of "<timestamp>.<body>">`."""
    digest = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + digest.hexdigest()


def verify(
    secret: str,
    timestamp: str,
    body: bytes,
    signature: str,
    *,
    tolerance: float = DEFAULT_TOLERANCE_SECONDS,
    now: float | None = None,
) -> bool:
    """Whether a received delivery is authentic and fresh (for receivers, and our tests)."""
    if not (timestamp.isascii() and timestamp.isdigit() and len(timestamp) <= 12):
        return False  # int() would take "²", and refuse thousands of digits with an error
    age = abs((time.time() if now is None else now) - int(timestamp))
    # As bytes: compare_digest raises on a str holding other than ASCII.
    expected = sign(secret, timestamp, body).encode()
    return age <= tolerance and hmac.compare_digest(expected, signature.encode())
