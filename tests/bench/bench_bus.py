"""Benchmark of the message bus. Prints figures and the machine; asserts nothing.

Run: `.venv/bin/python tests/bench/bench_bus.py [--rows 5000] [--batch 500] [--rounds 3]
[--rate 200 --seconds 30] [--only relay|worker|e2e]`.

Relay section: outbox rows -> confirmed publishes. The outbox of an embedded SQLite store (in a
temporary folder) is filled with `civicbus.request.created` rows; the relay publishes each as an
event, the command for the instance it routes the request to, and a `civicbus.request.routed`
event (3 persistent messages per row, into quorum queues; 2 until 2026-12-04), waits for the
confirms of each batch, then marks the batch sent and writes 2 audit entries per row (since
2026-12-06 it publishes the next batch before waiting for the last one's confirms). Beside it,
in the same run and on the same topology, two bare pika loops publish the same messages with
windowed confirms and nothing else: one waiting for each batch's confirms before the next, and
one batch ahead as the relay. The ratio is relay / the faster of the two.

Relay figures, 2026-11-22 (load average 1.8-2.6, three runs): bare 11,100-15,400 msgs/s; relay
4,400-6,600 msgs/s, 39-43 % (one batch after the other: 36-40 %; the committer thread gains
little on SQLite, its use is overlapping a networked store's round trips). Profiled, ~77 % of the
relay's time is pika publishing (each civicbus message carries eight properties and three
headers the bare loop does not: their encoding, and three socket writes a message, as for the
bare loop), ~19 % marking rows sent with two audit entries each (it was ~47 % before audit hashes
stopped re-parsing details and the chain head moved to the driver cursor).
2026-12-04, a quieter machine (little steal), the runs taking turns round by round: bare
30,100 msgs/s, relay 12,500-13,200 msgs/s = 41-44 %. The relay is CPU-bound (~140 us of CPU per
row against ~36 us for the bare loop, which waits on the broker half of its time). Marking a
batch on a committer thread while publishing the next one gained nothing, on SQLite (41 % against
44 % without) or on a PostgreSQL store over loopback (~10,400 msgs/s either way), so the loop is
one batch after the other again; handing each batch to the socket in slices while publishing, so
that the broker works alongside, gained ~5 % and was not kept either. An earlier run that printed
58 % had all bare rounds first while other work loaded the machine: why the rounds interleave.
2026-12-04, later, another VM (AMD EPYC, 2 vCPUs), before and after the routed event, the same
hour: 2 messages a row, bare 16,838 msgs/s, relay 7,042 msgs/s = 42 % (3,521 rows/s); 3 messages
a row, bare 17,206-18,626, relay 8,268-8,320 msgs/s = 45-48 % (2,756-2,773 rows/s). The ratio
rose only because the per-row store work is shared by three messages: rows/s fell by a fifth.

2026-12-06, with a third loop, the durable floor (floor_run: the bare loop reading its rows from
an outbox table in SQLite and marking each batch sent after its confirms), quiet machine (AMD
EPYC), median of 3: bare 21,422, floor 19,834, relay 8,229 msgs/s: 38 % of bare, 41 % of the
floor. The outbox itself costs the bare loop 7 %; the rest of the gap is civicbus's own work.

2026-12-06, later (Intel Xeon VM, 2 vCPUs), the relay publishing one batch ahead: the relay's
wait for confirms fell from ~0.59 s to ~0.01 s per 5,000 rows, and it went from 13,577 msgs/s
(46 % of bare, the hour before) to 15,062-17,524 msgs/s, 52-56 % of the bare loop that waits
batch by batch. Publishing one batch ahead speeds the bare loop up too, though: 27,377 ->
32,658-34,502 msgs/s, and against that loop the relay is at 47-51 %. Now the relay is CPU-bound
(~135 us of CPU a row: marking and auditing ~42, publishing ~50, reading ~11) and the two cores
are shared with the broker, which uses more than one of them. Joining the batch's frames into
one socket write (pika writes each frame with its own send) gained ~2 %, and an encoder of the
AMQP properties that writes pika's bytes in fewer steps gained nothing measurable (pika's takes
~5 us a message; a profiler's per-call overhead had made it look like a third of the relay):
neither was kept.

2026-12-06, evening (AMD EPYC VM, 2 vCPUs, heavily shared: the bare loop one batch ahead ran at
9,800-14,500 msgs/s), instructions counted by callgrind (1,000 rows after a warm-up batch,
batches of 500; independent of the load but for the confirm frames, hence three runs each): the
relay went from 1.24-1.32 M instructions a row to 1.07-1.11 M (-15 %). Of that, the broker's
confirms: each `multiple` confirm frame made the publisher scan every unconfirmed tag of the
batch (a few tags a frame, so ~160 k a row); each tag is now looked at once (~30 k a row with
the rest of the loop). Building a row's three messages 228 k -> 186 k (the routed event's uuid5
without a UUID object, envelope attributes read once). Publishing 463 k -> 408 k, and the kernel
time callgrind does not count fell too: the batch's frames go to the socket joined in 64 KiB
pieces instead of one send() a frame (three a message); in A/B runs of the relay alone its CPU
a row (process time) fell 5-20 %. Unchanged: reading 91 k a row, marking sent with the audit
entries 374 k (~80 % of it the two audit entries: their canonical JSON, hash and insert). The
bench, four runs of each version taking turns within the hour (load average 4-6): before
1,625-2,947 rows/s, 45-61 % of the faster bare loop (median 54 %); after 2,331-3,416 rows/s,
50-68 % (median 56 %), faster in three pairs of four. On so loaded a machine the bare loops swing
by half from run to run: the instruction counts are the figure to trust.
Later, merged with the other evening changes (audit and logging among them), 1.06 M a row. On
the same VM, quieter, three runs of 3 rounds: the relay 10,871-11,672 msgs/s, 52, 56 and 60 % of
the faster bare loop (19,335-20,797 msgs/s). A run before them gave 73 %, but two benchmark
vhosts left by killed runs still held full quorum queues, and the bare loops were slower (13,676
msgs/s); deleting them is what made the three runs comparable.
2026-12-07, the night's merged tree (insert_rows column by column, the audit's pending entries
as tuples, one JSON encoder for log lines), quiet machine, one run of 3 rounds: bare one batch
ahead 20,455 msgs/s, floor 15,446, relay 11,075 (3,692 rows/s): 54 % of the faster bare loop.
2026-12-07, night (AMD EPYC VM), with the relay checking its lease before each batch (9843147):
bare one batch ahead 16,591 msgs/s, floor 12,246, relay 9,319 (3,106 rows/s): 56 %, as before.

Each run uses a fresh vhost on the machine's broker (127.0.0.1:5672), deleted afterwards; one
left by a benchmark killed before it could delete it is deleted by the next run.
Worker section: consume -> find/submit through the in-memory adapter -> record receipt (cross-
reference, `submitted` event in the outbox, audit entries) -> ack, for commands whose requests
are in an embedded SQLite store, as `civicbus worker` runs them: the messages already delivered
(up to half the prefetch) are handled as a batch whose receipts are stored in one transaction,
then acked together; beside it a bare pika consume-ack loop over the same number of messages
(decoding nothing, one ack per message). The ratio is worker / bare; the CPU time per message of
each (this process, all threads) is printed too, as it swings less with other load.

Worker figures, 2026-11-22, 2 CPUs shared with other benchmarks (load average 1.9-3.3): bare
5,100-8,300 msgs/s at 107-111 us CPU/msg; worker 1,530-1,620 msgs/s at 590-650 us CPU/msg, i.e.
17-19 % by CPU time (18-30 % by rate, which flatters the worker when the load slows the bare
loop's round trips). Instructions per message (callgrind, independent of the load): bare 266 k,
worker 1.54 M (2.12 M before the 2026-11-22 worker changes, when it measured 11-15 %).
2026-12-04, quieter machine: bare 18,700 msgs/s at 42 us CPU/msg; worker 4,100 msgs/s at 239 us
CPU/msg: 22 % by rate, 18 % by CPU. Later that day, on a slower VM (AMD EPYC): bare 10,846 msgs/s
at 81 us CPU/msg; worker 1,970 msgs/s at 500 us CPU/msg, 18 %. Sampled, no single cost
dominates (receipt transaction ~28 %, reading the batch's requests ~12 %, broker I/O ~16 %, the
adapter call ~6 %, logging ~5 %).

2026-12-06, with a third loop, the durable floor (floor_consume_run: consume, read each body's
JSON, one receipt row per message into SQLite per batch of delivered messages, one `multiple`
ack after the commit), quiet machine, 4,000 messages, median of 3: bare 15,888 msgs/s at 51
us CPU/msg, floor 24,575 at 35 us (faster than bare: one ack per batch instead of one per
message), worker 2,660 at 373 us: 17 % of bare, 11 % of the floor. A durable receipt costs
nothing next to the broker I/O; what the target asks to cut is the worker's own processing,
spread thin (profiled: receipt transaction with its outbox event and audit entries ~43 % of
the handler thread, reading the batch's requests ~17 %, log context ~9 %, the rest below 6 %).

2026-12-06, late (AMD EPYC VM), counted with callgrind around `handle_batch` alone (no broker,
batches of 32, the in-memory adapter, logs to /dev/null): 1.51 M instructions a message before
this evening's changes, 1.26 M after. What went: the SQLite datetime text written and read in
one call each (-35 k), a log line's context set with one token and its fixed fields no longer
searched for phone numbers (-90 k), the audit's canonical JSON encoder built once (-23 k), the
batch reads on the driver's cursor (-110 k); redaction's type tests on a tuple, 1.24 M. Taken
out one at a time, what is left costs: the two audit entries ~300 k, the request reads ~150 k,
the log line ~140 k, the `submitted` event's data and envelope ~140 k, its outbox row ~130 k,
the cross-references ~80 k, the locking check ~60 k. The bench, old and new code taking turns
(two pairs, median of 3 each): old 1,635-1,910 msgs/s at 528-593 us CPU/msg, new 2,191-2,222 at
437-440 (bare 9,000-12,200): 18-20 % of bare. The same code ran 2,100-2,900 msgs/s over the hour
as the VM's speed swung (bare 7,800-14,800); prefetch 64, 128 or 256 made no difference the
noise did not hide. The handler alone takes ~260-330 us of CPU a message, civicbus's consumer
thread alone (no-op handler) 47-56 us, as the bare loop: the rest of the 440 is the two threads
taking turns on one interpreter lock.

2026-12-07 (AMD EPYC VM, 2 vCPUs, shared with other benchmarks), counted with callgrind between two
marks around `handle_batch` (a dump at each: 320 messages after 64 of warm-up, batches of 32, the
in-memory adapter, logs to /dev/null), on requests written by intake as the API writes them (a
reporter, two attributes), which cost more than the bench's plainer ones: 1.299 M instructions a
message before this night's changes, 1.172-1.174 M after (-10 %). What went, change by change: an
envelope's id made from 16 random bytes without a uuid.UUID object (-16 k); the `submitted` event's
new cross-reference written into the request's dump without a BackendRef built and dumped (-19 k);
the cross-references' INSERT on the driver's cursor (-18 k); the locking check with one lookup a
row (-7 k); NamedTuples for a command and its receipt (-10 k); insert_rows binding column by
column, a value every row shares (a batch's time) processed once, for the outbox and audit rows
(-35 k); the requests' documents filled in place (-7 k); the adapters' map_exceptions a class
instead of a generator (-12 k); the memory back-end's statuses from a dict (-3 k). Later,
driver_execute without a generator-based context manager for each statement: 1.168 M (-4 k, near
the count's noise). The difference of two runs of N and 2N messages, used before, swung by 22 k
between two runs of the same code (start-up is in both); the marks leave it out: two runs of the
old code gave 1.298 and 1.299 M, two of the new 1.172 and 1.174 M. The bench (before the
driver_execute change), old and new code taking turns, nine pairs within the hour (load 1-4; the
bare loop ran 2,530-8,891 msgs/s): old 841-2,325 msgs/s (median 1,863), new 1,909-2,655 (median
2,135), faster in seven pairs, level in one; CPU a message 402-675 us old, 366-562 new (medians 460
and 479): the CPU figure did not move beyond its noise, and the ratios to bare (old 21-36 %, new
25-79 %) say more about the bare loop's swings than about the worker. Three more pairs with the
final code, the machine quieter (load 0.6-1.7, the bare loop 7,430-10,728 msgs/s): old 1,933-2,373
msgs/s at 419-518 us CPU/msg, new 2,564-2,813 at 356-475, faster and cheaper in each pair; 22-30 %
of bare old, 25-26 % new. The consumer's inbox is now a SimpleQueue (put and get in C, ~2 us a
message of the two threads' time), which the count above does not include. Tried and left out: the
consumer thread leaving the socket alone while its handler is busy (woken at once for an ack), to
read each batch in fewer wake-ups: the process made 0.3-0.4 voluntary context switches a message
with or without it, and neither rate nor CPU moved beyond the noise, so the lock is not handed back
and forth a message; `Envelope.model_construct` for the `submitted` event (slower than validating:
31 us against 13, default factories and all); select_for_ids converting its rows column by column
(no change the count could see). Under callgrind the OpenBLAS threads of numpy (imported through
shapely by the mapping engine) spin while the handler runs, ~12 k instructions a message of noise:
the counts above are taken with OPENBLAS_NUM_THREADS=1; in a real process they sleep.
The merged tree (with the night's intake, audit and logging changes), quiet machine, one run of 3
rounds: bare 7,263 msgs/s at 105 us CPU/msg (slower than in the pairs above), worker 2,175 at 549:
30 % of bare. The target (50 %) is not met; what is left per message is spread thin (see above).
2026-12-07, later, counted as above (two runs of the same code within 0.05 %): 1.153 -> 1.042 M
instructions a message (-10 %). What went: the request dumped once a message instead of twice
(ServiceRequest.json_form, read by the memory adapter's payload and the `submitted` event: -38 k);
the hot path's pydantic calls made on the model's validator or serializer instead of through
model_validate(_json), model_dump(_json) and __init__, whose keyword arguments cost ~5 k a call
(-34 k); SQLite's datetime text written and read without datetime.replace, ~10 k a call for its
keyword parsing (-40 k; every store path gains). Where the 1.042 M go now, each function counted
alone (collection toggled around it): the two audit entries 281 k (entry_hash ~45 k an entry, of
it the SHA-256 14 k and the time's isoformat(timespec=...) 15 k; pending_entry 30 k, redaction and
canonical JSON; the rows' insert and the chain head), the log line 126 k (JSON rendering 40 k,
redaction 30 k, the time stamp 24 k), the batch read 147 k (its three statements on a pooled
connection ~58 k, the documents' parse 25 k, the models' validation ~60 k), the memory adapter's
find and submit 113 k (its one dump of the request 54 k), the outbox row 95 k (the envelope's JSON
42 k), the decode 62 k (the command's `data`, the whole request, built as Python objects the
worker never reads, ~30 k), the `submitted` event's data and envelope 70 k, the cross-references
42 k, the locking check 27 k. Left out: the `submitted` event rendered from a plain tuple instead
of a validated Envelope (~25 k at most: the envelope's own validation is ~20 k beyond its id and
time); the request's JSON form built from the stored document instead of dumped (the fields'
order and the columns' times in JSON form cost ~25 k of the ~45 k dump); a decode that skips
`data` (no pydantic schema checks a JSON object without building it). The 50 % target needs the
handler near 0.7 M: not without the audit entries and the log line, 39 % of it now.
2026-12-07, the morning's merged tree: the log line and the audit's canonical details from a kept
C encoder (json.JSONEncoder.encode built one for every call) and an audit entry's time without
isoformat's keyword: 1.051 -> 1.023 M instructions a message (1.051 is the helper's 1.042 merged
with the store's checkpointer thread, whose work the count includes). Since that morning the
store checkpoints SQLite's log on a thread of its own (bus.store._checkpointer), the worker's
commits among others. The bench, quiet machine, 2,000 commands, median of 3 rounds: bare 13,597
msgs/s at 60 us CPU/msg (twice the rate of the night's runs on the same VM), floor 19,085, worker
2,816 at 358 us CPU/msg (the night's final run: 2,175 at 549): 21 % of bare, 15 % of the floor.
The target (50 %) is not met.
2026-12-07, later (AMD EPYC VM, a slow hour: the bare loop at 5,900 msgs/s), counted as above:
the success of a delivery audited once (`submitted`, with its attempt number) instead of an
`attempt ok` entry and a `submitted` one, 960 k -> 818 k instructions a message; an audit
entry's hash from its fields by position and a UTC time kept as it is, 110 k -> 100 k an entry.
Where the 818 k go: recording the receipts 435 k (the cross-reference, the `submitted` event's
outbox row, the audit entry, the log line), the batch's request reads 137 k, the memory
back-end's find and submit 105 k, the `submitted` event built 71 k, the decode 39 k. The bench,
old and new code taking turns (one round each, three pairs): old 1,199-1,379 msgs/s (20-27 % of
bare), new 1,533-1,968 (27-34 %; the new bench also freezes the in-process worker's start-up
objects, as `civicbus worker` does, which the old one did not). The afternoon, quiet, median of
3: bare 7,642 msgs/s at 122 us CPU/msg, floor 12,061, worker 2,098 at 521 us CPU/msg: 27 % of
bare. Reaching 50 % would take the worker's CPU a message to about half of today's, with the
consumer thread's own ~50 us left as it is: the handler near 0.35 M instructions, about what the
audit entry, the outbox row and the request read alone cost now. The target is not met.
2026-12-07, evening (Intel Xeon VM, quiet), the same code: bare 17,184 msgs/s at 45 us CPU/msg,
floor 24,396, worker 5,099 at 188 us CPU/msg: 30 % of bare. Not met. The API's way to its
target (a writer process on the second core, see bench_intake.py) would do less here: the
receipt transaction is under half of the handler, and the broker needs the second core too.
2026-12-07, night (AMD EPYC VM, quiet), what the second core could give, measured with scripts
kept out of the tree (6,000 commands a run, the broker's CPU read from /proc for beam.smp):
- this bench as it is: bare 7,488 msgs/s at 122 us CPU/msg, worker 2,934 at 336: 39 % of bare.
- the broker's CPU a message: 98-138 us for the bare loop (one ack a message), 35-52 us for the
  worker (one `multiple` ack a batch). Two bare processes on the queue: 6,570-7,074 msgs/s, no
  faster than one: the bare loop is bound by the broker, not by its own process.
- the worker's handler in a process of its own (the consumer thread in the first, batches sent
  over a pipe, as the API's intake writer): 2,206-2,384 msgs/s against 2,063-2,598 on threads.
  The handler alone costs 349-381 us CPU a message there (busy 84 % of the time), which caps
  that design at ~2,800 msgs/s, ~40 % of bare; the consumer's process took ~100 us a message.
- two complete worker processes as competing consumers on one SQLite store: 2,481-2,908 msgs/s
  against 1,762-2,792 for one (each in a fresh process, its imports excluded); their CPU a
  message rose to 489-570 us (the two share the store's write lock and the cores with the broker).
Neither reaches 50 %: what the worker does a message beyond the bare loop (its store read, the
back-end call, the receipt with its outbox event, audit entry and log line) costs about three
bare consumes in CPython, and a second process only spreads it. Not built.
2026-12-07, late (AMD EPYC VM, quiet): bare 10,018 msgs/s at 73 us CPU/msg, worker 3,099 at 338:
31 % of bare. `handle_batch` alone (batches of 32 from a list, no broker, as the worker calls it;
a script kept out of the tree) takes 214 us of CPU a message: 2.9 bare consumes, as the night
before (349-381 against 122). So even the handler alone on a core of its own, with nothing for
the consumer and the broker on the other, would run at 1 / 214 us = 4,670 msgs/s, 47 % of this
bare loop. Without its log line the handler took 185 us, without its audit entries 155: the
target asks for less than what the issue itself requires of each message (the audit entry of
every hop). Not met, and not within reach of this design on two cores.
2026-12-08 (AMD EPYC VM, load ~1.2-1.6): the hand-over to a back-end is now a change to the
request (its changed_at, Open311's updated_datetime, moves in the receipt's transaction: one
UPDATE of the batch's request rows). It costs the worker ~15 % (its rows carry the request's
JSON document, rewritten whole): two pairs of runs, taking turns, with and without that UPDATE:
6,185-6,277 msgs/s at 160-167 us CPU/msg against 7,122-7,344 at 135-141 (bare 19,800-25,900:
27-31 % of bare either way). Kept: without it a consumer keeping the copy with the latest
changed_at lost the back-end reference to a replayed `created` event, and an Open311 client
polling updated_after never learnt it; a back-end call takes far longer than either figure.
An earlier run that hour, the bare loop slower (13,544 msgs/s), printed worker 6,040: 45 %.
Later, the hand-over's UPDATE compiled once per batch size and run on the driver's cursor, as the
batch's other statements (SQLAlchemy built and compiled it for every batch): two pairs taking
turns, 6,486-6,494 msgs/s at 145-148 us CPU/msg against 5,411-6,168 at 153-181 before (bare
20,500-23,400): about half of the hand-over's cost went.

End-to-end section: real `civicbus api`, `civicbus relay` and `civicbus worker` processes on
loopback (SQLite store in a temporary folder, a fresh vhost, an instance of the `memory` adapter
kind) take POST /requests.json at a steady rate (open loop: each POST starts on schedule,
whatever the earlier ones are doing). The latency of a request is from the moment its POST was
answered to its receipt by the back-end: the time the back-end gave the work item, which the
worker stores as the cross-reference's time (read from the store, outside the worker process).
Both times come from the same machine's clock. Measured 2026-11-22: all 6,000 delivered, POST
p50/p99 16.8/61.9 ms, answered -> receipt p50/p99 22.4/231 ms (max 366 ms). 2026-12-04 (quieter
machine): all 6,000 delivered, POST p50/p99 1.3/9.9 ms, answered -> receipt p50/p99 5.2/22.0 ms
(max 64 ms). Later that day, on the slower VM, with the routed event: three runs, all 6,000
delivered, answered -> receipt p50 10.8-15.2 ms, p99 42-155 ms (the 155 in the first run; the
code before the routed event, in the same hour: p50 9.4-9.6, p99 54-62 ms).
2026-12-07, the night's merged tree, quiet machine: all 6,000 delivered, POST p50/p99 3.8/25.3
ms, answered -> receipt p50/p99 11.0/70.8 ms (max 141 ms). The API exits with -15: uvicorn, once
shut down gracefully on SIGTERM, raises the signal again so that its parent sees why it ended.
2026-12-07, the morning's tree (checkpointer thread, kept JSON encoders): all 6,000 delivered,
POST p50/p99 2.8/20.4 ms, answered -> receipt p50/p99 8.2/88.7 ms (max 186 ms).
2026-12-07, evening (Intel Xeon VM, quiet), the API with its intake writer process: all 6,000
delivered, POST p50/p99 1.9/6.3 ms, answered -> receipt p50/p99 4.5/11.4 ms (max 35 ms).

The civicbus code logs as in production (JSON lines), here to /dev/null.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from functools import partial
from pathlib import Path
from typing import Any

import pika

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from bus.broker import topology as t  # noqa: E402
from bus.config import load_config  # noqa: E402
from bus.heap import freeze_startup_objects  # noqa: E402
from bus.logging import configure_logging  # noqa: E402
from bus.relay import Relay, RelaySettings  # noqa: E402
from bus.routing import routed_event  # noqa: E402
from bus.store import Store  # noqa: E402
from schemas.events import Envelope, EventType  # noqa: E402
from tests.rabbitmqctl import orphaned_vhosts, rabbitmqctl  # noqa: E402

AMQP_HOST = os.environ.get("CIVICBUS_TEST_AMQP_HOST", "127.0.0.1:5672")
#: A created row goes out as its event, the command for its back-end and the routed event.
MESSAGES_PER_ROW = 3
TAP = "bench.tap"


#: With --private-node: a RabbitMQ node of the benchmark's own (the fault tests' RabbitNode), on
#: free loopback ports, instead of the machine's broker.
_NODE: Any = None


#: A benchmark's vhost is named after its process: `civicbus-bench-<pid>-<random>`.
VHOST_PREFIX = "civicbus-bench-"


def delete_orphaned_vhosts() -> None:
    """Delete the vhosts of benchmarks whose process is gone (killed before its `finally` ran):
    their quorum queues, full of messages, kept the broker busy and slowed later runs' bare
    loops by a third. A vhost whose process is alive, another benchmark's, is left alone."""
    for name in orphaned_vhosts(VHOST_PREFIX):
        rabbitmqctl("delete_vhost", name)
        print(f"deleted {name}: left by a benchmark that is no longer running")


