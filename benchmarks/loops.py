"""What a user would run instead of the sidecar: the baselines, each in its own process.

``python -m benchmarks.loops KIND --bootstrap-servers B --topic T --group G --records N
[--app-url URL] [--session-timeout S]``, KIND one of:

- ``raw``:         aiokafka ``getmany`` loop that only counts the records (the skip path's limit);
- ``naive``:       aiokafka + httpx, one POST at a time, commit per batch (what users write first);
- ``handrolled``:  aiokafka + one keep-alive HTTP/1.1 connection per partition on raw asyncio
                   streams, partitions concurrently, each in order, commit per batch (the limit).

Every loop uses the sidecar's consumer settings (manual commits, ``earliest``, its session and
heartbeat timeouts, ``getmany(500 ms, 2000 records)``), forwards the headers the sidecar forwards,
runs on uvloop, and prints JSON lines on stdout: ``{"event": "assigned", "t": monotonic}`` when it
joined, ``{"event": "done", "t": ..., "count": N}`` when it handled ``--records``; it then
waits for SIGTERM (so its ``/proc`` entry can still be read), commits and leaves the group.
``--trace FILE`` notes when each fetched record was handed over, as ``benchmarks.traced_sidecar``
does for the sidecar (without its GC pauses).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import time
from collections.abc import Iterable
from pathlib import Path
from typing import TypeAlias
from urllib.parse import urlsplit

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.structs import ConsumerRecord

FETCH_TIMEOUT_MS = 500  # the sidecar's (proxy.sidecar.runtime)
FETCH_MAX_RECORDS = 2000
FETCH_MAX_BYTES = 1024 * 1024
FORWARDED = ("traceparent", "tracestate", "baggage")

Record: TypeAlias = ConsumerRecord[bytes, bytes]


def emit(event: str, **fields: object) -> None:
    print(json.dumps({"event": event, "t": time.monotonic(), **fields}), flush=True)


class _Assigned(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self) -> None:
        self.once = False

    async def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        pass

    async def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        if not self.once and list(assigned):
            self.once = True
            emit("assigned")


def consumer_settings(session_timeout: float, fetch_max_wait_ms: int) -> dict[str, object]:
    """The sidecar's consumer settings (proxy.sidecar.runtime.Sidecar)."""
    return {
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest",
        "session_timeout_ms": int(session_timeout * 1000),
        "heartbeat_interval_ms": int(min(3.0, session_timeout / 3) * 1000),
        "fetch_max_wait_ms": fetch_max_wait_ms,
        "fetch_max_bytes": FETCH_MAX_BYTES,
    }


def forwarded_headers(record: Record) -> dict[str, str]:
    """The delivery headers the sidecar sends (docs/design.md, "Delivery request to the app")."""
    headers = {
        "content-type": "application/json",
        "kafka-topic": record.topic,
        "kafka-partition": str(record.partition),
        "kafka-offset": str(record.offset),
        "kafka-timestamp": str(record.timestamp),
    }
    if record.key is not None:
        headers["kafka-key"] = record.key.decode()
    for name, value in record.headers:
        if name in FORWARDED:
            headers[name] = value.decode()
    return headers


async def raw(consumer: AIOKafkaConsumer, records: int, _: str | None) -> int:
    count = 0
    while count < records:
        batch = await consumer.getmany(timeout_ms=FETCH_TIMEOUT_MS, max_records=FETCH_MAX_RECORDS)
        for part in batch.values():
            count += len(part)
    return count


async def naive(consumer: AIOKafkaConsumer, records: int, app_url: str | None) -> int:
    import httpx

    assert app_url
    count = 0
    async with httpx.AsyncClient() as client:
        while count < records:
            batch = await consumer.getmany(timeout_ms=FETCH_TIMEOUT_MS, max_records=FETCH_MAX_RECORDS)
            for part in batch.values():
                for record in part[: records - count]:
                    response = await client.post(app_url, content=record.value, headers=forwarded_headers(record))
                    response.raise_for_status()
                    count += 1
            await consumer.commit()
    return count


