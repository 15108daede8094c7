"""``http://host:port`` route source: watch the route service (``--routes http://…``).

For sidecars that may not read the routes topic themselves (no Kafka ACL for it, or another
cluster). The source long-polls ``GET /v1/routes?since=<version>&wait=<s>``, which answers every
record above the cursor, deletions included, each with its version and effective time; the table
applies them exactly as the ``kafka:`` source does, so history and decisions are the same.

The first answer, asked with ``sync=true``, is the sync marker: the replica caught up with the
routes topic before answering, so the table is then complete (``table.synced``). ``catch_up()``
asks the same way. ``synced_at_ms`` is the replica's own completeness time, carried in every
answer; the records carry the lead their writers state, learnt as the ``kafka:`` source learns it
(:class:`~proxy.routes.lead.LeadTracker`). So that the completeness time stays fresh enough for
the lead to cover live records, the watch asks again at least every third of the usable lead
(a few requests a second whatever the traffic), not only when routes change.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Callable

from proxy.backoff import Backoff
from proxy.errors import RouteSourceError
from proxy.routes.client import RouteServiceClient, RouteServiceError, WatchResult
from proxy.routes.lead import DEFAULT_LEAD_MARGIN_MS, LeadTracker
from proxy.routes.catchup import CatchUp, now_ms
from proxy.routes.table import RouteTable

log = logging.getLogger(__name__)

DEFAULT_WATCH_WAIT = 30.0
# Shortest long-poll the watch uses when a lead makes fresh completeness worth asking for.
MIN_WATCH_WAIT = 0.1
DEFAULT_CATCH_UP_TIMEOUT = 10.0
RETRY_INITIAL = 0.2
RETRY_MAX = 5.0


class HttpRouteSource:
    """Keeps a :class:`RouteTable` in step with a route service. ``start()`` returns once the
    table is synced, retrying while the service cannot be reached."""

    def __init__(
        self,
        server: str,
        *,
        table: RouteTable | None = None,
        on_error: Callable[[str], None] | None = None,
        watch_wait: float = DEFAULT_WATCH_WAIT,
        catch_up_timeout: float = DEFAULT_CATCH_UP_TIMEOUT,
        token: str | None = None,
        ssl_context: ssl.SSLContext | None = None,
        lead_margin_ms: int = DEFAULT_LEAD_MARGIN_MS,
    ) -> None:
        self.table = table if table is not None else RouteTable()
        self.client = RouteServiceClient(
            server, timeout=catch_up_timeout, token=token, ssl_context=ssl_context
        )
        self.watch_wait = watch_wait
        #: Every record up to this version is in the table (-1: none yet).
        self.cursor = -1
        self._on_error = on_error
        #: The lead the route service's writers state, learnt from the records read.
        self.lead = LeadTracker()
        self._catch_up = CatchUp(self._sync, lead_ms=self.lead.lead_ms, margin_ms=lead_margin_ms)
        #: Catch-ups asked for by records not covered, by reason (``ktp_route_catch_ups_total``).
        self.catch_ups = self._catch_up.catch_ups
        self._task: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return f"HttpRouteSource(server={self.client.server!r}, cursor={self.cursor}, table={self.table!r})"

    def describe(self) -> str:
        return self.client.server

    @property
    def synced_at_ms(self) -> int:
        """Wall-clock time (ms) before which every acknowledged route write is in the table."""
        return self._catch_up.synced_at_ms

    @property
    def covered_until_ms(self) -> int:
        """Time through which no route missing from the table can take effect."""
        return self._catch_up.covered_until_ms

    def next_watch_wait(self) -> float:
        """The long-poll of the next watch: a third of the usable lead (so completeness is never
        older than that), or ``watch_wait`` when there is no usable lead."""
        usable_ms = self.lead.lead_ms(now_ms()) - self._catch_up.margin_ms
        if usable_ms <= 0:
            return self.watch_wait
        return max(MIN_WATCH_WAIT, min(self.watch_wait, usable_ms / 3000))

    async def start(self) -> None:
        await self.client.start()
        backoff = Backoff(RETRY_INITIAL, RETRY_MAX)
        while True:
            try:
                await self._catch_up(counted=False)
                break
            except RouteSourceError as exc:
                self._report(f"{exc}; retrying in {backoff.delay:.1f}s")
                await backoff.wait()
        self.table.synced = True
        log.info("routes from %s synced at version %d", self.client.server, self.cursor)
        self._task = asyncio.create_task(self._watch(), name="ktp-http-routes")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._catch_up.cancel()
        await self.client.stop()

    async def __aenter__(self) -> HttpRouteSource:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def catch_up(self, at_ms: int | None = None) -> None:
        """Return once the table includes every route written before this call (one request to
        the route service, shared by concurrent callers; none when ``at_ms`` is already covered).
        Raises :class:`RouteSourceError` when the service cannot answer."""
        await self._catch_up(at_ms)

    async def _sync(self) -> int:
        try:
            result = await self.client.watch(self.cursor, sync=True)
        except RouteServiceError as exc:
            raise RouteSourceError(f"route service {self.client.server}: {exc}") from exc
        self._apply(result)
        return result.synced_at_ms

    async def _watch(self) -> None:
        backoff = Backoff(RETRY_INITIAL, RETRY_MAX)
        while True:
            try:
                result = await self.client.watch(self.cursor, wait=self.next_watch_wait())
            except RouteServiceError as exc:
                self._report(
                    f"watching route service {self.client.server} failed, retrying in {backoff.delay:.1f}s: {exc}"
                )
                await backoff.wait()
                continue
            backoff.reset()
            self._apply(result)

    def _apply(self, result: WatchResult) -> None:
        # Answers of the watch and of a catch-up may arrive out of order; applying a record twice
        # is harmless (same effective time: replaced), and the cursor only moves forward.
        for record in result.records:
            self.table.apply(record.to_route())
            self.lead.observe(record.lead_ms, record.written_at_ms, record.effective_from_ms)
        self.cursor = max(self.cursor, result.version)
        # The answer holds every record the replica had above our cursor, and the replica had
        # every write acknowledged before its synced_at: so now does the table.
        self._catch_up.advance(result.synced_at_ms)
        if result.snapshot:
            log.info("route service %s answered with a snapshot at version %d", self.client.server, result.version)

    def _report(self, message: str) -> None:
        log.warning("%s", message)
        if self._on_error is not None:
            self._on_error(message)
