"""EntryWriter (proxy.delivery.bulk_entry) against the general path it stands in for.

For any record, the entry the writer writes must be the one the general path (the single
delivery's headers, then ``bulk.entry_json``) writes, and keep the same delivery context; and
for a record whose headers the general path would count, log, re-serialize or translate, the
writer must leave the record to it. The usual records must take the writer's path (or the
first half of this file would test nothing).
"""

from __future__ import annotations

import json
from typing import Any

from aiokafka.structs import ConsumerRecord
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from opentelemetry import trace

from proxy.delivery import bulk
from proxy.delivery.bulk_entry import EntryWriter
from proxy.delivery.bulk_lane import BulkDelivery
from proxy.delivery.contexts import DeliveryContexts
from proxy.delivery.dispatcher import Dispatcher
from proxy.delivery.envelope import DeliveryEnvelope
from proxy.delivery.headers import build_headers, forwarded_header_names
from proxy.delivery.policy import RetryPolicy
from proxy.metrics import Metrics
from proxy.telemetry.propagation import Propagation
from proxy.telemetry.tracing import SidecarTracing
from tests.unit.test_bulk_lane import BulkApp
from tests.unit.test_dispatcher import AlwaysHealthy, RecordingPauser

TRACEPARENT = b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
B3 = b"80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1"
Record = ConsumerRecord[bytes, bytes]


class Side:
    """One sidecar's general path and writer over the same envelope and contexts."""

    def __init__(self, propagators: str = "tracecontext,baggage", extra: tuple[str, ...] = ("x-user",), cloudevents: bool = False) -> None:
        self.contexts = DeliveryContexts(30.0)
        tracing = SidecarTracing(
            Propagation.from_names(propagators), provider=trace.NoOpTracerProvider(),
            service="orders-worker", sandbox=None, group="g",
        )
        self.envelope = DeliveryEnvelope(contexts=self.contexts, tracing=tracing, service="orders-worker")
        self.metrics = Metrics()
        forwarded = forwarded_header_names(propagators, extra)
        app = BulkApp()
        policy = RetryPolicy(max_attempts=2, initial=0.001, maximum=0.002)
        self.bulk = BulkDelivery(
            max_records=64, max_wait=0, upstream=app, health=AlwaysHealthy(), policy=policy, metrics=self.metrics,
            max_record_bytes=1 << 20, envelope=self.envelope, cloudevents_format=cloudevents, service="orders-worker",
        )
        self.dispatcher = Dispatcher(
            upstream=app, health=AlwaysHealthy(), listener=RecordingPauser(), policy=policy, dead_letters=None,
            metrics=self.metrics, forwarded_headers=forwarded, bulk=self.bulk,
        )
        self.writer = EntryWriter(forwarded=forwarded, tenant_key="tenant", envelope=self.envelope)
        self.cloudevents = cloudevents

    def general(self, record: Record) -> tuple[dict[str, Any], str]:
        """The general path's entry (parsed) and its ktp-delivery id."""
        body, scope = self.bulk._general_entry(self.dispatcher, record)
        assert scope is not None
        return json.loads(body), scope.delivery_id

    def written(self, record: Record) -> tuple[dict[str, Any], str] | None:
        event = self.bulk._cloud_event_json if self.cloudevents else None
        ids, bodies, numbers = self.writer.entries(record.topic, record.partition, [record], event)
        assert ids == [str(record.offset)]
        if bodies[0] is None:
            assert numbers == [0]
            return None
        parsed = json.loads(bodies[0], object_pairs_hook=no_duplicates)
        assert parsed["metadata"]["ktp-delivery"] == f"{self.contexts.prefix}{numbers[0]}"
        return parsed, parsed["metadata"]["ktp-delivery"]

    def would_note(self, record: Record) -> bool:
        """Whether the general path counts or logs something about this record's headers."""
        notes: list[str] = []
        _, rejected = build_headers(
            topic=record.topic, partition=record.partition, offset=record.offset, timestamp=record.timestamp,
            key=record.key, record_headers=record.headers, forwarded=self.dispatcher.headers.forwarded, notes=notes,
        )
        return bool(rejected or notes)


def no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    names = [name for name, _ in pairs]
    assert len(names) == len(set(names)), f"a name twice in one JSON object: {names}"
    return dict(pairs)


def make(headers: list[tuple[str, bytes | None]], *, key: bytes | None = b"order-7", value: bytes | None = b'{"a":1}',
         offset: int = 42, topic: str = "orders", partition: int = 3) -> Record:
    return ConsumerRecord(
        topic=topic, partition=partition, offset=offset, timestamp=1_700_000_000_123, timestamp_type=0, key=key,
        value=value, checksum=None, serialized_key_size=-1 if key is None else len(key),
        serialized_value_size=-1 if value is None else len(value), headers=headers,  # type: ignore[arg-type]
    )


def same(side: Side, record: Record) -> bool:
    """Both paths agree on ``record``; True when the writer wrote it (False: left to the general path)."""
    written = side.written(record)
    if written is None:
        return False
    entry, delivery = written
    expected, expected_delivery = side.general(record)
    assert side.contexts.get(delivery) == side.contexts.get(expected_delivery)
    entry["metadata"].pop("ktp-delivery")
    expected["metadata"].pop("ktp-delivery")
    assert entry == expected
    assert list(entry["metadata"]) == list(expected["metadata"])  # the same order, too
    return True


