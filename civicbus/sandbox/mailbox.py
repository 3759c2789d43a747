"""A SIMULATED department mailbox: a real SMTP server (aiosmtpd) that files each message as .eml.

It stands in for the mail system of a department without a back-office system; it is a sink,
not a mail server: it accepts mail for any recipient and relays nothing. Messages go to
`<state_dir>/mailbox/` as `.eml` files, so they survive restarts and can be opened in any mail
program. A small HTTP control endpoint (its own port) lists them (`GET /_sandbox/messages`) and
sets the fault mode: `down` answers 421 (try later), `reject` 550 (refused), `slow` delays.
Recipients in the reserved `.invalid` domain are always refused (550), as bad data.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from email import message_from_bytes, policy
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

from civicbus.sandbox._control import Control, with_control
from civicbus.sandbox._serving import ServedThread, serve_wsgi
from civicbus.sandbox._workitems import Faults
from civicbus.sandbox.runner import ServeOptions


class Mailbox:
    """The .eml files of the simulated mailbox."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory

    def store(self, content: bytes) -> Path:
        # Nanosecond time keeps files in arrival order; a redelivered message gets its own file.
        digest = hashlib.sha256(content).hexdigest()[:12]
        path = self.directory / f"{time.time_ns()}-{digest}.eml"
        path.write_bytes(content)
        return path

    def messages(self) -> list[dict[str, Any]]:
        """A summary of each stored message, oldest first (headers only)."""
        listing = []
        for path in sorted(self.directory.glob("*.eml")):
            message = message_from_bytes(path.read_bytes(), policy=policy.default)
            listing.append(
                {
                    "file": path.name,
                    "message_id": message.get("Message-ID"),
                    "subject": message.get("Subject"),
                    "from": message.get("From"),
                    "to": message.get("To"),
                    "date": message.get("Date"),
                }
            )
        return listing


class _Handler:
    """aiosmtpd hooks: the fault mode first, then file the message."""

    def __init__(self, mailbox: Mailbox, faults: Faults) -> None:
        self.mailbox = mailbox
        self.faults = faults

    async def handle_MAIL(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        mail_options: list[str],
    ) -> str:
        if self.faults.take("down", "throttle"):
            return "421 4.3.2 Service not available (simulated outage)"
        if self.faults.take("slow"):
            await asyncio.sleep(self.faults.delay)
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_RCPT(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        if self.faults.take("reject"):
            return "550 5.1.1 Mailbox unavailable (simulated rejection)"
        if address.lower().rstrip(">").endswith(".invalid"):
            # RFC 2606's reserved domain: a destination that can never exist.
            return "550 5.1.2 Bad destination system address"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        content = envelope.original_content or b""
        await asyncio.to_thread(self.mailbox.store, content)
        return "250 2.0.0 Message accepted for delivery"


class FreePortController(Controller):
    """aiosmtpd's threaded controller, able to listen on port 0 (a free port, for tests)."""

    def _trigger_server(self) -> None:
        server = self.server
        if self.port == 0 and isinstance(server, asyncio.Server):
            self.port = server.sockets[0].getsockname()[1]
        super()._trigger_server()  # type: ignore[no-untyped-call]


class MailboxServer(ServedThread):
    """The running mailbox: `url` is smtp://host:port; `control_url` the HTTP control endpoint."""

    def __init__(self, host: str, port: int, control_url: str, stop: Any) -> None:
        super().__init__(f"smtp://{host}:{port}", stop, control_url=control_url)
        self.host = host
        self.port = port


def serve(options: ServeOptions) -> MailboxServer:
    """Start the mailbox: SMTP on (host, port), control on `extra['control_port']` (port + 1)."""
    mailbox = Mailbox(options.state_dir / "mailbox")
    faults = Faults()
    controller = FreePortController(
        _Handler(mailbox, faults),
        hostname=options.host,
        port=options.port,
        # No 8BITMIME/SMTPUTF8 refusal games: accept what a normal relay accepts.
        enable_SMTPUTF8=True,
        ready_timeout=10,
    )
    controller.start()
    default_control = options.port + 1 if options.port else 0
    control_port = int(options.extra.get("control_port", default_control))
    control = Control("mailbox", faults, listings={"messages": mailbox.messages})
    try:
        control_url, stop_control = serve_wsgi(
            _control_only(control), options.host, control_port, "mailbox-control"
        )
    except BaseException:
        controller.stop()
        raise

    def stop() -> None:
        stop_control()
        controller.stop()

    return MailboxServer(options.host, controller.port, control_url, stop)


def _control_only(control: Control) -> Any:
    def not_found(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"this is the mailbox's control endpoint; see /_sandbox/\n"]

    return with_control(control, not_found)
