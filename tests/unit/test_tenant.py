"""Tenant extraction follows the W3C Baggage specification: a conformance corpus proves the fast
path equal to the reference reading, and records where OpenTelemetry Python reads otherwise."""

from __future__ import annotations

from urllib.parse import quote, quote_plus

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry import baggage as otel_baggage
from opentelemetry.baggage.propagation import W3CBaggagePropagator
from opentelemetry.context import Context

from proxy.routing.tenant import CACHE_BYTES, CACHE_SIZE, TenantExtractor, TenantLookup, baggage_value

# -- The conformance corpus: header, tenant (the spec's reading), and why -------------------------
#
# The cases that broke mixed-language systems, the specification's own examples, and the rules it
# leaves to us. Each is checked on the reference and on the whole extractor (fast path or not).

CORPUS: list[tuple[bytes, str | None, str]] = [
    (b"tenant=t1", "t1", "plain"),
    (b"user=7, tenant=123, other=x", "123", "among other members"),
    (b"tenant=t1 ", "t1", "trailing blank (producers send headers as given)"),
    (b" user=a, tenant=t1 ", "t1", "blanks at both ends"),
    (b"\t tenant\t=\tabc\t", "abc", "tabs around key, '=' and value"),
    ("note=café, tenant=t1".encode(), "t1", "a non-ASCII member elsewhere is ignored alone"),
    (b"note=\xff\xfe, tenant=t1", "t1", "so is a member that is not UTF-8"),
    (b"tenant=t1;prop=x", "t1", "the value ends at the first ';' (Java, JS, Go, .NET, W3C)"),
    (b"tenant=t1 ; prop = x ; flag", "t1", "properties with blanks"),
    (b"tenant=t1;bad prop", "t1", "an invalid property does not cost the member its value"),
    (b"tenant=t%31", "t1", "values are percent-decoded"),
    (b"tenant=Am%C3%A9lie", "Amélie", "UTF-8 escapes (the spec's example)"),
    (b"tenant=%ff", "\ufffd", "escapes that are not UTF-8 decode to U+FFFD"),
    (b"tenant=a+b", "a+b", "'+' is a plus sign (RFC 3986), not a space"),
    (b"tenant=%2", "%2", "a broken escape is kept as written"),
    (b"tenant=a=b", "a=b", "only the first '=' splits key and value"),
    (b"tenant=a/b:c@d?e", "a/b:c@d?e", "'/' ':' '@' '?' are baggage-octets"),
    (b"tenant=1,tenant=2", "2", "duplicate keys: the last wins (every OpenTelemetry SDK)"),
    (b"tenant=1,tenant=a b", "1", "an invalid duplicate is ignored, the valid one stays"),
    (b"tenant=1,tenant=", None, "the last is empty: no tenant"),
    (b"tenant=a, ,,tenant=b,", "b", "blank members are not members"),
    (b"ten%61nt=x", None, "keys are tokens, not decoded: 'ten%61nt' is another key"),
    (b"TENANT=x", None, "keys are case-sensitive"),
    (b"tenant=", None, "an empty value is no tenant"),
    (b"user=1", None, "no member of the key"),
    (b"", None, "an empty header"),
    (b"serverNode=DF%2028,tenant=x,isProduction=false", "x", "the spec's example, with a tenant"),
    (b"tenant=a%20", "a ", "a decoded blank is part of the value (only raw blanks are OWS)"),
]

# Read as no tenant, with a problem the route filter turns into the decision's reason.
PROBLEMS: list[tuple[bytes, str, str]] = [
    (b"tenant=a b", "tenant_invalid", "a raw blank inside the value"),
    ("tenant=café".encode(), "tenant_invalid", "non-ASCII must be percent-encoded"),
    (b"tenant=\"q\"", "tenant_invalid", "DQUOTE is not a baggage-octet"),
    (b"tenant", "tenant_invalid", "no '='"),
    (b"tenant=t1," + b"x=" + b"y" * 9000, "baggage_too_large", "over 8192 bytes: no baggage at all"),
    (",".join(["tenant=t1", *(f"k{i}=v" for i in range(180))]).encode(), "baggage_too_large",
     "over 180 members: no baggage at all"),
]


