"""Benchmark: where the CPU of one create goes, part by part, in-process (no HTTP).

Run: `.venv/bin/python tests/bench/bench_intake_parts.py [--requests 4000]`.
bench_intake.py measures the whole server against a bare endpoint; this one times civicbus's own
steps of a create on the embedded SQLite store (a temporary file, WAL, as `civicbus api` runs
it), so that a plan to make intake faster can be weighed against figures:

- the form read (`parse_qsl`, what the API's reader does for a urlencoded body);
- validation (catalogue lookup and `parse_create_form`);
- `prepare` (ids, the canonical request, the answer; since 2026-12-07 the `created` event is
  made by `write_batch`, where the request is written);
- `write_batch` per request, at several batch sizes: the group commit writes the creates parsed
  meanwhile together, and the batch size the API reaches depends on the load (at 8 keep-alive
  connections it averaged about 4 in one counted run). Includes the `intake.accepted` log line,
  rendered as JSON to /dev/null as in production.

Prints CPU microseconds per request (process time), asserts nothing.

Last measured (2026-12-05, Intel Xeon VM, 2 vCPUs, other work running on the machine, one run):
form read 10 µs, validation 15, prepare 25; write_batch 352 µs per request alone, 228 at 2,
167 at 4, 137 at 8, 101 at 32. So a transaction costs about 260 µs of CPU whatever it holds
(begin, client check, audit chain, commit) and each request about 95 µs more (rows in the
requests, outbox and audit tables, the log line). In bench_intake at 8 connections, the same
hour, the bare endpoint took about 160 µs of server time per request and civicbus about 550:
half the bare throughput leaves civicbus 320 µs, 160 more than the bare endpoint, and the
write of a batch of 4 alone takes 167.
"""

from __future__ import annotations

import argparse
import io
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import parse_qsl, urlencode

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from bench_intake import FORM, cpu_model  # noqa: E402

from bus.bootstrap import Runtime  # noqa: E402
from bus.config import Environment  # noqa: E402
from bus.intake import Prepared, prepare, write_batch  # noqa: E402
from bus.logging import configure_logging  # noqa: E402
from schemas.open311 import RequestDraft, first, parse_create_form  # noqa: E402

BATCH_SIZES = (1, 2, 4, 8, 16, 32)


def cpu_us_per_call(calls: int, step: Callable[[], object]) -> float:
    started = time.process_time()
    for _ in range(calls):
        step()
    return 1e6 * (time.process_time() - started) / calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=4000, help="per figure")
    args = parser.parse_args()
    configure_logging("json", stream=io.TextIOWrapper(open("/dev/null", "wb")))  # noqa: SIM115
    with tempfile.TemporaryDirectory() as tmp:
        runtime = Runtime(
            env=Environment(
                config_path=str(ROOT / "deploy/sandbox/civicbus.yaml"),
                database_url=f"sqlite:///{tmp}/civicbus.db",
                amqp_url="amqp://unused",
                media_dir=f"{tmp}/media",
                log_format="json",
            )
        )
        runtime.store.upgrade()
        client, _ = runtime.store.add_client("bench")
        body = urlencode(FORM)
        fields: dict[str, list[str]] = {}
        for name, value in parse_qsl(body, keep_blank_values=True):
            fields.setdefault(name, []).append(value)
        catalogue = {(s.jurisdiction, s.code): s for s in runtime.config.service_catalogue()}

        def validate() -> RequestDraft:
            place = (str(first(fields, "jurisdiction_id")), str(first(fields, "service_code")))
            service = catalogue[place]
            draft = parse_create_form(fields, service)
            assert isinstance(draft, RequestDraft), draft
            return draft

        draft = validate()

        def prepared() -> Prepared:
            return prepare(draft, client=client, actor="api:bench")

        n = args.requests
        print(f"machine: {cpu_model()}, Python {platform.python_version()}")
        print(f"CPU µs per request, {n} requests per figure, SQLite in a temporary folder\n")
        print(f"{'form read (parse_qsl)':<28}{cpu_us_per_call(n, lambda: parse_qsl(body)):8.1f}")
        print(f"{'validation':<28}{cpu_us_per_call(n, validate):8.1f}")
        print(f"{'prepare':<28}{cpu_us_per_call(n, prepared):8.1f}")
        for size in BATCH_SIZES:
            batches = [[prepared() for _ in range(size)] for _ in range(max(1, n // size))]
            started = time.process_time()
            for batch in batches:
                outcomes = write_batch(runtime.store, batch)
                assert not any(isinstance(o, Exception) for o in outcomes), outcomes
            per_request = 1e6 * (time.process_time() - started) / (len(batches) * size)
            print(f"{f'write_batch, batch of {size}':<28}{per_request:8.1f}")
        runtime.close()


if __name__ == "__main__":
    main()
