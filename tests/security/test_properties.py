"""Property tests (Hypothesis) on what arrives from outside: record headers and route-service input.

Each property runs thousands of generated inputs (``max_examples`` below; 25,000 in all,
a few seconds each). Properties:

- tenant extraction never raises, agrees with OpenTelemetry's propagator, and reads back any
  tenant OpenTelemetry wrote;
- header mapping never emits a name outside the allowlist plus our metadata, never a hop-by-hop,
  framing or credential header, never a value with CR/LF/NUL or non-ASCII, and copies an
  allowlisted header's first valid value unchanged;
- ``--forward-headers`` never admits a name that must not be copied;
- the route service's parsers either return valid values or raise ``RequestError`` (a 4xx),
  never anything else; tokens match only themselves;
- the running route service, over a real socket, answers any request with JSON and a status
  below 500, and nothing without the token changes its routes.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import string
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote, unquote_to_bytes

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry import baggage as otel_baggage
from opentelemetry.baggage.propagation import W3CBaggagePropagator
from opentelemetry.context import Context

from proxy.delivery.headers import (
    CONTEXT_HEADERS,
    NEVER_FORWARDED,
    build_headers,
    check_forward_headers,
    forwarded_header_names,
    never_forwarded,
    valid_field_name,
    valid_field_value,
)
from proxy.errors import RouteError
from proxy.kafka import KafkaConnection
from proxy.routeservice.api import (
    RequestError,
    bearer_token,
    parse_flag,
    parse_put_body,
    parse_since,
    parse_tenant,
    parse_wait,
    token_matches,
)
from proxy.routeservice.server import RouteService, RouteServiceConfig
from proxy.routes.table import NAME_PATTERN
from proxy.routing import baggage
from proxy.routing.tenant import MAX_BAGGAGE_BYTES, TenantExtractor

FAST = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
META = frozenset({"content-type", "kafka-topic", "kafka-partition", "kafka-offset", "kafka-timestamp", "kafka-key"})
TOKEN = "prop-token-5a0c"

# -- generators -----------------------------------------------------------------------------------

token_chars = string.ascii_letters + string.digits + "!#$%&'*+.^_`|~-"
field_names = st.text(alphabet=token_chars, min_size=1, max_size=24)
dangerous_names = st.sampled_from(sorted(NEVER_FORWARDED) + ["kafka-topic", "kafka-key", "ktp-delivery", "proxy-x"])


def name_variants(bases: list[str]) -> list[str]:
    """The names a hostile producer would try for each base: any case, a Unicode look-alike
    (KELVIN SIGN lower-cases to 'k'), a leading space, an appended CR/LF and header."""
    out: list[str] = []
    for base in bases:
        out += [base, base.upper(), base.title(), base.replace("k", "\u212a"), " " + base, base + "\r\nx-injected"]
    return out


def header_names(allowlisted: list[str]) -> st.SearchStrategy[str]:
    """Precomputed variants (cheap to draw, so many examples fit in seconds) or anything."""
    candidates = name_variants(allowlisted + sorted(NEVER_FORWARDED) + ["kafka-topic", "ktp-delivery", "proxy-x"])
    return st.one_of(st.sampled_from(candidates), field_names, st.text(max_size=12))


header_values = st.one_of(
    st.binary(max_size=32),
    st.text(alphabet=string.printable, max_size=32).map(str.encode),
    st.sampled_from([b"", b" lead", b"trail ", b"a\r\nx-injected: 1", b"\x00", b"\xff\xfe", b"tenant=1", b"x" * 9000]),
)

# -- tenant extraction ------------------------------------------------------------------------------

baggage_names = st.sampled_from(["baggage", "Baggage", "BAGGAGE", "bagg\u0430ge", "x-baggage", "tracestate"])
baggage_values = st.one_of(
    header_values,
    st.lists(
        st.tuples(st.text(alphabet=token_chars, min_size=1, max_size=12), st.text(max_size=20)),
        max_size=6,
    ).map(lambda members: ",".join(f"{k}={quote(v)}" for k, v in members).encode()),
    st.text(max_size=40).map(lambda t: f"tenant={t}".encode("utf-8", "surrogatepass")),
    st.integers(min_value=MAX_BAGGAGE_BYTES - 2, max_value=MAX_BAGGAGE_BYTES + 2).map(lambda n: b"tenant=1," + b"x" * n),
)


@settings(FAST, max_examples=4000)
@given(st.lists(st.tuples(baggage_names, baggage_values), max_size=5))
def test_tenant_extraction_never_raises_and_agrees_with_the_reference(headers: list[tuple[str, bytes]]) -> None:
    extractor = TenantExtractor("tenant")
    lookup = extractor.from_headers(headers)
    assert lookup == extractor.from_headers(headers)  # the cache answers the same
    values = [v for n, v in headers if n.lower() == "baggage" and n.isascii()]
    joined = baggage.combine(values)
    if joined is None:
        assert lookup.tenant is None and lookup.problem is None
        return
    parsed = baggage.parse(joined)
    if parsed.too_large:
        assert lookup.problem == "baggage_too_large"
        return
    assert lookup.tenant == (parsed.get("tenant") or None)


@settings(FAST, max_examples=3000)
# OpenTelemetry Python writes a space as '+' (form encoding), which the W3C specification reads
# as a plus sign: a tenant with a space does not survive its propagator (tests/unit/test_tenant.py).
@given(st.text(min_size=1, max_size=64).filter(lambda t: t.strip() == t and " " not in t), st.lists(st.tuples(st.sampled_from(["a", "b", "user"]), st.text(max_size=10)), max_size=3))
def test_a_tenant_written_by_opentelemetry_reads_back(tenant: str, others: list[tuple[str, str]]) -> None:
    context = otel_baggage.set_baggage("tenant", tenant, Context())
    for key, value in others:
        context = otel_baggage.set_baggage(key, value, context)
    carrier: dict[str, str] = {}
    W3CBaggagePropagator().inject(carrier, context=context)
    lookup = TenantExtractor().from_headers([("baggage", carrier["baggage"].encode())])
    assert lookup.tenant == tenant and lookup.problem is None


# -- header mapping ---------------------------------------------------------------------------------


EXTRA_CANDIDATES = ["x-request-id", "x-kind", "x-tenant", "ce-id"]
# Allowlists as a sidecar could be configured: propagators × --forward-headers.
ALLOWLISTS = [
    forwarded_header_names(propagators, extra=extra)
    for propagators in ("tracecontext,baggage", "b3", "b3multi", "")
    for extra in ((), ("x-request-id",), ("x-kind", "x-tenant", "ce-id"))
]
RECORD_HEADERS = st.lists(
    st.tuples(header_names(sorted(set().union(*ALLOWLISTS)) + ["content-type"]), header_values), max_size=12
)


@settings(FAST, max_examples=3000)
@given(st.sampled_from(ALLOWLISTS), RECORD_HEADERS, st.one_of(st.none(), st.binary(max_size=40)))
def test_header_mapping_never_injects_and_never_leaves_the_allowlist(
    allowlist: frozenset[str], record_headers: list[tuple[str, bytes]], key: bytes | None
) -> None:
    headers, rejected = build_headers(
        topic="t", partition=0, offset=7, timestamp=1, key=key, record_headers=record_headers, forwarded=allowlist
    )
    assert set(headers) <= META | allowlist
    assert not set(headers) & NEVER_FORWARDED
    assert set(rejected) <= allowlist | {"content-type"}
    for name, value in headers.items():
        assert valid_field_name(name) and name == name.lower()
        assert valid_field_value(value.encode("ascii"))
        assert not set(value) & set("\r\n\x00")
    assert headers["kafka-topic"] == "t" and headers["kafka-offset"] == "7"
    if key is not None:
        assert unquote_to_bytes(headers["kafka-key"]) == key
    # baggage: all the record's baggage headers as one, forwarded as the reference says, with
    # the tenant the route filter reads (tests/unit/test_baggage.py proves the two agree).
    if "baggage" in allowlist:
        joined = baggage.combine(v for n, v in record_headers if n.isascii() and n.lower() == "baggage")
        expected = baggage.for_delivery(joined, "tenant").header
        assert headers.get("baggage") == expected
        if expected is not None:
            assert joined is not None
            tenant = TenantExtractor().from_baggage(joined).tenant
            assert (baggage.parse(expected.encode()).get("tenant") or None) == tenant
    # Any other allowlisted header is the record's first one of that (ASCII, case-folded) name.
    for name in allowlist - {"content-type", "baggage"}:
        first = next((v for n, v in record_headers if n.isascii() and n.lower() == name), None)
        if first is not None and valid_field_value(first):
            assert headers[name] == first.decode("ascii")
        else:
            assert name not in headers


@settings(FAST, max_examples=3000)
@given(st.lists(st.one_of(field_names, dangerous_names, st.text(max_size=16)), max_size=6))
def test_forward_headers_never_admits_a_name_that_must_not_be_copied(names: list[str]) -> None:
    try:
        admitted = check_forward_headers(names)
    except ValueError:
        assert any(
            not valid_field_name(n.strip().lower()) or never_forwarded(n.strip().lower()) for n in names
        )
        return
    for name in admitted:
        assert valid_field_name(name) and not never_forwarded(name)
    assert not admitted & {"authorization", "host", "transfer-encoding", "content-length", "connection"}
    assert forwarded_header_names("", extra=admitted) == frozenset(CONTEXT_HEADERS) | admitted


# -- route service input ----------------------------------------------------------------------------

json_leaves = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=70))
json_values = st.recursive(json_leaves, lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=70), inner, max_size=4)), max_leaves=12)
route_maps = st.dictionaries(
    st.one_of(st.from_regex(NAME_PATTERN, fullmatch=True), st.text(max_size=70)),
    st.one_of(st.from_regex(NAME_PATTERN, fullmatch=True), json_leaves),
    max_size=6,
)
bodies = st.one_of(
    st.binary(max_size=200),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.fixed_dictionaries({"routes": route_maps}).map(lambda v: json.dumps(v).encode()),
    st.fixed_dictionaries({"routes": route_maps}, optional={"extra": json_leaves}).map(lambda v: json.dumps(v).encode()),
)


@settings(FAST, max_examples=3000)
@given(bodies)
def test_put_bodies_are_validated_or_refused(raw: bytes) -> None:
    try:
        routes = parse_put_body(raw)
    except RequestError as exc:
        assert 400 <= exc.status < 500
        return
    assert routes and all(NAME_PATTERN.fullmatch(k) and NAME_PATTERN.fullmatch(v) for k, v in routes.items())


@settings(FAST, max_examples=4000)
@given(st.text(max_size=300), st.one_of(st.none(), st.text(max_size=20)))
def test_path_and_query_values_are_validated_or_refused(raw: str, query: str | None) -> None:
    try:
        tenant = parse_tenant(raw)
        assert 1 <= len(tenant) <= 256 and all("\x21" <= c <= "\x7e" for c in tenant)
    except RequestError as exc:
        assert exc.status == 400
    for parse in (parse_since, parse_wait, lambda v: parse_flag("sync", v)):
        try:
            parse(query)
        except RequestError as exc:
            assert exc.status == 400


@settings(FAST, max_examples=4000)
@given(st.one_of(st.none(), st.text(max_size=40)), st.text(alphabet=token_chars, min_size=1, max_size=40))
def test_only_the_token_itself_matches(header: str | None, token: str) -> None:
    given_token = bearer_token(header)
    assert token_matches(given_token, token) == (given_token == token)
    assert token_matches(f"Bearer {token}".partition(" ")[2], token)


# -- the running route service, over a real socket ----------------------------------------------------


class _ServiceThread:
    """A RouteService on its own event loop in a thread, so Hypothesis (sync) can call it."""

    def __init__(self, config: RouteServiceConfig) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.service = RouteService(config)

    def __enter__(self) -> RouteService:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self.service.start(), self.loop).result(30)
        return self.service

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self.service.stop(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture(scope="module")
def live_service(bootstrap_servers: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RouteService]:
    token_file = tmp_path_factory.mktemp("prop") / "token"
    token_file.write_text(TOKEN)
    topic = f"_ktp_routes-prop-{uuid.uuid4().hex[:8]}"
    config = RouteServiceConfig(
        kafka=KafkaConnection(bootstrap_servers=bootstrap_servers), listen=("127.0.0.1", 0),
        routes_topic=topic, groups_topic=f"{topic}-groups", token_file=str(token_file),
        max_body_bytes=2048, drain_timeout=1.0,
    )
    with _ServiceThread(config) as service:
        yield service


path_segments = st.one_of(st.text(alphabet=string.printable, max_size=30).map(lambda t: quote(t, safe="")),
                          st.sampled_from(["t1", "%2e%2e", "..", "%00", "%0d%0a", "a%2Fb", "x" * 300]))
paths = st.one_of(
    path_segments.map(lambda s: f"/v1/tenants/{s}"),
    st.just("/v1/tenants"),
    st.tuples(st.text(alphabet=string.printable, max_size=12), st.text(alphabet=string.printable, max_size=12)).map(
        lambda q: f"/v1/routes?since={quote(q[0])}&wait={quote(q[1][:3])}"
    ),
    st.text(alphabet=string.ascii_letters + "/%.", max_size=30).map(lambda p: "/" + p),
)
auth_headers = st.one_of(
    st.none(), st.just(f"Bearer {TOKEN}"), st.just(f"bearer  {TOKEN} "), st.text(alphabet=string.printable.strip(), max_size=30),
    st.just(f"Bearer {TOKEN[:-1]}"), st.just(f"Basic {TOKEN}"),
)


@settings(FAST, max_examples=1000)
@given(st.sampled_from(["GET", "PUT", "DELETE", "POST", "PATCH", "OPTIONS", "HEAD"]), paths, bodies, auth_headers,
       st.sampled_from(["application/json", "text/plain", "", "application/merge-patch+json"]))
def test_the_live_route_service_answers_any_request_without_a_5xx_or_an_unauthorised_change(
    live_service: RouteService, method: str, path: str, body: bytes, auth: str | None, content_type: str
) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", live_service.port, timeout=10)
    version_before = live_service.store.version
    headers = {"content-type": content_type} if content_type else {}
    authorised = auth is not None and token_matches(bearer_token(auth), TOKEN)
    if auth is not None:
        headers["authorization"] = auth
    try:
        connection.request(method, path, body=body if method in ("PUT", "POST", "PATCH") else None, headers=headers)
        response = connection.getresponse()
        text = response.read()
    finally:
        connection.close()
    assert response.status < 500, (method, path, response.status, text[:200])
    if method != "HEAD" and response.status != 204:
        answer = json.loads(text)
        if response.status >= 400:
            assert set(answer) == {"error"}
    if not authorised:
        # Reads need the token too here (no --public-reads); only the probes answer without one.
        assert response.status >= 400 or path.split("?")[0] in ("/healthz", "/readyz"), (method, path)
        assert live_service.store.version == version_before
    assert TOKEN.encode() not in text
