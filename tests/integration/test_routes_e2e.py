"""Route service + kafka: route source + baseline and sandbox sidecars, on the real broker.

The shared-environment scenario end to end: tenants routed through the API, records judged by the routes in
force at their time, sandbox groups positioned and cleaned up by the route lifecycle. Each test
runs with the default route lead (writers wait until the change is in force, as ``ktp tenant put
--wait`` does) and with lead 0 (records follow the write at once: what an older route service
without a lead gives, every batch newer than the table's sync catching up).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiokafka import TopicPartition

from proxy.kafka import KafkaConnection
from proxy.routes.client import RouteServiceClient, wait_seconds
from proxy.routeservice.server import RouteService, RouteServiceConfig
from proxy.routes.records import RouteRecord
from proxy.routes.catchup import now_ms
from proxy.routing.sources.kafka_source import KafkaRouteSource
from proxy.sidecar.runtime import Sidecar, committed_offsets
from proxy.testing.app import RecordingApp
from tests.conftest import baggage, eventually, produce, sidecar_config

TOKEN = "e2e-token"
SERVICE = "orders-worker"
LEADS = pytest.mark.parametrize("route_lead", [1.0, 0.0], ids=["lead-1s", "lead-0"])


async def in_force(record: RouteRecord) -> None:
    """Wait until a write is in force, as ``ktp tenant put --wait`` does."""
    await asyncio.sleep(wait_seconds(record.effective_from_ms, record.written_at_ms, now_ms()))


@contextlib.asynccontextmanager
async def route_service(
    bootstrap_servers: str, topic: str, tmp_path: Path, route_lead: float = 1.0
) -> AsyncIterator[RouteServiceClient]:
    token = tmp_path / "token"
    token.write_text(TOKEN)
    config = RouteServiceConfig(
        kafka=KafkaConnection(bootstrap_servers=bootstrap_servers),
        listen=("127.0.0.1", 0),
        routes_topic=f"_ktp_routes-{topic}",
        groups_topic=f"_ktp_sandbox_groups-{topic}",
        token_file=str(token),
        group_reap_interval=0.5,
        drain_timeout=1.0,
        route_lead=route_lead,
    )
    async with RouteService(config) as service, RouteServiceClient(service.url, token=TOKEN) as client:
        yield client


def sidecar(
    bootstrap_servers: str,
    topic: str,
    app: RecordingApp,
    sandbox: str | None = None,
    *,
    lagging: bool = False,
    auto_offset_reset: str = "earliest",
) -> Sidecar:
    """A sidecar reading routes from this test's routes topic (the default kafka: source).

    ``lagging``: its route source follows the topic seconds late (long fetch waits, rare syncs),
    as a cache far behind would; only the catch-up before deciding can then get records right.
    """
    config = sidecar_config(
        bootstrap_servers, topic, app.url, "", sandbox=sandbox, group=f"g-{topic}",
        routes=f"kafka:_ktp_routes-{topic}", auto_offset_reset=auto_offset_reset,
    )
    source = None
    if lagging:
        source = KafkaRouteSource(
            config.kafka, f"_ktp_routes-{topic}", fetch_max_wait_ms=8000, sync_interval=120
        )
    return Sidecar(config, route_source=source)


def bodies(app: RecordingApp) -> collections.Counter[str]:
    return collections.Counter(r.body.decode() for r in app.received)


async def committed(bootstrap_servers: str, group: str, topic: str) -> dict[int, int | None]:
    tps = [TopicPartition(topic, p) for p in range(4)]
    found = await committed_offsets(KafkaConnection(bootstrap_servers=bootstrap_servers), group, tps)
    return {tp.partition: offset for tp, offset in found.items()}


@LEADS
async def test_seeds_scenario_each_record_handled_once(
    bootstrap_servers: str, topic: str, tmp_path: Path, route_lead: float
) -> None:
    """Tenant 123 → C'' (sandbox pr-42), everyone else → baseline C; 100 tenants created at once
    and used at once with 10k records: none handled twice, none by nobody."""
    async with route_service(bootstrap_servers, topic, tmp_path, route_lead) as routes:
        async with RecordingApp("C") as base_app, RecordingApp("C''") as sandbox_app:
            base = sidecar(bootstrap_servers, topic, base_app, lagging=True)
            sandboxed = sidecar(bootstrap_servers, topic, sandbox_app, sandbox="pr-42", lagging=True)
            async with base, sandboxed:
                await eventually(lambda: _ready(base, sandboxed), what="both sidecars ready")
                tenants = [f"t{i}" for i in range(100)]

                async def create_and_use(i: int, tenant: str) -> set[str]:
                    # Even tenants go to the sandbox for this service, odd ones route another
                    # service only; records follow the write as soon as it is in force (no wait
                    # for propagation).
                    target = {SERVICE: "pr-42"} if i % 2 == 0 else {"billing": "pr-9"}
                    await in_force(await routes.put(tenant, target))
                    records = [(None, f"{tenant}/{n}".encode(), baggage(tenant)) for n in range(95)]
                    await produce(bootstrap_servers, topic, records)
                    return {f"{tenant}/{n}" for n in range(95)}

                expected: set[str] = set()
                for sent in await asyncio.gather(*(create_and_use(i, t) for i, t in enumerate(tenants))):
                    expected |= sent
                plain = [(None, f"none/{n}".encode(), baggage(None)) for n in range(500)]
                await produce(bootstrap_servers, topic, plain)
                expected |= {f"none/{n}" for n in range(500)}
                await eventually(
                    lambda: _count(base_app, sandbox_app, len(expected)), timeout=60, what="all records handled"
                )
                await asyncio.sleep(1.0)  # a duplicate would arrive now
    handled = bodies(base_app) + bodies(sandbox_app)
    twice = sum(n - 1 for n in handled.values() if n > 1)
    nobody = len(expected - set(handled))
    in_sandbox = set(bodies(sandbox_app))
    wrong_place = {b for b in in_sandbox if int(b.split("/")[0][1:]) % 2 == 1 or b.startswith("none")}
    print(
        f"shared-environment scenario: records={len(expected)} baseline={len(base_app.received)} "
        f"sandbox={len(sandbox_app.received)} twice={twice} nobody={nobody} misrouted={len(wrong_place)}"
    )
    assert (twice, nobody, len(wrong_place)) == (0, 0, 0)
    assert len(in_sandbox) == 50 * 95


@LEADS
async def test_sandbox_started_after_its_route_gets_every_record_since_effective_from(
    bootstrap_servers: str, topic: str, tmp_path: Path, route_lead: float
) -> None:
    async with route_service(bootstrap_servers, topic, tmp_path, route_lead) as routes:
        async with RecordingApp("C") as base_app, RecordingApp("C''") as sandbox_app:
            async with sidecar(bootstrap_servers, topic, base_app) as base:
                await eventually(lambda: _ready(base), what="baseline ready")
                before = [(None, f"before/{n}".encode(), baggage("123")) for n in range(20)]
                await produce(bootstrap_servers, topic, before)
                record = await routes.put("123", {SERVICE: "pr-7"})
                await in_force(record)
                after = [(None, f"after/{n}".encode(), baggage("123")) for n in range(50)]
                others = [(None, f"other/{n}".encode(), baggage("456")) for n in range(30)]
                await produce(bootstrap_servers, topic, after + others)
                await base_app.wait_for(50)
                # The sandbox pod starts only now, in a group that never existed, with Kafka's
                # default start ("latest"): only the route's effective_from can place it.
                async with sidecar(bootstrap_servers, topic, sandbox_app, sandbox="pr-7", auto_offset_reset="latest"):
                    await sandbox_app.wait_for(50)
                    await asyncio.sleep(1.0)
    print(f"late sandbox: effective_from={record.effective_from_ms} baseline={len(base_app.received)} sandbox={len(sandbox_app.received)}")
    assert set(bodies(sandbox_app)) == {f"after/{n}" for n in range(50)}
    assert set(bodies(base_app)) == {f"before/{n}" for n in range(20)} | {f"other/{n}" for n in range(30)}
    assert max(bodies(sandbox_app).values()) == 1 and max(bodies(base_app).values()) == 1


@LEADS
async def test_deleting_a_tenant_returns_it_to_baseline_and_removes_the_sandbox_group(
    bootstrap_servers: str, topic: str, tmp_path: Path, route_lead: float
) -> None:
    group = f"g-{topic}-pr-42"
    async with route_service(bootstrap_servers, topic, tmp_path, route_lead) as routes:
        await in_force(await routes.put("123", {SERVICE: "pr-42"}))
        async with RecordingApp("C") as base_app, RecordingApp("C''") as sandbox_app:
            async with sidecar(bootstrap_servers, topic, base_app) as base:
                async with sidecar(bootstrap_servers, topic, sandbox_app, sandbox="pr-42") as sandboxed:
                    await eventually(lambda: _ready(base, sandboxed), what="both sidecars ready")
                    await produce(bootstrap_servers, topic, [(None, f"routed/{n}".encode(), baggage("123")) for n in range(40)])
                    await sandbox_app.wait_for(40)
                    await eventually(lambda: _has_commits(bootstrap_servers, group, topic), what="sandbox commits")
                # The sandbox is torn down (its pods leave), then the tenant is deleted.
                deletion = await routes.delete("123")
                await asyncio.sleep(wait_seconds(deletion.effective_from_ms, deletion.written_at_ms, now_ms()))
                await produce(bootstrap_servers, topic, [(None, f"back/{n}".encode(), baggage("123")) for n in range(40)])
                await base_app.wait_for(40)
                started = time.monotonic()
                await eventually(
                    lambda: _no_commits(bootstrap_servers, group, topic), timeout=30, what="sandbox group deleted"
                )
                print(f"sandbox group {group} deleted {time.monotonic() - started:.1f}s after the tenant's last record")
    assert set(bodies(sandbox_app)) == {f"routed/{n}" for n in range(40)}
    assert set(bodies(base_app)) == {f"back/{n}" for n in range(40)}
    # The baseline group is never touched by the clean-up.
    assert any(v is not None for v in (await committed(bootstrap_servers, f"g-{topic}", topic)).values())


async def test_a_sandbox_group_with_members_is_not_deleted_until_its_pods_stop(
    bootstrap_servers: str, topic: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The tenant is deleted while its sandbox still runs: the group keeps its member and its
    offsets (the embedded broker would accept DeleteGroups for it); once the sandbox stops, the
    group is deleted."""
    caplog.set_level(logging.INFO, logger="proxy")
    group = f"g-{topic}-pr-9"
    async with route_service(bootstrap_servers, topic, tmp_path) as routes:
        await routes.put("123", {SERVICE: "pr-9"})
        async with RecordingApp("C''") as sandbox_app:
            async with sidecar(bootstrap_servers, topic, sandbox_app, sandbox="pr-9") as sandboxed:
                await eventually(lambda: _ready(sandboxed), what="sandbox ready")
                await produce(bootstrap_servers, topic, [(None, f"routed/{n}".encode(), baggage("123")) for n in range(20)])
                await sandbox_app.wait_for(20)
                await eventually(lambda: _has_commits(bootstrap_servers, group, topic), what="sandbox commits")
                member = sandboxed.listener.consumer._coordinator.member_id
                await routes.delete("123")
                await asyncio.sleep(3.0)  # six clean-up rounds
                assert await _has_commits(bootstrap_servers, group, topic), "deleted while it had a member"
                assert sandboxed.listener.consumer._coordinator.member_id == member
                assert not sandboxed.listener.membership_lost
            await eventually(
                lambda: _no_commits(bootstrap_servers, group, topic), timeout=30, what="sandbox group deleted"
            )
    # Partitions are written topic[partition] in our log lines, never as aiokafka's reprs.
    ours = [r.getMessage() for r in caplog.records if r.name.startswith("proxy.")]
    assert any("new sandbox group starts at" in line for line in ours)
    assert not [line for line in ours if "TopicPartition(" in line]


async def _ready(*sidecars: Sidecar) -> bool:
    return all(s.readiness()[0] for s in sidecars)


async def _count(base_app: RecordingApp, sandbox_app: RecordingApp, expected: int) -> bool:
    return len(base_app.received) + len(sandbox_app.received) >= expected


async def _has_commits(bootstrap_servers: str, group: str, topic: str) -> bool:
    return any(v is not None for v in (await committed(bootstrap_servers, group, topic)).values())


async def _no_commits(bootstrap_servers: str, group: str, topic: str) -> bool:
    return all(v is None for v in (await committed(bootstrap_servers, group, topic)).values())

