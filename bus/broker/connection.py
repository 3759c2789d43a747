"""Connections to RabbitMQ: parameters from `CIVICBUS_AMQP_URL`, reconnect with backoff, the one
place where pika's many exception types become `BrokerUnavailable`, and the broker's word that
it blocks a publishing connection for a resource alarm (`BlockedEpisodes`).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import pika
import pika.exceptions
import structlog
import tenacity
from pika.adapters.utils.connection_workflow import AMQPConnectorException

from bus.config import ConfigError, Environment

log = structlog.get_logger(__name__)

#: Seconds between heartbeats: a dead peer or a cut network is noticed within about twice this.
HEARTBEAT = 20
#: Seconds a connection may stay blocked by a broker resource alarm before we give it up.
BLOCKED_CONNECTION_TIMEOUT = 60
#: Upper bound of the reconnect backoff, in seconds.
MAX_BACKOFF = 15.0
#: What to do when the broker blocks publishing (logged with the block, shown by `status`).
ALARM_ADVICE = (
    "a RabbitMQ resource alarm (memory high watermark or disk free limit) holds every "
    "publish until it clears: free memory or disk space on the broker host; "
    "`rabbitmq-diagnostics alarms` names the alarm"
)


class BrokerUnavailable(Exception):
    """RabbitMQ cannot be reached, dropped the connection, or did not confirm a publish."""


#: Everything pika (or the socket below it) raises when the broker goes away or misbehaves.
#: A broker that accepts the TCP connection but never answers the handshake raises one of
#: pika's connector exceptions, which are not AMQPErrors.
BROKER_ERRORS: tuple[type[BaseException], ...] = (
    pika.exceptions.AMQPError,
    AMQPConnectorException,
    OSError,
)


@contextmanager
def broker_errors(doing: str) -> Iterator[None]:
    """Translate pika's exceptions raised while `doing` something into BrokerUnavailable."""
    try:
        yield
    except BROKER_ERRORS as exc:
        raise BrokerUnavailable(f"{doing}: {_describe(exc)}") from exc


#: What RabbitMQ answers a login it refuses (a wrong user or password; AMQP 403) or a vhost that
#: is not there or not the user's (530), in the texts of pika's exceptions.
_REFUSED = ("ACCESS_REFUSED", "NOT_ALLOWED")


def _describe(exc: BaseException) -> str:
    # pika's connection errors often have an empty str(); their args hold the cause.
    text = str(exc) or ", ".join(repr(arg) for arg in exc.args) or "no details"
    described = f"{type(exc).__name__}: {text}"
    if isinstance(
        exc, pika.exceptions.ProbableAuthenticationError | pika.exceptions.ProbableAccessDeniedError
    ) or any(code in text for code in _REFUSED):
        # Not an outage to wait out: a setting to fix.
        described += " (the broker refused the login or the vhost: check the user, password "
        described += "and vhost in CIVICBUS_AMQP_URL)"
    return described


def connection_parameters(url: str | None = None) -> pika.URLParameters:
    """Parameters for `url` (default `CIVICBUS_AMQP_URL`), with heartbeat and blocked timeout.

    Values given as URL query options (`?heartbeat=5`) win over the defaults here.
    """
    url = url or Environment.from_env().amqp_url
    params = _parse(url)
    if "heartbeat=" not in url:
        params.heartbeat = HEARTBEAT
    if "blocked_connection_timeout=" not in url:
        params.blocked_connection_timeout = BLOCKED_CONNECTION_TIMEOUT
    if "socket_timeout=" not in url:
        params.socket_timeout = 5
    return params


def _parse(url: str) -> pika.URLParameters:
    """pika's parameters for the URL, or a ConfigError saying what is wrong with it.

    pika answers some malformed URLs with an IndexError, and its messages can quote the part
    where a password sits (in `amqp://user:secret/vhost` the "port" is `secret`): the error
    shows neither the URL nor pika's message, and does not chain pika's exception.
    """
    try:
        if urlsplit(url).scheme in ("amqp", "amqps"):
            return pika.URLParameters(url)
        problem = "it does not start with amqp:// or amqps://"
    except (ValueError, IndexError):
        problem = "it cannot be parsed"
    raise ConfigError(
        f"CIVICBUS_AMQP_URL is not a RabbitMQ URL ({problem}): expected the form "
        f"amqp://user:pass@host:5672/vhost, with : / @ # ? in the password percent-encoded"
    )


