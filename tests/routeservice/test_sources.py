"""The sidecar's kafka: and http:// route sources against a real route service and broker."""

from __future__ import annotations

import asyncio
import statistics
import time

import pytest
from aiokafka import AIOKafkaProducer

from proxy.errors import ConfigError
from proxy.kafka import KafkaConnection
from proxy.routes.client import RouteServiceClient
from proxy.routeservice.server import RouteService
from proxy.routes.records import encode_value
from proxy.routing.sources import CatchUpRouteSource, create_route_source
from proxy.routes.catchup import now_ms
from proxy.routing.sources.http import HttpRouteSource
from proxy.routing.sources.kafka_source import KafkaRouteSource
from tests.conftest import create_topic
from tests.routeservice.conftest import TOKEN, ServiceFactory


def kafka_source(bootstrap_servers: str, topic: str, **kwargs: object) -> KafkaRouteSource:
    return KafkaRouteSource(KafkaConnection(bootstrap_servers=bootstrap_servers), topic, **kwargs)  # type: ignore[arg-type]


async def check_new_route_and_deletion(source: CatchUpRouteSource, client: RouteServiceClient) -> None:
    """A route and its deletion reach the table at their effective times, through catch_up()."""
    table = source.table
    assert table.synced
    stored = await client.put("t-new", {"orders-worker": "pr-42"})
    # No waiting, no polling: catch_up() alone makes a route written just now visible.
    await source.catch_up()
    route = table.latest("t-new")
    assert route is not None and dict(route.services) == {"orders-worker": "pr-42"}
    assert route.effective_from_ms == stored.effective_from_ms and route.version == stored.version
    # The sync started after the write: the table is complete past it, and covers records up to
    # the route lead beyond, less the margin (the route itself takes effect a full lead after).
    assert stored.written_at_ms is not None and source.synced_at_ms >= stored.written_at_ms
    assert stored.effective_from_ms - stored.written_at_ms == 1000
    assert source.synced_at_ms < source.covered_until_ms < stored.effective_from_ms + (source.synced_at_ms - stored.written_at_ms)
    assert table.sandbox_for("t-new", "orders-worker", stored.effective_from_ms - 1) is None
    assert table.sandbox_for("t-new", "orders-worker", stored.effective_from_ms) == "pr-42"

    before_delete = max(now_ms(), stored.effective_from_ms)
    await client.delete("t-new")
    await source.catch_up()
    assert table.latest("t-new") is None
    # History: records from before the deletion are still judged by the route then in force.
    deleted_at = next(
        t for t in range(before_delete, now_ms() + 2000) if table.sandbox_for("t-new", "orders-worker", t) is None
    )
    assert deleted_at > stored.effective_from_ms
    assert table.sandbox_for("t-new", "orders-worker", deleted_at - 1) == "pr-42"


async def test_kafka_source_reads_history_and_follows(
    bootstrap_servers: str, routes_topic: str, service: RouteService, client: RouteServiceClient
) -> None:
    first = await client.put("t-old", {"orders-worker": "pr-1"})
    second = await client.put("t-old", {"orders-worker": "pr-2"})
    await client.put("t-gone", {"billing": "pr-1"})
    await client.delete("t-gone")
    source = kafka_source(bootstrap_servers, routes_topic)
    async with source:
        table = source.table
        # A source started later holds every route since the beginning, with its history.
        assert table.synced and source.synced_at_ms > 0
        assert table.sandbox_for("t-old", "orders-worker", first.effective_from_ms) == "pr-1"
        assert table.sandbox_for("t-old", "orders-worker", second.effective_from_ms) == "pr-2"
        assert table.latest("t-gone") is None and len(table) == 1
        assert source.describe() == f"kafka:{routes_topic}"
        await check_new_route_and_deletion(source, client)
        # Following without catch_up: a write shows up on its own.
        stored = await client.put("t-followed", {"orders-worker": "pr-9"})
        deadline = time.monotonic() + 10
        while table.latest("t-followed") is None:
            assert time.monotonic() < deadline, "route did not propagate within 10s"
            await asyncio.sleep(0.01)
        assert table.latest("t-followed").version == stored.version  # type: ignore[union-attr]


async def test_http_source_watches_the_route_service(
    service: RouteService, client: RouteServiceClient, token_file: str
) -> None:
    await client.put("t-old", {"orders-worker": "pr-1"})
    source = create_route_source(service.url, on_error=print, token_file=token_file)
    assert isinstance(source, HttpRouteSource) and isinstance(source, CatchUpRouteSource)
    async with source:
        assert source.table.synced and source.table.latest("t-old") is not None
        await check_new_route_and_deletion(source, client)
        stored = await client.put("t-watched", {"orders-worker": "pr-9"})
        deadline = time.monotonic() + 10
        while source.table.latest("t-watched") is None:
            assert time.monotonic() < deadline, "route did not arrive through the watch within 10s"
            await asyncio.sleep(0.01)
        assert source.table.latest("t-watched").version == stored.version  # type: ignore[union-attr]
        assert source.cursor >= stored.version
        # The watch asks again every third of the usable lead, so its completeness stays fresh:
        # live records are covered without a catch-up, with no route change at all meanwhile.
        assert source.lead.lead_ms(now_ms()) == 1000 and source.next_watch_wait() == 0.25
        asked = dict(source.catch_ups)
        await asyncio.sleep(1.5)
        assert now_ms() - source.synced_at_ms < 750 and source.covered_until_ms > now_ms()
        await source.catch_up(now_ms())
        assert dict(source.catch_ups) == asked


