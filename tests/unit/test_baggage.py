"""The reference reading of the W3C ``baggage`` header (proxy.routing.baggage), checked against the
specification's own examples and test suite, and the header a delivery forwards."""

from __future__ import annotations

from urllib.parse import quote

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.delivery.headers import valid_field_value
from proxy.routing import baggage
from proxy.routing.baggage import MAX_BYTES, MAX_MEMBERS, combine, encode_value, for_delivery, parse


def _entries(raw: bytes) -> list[tuple[str, str]]:
    return [(m.key, m.value) for m in parse(raw).members]


# -- The specification's examples (HTTP_HEADER_FORMAT.md) ------------------------------------------


def test_spec_example_three_members_with_properties() -> None:
    raw = b"key1=value1;property1;property2, key2 = value2, key3=value3; propertyKey=propertyValue"
    parsed = parse(raw)
    assert [(m.key, m.value) for m in parsed.members] == [("key1", "value1"), ("key2", "value2"), ("key3", "value3")]
    assert [m.text for m in parsed.members] == [
        b"key1=value1;property1;property2", b"key2=value2", b"key3=value3;propertyKey=propertyValue"]
    assert parsed.exact and len(raw) == 86


def test_spec_examples_percent_encoding_and_several_headers() -> None:
    expected = [("userId", "alice"), ("serverNode", "DF 28"), ("isProduction", "false")]
    assert _entries(b"userId=alice,serverNode=DF%2028,isProduction=false") == expected
    assert _entries(b"userId=Am%C3%A9lie,serverNode=DF%2028,isProduction=false")[0] == ("userId", "Amélie")
    # Several headers are one baggage-string, and names and values may have blanks around them.
    assert _entries(combine([b"userId=alice", b"serverNode=DF%2028,isProduction=false"])) == expected
    assert _entries(combine([b"userId =   alice", b"serverNode = DF%2028, isProduction = false"])) == expected


# -- The specification's test suite (test/test_baggage.py), case by case --------------------------

_ODD = "\t \"';=asdf!@#$%^&*()"


@pytest.mark.parametrize(
    ("raw", "members"),
    [
        (b"SomeKey=SomeValue", [("SomeKey", "SomeValue", b"SomeKey=SomeValue")]),
        (b"SomeKey=SomeValue;SomeProp,SomeKey2=SomeValue2;ValueProp=PropVal",
         [("SomeKey", "SomeValue", b"SomeKey=SomeValue;SomeProp"),
          ("SomeKey2", "SomeValue2", b"SomeKey2=SomeValue2;ValueProp=PropVal")]),
        (b"SomeKey \t = \t SomeValue \t ; \t SomeProp \t , \t SomeKey2 \t = \t SomeValue2 \t ; \t ValueProp \t = \t PropVal",
         [("SomeKey", "SomeValue", b"SomeKey=SomeValue;SomeProp"),
          ("SomeKey2", "SomeValue2", b"SomeKey2=SomeValue2;ValueProp=PropVal")]),
        (b"SomeKey=SomeValue=equals", [("SomeKey", "SomeValue=equals", b"SomeKey=SomeValue=equals")]),
        (f"SomeKey={quote(_ODD)}".encode(), [("SomeKey", _ODD, f"SomeKey={quote(_ODD)}".encode())]),
        (f"SomeKey \t = \t {quote(_ODD)} \t ".encode(), [("SomeKey", _ODD, f"SomeKey={quote(_ODD)}".encode())]),
        (b"SomeKey=SomeValue;SomeProp;SomeProp=PropValue;SomeProp=AnotherPropValue",
         [("SomeKey", "SomeValue", b"SomeKey=SomeValue;SomeProp;SomeProp=PropValue;SomeProp=AnotherPropValue")]),
        (b"SomeKey \t = \t SomeValue \t ; \t SomeProp \t ; \t SecondProp \t = \t PropValue",
         [("SomeKey", "SomeValue", b"SomeKey=SomeValue;SomeProp;SecondProp=PropValue")]),
        # An escaped '=' in a property is not a key-value property: the property is one key.
        (b"SomeKey=SomeValue;ValueProp%20%09%20%3D%20%09%20PropVal",
         [("SomeKey", "SomeValue", b"SomeKey=SomeValue;ValueProp%20%09%20%3D%20%09%20PropVal")]),
    ],
)
def test_spec_test_suite(raw: bytes, members: list[tuple[str, str, bytes]]) -> None:
    assert [(m.key, m.value, m.text) for m in parse(raw).members] == members


