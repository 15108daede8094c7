"""Tenant extraction agrees with OpenTelemetry's propagator and never crashes on bad headers."""

from __future__ import annotations

from urllib.parse import quote, quote_plus

from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry import baggage
from opentelemetry.baggage.propagation import W3CBaggagePropagator
from opentelemetry.context import Context

from proxy.routing.tenant import CACHE_BYTES, CACHE_SIZE, TenantExtractor, TenantLookup


def test_reads_the_tenant_key_among_other_members() -> None:
    extractor = TenantExtractor()
    lookup = extractor.from_headers([("baggage", b"user=7, tenant=123, other=x")])
    assert lookup.tenant == "123" and lookup.problem is None


def test_member_properties_follow_the_propagator() -> None:
    # OpenTelemetry Python keeps W3C member properties in the value; we agree with it rather
    # than re-parse (DESIGN.md: never a hand parser that disagrees with the propagator).
    lookup = TenantExtractor().from_headers([("baggage", b"tenant=123;prop=1")])
    assert lookup.tenant == "123;prop=1"


def test_custom_key_and_percent_decoding() -> None:
    extractor = TenantExtractor("routing-key")
    assert extractor.from_headers([("baggage", b"routing-key=a%2Fb%20c")]).tenant == "a/b c"


def test_no_baggage_no_tenant_and_empty_value() -> None:
    extractor = TenantExtractor()
    assert extractor.from_headers([]).tenant is None
    assert extractor.from_headers([("traceparent", b"00-x")]).tenant is None
    assert extractor.from_headers([("baggage", b"user=1")]).tenant is None
    assert extractor.from_headers([("baggage", b"tenant=")]).tenant is None


def test_header_name_case_is_ignored_and_first_baggage_wins() -> None:
    extractor = TenantExtractor()
    assert extractor.from_headers([("Baggage", b"tenant=1"), ("baggage", b"tenant=2")]).tenant == "1"


def test_non_utf8_and_oversized_baggage_are_problems_not_crashes() -> None:
    extractor = TenantExtractor()
    assert extractor.from_headers([("baggage", b"tenant=\xff\xfe")]).problem == "baggage_not_utf8"
    big = b"tenant=123," + b"x=" + b"y" * 65536
    lookup = extractor.from_headers([("baggage", big)])
    assert lookup.tenant is None and lookup.problem == "baggage_too_large"


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


def _propagator_tenant(header: str) -> str | None:
    context = W3CBaggagePropagator().extract({"baggage": header}, context=Context())
    value = baggage.get_baggage("tenant", context)
    return None if value in (None, "") else str(value)


@settings(max_examples=2000)
@given(st.text(min_size=1, max_size=64))
def test_round_trip_through_the_propagator(tenant: str) -> None:
    """Whatever tenant an instrumented producer injects, we read back the same."""
    carrier: dict[str, str] = {}
    W3CBaggagePropagator().inject(carrier, context=baggage.set_baggage("tenant", tenant, Context()))
    expected = _propagator_tenant(carrier["baggage"]) if carrier else None
    got = TenantExtractor().from_headers([("baggage", carrier.get("baggage", "").encode())]).tenant
    assert got == expected
    if carrier and tenant.strip() == tenant:
        assert got == tenant


@settings(max_examples=3000)
@given(st.binary(max_size=300))
def test_any_bytes_agree_with_the_propagator_or_are_flagged(raw: bytes) -> None:
    lookup = TenantExtractor().from_headers([("baggage", raw)])
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        assert lookup.tenant is None and lookup.problem == "baggage_not_utf8"
        return
    assert lookup.tenant == (_propagator_tenant(text) if text else None)


# -- The fast path of a cache miss equals the propagator -------------------------------------------
#
# TenantExtractor._parse tries _parse_fast (a strict subset of headers, ~1 us) before
# _parse_propagator (OpenTelemetry's W3CBaggagePropagator, ~10 us). The fast path must give the
# propagator's answer for every header it accepts, and decline (None) the rest. The property tests
# call both directly: arbitrary bytes, arbitrary text, and generated realistic headers that mix
# members inside the subset with every feature outside it.

KEYS = ("tenant", "routing-key", "t")


def _agree(extractor: TenantExtractor, raw: bytes) -> bool:
    """Assert the fast path (when it answers) and _parse equal the propagator; say whether the
    fast path answered."""
    expected = extractor._parse_propagator(raw)
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
# str.strip() removes but the propagator's strip(" \t") does not), controls, non-ASCII.
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
    blanks, escaped whitespace that the propagator's final strip() removes), or another name."""
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
    value_chars = "".join(chr(c) for c in range(0x21, 0x7F) if chr(c) not in '"%+;\\,')
    name = st.one_of(st.just(key), _text(_KEY_CHARS + "/:@", max_size=6))
    value = st.one_of(_text(value_chars), _text(value_chars + " \t", max_size=4))
    blank = st.sampled_from(["", " ", "\t", " \t"])
    return st.lists(_pair(blank, name, value), max_size=6).map(",".join)


_SUBSET = {key: _subset_headers(key) for key in KEYS}


