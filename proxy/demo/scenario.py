"""The baseline-and-sandbox scenario on one machine: A → B'' → Kafka → C'' → D.

Services (the letters in brackets name them in the diagram; a doubled prime is a service's
sandbox version):

- ``orders-api`` [A]       entry point; routes each request to B or B'' by the request's tenant,
                           as a service mesh would, using the route service;
- ``orders-producer`` [B]  publishes the order to Kafka with the request's ``baggage`` header, as
                           OpenTelemetry instrumentation does; B'' is its sandbox ``pr-42`` version;
- ``orders-worker`` [C]    the Kafka consumer, untouched: a plain HTTP handler behind a
                           kafka-tenant-proxy sidecar; C'' is its ``pr-42`` version with its own
                           sidecar (group ``orders-worker-pr-42``);
- ``ledger`` [D]           called by C and C'' with the tenant; records who reached it.

A tenant is created through the route service's API, requests flow, the tenant is deleted, more
requests flow, and a table shows which version handled which tenant's requests.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
from aiohttp import web
from aiokafka import AIOKafkaProducer

from proxy.kafka import KafkaConnection
from proxy.routes.catchup import now_ms
from proxy.routes.client import RouteServiceClient, wait_seconds
from proxy.routeservice.server import RouteService, RouteServiceConfig
from proxy.sidecar.config import SidecarConfig
from proxy.routing.tenant import TenantExtractor
from proxy.sidecar.runtime import Sidecar
from proxy.testing.broker import EmbeddedBroker, free_port

TOPIC = "orders"
SANDBOX = "pr-42"
TOKEN = "demo-token"
TENANTS = ("123", "456", "789", None)
REQUESTS_PER_TENANT = 5


@dataclass
class Ledger:
    """Who handled what: (phase, tenant) → Counter of versions."""

    seen: dict[tuple[str, str], collections.Counter[str]] = field(
        default_factory=lambda: collections.defaultdict(collections.Counter)
    )

    def note(self, phase: str, tenant: str | None, who: str) -> None:
        self.seen[(phase, tenant or "(none)")][who] += 1


@contextlib.asynccontextmanager
async def http_app(routes: list[web.RouteDef]) -> AsyncIterator[str]:
    """A small aiohttp app on a free loopback port; yields its base URL."""
    app = web.Application()
    app.add_routes(routes)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


_TENANTS = TenantExtractor()


def tenant_of(request: web.Request) -> str | None:
    return _TENANTS.from_baggage(request.headers.get("baggage", "").encode()).tenant


async def run_demo(records: int = REQUESTS_PER_TENANT) -> int:
    started = time.monotonic()
    ledger = Ledger()
    session = aiohttp.ClientSession()
    print(
        f"starting the embedded Kafka broker (Tansu), the route service and {len(LEGEND)} service "
        f"versions ({', '.join(LEGEND)}) ..."
    )
    with tempfile.TemporaryDirectory(prefix="ktp-demo-") as tmp:
        workdir = Path(tmp)
        (workdir / "token").write_text(TOKEN)
        await _scenario(workdir, ledger, session, records)
    await session.close()
    print_table(ledger)
    duplicates = [key for key, c in ledger.seen.items() if c["C"] + c["C''"] != c["A"]]
    print(f"\n{'every request handled exactly once' if not duplicates else f'MISMATCH: {duplicates}'}; "
          f"{time.monotonic() - started:.1f}s")
    return 0 if not duplicates else 1


async def _scenario(workdir: Path, ledger: Ledger, session: aiohttp.ClientSession, records: int) -> None:
    async with EmbeddedBroker() as broker, contextlib.AsyncExitStack() as stack:
        connection = KafkaConnection(bootstrap_servers=broker.bootstrap_servers)
        route_service = await stack.enter_async_context(
            RouteService(
                RouteServiceConfig(
                    kafka=connection, listen=("127.0.0.1", 0), token_file=str(workdir / "token"), group_reap_interval=1.0
                )
            )
        )
        routes = await stack.enter_async_context(RouteServiceClient(route_service.url, token=TOKEN))
        producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap_servers, acks="all")
        await producer.start()
        stack.push_async_callback(producer.stop)

        async def ledger_handler(request: web.Request) -> web.Response:
            body = await request.json()
            ledger.note(body["phase"], tenant_of(request), "D")
            return web.Response(status=204)

        d_url = await stack.enter_async_context(http_app([web.post("/ledger", ledger_handler)]))

        def worker(version: str) -> web.RouteDef:
            async def handle(request: web.Request) -> web.Response:
                order = json.loads(await request.read())
                ledger.note(order["phase"], tenant_of(request), version)
                # C calls D, passing the context on (what OpenTelemetry instrumentation does).
                headers = {"baggage": request.headers["baggage"]} if "baggage" in request.headers else {}
                async with session.post(f"{d_url}/ledger", json=order, headers=headers) as answer:
                    return web.Response(status=200 if answer.status < 300 else 503)

            return web.post("/events", handle)

        c_url = await stack.enter_async_context(http_app([worker("C")]))
        c2_url = await stack.enter_async_context(http_app([worker("C''")]))

        def producer_service(version: str) -> web.RouteDef:
            async def handle(request: web.Request) -> web.Response:
                order = await request.json()
                ledger.note(order["phase"], tenant_of(request), version)
                headers = [("baggage", request.headers["baggage"].encode())] if "baggage" in request.headers else []
                headers.append(("content-type", b"application/json"))
                await producer.send_and_wait(TOPIC, json.dumps(order).encode(), headers=headers)
                return web.Response(status=202)

            return web.post("/orders", handle)

        b_url = await stack.enter_async_context(http_app([producer_service("B")]))
        b2_url = await stack.enter_async_context(http_app([producer_service("B''")]))

        async def api_handler(request: web.Request) -> web.Response:
            # A service mesh's job: route by tenant to the sandboxed B'' when the tenant
            # maps orders-producer to it.
            order = await request.json()
            tenant = tenant_of(request)
            ledger.note(order["phase"], tenant, "A")
            target = b_url
            if tenant is not None:
                with contextlib.suppress(Exception):
                    record = await routes.get(tenant)
                    if record.routes.get("orders-producer") == SANDBOX:
                        target = b2_url
            headers = {"baggage": request.headers["baggage"]} if "baggage" in request.headers else {}
            async with session.post(f"{target}/orders", json=order, headers=headers) as answer:
                return web.Response(status=answer.status)

        a_url = await stack.enter_async_context(http_app([web.post("/orders", api_handler)]))

        def sidecar_for(app_url: str, sandbox: str | None) -> Sidecar:
            return Sidecar(
                SidecarConfig(
                    kafka=connection,
                    service="orders-worker",
                    sandbox=sandbox,
                    group="orders-worker",
                    topics=(TOPIC,),
                    app_url=f"{app_url}/events",
                    routes="kafka:",
                    auto_offset_reset="earliest",
                    admin_addr=("127.0.0.1", 0),
                    metrics_addr=("127.0.0.1", 0),
                    publish_addr=("127.0.0.1", 0),
                    session_timeout=2.0,
                    commit_interval=0.5,
                )
            )

        baseline, sandboxed = sidecar_for(c_url, None), sidecar_for(c2_url, SANDBOX)
        await asyncio.gather(
            stack.enter_async_context(baseline), stack.enter_async_context(sandboxed)
        )
        while not (baseline.readiness()[0] and sandboxed.readiness()[0]):
            await asyncio.sleep(0.05)

        async def send(phase: str) -> int:
            sent = 0
            for tenant in TENANTS:
                for n in range(records):
                    headers = {"baggage": f"tenant={tenant}"} if tenant else {}
                    async with session.post(f"{a_url}/orders", json={"phase": phase, "n": n}, headers=headers) as r:
                        assert r.status == 202, r.status
                    sent += 1
            return sent

        async def settle(phase: str, expected: int) -> None:
            deadline = time.monotonic() + 30
            while sum(c["D"] for (p, _), c in ledger.seen.items() if p == phase) < expected:
                if time.monotonic() > deadline:
                    raise SystemExit(f"demo: not every {phase!r} request reached D within 30s")
                await asyncio.sleep(0.05)

        put = await routes.put("123", {"orders-producer": SANDBOX, "orders-worker": SANDBOX})
        print(f"PUT /v1/tenants/123 -> routes={dict(put.routes)} version={put.version} effective_from={put.to_api()['effective_from']}")
        # Traffic follows once the route is in force (the route lead after it was stored), as
        # `ktp tenant put --wait` does.
        await asyncio.sleep(wait_seconds(put.effective_from_ms, put.written_at_ms, now_ms()))
        await settle("1 routed", await send("1 routed"))
        deletion = await routes.delete("123")
        print("DELETE /v1/tenants/123 -> 204")
        await asyncio.sleep(wait_seconds(deletion.effective_from_ms, deletion.written_at_ms, now_ms()))
        await settle("2 deleted", await send("2 deleted"))
        await asyncio.sleep(0.5)  # anything handled twice would show now


# The table's columns: one per version of a service, with what it is.
LEGEND = {
    "A": "orders-api: entry point; sends each request to B or B'' by its tenant, as a mesh would",
    "B": "orders-producer, baseline: publishes the order to Kafka with the request's baggage",
    "B''": "orders-producer, sandbox pr-42",
    "C": "orders-worker, baseline: the Kafka consumer, behind a sidecar in group orders-worker",
    "C''": "orders-worker, sandbox pr-42: behind its own sidecar, group orders-worker-pr-42",
    "D": "ledger: called by C and C'' with the tenant",
}


def print_table(ledger: Ledger) -> None:
    """Requests per phase and tenant that reached each service version, then the legend."""
    columns = tuple(LEGEND)
    print()
    print(f"{'phase':<12} {'tenant':<8} " + " ".join(f"{c:>5}" for c in columns))
    print("-" * (22 + 6 * len(columns)))
    for (phase, tenant), counts in sorted(ledger.seen.items()):
        print(f"{phase:<12} {tenant:<8} " + " ".join(f"{counts[c]:>5}" for c in columns))
    print("\nEach cell: requests of that phase and tenant that reached the version.")
    for column, meaning in LEGEND.items():
        print(f"  {column:<4} {meaning}")
