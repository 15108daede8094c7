"""OTEL_PROPAGATORS: what is written, what is read, translation between formats."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from opentelemetry import trace

from proxy.errors import ConfigError
from proxy.telemetry.propagation import Propagation

TRACE = "0af7651916cd43dd8448eb211c80319c"
SPAN = "b7ad6b7169203331"
TRACEPARENT = f"00-{TRACE}-{SPAN}-01"


def ids(propagation: Propagation, carrier: dict[str, str]) -> tuple[int, int]:
    context = trace.get_current_span(propagation.extract(carrier)).get_span_context()
    return context.trace_id, context.span_id


def test_default_is_tracecontext_and_baggage() -> None:
    p = Propagation.from_environ({})
    assert p.names == ("tracecontext", "baggage")
    assert p.written_fields == {"traceparent", "tracestate"}
    assert {"traceparent", "b3", "x-b3-traceid", "baggage"} <= p.context_fields


def test_b3_b3multi_none_and_unknown() -> None:
    assert Propagation.from_names("b3").written_fields == {"b3"}
    assert Propagation.from_names(" B3MULTI , baggage").written_fields == {"x-b3-traceid", "x-b3-spanid", "x-b3-sampled"}
    assert Propagation.from_names("tracecontext,none").written == ()
    with pytest.raises(ConfigError, match="'jaegerx' is not installed"):
        Propagation.from_names("tracecontext,jaegerx")


def test_translate_adds_configured_formats_only_when_missing() -> None:
    b3 = Propagation.from_names("b3,baggage")
    carrier = {"traceparent": TRACEPARENT, "baggage": "tenant=1"}
    assert b3.translate(carrier)
    assert carrier["b3"] == f"{TRACE}-{SPAN}-1" and carrier["traceparent"] == TRACEPARENT
    assert not b3.translate(carrier)  # already there
    multi = Propagation.from_names("b3multi")
    carrier = {"b3": f"{TRACE}-{SPAN}-1"}
    assert multi.translate(carrier)
    assert (carrier["x-b3-traceid"], carrier["x-b3-spanid"], carrier["x-b3-sampled"]) == (TRACE, SPAN, "1")
    w3c = Propagation.from_names("tracecontext")
    carrier = {"x-b3-traceid": TRACE, "x-b3-spanid": SPAN, "x-b3-sampled": "1"}
    assert w3c.translate(carrier) and carrier["traceparent"] == TRACEPARENT
    assert not w3c.translate({"baggage": "tenant=1"})
    assert not w3c.translate({"b3": "garbage"})


def test_extract_prefers_configured_format() -> None:
    other_span = "00f067aa0ba902b7"
    carrier = {"traceparent": TRACEPARENT, "b3": f"{TRACE}-{other_span}-1"}
    assert ids(Propagation.from_names("b3"), carrier)[1] == int(other_span, 16)
    assert ids(Propagation.from_names("tracecontext"), carrier)[1] == int(SPAN, 16)


def test_replace_trace_drops_every_format() -> None:
    p = Propagation.from_names("b3multi")
    carrier = {"traceparent": TRACEPARENT, "b3": "x", "tracestate": "a=b", "baggage": "tenant=1"}
    context = Propagation.from_names("tracecontext").extract({"traceparent": TRACEPARENT})
    p.replace_trace(carrier, context)
    assert set(carrier) == {"x-b3-traceid", "x-b3-spanid", "x-b3-sampled", "baggage"}


hex_ids = st.integers(min_value=1, max_value=2**128 - 1), st.integers(min_value=1, max_value=2**64 - 1)


@given(*hex_ids, st.sampled_from(["tracecontext", "b3", "b3multi"]), st.sampled_from(["tracecontext", "b3", "b3multi"]))
def test_translation_keeps_the_ids(trace_id: int, span_id: int, start: str, target: str) -> None:
    carrier: dict[str, str] = {}
    Propagation.from_names(start).inject(
        trace.set_span_in_context(
            trace.NonRecordingSpan(trace.SpanContext(trace_id, span_id, True, trace.TraceFlags(1)))
        ),
        carrier,
    )
    goal = Propagation.from_names(target)
    goal.translate(carrier)
    assert goal.has_written_format(carrier)
    only_target = {name: value for name, value in carrier.items() if name in goal.written_fields}
    assert ids(goal, only_target) == (trace_id, span_id)