def test_spec_limits_64_members_and_8192_bytes_are_read_and_forwarded_whole() -> None:
    sixty_four = ",".join(f"key{x}=value" for x in range(64)).encode()
    assert len(parse(sixty_four).members) == 64 and for_delivery(sixty_four, "tenant").header == sixty_four.decode()
    long_entry = b"a=" + b"0123456789" * 819
    assert len(long_entry) == MAX_BYTES and parse(long_entry).members[0].value == "0123456789" * 819
    many = ",".join(f"{x:03d}=0123456789a" for x in range(512)).encode()[: MAX_BYTES - 1] + b"b"
    # The suite's 512 members fit 8192 bytes but not the grammar's 180 members (0*179 more after
    # the first): over our limit, so no baggage, as OpenTelemetry Go reads it (see the module doc).
    assert len(many) == MAX_BYTES and parse(many).too_large
    assert not parse(b",".join(many.split(b",")[:MAX_MEMBERS])).too_large


def test_encode_value_matches_the_spec_suite() -> None:
    assert f"SomeKey={encode_value(_ODD)}" == "SomeKey=%09%20%22'%3B=asdf!@#$%25^&*()"
    assert parse(f"k={encode_value(_ODD)}".encode()).members[0].value == _ODD


# -- The rules the specification leaves to us ------------------------------------------------------


def test_over_the_limits_is_no_baggage_at_all() -> None:
    over_bytes = b"tenant=t1," + b"x=" + b"y" * MAX_BYTES
    over_members = ",".join(["tenant=t1", *(f"k{i}=v" for i in range(MAX_MEMBERS))]).encode()
    for raw in (over_bytes, over_members):
        parsed = parse(raw)
        assert parsed.too_large and parsed.members == () and parsed.get("tenant") is None
        forwarded = for_delivery(raw, "tenant")
        assert forwarded.header is None and forwarded.invalid and "W3C limits" in (forwarded.note or "")
    # Exactly at the member limit is fine; blank members do not count.
    at_limit = ",".join(["tenant=t1", *(f"k{i}=v" for i in range(MAX_MEMBERS - 1))]).encode() + b",,,"
    assert parse(at_limit).get("tenant") == "t1"


def test_invalid_members_are_ignored_one_by_one() -> None:
    parsed = parse("note=café, ten ant=1, noequals, tenant=t1, x=\"q\", y=a b".encode())
    assert _entries(b"a=1") == [("a", "1")]
    assert [(m.key, m.value) for m in parsed.members] == [("tenant", "t1")]
    assert parsed.dropped == (b"note", b"ten ant", b"noequals", b"x", b"y") and not parsed.exact


def test_invalid_properties_are_dropped_the_member_stays() -> None:
    parsed = parse(b"tenant=t1;ok;p=a b;=x;q=1;")
    assert parsed.get("tenant") == "t1"
    assert parsed.members[0].text == b"tenant=t1;ok;q=1"
    assert parsed.dropped == (b";p=a b", b";=x", b";")


def test_keys_are_not_decoded_values_are() -> None:
    assert _entries(b"ten%61nt=x") == [("ten%61nt", "x")]
    assert _entries(b"k=a+b%2Bc%20d") == [("k", "a+b+c d")]  # '+' is a plus sign (RFC 3986)
    assert _entries(b"k=%zz%2") == [("k", "%zz%2")]  # broken escapes kept as written
    assert _entries(b"k=%FF%C3%A9") == [("k", "\ufffdé")]  # not UTF-8: U+FFFD


