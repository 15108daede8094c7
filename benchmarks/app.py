"""The minimal app next to the sidecar: a raw-asyncio HTTP/1.1 server in its own process.

``python -m benchmarks.app --port P [--expect N] [--latency]``. It answers every ``POST`` with
an empty 200 at the lowest cost we can write in Python, so that throughput is the sender's, and
keeps the sidecar's ``/proc`` numbers free of the app's work. Only ``POST /events`` is a
delivery; any other ``POST`` (the sidecar's spans, when a run points its OTLP/HTTP exporter here)
is answered and counted apart. ``GET /stats`` answers JSON:
deliveries received, the monotonic times of the first, the last and the ``N``-th one, and with
``--latency`` each delivery's (partition, offset, record timestamp ms, receipt time µs), the first
three read from the ``kafka-*`` headers.

A bulk delivery (``--bulk-max-records``: a JSON body ``{"entries": [...]}``) is answered as a
Dapr bulk-subscribe app answers, every entry ``SUCCESS``, and each entry counts as a delivery
(its timings read from its metadata).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import time

OK = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"
BULK_PREFIX = b'{"topic"'
ENTRY_ID = re.compile(rb'"entryId":"([0-9]+)"')
PARTITION = re.compile(rb'"kafka-partition":"([0-9]+)"')
OFFSET = re.compile(rb'"kafka-offset":"([0-9]+)"')
TIMESTAMP = re.compile(rb'"kafka-timestamp":"([0-9]+)"')


def header_int(head: bytes, name: bytes) -> int:
    """An integer header of a lowercased request head, -1 when absent."""
    at = head.find(b"\r\n" + name + b":")
    if at < 0:
        return -1
    end = head.find(b"\r\n", at + 2)
    return int(head[at + len(name) + 3 : end if end >= 0 else None])


class Stats:
    def __init__(self, latency: bool, expect: int) -> None:
        self.latency = latency
        self.expect = expect
        self.count = 0
        self.first = 0.0
        self.last = 0.0
        self.reached = 0.0
        self.other_posts = 0
        self.samples: list[tuple[int, int, int, int]] = []

    def received(self, head: bytes) -> None:
        now = time.monotonic()
        if not self.count:
            self.first = now
        self.last = now
        self.count += 1
        if self.count == self.expect:
            self.reached = now
        if self.latency:
            self.samples.append((
                header_int(head, b"kafka-partition"),
                header_int(head, b"kafka-offset"),
                header_int(head, b"kafka-timestamp"),
                time.time_ns() // 1000,
            ))

    def received_bulk(self, body: bytes) -> bytes:
        """Count a bulk's entries; the answer that takes them all. The ids and timings are cut
        out of the body with regular expressions rather than parsed: a JSON parse of every bulk
        made this app the bottleneck of the bulk runs (the sidecar's own numbers stay its own)."""
        now = time.monotonic()
        ids = ENTRY_ID.findall(body)
        if not self.count:
            self.first = now
        self.last = now
        before = self.count
        self.count += len(ids)
        if before < self.expect <= self.count:
            self.reached = now
        if self.latency:
            received_us = time.time_ns() // 1000
            for partition, offset, timestamp in zip(
                PARTITION.findall(body)[1:], OFFSET.findall(body), TIMESTAMP.findall(body)  # [0]: the bulk's own
            ):
                self.samples.append((int(partition), int(offset), int(timestamp), received_us))
        answer = b'{"statuses":[' + b",".join(b'{"entryId":"%s","status":"SUCCESS"}' % i for i in ids) + b"]}"
        return b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s" % (
            len(answer), answer,
        )

    def as_json(self, full: bool) -> bytes:
        data: dict[str, object] = {
            "count": self.count, "first": self.first, "last": self.last, "reached": self.reached,
            "other_posts": self.other_posts,
        }
        if full:
            data["samples"] = self.samples
        return json.dumps(data).encode()


class AppProtocol(asyncio.Protocol):
    """HTTP/1.1 keep-alive, requests answered in order; only Content-Length framing (what every
    client in the benchmarks sends)."""

    def __init__(self, stats: Stats) -> None:
        self.stats = stats
        self.buffer = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer + data if self.buffer else data
        out = []
        while True:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                break
            head = buffer[:end].lower()
            total = end + 4 + max(header_int(head, b"content-length"), 0)
            if len(buffer) < total:
                break
            body = buffer[end + 4 : total]
            buffer = buffer[total:]
            if head.startswith(b"post /events ") and body.startswith(BULK_PREFIX):
                out.append(self.stats.received_bulk(body))
            elif head.startswith(b"post /events "):
                self.stats.received(head)
                out.append(OK)
            elif head.startswith(b"post"):
                self.stats.other_posts += 1
                out.append(OK)
            else:
                payload = self.stats.as_json(full=b"full" in head.split(b"\r\n", 1)[0])
                out.append(
                    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n"
                    % len(payload)
                    + payload
                )
        self.buffer = buffer
        if out and self.transport is not None:
            self.transport.write(b"".join(out))


async def serve(port: int, latency: bool, expect: int) -> None:
    stats = Stats(latency, expect)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: AppProtocol(stats), "127.0.0.1", port, backlog=1024)
    async with server:
        print("listening", flush=True)
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--latency", action="store_true", help="keep per-delivery timings")
    parser.add_argument("--expect", type=int, default=0, help="note when this many have arrived")
    args = parser.parse_args()
    import uvloop

    try:
        uvloop.run(serve(args.port, args.latency, args.expect))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
