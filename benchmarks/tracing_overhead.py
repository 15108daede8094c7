"""Cost of the interop hooks per record, in-process: ``python -m benchmarks.tracing_overhead``.

Consume path: ``Sidecar._handle`` (decide and count a fetched batch) on a baseline pod whose
records all belong to a tenant routed to a sandbox (the skip path, the hottest one), with
tracing off (OpenTelemetry's default provider, what runs without the SDK) and on (the SDK with a
batch processor and an exporter that drops everything, so export I/O is not counted). The hook
added there is one flag check per batch; its cost is timed on its own as well.

Delivery path: ``DeliveryEnvelope.begin`` + ``DeliveryScope.end`` (``ktp-delivery`` and its
context, translation, CloudEvents headers, the process span), next to ``build_headers``, the
per-delivery work that was already there, as the baseline of the same run.

Each figure is the best of several passes after a warm-up pass, in ns per record.
"""

from __future__ import annotations

import gc
import tempfile
import time
import timeit
from collections.abc import Callable, Sequence
from pathlib import Path

from aiokafka import TopicPartition
from aiokafka.structs import ConsumerRecord
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

from proxy.listener.partitions import PartitionState
from proxy.delivery.headers import build_headers, forwarded_header_names
from proxy.delivery.envelope import DeliveryEnvelope
from proxy.kafka import KafkaConnection
from proxy.delivery.contexts import DeliveryContexts
from proxy.sidecar.config import SidecarConfig
from proxy.sidecar.runtime import Sidecar
from proxy.telemetry.propagation import Propagation
from proxy.telemetry.tracing import SidecarTracing

BATCH = 2000
PASSES = 7
DELIVERIES = 20_000
TOPIC = "orders"


class DroppingExporter(SpanExporter):
    """Exports nothing: the SDK's work is counted, not an exporter's I/O."""

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass


def sdk_provider() -> TracerProvider:
    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(DroppingExporter(), max_queue_size=1 << 16))
    return provider


def records(count: int) -> list[ConsumerRecord[bytes, bytes]]:
    now = int(time.time() * 1000)
    return [
        ConsumerRecord(
            topic=TOPIC, partition=0, offset=i, timestamp=now, timestamp_type=0, key=f"k{i % 100}".encode(),
            value=b"x" * 200, checksum=None, serialized_key_size=4, serialized_value_size=200,
            headers=[
                ("traceparent", f"00-{i:032x}-{i + 1:016x}-01".encode()),
                ("baggage", b"tenant=123"),
                ("content-type", b"application/json"),
            ],
        )
        for i in range(count)
    ]


def best_ns_per_record(run: Callable[[], object], count: int, passes: int = PASSES) -> float:
    run()  # warm-up: caches filled, code paths hot
    times = []
    for _ in range(passes):
        gc.collect()
        started = time.perf_counter_ns()
        run()
        times.append(time.perf_counter_ns() - started)
    return min(times) / count


def consume_path(provider: trace.TracerProvider | None, routes: str) -> tuple[float, bool]:
    config = SidecarConfig(
        kafka=KafkaConnection(bootstrap_servers="127.0.0.1:9"),
        service="orders-worker", group="orders", topics=(TOPIC,), app_url="http://127.0.0.1:9/events",
        routes=f"file:{routes}",
    )
    sidecar = Sidecar(config, tracer_provider=provider)
    sidecar.route_source.reload()  # type: ignore[attr-defined]
    batch = records(BATCH)
    state = PartitionState(TopicPartition(TOPIC, 0))

    def run() -> None:
        sidecar._handle(state, batch)

    return best_ns_per_record(run, BATCH), sidecar.context_parts.tracing.enabled


def delivery_path(
    provider: trace.TracerProvider, propagators: str = "tracecontext,baggage", format: str = "raw"
) -> tuple[float, float]:
    """(ns per delivery of begin + end, ns per delivery of build_headers alone)."""
    propagation = Propagation.from_names(propagators)
    tracing = SidecarTracing(propagation, provider=provider, service="orders-worker", sandbox=None, group="orders")
    interop = DeliveryEnvelope(contexts=DeliveryContexts(30.0), tracing=tracing, format=format, service="orders-worker")
    batch = records(DELIVERIES)
    forwarded = forwarded_header_names(propagators)

    def built() -> list[tuple[dict[str, str], list[str]]]:
        return [
            build_headers(
                topic=r.topic, partition=r.partition, offset=r.offset, timestamp=r.timestamp,
                key=r.key, record_headers=r.headers, forwarded=forwarded,
            )
            for r in batch
        ]

    prepared: list[tuple[dict[str, str], list[str]]] = []

    def setup() -> None:
        prepared[:] = built()

    def hooks() -> None:
        begin = interop.begin
        for record, (headers, rejected) in zip(batch, prepared):
            begin(record, headers, rejected).end(1, 200)

    def run_hooks() -> None:
        setup()
        started = time.perf_counter_ns()
        hooks()
        durations.append(time.perf_counter_ns() - started)

    durations: list[int] = []
    run_hooks()
    durations.clear()
    for _ in range(PASSES):
        gc.collect()
        run_hooks()
    return min(durations) / DELIVERIES, best_ns_per_record(built, DELIVERIES)


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        routes = str(Path(tmp) / "routes.yaml")
        Path(routes).write_text('tenants:\n  "123": {orders-worker: pr-42}\n')
        off, off_enabled = consume_path(None, routes)
        provider = sdk_provider()
        on, on_enabled = consume_path(provider, routes)
    assert not off_enabled and on_enabled
    sidecar_flag = SidecarTracing(Propagation.from_names(""), provider=trace.NoOpTracerProvider(), service="s", sandbox=None, group="g")

    class Holder:
        tracing = sidecar_flag

    holder = Holder()
    check_ns = min(timeit.repeat(lambda: holder.tracing.enabled, number=1_000_000, repeat=5)) * 1e3
    print(f"consume path (Sidecar._handle, skip, batches of {BATCH}):")
    print(f"  tracing off  {off:8.0f} ns/record")
    print(f"  tracing on   {on:8.0f} ns/record   ({on / off:.1f}x; poll span per batch, decide spans for deliveries and up to 100 skips a second)")
    print(f"  the hook when off: one flag check per batch, {check_ns:.0f} ns = {check_ns / BATCH:.3f} ns/record")
    noop = trace.NoOpTracerProvider()
    print("delivery path (per delivery; build_headers is the existing per-delivery work):")
    cases: list[tuple[str, trace.TracerProvider, str, str]] = [
        ("raw, tracing off (defaults)", noop, "tracecontext,baggage", "raw"),
        ("raw, tracing off, OTEL_PROPAGATORS=b3 (translated)", noop, "b3,baggage", "raw"),
        ("cloudevents, tracing off", noop, "tracecontext,baggage", "cloudevents"),
        ("raw, tracing on", provider, "tracecontext,baggage", "raw"),
    ]
    for label, tracer_provider, propagators, format in cases:
        hooks_ns, baseline_ns = delivery_path(tracer_provider, propagators, format)
        print(f"  {label:52s} hooks {hooks_ns:7.0f} ns   build_headers {baseline_ns:6.0f} ns   ratio {hooks_ns / baseline_ns:4.1f}x")
    provider.shutdown()
    # Deliveries are localhost POSTs of ~35-100 µs of sidecar CPU each (benchmarks, deliver section).


if __name__ == "__main__":
    main()
