"""The route lead on the real broker: sidecars decide live records without a round trip to the
routes topic, learn what lead to rely on from the route records, and stay right when a producer's
clock is ahead or the routes were written by an older route service that states no lead."""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

from aiokafka import AIOKafkaProducer

from proxy.kafka import KafkaConnection
from proxy.routes.client import RouteServiceClient, wait_seconds
from proxy.routes.lead import CATCH_UP_AHEAD_OF_CLOCK, CATCH_UP_NO_LEAD
from proxy.routes.records import encode_value
from proxy.routes.catchup import now_ms
from proxy.routing.sources.kafka_source import KafkaRouteSource
from proxy.routes.topic import ensure_routes_topic
from proxy.sidecar.runtime import Sidecar
from proxy.testing.app import RecordingApp
from tests.conftest import baggage, eventually, sidecar_config
from tests.integration.test_routes_e2e import route_service

SERVICE = "orders-worker"


@contextlib.asynccontextmanager
async def pods(
    bootstrap_servers: str, topic: str, *, lagging: bool = False
) -> AsyncIterator[tuple[RecordingApp, RecordingApp, list[Sidecar]]]:
    """A baseline and a pr-42 sidecar reading this test's routes topic with ``kafka:``.
    ``lagging``: their readers fetch with 8 s waits (Tansu answers an idle fetch only then), so
    the table's completeness is seconds old and the lead cannot cover live records."""
    async with RecordingApp("C") as base_app, RecordingApp("C''") as sandbox_app:
        sidecars = []
        for app, sandbox in ((base_app, None), (sandbox_app, "pr-42")):
            config = sidecar_config(
                bootstrap_servers, topic, app.url, "", sandbox=sandbox, group=f"g-{topic}",
                routes=f"kafka:_ktp_routes-{topic}",
            )
            source = None
            if lagging:
                source = KafkaRouteSource(config.kafka, f"_ktp_routes-{topic}", fetch_max_wait_ms=8000, sync_interval=120)
            sidecars.append(Sidecar(config, route_source=source))
        async with sidecars[0], sidecars[1]:
            await eventually(lambda: _ready(sidecars), what="both sidecars ready")
            yield base_app, sandbox_app, sidecars


