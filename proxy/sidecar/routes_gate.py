"""The routes-behind gate: no record is decided on a route table that may miss its route.

Routes are judged at the record's time: a record with a tenant, newer than what the table is
known to cover (its sync time plus the route lead, the source's ``covered_until_ms``), may belong
to a route not read yet, so the source catches up first (one round trip, shared by concurrent
callers, at most once per batch; a batch whose newer records carry no tenant needs none). Records
from clocks ahead of ours are decided once the catch-up returns.

If the routes cannot be read, deciding on a table that may miss a new route could let baseline
and sandbox both handle (or both skip) a record. So the batch is put back (each partition rewound
to its first record, nothing of it tracked or committed) and every partition paused
(``routes_behind``) until the routes are readable again; polling goes on meanwhile, so the group
membership and heartbeats are kept.
"""

from __future__ import annotations

import logging
import time

from proxy.errors import RouteSourceError
from proxy.listener.kafka import Batch, KafkaListener
from proxy.metrics import Metrics
from proxy.routing.sources import CatchUpRouteSource
from proxy.routing.tenant import TenantExtractor, baggage_value

log = logging.getLogger(__name__)

ROUTES_BEHIND = "routes_behind"
# While the routes are behind, catch-ups are retried after the time already waited, within these
# bounds (seconds): quick at first, then no more than one a few seconds apart.
RETRY_INITIAL = 0.5
RETRY_MAX = 10.0


class RoutesGate:
    """Holds batches back while the route table may miss their routes (``kafka:``/``http:``)."""

    def __init__(
        self,
        source: CatchUpRouteSource,
        extractor: TenantExtractor,
        listener: KafkaListener,
        metrics: Metrics,
    ) -> None:
        self.source = source
        self.extractor = extractor
        self.listener = listener
        self.metrics = metrics
        # Set while the route source cannot catch up: consumption is paused.
        self.behind_since: float | None = None
        # The last catch-up failure, for /readyz's reasons.
        self.last_error: str | None = None
        self._next_try = 0.0

    def __repr__(self) -> str:
        return f"RoutesGate(source={self.source.describe()!r}, behind={self.behind})"

    @property
    def behind(self) -> bool:
        """True while the routes cannot be read (every partition is paused)."""
        return self.behind_since is not None

    async def admit(self, batch: Batch) -> bool:
        """Whether ``batch`` may be decided now. While behind, retry a catch-up now and then
        first. False when the batch was put back (fetched again later)."""
        if self.behind_since is not None:
            await self._retry()
        return not batch or await self._cover(batch)

    def needs_catch_up(self, batch: Batch, covered_ms: int) -> bool:
        """The gate's condition: some record of ``batch`` with a tenant is newer than the time
        up to which the table is known to cover (``covered_until_ms``)."""
        return self._tenants_after(batch, covered_ms)

    async def _cover(self, batch: Batch) -> bool:
        """Make the route table complete up to the newest record of ``batch`` before deciding it;
        False when the routes cannot be read (the batch is put back)."""
        source = self.source
        # Not the sync time itself: the route lead covers records up to covered_until_ms.
        covered_ms = source.covered_until_ms
        newest = max(records[-1].timestamp for records in batch.values())
        if newest <= covered_ms or not self.needs_catch_up(batch, covered_ms):
            return True
        if self.behind_since is None:
            try:
                await source.catch_up(newest)
                return True
            except RouteSourceError as exc:
                self.metrics.route_source_errors.inc()
                self.last_error = str(exc)
                log.warning("routes could not catch up (%s); pausing consumption until they can", exc)
                self.behind_since = time.monotonic()
                self._next_try = self.behind_since + RETRY_INITIAL
                self.listener.pause(self.listener.assignment(), ROUTES_BEHIND)
        self.listener.rewind(batch)
        return False

    def _tenants_after(self, batch: Batch, since_ms: int) -> bool:
        """Whether some record of ``batch`` newer than ``since_ms`` carries a tenant. Records
        without one (no baggage, no tenant key, or baggage we cannot read) are decided without
        the routes (baseline takes them, sandboxes skip them), so a batch of only those needs no
        catch-up: in a shared environment most traffic is such, and it keeps flowing even while
        the routes cannot be read. Timestamps within a partition need not grow (several
        producers), so every record is looked at; the tenant comes from the extractor's cache."""
        from_baggage = self.extractor.from_baggage
        return any(
            record.timestamp > since_ms and from_baggage(baggage_value(record.headers)).tenant is not None
            for records in batch.values()
            for record in records
        )

    async def _retry(self) -> None:
        """While the routes are behind: try a catch-up now and then; resume when one succeeds."""
        assert self.behind_since is not None
        now = time.monotonic()
        if now < self._next_try:
            return
        try:
            await self.source.catch_up()
        except RouteSourceError as exc:
            self.metrics.route_source_errors.inc()
            self.last_error = str(exc)
            waited = now - self.behind_since
            self._next_try = now + min(RETRY_MAX, max(RETRY_INITIAL, waited))
            log.warning("routes still cannot be read after %.0fs: %s", waited, exc)
            return
        log.info("routes readable again after %.1fs; resuming", now - self.behind_since)
        self.behind_since = None
        self.listener.resume(self.listener.assignment(), ROUTES_BEHIND)
