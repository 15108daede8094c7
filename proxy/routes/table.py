"""The route table: every tenant's routes, with their history, judged at a record's time.

A *route* is one tenant's mapping ``{service: sandbox}`` and the time it takes effect
(``effective_from``). The table keeps, per tenant, the routes in the order they took effect, so a
record is decided by the route that was in force at the record's timestamp, not by whatever was
written last: routes are judged at the record's time. A deleted tenant is a route
with no services.

History is bounded: :meth:`RouteTable.prune` drops every route superseded before a horizon that
no record still to be decided is older than (:func:`prune_horizon`: the oldest record the sidecar
may still have to decide, less a margin). A pruned table decides every record at or after the
horizon exactly as the full one would; a straggler older than the horizon is decided by the
oldest route kept.

Pure data, no I/O: route sources (``routing/sources``) build and update it.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from proxy.errors import RouteError

# Kubernetes-style names for services and sandboxes (DNS-1123 label, 63 chars): they become
# consumer group suffixes, dead-letter topic names and label values.
NAME_PATTERN = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
# Tenants are opaque routing keys from baggage; keep them printable and bounded.
TENANT_MAX_LENGTH = 256
_TENANT_PATTERN = re.compile(r"^[\x21-\x7e]{1,256}$")
# Kept before the oldest record a sidecar may still decide: producer timestamps within a partition
# need not grow, and a record re-fetched after a rebalance comes from the committed offset.
DEFAULT_HISTORY_MARGIN_MS = 600_000


def check_name(kind: str, value: str) -> str:
    """Validate a service or sandbox name; raise :class:`RouteError` saying what is wrong."""
    if not isinstance(value, str) or not NAME_PATTERN.fullmatch(value):
        raise RouteError(
            f"{kind} name {value!r} is invalid: use 1-63 lowercase letters, digits and '-', "
            "starting and ending with a letter or digit"
        )
    return value


def check_tenant(value: str) -> str:
    """Validate a tenant (routing key): 1-256 visible ASCII characters, no spaces."""
    if not isinstance(value, str) or not _TENANT_PATTERN.fullmatch(value):
        raise RouteError(
            f"tenant {value[:64]!r} is invalid: use 1-{TENANT_MAX_LENGTH} visible ASCII "
            "characters with no spaces"
        )
    return value


@dataclass(frozen=True, slots=True)
class Route:
    """One tenant's routes ``{service: sandbox}``, in force from ``effective_from_ms``.

    ``services`` empty means the tenant was deleted at that time.
    """

    tenant: str
    services: Mapping[str, str]
    effective_from_ms: int
    version: int = 0

    @classmethod
    def build(
        cls, tenant: str, services: Mapping[str, str], effective_from_ms: int, version: int = 0
    ) -> Route:
        """Validate names and freeze the mapping."""
        check_tenant(tenant)
        frozen = {check_name("service", s): check_name("sandbox", x) for s, x in services.items()}
        return cls(tenant, MappingProxyType(frozen), effective_from_ms, version)

    @property
    def deleted(self) -> bool:
        return not self.services


@dataclass(slots=True)
class _History:
    """Routes of one tenant ordered by ``effective_from_ms``; parallel list of times for bisect.
    ``pruned``: earlier routes were dropped, so the first one kept stands for the time before it."""

    times: list[int] = field(default_factory=list)
    routes: list[Route] = field(default_factory=list)
    pruned: bool = False


def prune_horizon(oldest_ms: Iterable[int | None], now_ms: int, margin_ms: int = DEFAULT_HISTORY_MARGIN_MS) -> int:
    """The time before which route history is no longer needed: the oldest record time a sidecar
    may still decide (one per assigned partition; None: nothing fetched yet, so the next record is
    a new one, at about ``now_ms``), less ``margin_ms``."""
    oldest = now_ms
    for value in oldest_ms:
        if value is not None and value < oldest:
            oldest = value
    return oldest - margin_ms


class RouteTable:
    """All tenants' routes, versioned. Mutated only by its route source, read by the filter.

    ``version`` grows with every change, ``synced`` says whether the source has caught up with
    its backing store at least once (``/readyz`` waits for it).
    """

    __slots__ = ("_tenants", "version", "synced")

    def __init__(self) -> None:
        self._tenants: dict[str, _History] = {}
        self.version = 0
        self.synced = False

    def __len__(self) -> int:
        """Number of tenants whose latest route is not a deletion."""
        return sum(1 for h in self._tenants.values() if not h.routes[-1].deleted)

    def __repr__(self) -> str:
        return f"RouteTable(tenants={len(self)}, version={self.version}, synced={self.synced})"

    def apply(self, route: Route) -> None:
        """Add a route to its tenant's history, keeping the history ordered by time.

        Routes with the same ``effective_from_ms`` as an existing one replace it (a rewrite of the
        same change, e.g. a replayed record).
        """
        history = self._tenants.get(route.tenant)
        if history is None:
            if route.deleted:
                # Deleting a tenant we never knew changes no decision.
                self.version += 1
                return
            history = self._tenants[route.tenant] = _History()
        index = bisect.bisect_left(history.times, route.effective_from_ms)
        if index < len(history.times) and history.times[index] == route.effective_from_ms:
            history.routes[index] = route
        else:
            history.times.insert(index, route.effective_from_ms)
            history.routes.insert(index, route)
        self.version += 1

    def replace_all(self, routes: Iterable[Route], at_ms: int) -> None:
        """Make ``routes`` the latest state from ``at_ms`` on: changed tenants get a new route at
        ``at_ms``, tenants not in ``routes`` get a deletion. Unchanged tenants keep their history.
        """
        wanted = {route.tenant: route for route in routes}
        for tenant, history in self._tenants.items():
            if tenant not in wanted and not history.routes[-1].deleted:
                self.apply(Route(tenant, MappingProxyType({}), at_ms))
        for tenant, route in wanted.items():
            current = self.latest(tenant)
            if current is None or dict(current.services) != dict(route.services):
                self.apply(Route(tenant, route.services, at_ms, route.version))

    def latest(self, tenant: str) -> Route | None:
        """The last route written for ``tenant`` (None if never known or deleted)."""
        history = self._tenants.get(tenant)
        if history is None or history.routes[-1].deleted:
            return None
        return history.routes[-1]

    def route_at(self, tenant: str, at_ms: int) -> Route | None:
        """The route in force for ``tenant`` at ``at_ms``, or None."""
        history = self._tenants.get(tenant)
        if history is None:
            return None
        times = history.times
        # Fast path: nearly every record is newer than its tenant's last change.
        if times[-1] <= at_ms:
            route = history.routes[-1]
        else:
            index = bisect.bisect_right(times, at_ms) - 1
            if index < 0:
                if not history.pruned:
                    return None
                index = 0
            route = history.routes[index]
        return None if route.deleted else route

    def prune(self, before_ms: int) -> int:
        """Drop the history no record at or after ``before_ms`` needs: every route superseded by
        one in force at ``before_ms``. Decisions for records at or after ``before_ms`` do not
        change. A tenant deleted by then keeps its deletion alone, so that a route of its read
        again (a source may read a record twice) cannot bring it back. Returns how many routes
        were dropped."""
        dropped = 0
        for history in self._tenants.values():
            index = bisect.bisect_right(history.times, before_ms) - 1
            if index > 0:
                dropped += index
                del history.times[:index]
                del history.routes[:index]
                history.pruned = True
        if dropped:
            self.version += 1
        return dropped

    def history_size(self) -> int:
        """Routes held, history included (what :meth:`prune` bounds)."""
        return sum(len(history.routes) for history in self._tenants.values())

    def last_change(self, tenant: str) -> int | None:
        """When ``tenant``'s latest route took effect (None if never known): every record from
        then on is decided by that route, until the table changes."""
        history = self._tenants.get(tenant)
        return None if history is None else history.times[-1]

    def sandbox_for(self, tenant: str, service: str, at_ms: int) -> str | None:
        """The sandbox ``tenant`` routes ``service`` to at ``at_ms``; None means baseline."""
        route = self.route_at(tenant, at_ms)
        return None if route is None else route.services.get(service)

    def routed_since(self, service: str, sandbox: str) -> int | None:
        """Earliest time from which some tenant has been routed ``service`` → ``sandbox`` without
        interruption up to now (None if no live route does). Where a new sandbox group starts."""
        earliest: int | None = None
        for history in self._tenants.values():
            since = None
            for route in reversed(history.routes):
                if route.services.get(service) != sandbox:
                    break
                since = route.effective_from_ms
            if since is not None and (earliest is None or since < earliest):
                earliest = since
        return earliest

    def routes(self) -> Iterator[Route]:
        """Latest live route of every tenant, for ``/routes`` and listings."""
        for history in self._tenants.values():
            if not history.routes[-1].deleted:
                yield history.routes[-1]

    def sandboxes(self) -> set[str]:
        """Every sandbox that some live route names."""
        return {sandbox for route in self.routes() for sandbox in route.services.values()}

    def snapshot(self) -> dict[str, object]:
        """JSON-ready view for the admin server's ``/routes``."""
        return {
            "version": self.version,
            "synced": self.synced,
            "tenants": {
                route.tenant: {
                    "routes": dict(route.services),
                    "effective_from_ms": route.effective_from_ms,
                    "version": route.version,
                }
                for route in self.routes()
            },
        }


