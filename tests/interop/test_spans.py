"""Spans exported to an in-memory exporter: one trace from the producer through the decision of
every pod, the delivery, the app's publish and the next hop, linked parent to child."""

from __future__ import annotations

import asyncio
from pathlib import Path

from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from proxy.sidecar.runtime import Sidecar
from proxy.testing.app import RecordingApp
from tests.conftest import baggage, create_topic, eventually, produce, sidecar_config
from tests.interop.conftest import PublishingApp, routes_file

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
ROOT_SPAN = "00f067aa0ba902b7"


def one(spans: list[ReadableSpan], name: str, **attributes: object) -> ReadableSpan:
    found = [
        s for s in spans
        if s.name == name and all((s.attributes or {}).get(k) == v for k, v in attributes.items())
    ]
    assert len(found) == 1, f"{name} {attributes}: {[(s.name, dict(s.attributes or {})) for s in spans]}"
    return found[0]


async def test_spans_link_publish_to_consume(bootstrap_servers: str, topic: str, unique: str, tmp_path: Path) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    payments = await create_topic(bootstrap_servers, f"payments-{unique}", 2)
    routes = routes_file(tmp_path)
    await produce(
        bootstrap_servers, topic,
        [(b"o-1", b"order-1", [*baggage("123"), ("traceparent", f"00-{TRACE}-{ROOT_SPAN}-01".encode())])],
    )
    billing = {"service": "billing-worker", "group": "billing"}
    async with PublishingApp(payments) as b_app, RecordingApp("C''") as c_app, RecordingApp("C") as c_base_app:
        b = Sidecar(sidecar_config(bootstrap_servers, topic, b_app.url, routes, sandbox="pr-42"), tracer_provider=provider)
        b_app.sidecar = b
        c = Sidecar(sidecar_config(bootstrap_servers, payments, c_app.url, routes, sandbox="pr-42", **billing), tracer_provider=provider)
        c_base = Sidecar(sidecar_config(bootstrap_servers, payments, c_base_app.url, routes, **billing), tracer_provider=provider)
        async with b, c, c_base:
            (handled,) = await c_app.wait_for(1)

            async def baseline_decided() -> bool:
                return len(c_base.decisions()) == 1

            await eventually(baseline_decided, what="baseline C decided the record")
            await asyncio.sleep(0.3)
    spans = list(exporter.get_finished_spans())
    assert {s.context.trace_id for s in spans if s.name != f"poll {topic}" and s.name != f"poll {payments}"} == {int(TRACE, 16)}
    decide_b = one(spans, f"decide {topic}", **{"ktp.service": "orders-worker"})
    process_b = one(spans, f"process {topic}")
    send = one(spans, f"send {payments}")
    decide_c = one(spans, f"decide {payments}", **{"ktp.sandbox": "pr-42"})
    decide_c_base = one(spans, f"decide {payments}", **{"ktp.decision": "skip"})
    process_c = one(spans, f"process {payments}")
    poll_b = one(spans, f"poll {topic}")
    # The producer's span is the parent of B's decision and delivery.
    assert decide_b.parent is not None and decide_b.parent.span_id == int(ROOT_SPAN, 16)
    assert process_b.parent is not None and process_b.parent.span_id == int(ROOT_SPAN, 16)
    assert (decide_b.attributes or {})["ktp.tenant"] == "123"
    assert (decide_b.attributes or {})["ktp.decision.reason"] == "routed_here"
    # The app (no OpenTelemetry) published with ktp-delivery only: its send hangs below B's
    # delivery, and C'' and baseline C decided below the send.
    assert send.kind is SpanKind.PRODUCER and send.parent is not None
    assert send.parent.span_id == process_b.context.span_id
    assert decide_c.parent is not None and decide_c.parent.span_id == send.context.span_id
    assert decide_c_base.parent is not None and decide_c_base.parent.span_id == send.context.span_id
    assert (decide_c_base.attributes or {})["ktp.decision.reason"] == "routed_to_sandbox"
    assert process_c.kind is SpanKind.CONSUMER and process_c.parent is not None
    assert process_c.parent.span_id == send.context.span_id
    # The app is sent the delivery span's context.
    assert handled.headers["traceparent"] == f"00-{TRACE}-{process_c.context.span_id:016x}-01"
    assert handled.headers["baggage"] == "tenant=123"
    # The poll span links to the record's creation context.
    assert poll_b.kind is SpanKind.CLIENT
    assert [link.context.span_id for link in poll_b.links] == [int(ROOT_SPAN, 16)]
    attributes = dict(send.attributes or {})
    assert attributes["messaging.system"] == "kafka" and attributes["messaging.destination.name"] == payments
    assert attributes["messaging.operation.type"] == "send" and "messaging.kafka.offset" in attributes
