"""Route lead: how far ahead of its write a route takes effect, and what a reader may rely on.

The route service stamps every route with ``effective_from`` = write time + *lead* (``--route-
lead``, 1 s by default). A reader whose table is complete through time ``s`` (every write the
broker acknowledged before ``s`` is in it) then knows that no route missing from its table takes
effect before ``s + lead``: records up to then are decided locally, and only a newer record (the
reader is behind, or the producer's clock is ahead) needs a catch-up round trip first.

A reader must never assume a larger lead than the writers use, so the lead travels with the data:
each route record states its writer's lead (``lead_ms``) and write time (``written_at``); a record
without them (written by an older route service) states lead 0. :class:`LeadTracker`, fed every
record in topic order, gives

- ``lead_ms(now)``: the smallest lead stated by the latest record or by any record written within
  the last :data:`LEAD_MEMORY_MS` (replicas with different leads during a rollout: the smallest
  wins);
- ``honoured_lead_ms(own, now)``: what a writer must honour: ``max(own, lead_ms(now))``, so a writer
  with a smaller lead than the fleet's never breaks what readers assume before they have read its
  statement;
- ``floor_ms``: the latest ``effective_from`` seen; a writer stamps above it, so after a lead is
  lowered, readers that have not read the lowering record yet are covered by the record before it.

Pure logic, no I/O: the route service's store and every route source use the same class.
"""

from __future__ import annotations

from collections.abc import Iterable

# Statements of a lead are remembered this long (by write time), so a replica that wrote in the
# last hour keeps the fleet's lead at or below its own. Replicas are meant to share one value;
# the memory covers a rollout that changes it.
LEAD_MEMORY_MS = 3_600_000
# Subtracted from the lead before a reader relies on it: a route write's latency from stamping to
# the broker's acknowledgement, and a reader's clock ahead of the route service's, eat into it.
DEFAULT_LEAD_MARGIN_MS = 250
DEFAULT_ROUTE_LEAD_MS = 1_000
# A lead longer than this is a typo, not a policy: routes would take minutes to apply.
MAX_ROUTE_LEAD_MS = 600_000

# Why a sidecar caught up with its route source before deciding (``ktp_route_catch_ups_total``).
CATCH_UP_AHEAD_OF_CLOCK = "record_ahead_of_clock"
CATCH_UP_TABLE_BEHIND = "table_behind"
CATCH_UP_NO_LEAD = "no_lead"
# A catch-up asked for without a record: the sidecar retrying after the routes could not be read.
CATCH_UP_RETRY = "retry"
CATCH_UP_REASONS = (CATCH_UP_AHEAD_OF_CLOCK, CATCH_UP_TABLE_BEHIND, CATCH_UP_NO_LEAD, CATCH_UP_RETRY)


def covered_until(synced_at_ms: int, lead_ms: int, margin_ms: int = DEFAULT_LEAD_MARGIN_MS) -> int:
    """Time through which a table complete at ``synced_at_ms`` decides records without a round
    trip: no route it misses takes effect before ``synced_at_ms + lead - margin``. A lead no
    larger than the margin gives nothing beyond the sync time itself."""
    return synced_at_ms + max(lead_ms - margin_ms, 0)


def catch_up_reason(record_ms: int, now_ms: int, lead_ms: int, margin_ms: int = DEFAULT_LEAD_MARGIN_MS) -> str:
    """Why a record at ``record_ms`` was not covered by the table: its timestamp is later than the
    reader's clock allows for (a producer clock ahead), the writers state no usable lead, or the
    reader's table lags behind the topic."""
    if record_ms > now_ms + max(lead_ms - margin_ms, 0):
        return CATCH_UP_AHEAD_OF_CLOCK
    if lead_ms <= margin_ms:
        return CATCH_UP_NO_LEAD
    return CATCH_UP_TABLE_BEHIND


class LeadTracker:
    """The lead a reader may rely on, learnt from the route records it read (see module doc)."""

    __slots__ = ("_latest_lead", "_latest_written", "_stated", "floor_ms", "memory_ms")

    def __init__(self, memory_ms: int = LEAD_MEMORY_MS) -> None:
        self.memory_ms = memory_ms
        # Lead → latest write time that stated it: a handful of distinct values at most.
        self._stated: dict[int, int] = {}
        self._latest_lead: int | None = None
        self._latest_written = 0
        #: Latest ``effective_from`` of any record read (0: none).
        self.floor_ms = 0

    def __repr__(self) -> str:
        return f"LeadTracker(latest={self._latest_lead}, stated={sorted(self._stated)}, floor_ms={self.floor_ms})"

    def observe(self, lead_ms: int | None, written_at_ms: int | None, effective_from_ms: int) -> None:
        """Take one record, in topic order. ``None`` (a record of an older writer) states lead 0,
        written at its effective time."""
        lead = 0 if lead_ms is None else max(lead_ms, 0)
        written = effective_from_ms if written_at_ms is None else written_at_ms
        if self._stated.get(lead, -1) < written:
            self._stated[lead] = written
        self._latest_lead = lead
        self._latest_written = written
        if effective_from_ms > self.floor_ms:
            self.floor_ms = effective_from_ms

    def observe_all(self, records: Iterable[tuple[int | None, int | None, int]]) -> None:
        """:meth:`observe` each ``(lead_ms, written_at_ms, effective_from_ms)`` in order."""
        for lead, written, effective in records:
            self.observe(lead, written, effective)

    def lead_ms(self, now_ms: int) -> int:
        """The smallest lead stated by the latest record or within the memory; 0 before any record
        (nothing says what the writers use)."""
        if self._latest_lead is None:
            return 0
        horizon = now_ms - self.memory_ms
        lead = self._latest_lead
        for stated, written in list(self._stated.items()):
            if written < horizon:
                if stated != self._latest_lead:
                    del self._stated[stated]
            elif stated < lead:
                lead = stated
        return lead

    def honoured_lead_ms(self, own_lead_ms: int, now_ms: int) -> int:
        """The lead a writer with ``own_lead_ms`` must honour on its next write."""
        if self._latest_lead is None:
            return own_lead_ms
        return max(own_lead_ms, self.lead_ms(now_ms))

    def effective_from_ms(self, own_lead_ms: int, now_ms: int) -> int:
        """When a write stamped at ``now_ms`` takes effect: the honoured lead after it, and after
        every effective time already in the topic."""
        return max(now_ms + self.honoured_lead_ms(own_lead_ms, now_ms), self.floor_ms + 1)
