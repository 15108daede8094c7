"""Fleet simulation: many route readers following one routes topic while routes change.

What a fleet of sidecars costs the control plane. N readers (the ``kafka:`` route source's
:class:`~proxy.routes.topic.RoutesTopicReader`, spread over a few worker processes)
follow one routes topic on the broker, pre-filled with T tenants, while a route store writes
route changes at a fixed rate. A tenth of the readers also play a busy sidecar: they ask their
reader whether a batch of live records (timestamped now) is covered, 200 times a second, as
the sidecar does before deciding each batch. Reported per size:

- broker requests per reader per second (fetches and ListOffsets), for idle readers and for the
  busy ones: the same, whatever the data traffic;
- propagation delay from a write (its stamp, before the broker has it) until *every* reader's
  table holds it, p50 and p99 over the writes, next to the route lead it must stay within;
- memory per reader (resident set growth of the workers, divided by their readers), table included.

Run alone: ``python -m benchmarks.fleet [--quick]``; ``make bench`` runs it as its last section.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaProducer

from benchmarks.processes import Child, python_module, rss_mb
from proxy.kafka import KafkaConnection
from proxy.routeservice.store import RouteStore
from proxy.routes.lead import DEFAULT_ROUTE_LEAD_MS
from proxy.routes.records import encode_value
from proxy.routes.catchup import now_ms
from proxy.routes.topic import DEFAULT_FETCH_MAX_WAIT_MS, RoutesTopicReader, ensure_routes_topic
from proxy.testing.broker import EmbeddedBroker

# (readers, tenants, fetch wait ms). Readers of 100k tenants each hold the whole table; a few
# show the memory per reader without filling the machine.
FULL_SIZES = (
    (100, 1_000, DEFAULT_FETCH_MAX_WAIT_MS),
    (1_000, 1_000, DEFAULT_FETCH_MAX_WAIT_MS),
    (1_000, 1_000, 500),
    (10, 100_000, DEFAULT_FETCH_MAX_WAIT_MS),
)
QUICK_SIZES = ((20, 1_000, DEFAULT_FETCH_MAX_WAIT_MS), (3, 100_000, DEFAULT_FETCH_MAX_WAIT_MS))
READERS_PER_WORKER = 250
WRITES_PER_SECOND = 5.0
BUSY_SHARE = 0.1
BUSY_BATCHES_PER_SECOND = 200.0
STARTING_AT_ONCE = 25


@dataclass(frozen=True)
class FleetRow:
    """One size's results."""

    readers: int
    tenants: int
    fetch_wait_ms: int
    seconds: float
    writes: int
    requests_idle: float  # per reader per second
    requests_busy: float
    list_offsets_busy: float
    batches_busy: float  # per busy reader per second
    propagation_p50_ms: float
    propagation_p99_ms: float
    missing: int  # writes some reader never saw within the run
    memory_mb: float  # per reader
    lead_ms: int = DEFAULT_ROUTE_LEAD_MS


# -- one worker process: some of the readers ------------------------------------------------------


async def worker(args: argparse.Namespace) -> None:
    connection = KafkaConnection(bootstrap_servers=args.bootstrap_servers)
    arrivals: list[dict[int, int]] = []
    readers: list[RoutesTopicReader] = []
    for index in range(args.readers):
        seen: dict[int, int] = {}
        arrivals.append(seen)

        def on_records(records: list[Any], seen: dict[int, int] = seen) -> None:
            arrived = now_ms()
            for record in records:
                if record.version >= args.watch_from:
                    seen[record.version] = arrived

        readers.append(RoutesTopicReader(
            connection, args.topic, on_records=on_records, create_topic=False,
            fetch_max_wait_ms=args.fetch_wait_ms, client_id=f"fleet-{args.worker_id}-{index}",
        ))
    rss_before = rss_mb_self()
    gate = asyncio.Semaphore(STARTING_AT_ONCE)

    async def start(reader: RoutesTopicReader) -> None:
        async with gate:
            await reader.start()

    await asyncio.gather(*(start(reader) for reader in readers))
    rss_after = rss_mb_self()
    print("ready", flush=True)
    go = Path(args.out + ".go")
    while not go.exists():  # every worker's readers start before the writes do
        await asyncio.sleep(0.05)
    busy = readers[: max(1, round(len(readers) * BUSY_SHARE))]
    before = [dict(reader.requests) for reader in readers]
    batches = [0] * len(busy)
    started = time.monotonic()

    async def play_sidecar(i: int, reader: RoutesTopicReader) -> None:
        interval = 1 / BUSY_BATCHES_PER_SECOND
        while time.monotonic() - started < args.seconds:
            await reader.catch_up(now_ms())  # a batch of live records, as the sidecar asks
            batches[i] += 1
            await asyncio.sleep(interval)

    await asyncio.gather(*(play_sidecar(i, r) for i, r in enumerate(busy)), asyncio.sleep(args.seconds))
    await asyncio.sleep(args.settle)  # the last writes reach every reader
    elapsed = time.monotonic() - started
    counts = [
        {kind: reader.requests[kind] - before[i].get(kind, 0) for kind in ("fetch", "list_offsets")}
        for i, reader in enumerate(readers)
    ]
    latest: dict[int, int] = {}
    missing: dict[int, int] = {}
    for seen in arrivals:
        for version, arrived in seen.items():
            if arrived > latest.get(version, 0):
                latest[version] = arrived
    for seen in arrivals:
        for version in latest:
            if version not in seen:
                missing[version] = missing.get(version, 0) + 1
    result = {
        "elapsed": elapsed - args.settle,
        "counts": counts,
        "busy": len(busy),
        "batches": sum(batches),
        "latest": latest,
        "missing": missing,
        "rss_growth_mb": rss_after - rss_before,
    }
    Path(args.out).write_text(json.dumps(result))
    await asyncio.gather(*(reader.stop() for reader in readers))


