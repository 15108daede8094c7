"""Helpers of the interop tests: publishing over HTTP, an app that publishes while it handles a
delivery, and counting what a topic holds. Real broker, real HTTP servers on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.structs import ConsumerRecord

from proxy.sidecar.runtime import Sidecar
from proxy.testing.app import Received
from proxy.testing.broker import free_port

# Tenant 123 is routed to sandbox pr-42 for both services of the B'' → Kafka → C'' hop.
ROUTES = 'tenants:\n  "123": {orders-worker: pr-42, billing-worker: pr-42}\n'


def routes_file(tmp_path: Path, text: str = ROUTES) -> str:
    path = tmp_path / "routes.yaml"
    path.write_text(text)
    return str(path)


@dataclass(frozen=True, slots=True)
class Published:
    """The publish endpoint's answer."""

    status: int
    headers: dict[str, str]
    body: Any


async def publish(url: str, body: bytes = b"", headers: dict[str, str] | None = None) -> Published:
    """POST to the publish endpoint (``url`` = ``<server.url>/<topic>``)."""
    async with aiohttp.ClientSession() as session, session.post(url, data=body, headers=headers or {}) as response:
        text = await response.text()
        return Published(
            response.status,
            {k.lower(): v for k, v in response.headers.items()},
            json.loads(text) if response.content_type == "application/json" else text,
        )


async def raw_request(port: int, request: bytes, timeout: float = 10.0) -> tuple[int, dict[str, str], bytes]:
    """Send bytes as they are (what no HTTP client would send) and read the answer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        data = await asyncio.wait_for(reader.read(65536), timeout)
    finally:
        writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return status, headers, body


async def read_all(bootstrap_servers: str, topic: str) -> list[ConsumerRecord[bytes, bytes]]:
    """Every record of ``topic`` now (up to its end offsets), in partition order."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap_servers, enable_auto_commit=False)
    await consumer.start()
    try:
        await consumer.topics()  # fresh metadata
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        ends = await consumer.end_offsets(tps)
        consumer.assign(tps)
        for tp in tps:
            consumer.seek(tp, 0)
        records: list[ConsumerRecord[bytes, bytes]] = []
        wanted = sum(ends.values())
        async with asyncio.timeout(20):
            while len(records) < wanted:
                batch = await consumer.getmany(timeout_ms=200)
                for tp_records in batch.values():
                    records.extend(tp_records)
        return records
    finally:
        await consumer.stop()


@dataclass(eq=False)
class PublishingApp:
    """An app with no Kafka client and no OpenTelemetry: for every delivery it publishes
    ``handled:<body>`` to ``out_topic`` through its sidecar, sending only ``ktp-delivery`` (and
    ``extra`` headers), then answers 200. With ``after_answer`` it publishes from a background
    task once it has answered (the grace period's case)."""

    out_topic: str
    sidecar: Sidecar | None = None  # whose publish endpoint it uses (its port is known once started)
    extra: dict[str, str] = field(default_factory=dict)
    after_answer: float | None = None
    port: int = field(default_factory=free_port)
    received: list[Received] = field(default_factory=list)
    published: list[Published] = field(default_factory=list)
    _runner: web.AppRunner | None = None
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/events"

    async def _publish_for(self, seen: Received) -> None:
        headers = {"ktp-delivery": seen.headers["ktp-delivery"], **self.extra}
        assert self.sidecar is not None
        url = f"{self.sidecar.context_parts.publish.url}/{self.out_topic}"
        self.published.append(await publish(url, b"handled:" + seen.body, headers))

    async def _later(self, seen: Received) -> None:
        assert self.after_answer is not None
        await asyncio.sleep(self.after_answer)
        await self._publish_for(seen)

    async def _handle(self, request: web.Request) -> web.Response:
        seen = Received(await request.read(), {k.lower(): v for k, v in request.headers.items()}, tuple(request.raw_headers))
        self.received.append(seen)
        if self.after_answer is None:
            await self._publish_for(seen)
        else:
            task = asyncio.create_task(self._later(seen))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return web.Response(status=200)

    async def _healthz(self, _: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def __aenter__(self) -> PublishingApp:
        app = web.Application()
        app.router.add_post("/events", self._handle)
        app.router.add_get("/healthz", self._healthz)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port, reuse_address=True).start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        for task in list(self._tasks):
            await task
        if self._runner is not None:
            await self._runner.cleanup()

    async def wait_published(self, count: int, timeout: float = 20.0) -> list[Published]:
        async with asyncio.timeout(timeout):
            while len(self.published) < count:
                await asyncio.sleep(0.05)
        return self.published
