"""Tenant extraction: the routing key from a record's W3C ``baggage`` header.

The tenant is what OpenTelemetry's own ``W3CBaggagePropagator`` reads from the header, so that we
never disagree with the instrumentation that wrote it (size limits, percent-decoding, invalid
members). Records of one tenant carry byte-identical headers, so results are cached by the raw
header bytes: a header is parsed once per distinct header, not once per record.

The cache holds the headers seen recently, bounded in entries and in bytes: two generations,
lookups hit the young one (a plain dict look-up), a hit in the old one moves the entry up, and
when the young one is full it becomes the old one and the previous old one is dropped. So the
active tenants stay cached however many others pass by, at no bookkeeping cost per hit, and the
cache never holds more than :data:`CACHE_SIZE` entries or about :data:`CACHE_BYTES` of headers.

A cache miss costs the propagator about 8-10 us (a regex split, a regex match per member, a new
context per member), which dominated when many tenants send at once (``benchmarks/decision.py``,
100,000 tenants all sending: ~40x the decision of 10 tenants with the propagator on every miss).
So a miss first tries a fast path, :meth:`TenantExtractor._parse_fast` (~1.5 us; that case is
then ~14x), which takes only a strict subset of headers, the plain ones SDKs write for tenant
ids: printable ASCII and blanks, no percent-escapes, no ``+``, no properties (``;``), no quotes
or backslashes, at most 4096 bytes and 180 members. On that subset it computes exactly
the propagator's answer (each rule is argued where it is checked); any other header, and any key
the propagator could only match through escapes, goes to the propagator itself
(:meth:`TenantExtractor._parse_propagator`). The unit tests prove the two equal with property
tests over arbitrary bytes, arbitrary text and generated realistic headers, and exhaustively over
every one-byte change of a few headers, so an OpenTelemetry upgrade that changed its parsing fails
them rather than makes us disagree with it.

A header we cannot read is never a crash and never silently "no tenant": the result says why
(``problem``), the route filter turns it into a decision with that reason, and the sidecar counts
it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from opentelemetry import baggage as otel_baggage
from opentelemetry.baggage import _is_valid_key
from opentelemetry.baggage.propagation import W3CBaggagePropagator
from opentelemetry.context import Context
from opentelemetry.propagators.textmap import Getter

BAGGAGE_HEADER = "baggage"
DEFAULT_TENANT_KEY = "tenant"
# The propagator drops a whole header above this (W3C baggage limit); we report it as a problem.
MAX_BAGGAGE_BYTES = W3CBaggagePropagator._MAX_HEADER_LENGTH
# Headers cached (both generations); about 250 bytes each for a typical header, so ~2 MiB.
CACHE_SIZE = 8192
# Header bytes cached (both generations): hostile 8 KiB headers cannot make it 64 MiB.
CACHE_BYTES = 1024 * 1024

# The fast path's subset (see TenantExtractor._parse_fast for why each rule gives the propagator's
# answer). Bytes it accepts: printable ASCII except '"', '%', '+', ';' and '\\', plus space and
# tab. Every other byte (controls, DEL, anything non-ASCII, so also any non-UTF-8 header) sends the
# header to the propagator.
_FAST_BYTES = bytes(c for c in range(0x21, 0x7F) if c not in b'"%+;\\') + b" \t"
# No member of a header this short can exceed the propagator's per-member limit, and the whole one
# is far under its header limit (whose check comes first and rejects a whole header).
_FAST_MAX_BYTES = W3CBaggagePropagator._MAX_PAIR_LENGTH
# The propagator reads only its first _MAX_PAIRS non-empty members (invalid ones count): at most
# _MAX_PAIRS - 1 commas means at most _MAX_PAIRS members, so it never drops one of the fast path's.
_FAST_MAX_COMMAS = W3CBaggagePropagator._MAX_PAIRS - 1

# The propagator logs every bad header at WARNING, with the header's content. One hostile record
# per distinct header would then flood the log; we count and log those ourselves, rate-limited.
logging.getLogger("opentelemetry.baggage.propagation").setLevel(logging.ERROR)
logging.getLogger("opentelemetry.baggage").setLevel(logging.ERROR)

Headers = Sequence[tuple[str, bytes]]


@dataclass(frozen=True, slots=True)
class TenantLookup:
    """The tenant of one record, or why there is none.

    ``problem`` is None when the header was readable (the tenant may still be absent), else one
    of ``baggage_not_utf8``, ``baggage_too_large``.
    """

    tenant: str | None
    problem: str | None = None


NO_BAGGAGE = TenantLookup(None)
NOT_UTF8 = TenantLookup(None, "baggage_not_utf8")
TOO_LARGE = TenantLookup(None, "baggage_too_large")


class _SingleHeaderGetter(Getter[str]):
    """Carrier is the decoded baggage header itself."""

    def get(self, carrier: str, key: str) -> list[str] | None:
        return [carrier] if key == BAGGAGE_HEADER else None

    def keys(self, carrier: str) -> list[str]:
        return [BAGGAGE_HEADER]


_GETTER = _SingleHeaderGetter()


def baggage_value(headers: Headers) -> bytes | None:
    """The first ``baggage`` header's value, or None. Kafka header names are case-sensitive but
    producers differ in case, so the match ignores case; like the propagator, only the first
    counts."""
    for name, value in headers:
        # lower() only for a name of the right length: most names are not "baggage" at all.
        if name == BAGGAGE_HEADER or (len(name) == 7 and name.lower() == BAGGAGE_HEADER):
            return value
    return None


class TenantExtractor:
    """Reads the tenant (``tenant_key`` in baggage) from Kafka record headers, with a cache."""

    __slots__ = ("_cache", "_cached_bytes", "_fast_key", "_old", "_propagator", "tenant_key")

    def __init__(self, tenant_key: str = DEFAULT_TENANT_KEY) -> None:
        self.tenant_key = tenant_key
        self._propagator = W3CBaggagePropagator()
        # The young and the old generation (see the module doc), and the young one's key bytes.
        self._cache: dict[bytes, TenantLookup] = {}
        self._old: dict[bytes, TenantLookup] = {}
        self._cached_bytes = 0
        # The key the fast path may look for: only one the propagator accepts as a member's name
        # as written (a valid W3C key). Any other key (a space, a '/') can only be matched through
        # percent-escapes, which the fast path leaves to the propagator; None disables it.
        self._fast_key = tenant_key if _is_valid_key(tenant_key) else None

    def __repr__(self) -> str:
        return f"TenantExtractor(tenant_key={self.tenant_key!r}, cached={len(self)})"

    def __len__(self) -> int:
        """Headers cached."""
        return len(self._cache) + len(self._old)

    def from_headers(self, headers: Headers) -> TenantLookup:
        """Tenant of a record given its headers (aiokafka's ``(name, bytes)`` tuples); see
        :func:`baggage_value` for which header counts."""
        return self.from_baggage(baggage_value(headers))

    def from_baggage(self, raw: bytes | None) -> TenantLookup:
        """Tenant from one raw baggage header value."""
        if not raw:
            return NO_BAGGAGE
        cached = self._cache.get(raw)
        if cached is not None:
            return cached
        result = self._old.pop(raw, None)
        if result is None:
            result = self._parse(raw)
        if len(self._cache) >= CACHE_SIZE // 2 or self._cached_bytes >= CACHE_BYTES // 2:
            self._old = self._cache
            self._cache = {}
            self._cached_bytes = 0
        self._cache[bytes(raw)] = result
        self._cached_bytes += len(raw)
        return result

    def _parse(self, raw: bytes) -> TenantLookup:
        """A cache miss: the fast path when the header is in its subset, else the propagator.
        Both give the same answer for every header (tests/unit/test_tenant.py proves it)."""
        result = self._parse_fast(raw)
        return result if result is not None else self._parse_propagator(raw)

    def _parse_fast(self, raw: bytes) -> TenantLookup | None:
        """The propagator's answer for a header in the fast path's subset, else None.

        Why this equals :meth:`_parse_propagator` (opentelemetry-api's ``W3CBaggagePropagator``,
        which splits the header on ``[ \\t]*,[ \\t]*``, drops empty, non-ASCII and over-long
        members and all after the first 180, splits each at its first ``=``, strips spaces and tabs
        off name and value, drops the member unless the name is a valid key and the value valid,
        then ``unquote_plus`` and ``str.strip()`` both and sets them in order, the last winning):

        - Only ``_FAST_BYTES``: the header is ASCII (so valid UTF-8, and no member is dropped as
          non-ASCII); without ``%`` and ``+``, ``unquote_plus`` returns its input unchanged; the
          only whitespace is space and tab, which the propagator strips off names and values
          itself, so its final ``str.strip()`` (all Unicode whitespace, which escapes could
          produce) has nothing left to strip. Without ``;`` a value has no properties, and every
          remaining byte but space and tab is a valid value byte, so a value is valid iff it has
          no inner space or tab; without ``"`` and ``\\`` nothing else can make it invalid.
        - Splitting on ``,`` and stripping spaces and tabs off each name and value gives the
          propagator's names and values: its split only moves the blanks next to a comma out of
          the member, and they would be stripped off the name or value they border anyway. A
          blank-only member has no ``=``, which both skip.
        - ``_FAST_MAX_BYTES`` and ``_FAST_MAX_COMMAS``: no size or count limit applies.
        - A member counts only if its name, after the strip, equals the key: decoding being the
          identity here, the propagator's name is exactly that, and members with other names,
          valid or not, never touch the key's value. The key being valid (``_fast_key``), so is
          the name; a value with an inner blank is invalid and the propagator skips the member:
          we leave that rare case to it rather than reproduce it. The last member wins, as the
          propagator's later ``set_baggage`` overwrites an earlier one; an empty last value means
          no tenant, as on the propagator path.
        """
        key = self.tenant_key
        if (
            key is not self._fast_key  # invalid key, or one set after __init__: not checked
            or len(raw) > _FAST_MAX_BYTES
            or raw.translate(None, _FAST_BYTES)  # what is left is outside the subset
            or raw.count(b",") > _FAST_MAX_COMMAS
        ):
            return None
        header = raw.decode("ascii")
        if key not in header:  # the usual miss for a header without our key: no member named so
            return NO_BAGGAGE
        tenant = ""
        for member in header.split(","):
            name, equals, value = member.partition("=")
            if equals and name.strip(" \t") == key:
                value = value.strip(" \t")
                if " " in value or "\t" in value:
                    return None  # an invalid value the propagator skips: let it
                tenant = value
        return TenantLookup(tenant) if tenant else NO_BAGGAGE

    def _parse_propagator(self, raw: bytes) -> TenantLookup:
        """The reference: OpenTelemetry's propagator, for any header (size and UTF-8 first)."""
        if len(raw) > MAX_BAGGAGE_BYTES:
            return TOO_LARGE
        try:
            header = raw.decode("utf-8")
        except UnicodeDecodeError:
            return NOT_UTF8
        context = self._propagator.extract(header, context=Context(), getter=_GETTER)
        value = otel_baggage.get_baggage(self.tenant_key, context)
        if value is None or value == "":
            return NO_BAGGAGE
        return TenantLookup(str(value))
