"""Spans of the sidecar, through opentelemetry-api, named by the messaging semantic conventions.

==================  ========  ===============================================================
span                kind      parent
==================  ========  ===============================================================
``poll <topic>``    CLIENT    none; links to the creation context of the records it traced
``decide <topic>``  INTERNAL  the record's creation context (the producer's span), else the poll
``process <topic>`` CONSUMER  the record's creation context; the app is sent *this* span's
                              context, so the app's own spans and what it publishes hang below
``send <topic>``    PRODUCER  the publish request's context (or its delivery's); the record
                              carries this span's context
==================  ========  ===============================================================

So one trace shows a record's producer, the decision of every pod that consumed it (baseline
skipped, sandbox delivered, with the tenant and the reason), the delivery and the app's work.

Every delivered record gets its ``decide`` span. Skipped ones get theirs while a budget of
:data:`SKIP_SPANS_PER_SECOND` lasts: a baseline pod may skip most of a busy topic, and a span
per skipped record cost 38 times the skip itself (benchmarks, ``--tracing``), so beyond the
budget a skip is only counted on its ``poll`` span (``ktp.decisions.skip`` and
``ktp.decisions.untraced``). At the rates of a test or a trace being looked at, every skip has
its span. The ``poll`` span links to the creation context of the records that got a span.

Cost when tracing is off: :attr:`SidecarTracing.enabled` is decided once, when the sidecar is
built: False when the tracer provider is OpenTelemetry's default proxy or the no-op one (no SDK
configured). Every hook is behind that one flag, checked once per fetched batch on the consume
path, and nothing is extracted, allocated or timed per record. Set the SDK's tracer provider
before the sidecar is built (``ktp sidecar`` does, see :mod:`proxy.telemetry.setup`), or pass one.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Link, Span, SpanKind, Status, StatusCode

from proxy import __version__
from proxy.telemetry.propagation import Propagation

if TYPE_CHECKING:
    from aiokafka.structs import ConsumerRecord

    from proxy.routing.filter import Decided

INSTRUMENTATION = "kafka-tenant-proxy"
SYSTEM = "kafka"

# Messaging semantic conventions (attribute names as of semconv 1.27+).
SYSTEM_ATTR = "messaging.system"
OPERATION_TYPE = "messaging.operation.type"
OPERATION_NAME = "messaging.operation.name"
DESTINATION = "messaging.destination.name"
PARTITION = "messaging.destination.partition.id"
GROUP = "messaging.consumer.group.name"
OFFSET = "messaging.kafka.offset"
KEY = "messaging.kafka.message.key"
TOMBSTONE = "messaging.kafka.message.tombstone"
BODY_SIZE = "messaging.message.body.size"
BATCH_COUNT = "messaging.batch.message_count"
HTTP_STATUS = "http.response.status_code"
ERROR_TYPE = "error.type"
# Ours.
DECISION = "ktp.decision"
REASON = "ktp.decision.reason"
TENANT = "ktp.tenant"
SERVICE = "ktp.service"
SANDBOX = "ktp.sandbox"
DELIVERY_ID = "ktp.delivery.id"
ATTEMPTS = "ktp.delivery.attempts"
DELIVER_COUNT = "ktp.decisions.deliver"
SKIP_COUNT = "ktp.decisions.skip"
UNTRACED_COUNT = "ktp.decisions.untraced"

# Decide spans for skipped records, per second and sidecar (a bucket of this size, refilled
# continuously); see the module doc.
SKIP_SPANS_PER_SECOND = 100.0


def is_sdk_provider(provider: trace.TracerProvider) -> bool:
    """False for OpenTelemetry's default providers, which record nothing."""
    return not isinstance(provider, (trace.ProxyTracerProvider, trace.NoOpTracerProvider))


def record_carrier(headers: Sequence[tuple[str, bytes]], fields: frozenset[str]) -> dict[str, str]:
    """The context headers of a Kafka record as a carrier (lower-case names, first wins)."""
    carrier: dict[str, str] = {}
    for name, value in headers:
        lowered = name.lower()
        if lowered in fields and lowered not in carrier and value is not None:
            carrier[lowered] = value.decode("ascii", "replace")
    return carrier


def _key_text(key: bytes | None) -> str | None:
    if key is None:
        return None
    try:
        return key.decode("utf-8")
    except UnicodeDecodeError:
        return None