def _where(params: pika.URLParameters) -> str:
    # Host, port and vhost only: the URL may hold a password.
    return f"{params.host}:{params.port} (vhost {params.virtual_host!r})"


def connect(url: str | None = None) -> Any:
    """One attempt to open a pika BlockingConnection; raises BrokerUnavailable."""
    params = connection_parameters(url)
    with broker_errors(f"connecting to RabbitMQ at {_where(params)}"):
        return pika.BlockingConnection(params)


def connect_with_retry(
    url: str | None = None,
    *,
    stop: threading.Event | None = None,
    max_backoff: float = MAX_BACKOFF,
) -> Any:
    """Connect, retrying with exponential backoff and jitter until it works or `stop` is set.

    Raises BrokerUnavailable only when `stop` was set before a connection could be made.
    """
    stop = stop or threading.Event()

    def _log_retry(state: tenacity.RetryCallState) -> None:
        log.warning(
            "broker.reconnect_wait",
            attempt=state.attempt_number,
            wait_s=round(state.upcoming_sleep, 2),
            error=str(state.outcome.exception()) if state.outcome else None,
        )

    retrying = tenacity.Retrying(
        retry=tenacity.retry_if_exception_type(BrokerUnavailable),
        wait=tenacity.wait_exponential(multiplier=0.2, max=max_backoff)
        + tenacity.wait_random(0, 0.2),
        stop=lambda _state: stop.is_set(),
        sleep=_interruptible_sleep(stop),
        before_sleep=_log_retry,
        reraise=True,
    )
    connection = retrying(connect, url)
    log.info("broker.connected", where=_where(connection_parameters(url)))
    return connection


def _interruptible_sleep(stop: threading.Event) -> Callable[[float], None]:
    # Backoff waits end at once when `stop` is set: SIGTERM does not wait out a 15 s backoff.
    def sleep(seconds: float) -> None:
        stop.wait(seconds)

    return sleep


@dataclass(frozen=True)
class Blocked:
    """The broker blocks this process's publishing: since when, and its reason."""

    since: datetime
    reason: str  # the broker's words, e.g. "low on memory", "low on disk": no personal data


class BlockedEpisodes:
    """Whether RabbitMQ blocks this process's publishing for a resource alarm, across its
    reconnections: each episode is logged once as it begins (`<part>.broker_blocked`, a
    warning) and once as it ends (`<part>.broker_unblocked`).

    The broker says so only to a connection that publishes, and a new connection is told again
    when it publishes during the same alarm: that is the same episode. An episode ends when the
    broker says the connection is unblocked or confirms a publish (the alarm may clear while
    the process is between connections). Use it from the thread that owns the connections.
    """

    def __init__(self, part: str, **context: Any) -> None:
        self._part = part
        self._context = context
        #: The episode going on, None while the broker takes the publishes.
        self.current: Blocked | None = None

    def watch(self, connection: Any) -> None:
        """Hear the broker's connection.blocked and connection.unblocked on a pika
        BlockingConnection."""
        # On the connection beneath pika's blocking wrapper, which hands such notices on only
        # between its caller's own calls: never while a publish waits for its confirm (a
        # worker's), which is just when the broker blocks it.
        beneath = getattr(connection, "_impl", connection)
        beneath.add_on_connection_blocked_callback(self._on_blocked)
        beneath.add_on_connection_unblocked_callback(self._on_unblocked)

    def blocked(self, reason: str) -> None:
        """The broker blocks publishing, for `reason`."""
        if self.current is not None:
            return  # the same alarm, told again on a new connection
        self.current = Blocked(datetime.now(UTC), reason)
        log.warning(
            f"{self._part}.broker_blocked", reason=reason, todo=ALARM_ADVICE, **self._context
        )

    def cleared(self) -> None:
        """The broker takes publishes again (unblocked, or a publish was confirmed)."""
        episode, self.current = self.current, None
        if episode is None:
            return
        log.info(
            f"{self._part}.broker_unblocked",
            reason=episode.reason,
            blocked_s=round((datetime.now(UTC) - episode.since).total_seconds(), 1),
            **self._context,
        )

    def _on_blocked(self, _connection: Any, frame: Any) -> None:
        self.blocked(str(getattr(frame.method, "reason", "") or "no reason given"))

    def _on_unblocked(self, _connection: Any, _frame: Any) -> None:
        self.cleared()


def close_quietly(connection: Any) -> None:
    """Close a connection that may already be dead, without raising."""
    if connection is None:
        return
    try:
        if connection.is_open:
            connection.close()
    except BROKER_ERRORS:
        pass
