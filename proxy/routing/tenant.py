"""Tenant extraction: the routing key from a record's W3C ``baggage`` header.

The tenant is the value of the member named by the tenant key, read as the W3C Baggage
specification says (:mod:`proxy.routing.baggage`, the reference reading): whitespace around
members, keys, ``=`` and values is not part of them, the value ends at the first ``;``, and it
is percent-decoded; invalid members are ignored, the last valid member of the key wins, and a
record's several ``baggage`` headers are one baggage-string. An empty value is no tenant.

Records of one tenant carry byte-identical headers, so results are cached by the raw header
bytes: a header is parsed once per distinct header, not once per record. The cache holds the
headers seen recently, bounded in entries and in bytes: two generations, lookups hit the young
one (a plain dict look-up), a hit in the old one moves the entry up, and when the young one is
full it becomes the old one and the previous old one is dropped. So the active tenants stay
cached however many others pass by, at no bookkeeping cost per hit, and the cache never holds
more than :data:`CACHE_SIZE` entries or about :data:`CACHE_BYTES` of headers.

A miss matters when many tenants send at once (``benchmarks/decision.py``), so it first tries a
fast path, :meth:`TenantExtractor._parse_fast`, which takes only a subset of headers, the plain
ones SDKs write: printable ASCII and blanks without ``%``, ``"`` or ``\\``, within the limits.
On that subset it computes exactly the reference's answer (each rule is argued where it is
checked); any other header goes to the reference (:meth:`TenantExtractor._parse_reference`).
The unit tests prove the two equal on a conformance corpus: the specification's own examples,
the cases that broke mixed-language systems, Hypothesis over arbitrary bytes and generated
headers, and every one-byte change of a few headers.

A header we cannot read is never a crash and never silently "no tenant": the result says why
(``problem``), the route filter turns it into a decision with that reason, and the sidecar counts
it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from proxy.routing import baggage
from proxy.routing.baggage import MAX_BYTES, MAX_MEMBERS

BAGGAGE_HEADER = baggage.HEADER
DEFAULT_TENANT_KEY = "tenant"
# Kept for callers that report the limit; a baggage-string over it is read as no baggage.
MAX_BAGGAGE_BYTES = MAX_BYTES
# Headers cached (both generations); about 250 bytes each for a typical header, so ~2 MiB.
CACHE_SIZE = 8192
# Header bytes cached (both generations): hostile 8 KiB headers cannot make it 64 MiB.
CACHE_BYTES = 1024 * 1024

# The fast path's subset (see TenantExtractor._parse_fast for why each rule gives the
# reference's answer): printable ASCII except '"', '%' and '\\', plus space and tab. Every other
# byte (controls, DEL, anything non-ASCII) sends the header to the reference.
_FAST_BYTES = bytes(c for c in range(0x21, 0x7F) if c not in b'"%\\') + b" \t"
# At most this many commas: at most MAX_MEMBERS members, so the member limit never applies.
_FAST_MAX_COMMAS = MAX_MEMBERS - 1

Headers = Sequence[tuple[str, bytes]]


@dataclass(frozen=True, slots=True)
class TenantLookup:
    """The tenant of one record, or why there is none.

    ``problem`` is None when the header was readable (the tenant may still be absent), else one
    of ``baggage_too_large`` (over the W3C limits: read as no baggage) or ``tenant_invalid``
    (members named by the tenant key, none of them valid: ``tenant=a b``, ``tenant=café``).
    """

    tenant: str | None
    problem: str | None = None


NO_BAGGAGE = TenantLookup(None)
TOO_LARGE = TenantLookup(None, "baggage_too_large")
TENANT_INVALID = TenantLookup(None, "tenant_invalid")


def baggage_value(headers: Headers) -> bytes | None:
    """The record's baggage-string: its ``baggage`` headers' values joined by commas in order
    (the W3C rule for several headers), or None. Kafka header names are case-sensitive but
    producers differ in case, so the match ignores case."""
    raw: bytes | None = None
    for name, value in headers:
        # lower() only for a name of the right length: most names are not "baggage" at all.
        if name == BAGGAGE_HEADER or (len(name) == 7 and name.lower() == BAGGAGE_HEADER):
            raw = value if not raw else (raw + b"," + value if value else raw)
    return raw


class TenantExtractor:
    """Reads the tenant (``tenant_key`` in baggage) from Kafka record headers, with a cache.
    ``tenant_key`` must be a baggage key (an RFC 9110 token), else ``ValueError``."""

    __slots__ = ("_cache", "_cached_bytes", "_key", "_old")

    def __init__(self, tenant_key: str = DEFAULT_TENANT_KEY) -> None:
        if not baggage.is_token(tenant_key):
            # Keys are tokens and are not percent-decoded: no member could ever have this name.
            raise ValueError(
                f"tenant key {tenant_key!r} is not a W3C baggage key: use letters, digits and "
                "!#$%&'*+-.^_`|~ (an RFC 9110 token)"
            )
        self._key = tenant_key
        # The young and the old generation (see the module doc), and the young one's header bytes.
        self._cache: dict[bytes, TenantLookup] = {}
        self._old: dict[bytes, TenantLookup] = {}
        self._cached_bytes = 0

    @property
    def tenant_key(self) -> str:
        """The baggage key read as the tenant (fixed: the fast path relies on it being a token)."""
        return self._key

    def __repr__(self) -> str:
        return f"TenantExtractor(tenant_key={self.tenant_key!r}, cached={len(self)})"

    def __len__(self) -> int:
        """Headers cached."""
        return len(self._cache) + len(self._old)

    def from_headers(self, headers: Headers) -> TenantLookup:
        """Tenant of a record given its headers (aiokafka's ``(name, bytes)`` tuples); see
        :func:`baggage_value` for which headers count."""
        return self.from_baggage(baggage_value(headers))

    def from_baggage(self, raw: bytes | None) -> TenantLookup:
        """Tenant from one raw baggage-string (a record's ``baggage`` headers, joined)."""
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
        """A cache miss: the fast path when the header is in its subset, else the reference.
        Both give the same answer for every header (tests/unit/test_tenant.py proves it)."""
        result = self._parse_fast(raw)
        return result if result is not None else self._parse_reference(raw)

    def _parse_fast(self, raw: bytes) -> TenantLookup | None:
        """The reference's answer for a header in the fast path's subset, else None.

        Why this equals :meth:`_parse_reference` (:func:`proxy.routing.baggage.parse`, which
        splits on ``,``, skips blank pieces, splits each at its first ``;`` and that head at its
        first ``=``, strips blanks off key and value, ignores the member unless the key is a
        token and the value only baggage-octets, percent-decodes the value, and lets the last
        valid member of a key win):

        - At most :data:`MAX_BYTES` bytes and :data:`_FAST_MAX_COMMAS` commas: no limit applies.
        - Only ``_FAST_BYTES``: without ``%`` decoding is the identity. What is left of a value
          after the split on ``,``, the cut at ``;`` and the strip is printable ASCII without
          ``"`` and ``\\``, so baggage-octets, unless it has an inner blank.
        - A member counts only if the text before its first ``=``, stripped, equals the key. The
          key is a token (checked in ``__init__``), so it has no ``;``: the first ``=`` comes
          before any ``;`` and this is the reference's key and value split; a member whose text
          before ``=`` is anything else is, for the reference, either another key or invalid,
          and in both cases no value of our key. A value with an inner blank makes the member
          invalid: that rare case is left to the reference (which also tells it apart as
          ``tenant_invalid`` when no other member of the key is valid).
        - The last such member wins, as in the reference; an empty value is no tenant.
        """
        if (
            len(raw) > MAX_BYTES
            or raw.translate(None, _FAST_BYTES)  # what is left is outside the subset
            or raw.count(b",") > _FAST_MAX_COMMAS
        ):
            return None
        header = raw.decode("ascii")
        key = self.tenant_key
        if key not in header:  # the usual miss for a header without our key: no member named so
            return NO_BAGGAGE
        tenant = ""
        for member in header.split(","):
            name, equals, value = member.partition("=")
            if name.strip(" \t") == key:
                if not equals:
                    return None  # an invalid member named so: the reference's case too
                value = value.partition(";")[0].strip(" \t")
                if " " in value or "\t" in value:
                    return None  # an invalid member: let the reference say what it means
                tenant = value
        return TenantLookup(tenant) if tenant else NO_BAGGAGE

    def _parse_reference(self, raw: bytes) -> TenantLookup:
        """The reference reading (:func:`proxy.routing.baggage.parse`), for any header."""
        parsed = baggage.parse(raw)
        if parsed.too_large:
            return TOO_LARGE
        key = self.tenant_key
        for member in reversed(parsed.members):
            if member.key == key:
                return TenantLookup(member.value) if member.value else NO_BAGGAGE
        if key.encode("ascii") in parsed.dropped:
            return TENANT_INVALID
        return NO_BAGGAGE
