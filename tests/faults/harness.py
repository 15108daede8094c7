"""What the fault tests share: an exact account of deliveries, steady load, reading topics back,
and the real ``ktp sidecar`` process.

Every record a test produces carries its sequence number as its value and ``k<seq % KEYS>`` as
its key, so the account needs nothing but what the app received.
"""

from __future__ import annotations

import asyncio
import collections
import os
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import aiohttp
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.structs import ConsumerRecord

from proxy.kafka import KafkaConnection
from proxy.sidecar.runtime import committed_offsets as runtime_committed_offsets
from proxy.testing.app import Received
from proxy.testing.broker import free_port

KEYS = 37
PARTITIONS = 4
ROUTES = 'tenants:\n  "123": {orders-worker: pr-42}\n'

# Every account of this run, printed again as one table at the end (conftest.py).
ACCOUNTS: list[Account] = []


def key_of(seq: int) -> bytes:
    return f"k{seq % KEYS}".encode()


@dataclass(frozen=True)
class Account:
    """What happened to the records of one scenario."""

    scenario: str
    expected: int
    deliveries: int
    lost: int
    duplicated: int
    out_of_order: int | None  # None: the scenario promises no order
    unexpected: int
    dead_lettered: int
    note: str = ""

    def line(self) -> str:
        order = "n/a" if self.out_of_order is None else str(self.out_of_order)
        return (
            f"{self.scenario:<34} expected={self.expected:<5} deliveries={self.deliveries:<5} "
            f"lost={self.lost:<3} duplicated={self.duplicated:<4} out_of_order={order:<4} "
            f"dead_lettered={self.dead_lettered:<2} unexpected={self.unexpected}"
            + (f"  ({self.note})" if self.note else "")
        )


def account(
    scenario: str,
    deliveries: Sequence[Received],
    expected: Iterable[int],
    *,
    order: str | None = "partition",
    dead_lettered: int = 0,
    note: str = "",
    report: bool = True,
) -> Account:
    """Count lost, duplicated and out-of-order records in ``deliveries`` (arrival order).

    Out of order: a record whose first delivery came after the first delivery of a later record
    of its lane (its partition, or its partition and key when ``order="key"``). Redelivery after
    a restart or rebalance goes back to the committed offset: that shows up as duplicates, not as
    disorder, because only first deliveries are compared.
    """
    wanted = set(expected)
    counts = collections.Counter(int(d.body) for d in deliveries)
    lost = len(wanted - counts.keys())
    duplicated = sum(n - 1 for seq, n in counts.items() if seq in wanted and n > 1)
    unexpected = sum(n for seq, n in counts.items() if seq not in wanted)
    disorder: int | None = None
    if order is not None:
        disorder = 0
        seen: set[int] = set()
        highest: dict[object, int] = {}
        for d in deliveries:
            seq = int(d.body)
            if seq in seen:
                continue
            seen.add(seq)
            lane: object = d.partition if order == "partition" else (d.partition, d.headers.get("kafka-key"))
            if d.offset < highest.get(lane, -1):
                disorder += 1
            highest[lane] = max(highest.get(lane, -1), d.offset)
    result = Account(scenario, len(wanted), len(deliveries), lost, duplicated, disorder, unexpected, dead_lettered, note)
    if report:
        ACCOUNTS.append(result)
        print(f"\nACCOUNT {result.line()}")
    return result