@contextmanager
def fresh_vhost() -> Iterator[str]:
    if _NODE is not None:
        url: str = _NODE.add_vhost()
        try:
            yield url
        finally:
            _NODE.ctl("delete_vhost", url.rsplit("/", 1)[1])
        return
    delete_orphaned_vhosts()
    vhost = f"{VHOST_PREFIX}{os.getpid()}-{uuid.uuid4().hex[:8]}"
    rabbitmqctl("add_vhost", vhost)
    rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
    try:
        yield f"amqp://guest:guest@{AMQP_HOST}/{vhost}"
    finally:
        rabbitmqctl("delete_vhost", vhost)


@contextmanager
def private_node() -> Iterator[None]:
    """Run the benchmark against a RabbitMQ node started (and removed) here."""
    global _NODE
    import importlib.util
    import shutil

    spec = importlib.util.spec_from_file_location(
        "faults_conftest", ROOT / "tests/faults/conftest.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    base = Path(tempfile.mkdtemp(prefix="civicbus-bench-node-"))
    _NODE = module.RabbitNode(base=base)
    try:
        _NODE.start()
        yield
    finally:
        _NODE.stop()
        _NODE = None
        shutil.rmtree(base, ignore_errors=True)


def machine() -> str:
    try:
        if _NODE:
            rabbit = _NODE.ctl("version").strip() + " (private node)"
        else:
            rabbit = rabbitmqctl("version")
    except (OSError, RuntimeError):
        rabbit = "?"
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as info:
            cpu = next(line.split(":", 1)[1].strip() for line in info if "model name" in line)
    except (OSError, StopIteration):
        pass
    return (
        f"{platform.system()} {platform.release()}, {os.cpu_count()} CPUs ({cpu}), "
        f"Python {platform.python_version()}, pika {pika.__version__}, RabbitMQ {rabbit}, "
        f"SQLite {sqlite3.sqlite_version}"
    )


def _envelope(index: int) -> Envelope:
    request_id = uuid.uuid4().hex
    return Envelope(
        type=EventType.CREATED,
        subject=request_id,
        data={
            "id": request_id,
            "jurisdiction": "springfield.example",
            "service_code": "POTHOLE",
            "service_name": "Pothole",
            "description": f"Deep pothole number {index} by the bus stop.",
            "location": {"lat": 37.76, "long": -122.41, "address": "1 Main St"},
            "attributes": {"LANE": "carriageway"},
            "status": "open",
        },
        correlationid=f"bench-{index}",
    )


def _prepare(url: str) -> Any:
    config = load_config(ROOT / "deploy/sandbox/civicbus.yaml")
    connection = pika.BlockingConnection(pika.URLParameters(url))
    channel = connection.channel()
    t.declare_topology(channel, config.instances)
    channel.queue_declare(TAP, durable=True, arguments={"x-queue-type": "quorum"})
    channel.queue_bind(TAP, t.EVENTS_EXCHANGE, "request.#")
    return connection


def _purge(connection: Any) -> None:
    channel = connection.channel()
    channel.queue_purge(TAP)
    channel.queue_purge(t.work_queue("sap-roads"))
    channel.close()


def relay_run(url: str, rows: int, batch: int) -> tuple[float, int]:
    """Seconds for the relay to move `rows` outbox rows (all marked sent), batch after batch as
    its loop does, and the messages published."""
    config = load_config(ROOT / "deploy/sandbox/civicbus.yaml")
    with tempfile.TemporaryDirectory() as directory:
        store = Store.open(f"sqlite:///{directory}/bench.db")
        try:
            with store.transaction() as tx:
                for index in range(rows):
                    tx.add_outbox(
                        _envelope(index),
                        exchange=t.EVENTS_EXCHANGE,
                        routing_key="request.created.POTHOLE",
                    )
            relay = Relay(store, config, url, settings=RelaySettings(batch_size=batch))
            relay._ensure_connected()  # connection set-up is not what we measure
            freeze_startup_objects()  # as `civicbus relay` does before its loop
            start = time.perf_counter()
            sent = 0
            while sent < rows:
                sent += relay.relay_pending()
            elapsed = time.perf_counter() - start
            relay._disconnect()
        finally:
            store.close()
    return elapsed, rows * MESSAGES_PER_ROW


class _Confirming:
    """A plain pika channel with windowed publisher confirms: the loops publish on `channel`
    with `properties` themselves, say how many they sent (`expect`), then `wait` for them."""

    def __init__(self, url: str) -> None:
        self.connection = pika.BlockingConnection(pika.URLParameters(url))
        self.channel = self.connection.channel()._impl
        self.properties = pika.BasicProperties(content_type="application/json", delivery_mode=2)
        self._unconfirmed: set[int] = set()
        self._next_tag = 1
        ready: list[bool] = []

        def wake() -> None:
            self.connection.add_callback_threadsafe(lambda: None)  # ends the events' wait

        def on_confirm(frame: Any) -> None:
            tag, multiple = frame.method.delivery_tag, frame.method.multiple
            done = [x for x in self._unconfirmed if x <= tag] if multiple else [tag]
            self._unconfirmed.difference_update(done)
            wake()  # (a waiter may wait for part of them)

        def on_select_ok(_frame: Any) -> None:
            ready.append(True)
            wake()

        self.channel.confirm_delivery(ack_nack_callback=on_confirm, callback=on_select_ok)
        while not ready:
            self.connection.process_data_events(time_limit=1)

    def publish_row(self, body: bytes, routed: bytes) -> int:
        """A row's messages, as the relay sends them (event, command, routed event); returns
        the tag of the last one."""
        self.channel.basic_publish(
            t.EVENTS_EXCHANGE, "request.created.POTHOLE", body, self.properties
        )
        self.channel.basic_publish(t.COMMANDS_EXCHANGE, "sap-roads", body, self.properties)
        self.channel.basic_publish(
            t.EVENTS_EXCHANGE, "request.routed.sap-roads", routed, self.properties
        )
        self._unconfirmed.update(range(self._next_tag, self._next_tag + MESSAGES_PER_ROW))
        self._next_tag += MESSAGES_PER_ROW
        return self._next_tag - 1

    def wait(self, upto: int | None = None) -> None:
        """Until every message is confirmed (or each up to tag `upto`)."""
        while self._unconfirmed and (upto is None or min(self._unconfirmed) <= upto):
            self.connection.process_data_events(time_limit=1)

    def close(self) -> None:
        self.connection.close()


def _bodies(rows: int) -> tuple[list[bytes], list[bytes]]:
    """The created events of `rows` requests and their routed events, as JSON."""
    envelopes = [_envelope(i) for i in range(rows)]
    routed = [routed_event(e, "sap-roads", "roads-to-sap") for e in envelopes]
    return (
        [e.model_dump_json().encode() for e in envelopes],
        [r.model_dump_json().encode() for r in routed],
    )


def bare_run(url: str, rows: int, batch: int, *, ahead: bool = False) -> tuple[float, int]:
    """Seconds for plain pika to publish the same messages with windowed confirms, waiting for
    each batch's confirms before the next; `ahead`: publishing one batch ahead, as the relay
    does (each batch goes out before the confirms of the one before it are awaited, so the
    broker is never left idle while the loop publishes). The faster of the two is the relay's
    yardstick."""
    bodies, routed = _bodies(rows)
    out = _Confirming(url)
    behind: int | None = None  # the last tag of the batch before
    start = time.perf_counter()
    for first in range(0, rows, batch):
        for index in range(first, min(first + batch, rows)):
            last = out.publish_row(bodies[index], routed[index])
        if not ahead:
            out.wait()
            continue
        out.connection.process_data_events(time_limit=0)  # out to the broker now
        if behind is not None:
            out.wait(upto=behind)
        behind = last
    out.wait()
    elapsed = time.perf_counter() - start
    out.close()
    return elapsed, rows * MESSAGES_PER_ROW


def floor_run(url: str, rows: int, batch: int, database: Path) -> tuple[float, int]:
    """The least a durable relay does: the bare loop, reading each batch of rows from an
    outbox table in SQLite (WAL, synchronous=NORMAL, as civicbus's store) and marking them
    sent in one transaction once confirmed. No routing, no properties or headers beyond the
    bare loop's, no audit: relay / floor is the share of the floor's throughput that
    civicbus's own processing leaves."""
    bodies, routed = _bodies(rows)
    db = sqlite3.connect(database, isolation_level=None)
    db.execute("PRAGMA journal_mode = WAL")
    db.execute("PRAGMA synchronous = NORMAL")
    db.execute("CREATE TABLE outbox (id INTEGER PRIMARY KEY, body BLOB, routed BLOB, sent_at REAL)")
    db.execute("BEGIN")
    db.executemany(
        "INSERT INTO outbox (body, routed) VALUES (?, ?)", zip(bodies, routed, strict=True)
    )
    db.execute("COMMIT")
    out = _Confirming(url)
    sent = 0
    start = time.perf_counter()
    while sent < rows:
        pending = db.execute(
            "SELECT id, body, routed FROM outbox WHERE sent_at IS NULL ORDER BY id LIMIT ?",
            (batch,),
        ).fetchall()
        for _, body, routed_body in pending:
            out.publish_row(body, routed_body)
        out.wait()
        db.execute("BEGIN")
        db.execute(
            "UPDATE outbox SET sent_at = ? WHERE id BETWEEN ? AND ?",
            (time.time(), pending[0][0], pending[-1][0]),
        )
        db.execute("COMMIT")
        sent += len(pending)
    elapsed = time.perf_counter() - start
    out.close()
    db.close()
    return elapsed, rows * MESSAGES_PER_ROW


def _interleaved(
    rounds: int, runs: dict[str, Callable[[], tuple[float, int]]], reset: Callable[[], None]
) -> dict[str, float]:
    """The median rate of each run, the runs taking turns round after round: a change in the
    machine's load during the section then weighs on all of them alike, not on one."""
    rates: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(rounds):
        for name, run in runs.items():
            reset()
            elapsed, messages = run()
            rates[name].append(messages / elapsed)
    return {name: statistics.median(values) for name, values in rates.items()}


def relay_section(rows: int, batch: int, rounds: int) -> None:
    with fresh_vhost() as url, tempfile.TemporaryDirectory() as folder:
        connection = _prepare(url)
        floors = (Path(folder) / f"floor-{n}.db" for n in range(rounds))
        rates = _interleaved(
            rounds,
            {
                "bare": lambda: bare_run(url, rows, batch),
                "bare_ahead": lambda: bare_run(url, rows, batch, ahead=True),
                "floor": lambda: floor_run(url, rows, batch, next(floors)),
                "relay": lambda: relay_run(url, rows, batch),
            },
            reset=lambda: _purge(connection),
        )
        bare, floor, relay = rates["bare"], rates["floor"], rates["relay"]
        ahead = rates["bare_ahead"]
        connection.close()
    print(
        f"\nrelay: {rows} outbox rows -> {MESSAGES_PER_ROW * rows} persistent messages "
        f"(event, command, routed event), "
        f"batches of {batch}, median of {rounds}"
    )
    print(f"  {'bare pika, windowed confirms':34} {bare:10,.0f} msgs/s")
    print(f"  {'bare pika, one batch ahead':34} {ahead:10,.0f} msgs/s")
    print(f"  {'floor: + a SQLite outbox table':34} {floor:10,.0f} msgs/s")
    rows_per_s = relay / MESSAGES_PER_ROW
    label = "civicbus relay (SQLite outbox)"
    print(f"  {label:34} {relay:10,.0f} msgs/s ({rows_per_s:,.0f} rows/s)")
    best = max(bare, ahead)
    print(f"  {'ratio relay / faster bare':34} {relay / best:10.0%}   (target >= 50 %)")
    print(f"  {'ratio relay / floor':34} {relay / floor:10.0%}")


WORKER_INSTANCE = "bench"


#: The worker section's prefetch unless --prefetch says otherwise (civicbus's default is 16).
BENCH_PREFETCH = 64


def _worker_config(prefetch: int = BENCH_PREFETCH) -> Any:
    from bus.config import InstanceConfig

    return InstanceConfig(kind="memory", prefetch=prefetch)


def _fill_work(url: str, envelopes: list[Envelope]) -> None:
    connection = pika.BlockingConnection(pika.URLParameters(url))
    channel = connection.channel()
    t.declare_topology(channel, {WORKER_INSTANCE: _worker_config()})
    channel.queue_purge(t.work_queue(WORKER_INSTANCE))
    channel.confirm_delivery()
    properties = pika.BasicProperties(delivery_mode=2, content_type="application/json")
    for envelope in envelopes:
        channel.basic_publish(
            t.COMMANDS_EXCHANGE,
            WORKER_INSTANCE,
            envelope.model_dump_json().encode(),
            properties=properties,
        )
    connection.close()


def bare_consume_run(url: str, messages: int, prefetch: int) -> tuple[float, int]:
    """Consume and ack `messages` with pika and nothing else (prefetch as the worker's)."""
    connection = pika.BlockingConnection(pika.URLParameters(url))
    channel = connection.channel()
    channel.basic_qos(prefetch_count=prefetch)
    seen = 0

    def on_message(ch: Any, method: Any, _props: Any, _body: bytes) -> None:
        nonlocal seen
        ch.basic_ack(method.delivery_tag)
        seen += 1
        if seen >= messages:
            ch.stop_consuming()

    channel.basic_consume(t.work_queue(WORKER_INSTANCE), on_message)
    start = time.perf_counter()
    channel.start_consuming()
    elapsed = time.perf_counter() - start
    connection.close()
    return elapsed, seen


def floor_consume_run(url: str, messages: int, prefetch: int, database: Path) -> tuple[float, int]:
    """The least a durable worker does, on one thread: bare consume, each message's JSON read
    and a receipt row per message written to SQLite (WAL, synchronous=NORMAL, as civicbus's
    store), one transaction per batch of the messages delivered so far (up to half the
    prefetch, as civicbus's worker), acked with one `multiple` ack after the commit. No store
    reads, no adapter, no outbox, no audit, no logs: worker / floor is the share of the floor's
    throughput that civicbus's own processing leaves."""
    db = sqlite3.connect(database, isolation_level=None)
    db.execute("PRAGMA journal_mode = WAL")
    db.execute("PRAGMA synchronous = NORMAL")
    db.execute("CREATE TABLE IF NOT EXISTS receipt (request_id TEXT PRIMARY KEY, at REAL)")
    connection = pika.BlockingConnection(pika.URLParameters(url))
    channel = connection.channel()
    channel.basic_qos(prefetch_count=prefetch)
    batch: list[tuple[int, str]] = []

    def on_message(_ch: Any, method: Any, _props: Any, body: bytes) -> None:
        batch.append((method.delivery_tag, json.loads(body)["subject"]))

    channel.basic_consume(t.work_queue(WORKER_INSTANCE), on_message)
    most = max(1, prefetch // 2)
    seen = 0
    start = time.perf_counter()
    while seen < messages:
        connection.process_data_events(time_limit=None)  # until something arrives
        while batch:
            taken, batch[:] = batch[:most], batch[most:]
            db.execute("BEGIN")
            db.executemany(
                "INSERT INTO receipt VALUES (?, ?)", [(rid, time.time()) for _, rid in taken]
            )
            db.execute("COMMIT")
            channel.basic_ack(taken[-1][0], multiple=True)
            seen += len(taken)
    elapsed = time.perf_counter() - start
    connection.close()
    db.close()
    return elapsed, seen


def worker_run(url: str, store: Store, messages: int, prefetch: int) -> tuple[float, int]:
    """The civicbus worker (consumer thread, handler thread, SQLite receipts) over `messages`."""
    import threading

    from adapters.memory import MemoryAdapter
    from bus.worker import CommandWorker, Consumer, Route

    config = _worker_config(prefetch)
    adapter = MemoryAdapter(WORKER_INSTANCE, {"backend": f"bench-{uuid.uuid4().hex[:6]}"})
    worker = CommandWorker(Route(WORKER_INSTANCE, store, config.retry), adapter)
    consumer = Consumer(url, prefetch=config.prefetch, name=WORKER_INSTANCE)
    done = threading.Event()
    handled = 0

    def counting(deliveries: Any, broker: Any) -> Any:
        nonlocal handled
        requeue = worker.handle_batch(deliveries, broker)
        handled += len(deliveries) - len(requeue)
        if handled >= messages:
            done.set()
        return requeue

    # As command_consumer() sets it up: batches of the delivered messages, one group commit each.
    consumer.consume_batches(t.work_queue(WORKER_INSTANCE), counting)
    freeze_startup_objects()  # as `civicbus worker` does before it consumes
    thread = threading.Thread(target=consumer.run, daemon=True)
    start = time.perf_counter()
    thread.start()
    done.wait()
    elapsed = time.perf_counter() - start  # includes connecting: a small, honest overhead
    consumer.stop()
    thread.join(timeout=30)
    return elapsed, handled


def _stored_commands(store: Store, messages: int) -> list[Envelope]:
    from datetime import UTC, datetime

    from schemas.model import ServiceRequest

    envelopes = [_envelope(i) for i in range(messages)]
    now = datetime.now(UTC)
    with store.transaction() as tx:
        for envelope in envelopes:
            data = {**envelope.data, "requested_at": now, "updated_at": now}
            tx.add_request(ServiceRequest.model_validate(data))
    return envelopes


def _timed(run: Callable[[], tuple[float, int]]) -> tuple[float, float]:
    """Messages per second of `run`, and this process's CPU time per message in microseconds
    (all threads; less sensitive than the rate to other work on the machine)."""
    cpu = time.process_time()
    elapsed, seen = run()
    return seen / elapsed, (time.process_time() - cpu) / seen * 1e6


def worker_section(messages: int, rounds: int, prefetch: int) -> None:
    bare_runs, floor_runs, worker_runs = [], [], []
    with fresh_vhost() as url, tempfile.TemporaryDirectory() as folder:
        for round_ in range(rounds):
            store = Store.open(f"sqlite:///{folder}/worker-{round_}.db")
            envelopes = _stored_commands(store, messages)
            _fill_work(url, envelopes)
            bare_runs.append(_timed(partial(bare_consume_run, url, messages, prefetch)))
            _fill_work(url, envelopes)
            floor_db = Path(folder) / f"floor-{round_}.db"
            floor_runs.append(_timed(partial(floor_consume_run, url, messages, prefetch, floor_db)))
            _fill_work(url, envelopes)
            worker_runs.append(_timed(partial(worker_run, url, store, messages, prefetch)))
            store.close()
    bare = statistics.median(rate for rate, _ in bare_runs)
    floor = statistics.median(rate for rate, _ in floor_runs)
    worker = statistics.median(rate for rate, _ in worker_runs)
    bare_cpu = statistics.median(cpu for _, cpu in bare_runs)
    floor_cpu = statistics.median(cpu for _, cpu in floor_runs)
    worker_cpu = statistics.median(cpu for _, cpu in worker_runs)
    print(
        f"\nworker: {messages} commands, in-memory adapter, SQLite store, prefetch "
        f"{prefetch}, median of {rounds}"
    )
    print(f"  {'bare pika consume + ack':34} {bare:10,.0f} msgs/s  {bare_cpu:6.0f} us CPU/msg")
    label = "floor: + a receipt row in SQLite"
    print(f"  {label:34} {floor:10,.0f} msgs/s  {floor_cpu:6.0f} us CPU/msg")
    print(
        f"  {'civicbus worker (receipt recorded)':34} {worker:10,.0f} msgs/s  "
        f"{worker_cpu:6.0f} us CPU/msg"
    )
    print(f"  {'ratio worker / bare':34} {worker / bare:10.0%}   (target >= 50 %)")
    print(f"  {'ratio worker / floor':34} {worker / floor:10.0%}")


# --- end to end ---------------------------------------------------------------------------

E2E_INSTANCE = "bench"
E2E_CONFIG = f"""
api: {{base_url: "http://127.0.0.1:8311"}}
jurisdictions: [{{id: bench.example, name: Bench City}}]
services:
  - {{code: POTHOLE, jurisdiction: bench.example, name: Pothole}}
routing: {{default: {E2E_INSTANCE}}}
instances:
  {E2E_INSTANCE}: {{kind: memory, settings: {{initial_status: open}}, poll_interval: 0}}
"""
E2E_FORM = {
    "jurisdiction_id": "bench.example",
    "service_code": "POTHOLE",
    "lat": "37.7612",
    "long": "-122.4194",
    "description": "Deep pothole by the bus stop, getting bigger every day.",
    "email": "resident@example.org",
}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _start(part: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "bus", *part],
            env=env,
            cwd=log.parent,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def _stop(processes: list[subprocess.Popen[bytes]]) -> None:
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    for process in processes:
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


class _Client:
    """Keep-alive HTTP/1.1 connections posting the form; each answer with its wall-clock time."""

    def __init__(self, port: int, api_key: str, connections: int) -> None:
        from urllib.parse import urlencode

        body = urlencode({**E2E_FORM, "api_key": api_key}).encode()
        self.request = (
            b"POST /open311/v2/requests.json HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: application/x-www-form-urlencoded\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        self.port, self.connections = port, connections
        self.pool: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = (
            asyncio.Queue()
        )

    async def open(self) -> None:
        for _ in range(self.connections):
            self.pool.put_nowait(await asyncio.open_connection("127.0.0.1", self.port))

    async def post(self) -> tuple[str, float, float]:
        """(request id, seconds the POST took, wall-clock time of the answer)."""
        reader, writer = await self.pool.get()
        try:
            started = time.perf_counter()
            writer.write(self.request)
            head = await reader.readuntil(b"\r\n\r\n")
            length = next(
                int(line[15:])
                for line in head.split(b"\r\n")
                if line[:15].lower() == b"content-length:"
            )
            body = await reader.readexactly(length)
            answered = time.time()
            took = time.perf_counter() - started
        finally:
            self.pool.put_nowait((reader, writer))
        if head[9:12] != b"200":
            raise RuntimeError(f"POST answered {head[9:12].decode()}: {body[:200]!r}")
        return json.loads(body)[0]["service_request_id"], took, answered


async def _steady_load(
    client: _Client, rate: float, seconds: float
) -> list[tuple[str, float, float]]:
    """Open loop: POST i starts at i / rate whatever earlier POSTs are doing."""
    await client.open()
    tasks = []
    start = time.perf_counter()
    for i in range(int(rate * seconds)):
        delay = start + i / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(client.post()))
    return list(await asyncio.gather(*tasks))


def _receipts(database: Path) -> dict[str, float]:
    """Back-end receipt time (the cross-reference's time, set by the back-end) by request id."""
    from datetime import UTC, datetime

    with sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=10) as db:
        rows = db.execute(
            "SELECT request_id, at FROM backend_refs WHERE adapter = ?", (E2E_INSTANCE,)
        ).fetchall()
    return {
        request_id: datetime.fromisoformat(at).replace(tzinfo=UTC).timestamp()
        for request_id, at in rows
    }


def _wait_for_receipts(database: Path, ids: set[str], timeout: float) -> dict[str, float]:
    deadline = time.monotonic() + timeout
    while True:
        receipts = _receipts(database)
        if ids <= receipts.keys() or time.monotonic() > deadline:
            return receipts
        time.sleep(0.5)


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, round(fraction * len(ordered)) - 1))]


