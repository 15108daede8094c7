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
from itertools import repeat
from collections.abc import Callable, Iterable, Mapping

DEFAULT_GRACE = 30.0
MAX_FINISHED = 16384
# Context values shared between entries (see DeliveryContexts) and how many distinct ones.
SHARED_FIELD = "baggage"
MAX_SHARED = 1024

Context = tuple[tuple[str, str], ...]


class DeliveryContexts:
    """Bounded map of delivery id → context headers, for deliveries in flight and recently done.

    Kept compact and cheap, since every delivery opens and closes one and a busy sidecar holds
    ``max_finished`` of them: entries are keyed by the id's counter in one dict for in-flight and
    finished ones alike (a close is one look-up, not a pop and an insert), a context is stored as one flat tuple of
    names and values, a ``baggage`` value (the same for every record of a tenant) is shared
    between entries, and finished entries expire in the order they finished (the grace is the
    same for all), tracked by two deques rather than a timestamp tuple per entry. Only finished
    counters are in those deques, so an entry in flight never expires.
    """

    __slots__ = (
        "_baggage", "_clock", "_closed_at", "_entries", "_finished", "_order", "_prefix", "counter", "grace",
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
        #: The counter of the last id handed out (what :meth:`close_number` takes).
        self.counter = 0
        # counter -> (name, value, name, value, ...), in flight and finished.
        self._entries: dict[int, tuple[str, ...]] = {}
        # Finished counters in the order they finished (a bulk's together, as one list), when
        # each finished, and how many counters they hold.
        self._order: deque[int | list[int]] = deque()
        self._closed_at: deque[float] = deque()
        self._finished = 0
        # One string per distinct baggage value (bounded: started over when full).
        self._baggage: dict[str, str] = {}

    def __repr__(self) -> str:
        finished = self._finished
        return (
            f"DeliveryContexts(grace={self.grace}, in_flight={len(self._entries) - finished}, "
            f"finished={finished})"
        )

    def __len__(self) -> int:
        return len(self._entries)

    def open(self, context: Context) -> str:
        """Register a delivery about to be sent; returns its id."""
        flat: list[str] = []
        for name, value in context:
            flat += (name, self._shared(value) if name == SHARED_FIELD else value)
        self.counter = counter = self.counter + 1
        self._entries[counter] = tuple(flat)
        return f"{self._prefix}{counter}"

    def open_headers(self, headers: Mapping[str, str], names: Iterable[str]) -> str:
        """Register a delivery whose context is the ``names`` that ``headers`` has."""
        # Called for every delivery: _shared is written out here.
        flat: list[str] = []
        shared = self._baggage
        for name in names:
            value = headers.get(name)
            if value is not None:
                if name == SHARED_FIELD:
                    value = shared.get(value) or self._shared(value)
                flat += (name, value)
        self.counter = counter = self.counter + 1
        self._entries[counter] = tuple(flat)
        return f"{self._prefix}{counter}"

    @property
    def prefix(self) -> str:
        """What every id of ours starts with; an id is the prefix and a counter."""
        return self._prefix

    def open_many(self, flats: list[tuple[str, ...]]) -> int:
        """Register deliveries (a bulk's entries) whose contexts are ``flats`` (each name, value,
        name, value ...), under consecutive counters; returns the first."""
        first = self.counter + 1
        self._entries.update(zip(range(first, first + len(flats)), flats))
        self.counter += len(flats)
        return first

    def _shared(self, value: str) -> str:
        shared = self._baggage.get(value)
        if shared is None:
            if len(self._baggage) >= MAX_SHARED:
                self._baggage.clear()
            shared = self._baggage[value] = value
        return shared

    def close(self, delivery_id: str) -> None:
        """The delivery is done (or abandoned): its context stays usable for ``grace`` seconds."""
        number = self._number(delivery_id)
        if number is not None:
            self.close_number(number)

    def close_number(self, number: int) -> None:
        """:meth:`close` by the id's counter (:attr:`counter` right after the open). Once per id."""
        if number not in self._entries:
            return
        if self.grace <= 0 or self.max_finished <= 0:
            del self._entries[number]
            return
        now = self._clock()
        closed_at = self._closed_at
        if closed_at and closed_at[0] < now - self.grace:
            self._prune(now)
        self._order.append(number)
        closed_at.append(now)
        self._finished += 1
        if self._finished > self.max_finished:
            self._drop_oldest()

    def close_numbers(self, numbers: list[int]) -> None:
        """:meth:`close_number` for each of ``numbers`` (a bulk's entries, done together; the list is kept)."""
        if self.grace <= 0 or self.max_finished <= 0:
            for number in numbers:
                self._entries.pop(number, None)
            return
        if not numbers:
            return
        now = self._clock()
        closed_at = self._closed_at
        if closed_at and closed_at[0] < now - self.grace:
            self._prune(now)
        # One item for the bulk: expired and dropped together, by C-level calls, not one by one.
        self._order.append(numbers)  # each once, as for close_number: an entry in flight never expires
        closed_at.append(now)
        self._finished += len(numbers)
        while self._finished > self.max_finished:
            self._drop_oldest()

    def get(self, delivery_id: str) -> Context | None:
        """The context of a delivery in flight or within its grace; None if unknown or expired."""
        number = self._number(delivery_id)
        if number is None:
            return None
        self._prune(self._clock())
        flat = self._entries.get(number)
        if flat is None:
            return None
        # By name: the order open_headers keeps, whichever way the entry was opened (open_many
        # keeps a record's own order).
        return tuple(sorted(zip(flat[::2], flat[1::2])))

    def _number(self, delivery_id: str) -> int | None:
        """The counter of one of our ids, else None."""
        if not delivery_id.startswith(self._prefix):
            return None
        digits = delivery_id[len(self._prefix) :]
        return int(digits) if digits.isdigit() and digits.isascii() else None

    def _prune(self, now: float) -> None:
        """Drop finished entries whose grace is over."""
        closed_at = self._closed_at
        deadline = now - self.grace
        while closed_at and closed_at[0] < deadline:
            self._drop_oldest()

    def _drop_oldest(self) -> None:
        """Forget the entry, or the bulk of entries, that finished first."""
        self._closed_at.popleft()
        oldest = self._order.popleft()
        entries = self._entries
        if oldest.__class__ is int:
            entries.pop(oldest, None)
            self._finished -= 1
        else:
            assert isinstance(oldest, list)
            deque(map(entries.pop, oldest, repeat(None)), maxlen=0)
            self._finished -= len(oldest)
