"""What DeliveryEnvelope adds to a delivery: ktp-delivery and its context, translated trace
context, CloudEvents headers, and the process span when tracing is on."""

from __future__ import annotations

from aiokafka.structs import ConsumerRecord
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from proxy.delivery.headers import build_headers, forwarded_header_names
from proxy.delivery.envelope import DeliveryEnvelope
from proxy.delivery.contexts import DeliveryContexts
from proxy.telemetry.propagation import Propagation
from proxy.telemetry.tracing import SidecarTracing

TRACE = "0af7651916cd43dd8448eb211c80319c"
TRACEPARENT = f"00-{TRACE}-b7ad6b7169203331-01"


def record(headers: list[tuple[str, bytes]], value: bytes | None = b"v") -> ConsumerRecord[bytes, bytes]:
    return ConsumerRecord(
        topic="orders", partition=1, offset=7, timestamp=1_700_000_000_000, timestamp_type=0,
        key=b"k", value=value, checksum=None, serialized_key_size=1, serialized_value_size=1,
        headers=headers,
    )


def deliver(
    interop: DeliveryEnvelope, rec: ConsumerRecord[bytes, bytes], propagators: str = "tracecontext,baggage"
) -> tuple[dict[str, str], list[str], object]:
    headers, rejected = build_headers(
        topic=rec.topic, partition=rec.partition, offset=rec.offset, timestamp=rec.timestamp,
        key=rec.key, record_headers=rec.headers, forwarded=forwarded_header_names(propagators),
    )
    scope = interop.begin(rec, headers, rejected)
    return headers, rejected, scope


def build(
    propagators: str = "tracecontext,baggage", format: str = "raw", provider: trace.TracerProvider | None = None
) -> tuple[DeliveryEnvelope, DeliveryContexts]:
    contexts = DeliveryContexts(10.0)
    tracing = SidecarTracing(
        Propagation.from_names(propagators), provider=provider or trace.NoOpTracerProvider(),
        service="orders-worker", sandbox="pr-42", group="orders-pr-42",
    )
    return DeliveryEnvelope(contexts=contexts, tracing=tracing, format=format, service="orders-worker"), contexts


def test_every_delivery_gets_an_id_naming_its_context() -> None:
    interop, contexts = build()
    headers, rejected, scope = deliver(interop, record([("baggage", b"tenant=123"), ("traceparent", TRACEPARENT.encode())]))
    delivery = headers["ktp-delivery"]
    assert contexts.get(delivery) == (("baggage", "tenant=123"), ("traceparent", TRACEPARENT))
    assert headers["traceparent"] == TRACEPARENT and rejected == []
    scope.end(1, 200)  # type: ignore[attr-defined]
    assert contexts.get(delivery) is not None  # within the grace
    other, _, _ = deliver(interop, record([]))
    assert other["ktp-delivery"] != delivery and contexts.get(other["ktp-delivery"]) == ()


def test_trace_context_is_sent_in_the_configured_format() -> None:
    interop, contexts = build("b3")
    headers, _, _ = deliver(interop, record([("traceparent", TRACEPARENT.encode())]), "b3")
    assert headers["b3"] == f"{TRACE}-b7ad6b7169203331-1"
    assert dict(contexts.get(headers["ktp-delivery"]) or ())["b3"] == headers["b3"]
    # And the other way: a B3 producer, a W3C app.
    interop, _ = build()
    headers, _, _ = deliver(interop, record([("x-b3-traceid", TRACE.encode()), ("x-b3-spanid", b"b7ad6b7169203331"), ("x-b3-sampled", b"1")]))
    assert headers["traceparent"] == TRACEPARENT


def test_cloudevents_headers_are_added() -> None:
    interop, _ = build(format="cloudevents")
    headers, rejected, _ = deliver(interop, record([("baggage", b"tenant=1"), ("bin", b"\xff")]))
    assert headers["ce-id"] == "partition:1/offset:7" and headers["ce-kafkaheaderbaggage"] == "tenant=1"
    assert headers["ce-source"] == "/ktp/services/orders-worker#orders"
    assert rejected == ["ce-attribute"]
    assert headers["baggage"] == "tenant=1" and "ktp-delivery" in headers


def test_process_span_becomes_the_apps_parent() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    interop, contexts = build("tracecontext,baggage", provider=provider)
    assert interop.tracing.enabled
    headers, _, scope = deliver(interop, record([("traceparent", TRACEPARENT.encode()), ("baggage", b"tenant=5")]))
    scope.end(2, 503)  # type: ignore[attr-defined]
    (span,) = exporter.get_finished_spans()
    assert span.name == "process orders" and span.kind is trace.SpanKind.CONSUMER
    assert span.parent is not None and span.parent.span_id == int("b7ad6b7169203331", 16)
    assert span.context.trace_id == int(TRACE, 16)
    assert headers["traceparent"] == f"00-{TRACE}-{span.context.span_id:016x}-01"
    assert dict(contexts.get(headers["ktp-delivery"]) or ())["traceparent"] == headers["traceparent"]
    attributes = dict(span.attributes or {})
    assert attributes["messaging.system"] == "kafka" and attributes["messaging.destination.name"] == "orders"
    assert attributes["messaging.kafka.offset"] == 7 and attributes["ktp.delivery.attempts"] == 2
    assert attributes["ktp.delivery.id"] == headers["ktp-delivery"] and attributes["ktp.sandbox"] == "pr-42"
    assert span.status.status_code is trace.StatusCode.ERROR


def test_default_providers_turn_tracing_off() -> None:
    assert not SidecarTracing(Propagation.from_names(""), provider=trace.NoOpTracerProvider(), service="s", sandbox=None, group="g").enabled
    assert not SidecarTracing(Propagation.from_names(""), provider=trace.ProxyTracerProvider(), service="s", sandbox=None, group="g").enabled