async def test_create_route_source_specs(bootstrap_servers: str, routes_topic: str, tmp_path: object) -> None:
    connection = KafkaConnection(bootstrap_servers=bootstrap_servers)
    source = create_route_source(f"kafka:{routes_topic}", connection=connection)
    assert isinstance(source, KafkaRouteSource) and source.describe() == f"kafka:{routes_topic}"
    assert create_route_source("kafka:", connection=connection).describe() == "kafka:_ktp_routes"
    with pytest.raises(ConfigError, match="Kafka connection"):
        create_route_source("kafka:")
    with pytest.raises(ConfigError, match="not a valid Kafka topic"):
        create_route_source("kafka:bad topic", connection=connection)
    with pytest.raises(ConfigError, match="http:// or https://"):
        create_route_source("http://")
    with pytest.raises(ConfigError, match="unknown route source"):
        create_route_source("zookeeper:x")


async def test_bad_records_on_the_topic_are_skipped_and_reported(bootstrap_servers: str, routes_topic: str) -> None:
    errors: list[str] = []
    source = kafka_source(bootstrap_servers, routes_topic, on_error=errors.append)
    async with source:
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap_servers, acks="all")
        await producer.start()
        try:
            await producer.send_and_wait(routes_topic, b"junk", key=b"t1", partition=0)
            await producer.send_and_wait(routes_topic, encode_value("t2", {"svc": "pr-1"}, 5), key=b"t2", partition=0)
            await producer.send_and_wait(routes_topic, None, key=b"t2", partition=0)  # a bare tombstone
        finally:
            await producer.stop()
        await source.catch_up()
    assert any("not JSON" in e for e in errors)
    assert source.table.sandbox_for("t2", "svc", 5) == "pr-1" and source.table.latest("t2") is None


async def test_a_routes_topic_with_several_partitions_is_refused(bootstrap_servers: str, unique: str) -> None:
    topic = await create_topic(bootstrap_servers, f"_ktp_routes-wide-{unique}", 3)
    with pytest.raises(ConfigError, match="3 partitions"):
        await kafka_source(bootstrap_servers, topic).start()


async def test_route_propagation_delay(
    bootstrap_servers: str, routes_topic: str, service: RouteService, client: RouteServiceClient
) -> None:
    """Write → a kafka: source's table (no catch_up), over 50 writes. Printed, not asserted."""
    source = kafka_source(bootstrap_servers, routes_topic)
    async with source:
        table = source.table
        delays: list[float] = []
        acks: list[float] = []
        for i in range(50):
            tenant = f"p-{i}"
            started = time.perf_counter()
            await client.put(tenant, {"orders-worker": "pr-1"})
            acks.append(time.perf_counter() - started)
            while table.latest(tenant) is None:
                await asyncio.sleep(0.001)
            delays.append(time.perf_counter() - started)
        # What a sidecar pays to catch up when nothing new was written: one ListOffsets.
        quiet: list[float] = []
        for _ in range(50):
            started = time.perf_counter()
            await source.catch_up()
            quiet.append(time.perf_counter() - started)
    delays_ms = sorted(d * 1000 for d in delays)
    acks_ms = sorted(a * 1000 for a in acks)
    p99 = delays_ms[min(len(delays_ms) - 1, int(len(delays_ms) * 0.99))]
    print(
        f"\nroute propagation write -> kafka: table over {len(delays_ms)} writes: "
        f"p50={statistics.median(delays_ms):.1f}ms p99={p99:.1f}ms max={delays_ms[-1]:.1f}ms "
        f"(PUT answered: p50={statistics.median(acks_ms):.1f}ms); "
        f"catch_up() with nothing new: p50={statistics.median(quiet) * 1000:.2f}ms"
    )


async def test_catch_up_sees_a_write_from_another_replica(
    bootstrap_servers: str, routes_topic: str, route_service: ServiceFactory
) -> None:
    """The sidecar's catch_up() covers writes through any replica, answered before the call."""
    async with route_service() as one, route_service() as two:
        source = kafka_source(bootstrap_servers, routes_topic, sync_interval=3600)
        http_source = HttpRouteSource(two.url, watch_wait=3600, token=TOKEN)
        async with source, http_source, RouteServiceClient(one.url, token=TOKEN) as client:
            for i in range(5):
                await client.put(f"burst-{i}", {"orders-worker": "pr-5"})
                await asyncio.gather(*(source.catch_up() for _ in range(20)), http_source.catch_up())
                assert source.table.latest(f"burst-{i}") is not None
                assert http_source.table.latest(f"burst-{i}") is not None
