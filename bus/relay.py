"""The outbox relay: moves committed outbox rows to RabbitMQ, in order, confirmed, at least once.

One relay is active at a time (a lease in the store); other copies stand by and take over when
the lease expires. A relay publishes only while it holds the lease: it renews it every third of
its length and checks it before each batch goes out. One that finds the lease gone (another
relay holds it, or it ran out before it was renewed) sends nothing more: the cycle ends, and the
batch it has not seen confirmed is left to the new holder, who publishes it again. A relay that
cannot reach the broker keeps its lease for one lease length (a broker restart does not move
it), then gives it up and competes for it again only once it reaches the broker: meanwhile a
standby that reaches the broker takes over, and while none does, no relay holds the lease.

Each cycle reads pending rows in id order, batch after batch, publishes each batch with publisher
confirms, and only after the broker confirmed the whole batch marks its rows sent and writes their
audit entries, in one store transaction. While the broker routes, stores and confirms one batch,
the relay reads and publishes the next: one batch ahead, no more, so the broker and the relay
work side by side instead of in turn (measured in tests/bench/bench_bus.py).

A `civicbus.request.created` event is also turned into a command for the adapter instance the
routing rules choose, followed by a `civicbus.request.routed` event saying so (in the same
confirmed batch: it is published when, and only when, the command is).

A row addressed to one queue (a dead-letter replay) is published mandatory, so that a replay no
queue takes is returned rather than dropped. If that queue is one the relay declares (a
configured instance's), the batch is left unsent and goes again after reconnecting, as for an
unroutable command. Otherwise its route is gone (a removed subscription or instance): the rest
of the batch is marked sent as usual, while the replay is audited `replay_returned` and its
dead letter waits again for the operator (`civicbus dead list`), so it neither is lost nor
holds back the rows behind it.

When the broker goes away mid-batch nothing of it is marked, and the same rows are published
again, in the same order, after reconnecting: a consumer may see a message twice (those of the
batch behind the one that failed too), never miss one, and sees each message for the first time
in outbox order. The same holds when the store fails to mark a batch.

When RabbitMQ blocks the relay's connection for a resource alarm (memory or disk), the batch
waits on it for the alarm to clear, the relay keeps its lease meanwhile, and it records the
block in the store (`civicbus status` names it: the broker tells only publishing connections).
"""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import structlog

from bus import deadletters
from bus.broker.connection import (
    BlockedEpisodes,
    BrokerUnavailable,
    broker_errors,
    close_quietly,
    connect,
)
from bus.broker.publisher import (
    CONFIRM_TIMEOUT,
    ConfirmingPublisher,
    Outgoing,
    Sent,
    Unroutable,
    envelope_message,
)
from bus.broker.topology import (
    COMMANDS_EXCHANGE,
    EVENTS_EXCHANGE,
    command_routing_key,
    declare_topology,
    event_routing_key,
)
from bus.config import Config
from bus.routing import route, routed_event
from bus.store import OutboxMessage, Store, StoreUnavailable
from schemas.events import Envelope, EventType

log = structlog.get_logger(__name__)

ACTOR = "relay"
LEASE = "relay"
#: Batches one cycle relays at most before it looks at its lease and the broker's blocks again
#: (it keeps both up to date while it waits for confirms too).
MAX_CYCLE_BATCHES = 20


class LeaseLost(Exception):
    """The relay lease is no longer this relay's (another relay holds it, or it ran out before
    it was renewed): the cycle ends, and what it has not seen confirmed is the holder's to send."""


@dataclass(frozen=True)
class RelaySettings:
    #: Rows per batch: one round of publishes, then one wait for all their confirms.
    batch_size: int = 500
    #: Seconds to wait before looking again when the outbox is empty. Right after rows were
    #: relayed the relay looks again much sooner (from `quick_poll`, doubling up to this), so
    #: a steady trickle of requests is not held back a whole interval each time.
    poll_interval: float = 0.2
    #: The first wait after a batch, in seconds (an indexed look at the outbox costs little).
    quick_poll: float = 0.005
    #: Seconds the relay lease lasts; renewed every third of it. A standby takes over after it,
    #: and a relay that could not reach the broker for this long gives the lease up.
    lease_ttl: float = 15.0
    #: Upper bound, in seconds, of the wait between reconnect attempts and after a failed batch.
    max_backoff: float = 15.0
    #: Seconds a batch may wait for its confirms before the connection is given up (the wait
    #: while the broker blocks publishing for a resource alarm does not count).
    confirm_timeout: float = CONFIRM_TIMEOUT
    #: Upper bound, in seconds, of the wait after the store failed: asking it again costs one
    #: query, and the relay should resume within seconds of the store coming back.
    store_max_backoff: float = 2.0
    #: Who holds the lease: unique per process.
    holder: str = field(
        default_factory=lambda: f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
    )