async def produce_steadily(
    bootstrap_servers: str,
    topic: str,
    seqs: range,
    per_second: float,
    *,
    headers: dict[int, list[tuple[str, bytes]]] | None = None,
) -> None:
    """Produce ``seqs`` at about ``per_second`` (load while the fault happens); return once the
    broker acknowledged all of them."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap_servers, acks="all", linger_ms=5)
    await producer.start()
    try:
        ticks_per_second = 20
        per_tick = max(1, round(per_second / ticks_per_second))
        started = time.monotonic()
        futures = []
        for n, start in enumerate(range(seqs.start, seqs.stop, per_tick)):
            for seq in range(start, min(start + per_tick, seqs.stop)):
                extra = (headers or {}).get(seq, [])
                futures.append(await producer.send(topic, str(seq).encode(), key=key_of(seq), headers=extra))
            pause = started + (n + 1) / ticks_per_second - time.monotonic()
            if pause > 0:
                await asyncio.sleep(pause)
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def produce_now(bootstrap_servers: str, topic: str, seqs: range) -> None:
    """Produce ``seqs`` as fast as the broker takes them."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap_servers, acks="all", linger_ms=5)
    await producer.start()
    try:
        futures = [await producer.send(topic, str(seq).encode(), key=key_of(seq)) for seq in seqs]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def read_topic(bootstrap_servers: str, topic: str, timeout: float = 20.0) -> list[ConsumerRecord[bytes, bytes]]:
    """Every record of ``topic`` from the beginning to its current end ([] if it does not exist)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers)
    await admin.start()
    try:
        if topic not in await admin.list_topics():
            return []
    finally:
        await admin.close()
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap_servers, enable_auto_commit=False)
    await consumer.start()
    try:
        await consumer.topics()  # fetches metadata for every topic
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        records: list[ConsumerRecord[bytes, bytes]] = []
        deadline = time.monotonic() + timeout
        while [tp for tp in tps if await consumer.position(tp) < ends[tp]]:
            if time.monotonic() > deadline:
                raise AssertionError(f"could not read {topic} to its end within {timeout}s")
            for batch in (await consumer.getmany(timeout_ms=200)).values():
                records.extend(batch)
        return records
    finally:
        await consumer.stop()


async def committed_offsets(bootstrap_servers: str, group: str, topic: str) -> dict[int, int | None]:
    """The group's committed offset per partition, read without joining the group."""
    tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
    found = await runtime_committed_offsets(KafkaConnection(bootstrap_servers=bootstrap_servers), group, tps)
    return {tp.partition: offset for tp, offset in found.items()}


# -- the real ktp sidecar process ----------------------------------------------------------------


@dataclass
class SidecarProcess:
    """``python -m proxy sidecar`` configured through KTP_* variables, its output in a file."""

    env: dict[str, str]
    log_path: Path
    admin_port: int
    process: asyncio.subprocess.Process | None = None
    _log: IO[bytes] | None = None

    @classmethod
    def configure(
        cls, bootstrap_servers: str, topic: str, app_url: str, tmp_path: Path, **options: str
    ) -> SidecarProcess:
        routes = tmp_path / "routes.yaml"
        routes.write_text(ROUTES)
        admin_port = free_port()
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("KTP_") and k != "POD_NAME"},
            "KTP_BOOTSTRAP_SERVERS": bootstrap_servers,
            "KTP_SERVICE": "orders-worker",
            "KTP_GROUP": f"faults-{topic}",
            "KTP_TOPICS": topic,
            "KTP_APP_URL": app_url,
            "KTP_ROUTES": f"file:{routes}",
            "KTP_AUTO_OFFSET_RESET": "earliest",
            "KTP_ADMIN_ADDR": f"127.0.0.1:{admin_port}",
            "KTP_METRICS_ADDR": f"127.0.0.1:{free_port()}",
            "KTP_SESSION_TIMEOUT": "2",
            "KTP_COMMIT_INTERVAL": "0.2",
            "KTP_BACKOFF_INITIAL": "0.02",
            "KTP_BACKOFF_MAX": "0.2",
            # No trace collector runs here: exporting to one would only add retries and a slow
            # exit to what these tests measure (records, not spans).
            "OTEL_SDK_DISABLED": "true",
        }
        env.update(options)
        return cls(env, tmp_path / "sidecar.log", admin_port)

    @property
    def group(self) -> str:
        return self.env["KTP_GROUP"]

    async def start(self) -> None:
        assert self.process is None or self.process.returncode is not None
        self._log = open(self.log_path, "ab")  # noqa: SIM115, ASYNC230 - closed in wait()
        self.process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "proxy", "sidecar", env=self.env, stdout=self._log, stderr=self._log,
        )

    async def ready(self) -> bool:
        try:
            async with aiohttp.ClientSession() as session, session.get(
                f"http://127.0.0.1:{self.admin_port}/readyz"
            ) as response:
                return response.status == 200
        except aiohttp.ClientError:
            return False

    async def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while not await self.ready():
            assert self.process is not None and self.process.returncode is None, self.output()
            if time.monotonic() > deadline:
                raise AssertionError(f"sidecar not ready within {timeout}s:\n{self.output()}")
            await asyncio.sleep(0.1)

    def signal(self, signum: int) -> None:
        assert self.process is not None
        self.process.send_signal(signum)

    async def wait(self, timeout: float = 30.0) -> int:
        assert self.process is not None
        try:
            code = await asyncio.wait_for(self.process.wait(), timeout)
        finally:
            if self._log is not None:
                self._log.close()
                self._log = None
        return code

    async def kill(self) -> None:
        """Make sure the process is gone (test clean-up)."""
        if self.process is not None and self.process.returncode is None:
            self.process.kill()
            await self.wait()

    def output(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