def e2e_section(rate: float, seconds: float, connections: int) -> None:
    with fresh_vhost() as url, tempfile.TemporaryDirectory(prefix="civicbus-e2e-") as folder:
        workdir = Path(folder)
        database = workdir / "civicbus.db"
        (workdir / "civicbus.yaml").write_text(E2E_CONFIG)
        store = Store.open(f"sqlite:///{database}")
        _, api_key = store.add_client("bench")
        store.close()
        port = _free_port()
        env = {
            **os.environ,
            "CIVICBUS_CONFIG": str(workdir / "civicbus.yaml"),
            "CIVICBUS_DATABASE_URL": f"sqlite:///{database}",
            "CIVICBUS_AMQP_URL": url,
            "CIVICBUS_MEDIA_DIR": str(workdir / "media"),
            "CIVICBUS_LOG_FORMAT": "json",
            "PYTHONPATH": str(ROOT),
        }
        processes = [
            _start(["api", "--host", "127.0.0.1", "--port", str(port)], env, workdir / "api.log"),
            _start(["relay"], env, workdir / "relay.log"),
            _start(["worker", E2E_INSTANCE], env, workdir / "worker.log"),
        ]
        try:
            _wait_for_port(port, processes[0])
            # Warm-up: every part connected and working before the clock starts.
            warm = asyncio.run(_steady_load(_Client(port, api_key, 4), 20, 1))
            left = {rid for rid, _, _ in warm} - _wait_for_receipts(
                database, {rid for rid, _, _ in warm}, 60
            ).keys()
            if left:
                raise SystemExit(f"warm-up: {len(left)} requests never reached the back-end")
            answers = asyncio.run(_steady_load(_Client(port, api_key, connections), rate, seconds))
            ids = {rid for rid, _, _ in answers}
            receipts = _wait_for_receipts(database, ids, 60)
        finally:
            _stop(processes)
        exits = [process.returncode for process in processes]
    latencies = [receipts[rid] - answered for rid, _, answered in answers if rid in receipts]
    posts = [took for _, took, _ in answers]
    print(
        f"\nend to end: POST answered -> back-end receipt, {rate:g} requests/s for {seconds:g} s "
        f"({len(answers)} requests, {connections} keep-alive connections), api + relay + worker "
        f"processes, SQLite store, memory back-end"
    )
    print(f"  {'reached the back-end':34} {len(latencies):10,d} of {len(answers):,d}")
    print(f"  {'POST latency p50 / p99':34} {_ms(posts, 0.5)} / {_ms(posts, 0.99)} ms")
    if latencies:
        print(
            f"  {'answered -> receipt p50 / p99':34} {_ms(latencies, 0.5)} / "
            f"{_ms(latencies, 0.99)} ms   (target p99 < 250 ms), max {max(latencies) * 1000:.0f} ms"
        )
    print(f"  {'exit codes api, relay, worker':34} {exits}")


