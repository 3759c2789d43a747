"""The email adapter: one SMTP message per request, to a department that has no system.

Idempotency: an SMTP server cannot be asked what it has delivered, so `find` answers from a
sent-log (adapters/email/_sentlog.py: a SQLite file in the adapter's state dir, or a database
that every host's workers share), and `submit` claims the request there before it sends and
marks it sent after. A crash between sending and marking can make a redelivery send again;
the copy carries the same Message-ID, so mail programs show it as the same message in one thread.
Replies from the department are out of scope: status comes back through the civicbus API.
"""

from __future__ import annotations

import smtplib
from collections.abc import Mapping
from contextlib import suppress
from datetime import UTC, datetime, timedelta
from email.errors import MessageError
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import structlog

from adapters._contract import Adapter, Health, Receipt
from adapters._exceptions import AdapterError, PermanentError, TransientError
from adapters.email._errors import sent_log_errors, smtp_errors
from adapters.email._message import compose, message_id_for
from adapters.email._sentlog import Sent, SentLog
from adapters.mapping import Mapping as FieldMapping
from schemas.model import ServiceRequest, Status

log = structlog.get_logger(__name__)


class EmailAdapter(Adapter):
    """Sends each request as a plain-text e-mail through an SMTP server.

    Settings: `smtp_host`, `smtp_port` (default 25), `to` (the department's address, required;
    a mapping field `to` overrides it per request), `from` (default
    `civicbus@<message_id_domain>`), `starttls` (default false), `username`/`password` (optional;
    the password from the environment), `timeout` (seconds, default 10), `state_dir` (where the
    sent-log lives, default `var/adapters/<instance>`), `sent_log_url` (a PostgreSQL or SQLite
    URL for the sent-log instead, which workers on several hosts can share; from the environment
    when it holds a password), `message_id_domain` (default `civicbus.local`). The mapping's
    fields make the message: `subject`, then each other field as a labelled line or block, in
    the mapping's order. Line breaks and other control characters in `subject` and `to` become
    spaces (a header is one line).
    """

    kind = "email"
    polls = False
    mapping_fields = frozenset({"subject"})

    def __init__(
        self, instance: str, settings: Mapping[str, Any], mapping: FieldMapping | None = None
    ) -> None:
        super().__init__(instance, settings, mapping)
        missing = [k for k in ("smtp_host", "to") if not settings.get(k)]
        if missing:
            raise ValueError(f"email adapter {instance}: set {', '.join(missing)}")
        if mapping is None:
            raise ValueError(f"email adapter {instance}: a mapping file is required")
        self.field_mapping: FieldMapping = mapping
        self.host = str(settings["smtp_host"])
        self.port = int(settings.get("smtp_port", 25))
        self.to = str(settings["to"])
        self.domain = str(settings.get("message_id_domain", "civicbus.local"))
        self.sender = str(settings.get("from") or f"civicbus@{self.domain}")
        self.starttls = bool(settings.get("starttls", False))
        self.username: str | None = settings.get("username") or None
        self._password: str | None = settings.get("password") or None
        self.timeout = float(settings.get("timeout", 10))
        # A claim older than this is a worker that died mid-send (or could not mark the message
        # sent): a live one has connected, greeted, logged in and sent within a few timeouts.
        self.claim_expires = timedelta(seconds=_CLAIM_TIMEOUTS * self.timeout)
        if settings.get("sent_log_url"):
            try:
                self.sent_log = SentLog(
                    str(settings["sent_log_url"]), instance, connect_timeout=self.timeout
                )
            except ValueError as exc:
                raise ValueError(f"email adapter {instance}: sent_log_url: {exc}") from None
        else:
            state_dir = Path(settings.get("state_dir") or Path("var/adapters") / instance)
            self.sent_log = SentLog.in_file(state_dir / "sent.db", instance)

    def submit(self, request: ServiceRequest) -> Receipt:
        """Send the request's message unless the sent-log says it went (or is going) already."""
        now = datetime.now(UTC)
        context = f"email adapter {self.instance}: request {request.id}"
        message_id = message_id_for(request.id, self.domain)
        # Claimed before it is sent: a sent-log that cannot be written to stops the mail here,
        # rather than after it went, when every redelivery would send it again.
        with sent_log_errors(context):
            there = self.sent_log.claim(request.id, message_id, now)
        if there is not None:
            if there.sent:
                log.info("email.already_sent", adapter=self.instance, request_id=request.id)
                return _receipt(there)
            self._take_over(there, now, context)
        try:
            self._send(self._compose(request, now, context), context)
        except AdapterError:
            # Not composed, refused, or not taken by the server: the retry may send at once.
            try:
                with sent_log_errors(context):
                    self.sent_log.release(request.id, now)
            except AdapterError as kept:
                # The claim stays until it expires: until then a retry hears "another worker
                # is sending", which this line explains to whoever reads the log.
                log.warning(
                    "email.claim_kept",
                    adapter=self.instance,
                    request_id=request.id,
                    expires_in_s=self.claim_expires.total_seconds(),
                    error=str(kept),
                )
            raise
        with sent_log_errors(context):
            self.sent_log.mark_sent(request.id, now)
        log.info("email.sent", adapter=self.instance, request_id=request.id, message_id=message_id)
        return Receipt(request.id, message_id, created=True, status=Status.OPEN, at=now)

    def find(self, request_id: str) -> Receipt | None:
        """The message sent for `request_id`, from the sent-log (SMTP cannot be asked)."""
        with sent_log_errors(f"email adapter {self.instance}: find request {request_id}"):
            entry = self.sent_log.get(request_id)
        if entry is None or not entry.sent:
            return None
        return _receipt(entry)

    def check(self) -> Health:
        """Connect, greet, log in if configured, NOOP: the server would take a message now."""
        where = f"mail server {self.host}:{self.port}"
        try:
            context = f"email adapter {self.instance}: health check"
            with smtp_errors(context):
                smtp = self._connection()
                try:
                    smtp.noop()
                finally:
                    _hang_up(smtp)
        except AdapterError as exc:
            return Health(False, f"{where}: {exc}")
        sent_log = f"sent-log at {self.sent_log.where}"
        try:
            with sent_log_errors(f"email adapter {self.instance}: health check"):
                self.sent_log.probe()
        except AdapterError as exc:
            return Health(False, f"{where} answers; {sent_log}: {exc}")
        return Health(True, f"{where} answers; {sent_log} answers")

    def close(self) -> None:
        self.sent_log.close()

    def _take_over(self, claimed: Sent, now: datetime, context: str) -> None:
        """Send in place of the worker that claimed the message, once it is plainly gone."""
        if now - claimed.claimed_at < self.claim_expires:
            raise TransientError(
                f"{context}: another worker is sending its message (claimed "
                f"{claimed.claimed_at.isoformat(timespec='seconds')})"
            )
        with sent_log_errors(context):
            taken = self.sent_log.take_over(claimed, now)
        if not taken:
            raise TransientError(f"{context}: another worker took over sending its message")
        log.warning(
            "email.claim_taken_over",
            adapter=self.instance,
            request_id=claimed.request_id,
            claimed_at=claimed.claimed_at.isoformat(),
        )

    def _compose(self, request: ServiceRequest, now: datetime, context: str) -> EmailMessage:
        fields = self.field_mapping.apply(request)
        try:
            return compose(
                request.id, fields, sender=self.sender, to=self.to, at=now, domain=self.domain
            )
        except (ValueError, MessageError) as exc:
            # Data no e-mail can carry (e.g. text that is not valid Unicode): a retry builds the
            # same message. The library's text may quote the value, so only its type is named.
            raise PermanentError(
                f"{context}: the message cannot be composed ({type(exc).__name__})"
            ) from exc

    def _send(self, message: EmailMessage, context: str) -> None:
        with smtp_errors(context):
            smtp = self._connection()
        try:
            with smtp_errors(context):
                smtp.send_message(message)
        finally:
            # Delivered once DATA is answered 250: the answer to QUIT (a 421 when the server
            # times the session out, say) cannot undo it, so it is not heard.
            _hang_up(smtp)

    def _connection(self) -> smtplib.SMTP:
        smtp = smtplib.SMTP(self.host, self.port, timeout=self.timeout)
        try:
            smtp.ehlo()
            if self.starttls:
                smtp.starttls()
                smtp.ehlo()
            if self.username and self._password:
                smtp.login(self.username, self._password)
        except BaseException:
            smtp.close()
            raise
        return smtp


#: How many SMTP timeouts a claim holds before another worker may send in its place.
_CLAIM_TIMEOUTS = 10


def _receipt(entry: Sent) -> Receipt:
    return Receipt(
        entry.request_id,
        entry.message_id,
        created=False,
        status=Status.OPEN,
        at=entry.sent_at or entry.claimed_at,
    )


def _hang_up(smtp: smtplib.SMTP) -> None:
    """Say QUIT and close, whatever the answer: the session's work is done or failed by then.
    (`with smtplib.SMTP(...)` raises when QUIT is answered with anything but 221.)"""
    with suppress(smtplib.SMTPException, OSError):
        smtp.quit()
    smtp.close()  # when QUIT failed; closing twice is harmless