class RouteHistory:
    """Keeps a table's history bounded for one consumer: notes the first record time of each
    partition's last fetched batch (records are decided as their batch is fetched, so nothing
    older is still to be decided there, except after a rewind or a re-assignment, which the
    margin covers) and prunes the table to :func:`prune_horizon` of the assigned partitions."""

    __slots__ = ("_batch_start_ms", "margin_ms", "table")

    def __init__(self, table: RouteTable, margin_ms: int = DEFAULT_HISTORY_MARGIN_MS) -> None:
        self.table = table
        self.margin_ms = margin_ms
        self._batch_start_ms: dict[object, int] = {}

    def __repr__(self) -> str:
        return f"RouteHistory(partitions={len(self._batch_start_ms)}, routes={self.table.history_size()})"

    def fetched(self, partition: object, first_record_ms: int) -> None:
        """A batch of ``partition`` whose first record has this timestamp was fetched."""
        self._batch_start_ms[partition] = first_record_ms

    def prune(self, assigned: Iterable[object], now_ms: int) -> int:
        """Prune for the partitions assigned now; how many routes were dropped."""
        kept = {p: self._batch_start_ms.get(p) for p in assigned}
        self._batch_start_ms = {p: ms for p, ms in kept.items() if ms is not None}
        return self.table.prune(prune_horizon(kept.values(), now_ms, self.margin_ms))
