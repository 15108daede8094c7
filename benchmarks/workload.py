"""The records the benchmarks consume: 200-byte values with realistic headers, on 4 partitions.

Every record carries what an instrumented producer writes: a ``traceparent`` (unique per record),
a ``baggage`` with the tenant and one more member (byte-identical for records of one tenant, as
OpenTelemetry writes it) and a ``content-type``. The value is JSON padded to exactly 200 bytes.
"""

from __future__ import annotations

import asyncio
import os
import random
from collections.abc import Sequence

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from proxy.kafka import KafkaConnection
from proxy.routes.records import encode_value
from proxy.routes.catchup import now_ms
from proxy.routes.lead import DEFAULT_ROUTE_LEAD_MS
from proxy.routes.topic import ensure_routes_topic

PARTITIONS = 4
VALUE_BYTES = 200
TENANTS_IN_TRAFFIC = 10
SERVICE = "orders-worker"
SANDBOX = "pr-42"
OTHER_SERVICE = "billing"
PRODUCER_BATCH_BYTES = 16384  # Kafka's and aiokafka's default batch.size

Headers = list[tuple[str, bytes]]


def tenant_name(index: int) -> str:
    return f"tenant-{index:06d}"


def baggage(tenant: str) -> bytes:
    return f"tenant={tenant},deployment.environment=staging".encode()


def traceparent(rng: random.Random) -> bytes:
    return f"00-{rng.getrandbits(128):032x}-{rng.getrandbits(64):016x}-01".encode()


def record_headers(tenant: str, rng: random.Random) -> Headers:
    return [
        ("traceparent", traceparent(rng)),
        ("baggage", baggage(tenant)),
        ("content-type", b"application/json"),
    ]


def value(index: int) -> bytes:
    head = b'{"order":%d,"status":"created","pad":"' % index
    return head + b"x" * (VALUE_BYTES - len(head) - 2) + b'"}'


def key(index: int, keys: int) -> bytes:
    return b"order-%d" % (index % keys)


def routes_yaml(tenants: Sequence[str], service: str, sandbox: str) -> str:
    """A ``file:`` routes document sending ``service`` of every tenant to ``sandbox``."""
    lines = ["tenants:"]
    lines += [f'  "{tenant}": {{{service}: {sandbox}}}' for tenant in tenants]
    return "\n".join(lines) + "\n"


async def write_routes_topic(
    bootstrap_servers: str, topic: str, tenants: Sequence[str], service: str, sandbox: str
) -> None:
    """A ``kafka:<topic>`` routes topic sending ``service`` of every tenant to ``sandbox``, as
    the route service writes it (:mod:`proxy.routeservice.store`): the topic created by
    ``ensure_routes_topic`` (one partition, compacted), then one record per tenant on partition 0
    with ``acks=all``, key the tenant, value ``encode_value`` stamped now with the route service's
    default lead (so sidecars learn the lead from the records, as from a running route service)."""
    await ensure_routes_topic(KafkaConnection(bootstrap_servers=bootstrap_servers), topic)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap_servers, acks="all", client_id="bench-routes")
    await producer.start()
    try:
        for tenant in tenants:
            written = now_ms()
            value = encode_value(tenant, {service: sandbox}, written + DEFAULT_ROUTE_LEAD_MS,
                                 written_at_ms=written, lead_ms=DEFAULT_ROUTE_LEAD_MS)
            await producer.send_and_wait(topic, value, key=tenant.encode(), partition=0)
    finally:
        await producer.stop()


async def create_topics(bootstrap_servers: str, names: Sequence[str]) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, PARTITIONS, 1) for name in names])
    finally:
        await admin.close()


async def produce_bulk(bootstrap_servers: str, topic: str, count: int, *, keys: int) -> None:
    """Produce ``count`` records as fast as the broker takes them, in record batches of Kafka's
    default ``batch.size`` (16 KiB, ~50 records), as a busy producer writes them: consumers
    unpack a batch at a time, so the batch size shapes their CPU and memory.

    Key ``i`` goes to partition ``i % 4``, so a key's records stay in one partition as with
    the default partitioner; tenants cycle over :data:`TENANTS_IN_TRAFFIC`.
    """
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap_servers, acks=1, max_batch_size=PRODUCER_BATCH_BYTES, linger_ms=5
    )
    await producer.start()
    rng = random.Random(6)
    tenants = [tenant_name(i) for i in range(TENANTS_IN_TRAFFIC)]
    try:
        batches = {p: producer.create_batch() for p in range(PARTITIONS)}
        futures = []
        for i in range(count):
            k = i % keys
            partition = k % PARTITIONS
            args = {
                "key": key(k, keys),
                "value": value(i),
                "timestamp": None,
                "headers": record_headers(tenants[i % len(tenants)], rng),
            }
            if batches[partition].append(**args) is None:
                futures.append(await producer.send_batch(batches[partition], topic, partition=partition))
                batches[partition] = producer.create_batch()
                batches[partition].append(**args)
            if len(futures) > 256:
                await asyncio.gather(*futures)
                futures.clear()
        for partition, batch in batches.items():
            if batch.record_count():
                futures.append(await producer.send_batch(batch, topic, partition=partition))
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def produce_paced(
    bootstrap_servers: str, topic: str, *, rate: float, seconds: float, keys: int
) -> int:
    """Produce at a fixed ``rate`` records/s for ``seconds``, each sent as soon as it is due
    (no linger), so the record timestamp is its send time. Returns the records sent."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap_servers, acks=1, linger_ms=0)
    await producer.start()
    rng = random.Random(int.from_bytes(os.urandom(4), "big"))
    tenants = [tenant_name(i) for i in range(TENANTS_IN_TRAFFIC)]
    loop = asyncio.get_running_loop()
    count = int(rate * seconds)
    futures = []
    try:
        start = loop.time()
        for i in range(count):
            delay = start + i / rate - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            k = i % keys
            futures.append(
                await producer.send(
                    topic,
                    value(i),
                    key=key(k, keys),
                    partition=k % PARTITIONS,
                    headers=record_headers(tenants[i % len(tenants)], rng),
                )
            )
        await asyncio.gather(*futures)
    finally:
        await producer.stop()
    return count