@pytest.mark.parametrize(("raw", "tenant", "why"), CORPUS)
def test_corpus(raw: bytes, tenant: str | None, why: str) -> None:
    extractor = TenantExtractor()
    assert extractor._parse_reference(raw) == TenantLookup(tenant), why
    assert extractor.from_baggage(raw) == TenantLookup(tenant), why
    _agree(extractor, raw)


@pytest.mark.parametrize(("raw", "problem", "why"), PROBLEMS)
def test_corpus_problems(raw: bytes, problem: str, why: str) -> None:
    extractor = TenantExtractor()
    assert extractor.from_baggage(raw) == TenantLookup(None, problem), why
    _agree(extractor, raw)


def test_two_baggage_headers_are_one_baggage_string() -> None:
    """Several ``baggage`` headers on a record are joined in order, as the specification says
    of HTTP: the later header's member of the key wins, like a later member of one header."""
    extractor = TenantExtractor()
    assert baggage_value([("Baggage", b"tenant=1"), ("x", b"y"), ("baggage", b"tenant=2")]) == b"tenant=1,tenant=2"
    assert extractor.from_headers([("Baggage", b"tenant=1"), ("baggage", b"tenant=2")]).tenant == "2"
    assert extractor.from_headers([("baggage", b"tenant=1"), ("baggage", b"user=2")]).tenant == "1"
    assert extractor.from_headers([("baggage", None), ("baggage", b"tenant=1")]).tenant == "1"  # type: ignore[list-item]
    assert extractor.from_headers([]).tenant is None
    assert extractor.from_headers([("traceparent", b"00-x")]).tenant is None


def test_custom_key_and_a_key_that_is_not_a_token() -> None:
    assert TenantExtractor("routing-key").from_baggage(b"routing-key=a%2Fb%20c").tenant == "a/b c"
    with pytest.raises(ValueError, match="not a W3C baggage key"):
        TenantExtractor("ten ant")
    with pytest.raises(AttributeError):
        TenantExtractor().tenant_key = "user"  # type: ignore[misc]


# -- Where OpenTelemetry Python reads otherwise ----------------------------------------------------
#
# Its W3CBaggagePropagator (opentelemetry-api) keeps properties inside the value, decodes keys and
# values with unquote_plus ('+' is a space), strips any Unicode whitespace after decoding, drops a
# whole header over 8192 bytes but reads the first 180 members of a longer list, and only reads
# the first of several headers (its getters return the first). We follow the specification, as
# OpenTelemetry Java, JavaScript, Go and .NET do: otherwise a Node or Java producer's
# ``tenant=t1;p=x`` would be routed as another tenant than every other hop routes it. The
# recorded answers are the real propagator's: an upgrade that changes them fails here.

DIFFERENCES: list[tuple[bytes, str | None, str | None, str]] = [
    (b"tenant=t1;prop=x", "t1", "t1;prop=x", "properties kept in the value"),
    (b"tenant=t1 ;prop=x", "t1", "t1 ;prop=x", "properties, and the blank before them"),
    (b"tenant=a+b", "a+b", "a b", "'+' decoded to a space (form encoding, not RFC 3986)"),
    (b"ten%61nt=x", None, "x", "keys percent-decoded"),
    (b"+tenant=x", None, "x", "'+' in a key decoded to a space, then stripped"),
    (b"tenant=a%0A", "a\n", "a", "decoded whitespace stripped"),
    (b"tenant=%20", " ", None, "a decoded blank stripped away to nothing"),
    (b"tenant=t1;bad prop", "t1", None, "an invalid property makes the whole member invalid"),
]


def _otel_python(raw: bytes) -> str | None:
    context = W3CBaggagePropagator().extract({"baggage": raw.decode()}, context=Context())
    value = otel_baggage.get_baggage("tenant", context)
    return None if value in (None, "") else str(value)


