"""DeliveryEnvelope: what a delivery request carries besides the record, and what it leaves behind.

The dispatcher calls :meth:`DeliveryEnvelope.begin` once per delivery (not per attempt), after
the headers are built, and :meth:`DeliveryScope.end` when the delivery is over. In between:

- the delivery format's headers (:mod:`proxy.delivery.formats`; ``cloudevents``: the ``ce-*``
  headers of CloudEvents HTTP binary mode);
- trace context in the formats of ``OTEL_PROPAGATORS``: translated from the record's when it
  came in another format, or, when tracing is on, the ``process`` span's own;
- ``ktp-delivery: <id>``, and the delivery's context kept under that id
  (:class:`proxy.delivery.contexts.DeliveryContexts`) for the publish endpoint.

With the defaults (raw format, tracing off, ``tracecontext,baggage``) this is one id, one dict
entry and a look at a handful of headers per delivery.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from proxy.delivery.contexts import DeliveryContexts
from proxy.delivery.formats import FORMATS
from proxy.delivery.headers import forwarded_header_names
from proxy.telemetry.tracing import DELIVERY_ID, SidecarTracing, record_carrier

if TYPE_CHECKING:
    from aiokafka.structs import ConsumerRecord
    from opentelemetry.trace import Span

DELIVERY_HEADER = "ktp-delivery"


class DeliveryScope:
    """One delivery between :meth:`DeliveryEnvelope.begin` and :meth:`end`."""

    __slots__ = ("_contexts", "_number", "delivery_id", "span")

    def __init__(self, contexts: DeliveryContexts, delivery_id: str, span: Span | None, number: int = 0) -> None:
        self._contexts = contexts
        self.delivery_id = delivery_id
        self.span = span
        # The id's counter (DeliveryContexts.counter after the open): closed without parsing the id.
        self._number = number

    def end(self, attempts: int, status: int | None) -> None:
        """The delivery is done, dead-lettered or abandoned (``status``: the app's last answer)."""
        if self._number:
            self._contexts.close_number(self._number)
        else:
            self._contexts.close(self.delivery_id)
        if self.span is not None:
            SidecarTracing.end_process(self.span, attempts, status)


class DeliveryEnvelope:
    """What one sidecar adds to each delivery; see the module doc."""

    __slots__ = ("_fields", "_format_headers", "contexts", "format", "propagation", "service", "tracing")

    def __init__(
        self,
        *,
        contexts: DeliveryContexts,
        tracing: SidecarTracing,
        format: str = "raw",
        service: str = "",
    ) -> None:
        if format not in FORMATS:
            raise ValueError(f"format must be one of {', '.join(FORMATS)}, not {format!r}")
        self.contexts = contexts
        self.tracing = tracing
        self.propagation = tracing.propagation
        self.format = format
        self._format_headers = FORMATS[format]
        self.service = service
        # Context headers a delivery can carry: those copied from records (headers.py's
        # allowlist) and those written in the configured formats.
        possible = set(forwarded_header_names(",".join(self.propagation.names))) | self.propagation.written_fields
        self._fields = tuple(sorted(possible & self.propagation.context_fields))

    def __repr__(self) -> str:
        return (
            f"DeliveryEnvelope(format={self.format!r}, "
            f"tracing={self.tracing.enabled}, contexts={self.contexts!r})"
        )

    @property
    def fields(self) -> tuple[str, ...]:
        """The headers a delivery's context is made of, in the order it keeps them."""
        return self._fields

    def begin(
        self, record: ConsumerRecord[bytes, bytes], headers: dict[str, str], rejected: list[str]
    ) -> DeliveryScope:
        """Complete ``headers`` for ``record``'s delivery; append to ``rejected`` what could not
        be sent (counted and logged by the caller)."""
        format_headers = self._format_headers
        if format_headers is not None:
            extra, dropped = format_headers(record, headers, self.service)
            headers.update(extra)
            rejected.extend(dropped)
        propagation = self.propagation
        span = None
        if self.tracing.enabled:
            span = self.tracing.start_process(record, headers)
        elif propagation.written and propagation.written_fields.isdisjoint(headers):
            # (not propagation.has_written_format(headers), without the call)
            # Only the formats on the allowlist were copied: look at the record for others.
            carrier = record_carrier(record.headers, propagation.trace_fields)
            if propagation.translate(carrier):
                for name in propagation.written_fields:
                    if name in carrier:
                        headers[name] = carrier[name]
        contexts = self.contexts
        delivery_id = contexts.open_headers(headers, self._fields)
        headers[DELIVERY_HEADER] = delivery_id
        if span is not None:
            span.set_attribute(DELIVERY_ID, delivery_id)
        return DeliveryScope(contexts, delivery_id, span, contexts.counter)
