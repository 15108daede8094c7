"""CloudEvents binary-mode mapping: Knative's attributes, names and values every CloudEvents
reader accepts (checked with the cloudevents SDK), pass-through of records that are events."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime

from cloudevents.core.bindings import kafka as ce_kafka
from cloudevents.core.bindings.http import HTTPMessage, from_http_event
from cloudevents.core.v1.event import CloudEvent
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.delivery.cloudevents import (
    KAFKA_EVENT_TYPE,
    REJECTED,
    event_source,
    event_time,
    extension_name,
    http_headers,
    kafka_binary_attributes,
)
from proxy.delivery.headers import valid_field_value

SOURCE = event_source("orders-worker", "orders")


def mapped(
    record_headers: list[tuple[str, bytes]],
    key: bytes | None = b"k-1",
    content_type: str = "application/octet-stream",
) -> tuple[dict[str, str], list[str]]:
    return http_headers(
        source=SOURCE, topic="orders", partition=3, offset=42, timestamp=1_700_000_000_123,
        key=key, record_headers=record_headers, content_type=content_type,
    )


def parse(headers: dict[str, str], body: bytes, content_type: str = "application/octet-stream") -> CloudEvent:
    event = from_http_event(HTTPMessage({"content-type": content_type, **headers}, body))
    assert isinstance(event, CloudEvent)
    return event


def test_plain_record_gets_knatives_attributes() -> None:
    headers, rejected = mapped([("baggage", b"tenant=123"), ("X-Request-Id", b"r 1%")])
    assert rejected == []
    event = parse(headers, b"hello")
    assert event.get_id() == "partition:3/offset:42"
    assert event.get_source() == "/ktp/services/orders-worker#orders"
    assert event.get_type() == KAFKA_EVENT_TYPE
    assert event.get_subject() == "partition:3#42"
    assert event.get_time() == datetime(2023, 11, 14, 22, 13, 20, 123000, tzinfo=UTC)
    assert event.get_extension("partitionkey") == "k-1" and event.get_extension("key") == "k-1"
    assert event.get_extension("kafkaheaderbaggage") == "tenant=123"
    # Percent-encoded on the wire, decoded by the reader.
    assert headers["ce-kafkaheaderxrequestid"] == "r%201%25"
    assert event.get_extension("kafkaheaderxrequestid") == "r 1%"
    assert event.get_data() in (b"hello", "hello")  # the SDK reads octet-stream data as text


def test_headers_never_override_context_attributes() -> None:
    headers, _ = mapped([("id", b"forged"), ("ce-type", b"forged"), ("source", b"forged")])
    assert headers["ce-id"] == "partition:3/offset:42"
    assert headers["ce-type"] == KAFKA_EVENT_TYPE
    assert headers["ce-kafkaheaderid"] == "forged" and headers["ce-kafkaheadercetype"] == "forged"


def test_non_utf8_values_and_keys_are_left_out_and_reported() -> None:
    headers, rejected = mapped([("bin", b"\xff\xfe"), ("ok", b"fine")], key=b"\xff")
    assert "ce-kafkaheaderbin" not in headers and headers["ce-kafkaheaderok"] == "fine"
    assert "ce-key" not in headers and "ce-partitionkey" not in headers
    assert rejected == [REJECTED, REJECTED]
    parse(headers, b"")


def test_record_without_key_or_timestamp() -> None:
    headers, _ = http_headers(
        source=SOURCE, topic="t", partition=0, offset=0, timestamp=-1,
        key=None, record_headers=[], content_type="application/octet-stream",
    )
    assert "ce-time" not in headers and "ce-partitionkey" not in headers
    assert parse(headers, b"").get_id() == "partition:0/offset:0"


def test_kafka_binary_mode_event_passes_through() -> None:
    original = CloudEvent(
        {
            "id": "evt-1", "source": "https://example.com/orders", "type": "com.example.order.placed",
            "subject": "order 7", "datacontenttype": "application/json", "tenantid": "123",
        },
        {"total": 42},
    )
    message = ce_kafka.to_binary_event(original)
    record_headers = [(name, value) for name, value in message.headers.items()]
    headers, rejected = mapped(record_headers, content_type="application/json")
    assert rejected == []
    assert headers["ce-id"] == "evt-1" and "ce-kafkaheaderceid" not in headers
    assert "ce-datacontenttype" not in headers  # carried as content-type
    event = parse(headers, message.value, "application/json")
    assert event.get_source() == "https://example.com/orders"
    assert event.get_subject() == "order 7"
    assert event.get_extension("tenantid") == "123"
    assert event.get_data() == {"total": 42}


def test_structured_mode_event_gets_no_ce_headers() -> None:
    original = CloudEvent({"id": "evt-2", "source": "/s", "type": "t"}, {"a": 1})
    message = ce_kafka.to_structured_event(original)
    headers, rejected = mapped(list(message.headers.items()), content_type="application/cloudevents+json")
    assert headers == {} and rejected == []
    event = parse({}, message.value, "application/cloudevents+json")
    assert event.get_id() == "evt-2" and event.get_data() == {"a": 1}


def test_invalid_binary_event_is_wrapped_as_a_plain_record() -> None:
    record_headers = [("ce_specversion", b"1.0"), ("ce_source", b"/s"), ("ce_type", b"t")]  # no id
    assert kafka_binary_attributes(record_headers) is None
    headers, _ = mapped(record_headers)
    assert headers["ce-id"] == "partition:3/offset:42"
    assert headers["ce-kafkaheadercespecversion"] == "1.0"
    assert kafka_binary_attributes([("ce_specversion", b"9.9"), ("ce_id", b"1"), ("ce_source", b"/s"), ("ce_type", b"t")]) is None
    assert kafka_binary_attributes([("ce_Bad-Name", b"x"), ("ce_specversion", b"1.0")]) is None


def test_event_time() -> None:
    assert event_time(0) == "1970-01-01T00:00:00.000Z"
    assert event_time(-1) is None


header_names = st.text(min_size=0, max_size=30)
header_values = st.binary(max_size=200) | st.text(max_size=100).map(lambda t: t.encode("utf-8"))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(header_names, header_values), max_size=8), st.none() | st.binary(max_size=40))
def test_any_record_maps_to_valid_headers_that_a_reader_parses(
    record_headers: list[tuple[str, bytes]], key: bytes | None
) -> None:
    headers, rejected = mapped(record_headers, key=key)
    for name, value in headers.items():
        assert re.fullmatch(r"ce-[a-z0-9]+", name), name
        assert valid_field_value(value.encode("ascii")), value
    event = parse(headers, b"body")
    assert event.get_id() == "partition:3/offset:42"
    # Every UTF-8 header value arrives intact under its extension name (first occurrence wins).
    seen: set[str] = set()
    for name, value in record_headers:
        attribute = extension_name(name)
        if attribute in seen:
            continue
        seen.add(attribute)
        try:
            text = value.decode("utf-8")
        except UnicodeDecodeError:
            assert f"ce-{attribute}" not in headers
            continue
        assert event.get_extension(attribute) == text
    assert len(rejected) <= len(record_headers) + 2


@given(st.text(alphabet=st.characters(codec="utf-8"), max_size=200))
def test_values_survive_the_http_binding(text: str) -> None:
    headers, rejected = mapped([("h", text.encode("utf-8"))])
    if rejected:
        return  # over the header size limit once encoded
    assert parse(headers, b"").get_extension("kafkaheaderh") == text
    json.dumps(headers)  # plain strings
