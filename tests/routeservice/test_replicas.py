"""Statelessness: restarts lose no route, replicas serve one table, watchers see every change."""

from __future__ import annotations

import asyncio

from proxy.routes.client import RouteServiceClient
from proxy.routeservice.server import RouteService
from tests.routeservice.conftest import TOKEN, ServiceFactory


async def test_restart_loses_no_route(route_service: ServiceFactory) -> None:
    async with route_service() as service, RouteServiceClient(service.url, token=TOKEN) as client:
        written = {f"tenant-{i}": await client.put(f"tenant-{i}", {"orders-worker": f"pr-{i}"}) for i in range(20)}
        written["tenant-3"] = await client.put("tenant-3", {"orders-worker": "pr-33", "billing": "pr-33"})
        await client.delete("tenant-7")
        del written["tenant-7"]
    async with route_service() as restarted, RouteServiceClient(restarted.url, token=TOKEN) as client:
        assert {r.tenant: r for r in await client.list_tenants()} == written
        assert (await client.get("tenant-3")).routes == {"orders-worker": "pr-33", "billing": "pr-33"}


async def test_two_replicas_serve_the_same_table(route_service: ServiceFactory) -> None:
    async with route_service() as one, route_service() as two:
        async with RouteServiceClient(one.url, token=TOKEN) as a, RouteServiceClient(two.url, token=TOKEN) as b:
            for i in range(10):
                # Read-your-writes across replicas: each read catches up with the topic first.
                stored = await a.put(f"t{i}", {"orders-worker": "pr-1"})
                assert await b.get(f"t{i}") == stored
                replaced = await b.put(f"t{i}", {"orders-worker": "pr-2"})
                assert replaced.version > stored.version and replaced.effective_from_ms > stored.effective_from_ms
                assert await a.get(f"t{i}") == replaced
            await b.delete("t0")
            assert [r.tenant for r in await a.list_tenants()] == [f"t{i}" for i in range(1, 10)]
            assert await a.list_tenants() == await b.list_tenants()
            # Concurrent writes through both replicas: one order (versions), the same table.
            await asyncio.gather(
                *(client.put("contended", {"orders-worker": f"pr-{i}"}) for i, client in enumerate([a, b] * 5))
            )
            assert await a.get("contended") == await b.get("contended")


async def test_watch_long_polls_and_reports_deletions(service: RouteService, client: RouteServiceClient) -> None:
    initial = await client.watch(-1, sync=True)
    assert initial.records == [] and initial.version == -1 and not initial.snapshot

    waiting = asyncio.create_task(client.watch(initial.version, wait=10))
    await asyncio.sleep(0.2)
    assert not waiting.done()  # parked until something changes
    stored = await client.put("w", {"orders-worker": "pr-1"})
    woken = await asyncio.wait_for(waiting, 5)
    assert [r.version for r in woken.records] == [stored.version] and woken.version >= stored.version

    await client.delete("w")
    changes = await client.watch(woken.version, sync=True)
    [deletion] = changes.records
    assert deletion.tenant == "w" and deletion.deleted and deletion.effective_from_ms > stored.effective_from_ms
    # The full history is there for a watcher starting from scratch.
    everything = await client.watch(-1)
    assert [(r.tenant, r.deleted) for r in everything.records] == [("w", False), ("w", True)]
    # Nothing new: a short wait answers empty with the same cursor.
    quiet = await client.watch(changes.version, wait=0.1)
    assert quiet.records == [] and quiet.version == changes.version