USUAL = [
    [("traceparent", TRACEPARENT), ("baggage", b"tenant=t1,deployment.environment=staging"), ("content-type", b"application/json")],
    [("baggage", b"tenant=t1")],
    [],
    [("traceparent", TRACEPARENT), ("tracestate", b"congo=t61rcWkgMzE"), ("x-user", b"alice"), ("other", b"\x00\xff")],
    [("Baggage", b"tenant=t1"), ("baggage", b"deployment.environment=prod"), ("TraceParent", TRACEPARENT)],
    [("content-type", b"application/json"), ("Content-Type", b"text/plain")],  # the first wins
    [("authorization", b"Bearer x"), ("kafka-offset", b"1"), ("ktp-delivery", b"x"), ("\u212aeep", b"v")],
]


def test_the_usual_records_are_written_by_the_writer_as_the_general_path_writes_them() -> None:
    side = Side()
    for headers in USUAL:
        for key, value in ((b"order-7", b'{"a":1}'), (None, None), (b"k/\xc3\xa9 \x00", b"\x00" * 5)):
            assert same(side, make(headers, key=key, value=value)), headers


def test_cloudevents_entries_agree_too() -> None:
    side = Side(cloudevents=True)
    for headers in USUAL:
        assert same(side, make(headers))
    assert same(side, make([("ce_id", b"x"), ("ce_specversion", b"1.0"), ("ce_type", b"t"), ("ce_source", b"/s")]))


def test_what_the_general_path_counts_or_logs_is_left_to_it() -> None:
    side = Side()
    for headers in (
        [("traceparent", b'00-"quoted"')],  # a safe field value, but not a JSON string as it is
        [("traceparent", b"a\tb")],
        [("traceparent", b"a\r\nx-evil: 1")],  # not a safe field value: counted
        [("traceparent", None)],
        [("traceparent", TRACEPARENT), ("traceparent", TRACEPARENT)],  # twice: the first wins
        [("baggage", b"tenant=t1,bad member")],  # re-serialized: noted
        [("content-type", b"not a media type")],
        [("content-type", b'text/plain; charset="utf-8"')],  # valid, but quoted
        [("x-user", b"caf\xc3\xa9")],
    ):
        record = make(headers)
        assert side.written(record) is None, headers
        side.general(record)  # and the general path takes it


def test_trace_context_in_another_format_is_translated_by_the_general_path() -> None:
    side = Side("tracecontext,baggage")  # B3 is read, not configured: sent as traceparent
    assert side.written(make([("b3", B3)])) is None
    assert "traceparent" in side.general(make([("b3", B3)]))[0]["metadata"]
    # With a configured format already there, nothing is translated: the writer's.
    assert same(side, make([("b3", B3), ("traceparent", TRACEPARENT)]))
    assert same(side, make([("baggage", b"tenant=t1")]))
    assert same(Side("tracecontext,baggage,b3"), make([("b3", B3)]))


def test_tracing_on_leaves_every_record_to_the_general_path() -> None:
    side = Side()
    side.envelope.tracing.enabled = True  # type: ignore[misc]
    try:
        assert side.writer.entries("orders", 3, [make(USUAL[0])])[1] == [None]
    finally:
        side.envelope.tracing.enabled = False  # type: ignore[misc]


NAMES = st.sampled_from([
    "traceparent", "TraceParent", "tracestate", "baggage", "BAGGAGE", "content-type", "Content-Type", "x-user",
    "b3", "authorization", "kafka-offset", "ktp-delivery", "\u212aeep", "other",
])
VALUES = st.one_of(
    st.none(),
    st.sampled_from([TRACEPARENT, B3, b"tenant=t1", b"tenant=t1,x=y", b"tenant=%20a", b"application/json", b"text/plain",
                     b"", b" lead", b"trail ", b"a\"b", b"a\\b", b"caf\xc3\xa9", b"tenant=t1;prop"]),
    st.binary(max_size=40),
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    headers=st.lists(st.tuples(NAMES, VALUES), max_size=6),
    key=st.one_of(st.none(), st.binary(max_size=12)),
    value=st.one_of(st.none(), st.binary(max_size=30)),
    propagators=st.sampled_from(["tracecontext,baggage", "tracecontext,baggage,b3", "b3multi", ""]),
    cloudevents=st.booleans(),
)
@example(headers=[("traceparent", TRACEPARENT), ("baggage", b"tenant=t1")], key=b"k", value=b"v",
         propagators="tracecontext,baggage", cloudevents=False)
def test_any_record_either_agrees_or_is_left_to_the_general_path(
    headers: list[tuple[str, bytes | None]], key: bytes | None, value: bytes | None, propagators: str, cloudevents: bool
) -> None:
    side = Side(propagators, cloudevents=cloudevents)
    record = make(headers, key=key, value=value)
    if not same(side, record):
        side.general(record)
    elif side.would_note(record):
        raise AssertionError(f"the writer took a record the general path counts or logs: {headers}")