@pytest.mark.parametrize(("raw", "ours", "otel_python", "why"), DIFFERENCES)
def test_where_opentelemetry_python_differs(raw: bytes, ours: str | None, otel_python: str | None, why: str) -> None:
    assert TenantExtractor().from_baggage(raw).tenant == ours, why
    assert _otel_python(raw) == otel_python, why


@settings(max_examples=1000)
@given(st.text(st.characters(codec="ascii", categories=["L", "N"]), min_size=1, max_size=32))
def test_what_opentelemetry_python_writes_we_read(tenant: str) -> None:
    """Tenant ids as SDKs write them (letters and digits): OpenTelemetry Python's inject, read by
    us, gives the same tenant. (A tenant with a space would come back with '+': Python writes
    spaces as '+', which the specification reads as a plus sign.)"""
    carrier: dict[str, str] = {}
    W3CBaggagePropagator().inject(carrier, context=otel_baggage.set_baggage("tenant", tenant, Context()))
    assert TenantExtractor().from_baggage(carrier["baggage"].encode()).tenant == tenant


@settings(max_examples=2000)
@given(st.binary(max_size=300))
def test_any_bytes_give_a_tenant_or_a_reason_never_a_crash(raw: bytes) -> None:
    lookup = TenantExtractor().from_headers([("baggage", raw)])
    assert lookup.problem in (None, "tenant_invalid", "baggage_too_large")
    assert lookup.tenant is None or lookup.problem is None


def test_cache_is_bounded() -> None:
    extractor = TenantExtractor()
    for i in range(CACHE_SIZE + 10):
        assert extractor.from_baggage(f"tenant={i}".encode()).tenant == str(i)
    assert len(extractor) <= CACHE_SIZE


def test_cache_is_bounded_in_bytes() -> None:
    extractor = TenantExtractor()
    for i in range(1000):
        assert extractor.from_baggage(f"tenant={i},pad={'x' * 8000}".encode()).tenant == str(i)
    cached = [*extractor._cache, *extractor._old]
    assert sum(len(raw) for raw in cached) <= CACHE_BYTES + 8192


def test_active_tenants_stay_cached_while_a_flood_passes() -> None:
    """A few busy tenants among many one-off headers: the busy ones are parsed once."""
    parses = 0

    class Counting(TenantExtractor):
        __slots__ = ()

        def _parse(self, raw: bytes) -> TenantLookup:
            nonlocal parses
            parses += 1
            return super()._parse(raw)

    extractor = Counting()
    active = [f"tenant=busy-{i}".encode() for i in range(100)]
    for n in range(20 * CACHE_SIZE):
        extractor.from_baggage(active[n % len(active)])
        extractor.from_baggage(f"tenant=once-{n}".encode())
    assert parses == len(active) + 20 * CACHE_SIZE


# -- The fast path of a cache miss equals the reference -------------------------------------------
#
# TenantExtractor._parse tries _parse_fast (a subset of headers) before _parse_reference (the
# specification's reading, proxy.routing.baggage). The fast path must give the reference's answer
# for every header it accepts, and decline (None) the rest. The property tests call both
# directly: arbitrary bytes, arbitrary text, and generated realistic headers that mix members
# inside the subset with every feature outside it.

KEYS = ("tenant", "routing-key", "t")


def _agree(extractor: TenantExtractor, raw: bytes) -> bool:
    """Assert the fast path (when it answers) and _parse equal the reference; say whether the
    fast path answered."""
    expected = extractor._parse_reference(raw)
    fast = extractor._parse_fast(raw)
    if fast is not None:
        assert fast == expected, (raw, fast, expected)
    assert extractor._parse(raw) == expected
    return fast is not None


@settings(max_examples=3000)
@given(st.binary(max_size=300), st.sampled_from(KEYS))
def test_fast_path_agrees_on_any_bytes(raw: bytes, key: str) -> None:
    _agree(TenantExtractor(key), raw)