class SidecarTracing:
    """The spans of one sidecar. Every method may only be called when :attr:`enabled`."""

    def __init__(
        self,
        propagation: Propagation,
        *,
        provider: trace.TracerProvider | None = None,
        service: str,
        sandbox: str | None,
        group: str,
    ) -> None:
        provider = trace.get_tracer_provider() if provider is None else provider
        self.enabled = is_sdk_provider(provider)
        self.propagation = propagation
        self.tracer = provider.get_tracer(INSTRUMENTATION, __version__)
        self._pod: dict[str, Any] = {SYSTEM_ATTR: SYSTEM, SERVICE: service, GROUP: group}
        if sandbox is not None:
            self._pod[SANDBOX] = sandbox
        self._skip_spans = SKIP_SPANS_PER_SECOND
        self._skip_spans_at = time.monotonic()

    def __repr__(self) -> str:
        return f"SidecarTracing(enabled={self.enabled}, propagation={self.propagation!r})"

    def _parent(self, headers: Sequence[tuple[str, bytes]]) -> Context | None:
        carrier = record_carrier(headers, self.propagation.trace_fields)
        if not carrier:
            return None
        context = self.propagation.extract(carrier)
        return context if trace.get_current_span(context).get_span_context().is_valid else None

    def decided(
        self,
        topic: str,
        partition: int,
        records: Sequence[ConsumerRecord[bytes, bytes]],
        decided: Sequence[Decided],
    ) -> None:
        """A ``poll`` span for one partition's fetched batch, and ``decide`` spans for its
        records (``decided``, in the same order) as the module doc says."""
        now = time.monotonic()
        budget = min(SKIP_SPANS_PER_SECOND, self._skip_spans + (now - self._skip_spans_at) * SKIP_SPANS_PER_SECOND)
        self._skip_spans_at = now
        traced = []
        skips = 0
        for record, entry in zip(records, decided):
            if not entry.deliver:
                skips += 1
                if budget < 1:
                    continue
                budget -= 1
            traced.append((record, entry, self._parent(record.headers)))
        self._skip_spans = budget
        links = [
            Link(trace.get_current_span(parent).get_span_context())
            for _, _, parent in traced
            if parent is not None
        ]
        poll = self.tracer.start_span(
            f"poll {topic}",
            kind=SpanKind.CLIENT,
            links=links,
            attributes={
                **self._pod,
                OPERATION_TYPE: "receive",
                OPERATION_NAME: "poll",
                DESTINATION: topic,
                PARTITION: str(partition),
                BATCH_COUNT: len(records),
                DELIVER_COUNT: len(records) - skips,
                SKIP_COUNT: skips,
                UNTRACED_COUNT: len(records) - len(traced),
            },
        )
        poll_context = trace.set_span_in_context(poll)
        try:
            for record, entry, parent in traced:
                attributes: dict[str, Any] = {
                    **self._pod,
                    DESTINATION: topic,
                    PARTITION: str(partition),
                    OFFSET: record.offset,
                    DECISION: "deliver" if entry.deliver else "skip",
                    REASON: entry.decision.reason,
                }
                if entry.lookup.tenant is not None:
                    attributes[TENANT] = entry.lookup.tenant
                span = self.tracer.start_span(
                    f"decide {topic}",
                    context=parent if parent is not None else poll_context,
                    kind=SpanKind.INTERNAL,
                    attributes=attributes,
                )
                span.end()
        finally:
            poll.end()

    def start_process(self, record: ConsumerRecord[bytes, bytes], headers: dict[str, str]) -> Span:
        """Start the ``process`` span of a delivery and make it the parent in ``headers``."""
        attributes: dict[str, Any] = {
            **self._pod,
            OPERATION_TYPE: "process",
            OPERATION_NAME: "process",
            DESTINATION: record.topic,
            PARTITION: str(record.partition),
            OFFSET: record.offset,
        }
        key = _key_text(record.key)
        if key is not None:
            attributes[KEY] = key
        if record.value is None:
            attributes[TOMBSTONE] = True
        else:
            attributes[BODY_SIZE] = len(record.value)
        span = self.tracer.start_span(
            f"process {record.topic}",
            context=self._parent(record.headers),
            kind=SpanKind.CONSUMER,
            attributes=attributes,
        )
        self.propagation.replace_trace(headers, trace.set_span_in_context(span))
        return span

    @staticmethod
    def end_process(span: Span, attempts: int, status: int | None) -> None:
        """End a ``process`` span: error unless the app's last answer was 2xx."""
        span.set_attribute(ATTEMPTS, attempts)
        if status is not None:
            span.set_attribute(HTTP_STATUS, status)
        if status is None or not 200 <= status < 300:
            span.set_attribute(ERROR_TYPE, "no_answer" if status is None else str(status))
            span.set_status(Status(StatusCode.ERROR))
        span.end()

    def start_send(self, topic: str, context: dict[str, str], key: bytes | None, size: int) -> Span:
        """Start the ``send`` span of a publish and make it the parent in ``context``."""
        parent = self.propagation.extract(context) if context else None
        attributes: dict[str, Any] = {
            **self._pod,
            OPERATION_TYPE: "send",
            OPERATION_NAME: "send",
            DESTINATION: topic,
            BODY_SIZE: size,
        }
        text = _key_text(key)
        if text is not None:
            attributes[KEY] = text
        span = self.tracer.start_span(f"send {topic}", context=parent, kind=SpanKind.PRODUCER, attributes=attributes)
        self.propagation.replace_trace(context, trace.set_span_in_context(span))
        return span

    @staticmethod
    def end_send(span: Span, partition: int | None, offset: int | None, error: str | None) -> None:
        """End a ``send`` span with where the record was written, or why not."""
        if partition is not None:
            span.set_attribute(PARTITION, str(partition))
        if offset is not None:
            span.set_attribute(OFFSET, offset)
        if error is not None:
            span.set_attribute(ERROR_TYPE, error)
            span.set_status(Status(StatusCode.ERROR))
        span.end()