@dataclass
class _Routed:
    instance: str
    rule: str


@dataclass(frozen=True)
class _InFlight:
    """A batch published and not yet marked: its rows, the commands routed, its confirms."""

    rows: Sequence[OutboxMessage]
    routed: dict[int, _Routed]
    sent: Sent
    #: When the batch went to the broker: its audit entries' time. They are written after
    #: its confirms, by which time a worker may already have audited the command's delivery.
    sent_at: datetime


class Relay:
    """The relay loop: `run()` until `stop` is set; `relay_pending()` is one cycle of it."""

    def __init__(
        self,
        store: Store,
        config: Config,
        amqp_url: str | None = None,
        *,
        settings: RelaySettings | None = None,
        stop: threading.Event | None = None,
    ) -> None:
        self.store = store
        self.config = config
        self.amqp_url = amqp_url
        self.settings = settings or RelaySettings()
        self.stop = stop or threading.Event()
        self._connection: Any = None
        self._publisher: ConfirmingPublisher | None = None
        #: When this relay last took or renewed the lease (time.monotonic(), taken before asking
        #: the store: the lease lasts at least lease_ttl from then); None while it holds none.
        self._lease_renewed_at: float | None = None
        #: Since when the broker could not be reached (None while it can).
        self._broker_lost_at: float | None = None
        #: It gave the lease up for want of a broker: it competes again once it reaches one.
        self._awaiting_broker = False
        self._failures = 0
        self._empty_looks = 0
        self._catalogue = {(s.jurisdiction, s.code) for s in config.services}
        self._warned_unknown: set[tuple[str, str]] = set()
        #: Whether the store knows this config's instances as declared (see _commit).
        self._declared_noted = False
        self._blocks = BlockedEpisodes("relay", holder=self.settings.holder)
        #: The block as the store has it from this relay (its start), and when it was written.
        self._block_recorded: datetime | None = None
        self._block_written_at = 0.0

    # --- the loop ----------------------------------------------------------------------------
    def run(self) -> None:
        """Relay until `stop` is set, surviving broker and store outages; then let go cleanly."""
        log.info("relay.started", holder=self.settings.holder)
        try:
            while not self.stop.is_set():
                self._cycle()
        finally:
            self._disconnect()
            self._forget_block()
            self._release_lease()
            log.info("relay.stopped", holder=self.settings.holder)

    def _cycle(self) -> None:
        try:
            if self._awaiting_broker:
                self._ensure_connected()
            if not self._hold_lease():
                self._disconnect()  # a standby keeps no connection
                self.stop.wait(self.settings.lease_ttl / 3)
                return
            self._record_block()
            sent = self.relay_pending()
            self._failures = 0
            if sent == 0:
                self._idle()
            else:
                self._empty_looks = 0
        except LeaseLost:
            # Logged when seen. The next cycle stands by, or takes the lease again if it is free.
            self._disconnect()
        except (BrokerUnavailable, Unroutable) as exc:
            # Nothing of the batch was marked: it goes out again, whole and in order.
            self._disconnect()
            if isinstance(exc, BrokerUnavailable):
                self._give_up_lease_if_broker_stays_away()
            self._back_off("relay.broker_failed", exc, self.settings.max_backoff)
        except StoreUnavailable as exc:
            self._back_off("relay.store_failed", exc, self.settings.store_max_backoff)

    def _idle(self) -> None:
        wait = min(self.settings.poll_interval, self.settings.quick_poll * 2**self._empty_looks)
        self._empty_looks = min(self._empty_looks + 1, 16)
        # Waiting inside pika's I/O loop keeps heartbeats flowing on an idle connection.
        with broker_errors("waiting for outbox rows"):
            self._connection.process_data_events(time_limit=wait)

    def _back_off(self, event: str, exc: Exception, cap: float) -> None:
        self._failures += 1
        wait = min(cap, 0.1 * 2 ** min(self._failures, 8))
        log.warning(event, error=str(exc), attempt=self._failures, wait_s=wait)
        self.stop.wait(wait)

    def _hold_lease(self) -> bool:
        """At a cycle's start: keep the lease, or take it if it is free; False while another
        relay holds it."""
        if self._still_holding():
            return True
        now = time.monotonic()
        if not self.store.try_lease(LEASE, self.settings.holder, self.settings.lease_ttl):
            return False
        log.info("relay.active", holder=self.settings.holder)
        self._lease_renewed_at = now
        return True

    def _keep_lease(self) -> None:
        """Before a batch goes out: raise LeaseLost unless this relay has held the lease without
        a break since its cycle began (renewing it if a third of it has passed)."""
        if not self._still_holding():
            raise LeaseLost(f"relay {self.settings.holder} no longer holds the relay lease")

    def _still_holding(self) -> bool:
        """Whether this relay holds the lease and has since it took it, renewed in the store
        when a third of it has passed (cheap until then). A lease that ran out before it was
        renewed is lost even if no one took it: a standby may have held it meanwhile."""
        renewed = self._lease_renewed_at
        if renewed is None:
            return False
        now = time.monotonic()
        held_for = now - renewed
        if held_for < self.settings.lease_ttl / 3:
            return True
        if held_for < self.settings.lease_ttl:
            if self.store.try_lease(LEASE, self.settings.holder, self.settings.lease_ttl):
                self._lease_renewed_at = now
                return True
            reason = "another relay holds it"
        else:
            reason = f"not renewed for {held_for:.1f} s, longer than it lasts"
        log.warning("relay.lease_lost", holder=self.settings.holder, reason=reason)
        self._lease_renewed_at = None
        return False

    def _give_up_lease_if_broker_stays_away(self) -> None:
        """After a broker failure: once the broker has been out of reach for a lease length,
        let the lease go, so that a standby that reaches the broker takes over (rather than
        none working while this relay waits), and compete again only once it is reachable."""
        now = time.monotonic()
        if self._broker_lost_at is None:
            self._broker_lost_at = now
        away = now - self._broker_lost_at
        if self._lease_renewed_at is None or away < self.settings.lease_ttl:
            return
        log.warning(
            "relay.lease_given_up",
            holder=self.settings.holder,
            broker_unreachable_s=round(away, 1),
            why="a standby relay that reaches the broker takes over",
        )
        self._release_lease()
        self._awaiting_broker = True

    def _while_publishing(self) -> None:
        """On each pass of a batch's wait for its confirms (at least once a second, for as long
        as the broker blocks publishing): keep the lease, and keep the store told of the block.
        Cheap while neither is due. A lease lost meanwhile lets the batch be confirmed (it went
        out while the lease was held) and stops the next one (`_keep_lease`)."""
        try:
            if self._still_holding():
                self._record_block()
        except StoreUnavailable as exc:
            # The batch goes on waiting; the next cycle meets the store's failure again.
            log.warning("relay.store_failed", error=str(exc), during="a batch's confirms")

    def _record_block(self) -> None:
        """Write the broker's block to the store when it begins (and again every third of the
        lease, to say it lasts), remove it when it ends."""
        block = self._blocks.current
        if block is None:
            if self._block_recorded is not None:
                self.store.note_broker_unblocked(LEASE, self.settings.holder)
                self._block_recorded = None
            return
        now = time.monotonic()
        fresh = now - self._block_written_at < self.settings.lease_ttl / 3
        if self._block_recorded == block.since and fresh:
            return
        self.store.note_broker_blocked(LEASE, self.settings.holder, block.since, block.reason)
        self._block_recorded = block.since
        self._block_written_at = now

    def _forget_block(self) -> None:
        """On stopping: a relay that no longer runs is no relay the broker blocks."""
        if self._block_recorded is None:
            return
        try:
            self.store.note_broker_unblocked(LEASE, self.settings.holder)
        except StoreUnavailable as exc:
            log.warning("relay.block_forget_failed", error=str(exc))
        self._block_recorded = None

    def _release_lease(self) -> None:
        if self._lease_renewed_at is None:
            return
        try:
            self.store.release_lease(LEASE, self.settings.holder)
        except StoreUnavailable as exc:
            log.warning("relay.lease_release_failed", error=str(exc))
        self._lease_renewed_at = None

    def _ensure_connected(self) -> None:
        """Connect (one attempt: the relay loop backs off and tries again, keeping or giving up
        its lease meanwhile) unless connected; raises BrokerUnavailable."""
        if (
            self._publisher is not None
            and self._connection is not None
            and self._connection.is_open
        ):
            return
        self._disconnect()
        connection = connect(self.amqp_url)
        try:
            self._blocks.watch(connection)
            declare_topology(connection.channel(), self.config.instances)
            self._publisher = ConfirmingPublisher(
                connection,
                confirm_timeout=self.settings.confirm_timeout,
                while_waiting=self._while_publishing,
            )
        except BaseException:
            close_quietly(connection)
            raise
        self._connection = connection
        self._broker_lost_at = None
        self._awaiting_broker = False
        log.info("relay.connected", holder=self.settings.holder)

    def _disconnect(self) -> None:
        close_quietly(self._connection)
        self._connection = None
        self._publisher = None

    # --- one cycle ---------------------------------------------------------------------------
    def relay_pending(self) -> int:
        """Publish the pending rows batch after batch, each marked sent (and audited) once the
        broker confirmed all of it; returns the number of rows relayed (0: the outbox is empty).

        While the broker confirms one batch, the next one is read and published (a pipeline
        two batches deep): the broker works while the relay does, which keeps both busy.
        The cycle ends when the outbox is empty, after MAX_CYCLE_BATCHES batches, or when the
        relay is stopping (after its first batch). Raises BrokerUnavailable or Unroutable, and
        StoreUnavailable when rows could not be read or marked: the batches not yet marked go
        out again, in order, on the next cycle (the one behind the failed one, already
        published, thus twice). Raises LeaseLost when the lease is not, or no longer, this
        relay's: no batch goes out after that.
        """
        if not self._hold_lease():
            raise LeaseLost(f"another relay holds the relay lease, not {self.settings.holder}")
        self._ensure_connected()
        self._keep_lease()  # connecting may have taken a while
        relayed = 0
        in_flight: deque[_InFlight] = deque()
        after, batches, more = 0, 0, True
        try:
            while True:
                stopping = batches > 0 and self.stop.is_set()
                if more and batches < MAX_CYCLE_BATCHES and not stopping:
                    rows = self.store.pending_outbox_messages(self.settings.batch_size, after=after)
                    more = len(rows) == self.settings.batch_size
                    if rows:
                        in_flight.append(self._send(rows))
                        after, batches = rows[-1].id, batches + 1
                        if more and len(in_flight) < 2:
                            continue  # the next batch goes out while this one is confirmed
                if not in_flight:
                    return relayed
                relayed += self._settle(in_flight.popleft())
        finally:
            if in_flight and self._publisher is not None:
                self._publisher.abandon()  # given up: published again on the next cycle

    def _send(self, rows: Sequence[OutboxMessage]) -> _InFlight:
        """Publish the rows' messages as one batch, without waiting for its confirms, if this
        relay still holds the lease (else LeaseLost)."""
        self._keep_lease()
        publisher = self._connected_publisher()
        routed: dict[int, _Routed] = {}
        sent_at = datetime.now(UTC)
        sent = publisher.send(list(self._messages(rows, routed)))
        return _InFlight(rows, routed, sent, sent_at)

    def _settle(self, batch: _InFlight) -> int:
        """Wait for the batch's confirms, then mark its rows sent and audit them."""
        publisher = self._connected_publisher()
        returned: dict[int, str] = {}
        try:
            publisher.wait(batch.sent)
        except Unroutable as exc:
            returned = self._returned_replays(batch.rows, exc)
        self._blocks.cleared()  # confirmed, though perhaps returned
        self._commit(batch.rows, batch.routed, returned, batch.sent_at)
        return len(batch.rows)

    def _connected_publisher(self) -> ConfirmingPublisher:
        """The publisher of the cycle's connection. Within a cycle the relay never connects
        again: a new connection starts a new cycle, which first makes sure of the lease."""
        if self._publisher is None:
            raise BrokerUnavailable("the connection to the broker was closed during the cycle")
        return self._publisher

    def _returned_replays(self, rows: Sequence[OutboxMessage], exc: Unroutable) -> dict[int, str]:
        """The replay rows returned because their route is gone, by row id, with the route.
        Raises `exc` again if any returned message was for a queue the relay declares: then the
        batch goes again after reconnecting (and declaring the topology)."""
        gone: dict[tuple[str, str, str], str] = {}
        for message_id, exchange, routing_key in exc.returned:
            target = deadletters.replayed_route(exchange, routing_key)
            if target is None or target in self.config.instances:
                raise exc
            gone[message_id, exchange, routing_key] = target
        return {
            row.id: gone[address]
            for row in rows
            if (address := (row.envelope.id, row.exchange, row.routing_key)) in gone
        }

    def _commit(
        self,
        rows: Sequence[OutboxMessage],
        routed: dict[int, _Routed],
        returned: dict[int, str],
        sent_at: datetime,
    ) -> None:
        """Mark the confirmed rows sent and audit them as of `sent_at` (relayed, routed; a
        returned replay gives its dead letters back), in one transaction."""
        letters = {
            row.id: deadletters.replayed_letters(self.store, returned[row.id], row.envelope.id)
            for row in rows
            if row.id in returned
        }
        with self.store.transaction() as tx:
            for row in rows:
                if row.id in returned:
                    deadletters.give_back(
                        tx,
                        letters[row.id],
                        route=returned[row.id],
                        envelope=row.envelope,
                        actor=ACTOR,
                        reason=f"no queue is bound for {row.routing_key!r} on "
                        f"{row.exchange or 'the default exchange'}: its route is gone",
                    )
                    continue
                tx.audit(
                    actor=ACTOR,
                    action="relayed",
                    request_id=row.envelope.subject,
                    message_id=row.envelope.id,
                    details={"exchange": row.exchange, "routing_key": row.routing_key},
                    at=sent_at,
                )
                if row.id in routed:
                    tx.audit(
                        actor=ACTOR,
                        action="routed",
                        request_id=row.envelope.subject,
                        message_id=row.envelope.id,
                        details={"instance": routed[row.id].instance, "rule": routed[row.id].rule},
                        at=sent_at,
                    )
            tx.mark_sent([row.id for row in rows])
            if not self._declared_noted:
                # Their queues exist now (declared on connecting) and outlive the config's
                # naming them: `civicbus status` watches those of instances removed since.
                tx.remember_declared_instances(list(self.config.instances))
        self._declared_noted = True
        for row_id, target in returned.items():
            log.error(
                "relay.replay_returned",
                route=target,
                row=row_id,
                dead_letters=[letter.id for letter in letters[row_id]],
                todo=f"no queue takes {target}'s messages any more; the dead letter waits again "
                f"(civicbus dead list {target}): drop it, or declare the queue and replay it",
            )
        log.info("relay.batch_sent", rows=len(rows), commands=len(routed), last_id=rows[-1].id)

    def _messages(
        self, rows: Sequence[OutboxMessage], routed: dict[int, _Routed]
    ) -> Iterator[Outgoing]:
        for row in rows:
            envelope = row.envelope
            body = row.body  # the envelope's JSON as stored: published as it is
            # A row addressed to one queue (a dead-letter replay) must reach it: mandatory, so
            # the broker returns it rather than drop it when that queue is gone.
            yield envelope_message(
                envelope,
                exchange=row.exchange,
                routing_key=row.routing_key,
                mandatory=row.exchange != EVENTS_EXCHANGE,
                body=body,
            )
            # Only the announcement of a new request is routed: a row already addressed to an
            # instance (a dead-letter replay) goes out as it is, exactly once.
            if envelope.type is EventType.CREATED and row.exchange == EVENTS_EXCHANGE:
                instance, rule = route(self.config, envelope)
                self._warn_if_unknown(envelope, instance)
                routed[row.id] = _Routed(instance, rule)
                # The command right after its event: the order per request holds on the wire.
                yield envelope_message(
                    envelope,
                    exchange=COMMANDS_EXCHANGE,
                    routing_key=command_routing_key(instance),
                    mandatory=True,
                    headers={"instance": instance, "rule": rule},
                    body=body,
                )
                yield envelope_message(
                    routed_event(envelope, instance, rule),
                    exchange=EVENTS_EXCHANGE,
                    routing_key=event_routing_key(EventType.ROUTED, instance),
                )

    def _warn_if_unknown(self, envelope: Envelope, instance: str) -> None:
        """Warn, once per service, of a request for a service this relay's config lacks: the
        API accepted it with a newer config, and the relay routes with the one it started with."""
        service_code = envelope.data.get("service_code")
        jurisdiction = envelope.data.get("jurisdiction")
        if not isinstance(service_code, str) or not isinstance(jurisdiction, str):
            return  # the router has warned of that already
        key = (jurisdiction, service_code)
        if key in self._catalogue or key in self._warned_unknown:
            return
        self._warned_unknown.add(key)
        log.warning(
            "relay.service_not_in_catalogue",
            service_code=service_code,
            jurisdiction=jurisdiction,
            instance=instance,
            hint="restart the relay after changing the config",
        )
