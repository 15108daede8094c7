"""Coalesced catch-up: many callers, one sync with the backing store at a time.

A sidecar calls ``catch_up()`` when it meets a tenant it does not know on a record newer than its
table, possibly for many records of one batch at once. A caller must not be answered by a sync
that *started* before it called: that sync may have missed a route written just before the call.
So callers arriving while a sync is in flight wait for the next one, which they then share; a
burst of calls costs at most two round trips, and a quiet table costs none.

A record is *covered* (decided without a sync) when it is no later than the completeness time
plus the usable route lead (:func:`proxy.routes.lead.covered_until`); the catch-ups records
ask for are counted by reason, for ``ktp_route_catch_ups_total``.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Awaitable, Callable

from proxy.routes.lead import CATCH_UP_RETRY, DEFAULT_LEAD_MARGIN_MS, catch_up_reason, covered_until


def now_ms() -> int:
    """Wall-clock milliseconds since the epoch (record timestamps and effective times use it)."""
    return time.time_ns() // 1_000_000


class CatchUp:
    """Runs ``sync`` on demand, coalescing concurrent callers.

    ``sync`` brings the table up to date with everything written to the backing store before it
    started, and returns the wall-clock time (ms) up to which the table is then known complete.
    Its exceptions reach every caller that waited for it.
    """

    __slots__ = ("_completed", "_lead_ms", "_started", "_sync", "_task", "catch_ups", "margin_ms", "synced_at_ms")

    def __init__(
        self,
        sync: Callable[[], Awaitable[int]],
        *,
        lead_ms: Callable[[int], int] | None = None,
        margin_ms: int = DEFAULT_LEAD_MARGIN_MS,
    ) -> None:
        self._sync = sync
        self._lead_ms = lead_ms
        self.margin_ms = margin_ms
        #: Catch-ups asked for, by reason (records not covered; retries after a failure).
        self.catch_ups: collections.Counter[str] = collections.Counter()
        self._task: asyncio.Task[None] | None = None
        # Syncs are numbered as they start; a caller needs one numbered above every sync that
        # had started when it called. Counting (not timing) makes the order exact.
        self._started = 0
        self._completed = 0
        self.synced_at_ms = 0

    def __repr__(self) -> str:
        return f"CatchUp(synced_at_ms={self.synced_at_ms}, in_flight={self._task is not None})"

    def lead_ms(self, now: int) -> int:
        """The route lead the writers state (0 when unknown)."""
        return 0 if self._lead_ms is None else self._lead_ms(now)

    @property
    def covered_until_ms(self) -> int:
        """Time through which no route missing from the table can take effect."""
        return covered_until(self.synced_at_ms, self.lead_ms(now_ms()), self.margin_ms)

    async def __call__(self, at_ms: int | None = None, *, counted: bool = True) -> None:
        """Return once the table holds everything written before this call; at once when
        ``at_ms`` (a record's time) is covered. ``counted`` False: a sync of the source's own
        (start, timer), not asked for by a record or a retry."""
        if at_ms is not None:
            now = now_ms()
            lead = self.lead_ms(now)
            if at_ms <= covered_until(self.synced_at_ms, lead, self.margin_ms):
                return
            if counted:
                self.catch_ups[catch_up_reason(at_ms, now, lead, self.margin_ms)] += 1
        elif counted:
            self.catch_ups[CATCH_UP_RETRY] += 1
        needed = self._started + 1
        while self._completed < needed:
            task = self._task
            if task is None or task.done():
                self._started += 1
                task = self._task = asyncio.create_task(self._run(self._started), name="ktp-routes-catch-up")
                task.add_done_callback(_retrieve)
            # shield: a caller giving up (cancelled) must not cancel the sync others wait for.
            await asyncio.shield(task)

    async def _run(self, number: int) -> None:
        synced_at_ms = await self._sync()
        self._completed = max(self._completed, number)
        self.synced_at_ms = max(self.synced_at_ms, synced_at_ms)

    def advance(self, synced_at_ms: int) -> None:
        """Record completeness learnt elsewhere (e.g. an answer that carried it)."""
        self.synced_at_ms = max(self.synced_at_ms, synced_at_ms)

    def cancel(self) -> None:
        """Cancel a sync in flight (the source is stopping); its waiters see CancelledError."""
        if self._task is not None:
            self._task.cancel()
            self._task = None


def _retrieve(task: asyncio.Task[None]) -> None:
    # Every waiter may have been cancelled; fetch the exception so asyncio does not log it as
    # "never retrieved" (the waiters, if any, got it already).
    if not task.cancelled():
        task.exception()
