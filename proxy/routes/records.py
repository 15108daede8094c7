"""Route records: the routes topic's record format and the route service's JSON, in one place.

The routes topic (``_ktp_routes``, one partition, compacted) holds one record per write:

- key: the tenant, UTF-8;
- value: JSON ``{"tenant": "123", "routes": {"orders-worker": "pr-42"}, "effective_from":
  "2026-11-21T10:51:28.123Z", "written_at": "2026-11-21T10:51:27.123Z", "lead_ms": 1000}``, or
  for a deletion the same with ``"routes": {}`` and ``"deleted": true``. ``written_at`` and
  ``lead_ms`` (the writer's clock when it stamped the record, and the lead it states for its
  writes, :mod:`proxy.routes.lead`) are absent from records of older route services, which
  readers take as lead 0.

A record's **version** is its offset in the topic. It is not stored in the value (a writer cannot
know its offset before the broker acknowledges the write); every reader takes it from the record,
and the route service's API reports it next to the other fields. With one partition the offset is
one global, monotonic order across route-service replicas.

A deletion is a value with ``"deleted": true``, not a Kafka tombstone: compaction may drop a
tombstone (``delete.retention.ms``) before a lagging sidecar has seen *when* the deletion took
effect, and routes are judged at a record's time. A bare tombstone written by someone else is still
read as a deletion, at the record's Kafka timestamp.

Pure data and parsing, no I/O: shared by the route service, its client and the route sources.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any

from proxy.errors import RouteError
from proxy.routes.table import Route, check_name, check_tenant

# A tenant routes a handful of services; the bound keeps one record (and one request) small.
MAX_SERVICES_PER_TENANT = 256


@dataclass(frozen=True, slots=True)
class RouteRecord:
    """One write to the routes topic: a tenant's routes from ``effective_from_ms`` on.

    ``deleted`` records carry no routes; ``version`` is the record's offset in the routes topic.
    """

    tenant: str
    routes: Mapping[str, str]
    version: int
    effective_from_ms: int
    deleted: bool = False
    written_at_ms: int | None = None
    lead_ms: int | None = None

    def to_route(self) -> Route:
        """The table's view: a deletion is a route with no services at its effective time."""
        services: Mapping[str, str] = MappingProxyType({}) if self.deleted else self.routes
        return Route(self.tenant, services, self.effective_from_ms, self.version)

    def with_effective_from(self, effective_from_ms: int) -> RouteRecord:
        return RouteRecord(
            self.tenant, self.routes, self.version, effective_from_ms, self.deleted, self.written_at_ms, self.lead_ms
        )

    def to_api(self, *, include_deleted: bool = False) -> dict[str, Any]:
        """JSON body of the route service: ``{"tenant", "routes", "version", "effective_from"}``,
        plus ``"written_at"`` and ``"lead_ms"`` when the record carries them.

        ``include_deleted`` adds ``"deleted"`` (the watch endpoint reports deletions; the tenants
        endpoints never show a deleted tenant).
        """
        body: dict[str, Any] = {
            "tenant": self.tenant,
            "routes": dict(self.routes),
            "version": self.version,
            "effective_from": format_rfc3339(self.effective_from_ms),
        }
        if self.written_at_ms is not None:
            body["written_at"] = format_rfc3339(self.written_at_ms)
        if self.lead_ms is not None:
            body["lead_ms"] = self.lead_ms
        if include_deleted:
            body["deleted"] = self.deleted
        return body