def rss_mb_self() -> float:
    import os

    return rss_mb(os.getpid())


# -- the run ----------------------------------------------------------------------------------------


async def fill(bootstrap_servers: str, topic: str, tenants: int) -> None:
    """The routes topic with ``tenants`` routed tenants, as an established fleet has it."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap_servers, acks="all", linger_ms=20,
                                max_batch_size=1 << 20, max_request_size=16 << 20)
    await producer.start()
    try:
        written = now_ms()
        futures = []
        for n in range(tenants):
            tenant = f"tenant-{n}"
            value = encode_value(tenant, {"orders-worker": f"pr-{n % 50}"}, written + DEFAULT_ROUTE_LEAD_MS,
                                 written_at_ms=written, lead_ms=DEFAULT_ROUTE_LEAD_MS)
            futures.append(await producer.send(topic, value, key=tenant.encode(), partition=0))
        for future in futures:
            await future
    finally:
        await producer.stop()


async def run_size(bootstrap_servers: str, readers: int, tenants: int, fetch_wait_ms: int, seconds: float,
                   workdir: Path, log: Any) -> FleetRow:
    topic = f"_ktp_routes-fleet-{readers}-{tenants}-{fetch_wait_ms}-{random.randrange(1 << 30)}"
    connection = KafkaConnection(bootstrap_servers=bootstrap_servers)
    await ensure_routes_topic(connection, topic)
    await fill(bootstrap_servers, topic, tenants)
    store = RouteStore(connection, topic, create_topic=False)
    await store.start()
    try:
        watch_from = store.version + 1
        workers: list[tuple[Child, Path]] = []
        remaining, worker_id = readers, 0
        while remaining:
            count = min(READERS_PER_WORKER, remaining)
            out = workdir / f"fleet-{topic}-{worker_id}.json"
            child = Child(f"fleet-{worker_id}", python_module(
                "benchmarks.fleet", "--worker", "--bootstrap-servers", bootstrap_servers, "--topic", topic,
                "--readers", str(count), "--seconds", str(seconds), "--settle", "2",
                "--fetch-wait-ms", str(fetch_wait_ms), "--watch-from", str(watch_from),
                "--worker-id", str(worker_id), "--out", str(out),
            ))
            await child.start()
            workers.append((child, out))
            remaining -= count
            worker_id += 1
        for child, _ in workers:
            await child.wait_line(lambda text: text == "ready", timeout=600)
        log(f"fleet: {readers} readers of {tenants:,} tenants (fetch wait {fetch_wait_ms} ms) ready")
        for _, out in workers:
            Path(str(out) + ".go").touch()
        written: dict[int, int] = {}
        started = time.monotonic()
        tick = 1 / WRITES_PER_SECOND
        n = 0
        while time.monotonic() - started < seconds:
            tenant = f"tenant-{random.randrange(tenants)}"
            record = await store.put(tenant, {"orders-worker": f"pr-{n % 50}"})
            written[record.version] = record.written_at_ms or record.effective_from_ms
            n += 1
            await asyncio.sleep(max(0.0, started + n * tick - time.monotonic()))
        for child, _ in workers:
            await child.wait(timeout=120)
        results = [json.loads(out.read_text()) for _, out in workers]
    finally:
        await store.stop()
    latest: dict[int, int] = {}
    missing: dict[int, int] = {}
    counts: list[dict[str, int]] = []
    busy_counts: list[dict[str, int]] = []
    batches = 0
    rss_growth = 0.0
    elapsed = min(r["elapsed"] for r in results)
    for r in results:
        for version, arrived in r["latest"].items():
            latest[int(version)] = max(latest.get(int(version), 0), arrived)
        for version, count in r["missing"].items():
            missing[int(version)] = missing.get(int(version), 0) + count
        busy_counts += r["counts"][: r["busy"]]
        counts += r["counts"][r["busy"]:]
        batches += r["batches"]
        rss_growth += r["rss_growth_mb"]
    delays = sorted(latest[v] - w for v, w in written.items() if v in latest and v not in missing)
    never = sum(1 for v in written if v not in latest or v in missing)

    def per_reader(rows: list[dict[str, int]], kinds: tuple[str, ...]) -> float:
        return sum(row[k] for row in rows for k in kinds) / max(len(rows), 1) / elapsed

    return FleetRow(
        readers=readers, tenants=tenants, fetch_wait_ms=fetch_wait_ms, seconds=elapsed, writes=len(written),
        requests_idle=per_reader(counts, ("fetch", "list_offsets")) if counts else float("nan"),
        requests_busy=per_reader(busy_counts, ("fetch", "list_offsets")),
        list_offsets_busy=per_reader(busy_counts, ("list_offsets",)),
        batches_busy=batches / max(len(busy_counts), 1) / elapsed,
        propagation_p50_ms=percentile(delays, 0.50), propagation_p99_ms=percentile(delays, 0.99),
        missing=never, memory_mb=rss_growth / readers,
    )


def percentile(ordered: list[int], q: float) -> float:
    if not ordered:
        return float("nan")
    return float(ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))])


def format_rows(rows: list[FleetRow]) -> str:
    lines = [
        f"fleet: route readers following one routes topic, {WRITES_PER_SECOND:g} route writes/s; busy readers "
        f"(a tenth) also ask {BUSY_BATCHES_PER_SECOND:g}x/s whether a batch of live records is covered",
        "readers  tenants  fetch wait  req/s/reader idle  busy (of which ListOffsets)  batches/s busy  "
        "propagation p50 / p99 (lead)  missed  MB/reader",
    ]
    for r in rows:
        lines.append(
            f"{r.readers:7,}  {r.tenants:7,}  {r.fetch_wait_ms:7} ms  {r.requests_idle:17.2f}  {r.requests_busy:5.2f} "
            f"({r.list_offsets_busy:.2f}){'':17}  {r.batches_busy:14.0f}  {r.propagation_p50_ms:8.0f} / "
            f"{r.propagation_p99_ms:.0f} ms ({r.lead_ms} ms)  {r.missing:6}  {r.memory_mb:9.2f}"
        )
    return "\n".join(lines)


async def run(bootstrap_servers: str, *, quick: bool, log: Any = print) -> list[FleetRow]:
    """Every size of the simulation on one broker; the rows."""
    sizes = QUICK_SIZES if quick else FULL_SIZES
    seconds = 5.0 if quick else 12.0
    rows = []
    with tempfile.TemporaryDirectory(prefix="ktp-fleet-") as tmp:
        for readers, tenants, fetch_wait_ms in sizes:
            row = await run_size(bootstrap_servers, readers, tenants, fetch_wait_ms, seconds, Path(tmp), log)
            log(
                f"fleet {readers} readers, {tenants:,} tenants, fetch wait {fetch_wait_ms} ms: "
                f"{row.requests_idle:.2f} req/s/reader idle, {row.requests_busy:.2f} busy "
                f"({row.batches_busy:.0f} batches/s), propagation p50 {row.propagation_p50_ms:.0f} / p99 "
                f"{row.propagation_p99_ms:.0f} ms, {row.memory_mb:.2f} MB/reader, missed {row.missing}"
            )
            rows.append(row)
    return rows


async def amain(args: argparse.Namespace) -> int:
    if args.worker:
        await worker(args)
        return 0
    if args.bootstrap_servers:
        rows = await run(args.bootstrap_servers, quick=args.quick)
    else:
        with tempfile.TemporaryDirectory(prefix="ktp-fleet-broker-") as tmp:
            async with EmbeddedBroker(log_path=Path(tmp) / "tansu.log") as broker:
                rows = await run(broker.bootstrap_servers, quick=args.quick)
    print(format_rows(rows))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Fleet simulation: many route readers on one routes topic.")
    parser.add_argument("--quick", action="store_true", help="small sizes, short runs")
    parser.add_argument("--bootstrap-servers", help="use this Kafka instead of starting the embedded broker")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    for name in ("--topic", "--out"):
        parser.add_argument(name, help=argparse.SUPPRESS)
    for name in ("--readers", "--fetch-wait-ms", "--watch-from", "--worker-id"):
        parser.add_argument(name, type=int, default=0, help=argparse.SUPPRESS)
    for name in ("--seconds", "--settle"):
        parser.add_argument(name, type=float, default=0.0, help=argparse.SUPPRESS)
    import uvloop

    return uvloop.run(amain(parser.parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