# Bytes that matter to either parser, glued at random: far more likely than uniform bytes to form
# members, hit the key, and straddle the subset's edges.
_TOKENS = (
    b"tenant", b"routing-key", b"t", b"=", b"==", b",", b",,", b" ", b"\t", b"%", b"%20", b"%74",
    b"%2C", b"%ff", b"%C3%A9", b"+", b";", b";p=1", b'"', b"\\", b"/", b"a", b"0", b"-", b"\x00",
    b"\x1c", b"\x7f", b"\n", b"\xc3\xa9", b"\xff", b"\xe2\x80\xa8", b"\xc2\xa0",
)


@settings(max_examples=1500)
@given(st.lists(st.sampled_from(_TOKENS), max_size=24).map(b"".join), st.sampled_from(KEYS))
def test_fast_path_agrees_on_glued_tokens(raw: bytes, key: str) -> None:
    _agree(TenantExtractor(key), raw)


@settings(max_examples=3000)
@given(st.text(max_size=200), st.sampled_from(KEYS))
def test_fast_path_agrees_on_any_text(text: str, key: str) -> None:
    _agree(TenantExtractor(key), text.encode("utf-8", "surrogatepass"))


# Text over the characters that matter: printable ASCII, blanks and other whitespace (which
# are not OWS), controls, non-ASCII.
_BAGGAGE_ALPHABET = st.sampled_from(
    [chr(c) for c in range(0x20, 0x7F)]
    + list("\t\n\r\x0b\x0c\x1c\x1f\x00\x7f\x85\xa0é\u2028\u3000\ufeff")
)


@settings(max_examples=2000)
@given(st.text(_BAGGAGE_ALPHABET, max_size=120), st.sampled_from(KEYS))
def test_fast_path_agrees_on_baggage_like_text(text: str, key: str) -> None:
    _agree(TenantExtractor(key), text.encode())


def _text(alphabet: str, min_size: int = 0, max_size: int = 12) -> st.SearchStrategy[str]:
    """Text over ``alphabet``, drawn as one byte string (st.text draws each character apart,
    which made these tests several times slower)."""
    return st.binary(min_size=min_size, max_size=max_size).map(
        lambda b: "".join(alphabet[x % len(alphabet)] for x in b))


_BLANKS = st.sampled_from(["", "", "", " ", "\t", "  ", " \t "])
_PRINTABLE = _text("".join(chr(c) for c in range(0x20, 0x7F)))
_KEY_CHARS = "!#$&'*-.0123456789ABCXYZ^_`abcxyz|~"

# A member value: plain tenant ids, any printable ASCII, percent-escapes of any text (quote and
# quote_plus, so '+' too), broken escapes; then optional properties.
_VALUES = st.tuples(
    st.one_of(
        _text("abcdefxyz0123456789-", min_size=1, max_size=16),
        _text(_KEY_CHARS + "=/:?@[]{}()<>"),
        _PRINTABLE,
        st.text(max_size=8).map(lambda s: quote(s, safe="")),
        st.text(max_size=8).map(quote_plus),
        st.sampled_from(
            ["", "%", "%2", "%zz", "%ff", "%C3", "%C3%A9", "a%00", "%20", "+", "a+b", "%2B"]),
    ),
    st.lists(
        st.sampled_from([";p=1", ";p", "; p = 1", " ;p=1", ";", ";p=a b", ";=1", ';p="x"']),
        max_size=2),
).map(lambda vp: vp[0] + "".join(vp[1]))


def _join(separated: list[tuple[str, str]]) -> str:
    """Members joined by their separators (the first member's separator unused)."""
    joined = "".join(sep + member for sep, member in separated)
    return joined[len(separated[0][0]) if separated else 0:]


