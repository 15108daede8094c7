"""Routes-topic records: encoding, decoding, RFC 3339 times, per-tenant effective-time order."""

from __future__ import annotations

import json
from types import MappingProxyType

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.errors import RouteError
from proxy.routes.records import (
    EffectiveTimes,
    RouteRecord,
    decode_record,
    encode_value,
    format_rfc3339,
    parse_rfc3339,
    record_from_api,
)

names = st.from_regex(r"\A[a-z0-9]([-a-z0-9]{0,10}[a-z0-9])?\Z")
tenants = st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=40)
times = st.integers(min_value=0, max_value=253402300799999)  # up to 9999-12-31


@given(times)
def test_rfc3339_round_trip(ms: int) -> None:
    text = format_rfc3339(ms)
    assert text.endswith("Z") and len(text) == 24
    assert parse_rfc3339(text) == ms


def test_rfc3339_offsets_and_fractions() -> None:
    assert parse_rfc3339("1970-01-01T01:00:00.5+01:00") == 500
    assert parse_rfc3339("2026-11-21t10:51:27.123456z") == parse_rfc3339("2026-11-21T10:51:27.123Z")
    for bad in ("2026-11-21", "2026-11-21T10:51:27", "yesterday", 17, None, "2026-13-01T00:00:00Z"):
        with pytest.raises(RouteError):
            parse_rfc3339(bad)


@given(tenants, st.dictionaries(names, names, min_size=1, max_size=5), times, st.integers(0, 2**62))
def test_encode_decode_round_trip(tenant: str, routes: dict[str, str], ms: int, offset: int) -> None:
    value = encode_value(tenant, routes, ms)
    assert "version" not in json.loads(value)  # the offset is the version: readers add it
    record = decode_record(tenant.encode(), value, offset, 0)
    assert record == RouteRecord(tenant, MappingProxyType(routes), offset, ms)
    api = record.to_api()
    assert api == {"tenant": tenant, "routes": routes, "version": offset, "effective_from": format_rfc3339(ms)}
    assert record_from_api(record.to_api(include_deleted=True)) == record


def test_deletion_is_a_value_with_its_time_and_becomes_an_empty_route() -> None:
    value = encode_value("123", {"svc": "pr-1"}, 1_000, deleted=True)
    assert json.loads(value) == {
        "tenant": "123",
        "routes": {},
        "deleted": True,
        "effective_from": "1970-01-01T00:00:01.000Z",
    }
    record = decode_record(b"123", value, 7, 999_999)
    assert record.deleted and record.effective_from_ms == 1_000 and record.version == 7
    route = record.to_route()
    assert route.deleted and route.effective_from_ms == 1_000 and route.version == 7


def test_tombstone_is_a_deletion_at_the_record_timestamp() -> None:
    record = decode_record(b"123", None, 3, 42_000)
    assert record.deleted and record.effective_from_ms == 42_000


def test_empty_routes_read_as_deletion() -> None:
    value = json.dumps({"tenant": "t", "routes": {}, "effective_from": format_rfc3339(5)}).encode()
    assert decode_record(b"t", value, 0, 0).deleted


@pytest.mark.parametrize(
    ("key", "value", "problem"),
    [
        (None, b"{}", "no key"),
        (b"\xff", b"{}", "not UTF-8"),
        (b"a b", b"{}", "invalid"),
        (b"t", b"not json", "not JSON"),
        (b"t", b"[1]", "JSON object"),
        (b"t", b'{"tenant":"u","routes":{"a":"b"},"effective_from":"1970-01-01T00:00:00Z"}', "key is 't'"),
        (b"t", b'{"tenant":"t","routes":{"A":"b"},"effective_from":"1970-01-01T00:00:00Z"}', "service name"),
        (b"t", b'{"tenant":"t","routes":{"a":1},"effective_from":"1970-01-01T00:00:00Z"}', "must be a string"),
        (b"t", b'{"tenant":"t","routes":["a"],"effective_from":"1970-01-01T00:00:00Z"}', "must be an object"),
        (b"t", b'{"tenant":"t","routes":{"a":"b"}}', "RFC 3339"),
        (b"t", b'{"tenant":"t","routes":{},"deleted":"yes","effective_from":"1970-01-01T00:00:00Z"}', "deleted"),
    ],
)
def test_bad_records_are_refused_with_a_reason(key: bytes | None, value: bytes, problem: str) -> None:
    with pytest.raises(RouteError, match=problem):
        decode_record(key, value, 11, 0)


@given(st.binary(max_size=200), st.one_of(st.none(), st.binary(max_size=400)))
def test_decoding_never_crashes(key: bytes, value: bytes | None) -> None:
    try:
        decode_record(key, value, 0, 0)
    except RouteError:
        pass


@pytest.mark.parametrize(
    "body",
    [
        [],
        {"tenant": 1, "routes": {}, "version": 0, "effective_from": "1970-01-01T00:00:00Z"},
        {"tenant": "t", "routes": {}, "version": -1, "effective_from": "1970-01-01T00:00:00Z"},
        {"tenant": "t", "routes": {}, "version": True, "effective_from": "1970-01-01T00:00:00Z"},
        {"tenant": "t", "routes": {}, "version": 1, "effective_from": "soon"},
    ],
)
def test_bad_api_records_are_refused(body: object) -> None:
    with pytest.raises(RouteError):
        record_from_api(body)


def test_effective_times_strictly_increase_per_tenant_in_topic_order() -> None:
    times = EffectiveTimes()
    first = times.adjust(RouteRecord("t", MappingProxyType({"a": "b"}), 0, 1_000))
    # A later write stamped earlier (a replica with a slow clock) moves just after the previous.
    second = times.adjust(RouteRecord("t", MappingProxyType({"a": "c"}), 1, 900))
    same = times.adjust(RouteRecord("t", MappingProxyType({}), 2, 1_001, deleted=True))
    other = times.adjust(RouteRecord("u", MappingProxyType({"a": "b"}), 3, 5))
    assert [first.effective_from_ms, second.effective_from_ms, same.effective_from_ms] == [1_000, 1_001, 1_002]
    assert other.effective_from_ms == 5
    assert times.next_for("t", 500) == 1_003 and times.next_for("t", 9_999) == 9_999
    assert times.next_for("new", 42) == 42