def test_last_valid_member_of_a_key_wins() -> None:
    assert parse(b"tenant=1,tenant=2").get("tenant") == "2"
    assert parse(b"tenant=1,tenant=a b").get("tenant") == "1"
    assert parse(b"tenant=1,tenant=").get("tenant") == ""


def test_combine_joins_headers_in_order_and_skips_null_values() -> None:
    assert combine([]) is None and combine([None, b""]) is None
    assert combine([b"a=1"]) == b"a=1"
    assert combine([b"tenant=1", None, b"tenant=2"]) == b"tenant=1,tenant=2"


def test_merge_and_with_member() -> None:
    merged = baggage.merge(parse(b"a=1,tenant=t1,b=2"), parse(b"tenant=t2,c=3"))
    assert merged.to_header() == "a=1,b=2,tenant=t2,c=3"
    stamped = baggage.with_member(parse(b"a=1"), "tenant", "x y;z")
    assert stamped.to_header() == "a=1,tenant=x%20y%3Bz" and parse(stamped.to_header().encode()).get("tenant") == "x y;z"
    with pytest.raises(ValueError, match="not a token"):
        baggage.with_member(parse(b""), "ten ant", "x")


# -- What a delivery forwards ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "header", "invalid"),
    [
        (b"tenant=t1", "tenant=t1", False),
        (b"user=a , tenant = t1", "user=a , tenant = t1", False),  # valid: byte for byte
        (b"tenant=t1 ", "tenant=t1", False),
        (b" user=a, tenant=t1 ", "user=a,tenant=t1", False),
        (b"a=1,,tenant=t1,", "a=1,tenant=t1", False),
        ("note=café,tenant=t1".encode(), "tenant=t1", True),
        (b"tenant=t1;prop=x,other=o;p", "tenant=t1,other=o;p", False),  # the tenant's properties go
        (b"tenant=t1\r\nx: y", None, True),  # the only member is invalid: nothing to forward
        (b"user=1", "user=1", False),
    ],
)
def test_for_delivery(raw: bytes, header: str | None, invalid: bool) -> None:
    forwarded = for_delivery(raw, "tenant")
    assert (forwarded.header, forwarded.invalid) == (header, invalid)
    assert (forwarded.note is None) == (header == raw.decode("ascii", "replace"))


_SOUP = st.lists(
    st.sampled_from([
        b"tenant", b"t1", b"=", b",", b";", b" ", b"\t", b"%", b"%31", b"%C3%A9", b"%ff", b"+", b'"',
        b"\\", b"a", b"p", b"\r", b"\n", b"\x00", b"\xc3\xa9", b"\xff", b"x" * 50,
    ]),
    max_size=30,
).map(b"".join)


@settings(max_examples=3000)
@given(st.one_of(st.binary(max_size=200), _SOUP), st.sampled_from(["tenant", "t", "a"]))
def test_forwarded_header_carries_exactly_the_tenant_read(raw: bytes, key: str) -> None:
    """For any bytes: the forwarded header is a safe HTTP field value, valid baggage read the same
    by the reference (every member kept, in order), and gives exactly the tenant read from the
    record (the tenant's properties aside)."""
    parsed = parse(raw)
    forwarded = for_delivery(raw, key)
    if forwarded.header is None:
        assert all(m.key == key and not m.value for m in parsed.members) or not parsed.members
        return
    again = parse(forwarded.header.encode("ascii"))
    assert valid_field_value(forwarded.header.encode("ascii"))
    assert again.exact and again.get(key) == parsed.get(key)
    assert [(m.key, m.value) for m in again.members] == [(m.key, m.value) for m in parsed.members]
    assert for_delivery(forwarded.header.encode("ascii"), key).note is None  # a fixed point


@settings(max_examples=1000)
@given(st.lists(st.tuples(st.from_regex(r"[A-Za-z0-9!#$&'*+.^_`|~-]{1,8}", fullmatch=True), st.text(max_size=12)),
                max_size=8))
def test_any_values_round_trip_through_encode_value(entries: list[tuple[str, str]]) -> None:
    header = ",".join(f"{key}={encode_value(value)}" for key, value in entries).encode("ascii")
    assert _entries(header) == entries