def _pair(blank: st.SearchStrategy[str], name: st.SearchStrategy[str],
          value: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    """``name=value`` with blanks around each."""
    return st.tuples(blank, name, blank, blank, value, blank).map(
        lambda t: f"{t[0]}{t[1]}{t[2]}={t[3]}{t[4]}{t[5]}")


def _realistic_headers(key: str) -> st.SearchStrategy[str]:
    """Several members, the key absent, present or repeated, blanks around '=' and ',', empty
    and '='-less members among them. Names: the key as is, the key disguised (escapes, '+', case,
    blanks, escaped whitespace), or another name."""
    names = st.one_of(
        st.just(key),
        st.sampled_from([
            key.upper(), key[:-1] + "%" + format(ord(key[-1]), "02X"), "+" + key, key + "+",
            key + "%20", "%20" + key, key + "%0A", key + "%E2%80%A8", key + "x", key[:-1],
            "x" + key,
            key + ";", key + "/", '"' + key + '"',
        ]),
        _text(_KEY_CHARS, min_size=1, max_size=8),
        _PRINTABLE,
    )

    member = st.one_of(
        _pair(_BLANKS, names, _VALUES), _pair(_BLANKS, st.just(key), _VALUES), names, _BLANKS)
    separator = st.tuples(_BLANKS, _BLANKS).map(lambda t: f"{t[0]},{t[1]}")
    return st.lists(st.tuples(separator, member), max_size=6).map(_join)


_REALISTIC = {key: _realistic_headers(key) for key in KEYS}


@settings(max_examples=3000)
@given(st.one_of([st.tuples(st.just(key), _REALISTIC[key]) for key in KEYS]))
def test_fast_path_agrees_on_realistic_headers(case: tuple[str, str]) -> None:
    key, header = case
    _agree(TenantExtractor(key), header.encode())


def _subset_headers(key: str) -> st.SearchStrategy[str]:
    """Headers inside the fast path's subset only: the key present, absent or repeated, blanks
    around '=' and ',', values of every subset character (so blanks inside, which it declines)."""
    value_chars = "".join(chr(c) for c in range(0x21, 0x7F) if chr(c) not in '"%;\\,')
    name = st.one_of(st.just(key), _text(_KEY_CHARS + "/:@", max_size=6))
    value = st.one_of(_text(value_chars), _text(value_chars + " \t", max_size=4), _text(value_chars + ";", max_size=8))
    blank = st.sampled_from(["", " ", "\t", " \t"])
    return st.lists(_pair(blank, name, value), max_size=6).map(",".join)


_SUBSET = {key: _subset_headers(key) for key in KEYS}


@settings(max_examples=800)
@given(st.one_of([st.tuples(st.just(key), _SUBSET[key]) for key in KEYS]))
def test_fast_path_answers_inside_its_subset(case: tuple[str, str]) -> None:
    """Not a vacuous proof: inside the subset the fast path answers, except for a value of the key
    with an inner blank (an invalid member, left to the reference)."""
    key, header = case
    answered = _agree(TenantExtractor(key), header.encode())
    inner_blank = any(
        name.strip(" \t") == key and any(c in value.partition(";")[0].strip(" \t") for c in " \t")
        for name, _, value in (member.partition("=") for member in header.split(","))
    )
    assert answered or inner_blank


# Bytes just outside the subset (or its separators), and any byte.
_ODD_BYTES = st.one_of(
    st.sampled_from(list(b'"%+;\\,= \t\n\r\x00\x0b\x0c\x1c\x1f\x7f\x80\xa0\xc3\xff')),
    st.integers(0, 255),
)


@settings(max_examples=1500)
@given(
    st.one_of([st.tuples(st.just(key), _SUBSET[key]) for key in KEYS]),
    st.lists(st.tuples(st.integers(0, 1000), _ODD_BYTES), min_size=1, max_size=2),
)
def test_fast_path_agrees_one_byte_off_its_subset(
    case: tuple[str, str], inserts: list[tuple[int, int]],
) -> None:
    """A header of the subset with a byte or two put in anywhere, most often just outside the
    subset: the fast path must decline what it cannot prove (e.g. a control character in the
    key's value, which makes the member invalid)."""
    key, header = case
    raw = header.encode()
    for position, byte in inserts:
        position %= len(raw) + 1
        raw = raw[:position] + bytes([byte]) + raw[position:]
    _agree(TenantExtractor(key), raw)


def test_fast_path_agrees_on_every_single_byte_change() -> None:
    """Exhaustive: each of the 256 bytes put in at, and put in place of, every position of a few
    headers of the subset (the key's name and value, blanks, '=', ',', another member)."""
    extractor = TenantExtractor()
    answered = 0
    for base in [b"tenant=ab,x=1", b" tenant = ab , x = 1 ", b"x=1,tenant=a=b,tenant=cd"]:
        for position in range(len(base) + 1):
            for byte in range(256):
                changed = [base[:position] + bytes([byte]) + base[position:]]
                if position < len(base):
                    changed.append(base[:position] + bytes([byte]) + base[position + 1:])
                answered += sum(_agree(extractor, raw) for raw in changed)
    assert answered > 5000  # the fast path took a good share of them (10,769 of 30,464)


def _fast_and_slow(raw: bytes, key: str = "tenant") -> tuple[TenantLookup | None, TenantLookup]:
    extractor = TenantExtractor(key)
    _agree(extractor, raw)
    return extractor._parse_fast(raw), extractor._parse_reference(raw)


def test_fast_path_takes_what_sdks_write() -> None:
    for raw, tenant in [
        (b"tenant=tenant-000001,deployment.environment=staging", "tenant-000001"),
        (b"user=7, tenant = 123 , other=x", "123"),
        (b"\t tenant\t=\tabc\t", "abc"),
        (b"tenant=a=b", "a=b"),
        (b"tenant=t1;prop=x;flag", "t1"),  # properties: the value ends at ';'
        (b"tenant=a+b", "a+b"),
        (b"tenant=a,tenant=b", "b"),
        (b"tenant=a, ,,tenant=b,", "b"),
        (b"ten/ant=b,tenant=a", "a"),
        (b"a;tenant=b,tenant=a", "a"),  # 'a;tenant=b' is an invalid member, not the key
    ]:
        assert _fast_and_slow(raw) == (TenantLookup(tenant), TenantLookup(tenant)), raw
    for raw in [b"user=1", b"tenant=", b"tenant=a,tenant=", b"tenant= \t", b"TENANT=a",
                b"tenants=a", b"=a", b",", b"tenant;p=x"]:
        assert _fast_and_slow(raw) == (TenantLookup(None), TenantLookup(None)), raw


def test_fast_path_leaves_to_the_reference_what_it_cannot_prove() -> None:
    for raw, lookup in [
        (b"tenant=t%31", TenantLookup("t1")),  # escapes
        (b"tenan%74=a", TenantLookup(None)),  # an escaped key is another key
        (b"tenant=a b", TenantLookup(None, "tenant_invalid")),  # inner blank
        (b"tenant=a,tenant=b c", TenantLookup("a")),
        (b"tenant", TenantLookup(None, "tenant_invalid")),  # no '='
        ("tenant=a,x=é".encode(), TenantLookup("a")),  # non-ASCII elsewhere
        (b"tenant=a\x1c", TenantLookup(None, "tenant_invalid")),  # a control character
        (b"x=" + b"y" * 9000 + b",tenant=a", TenantLookup(None, "baggage_too_large")),
    ]:
        assert _fast_and_slow(raw) == (None, lookup), raw


def test_fast_path_respects_the_member_limit() -> None:
    """180 members at most: the fast path takes headers of at most 179 commas, declines the rest,
    and the reference reads a longer list as no baggage (blank members do not count)."""
    members = [f"k{i}=v" for i in range(179)]
    within = ",".join([*members, "tenant=a"]).encode()
    assert _fast_and_slow(within) == (TenantLookup("a"), TenantLookup("a"))
    over = ",".join([*members, "bad", "tenant=a"]).encode()
    assert _fast_and_slow(over) == (None, TenantLookup(None, "baggage_too_large"))
    blanks = b"," * 300 + b"tenant=a"
    assert _fast_and_slow(blanks) == (None, TenantLookup("a"))