@settings(max_examples=800)
@given(st.one_of([st.tuples(st.just(key), _SUBSET[key]) for key in KEYS]))
def test_fast_path_answers_inside_its_subset(case: tuple[str, str]) -> None:
    """Not a vacuous proof: inside the subset the fast path answers, except for a value of the key
    with an inner blank (invalid; the propagator skips that member and we leave it to it)."""
    key, header = case
    answered = _agree(TenantExtractor(key), header.encode())
    inner_blank = any(
        name.strip(" \t") == key and any(c in value.strip(" \t") for c in " \t")
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
    key's value, which the propagator finds invalid)."""
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
    assert answered > 5000  # the fast path took a good share of them (10,544 of 30,464)


def _fast_and_slow(raw: bytes, key: str = "tenant") -> tuple[TenantLookup | None, TenantLookup]:
    extractor = TenantExtractor(key)
    _agree(extractor, raw)
    return extractor._parse_fast(raw), extractor._parse_propagator(raw)


def test_fast_path_takes_what_sdks_write() -> None:
    for raw, tenant in [
        (b"tenant=tenant-000001,deployment.environment=staging", "tenant-000001"),
        (b"user=7, tenant = 123 , other=x", "123"),
        (b"\t tenant\t=\tabc\t", "abc"),
        (b"tenant=a=b", "a=b"),  # only the first '=' splits
        (b"tenant=a/b:c@d?e", "a/b:c@d?e"),  # '/' is a valid value character, whatever comments say
        (b"tenant=a,tenant=b", "b"),  # the last member wins
        (b"tenant=a,tenant", "a"),  # a member without '=' is skipped
        (b"tenant=a, ,,tenant=b,", "b"),  # empty and blank members are skipped
        (b"ten/ant=b,tenant=a", "a"),  # an invalid member of another name does not matter
    ]:
        assert _fast_and_slow(raw) == (TenantLookup(tenant), TenantLookup(tenant)), raw
    for raw in [b"user=1", b"tenant=", b"tenant=a,tenant=", b"tenant= \t", b"TENANT=a",
                b"tenants=a", b"=a", b","]:
        assert _fast_and_slow(raw) == (TenantLookup(None), TenantLookup(None)), raw


def test_fast_path_leaves_to_the_propagator_what_it_decodes() -> None:
    """Outside the subset the fast path declines; the propagator's answers, some surprising."""
    for raw, tenant in [
        (b"tenan%74=a", "a"),  # names are percent-decoded too
        (b"+tenant=a", "a"),  # '+' is a valid key character, decoded to a space, then stripped
        (b"tenant%20=a", "a"),
        (b"tenant=+a+", "a"),
        (b"tenant=a%20", "a"),
        (b"tenant=a%0A", "a"),  # str.strip() after decoding: any whitespace, not just blanks
        (b"tenant=a%E2%80%A8", "a"),  # even U+2028
        (b"tenant=%ff", "\ufffd"),  # invalid UTF-8 escapes decode to U+FFFD
        (b"tenant=a%00", "a\x00"),  # a NUL in the tenant (the sidecar's header checks see it)
        (b"tenant=%2", "%2"),  # a broken escape is kept as is
        (b"tenant=a;p=1", "a;p=1"),  # properties stay in the value
        (b"tenant=a ;p=1", "a ;p=1"),
        (b"tenant=a,tenant=b c", "a"),  # an invalid value is skipped, the earlier one stays
        (b"tenant=a,x=\xc3\xa9", "a"),  # a non-ASCII member is dropped alone
        (b"x=" + b"y" * 5000 + b",tenant=a", "a"),  # an over-long member is dropped alone
        (b"," * 300 + b"tenant=a", "a"),  # empty members do not count towards the 180
    ]:
        assert _fast_and_slow(raw) == (None, TenantLookup(tenant)), raw
    for raw in [
        b"tenant=\xc3\xa9",  # a non-ASCII member is dropped, not decoded
        b"tenant=%20",  # empty once decoded and stripped
        b"tenant=a\x1c",  # a control character makes the value invalid
        b"tenant%=a",  # '%' is a valid key character; "tenant%" is another key
        b"tenant=" + b"a" * 4090,  # a member over 4096 characters is dropped
    ]:
        assert _fast_and_slow(raw) == (None, TenantLookup(None)), raw


def test_fast_path_respects_the_member_limit() -> None:
    """The propagator reads the first 180 non-empty members (invalid ones count): the fast path
    takes headers of at most 179 commas, and declines the rest."""
    members = [f"k{i}=v" for i in range(179)]
    within = ",".join([*members, "tenant=a"]).encode()
    assert _fast_and_slow(within) == (TenantLookup("a"), TenantLookup("a"))
    over = ",".join([*members, "bad", "tenant=a"]).encode()
    assert _fast_and_slow(over) == (None, TenantLookup(None))


def test_fast_path_only_for_keys_the_propagator_can_match_as_written() -> None:
    # A key that is not a valid W3C key can only be matched through escapes: the propagator's.
    assert _fast_and_slow(b"ten%20ant=x", "ten ant") == (None, TenantLookup("x"))
    assert _fast_and_slow(b"ten ant=x", "ten ant") == (None, TenantLookup(None))
    # '+' and '%' are valid key characters, but written so they decode to something else.
    assert _fast_and_slow(b"a%2Bb=x", "a+b") == (None, TenantLookup("x"))
    assert _fast_and_slow(b"a+b=x", "a+b") == (None, TenantLookup(None))
    assert _fast_and_slow(b"ab=x", "a+b") == (TenantLookup(None), TenantLookup(None))
    # A key changed after construction is not the one checked: the propagator answers.
    extractor = TenantExtractor()
    extractor.tenant_key = "user"
    assert extractor._parse_fast(b"user=1") is None
    assert extractor.from_baggage(b"user=1") == TenantLookup("1")


def test_fast_path_problems_are_the_propagator_paths() -> None:
    assert _fast_and_slow(b"tenant=\xff") == (None, TenantLookup(None, "baggage_not_utf8"))
    too_large = b"tenant=a," + b"x" * 9000
    assert _fast_and_slow(too_large) == (None, TenantLookup(None, "baggage_too_large"))
    assert _fast_and_slow(b"") == (TenantLookup(None), TenantLookup(None))
