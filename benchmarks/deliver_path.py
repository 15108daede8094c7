"""The sidecar's delivery path alone, in-process: ``python -m benchmarks.deliver_path``.

What one delivered record costs once Kafka has handed it over: the sidecar's ``Dispatcher`` (lanes,
slots, headers, ``ktp-delivery`` context, metrics, commit watermark) over its ``HttpUpstream``, in
partition order, against the hand-rolled connection of the deliver section
(:class:`benchmarks.loops._Connection`: one raw asyncio-streams keep-alive connection per
partition) as the raw baseline of the same run. Both deliver the same records (those of
:mod:`benchmarks.workload`, 4 partitions) to the same app process (:mod:`benchmarks.app`), in
alternating passes; the figure is process CPU time per record, median and best of the passes, as
a ratio. No broker: the Kafka client's share is in the deliver section of ``python -m benchmarks``.

``--calls`` also counts the Python function calls per record of one pass of each (with
``cProfile``): a figure that does not move with the machine's load, unlike CPU time, for judging
a change to the per-record path on a busy machine; the busiest functions are listed.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import pstats
import random
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from urllib.parse import urlsplit

from aiokafka import TopicPartition
from aiokafka.structs import ConsumerRecord

from benchmarks import workload
from benchmarks.loops import _Connection
from benchmarks.processes import App
from proxy.kafka import KafkaConnection
from proxy.sidecar.config import SidecarConfig
from proxy.sidecar.runtime import Sidecar

TOPIC = "bench-deliver-path"
PARTITIONS = 4
Batch = dict[TopicPartition, list["ConsumerRecord[bytes, bytes]"]]


def make_records(count: int, keys: int = 1024) -> Batch:
    """``count`` records as the deliver section produces them, spread over the partitions."""
    rng = random.Random(1)
    tenants = [workload.tenant_name(i) for i in range(workload.TENANTS_IN_TRAFFIC)]
    batch: Batch = {TopicPartition(TOPIC, p): [] for p in range(PARTITIONS)}
    for i in range(count):
        tp = TopicPartition(TOPIC, i % PARTITIONS)
        value, key = workload.value(i), workload.key(i, keys)
        headers = tuple(workload.record_headers(tenants[i % len(tenants)], rng))
        batch[tp].append(ConsumerRecord(
            TOPIC, tp.partition, len(batch[tp]), 1_700_000_000_000 + i, 0, key, value, None, len(key), len(value),
            headers,
        ))
    return batch


async def handrolled(url: str, batch: Batch) -> float:
    """CPU seconds of the hand-rolled connections delivering ``batch``."""
    parts = urlsplit(url)
    connections = {tp: _Connection(parts.hostname or "127.0.0.1", parts.port or 80, parts.path) for tp in batch}
    started = time.process_time()
    await asyncio.gather(*(connections[tp].deliver(records) for tp, records in batch.items()))
    spent = time.process_time() - started
    for connection in connections.values():
        if connection.writer is not None:
            connection.writer.close()
    return spent


async def sidecar(url: str, batch: Batch, routes: Path, bulk: int = 0) -> float:
    """CPU seconds of a sidecar's dispatcher delivering ``batch`` (as ``Sidecar._handle`` hands
    records over); the sidecar is built as ``ktp sidecar`` builds it, but not connected to Kafka.
    ``bulk``: its ``--bulk-max-records`` (0: single deliveries)."""
    config = SidecarConfig(
        kafka=KafkaConnection(bootstrap_servers="127.0.0.1:9"), service=workload.SERVICE, group="bench",
        topics=(TOPIC,), app_url=url, routes=f"file:{routes}",
        admin_addr=("127.0.0.1", 0), metrics_addr=("127.0.0.1", 0), publish_addr=("127.0.0.1", 0),
        bulk_max_records=bulk,
    )
    runtime = Sidecar(config)
    await runtime.upstream.start()
    await runtime.health.start()
    await runtime.health.wait_healthy()
    runtime.partitions.add(batch)
    started = time.process_time()
    for tp, records in batch.items():
        state = runtime.partitions.get(tp)
        assert state is not None
        # As Sidecar._handle hands a batch over: tracked, then queued, all at once.
        state.offsets.begin_many([record.offset for record in records])
        runtime.dispatcher.submit_many(state, records)
        state.offsets.fetched_through(records[-1].offset)
    if not await runtime.dispatcher.drain(120):
        raise RuntimeError("the sidecar did not deliver every record within 120 s")
    spent = time.process_time() - started
    for tp, records in batch.items():
        state = runtime.partitions.get(tp)
        assert state is not None and state.offsets.position == len(records), "a record was not done"
    await runtime.health.stop()
    await runtime.upstream.stop()
    return spent


def calls_per_record(records: int, run: Callable[[], Awaitable[float]], top: int) -> tuple[float, list[str]]:
    """Python calls per record of one pass of ``run`` and its ``top`` functions by own time."""
    profile = cProfile.Profile()
    loop = asyncio.get_event_loop()
    profile.enable()
    loop.run_until_complete(run())
    profile.disable()
    stats = pstats.Stats(profile).stats
    total = sum(entry[1] for entry in stats.values())
    own = sum(entry[2] for entry in stats.values()) or 1.0
    ranked = sorted(stats.items(), key=lambda item: item[1][2], reverse=True)[:top]
    lines = [f"  {100 * entry[2] / own:5.1f}%  {entry[1] / records:5.2f}/record  {Path(file).name}:{line} {name}"
             for (file, line, name), entry in ranked]
    return total / records, lines


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.deliver_path", description=__doc__.split("\n")[0])
    parser.add_argument("--records", type=int, default=20_000)
    parser.add_argument("--passes", type=int, default=5, help="passes of each, alternating")
    parser.add_argument("--calls", action="store_true", help="also count Python calls per record (cProfile)")
    parser.add_argument("--bulk", type=int, default=0, metavar="N",
                        help="also the sidecar with --bulk-max-records N, as a ratio of its single deliveries")
    args = parser.parse_args()
    import uvloop

    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    batch = make_records(args.records)
    # The records stay alive for the whole run: out of the collector's sight, as a sidecar's
    # start-up objects are (gc.freeze).
    gc.collect()
    gc.freeze()
    app = App()
    loop.run_until_complete(app.start())
    try:
        with tempfile.TemporaryDirectory() as work:
            routes = Path(work) / "routes.yaml"
            routes.write_text("tenants: {}\n")
            warm = make_records(2_000)
            loop.run_until_complete(handrolled(app.url, warm))
            loop.run_until_complete(sidecar(app.url, warm, routes))
            if args.bulk:
                loop.run_until_complete(sidecar(app.url, warm, routes, args.bulk))
            raw: list[float] = []
            ours: list[float] = []
            bulked: list[float] = []
            for _ in range(args.passes):
                raw.append(loop.run_until_complete(handrolled(app.url, batch)) / args.records * 1e6)
                ours.append(loop.run_until_complete(sidecar(app.url, batch, routes)) / args.records * 1e6)
                if args.bulk:
                    bulked.append(loop.run_until_complete(sidecar(app.url, batch, routes, args.bulk)) / args.records * 1e6)
            print(f"delivery path, {args.records:,} records on {PARTITIONS} partitions, {args.passes} passes each "
                  f"(CPU us per record, median / best)")
            print(f"  hand-rolled connection (baseline)  {statistics.median(raw):6.1f} / {min(raw):6.1f}")
            print(f"  sidecar dispatcher + upstream      {statistics.median(ours):6.1f} / {min(ours):6.1f}   "
                  f"{statistics.median(ours) / statistics.median(raw):.2f}x / {min(ours) / min(raw):.2f}x hand-rolled")
            if bulked:
                print(f"  sidecar, bulks of {args.bulk:<3}              {statistics.median(bulked):6.1f} / {min(bulked):6.1f}   "
                      f"{statistics.median(bulked) / statistics.median(ours):.2f}x / {min(bulked) / min(ours):.2f}x single deliveries")
            if args.calls:
                runs: list[tuple[str, Callable[[], Awaitable[float]]]] = [
                    ("hand-rolled connection", lambda: handrolled(app.url, batch)),
                    ("sidecar dispatcher + upstream", lambda: sidecar(app.url, batch, routes)),
                ]
                if args.bulk:
                    runs.append((f"sidecar, bulks of {args.bulk}", lambda: sidecar(app.url, batch, routes, args.bulk)))
                for name, run in runs:
                    per_record, lines = calls_per_record(args.records, run, top=12)
                    print(f"\n{name}: {per_record:.1f} Python calls per record; busiest functions (share of own time under cProfile, calls per record):")
                    print("\n".join(lines))
    finally:
        loop.run_until_complete(app.stop())
        loop.close()


if __name__ == "__main__":
    main()