class _Connection:
    """One keep-alive HTTP/1.1 connection; requests in order, one at a time."""

    def __init__(self, host: str, port: int, path: str) -> None:
        self.host, self.port, self.path = host, port, path
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.prefix = f"POST {path} HTTP/1.1\r\nhost: {host}:{port}\r\n".encode()

    async def deliver(self, records: list[Record]) -> None:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        reader, writer = self.reader, self.writer
        assert reader is not None
        for record in records:
            head = "".join(f"{name}: {value}\r\n" for name, value in forwarded_headers(record).items())
            body = record.value or b""
            writer.write(self.prefix + head.encode() + b"content-length: %d\r\n\r\n" % len(body) + body)
            answer = await reader.readuntil(b"\r\n\r\n")
            if not answer.startswith(b"HTTP/1.1 2"):
                raise RuntimeError(f"app answered {answer[:40]!r}")
            lowered = answer.lower()
            at = lowered.find(b"\r\ncontent-length:")
            if at >= 0:
                length = int(lowered[at + 17 : lowered.find(b"\r\n", at + 2)])
                if length:
                    await reader.readexactly(length)


async def handrolled(consumer: AIOKafkaConsumer, records: int, app_url: str | None) -> int:
    assert app_url
    url = urlsplit(app_url)
    connections: dict[TopicPartition, _Connection] = {}
    count = 0
    while count < records:
        batch = await consumer.getmany(timeout_ms=FETCH_TIMEOUT_MS, max_records=FETCH_MAX_RECORDS)
        work = []
        for tp, part in batch.items():
            part = part[: records - count]
            if not part:
                continue
            connection = connections.get(tp)
            if connection is None:
                connection = connections[tp] = _Connection(url.hostname or "127.0.0.1", url.port or 80, url.path)
            work.append(connection.deliver(part))
            count += len(part)
        await asyncio.gather(*work)
        await consumer.commit()
    for connection in connections.values():
        if connection.writer is not None:
            connection.writer.close()
    return count


LOOPS = {"raw": raw, "naive": naive, "handrolled": handrolled}


async def run(args: argparse.Namespace) -> None:
    consumer = AIOKafkaConsumer(
        bootstrap_servers=args.bootstrap_servers,
        group_id=args.group,
        client_id=f"bench-{args.kind}",
        **consumer_settings(args.session_timeout, args.fetch_max_wait_ms),
    )
    consumer.subscribe([args.topic], listener=_Assigned())
    fetched: list[tuple[int, int, int, int]] = []
    if args.trace:
        getmany = consumer.getmany

        async def traced(*partitions: TopicPartition, timeout_ms: int = 0, max_records: int | None = None):  # type: ignore[no-untyped-def]
            batch = await getmany(*partitions, timeout_ms=timeout_ms, max_records=max_records)
            now = time.time_ns() // 1000
            for tp, part in batch.items():
                fetched.append((tp.partition, part[0].offset, part[-1].offset, now))
            return batch

        consumer.getmany = traced
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await consumer.start()
    try:
        count = await LOOPS[args.kind](consumer, args.records, args.app_url)
        emit("done", count=count)
        await stop.wait()
        await consumer.commit()
    finally:
        await consumer.stop()
        if args.trace:
            Path(args.trace).write_text(json.dumps({"fetched": fetched, "gc": []}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("kind", choices=sorted(LOOPS))
    parser.add_argument("--bootstrap-servers", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--group", required=True)
    parser.add_argument("--records", type=int, required=True)
    parser.add_argument("--app-url")
    parser.add_argument("--session-timeout", type=float, default=3.0)
    parser.add_argument("--trace", help="write [[partition, first, last, fetched_us], ...] of each fetch here")
    parser.add_argument("--fetch-max-wait-ms", type=int, default=500, help="aiokafka's, as the sidecar's")
    args = parser.parse_args()
    import uvloop

    uvloop.run(run(args))


if __name__ == "__main__":
    main()
