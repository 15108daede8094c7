"""The routes cannot be read: records wait rather than being decided on a table that may be stale."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from proxy.kafka import KafkaConnection
from proxy.routes.client import RouteServiceClient, wait_seconds
from proxy.routeservice.server import RouteService, RouteServiceConfig
from proxy.routes.catchup import now_ms
from proxy.sidecar.runtime import Sidecar
from proxy.testing.app import RecordingApp
from tests.conftest import baggage, create_topic, produce, sidecar_config
from tests.faults.tcp_proxy import TcpProxy
from tests.faults.test_app_faults import until
from tests.faults.test_kafka_faults import broker_behind_proxy

SERVICE = "orders-worker"
ROUTE_READER = "ktp-sidecar-routes"  # client_id of the sidecars' kafka: route source


@dataclass
class Pods:
    """A baseline and a sandbox pod of SERVICE on a broker behind a TCP proxy, both reading
    routes with ``kafka:``, and the route service writing them."""

    proxy: TcpProxy
    bootstrap: str
    topic: str
    routes: RouteServiceClient
    base_app: RecordingApp
    sandbox_app: RecordingApp
    sidecars: list[Sidecar]


@contextlib.asynccontextmanager
async def baseline_and_sandbox(tmp_path: Path, routed_first: dict[str, str] | None = None) -> AsyncIterator[Pods]:
    """Both pods running and ready; ``routed_first`` ({tenant: sandbox}) is written before they
    start."""
    token = tmp_path / "token"
    token.write_text("t")
    async with broker_behind_proxy(tmp_path) as (_, proxy):
        bootstrap = f"127.0.0.1:{proxy.port}"
        topic = await create_topic(bootstrap, "orders", 4)
        config = RouteServiceConfig(
            kafka=KafkaConnection(bootstrap_servers=bootstrap), listen=("127.0.0.1", 0),
            routes_topic="_ktp_routes", groups_topic="_ktp_sandbox_groups", token_file=str(token),
        )
        async with RouteService(config) as service, RouteServiceClient(service.url, token="t") as routes:
            for tenant, sandbox in (routed_first or {}).items():
                await routes.put(tenant, {SERVICE: sandbox})
            async with RecordingApp("baseline") as base_app, RecordingApp("sandbox") as sandbox_app:
                sidecars = [
                    Sidecar(sidecar_config(bootstrap, topic, app.url, "", sandbox=sandbox, routes="kafka:"))
                    for app, sandbox in ((base_app, None), (sandbox_app, "pr-42"))
                ]
                async with sidecars[0], sidecars[1]:
                    await until(lambda: all(p.readiness()[0] for p in sidecars), what="both pods ready")
                    yield Pods(proxy, bootstrap, topic, routes, base_app, sandbox_app, sidecars)


async def test_records_wait_while_routes_cannot_be_read(tmp_path: Path) -> None:
    """The sidecars' route readers are cut off; meanwhile tenant 123 is routed to the sandbox
    and records of 123 and 456 arrive. Neither pod may decide them on its stale table: they wait
    (paused, polling on), and once the routes are readable each goes to exactly one version."""
    async with baseline_and_sandbox(tmp_path) as pods:
        proxy, bootstrap, topic, routes = pods.proxy, pods.bootstrap, pods.topic, pods.routes
        base_app, sandbox_app, sidecars = pods.base_app, pods.sandbox_app, pods.sidecars
        proxy.cut({ROUTE_READER})
        stored = await routes.put("123", {SERVICE: "pr-42"})
        # Records follow once the route is in force: beyond what the pods' last sync plus the
        # route lead covers, so each pod must read the routes before deciding them.
        await asyncio.sleep(wait_seconds(stored.effective_from_ms, stored.written_at_ms, now_ms()))
        records = [(None, f"{t}/{n}".encode(), baggage(t)) for n in range(100) for t in ("123", "456")]
        await produce(bootstrap, topic, records)
        cut_started = time.monotonic()
        await until(
            lambda: all(not p.readiness()[1]["routes_synced"] for p in sidecars),
            timeout=30, what="both pods report routes not synced",
        )
        await asyncio.sleep(2.0)
        during_cut = len(base_app.received) + len(sandbox_app.received)
        paused = all("routes_behind" in p.listener.paused(tp) for p in sidecars for tp in p.listener.assignment())
        proxy.heal()
        await until(
            lambda: len(base_app.received) + len(sandbox_app.received) >= len(records),
            timeout=40, what="every record handled after the routes came back",
        )
        held_for = time.monotonic() - cut_started
        await asyncio.sleep(1.0)
        ready_again = all(p.readiness()[0] for p in sidecars)
    handled = collections.Counter(r.body.decode() for r in base_app.received + sandbox_app.received)
    twice = sum(n - 1 for n in handled.values() if n > 1)
    misrouted = sum(1 for r in base_app.received if r.body.startswith(b"123/")) + sum(
        1 for r in sandbox_app.received if not r.body.startswith(b"123/")
    )
    print(
        f"ACCOUNT routes unreadable: records={len(records)} delivered during the cut={during_cut} "
        f"held {held_for:.1f}s, twice={twice} nobody={len(records) - len(handled)} misrouted={misrouted}"
    )
    assert during_cut == 0 and paused
    assert (twice, len(records) - len(handled), misrouted) == (0, 0, 0)
    assert ready_again


async def test_records_without_a_tenant_flow_while_routes_cannot_be_read(tmp_path: Path) -> None:
    """Records with no tenant (no baggage, baggage without the tenant key, baggage we cannot
    read) are decided without the routes: baseline takes them, sandboxes skip them. So they need
    no catch-up, and keep flowing while the route readers are cut off; a record with a tenant
    produced after them still waits for the routes, then goes to exactly one version."""
    async with baseline_and_sandbox(tmp_path, {"123": "pr-42"}) as pods:
        proxy, bootstrap, topic = pods.proxy, pods.bootstrap, pods.topic
        base_app, sandbox_app, sidecars = pods.base_app, pods.sandbox_app, pods.sidecars
        proxy.cut({ROUTE_READER})
        untenanted: list[tuple[bytes | None, bytes | None, list[tuple[str, bytes]]]] = []
        for n in range(60):
            untenanted += [
                (None, f"none/{n}".encode(), []),
                (None, f"other/{n}".encode(), [("baggage", b"user=7,region=eu")]),
                (None, f"bad/{n}".encode(), [("baggage", b"tenant=\xff\xfe")]),
            ]
        await produce(bootstrap, topic, untenanted)
        # Well within the routes' catch-up timeout (10 s): without the shortcut each
        # batch would wait for it, fail, and be put back until the routes return.
        await until(lambda: len(base_app.received) >= len(untenanted), timeout=8,
                    what="baseline took every record without a tenant during the cut")
        flowed_during_cut = len(base_app.received)
        sandbox_during_cut = len(sandbox_app.received)
        held_back = [sorted(p.listener.paused(tp)) for p in sidecars for tp in p.listener.assignment()]
        # Past what the pods' last sync plus the route lead covers (1 s less the margin).
        await asyncio.sleep(1.0)
        await produce(bootstrap, topic, [(None, b"123/after", baggage("123"))])
        await until(
            lambda: all(not p.readiness()[1]["routes_synced"] for p in sidecars),
            timeout=30, what="the tenant's record makes both pods wait for the routes",
        )
        tenant_during_cut = sum(r.body == b"123/after" for r in base_app.received + sandbox_app.received)
        proxy.heal()
        await until(lambda: any(r.body == b"123/after" for r in sandbox_app.received),
                    timeout=40, what="the tenant's record handled after the routes came back")
        await asyncio.sleep(1.0)
    handled = collections.Counter(r.body for r in base_app.received + sandbox_app.received)
    print(
        f"ACCOUNT routes unreadable, records without a tenant: {flowed_during_cut} of {len(untenanted)} "
        f"delivered by baseline during the cut, sandbox {sandbox_during_cut}, tenant record during the cut "
        f"{tenant_during_cut}"
    )
    assert flowed_during_cut == len(untenanted) and sandbox_during_cut == 0
    assert all(reasons == [] for reasons in held_back), held_back
    assert tenant_during_cut == 0
    assert handled[b"123/after"] == 1 and not any(r.body == b"123/after" for r in base_app.received)
    assert max(handled.values()) == 1 and len(sandbox_app.received) == 1
