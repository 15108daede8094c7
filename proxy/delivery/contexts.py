"""DeliveryContexts: what ``ktp-delivery: <id>`` on a publish request refers to.

Every delivery is sent with a ``ktp-delivery`` header. While the delivery is in flight, and for a
grace period after it is done (``--delivery-context-grace``, default 30 s: apps often publish
from a background task after they answered), its id maps to the context headers the app was
sent (trace context and baggage). A publish request naming the id gets that context, so an app
with no OpenTelemetry keeps the tenant on what it produces.

Memory is bounded: in-flight entries are bounded by ``--max-in-flight``; finished ones by
``MAX_FINISHED`` besides the grace, oldest dropped first. An id that is unknown, expired or
dropped is refused by the publish endpoint (422), never silently treated as "no tenant".

Ids are ``<random prefix>-<counter>``: unique across restarts of the sidecar, cheap to make.
"""

from __future__ import annotations

import secrets
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping

DEFAULT_GRACE = 30.0
MAX_FINISHED = 16384
# Context values shared between entries (see DeliveryContexts) and how many distinct ones.
SHARED_FIELD = "baggage"
MAX_SHARED = 1024

Context = tuple[tuple[str, str], ...]


class DeliveryContexts:
    """Bounded map of delivery id → context headers, for deliveries in flight and recently done.

    Kept compact, since a busy sidecar holds ``max_finished`` of them: entries are keyed by the
    id's counter, a context is stored as one flat tuple of names and values, a ``baggage`` value
    (the same for every record of a tenant) is shared between entries, and finished entries
    expire in the order they finished (the grace is the same for all), tracked by two deques
    rather than a timestamp tuple per entry.
    """

    __slots__ = (
        "_baggage", "_clock", "_closed_at", "_counter", "_finished", "_open", "_order", "_prefix", "grace",
        "max_finished",
    )

    def __init__(
        self,
        grace: float = DEFAULT_GRACE,
        *,
        max_finished: int = MAX_FINISHED,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.grace = grace
        self.max_finished = max_finished
        self._clock = clock
        self._prefix = secrets.token_hex(4) + "-"
        self._counter = 0
        # id -> (counter, (name, value, name, value, ...)) in flight; counter -> context after.
        self._open: dict[str, tuple[int, tuple[str, ...]]] = {}
        self._finished: dict[int, tuple[str, ...]] = {}
        # Finished counters in the order they finished, and when each did.
        self._order: deque[int] = deque()
        self._closed_at: deque[float] = deque()
        # One string per distinct baggage value (bounded: started over when full).
        self._baggage: dict[str, str] = {}

    def __repr__(self) -> str:
        return (
            f"DeliveryContexts(grace={self.grace}, in_flight={len(self._open)}, "
            f"finished={len(self._finished)})"
        )

    def __len__(self) -> int:
        return len(self._open) + len(self._finished)

    def open(self, context: Context) -> str:
        """Register a delivery about to be sent; returns its id."""
        flat: list[str] = []
        for name, value in context:
            flat += (name, self._shared(value) if name == SHARED_FIELD else value)
        return self._store(tuple(flat))

    def open_headers(self, headers: Mapping[str, str], names: Iterable[str]) -> str:
        """Register a delivery whose context is the ``names`` that ``headers`` has."""
        # Called for every delivery: _shared and _store are written out here.
        flat: list[str] = []
        shared = self._baggage
        for name in names:
            value = headers.get(name)
            if value is not None:
                if name == SHARED_FIELD:
                    value = shared.get(value) or self._shared(value)
                flat += (name, value)
        self._counter = counter = self._counter + 1
        delivery_id = f"{self._prefix}{counter}"
        self._open[delivery_id] = (counter, tuple(flat))
        return delivery_id

    def _shared(self, value: str) -> str:
        shared = self._baggage.get(value)
        if shared is None:
            if len(self._baggage) >= MAX_SHARED:
                self._baggage.clear()
            shared = self._baggage[value] = value
        return shared

    def _store(self, flat: tuple[str, ...]) -> str:
        self._counter += 1
        delivery_id = f"{self._prefix}{self._counter}"
        self._open[delivery_id] = (self._counter, flat)
        return delivery_id

    def close(self, delivery_id: str) -> None:
        """The delivery is done (or abandoned): its context stays usable for ``grace`` seconds."""
        entry = self._open.pop(delivery_id, None)
        if entry is None:
            return
        number, flat = entry
        if self.grace <= 0 or self.max_finished <= 0:
            return
        now = self._clock()
        closed_at = self._closed_at
        if closed_at and closed_at[0] < now - self.grace:
            self._prune(now)
        self._finished[number] = flat
        self._order.append(number)
        self._closed_at.append(now)
        if len(self._order) > self.max_finished:
            self._closed_at.popleft()
            del self._finished[self._order.popleft()]

    def get(self, delivery_id: str) -> Context | None:
        """The context of a delivery in flight or within its grace; None if unknown or expired."""
        entry = self._open.get(delivery_id)
        if entry is not None:
            flat = entry[1]
        else:
            number = self._number(delivery_id)
            if number is None:
                return None
            self._prune(self._clock())
            found = self._finished.get(number)
            if found is None:
                return None
            flat = found
        return tuple(zip(flat[::2], flat[1::2]))

    def _number(self, delivery_id: str) -> int | None:
        """The counter of one of our ids, else None."""
        if not delivery_id.startswith(self._prefix):
            return None
        digits = delivery_id[len(self._prefix) :]
        return int(digits) if digits.isdigit() and digits.isascii() else None

    def _prune(self, now: float) -> None:
        """Drop finished entries whose grace is over."""
        closed_at, order, finished = self._closed_at, self._order, self._finished
        deadline = now - self.grace
        while closed_at and closed_at[0] < deadline:
            closed_at.popleft()
            del finished[order.popleft()]
