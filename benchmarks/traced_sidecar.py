"""``ktp sidecar`` (the real CLI, configured by ``KTP_*``) that notes when each record was fetched.

For the latency benchmark only: ``python -m benchmarks.traced_sidecar TRACE_FILE
[FETCH_MAX_WAIT_MS]``. It wraps ``KafkaListener.fetch`` in this process to note, per fetched batch
and partition, the offsets it holds and the wall-clock time (µs) the Kafka client handed them to
the sidecar, and writes them to ``TRACE_FILE`` as JSON
``{"fetched": [[partition, first_offset, last_offset, fetched_us], ...], "gc": [[generation,
started_us, duration_us], ...]}`` at exit, the second list holding the garbage collector's pauses
of 1 ms or more. App receipt minus fetch time is the latency the sidecar itself adds: unlike
record timestamp → receipt, it does not include how long the broker holds a fetch.

With a ``kafka:`` route source it also notes, as ``"syncs"`` (``[[started_us, duration_us],
...]``), every sync of the routes topic reader (one ListOffsets round trip on its own
connection, then the wait for the follower to reach that offset: a catch-up, or the periodic
sync), and as ``"covers"`` the same for each ``RoutesGate._cover`` call (one per fetched
batch: how long the fetch loop held that batch while the table caught up).

``FETCH_MAX_WAIT_MS`` sets the consumer's ``fetch_max_wait_ms`` (aiokafka's default is 500, and
the sidecar has no option for it). Tansu answers a parked fetch only when about half of it has
passed, even when records have arrived, where Apache Kafka answers as soon as
``fetch.min.bytes`` (1) is there; a short wait makes Tansu hand over small batches promptly, as
Kafka would at a low rate.
"""

from __future__ import annotations

import atexit
import gc
import json
import sys
import time
from collections.abc import Iterable
from typing import Any

from aiokafka import TopicPartition
from aiokafka.structs import ConsumerRecord

from proxy import cli
from proxy.listener.kafka import KafkaListener
from proxy.routes.topic import RoutesTopicReader
from proxy.sidecar.routes_gate import RoutesGate

Batch = dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]
GC_PAUSE_NOTED_US = 1000


def main() -> int:
    trace_file = sys.argv[1]
    fetched: list[tuple[int, int, int, int]] = []
    original = KafkaListener.fetch
    if len(sys.argv) > 2:
        fetch_max_wait_ms = int(sys.argv[2])
        init = KafkaListener.__init__

        def patched_init(self: KafkaListener, *args: Any, **kwargs: Any) -> None:
            kwargs["consumer_options"] = {**(kwargs.get("consumer_options") or {}),
                                          "fetch_max_wait_ms": fetch_max_wait_ms}
            init(self, *args, **kwargs)

        KafkaListener.__init__ = patched_init  # type: ignore[method-assign]

    async def fetch(
        self: KafkaListener, timeout_ms: int, max_records: int, partitions: Iterable[TopicPartition] = ()
    ) -> Batch:
        batch = await original(self, timeout_ms, max_records, partitions)
        now = time.time_ns() // 1000
        for tp, records in batch.items():
            fetched.append((tp.partition, records[0].offset, records[-1].offset, now))
        return batch

    KafkaListener.fetch = fetch  # type: ignore[method-assign]

    syncs: list[tuple[int, int]] = []
    covers: list[tuple[int, int]] = []
    original_sync = RoutesTopicReader._sync
    original_cover = RoutesGate._cover

    async def sync(self: RoutesTopicReader) -> int:
        started_us, started_ns = time.time_ns() // 1000, time.perf_counter_ns()
        try:
            return await original_sync(self)
        finally:
            syncs.append((started_us, (time.perf_counter_ns() - started_ns) // 1000))

    async def routes_cover(self: RoutesGate, batch: Batch) -> bool:
        started_us, started_ns = time.time_ns() // 1000, time.perf_counter_ns()
        try:
            return await original_cover(self, batch)
        finally:
            covers.append((started_us, (time.perf_counter_ns() - started_ns) // 1000))

    RoutesTopicReader._sync = sync  # type: ignore[method-assign]
    RoutesGate._cover = routes_cover  # type: ignore[method-assign]

    pauses: list[tuple[int, int, int]] = []
    collecting: list[int] = []

    def on_gc(phase: str, info: dict[str, int]) -> None:
        now = time.perf_counter_ns()
        if phase == "start":
            collecting[:] = [now, time.time_ns() // 1000]
        elif collecting and (duration := (now - collecting[0]) // 1000) >= GC_PAUSE_NOTED_US:
            pauses.append((info["generation"], collecting[1], duration))

    gc.callbacks.append(on_gc)

    def dump() -> None:
        with open(trace_file, "w") as handle:
            json.dump({"fetched": fetched, "gc": pauses, "syncs": syncs, "covers": covers}, handle)

    atexit.register(dump)
    return cli.main(["sidecar"])


if __name__ == "__main__":
    raise SystemExit(main())
