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
from collections import OrderedDict
from collections.abc import Callable

DEFAULT_GRACE = 30.0
MAX_FINISHED = 16384

Context = tuple[tuple[str, str], ...]


class DeliveryContexts:
    """Bounded map of delivery id → context headers, for deliveries in flight and recently done."""

    __slots__ = ("_clock", "_counter", "_finished", "_next_expiry", "_open", "_prefix", "grace", "max_finished")

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
        self._prefix = secrets.token_hex(4)
        self._counter = 0
        self._open: dict[str, Context] = {}
        # id → (expiry, context), in order of expiry (grace is the same for all).
        self._finished: OrderedDict[str, tuple[float, Context]] = OrderedDict()
        self._next_expiry = float("inf")  # of the oldest finished entry

    def __repr__(self) -> str:
        return (
            f"DeliveryContexts(grace={self.grace}, in_flight={len(self._open)}, "
            f"finished={len(self._finished)})"
        )

    def __len__(self) -> int:
        return len(self._open) + len(self._finished)

    def open(self, context: Context) -> str:
        """Register a delivery about to be sent; returns its id."""
        self._counter += 1
        delivery_id = f"{self._prefix}-{self._counter}"
        self._open[delivery_id] = context
        return delivery_id

    def close(self, delivery_id: str) -> None:
        """The delivery is done (or abandoned): its context stays usable for ``grace`` seconds."""
        context = self._open.pop(delivery_id, None)
        if context is None:
            return
        now = self._clock()
        if now > self._next_expiry:
            self._prune(now)
        if self.grace > 0 and self.max_finished > 0:
            finished = self._finished
            if not finished:
                self._next_expiry = now + self.grace
            finished[delivery_id] = (now + self.grace, context)
            if len(finished) > self.max_finished:
                finished.popitem(last=False)
                self._next_expiry = next(iter(finished.values()))[0]

    def get(self, delivery_id: str) -> Context | None:
        """The context of a delivery in flight or within its grace; None if unknown or expired."""
        context = self._open.get(delivery_id)
        if context is not None:
            return context
        entry = self._finished.get(delivery_id)
        if entry is None:
            return None
        if entry[0] < self._clock():
            self._prune(self._clock())
            return None
        return entry[1]

    def _prune(self, now: float) -> None:
        finished = self._finished
        while finished:
            expiry = next(iter(finished.values()))[0]
            if expiry >= now:
                self._next_expiry = expiry
                return
            finished.popitem(last=False)
        self._next_expiry = float("inf")
