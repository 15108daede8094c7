"""What a batch leaves behind of its decisions: the /decisions view (RecentDecisions) and the
decide spans when tracing is on (a span per delivered record, skipped ones within a budget)."""

from __future__ import annotations

from aiokafka.structs import ConsumerRecord
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from proxy.admin.decisions import RecentDecisions
from proxy.routing.filter import RouteFilter
from proxy.routes.table import Route, RouteTable
from proxy.telemetry.propagation import Propagation
from proxy.telemetry.tracing import SKIP_SPANS_PER_SECOND, SidecarTracing

TRACEPARENT = b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def records(partition: int, offsets: range, tenant: str) -> list[ConsumerRecord[bytes, bytes]]:
    return [
        ConsumerRecord(
            topic="orders", partition=partition, offset=offset, timestamp=1000 + offset, timestamp_type=0,
            key=None, value=b"v", checksum=None, serialized_key_size=0, serialized_value_size=1,
            headers=[("traceparent", TRACEPARENT), ("baggage", f"tenant={tenant}".encode())],
        )
        for offset in offsets
    ]


def route_filter() -> RouteFilter:
    table = RouteTable()
    table.apply(Route.build("away", {"orders-worker": "pr-1"}, 0))
    return RouteFilter("orders-worker", None, table)


def test_the_view_is_the_last_decisions_newest_first_across_batches() -> None:
    decide = route_filter().decide_record
    recent = RecentDecisions(size=5)
    for partition, offsets, tenant in ((0, range(4), "away"), (1, range(10, 13), "here"), (0, range(4, 5), "away")):
        batch = records(partition, offsets, tenant)
        recent.add("orders", partition, batch, [decide(r.headers, r.timestamp) for r in batch])
    view = recent.view()
    assert [(d["partition"], d["offset"]) for d in view] == [(0, 4), (1, 12), (1, 11), (1, 10), (0, 3)]
    assert view[0] == {
        "topic": "orders", "partition": 0, "offset": 4, "timestamp": 1004, "tenant": "away",
        "decision": "skip", "reason": "routed_to_sandbox",
    }
    assert view[1]["decision"] == "deliver" and view[1]["reason"] == "not_routed"
    assert len(recent) == 5


def test_a_big_batch_keeps_only_its_tail() -> None:
    decide = route_filter().decide_record
    recent = RecentDecisions(size=3)
    batch = records(0, range(1000), "away")
    recent.add("orders", 0, batch, [decide(r.headers, r.timestamp) for r in batch])
    assert [d["offset"] for d in recent.view()] == [999, 998, 997]
    assert sum(len(b[2]) for b in recent._batches) == 3


def test_skips_get_decide_spans_within_the_budget_deliveries_always() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing = SidecarTracing(Propagation.from_environ({}), provider=provider, service="orders-worker",
                             sandbox=None, group="orders")
    decide = route_filter().decide_record
    skipped = records(0, range(1000), "away")
    delivered = records(0, range(1000, 1300), "here")
    batch = skipped + delivered
    tracing.decided("orders", 0, batch, [decide(r.headers, r.timestamp) for r in batch])
    spans = exporter.get_finished_spans()
    decides = [s for s in spans if s.name == "decide orders"]
    skips = [s for s in decides if (s.attributes or {})["ktp.decision"] == "skip"]
    assert len(decides) - len(skips) == 300
    assert 1 <= len(skips) <= SKIP_SPANS_PER_SECOND + 1
    (poll,) = [s for s in spans if s.name == "poll orders"]
    attributes = dict(poll.attributes or {})
    assert attributes["ktp.decisions.skip"] == 1000 and attributes["ktp.decisions.deliver"] == 300
    assert attributes["ktp.decisions.untraced"] == 1000 - len(skips)
    assert attributes["messaging.batch.message_count"] == 1300
