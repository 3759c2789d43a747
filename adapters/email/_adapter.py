"""The email adapter: one SMTP message per request, to a department that has no system.

Idempotency: an SMTP server cannot be asked what it has delivered, so `find` answers from a
local sent-log (SQLite in the adapter's state dir), and `submit` sends only when the log has no
entry for the request. A crash between sending and logging can make a redelivery send again;
the copy carries the same Message-ID, so mail programs show it as the same message in one thread.
Replies from the department are out of scope: status comes back through the civicbus API.
"""

from __future__ import annotations

import smtplib
from collections.abc import Mapping
from contextlib import suppress
from datetime import UTC, datetime
from email.errors import MessageError
from pathlib import Path
from typing import Any

import structlog

from adapters._contract import Adapter, Health, Receipt
from adapters._exceptions import AdapterError, PermanentError
from adapters.email._errors import smtp_errors
from adapters.email._message import compose
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
    sent-log lives, default `var/adapters/<instance>`), `message_id_domain` (default
    `civicbus.local`). The mapping's fields make the message: `subject`, then each other field
    as a labelled line or block, in the mapping's order. Line breaks and other control
    characters in `subject` and `to` become spaces (a header is one line).
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
        state_dir = Path(settings.get("state_dir") or Path("var/adapters") / instance)
        self.sent_log = SentLog(state_dir / "sent.db")

    def submit(self, request: ServiceRequest) -> Receipt:
        """Send the request's message unless the sent-log says it went already."""
        already = self.find(request.id)
        if already is not None:
            log.info("email.already_sent", adapter=self.instance, request_id=request.id)
            return already
        fields = self.field_mapping.apply(request)
        now = datetime.now(UTC)
        context = f"email adapter {self.instance}: request {request.id}"
        try:
            message = compose(
                request.id, fields, sender=self.sender, to=self.to, at=now, domain=self.domain
            )
        except (ValueError, MessageError) as exc:
            # Data no e-mail can carry (e.g. text that is not valid Unicode): a retry builds the
            # same message. The library's text may quote the value, so only its type is named.
            raise PermanentError(
                f"{context}: the message cannot be composed ({type(exc).__name__})"
            ) from exc
        with smtp_errors(context):
            smtp = self._connection()
        try:
            with smtp_errors(context):
                smtp.send_message(message)
            # Delivered once DATA is answered 250: recorded before QUIT, whose answer (a 421
            # when the server times the session out, say) cannot undo it; had it failed the
            # submit, a redelivery would send the mail again.
            sent = Sent(request.id, str(message["Message-ID"]), now)
            self.sent_log.record(sent)
        finally:
            _hang_up(smtp)
        log.info(
            "email.sent", adapter=self.instance, request_id=request.id, message_id=sent.message_id
        )
        return Receipt(request.id, sent.message_id, created=True, status=Status.OPEN, at=now)

    def find(self, request_id: str) -> Receipt | None:
        """The message sent for `request_id`, from the local sent-log (SMTP cannot be asked)."""
        sent = self.sent_log.get(request_id)
        if sent is None:
            return None
        return Receipt(
            request_id, sent.message_id, created=False, status=Status.OPEN, at=sent.sent_at
        )

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
        return Health(True, f"{where} answers; sent-log at {self.sent_log.path}")

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


def _hang_up(smtp: smtplib.SMTP) -> None:
    """Say QUIT and close, whatever the answer: the session's work is done or failed by then.
    (`with smtplib.SMTP(...)` raises when QUIT is answered with anything but 221.)"""
    with suppress(smtplib.SMTPException, OSError):
        smtp.quit()
    smtp.close()  # when QUIT failed; closing twice is harmless
