"""Services A, C and D of the tenant end-to-end test, as a team would write them: FastAPI apps under
uvicorn, instrumented with OpenTelemetry's own FastAPI, HTTPX and confluent-kafka instrumentation,
and no baggage or trace code of their own. Trace context and baggage are carried by the
instrumentation and the propagators ``OTEL_PROPAGATORS`` names (the SDK's default,
``tracecontext,baggage``): configuration, not code.

``APP_ROLE`` picks the service:

- ``A``: ``POST /orders/{id}`` produces the order id to ``APP_TOPIC`` (``APP_BOOTSTRAP``).
- ``C``: ``POST /events`` (a delivery from its sidecar) calls D with the order and
  ``APP_VERSION`` (``baseline`` or the sandbox), as any service calls the next one.
- ``D``: ``POST /calls`` records each call, with the ``baggage`` header it came with and the
  trace id its server span belongs to; ``GET /calls`` lists them for the test.
"""

from __future__ import annotations

import os
from typing import Any

import httpx
from confluent_kafka import Producer
from fastapi import FastAPI, Request
from opentelemetry import trace
from opentelemetry.instrumentation.confluent_kafka import ConfluentKafkaInstrumentor
from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor
from opentelemetry.sdk.trace import TracerProvider

trace.set_tracer_provider(TracerProvider())
HTTPXClientInstrumentor().instrument()

ROLE = os.environ["APP_ROLE"]
app = FastAPI()
calls: list[dict[str, Any]] = []

if ROLE == "A":
    producer = ConfluentKafkaInstrumentor().instrument_producer(
        Producer({"bootstrap.servers": os.environ["APP_BOOTSTRAP"]}))

    @app.post("/orders/{order}")
    async def order(order: str) -> dict[str, str]:
        producer.produce(os.environ["APP_TOPIC"], value=order.encode())
        producer.flush(10)
        return {"produced": order}

elif ROLE == "C":
    client = httpx.AsyncClient()

    @app.post("/events")
    async def events(request: Request) -> dict[str, str]:
        order = (await request.body()).decode()
        answer = await client.post(os.environ["APP_D_URL"], json={"order": order, "handled_by": os.environ["APP_VERSION"]})
        answer.raise_for_status()
        return {"handled": order}

elif ROLE == "D":

    @app.post("/calls")
    async def record(request: Request) -> dict[str, str]:
        call = await request.json()
        call["baggage"] = request.headers.get("baggage")
        call["trace_id"] = format(trace.get_current_span().get_span_context().trace_id, "032x")
        calls.append(call)
        return {}

    @app.get("/calls")
    async def recorded() -> list[dict[str, Any]]:
        return calls


FastAPIInstrumentor.instrument_app(app)
