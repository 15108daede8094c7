"""--format cloudevents against the real broker: every delivery parses with the cloudevents SDK,
plain records get Knative's attributes, records that are events arrive as themselves."""

from __future__ import annotations

from pathlib import Path

from cloudevents.core.bindings import kafka as ce_kafka
from cloudevents.core.bindings.http import HTTPMessage, from_http_event
from cloudevents.core.v1.event import CloudEvent

from proxy.sidecar.runtime import Sidecar
from proxy.testing.app import RecordingApp
from tests.conftest import produce, sidecar_config
from tests.interop.conftest import routes_file


async def test_deliveries_are_cloudevents(bootstrap_servers: str, topic: str, tmp_path: Path) -> None:
    binary = ce_kafka.to_binary_event(
        CloudEvent(
            {"id": "evt-1", "source": "https://shop.example/orders", "type": "com.example.order.placed",
             "datacontenttype": "application/json", "tenantid": "555"},
            {"order": 1},
        )
    )
    structured = ce_kafka.to_structured_event(
        CloudEvent({"id": "evt-2", "source": "/billing", "type": "com.example.invoice"}, {"invoice": 2})
    )
    await produce(
        bootstrap_servers,
        topic,
        [
            (b"plain-key", b'{"plain": true}', [("content-type", b"application/json"), ("baggage", b"tenant=555"), ("X-Trace-Note", b"a b")]),
            (b"binary", binary.value, list(binary.headers.items())),
            (b"structured", structured.value, list(structured.headers.items())),
        ],
    )
    async with RecordingApp() as app:
        config = sidecar_config(bootstrap_servers, topic, app.url, routes_file(tmp_path), format="cloudevents")
        async with Sidecar(config):
            received = await app.wait_for(3)
    events = {}
    for delivery in received:
        event = from_http_event(HTTPMessage(delivery.headers, delivery.body))
        assert isinstance(event, CloudEvent)
        events[delivery.headers["kafka-key"]] = (event, delivery)
    plain, plain_delivery = events["plain-key"]
    partition, offset = plain_delivery.partition, plain_delivery.offset
    assert plain.get_id() == f"partition:{partition}/offset:{offset}"
    assert plain.get_source() == f"/ktp/services/orders-worker#{topic}"
    assert plain.get_type() == "dev.knative.kafka.event"
    assert plain.get_subject() == f"partition:{partition}#{offset}"
    assert plain.get_extension("partitionkey") == "plain-key"
    assert plain.get_extension("kafkaheaderbaggage") == "tenant=555"
    assert plain.get_extension("kafkaheaderxtracenote") == "a b"
    assert plain.get_datacontenttype() == "application/json" and plain.get_data() == {"plain": True}
    assert plain.get_time() is not None
    # The routing and delivery headers are still there beside the event's.
    assert plain_delivery.headers["baggage"] == "tenant=555" and "ktp-delivery" in plain_delivery.headers
    passed, _ = events["binary"]
    assert (passed.get_id(), passed.get_source(), passed.get_type()) == ("evt-1", "https://shop.example/orders", "com.example.order.placed")
    assert passed.get_extension("tenantid") == "555" and passed.get_data() == {"order": 1}
    assert passed.get_extension("kafkaheaderceid") is None
    whole, whole_delivery = events["structured"]
    assert whole_delivery.headers["content-type"] == "application/cloudevents+json"
    assert not any(name.startswith("ce-") for name in whole_delivery.headers)
    assert (whole.get_id(), whole.get_type(), whole.get_data()) == ("evt-2", "com.example.invoice", {"invoice": 2})
