"""RequestHeaders: a delivery request's headers for a record, and the report of what could not
be sent as it was (counted as bad input, logged at most once per interval per topic and kind).

The headers themselves are :func:`proxy.delivery.headers.build_headers` (pure logic) completed
by the :class:`~proxy.delivery.envelope.DeliveryEnvelope`; single deliveries and the bulk
entries of the general path (:mod:`proxy.delivery.bulk_lane`) both take them from here.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from proxy.delivery.headers import build_headers
from proxy.logthrottle import LogThrottle, held_back
from proxy.metrics import Metrics
from proxy.routing.tenant import DEFAULT_TENANT_KEY

if TYPE_CHECKING:
    from aiokafka.structs import ConsumerRecord

    from proxy.delivery.envelope import DeliveryEnvelope, DeliveryScope

log = logging.getLogger(__name__)
# At most one line per this many seconds per topic and kind about a record's headers (baggage
# re-serialized, a header not forwarded): one producer that writes `tenant=t1 ` or a header with a
# CR in it would otherwise log every record it sends. The metric still counts each one.
HEADER_LOG_INTERVAL = 10.0


class RequestHeaders:
    """Headers of delivery requests by one sidecar's forwarding rules: the record headers copied
    (``forwarded``) and the baggage key of the tenant."""

    __slots__ = ("_logs", "forwarded", "metrics", "tenant_key")

    def __init__(self, *, forwarded: frozenset[str], metrics: Metrics, tenant_key: str = DEFAULT_TENANT_KEY) -> None:
        self.forwarded = forwarded
        self.tenant_key = tenant_key
        self.metrics = metrics
        self._logs = LogThrottle(HEADER_LOG_INTERVAL)

    def __repr__(self) -> str:
        return f"RequestHeaders(forwarded={sorted(self.forwarded)}, tenant_key={self.tenant_key!r})"

    def for_record(
        self, record: ConsumerRecord[bytes, bytes], envelope: DeliveryEnvelope | None
    ) -> tuple[dict[str, str], DeliveryScope | None]:
        """The delivery request's headers for ``record``, and its ``envelope`` scope (ended by
        the caller). Record headers that cannot be sent are counted and logged here."""
        topic = record.topic
        notes: list[str] = []
        headers, rejected = build_headers(
            topic=topic,
            partition=record.partition,
            offset=record.offset,
            timestamp=record.timestamp,
            key=record.key,
            record_headers=record.headers,
            forwarded=self.forwarded,
            tenant_key=self.tenant_key,
            notes=notes,
        )
        if record.value is None:
            # A tombstone: forwarded with an empty body, marked so the app can tell it from b"".
            headers["kafka-tombstone"] = "true"
        # Format headers, trace context in OTEL_PROPAGATORS' formats, ktp-delivery (envelope.py).
        scope = envelope.begin(record, headers, rejected) if envelope is not None else None
        if notes or rejected:
            self._report(record, notes, rejected)
        return headers, scope

    def _report(self, record: ConsumerRecord[bytes, bytes], notes: list[str], rejected: list[str]) -> None:
        topic = record.topic
        throttle = self._logs
        for note in notes:
            held = throttle.allow((topic, "baggage"))
            if held is not None:
                log.warning(
                    "record %s[%d]@%d: baggage %s%s", topic, record.partition, record.offset, note, held_back(held)
                )
        for name in rejected:
            self.metrics.bad_input.labels(topic, f"header_{name}").inc()
            if name == "baggage" and notes:
                continue  # said above
            held = throttle.allow((topic, name))
            if held is not None:
                log.warning(
                    "record %s[%d]@%d: header %r not forwarded (not a safe HTTP field value)%s",
                    topic, record.partition, record.offset, name, held_back(held),
                )
