"""OTEL_PROPAGATORS=b3 and b3multi: trace context round-trips app → publish → Kafka → delivery
in the configured format, and W3C context from other producers is translated into it."""

from __future__ import annotations

from pathlib import Path

import pytest
from opentelemetry import trace

from proxy.sidecar.runtime import Sidecar
from proxy.telemetry.propagation import Propagation
from proxy.testing.app import Received, RecordingApp
from tests.conftest import create_topic, produce, sidecar_config
from tests.interop.conftest import PublishingApp, publish, read_all, routes_file

TRACE_A, SPAN_A = "463ac35c9f6413ad48485a3953bb6124", "a2fb4a1d1a96d312"
TRACE_B, SPAN_B = "0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331"
TRACE_C, SPAN_C = "80f198ee56343ba864fe8b2a57d3eff7", "e457b5a2e4d86bd1"


def b3_headers(format: str, trace_id: str, span_id: str) -> dict[str, str]:
    if format == "b3":
        return {"b3": f"{trace_id}-{span_id}-1"}
    return {"x-b3-traceid": trace_id, "x-b3-spanid": span_id, "x-b3-sampled": "1"}


def trace_of(format: str, headers: dict[str, str]) -> tuple[str, str]:
    """(trace id, span id) read from ``headers`` in ``format`` only."""
    propagation = Propagation.from_names(format)
    carrier = {name: value for name, value in headers.items() if name in propagation.written_fields}
    span = trace.get_current_span(propagation.extract(carrier)).get_span_context()
    assert span.is_valid, f"no {format} context in {headers}"
    return f"{span.trace_id:032x}", f"{span.span_id:016x}"


def by_body(received: list[Received]) -> dict[bytes, dict[str, str]]:
    return {r.body: r.headers for r in received}


@pytest.mark.parametrize("format", ["b3", "b3multi"])
async def test_b3_round_trip(
    format: str, bootstrap_servers: str, topic: str, unique: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTEL_PROPAGATORS", f"{format},baggage")
    out = await create_topic(bootstrap_servers, f"out-{unique}", 2)
    routes = routes_file(tmp_path)
    tenant = [("baggage", b"tenant=555")]  # no route: baseline pods handle it
    await produce(
        bootstrap_servers,
        topic,
        [
            (b"a", b"native", [*tenant, *((k, v.encode()) for k, v in b3_headers(format, TRACE_A, SPAN_A).items())]),
            (b"b", b"w3c", [*tenant, ("traceparent", f"00-{TRACE_B}-{SPAN_B}-01".encode())]),
        ],
    )
    async with PublishingApp(out) as first_app, RecordingApp("next") as next_app:
        first = Sidecar(sidecar_config(bootstrap_servers, topic, first_app.url, routes))
        first_app.sidecar = first
        following = Sidecar(sidecar_config(bootstrap_servers, out, next_app.url, routes, service="billing-worker", group="billing"))
        async with first, following:
            published = await first_app.wait_published(2)
            # An app with B3 instrumentation of its own publishes its own context.
            direct = await publish(
                f"{first.context_parts.publish.url}/{out}", b"direct", {**b3_headers(format, TRACE_C, SPAN_C), "baggage": "tenant=555"}
            )
            await next_app.wait_for(3)
    assert [p.status for p in published] == [204, 204] and direct.status == 204
    delivered = by_body(first_app.received)
    assert trace_of(format, delivered[b"native"]) == (TRACE_A, SPAN_A)
    # W3C from the producer, B3 for the app: translated, same trace and parent span.
    assert trace_of(format, delivered[b"w3c"]) == (TRACE_B, SPAN_B)
    written = {r.value: {k: v.decode() for k, v in r.headers} for r in await read_all(bootstrap_servers, out)}
    assert trace_of(format, written[b"handled:native"]) == (TRACE_A, SPAN_A)
    assert trace_of(format, written[b"handled:w3c"]) == (TRACE_B, SPAN_B)
    assert trace_of(format, written[b"direct"]) == (TRACE_C, SPAN_C)
    assert written[b"handled:native"]["baggage"] == "tenant=555"
    again = by_body(next_app.received)
    assert trace_of(format, again[b"handled:native"]) == (TRACE_A, SPAN_A)
    assert trace_of(format, again[b"handled:w3c"]) == (TRACE_B, SPAN_B)
    assert trace_of(format, again[b"direct"]) == (TRACE_C, SPAN_C)
    assert again[b"direct"]["baggage"] == "tenant=555"