async def produce_at(
    bootstrap_servers: str, topic: str, tenants: list[str], count: int, skew_ms: int = 0, round_: int = 0
) -> set[str]:
    """``count`` records per tenant, stamped ``skew_ms`` ahead of this machine's clock (a producer
    whose clock runs ahead); the bodies."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap_servers, acks="all")
    await producer.start()
    sent = set()
    try:
        futures = []
        for n in range(count):
            for tenant in tenants:
                body = f"{tenant}/{skew_ms}/{round_}/{n}"
                futures.append(await producer.send(
                    topic, body.encode(), headers=baggage(tenant), timestamp_ms=now_ms() + skew_ms
                ))
                sent.add(body)
        for future in futures:
            await future
    finally:
        await producer.stop()
    return sent


def catch_ups(sidecars: list[Sidecar]) -> collections.Counter[str]:
    total: collections.Counter[str] = collections.Counter()
    for sidecar in sidecars:
        gate = sidecar.routes_gate
        assert gate is not None
        total.update(gate.source.catch_ups)
    return total


def check_split(base_app: RecordingApp, sandbox_app: RecordingApp, expected: set[str]) -> None:
    """Tenant t-sand is routed to pr-42, t-base is not: each record handled once, by its version."""
    handled = collections.Counter(r.body.decode() for r in base_app.received + sandbox_app.received)
    assert set(handled) == expected and max(handled.values()) == 1
    assert all(r.body.startswith(b"t-sand/") for r in sandbox_app.received)
    assert all(r.body.startswith(b"t-base/") for r in base_app.received)


async def test_live_traffic_needs_no_catch_ups_and_a_skewed_producer_is_still_right(
    bootstrap_servers: str, topic: str, tmp_path: Path
) -> None:
    """Steady traffic with tenants costs no round trip to the routes topic: the reader's own
    fetches keep the table complete to within a fetch wait, and the 1 s lead covers the rest.
    A producer whose clock is 400 ms ahead is covered too (the lead tolerates up to the lead less
    the margin less the reader's staleness); one 3 s ahead makes batches catch up first, counted
    as ``record_ahead_of_clock``, and every record still goes to exactly one version."""
    async with route_service(bootstrap_servers, topic, tmp_path) as routes:
        stored = await routes.put("t-sand", {SERVICE: "pr-42"})
        await routes.put("t-base", {"billing": "pr-9"})
        async with pods(bootstrap_servers, topic) as (base_app, sandbox_app, sidecars):
            await asyncio.sleep(wait_seconds(stored.effective_from_ms, stored.written_at_ms, now_ms()))
            await asyncio.sleep(0.5)  # past the start-up batches
            before = catch_ups(sidecars)
            expected: set[str] = set()
            for round_ in range(15):  # ~3 s of live traffic, batch after batch
                expected |= await produce_at(bootstrap_servers, topic, ["t-sand", "t-base"], 5, round_=round_)
                await asyncio.sleep(0.2)
            await eventually(lambda: _handled(base_app, sandbox_app, len(expected)), what="live records handled")
            steady = catch_ups(sidecars) - before
            for round_ in range(5):
                expected |= await produce_at(bootstrap_servers, topic, ["t-sand", "t-base"], 5, skew_ms=400, round_=round_)
                await asyncio.sleep(0.2)
            await eventually(lambda: _handled(base_app, sandbox_app, len(expected)), what="400 ms-ahead records handled")
            small_skew = catch_ups(sidecars) - before - steady
            expected |= await produce_at(bootstrap_servers, topic, ["t-sand", "t-base"], 5, skew_ms=3000)
            await eventually(lambda: _handled(base_app, sandbox_app, len(expected)), what="3 s-ahead records handled")
            large_skew = catch_ups(sidecars) - before - steady - small_skew
            await asyncio.sleep(0.5)  # a duplicate would arrive now
    print(f"route lead: catch-ups steady={dict(steady)} skew 400 ms={dict(small_skew)} skew 3 s={dict(large_skew)}")
    check_split(base_app, sandbox_app, expected)
    assert sum(steady.values()) == 0 and sum(small_skew.values()) == 0
    assert large_skew[CATCH_UP_AHEAD_OF_CLOCK] >= 2  # each sidecar, at least once


async def test_routes_of_an_older_route_service_without_a_lead_make_sidecars_catch_up(
    bootstrap_servers: str, topic: str, tmp_path: Path
) -> None:
    """Route records with no lead (as an older route service writes them, taking effect at their
    write time) must never be covered by an assumed lead: sidecars with readers far behind catch
    up before deciding, and records sent right after the write follow it."""
    routes_topic = f"_ktp_routes-{topic}"
    await ensure_routes_topic(KafkaConnection(bootstrap_servers=bootstrap_servers), routes_topic)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap_servers, acks="all")
    await producer.start()
    try:
        # An older route service's record: no written_at, no lead_ms.
        await producer.send_and_wait(routes_topic, encode_value("t-old", {"billing": "pr-1"}, now_ms()), key=b"t-old", partition=0)
        async with pods(bootstrap_servers, topic, lagging=True) as (base_app, sandbox_app, sidecars):
            await producer.send_and_wait(
                routes_topic, encode_value("t-sand", {SERVICE: "pr-42"}, now_ms()), key=b"t-sand", partition=0
            )
            expected = await produce_at(bootstrap_servers, topic, ["t-sand", "t-base"], 20)
            await eventually(lambda: _handled(base_app, sandbox_app, len(expected)), what="records handled")
            await asyncio.sleep(0.5)
            counted = catch_ups(sidecars)
    finally:
        await producer.stop()
    print(f"older route service: catch-ups={dict(counted)}")
    check_split(base_app, sandbox_app, expected)
    assert counted[CATCH_UP_NO_LEAD] >= 2


async def test_the_routes_reader_knows_its_completeness_from_its_own_fetches(
    bootstrap_servers: str, topic: str, tmp_path: Path
) -> None:
    """With no periodic sync at all, the reader's completeness time keeps up with the clock from
    its follower's fetches alone (this fails if the fetch observation stops working, e.g. after an
    aiokafka upgrade), and a write is covered once read."""
    async with route_service(bootstrap_servers, topic, tmp_path) as routes:
        source = KafkaRouteSource(
            KafkaConnection(bootstrap_servers=bootstrap_servers), f"_ktp_routes-{topic}", sync_interval=3600
        )
        async with source:
            assert source.reader.fetch_completeness
            started = source.synced_at_ms
            await asyncio.sleep(1.5)
            assert source.synced_at_ms - started >= 1000
            assert now_ms() - source.synced_at_ms < 1000
            stored = await routes.put("t1", {SERVICE: "pr-42"})
            await eventually(lambda: _async(source.table.latest("t1") is not None), what="route read")
            assert source.reader.lead.lead_ms(now_ms()) == 1000
            await eventually(
                lambda: _async(source.synced_at_ms > (stored.written_at_ms or 0)), what="complete past the write"
            )
            assert source.covered_until_ms >= source.synced_at_ms + 750
            assert sum(source.catch_ups.values()) == 0


async def _async(value: bool) -> bool:
    return value


async def _ready(sidecars: list[Sidecar]) -> bool:
    return all(s.readiness()[0] for s in sidecars)


async def _handled(base_app: RecordingApp, sandbox_app: RecordingApp, expected: int) -> bool:
    return len(base_app.received) + len(sandbox_app.received) >= expected
