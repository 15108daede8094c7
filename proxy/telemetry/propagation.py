"""Context propagation chosen by ``OTEL_PROPAGATORS``, for deliveries and published records.

``OTEL_PROPAGATORS`` (default ``tracecontext,baggage``) names the formats the sidecar *writes*:
the trace context of what is sent to the app and of what is written to Kafka. Propagators are
loaded the way the OpenTelemetry SDK loads them (the ``opentelemetry_propagator`` entry points),
so ``b3`` and ``b3multi`` (opentelemetry-propagator-b3) and any installed one work; ``none``
writes no trace context.

What the sidecar *reads* is wider: W3C trace context, B3 single and B3 multi are all understood
whatever is configured, so a trace stays connected when a producer and a consumer were
instrumented with different formats. When a carrier has trace context but in none of the
configured formats, :meth:`Propagation.translate` adds it in them.

``baggage`` is always carried as it came, even when ``OTEL_PROPAGATORS`` leaves it out: the
tenant travels in it, and routing depends on it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass
from importlib.metadata import entry_points

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.propagators.b3 import B3MultiFormat, B3SingleFormat
from opentelemetry.propagators.textmap import TextMapPropagator
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from proxy.errors import ConfigError

OTEL_PROPAGATORS = "OTEL_PROPAGATORS"
DEFAULT_PROPAGATORS = "tracecontext,baggage"
BAGGAGE = "baggage"
# Trace formats read whatever is configured, in this order when a carrier has several.
READ_FORMATS: dict[str, TextMapPropagator] = {
    "tracecontext": TraceContextTextMapPropagator(),
    "b3multi": B3MultiFormat(),
    "b3": B3SingleFormat(),
}
# Header names of the formats above, plus the B3 headers their propagators do not list but
# that B3 producers send (copied as they are, never written by us).
READ_TRACE_FIELDS = frozenset(
    {"tracestate", "x-b3-parentspanid", "x-b3-flags"}.union(
        *(propagator.fields for propagator in READ_FORMATS.values())
    )
)


def load_propagator(name: str) -> TextMapPropagator:
    """One propagator by its ``OTEL_PROPAGATORS`` name, as the OpenTelemetry SDK loads it."""
    found = list(entry_points(group="opentelemetry_propagator", name=name))
    if not found:
        raise ConfigError(
            f"{OTEL_PROPAGATORS}: propagator {name!r} is not installed; use tracecontext, "
            "baggage, b3, b3multi, none, or install the package that provides it"
        )
    propagator = found[0].load()()
    assert isinstance(propagator, TextMapPropagator)
    return propagator


@dataclass(frozen=True, slots=True, eq=False)
class Propagation:
    """The configured propagators and the header names they concern.

    ``written``: trace propagators from ``OTEL_PROPAGATORS`` (baggage excluded, see the module
    doc). ``trace_fields``: every header name that carries trace context, read or written.
    ``context_fields``: those plus ``baggage``: what a delivery's context is made of.
    """

    names: tuple[str, ...]
    written: tuple[TextMapPropagator, ...]
    written_fields: frozenset[str]
    trace_fields: frozenset[str]
    context_fields: frozenset[str]

    def __repr__(self) -> str:
        return f"Propagation(names={self.names!r})"

    @classmethod
    def from_names(cls, value: str) -> Propagation:
        """From an ``OTEL_PROPAGATORS`` value (comma-separated names)."""
        names = tuple(dict.fromkeys(n.strip().lower() for n in value.split(",") if n.strip()))
        if "none" in names:
            names = ()
        written = tuple(
            READ_FORMATS[name] if name in READ_FORMATS else load_propagator(name)
            for name in names
            if name != BAGGAGE
        )
        written_fields = frozenset().union(*(p.fields for p in written)) - {BAGGAGE}
        trace_fields = READ_TRACE_FIELDS | written_fields
        return cls(names, written, written_fields, trace_fields, trace_fields | {BAGGAGE})

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None) -> Propagation:
        """From ``$OTEL_PROPAGATORS``, default ``tracecontext,baggage`` (as the SDK)."""
        env = os.environ if environ is None else environ
        return cls.from_names(env.get(OTEL_PROPAGATORS) or DEFAULT_PROPAGATORS)

    def extract(self, carrier: Mapping[str, str], context: Context | None = None) -> Context:
        """The trace context of a carrier (lowercase header names), from the first format that
        has a valid one: configured formats first, then the other known ones."""
        context = Context() if context is None else context
        for propagator in (*self.written, *READ_FORMATS.values()):
            found = propagator.extract(carrier, context=context)
            if trace.get_current_span(found).get_span_context().is_valid:
                return found
        return context

    def inject(self, context: Context, carrier: MutableMapping[str, str]) -> None:
        """Write the trace context of ``context`` in every configured format."""
        for propagator in self.written:
            propagator.inject(carrier, context=context)

    def has_written_format(self, carrier: Mapping[str, str]) -> bool:
        """Whether the carrier already has trace context in a configured format."""
        return not self.written_fields.isdisjoint(carrier)

    def translate(self, carrier: MutableMapping[str, str]) -> bool:
        """When ``carrier`` has trace context only in formats that are not configured, add it
        in the configured ones (nothing is removed). Returns whether anything was added."""
        if not self.written or self.has_written_format(carrier):
            return False
        if not any(name in carrier for name in READ_TRACE_FIELDS):
            return False
        context = self.extract(carrier)
        if not trace.get_current_span(context).get_span_context().is_valid:
            return False
        self.inject(context, carrier)
        return True

    def replace_trace(self, carrier: MutableMapping[str, str], context: Context) -> None:
        """Drop every trace header from ``carrier`` and write ``context``'s in the configured
        formats: used when the sidecar's own span becomes the parent of what follows."""
        for name in self.trace_fields:
            carrier.pop(name, None)
        self.inject(context, carrier)
