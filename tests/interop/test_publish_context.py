"""The B'' → Kafka → C'' hop with no OpenTelemetry in the app: what the sandboxed
producer publishes through its sidecar keeps the tenant, so baseline C skips it and sandbox C''
handles it."""

from __future__ import annotations

import asyncio
from pathlib import Path

from proxy.sidecar.runtime import Sidecar
from proxy.testing.app import RecordingApp
from tests.conftest import baggage, create_topic, eventually, produce, sidecar_config
from tests.interop.conftest import PublishingApp, publish, read_all, routes_file

TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


async def test_delivery_context_carries_the_tenant_to_the_next_hop(
    bootstrap_servers: str, topic: str, unique: str, tmp_path: Path
) -> None:
    payments = await create_topic(bootstrap_servers, f"payments-{unique}", 2)
    routes = routes_file(tmp_path)
    await produce(
        bootstrap_servers,
        topic,
        [
            (b"o-1", b"order-1", [*baggage("123"), ("traceparent", TRACEPARENT.encode())]),
            (b"o-2", b"order-2", baggage(None)),
        ],
    )
    async with (
        PublishingApp(payments) as b_sandbox,
        PublishingApp(payments) as b_baseline,
        RecordingApp("C") as c_baseline,
        RecordingApp("C''") as c_sandbox,
    ):
        b_pr42 = Sidecar(sidecar_config(bootstrap_servers, topic, b_sandbox.url, routes, sandbox="pr-42"))
        b_base = Sidecar(sidecar_config(bootstrap_servers, topic, b_baseline.url, routes))
        c_config = {"service": "billing-worker", "group": "billing"}
        c_base = Sidecar(sidecar_config(bootstrap_servers, payments, c_baseline.url, routes, **c_config))
        c_pr42 = Sidecar(sidecar_config(bootstrap_servers, payments, c_sandbox.url, routes, sandbox="pr-42", **c_config))
        b_sandbox.sidecar, b_baseline.sidecar = b_pr42, b_base
        async with b_pr42, b_base, c_base, c_pr42:
            (published,) = await b_sandbox.wait_published(1)
            (published_base,) = await b_baseline.wait_published(1)
            (handled,) = await c_sandbox.wait_for(1)
            (handled_base,) = await c_baseline.wait_for(1)

            async def both_decided() -> bool:
                return len(c_base.decisions()) == 2 and len(c_pr42.decisions()) == 2

            await eventually(both_decided, what="both C pods decided both records")
            await asyncio.sleep(0.5)  # a record handled twice would show up now
            base_decisions = {d["tenant"]: d for d in c_base.decisions()}
            metrics = b_pr42.metrics.render().decode()
    assert published.status == 204, published.body
    assert published.headers["kafka-topic"] == payments and int(published.headers["kafka-offset"]) >= 0
    assert published_base.status == 204
    # The sandbox's B'' sent nothing but ktp-delivery, and C'' got tenant 123's record.
    assert handled.body == b"handled:order-1"
    assert handled.headers["baggage"] == "tenant=123"
    assert handled.headers["traceparent"] == TRACEPARENT
    assert [r.body for r in c_sandbox.received] == [b"handled:order-1"]
    # Baseline C skipped it as routed to the sandbox, and handled the tenant-less one.
    assert handled_base.body == b"handled:order-2" and "baggage" not in handled_base.headers
    assert base_decisions["123"]["decision"] == "skip"
    assert base_decisions["123"]["reason"] == "routed_to_sandbox"
    assert 'ktp_publish_requests_total{outcome="ok"} 1.0' in metrics
    records = {r.value: dict(r.headers) for r in await read_all(bootstrap_servers, payments)}
    assert records[b"handled:order-1"]["baggage"] == b"tenant=123"
    assert "baggage" not in records[b"handled:order-2"]


async def test_publishing_after_answering_works_within_the_grace_and_not_after(
    bootstrap_servers: str, topic: str, unique: str, tmp_path: Path
) -> None:
    out = await create_topic(bootstrap_servers, f"out-{unique}", 1)
    await produce(bootstrap_servers, topic, [(None, b"late", baggage("123"))])
    async with PublishingApp(out, after_answer=0.3) as app:
        config = sidecar_config(bootstrap_servers, topic, app.url, routes_file(tmp_path), sandbox="pr-42", delivery_context_grace=1.0)
        app.sidecar = Sidecar(config)
        async with app.sidecar as sidecar:
            (published,) = await app.wait_published(1)
            delivery = app.received[0].headers["ktp-delivery"]
            await asyncio.sleep(1.2)
            url = f"{sidecar.context_parts.publish.url}/{out}"
            expired = await publish(url, b"too late", {"ktp-delivery": delivery})
            unknown = await publish(url, b"never", {"ktp-delivery": "no-such-delivery"})
    assert published.status == 204, published.body
    assert expired.status == 422 and "names no delivery" in expired.body["error"]
    assert unknown.status == 422
    records = await read_all(bootstrap_servers, out)
    assert [(r.value, dict(r.headers)["baggage"]) for r in records] == [(b"handled:late", b"tenant=123")]


async def test_a_sandbox_pods_default_tenant_routes_its_batch_records(
    bootstrap_servers: str, topic: str, unique: str, tmp_path: Path
) -> None:
    """A cron in sandbox pr-42 publishes with no context at all: its records go to pr-42."""
    routes = routes_file(tmp_path, 'tenants:\n  "batch-pr-42": {orders-worker: pr-42}\n')
    async with RecordingApp("idle") as idle, RecordingApp("base") as base_app, RecordingApp("pr-42") as sandbox_app:
        producer_pod = Sidecar(
            sidecar_config(bootstrap_servers, f"idle-{unique}", idle.url, routes, sandbox="pr-42",
                           service="cron-job", group="cron", default_tenant="batch-pr-42")
        )
        base = Sidecar(sidecar_config(bootstrap_servers, topic, base_app.url, routes))
        sandbox = Sidecar(sidecar_config(bootstrap_servers, topic, sandbox_app.url, routes, sandbox="pr-42"))
        async with producer_pod, base, sandbox:
            url = f"{producer_pod.context_parts.publish.url}/{topic}"
            stamped = await publish(url, b"nightly", {"kafka-key": "job%2F1", "content-type": "text/plain"})
            own = await publish(url, b"explicit", {"baggage": "tenant=other"})
            (got,) = await sandbox_app.wait_for(1)
            await base_app.wait_for(1)
            await asyncio.sleep(0.5)
    assert stamped.status == 204 and own.status == 204
    assert got.body == b"nightly" and got.headers["baggage"] == "tenant=batch-pr-42"
    assert got.headers["kafka-key"] == "job%2F1" and got.headers["content-type"] == "text/plain"
    assert [r.body for r in sandbox_app.received] == [b"nightly"]
    assert [r.body for r in base_app.received] == [b"explicit"]
