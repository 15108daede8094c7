"""The assigned partitions' state, with one owner: commit watermarks, lanes, backpressure.

:class:`Partitions` holds a :class:`PartitionState` per assigned partition; the runtime adds and
removes them on rebalances, the fetch loop asks it how much to fetch and which partitions to
leave out, the dispatcher marks records done on it, commits read their positions from it.

Commit watermarks: which offset of a partition may be committed.

Records of a partition may finish out of order (``key`` and ``none`` ordering, retries), but a
Kafka commit says "everything before this offset is done". So per partition we track the records
being delivered that are not done yet, and the commit position is the first of them, or one past
the last record fetched when none is outstanding. Skipped records are done the moment they are
decided and are never tracked one by one: a batch tells :meth:`PartitionOffsets.fetched_through`
where it ended. Pure logic, no I/O.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Hashable, Iterable, Iterator
from dataclasses import dataclass, field
from itertools import repeat

from aiokafka import TopicPartition

# Records fetched but not done, the whole sidecar's, that backpressure aims at: each costs about
# 1.1 KB of memory (the record, its headers, its queue and watermark entries; 200-byte values),
# and a few hundred per partition keep its lane busy between fetches. The budget is split evenly
# among the assigned partitions (Partitions.add/remove): a partition at its share is not fetched
# until it is down to a quarter of it, so one slow partition holds at most about its share (plus
# one fetch) and leaves the others their room. A fetch asks for the room left, but for at least
# one share (Partitions.room), and the broker may hand it all to one partition: the pending
# records of the whole sidecar stay under about twice the budget (1,792 at most in
# tests/integration/test_backpressure.py with 4 partitions).
MAX_PENDING_RECORDS = 1024
MIN_PARTITION_SHARE = 32


class PartitionOffsets:
    """Outstanding records of one partition and the position that may be committed."""

    __slots__ = ("_done", "_fetched_to", "_order", "committed", "position")

    def __init__(self, committed: int | None = None) -> None:
        # Offsets being delivered, in offset order (records are tracked as fetched), and the
        # done ones among them that wait for an earlier one.
        self._order: deque[int] = deque()
        self._done: dict[int, bool] = {}
        # One past the last record fetched, None before the first.
        self._fetched_to: int | None = None
        # Next offset to commit: everything below it is done. None until something is fetched.
        self.position: int | None = committed
        self.committed: int | None = committed

    def __repr__(self) -> str:
        return (
            f"PartitionOffsets(position={self.position}, committed={self.committed}, "
            f"outstanding={self.pending})"
        )

    @property
    def pending(self) -> int:
        """Records being delivered and not done (in flight, queued, or done and waiting for an
        earlier one)."""
        return len(self._order)

    @property
    def dirty(self) -> bool:
        """Whether ``position`` moved past what was last committed."""
        return self.position is not None and self.position != self.committed

    def begin(self, offset: int) -> None:
        """Track a fetched record that is not done yet (it is being delivered)."""
        if not self._order:
            # Everything fetched before it is done; below the first record fetched since the
            # assignment, everything is too (it sits at the committed offset, or where a reset
            # or seek put the consumer). Knowing this now gives a lag even when that very first
            # record is stuck.
            self.position = offset
        self._order.append(offset)
        self._done[offset] = False
        self._fetched_to = offset + 1

    def begin_many(self, offsets: list[int]) -> None:
        """:meth:`begin` for each of ``offsets`` (increasing, above every offset tracked)."""
        if not offsets:
            return
        if not self._order:
            self.position = offsets[0]  # as begin()
        self._order.extend(offsets)
        self._done.update(dict.fromkeys(offsets, False))
        self._fetched_to = offsets[-1] + 1

    def fetched_through(self, offset: int) -> None:
        """Every record fetched up to ``offset`` is either tracked by :meth:`begin` or done (a
        skipped record is done when it is decided). Once per batch, after its records."""
        self._fetched_to = offset + 1
        if not self._order:
            self.position = offset + 1

    def done(self, offset: int) -> None:
        """A tracked record is done (delivered, dead-lettered or dropped)."""
        done = self._done
        if done.get(offset) is not False:
            return  # abandoned by a revoke, or a duplicate completion
        done[offset] = True
        order = self._order
        while order and done[order[0]]:
            del done[order.popleft()]
        self.position = order[0] if order else self._fetched_to

    def done_many(self, offsets: list[int]) -> None:
        """:meth:`done` for each of ``offsets`` (a bulk's records, done together: increasing,
        each once)."""
        done = self._done
        order = self._order
        count = len(offsets)
        if count and order and order[0] == offsets[0] and len(order) >= count and order[count - 1] == offsets[-1]:
            # The usual bulk in partition order: the oldest records outstanding, all of them (an
            # increasing run of tracked offsets from the first to its last). Forgotten by C-level
            # calls, then whatever was done behind them, as below.
            deque(map(done.pop, map(deque.popleft, repeat(order, count))), maxlen=0)
            while order and done[order[0]]:
                del done[order.popleft()]
            self.position = order[0] if order else self._fetched_to
            return
        changed = False
        for offset in offsets:
            if done.get(offset) is False:
                done[offset] = True
                changed = True
        if not changed:
            return  # abandoned by a revoke, or duplicate completions
        while order and done[order[0]]:
            del done[order.popleft()]
        self.position = order[0] if order else self._fetched_to

    def abandon(self) -> None:
        """Forget outstanding records (partition revoked); the position stays where it is."""
        self._order.clear()
        self._done.clear()

    def mark_committed(self, position: int) -> None:
        self.committed = position


@dataclass(eq=False, slots=True)
class PartitionState:
    """What the sidecar holds for one assigned partition."""

    tp: TopicPartition
    offsets: PartitionOffsets = field(default_factory=PartitionOffsets)
    lanes: set[Hashable] = field(default_factory=set)
    # Lanes of this partition waiting to retry; the partition is paused while any is.
    retrying: int = 0
    # Not fetched for now: too many of its records are not done yet (Partitions.check_backpressure).
    backpressured: bool = False
    # Read before every delivery: a plain attribute, the event is for waits to end on.
    revoked: bool = field(default=False, init=False)
    _revoked: asyncio.Event = field(default_factory=asyncio.Event, init=False, repr=False)

    def revoke(self) -> None:
        """Stop this partition's lanes: waits (backoff, app health) end at once."""
        self.revoked = True
        self._revoked.set()

    async def sleep_unless_revoked(self, seconds: float) -> None:
        """Sleep ``seconds``, or less if the partition is revoked meanwhile: a rebalance never
        waits for a backoff (a ``Retry-After`` may be a minute)."""
        try:
            async with asyncio.timeout(seconds):
                await self._revoked.wait()
        except TimeoutError:
            pass

    async def wait_unless_revoked(self, waiter: Awaitable[object]) -> bool:
        """Await ``waiter`` unless the partition is revoked first; True if it completed."""
        waiting = asyncio.ensure_future(waiter)
        revoked = asyncio.ensure_future(self._revoked.wait())
        try:
            await asyncio.wait((waiting, revoked), return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiting.cancel()
            revoked.cancel()
        return not self.revoked


class Partitions:
    """The state of every assigned partition, and the backpressure budget split among them."""

    def __init__(self) -> None:
        self._states: dict[TopicPartition, PartitionState] = {}
        # Backpressure: partitions not to fetch, each partition's share of MAX_PENDING_RECORDS
        # (high) and the level it must drain to (low), and an event set when a partition leaves
        # ``blocked`` (the fetch loop waits on it).
        self.blocked: set[TopicPartition] = set()
        self.unblocked = asyncio.Event()
        self.high = MAX_PENDING_RECORDS
        self.low = MAX_PENDING_RECORDS // 4

    def __repr__(self) -> str:
        return f"Partitions(assigned={len(self._states)}, blocked={len(self.blocked)}, share={self.high})"

    def __len__(self) -> int:
        return len(self._states)

    def __iter__(self) -> Iterator[PartitionState]:
        return iter(list(self._states.values()))

    def __contains__(self, tp: object) -> bool:
        return tp in self._states

    def get(self, tp: TopicPartition) -> PartitionState | None:
        """The state of ``tp`` if it is assigned."""
        return self._states.get(tp)

    def tps(self) -> frozenset[TopicPartition]:
        """The partitions held."""
        return frozenset(self._states)

    def of(self, tps: Iterable[TopicPartition]) -> list[PartitionState]:
        """The states of those of ``tps`` that are held."""
        return [self._states[tp] for tp in tps if tp in self._states]

    def add(self, tps: Iterable[TopicPartition]) -> None:
        """Hold state for newly assigned partitions (kept if already held); re-split the budget."""
        for tp in tps:
            if tp not in self._states:
                self._states[tp] = PartitionState(tp)
        self._split()

    def remove(self, states: Iterable[PartitionState]) -> None:
        """Forget revoked partitions (their outstanding records are abandoned); re-split."""
        for state in states:
            state.offsets.abandon()
            self.release(state)
            self._states.pop(state.tp, None)
        self._split()

    def _split(self) -> None:
        self.high = max(MIN_PARTITION_SHARE, MAX_PENDING_RECORDS // max(len(self._states), 1))
        self.low = self.high // 4

    # -- backpressure ------------------------------------------------------------------------

    def room(self) -> int:
        """How many more records may be fetched now (never less than one partition's share:
        records a fetch brings that are skipped are done at once)."""
        pending = 0
        for state in self._states.values():
            pending += state.offsets.pending
        return max(self.high, MAX_PENDING_RECORDS - pending)

    def check_backpressure(self, state: PartitionState) -> None:
        """Stop fetching a partition whose undone records pile up; fetch it again once they
        drain. Not a pause: what the Kafka client holds for it stays there (KafkaListener.fetch)."""
        pending = state.offsets.pending
        if pending >= self.high:
            if not state.backpressured:
                state.backpressured = True
                self.blocked.add(state.tp)
        elif pending <= self.low and state.backpressured:
            self.release(state)

    def release(self, state: PartitionState) -> None:
        """Fetch ``state``'s partition again (its records drained, or it was revoked)."""
        if state.backpressured:
            state.backpressured = False
            self.blocked.discard(state.tp)
            self.unblocked.set()

    def done(self, state: PartitionState, offset: int) -> None:
        """A tracked record of ``state`` is done; fetch its partition again once it drained."""
        offsets = state.offsets
        offsets.done(offset)
        if state.backpressured and offsets.pending <= self.low:
            self.release(state)

    def done_many(self, state: PartitionState, offsets: list[int]) -> None:
        """:meth:`done` for each of ``offsets``."""
        offsets_of = state.offsets
        offsets_of.done_many(offsets)
        if state.backpressured and offsets_of.pending <= self.low:
            self.release(state)

    # -- commits -----------------------------------------------------------------------------

    def commit_positions(self, only: frozenset[TopicPartition] | None = None) -> dict[TopicPartition, int]:
        """The done watermark of every partition (or of ``only``) that moved since its commit."""
        return {
            tp: state.offsets.position
            for tp, state in self._states.items()
            if state.offsets.position is not None and state.offsets.dirty and (only is None or tp in only)
        }

    def mark_committed(self, offsets: dict[TopicPartition, int]) -> None:
        """``offsets`` were committed (partitions revoked meanwhile are ignored)."""
        for tp, position in offsets.items():
            state = self._states.get(tp)
            if state is not None:
                state.offsets.mark_committed(position)
