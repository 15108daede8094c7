"""Delivery headers: allowlisted, valid field values only, never an injected header."""

from __future__ import annotations

from urllib.parse import unquote_to_bytes

from hypothesis import example, given, settings
from hypothesis import strategies as st

from proxy.delivery.headers import (
    CONTEXT_HEADERS,
    build_headers,
    forwarded_header_names,
    valid_field_value,
)

FORWARDED = forwarded_header_names("tracecontext,baggage")
META = {"content-type", "kafka-topic", "kafka-partition", "kafka-offset", "kafka-timestamp", "kafka-key"}


def build(headers: list[tuple[str, bytes]], key: bytes | None = b"k") -> tuple[dict[str, str], list[str]]:
    return build_headers(
        topic="t", partition=1, offset=2, timestamp=3, key=key, record_headers=headers, forwarded=FORWARDED
    )


def test_metadata_and_context_headers() -> None:
    headers, rejected = build(
        [("traceparent", b"00-abc-def-01"), ("baggage", b"tenant=1"), ("x-secret", b"no"), ("content-type", b"application/json")],
        key=b"a b/\xff",
    )
    assert headers == {
        "content-type": "application/json",
        "kafka-topic": "t",
        "kafka-partition": "1",
        "kafka-offset": "2",
        "kafka-timestamp": "3",
        "kafka-key": "a%20b%2F%FF",
        "traceparent": "00-abc-def-01",
        "baggage": "tenant=1",
    }
    assert rejected == []


def test_unsafe_values_are_rejected_not_copied() -> None:
    headers, rejected = build(
        [
            ("baggage", b"tenant=1\r\nx-injected: yes"),
            ("traceparent", b"\xff\xfe"),
            ("tracestate", b"a\x00b"),
            ("content-type", b"text/plain\r\nevil: 1"),
        ]
    )
    assert set(rejected) == {"baggage", "traceparent", "tracestate", "content-type"}
    assert "baggage" not in headers and headers["content-type"] == "application/octet-stream"


def test_b3_only_when_configured() -> None:
    assert "b3" not in FORWARDED and "x-b3-traceid" not in FORWARDED
    assert "b3" in forwarded_header_names("tracecontext,b3")
    assert "x-b3-traceid" in forwarded_header_names("b3multi")


names = st.one_of(st.sampled_from([*CONTEXT_HEADERS, "content-type", "authorization", "host", "Baggage"]), st.text(max_size=20))


@settings(max_examples=5000)
@given(st.lists(st.tuples(names, st.binary(max_size=200)), max_size=12), st.one_of(st.none(), st.binary(max_size=50)))
def test_no_record_can_inject(record_headers: list[tuple[str, bytes]], key: bytes | None) -> None:
    headers, _ = build(record_headers, key=key)
    assert set(headers) <= META | set(CONTEXT_HEADERS)
    for value in headers.values():
        assert valid_field_value(value.encode("ascii"))
        assert not any(c in value for c in "\r\n\x00")
    if key is not None:
        assert unquote_to_bytes(headers["kafka-key"]) == key


@settings(max_examples=2000)
@given(st.binary(max_size=40) | st.text(" \t!~azAZ09\x7f\x80", max_size=20).map(str.encode))
def test_field_values_and_keys_match_their_definitions(raw: bytes) -> None:
    """The one-regex checks agree with the rules as written (visible ASCII, SP, HTAB, no edge
    whitespace; kafka-key percent-encoded with RFC 3986 unreserved kept)."""
    from urllib.parse import quote

    from proxy.delivery.headers import encode_key

    expected = all(0x20 <= b <= 0x7E or b == 0x09 for b in raw) and raw == raw.strip(b" \t")
    assert valid_field_value(raw) is expected
    assert encode_key(raw) == quote(raw, safe="")


@settings(max_examples=1000)
@given(st.binary(max_size=60) | st.sampled_from([b"application/json", b"text/plain; charset=utf-8", b"a/b\r\nx: 1"]))
@example(b"text/plain; charset=utf-8 ")  # a media type, but not a field value (edge space)
@example(b"text/plain\n;a=b")
def test_content_type_is_sent_as_its_rule_says_the_first_time_and_the_next(raw: bytes) -> None:
    """The content-type check is kept per value (headers._CONTENT_TYPES): the second record with
    a value gets what the rule gives, as the first did."""
    import re

    text = raw.decode("ascii", "replace")
    safe = valid_field_value(raw) and re.fullmatch(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+/[!#$%&'*+.^_`|~0-9A-Za-z-]+(\s*;[\x20-\x7e\t]*)?", text)
    for _ in range(2):
        headers, rejected = build([("content-type", raw)])
        assert headers["content-type"] == (text if safe else "application/octet-stream")
        assert rejected == ([] if safe else ["content-type"])


def _baggage(record_headers: list[tuple[str, bytes]]) -> tuple[str | None, list[str], list[str]]:
    notes: list[str] = []
    headers, rejected = build_headers(
        topic="t", partition=1, offset=2, timestamp=3, key=None, record_headers=record_headers,
        forwarded=FORWARDED, notes=notes,
    )
    return headers.get("baggage"), rejected, notes


def test_baggage_that_is_not_a_field_value_is_re_serialized_with_its_tenant() -> None:
    """The leak: `tenant=t1 ` (as producers send it) or a non-ASCII member elsewhere used to drop
    the whole header, so the app's next hop routed a sandbox tenant as baseline."""
    assert _baggage([("baggage", b"tenant=t1 ")]) == ("tenant=t1", [], ["re-serialized: whitespace at the ends or empty members removed"])
    sent, rejected, notes = _baggage([("baggage", " user=a, note=café, tenant=t1 ".encode())])
    assert sent == "user=a,tenant=t1" and rejected == ["baggage"]
    assert notes == ["re-serialized: invalid members or properties left out: 'note'"]
    assert _baggage([("baggage", b"tenant=t1;p=x, a=1;q")]) == (
        "tenant=t1,a=1;q", [], ["re-serialized: properties of 'tenant' removed"])
    assert _baggage([("baggage", b"tenant=t1, a = 1")]) == ("tenant=t1, a = 1", [], [])  # valid: as is


def test_several_baggage_headers_are_forwarded_as_one() -> None:
    sent, rejected, notes = _baggage([("baggage", b"tenant=1"), ("traceparent", b"00-a-b-01"), ("Baggage", b"tenant=2")])
    assert (sent, rejected, notes) == ("tenant=1,tenant=2", [], [])


def test_baggage_over_the_limits_is_not_forwarded_and_counted() -> None:
    sent, rejected, notes = _baggage([("baggage", b"tenant=1," + b"x=" + b"y" * 9000)])
    assert sent is None and rejected == ["baggage"] and "W3C limits" in notes[0]