def format_rfc3339(ms: int) -> str:
    """Milliseconds since the epoch → RFC 3339 in UTC with milliseconds (``…T10:51:27.123Z``)."""
    moment = datetime.fromtimestamp(ms // 1000, tz=UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S") + f".{ms % 1000:03d}Z"


def parse_rfc3339(text: object) -> int:
    """RFC 3339 (any offset, any fraction) → milliseconds since the epoch (fraction truncated)."""
    if not isinstance(text, str) or "T" not in text.upper():
        raise RouteError(f"effective_from {text!r} is not an RFC 3339 time")
    try:
        moment = datetime.fromisoformat(text.upper().replace("Z", "+00:00"))
    except ValueError as exc:
        raise RouteError(f"effective_from {text!r} is not an RFC 3339 time") from exc
    if moment.tzinfo is None:
        raise RouteError(f"effective_from {text!r} has no UTC offset")
    delta = moment - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * 1000 + delta.microseconds // 1000


def check_tenant_value(value: object) -> str:
    """:func:`check_tenant` for a value of any JSON type (it must be a string first)."""
    if not isinstance(value, str):
        raise RouteError(f"tenant must be a string, got {type(value).__name__}")
    return check_tenant(value)


def check_routes(routes: object) -> dict[str, str]:
    """Validate ``{service: sandbox}`` (both DNS-1123 labels); raise :class:`RouteError`."""
    if not isinstance(routes, dict):
        raise RouteError('"routes" must be an object mapping service names to sandbox names')
    if len(routes) > MAX_SERVICES_PER_TENANT:
        raise RouteError(f'"routes" names {len(routes)} services; at most {MAX_SERVICES_PER_TENANT} allowed')
    checked: dict[str, str] = {}
    for service, sandbox in routes.items():
        check_name("service", service)
        if not isinstance(sandbox, str):
            raise RouteError(f"sandbox for service {service!r} must be a string, got {type(sandbox).__name__}")
        checked[service] = check_name("sandbox", sandbox)
    return checked


def encode_value(
    tenant: str,
    routes: Mapping[str, str],
    effective_from_ms: int,
    *,
    deleted: bool = False,
    written_at_ms: int | None = None,
    lead_ms: int | None = None,
) -> bytes:
    """The routes topic value of one write (the version is the offset, set by the broker)."""
    body: dict[str, Any] = {
        "tenant": tenant,
        "routes": {} if deleted else dict(routes),
        "effective_from": format_rfc3339(effective_from_ms),
    }
    if written_at_ms is not None:
        body["written_at"] = format_rfc3339(written_at_ms)
    if lead_ms is not None:
        body["lead_ms"] = lead_ms
    if deleted:
        body["deleted"] = True
    return json.dumps(body, separators=(",", ":"), sort_keys=True).encode()


def decode_record(key: bytes | None, value: bytes | None, offset: int, timestamp_ms: int) -> RouteRecord:
    """Read one routes-topic record; raise :class:`RouteError` saying what is wrong with it.

    A tombstone (no value) is a deletion at the record's timestamp. The key must name the same
    tenant as the value: compaction keeps the last record *per key*, so a mismatch would let a
    stale route survive.
    """
    if key is None:
        raise RouteError(f"routes record at offset {offset} has no key (the tenant)")
    try:
        key_tenant = key.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RouteError(f"routes record at offset {offset}: key is not UTF-8") from exc
    check_tenant(key_tenant)
    if value is None:
        return RouteRecord(key_tenant, MappingProxyType({}), offset, timestamp_ms, deleted=True)
    try:
        body = json.loads(value)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise RouteError(f"routes record at offset {offset}: value is not JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise RouteError(f"routes record at offset {offset}: value must be a JSON object")
    if body.get("tenant") != key_tenant:
        raise RouteError(
            f"routes record at offset {offset}: value names tenant {str(body.get('tenant'))[:64]!r} "
            f"but the key is {key_tenant!r}"
        )
    deleted = body.get("deleted", False)
    if not isinstance(deleted, bool):
        raise RouteError(f'routes record at offset {offset}: "deleted" must be true or false')
    try:
        routes = check_routes(body.get("routes", {}))
        effective_from_ms = parse_rfc3339(body.get("effective_from"))
        written_at_ms, lead_ms = _lead_fields(body)
    except RouteError as exc:
        raise RouteError(f"routes record at offset {offset}: {exc}") from exc
    # No services left means the tenant routes nowhere: the table's meaning of a deletion.
    deleted = deleted or not routes
    return RouteRecord(
        key_tenant,
        MappingProxyType({} if deleted else routes),
        offset,
        effective_from_ms,
        deleted=deleted,
        written_at_ms=written_at_ms,
        lead_ms=lead_ms,
    )


def _lead_fields(body: dict[str, Any]) -> tuple[int | None, int | None]:
    """``written_at`` and ``lead_ms`` of a record (both absent in records of older writers)."""
    written = body.get("written_at")
    written_at_ms = None if written is None else parse_rfc3339(written)
    lead = body.get("lead_ms")
    if lead is not None and (not isinstance(lead, int) or isinstance(lead, bool) or lead < 0):
        raise RouteError(f'"lead_ms" must be an integer >= 0, got {str(lead)[:32]!r}')
    return written_at_ms, lead


def record_from_api(body: object) -> RouteRecord:
    """Read one record of the route service's JSON (``to_api(include_deleted=True)``)."""
    if not isinstance(body, dict):
        raise RouteError("route record must be a JSON object")
    tenant = check_tenant_value(body.get("tenant"))
    version = body.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 0:
        raise RouteError(f"route record for tenant {tenant!r}: version must be an offset >= 0")
    deleted = body.get("deleted", False)
    if not isinstance(deleted, bool):
        raise RouteError(f'route record for tenant {tenant!r}: "deleted" must be true or false')
    routes = check_routes(body.get("routes", {}))
    deleted = deleted or not routes
    written_at_ms, lead_ms = _lead_fields(body)
    return RouteRecord(
        tenant,
        MappingProxyType({} if deleted else routes),
        version,
        parse_rfc3339(body.get("effective_from")),
        deleted=deleted,
        written_at_ms=written_at_ms,
        lead_ms=lead_ms,
    )


class EffectiveTimes:
    """Keeps each tenant's effective times strictly increasing in topic order.

    The route service stamps ``effective_from`` with its own clock, after catching up with the
    topic, as ``max(now, previous + 1 ms)``. Two replicas with skewed clocks writing the same
    tenant at once could still stamp a later write with an earlier time, which would let the
    earlier write win in the table's time-ordered history. Every reader (each replica's cache,
    each sidecar) reads the same records in the same order and applies this same rule, so they all
    agree on the adjusted times.
    """

    __slots__ = ("_last",)

    def __init__(self) -> None:
        self._last: dict[str, int] = {}

    def adjust(self, record: RouteRecord) -> RouteRecord:
        previous = self._last.get(record.tenant)
        if previous is not None and record.effective_from_ms <= previous:
            record = record.with_effective_from(previous + 1)
        self._last[record.tenant] = record.effective_from_ms
        return record

    def next_for(self, tenant: str, now_ms: int) -> int:
        """The effective time a writer should stamp on a new write for ``tenant``."""
        previous = self._last.get(tenant)
        return now_ms if previous is None else max(now_ms, previous + 1)
