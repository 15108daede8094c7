"""Tenant extraction: the routing key from a record's W3C ``baggage`` header.

The header is parsed by OpenTelemetry's own ``W3CBaggagePropagator`` so that we never disagree
with the instrumentation that wrote it (size limits, percent-decoding, invalid members). Records
of one tenant carry byte-identical headers, so results are cached by the raw header bytes: the
propagator runs once per distinct header, not once per record.

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
CACHE_SIZE = 8192

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


class TenantExtractor:
    """Reads the tenant (``tenant_key`` in baggage) from Kafka record headers, with a cache."""

    __slots__ = ("tenant_key", "_propagator", "_cache")

    def __init__(self, tenant_key: str = DEFAULT_TENANT_KEY) -> None:
        self.tenant_key = tenant_key
        self._propagator = W3CBaggagePropagator()
        self._cache: dict[bytes, TenantLookup] = {}

    def __repr__(self) -> str:
        return f"TenantExtractor(tenant_key={self.tenant_key!r}, cached={len(self._cache)})"

    def from_headers(self, headers: Headers) -> TenantLookup:
        """Tenant of a record given its headers (aiokafka's ``(name, bytes)`` tuples).

        Like the propagator, only the first ``baggage`` header counts. Kafka header names are
        case-sensitive but producers differ in case, so the match ignores case.
        """
        for name, value in headers:
            if name == BAGGAGE_HEADER or name.lower() == BAGGAGE_HEADER:
                return self.from_baggage(value)
        return NO_BAGGAGE

    def from_baggage(self, raw: bytes | None) -> TenantLookup:
        """Tenant from one raw baggage header value."""
        if not raw:
            return NO_BAGGAGE
        cached = self._cache.get(raw)
        if cached is not None:
            return cached
        result = self._parse(raw)
        if len(self._cache) >= CACHE_SIZE:
            # Distinct headers beyond the cache mean high-cardinality baggage (e.g. per-request
            # ids); dropping everything is cheaper than LRU bookkeeping on the hot path.
            self._cache.clear()
        self._cache[bytes(raw)] = result
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
