"""Tenant extraction: the routing key from a record's W3C ``baggage`` header.

The header is parsed by OpenTelemetry's own ``W3CBaggagePropagator`` so that we never disagree
with the instrumentation that wrote it (size limits, percent-decoding, invalid members). Records
of one tenant carry byte-identical headers, so results are cached by the raw header bytes: the
propagator runs once per distinct header, not once per record.

The cache holds the headers seen recently, bounded in entries and in bytes: two generations,
lookups hit the young one (a plain dict look-up), a hit in the old one moves the entry up, and
when the young one is full it becomes the old one and the previous old one is dropped. So the
active tenants stay cached however many others pass by, at no bookkeeping cost per hit, and the
cache never holds more than :data:`CACHE_SIZE` entries or about :data:`CACHE_BYTES` of headers.

A header we cannot read is never a crash and never silently "no tenant": the result says why
(``problem``), the route filter turns it into a decision with that reason, and the sidecar counts
it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from opentelemetry import baggage as otel_baggage
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

    __slots__ = ("_cache", "_cached_bytes", "_old", "_propagator", "tenant_key")

    def __init__(self, tenant_key: str = DEFAULT_TENANT_KEY) -> None:
        self.tenant_key = tenant_key
        self._propagator = W3CBaggagePropagator()
        # The young and the old generation (see the module doc), and the young one's key bytes.
        self._cache: dict[bytes, TenantLookup] = {}
        self._old: dict[bytes, TenantLookup] = {}
        self._cached_bytes = 0

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
