"""Publish requests → records: topics, keys, header values, the record's context."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.delivery.headers import encode_key
from proxy.errors import PublishError
from proxy.publish.request import (
    PublishRules,
    check_publish_headers,
    decode_key,
    header_value,
    record_context,
    topic_from_path,
)
from proxy.routing.baggage import parse
from proxy.routing.tenant import TenantExtractor
from proxy.telemetry.propagation import Propagation

W3C = Propagation.from_names("tracecontext,baggage")
TRACEPARENT_A = "00-" + "a" * 32 + "-" + "1" * 16 + "-01"
TRACEPARENT_B = "00-" + "b" * 32 + "-" + "2" * 16 + "-01"
DELIVERY = (("baggage", "tenant=123,user=7"), ("traceparent", TRACEPARENT_A))


def tenant(context: dict[str, str]) -> str | None:
    return TenantExtractor().from_baggage(context.get("baggage", "").encode()).tenant


def status_of(call: object) -> int:
    with pytest.raises(PublishError) as caught:
        call()  # type: ignore[operator]
    return caught.value.status


def test_topics() -> None:
    assert topic_from_path("/v1/publish/orders.v2_x-1") == "orders.v2_x-1"
    assert status_of(lambda: topic_from_path("/v1/publish/a/b")) == 400
    assert status_of(lambda: topic_from_path("/v1/publish/")) == 400
    assert status_of(lambda: topic_from_path("/v1/publish/..")) == 400
    assert status_of(lambda: topic_from_path("/v1/publish/a%0Ab")) == 400
    assert status_of(lambda: topic_from_path("/v1/publish/" + "x" * 250)) == 400
    assert status_of(lambda: topic_from_path("/v1/publish/__consumer_offsets")) == 403
    assert status_of(lambda: topic_from_path("/v1/publish/_ktp_routes")) == 403
    assert status_of(lambda: topic_from_path("/v2/publish/orders")) == 404


@given(st.binary(max_size=300))
def test_key_is_the_inverse_of_what_deliveries_send(key: bytes) -> None:
    assert decode_key(encode_key(key)) == key


def test_keys_written_by_hand() -> None:
    assert decode_key("order-42") == b"order-42"
    assert decode_key("a:b/c") == b"a:b/c"
    assert decode_key("%00%ff") == b"\x00\xff"
    assert status_of(lambda: decode_key("100%")) == 400
    assert status_of(lambda: decode_key("%zz")) == 400


@given(st.text(max_size=50), st.sampled_from(["\r", "\n", "\x00", "\x7f", "é", "\udcff"]), st.text(max_size=50))
def test_header_values_with_controls_or_non_ascii_are_refused(before: str, bad: str, after: str) -> None:
    assert status_of(lambda: header_value("x-h", before + bad + after)) == 400


def test_request_context_alone() -> None:
    context = record_context({"traceparent": TRACEPARENT_B, "baggage": "tenant=9"}, None, W3C, tenant_key="tenant", default_tenant=None)
    assert context == {"traceparent": TRACEPARENT_B, "baggage": "tenant=9"}


def test_delivery_context_fills_in_what_the_request_lacks() -> None:
    context = record_context({}, DELIVERY, W3C, tenant_key="tenant", default_tenant=None)
    assert context == {"traceparent": TRACEPARENT_A, "baggage": "tenant=123,user=7"}
    # An instrumented app sends its own span (a child of the delivery's): it wins; baggage is
    # merged member by member, so other baggage does not lose the tenant.
    context = record_context(
        {"traceparent": TRACEPARENT_B, "baggage": "user=8,lang=en"}, DELIVERY, W3C, tenant_key="tenant", default_tenant=None
    )
    assert context["traceparent"] == TRACEPARENT_B
    assert tenant(context) == "123"
    members = dict(member.split("=") for member in context["baggage"].split(","))
    assert members == {"tenant": "123", "user": "8", "lang": "en"}


def test_default_tenant_only_where_none_is_carried() -> None:
    stamped = record_context({}, None, W3C, tenant_key="tenant", default_tenant="batch-1")
    assert tenant(stamped) == "batch-1" and "traceparent" not in stamped
    kept = record_context({}, DELIVERY, W3C, tenant_key="tenant", default_tenant="batch-1")
    assert tenant(kept) == "123"
    added = record_context({"baggage": "user=1"}, None, W3C, tenant_key="tenant", default_tenant="x y")
    assert tenant(added) == "x y" and "user=1" in added["baggage"]


def test_trace_context_is_written_in_the_configured_formats() -> None:
    b3 = Propagation.from_names("b3")
    context = record_context({}, DELIVERY, b3, tenant_key="tenant", default_tenant=None)
    assert context["b3"] == "a" * 32 + "-" + "1" * 16 + "-1"


def test_rules_parse() -> None:
    rules = PublishRules(propagation=W3C, tenant_key="tenant", copied_headers=frozenset({"x-source"}))
    headers = {
        "kafka-key": "k%201", "ktp-delivery": "d-1", "content-type": "application/json",
        "x-source": "batch", "x-other": "not copied",
    }
    record = rules.parse("orders", headers, b"{}", {"d-1": DELIVERY}.get)
    assert (record.topic, record.key, record.value, record.delivery_id) == ("orders", b"k 1", b"{}", "d-1")
    assert record.kafka_headers() == [
        ("traceparent", TRACEPARENT_A.encode()), ("baggage", b"tenant=123,user=7"),
        ("content-type", b"application/json"), ("x-source", b"batch"),
    ]
    assert status_of(lambda: rules.parse("t", {"ktp-delivery": "gone"}, b"", {}.get)) == 422
    assert status_of(lambda: rules.parse("t", {"content-type": "not a type"}, b"", {}.get)) == 400
    assert status_of(lambda: rules.parse("t", {"baggage": "tenant=1\x00"}, b"", {}.get)) == 400
    assert status_of(lambda: rules.parse("t", {"x-source": "caf\u00e9"}, b"", {}.get)) == 400
    assert rules.parse("t", {}, b"", {}.get).kafka_headers() == []


def test_publish_header_allowlist() -> None:
    assert check_publish_headers(["X-Source", " x-batch "]) == {"x-source", "x-batch"}
    for refused in ("baggage", "traceparent", "b3", "kafka-key", "ktp-delivery", "content-length", "authorization", "bad name"):
        with pytest.raises(ValueError):
            check_publish_headers([refused])


def test_merged_baggage_keeps_the_delivery_tenant_as_the_specification_reads_it() -> None:
    """A delivery of `tenant=t1;p=x` (properties, as Java and JavaScript producers write them) and
    an app that adds baggage of its own: the record published still has tenant t1, its members
    keep their bytes (OpenTelemetry Python's propagator would have written `t1%3Bp%3Dx`, which
    every W3C reader takes for another tenant)."""
    delivery = (("traceparent", TRACEPARENT_A), ("baggage", "tenant=t1;p=x,user=7"))
    context = record_context({"baggage": "user=8,q=a+b"}, delivery, W3C, tenant_key="tenant", default_tenant=None)
    assert context["baggage"] == "tenant=t1;p=x,user=8,q=a+b"
    assert parse(context["baggage"].encode()).get("tenant") == "t1"
    # The request's own tenant wins, even when the delivery's had duplicates.
    delivery = (("baggage", "tenant=t0,tenant=t1"),)
    context = record_context({"baggage": "tenant=t2"}, delivery, W3C, tenant_key="tenant", default_tenant=None)
    assert context["baggage"] == "tenant=t2"