def _ms(values: list[float], fraction: float) -> str:
    return f"{_percentile(values, fraction) * 1000:.1f}"


def _wait_for_port(port: int, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit("the API exited during start-up")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise SystemExit("the API did not start within 30 s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=5000)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--worker-messages", type=int, default=2000)
    parser.add_argument(
        "--prefetch", type=int, default=BENCH_PREFETCH, help="Worker: prefetch of both loops."
    )
    parser.add_argument("--rate", type=float, default=200.0, help="End to end: POSTs per second.")
    parser.add_argument("--seconds", type=float, default=30.0, help="End to end: duration.")
    parser.add_argument("--connections", type=int, default=32, help="End to end: HTTP pool.")
    parser.add_argument(
        "--only", choices=["relay", "worker", "e2e"], default=None, help="Run one section only."
    )
    parser.add_argument(
        "--private-node",
        action="store_true",
        help="Start a RabbitMQ node of our own (free ports, removed afterwards) instead of "
        "using the machine's broker, e.g. when its vhost operations hang.",
    )
    args = parser.parse_args()
    # As the civicbus processes log (JSON lines), but to nowhere: the figures are the output.
    configure_logging("json", stream=open(os.devnull, "w"))  # noqa: SIM115
    with private_node() if args.private_node else nullcontext():
        print(f"machine: {machine()}")
        if args.only in (None, "relay"):
            relay_section(args.rows, args.batch, args.rounds)
        if args.only in (None, "worker"):
            worker_section(args.worker_messages, args.rounds, args.prefetch)
        if args.only in (None, "e2e"):
            e2e_section(args.rate, args.seconds, args.connections)


if __name__ == "__main__":
    main()
