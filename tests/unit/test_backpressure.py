"""Backpressure bookkeeping of the assigned partitions (proxy.listener.partitions.Partitions),
without a broker or an app: the pending-records budget split among the assigned partitions, the
hysteresis between holding a partition back and fetching it again, and how much one fetch may
ask for.
"""

from __future__ import annotations

import pytest
from aiokafka import TopicPartition

from proxy.listener.partitions import (
    MAX_PENDING_RECORDS,
    MIN_PARTITION_SHARE,
    Partitions,
    PartitionState,
)


def assign(d: Partitions, partitions: int) -> None:
    """Exactly ``partitions`` partitions (of another topic than the tests' own) assigned."""
    d.remove(list(d))
    d.add(TopicPartition("assigned", p) for p in range(partitions))


def held(d: Partitions, partitions: int) -> list[PartitionState]:
    """``partitions`` partitions of topic ``t`` assigned, their states tracked like state()'s."""
    d.remove(list(d))
    d.add(TopicPartition("t", p) for p in range(partitions))
    states = [d.get(TopicPartition("t", p)) for p in range(partitions)]
    for s in states:
        assert s is not None
        _undone[id(s)] = []
    return [s for s in states if s is not None]


# The offsets each test partition has begun and not finished, oldest first (kept here rather than
# read from PartitionOffsets' private fields).
_undone: dict[int, list[int]] = {}


def state(partition: int = 0) -> PartitionState:
    s = PartitionState(TopicPartition("t", partition))
    _undone[id(s)] = []
    return s


def fetch(state: PartitionState, count: int) -> None:
    """``count`` more records of ``state`` fetched and not done (as Sidecar._handle begins them)."""
    undone = _undone[id(state)]
    start = undone[-1] + 1 if undone else state.offsets.position or 0
    for offset in range(start, start + count):
        state.offsets.begin(offset)
        undone.append(offset)


def finish(state: PartitionState, count: int) -> None:
    """The oldest ``count`` pending records of ``state`` are done (delivered in order)."""
    undone = _undone[id(state)]
    for offset in undone[:count]:
        state.offsets.done(offset)
    del undone[:count]


def threshold(d: Partitions) -> int:
    """The pending count at which a fresh partition is first held back, found by feeding it
    records one at a time (behaviour, not the private attribute)."""
    s = state(99)
    for count in range(1, 4 * MAX_PENDING_RECORDS):
        fetch(s, 1)
        d.check_backpressure(s)
        if s.tp in d.blocked:
            d.release(s)
            return count
    raise AssertionError("never held back")


def release_point(d: Partitions, share: int) -> int:
    """The pending count at which a partition held back at ``share`` is fetched again, found by
    finishing its records one at a time."""
    s = state(98)
    fetch(s, share)
    d.check_backpressure(s)
    assert s.tp in d.blocked
    while s.offsets.pending:
        finish(s, 1)
        d.check_backpressure(s)
        if s.tp not in d.blocked:
            return s.offsets.pending
    raise AssertionError("never fetched again")


@pytest.mark.parametrize(
    ("partitions", "share"),
    [
        (0, MAX_PENDING_RECORDS),  # nothing assigned (after a full revoke): no division by zero
        (1, MAX_PENDING_RECORDS),
        (2, MAX_PENDING_RECORDS // 2),
        (3, MAX_PENDING_RECORDS // 3),  # 341: rounded down, the shares never exceed the budget
        (4, MAX_PENDING_RECORDS // 4),
        (MAX_PENDING_RECORDS // MIN_PARTITION_SHARE, MIN_PARTITION_SHARE),  # exactly the minimum
        (MAX_PENDING_RECORDS // MIN_PARTITION_SHARE + 1, MIN_PARTITION_SHARE),  # 31 -> 32
        (1000, MIN_PARTITION_SHARE),
    ],
)
def test_the_budget_is_split_among_assigned_partitions_down_to_a_minimum(partitions: int, share: int) -> None:
    d = Partitions()
    assign(d, partitions)
    assert threshold(d) == share
    assert release_point(d, share) == share // 4
    assert (d.high, d.low) == (share, share // 4)


def test_before_any_assignment_one_partition_may_take_the_whole_budget() -> None:
    assert threshold(Partitions()) == MAX_PENDING_RECORDS


def test_a_partition_is_held_at_its_share_and_fetched_again_only_at_a_quarter() -> None:
    d = Partitions()
    assign(d, 4)
    share, quarter = MAX_PENDING_RECORDS // 4, MAX_PENDING_RECORDS // 16
    s, other = state(0), state(1)

    fetch(s, share - 1)
    d.check_backpressure(s)
    assert not d.blocked and not s.backpressured

    fetch(s, 1)
    d.check_backpressure(s)
    assert d.blocked == {s.tp} and s.backpressured
    assert not d.unblocked.is_set()
    # Another partition has its own share: one slow partition does not hold the others back.
    fetch(other, share - 1)
    d.check_backpressure(other)
    assert d.blocked == {s.tp}

    # Hysteresis: draining below the share is not enough, only down to a quarter of it.
    finish(s, share - quarter - 1)
    assert s.offsets.pending == quarter + 1
    d.check_backpressure(s)
    assert d.blocked == {s.tp} and not d.unblocked.is_set()

    finish(s, 1)
    assert s.offsets.pending == quarter
    d.check_backpressure(s)
    assert not d.blocked and not s.backpressured
    assert d.unblocked.is_set()

    # Fetched again, it is held back again only at the full share, not anywhere above a quarter.
    d.unblocked.clear()
    fetch(s, share - quarter - 1)
    d.check_backpressure(s)
    assert not d.blocked
    fetch(s, 1)
    d.check_backpressure(s)
    assert d.blocked == {s.tp} and not d.unblocked.is_set()


def test_holding_back_twice_is_once_and_release_of_a_free_partition_does_nothing() -> None:
    d = Partitions()
    assign(d, 2)
    s = state()
    fetch(s, MAX_PENDING_RECORDS)
    d.check_backpressure(s)
    d.check_backpressure(s)
    assert d.blocked == {s.tp}

    free = state(1)
    d.release(free)  # e.g. a revoked partition that was never held back
    assert d.blocked == {s.tp} and not d.unblocked.is_set()

    d.release(s)  # a revoked partition that was held back: whatever its pending count
    assert not d.blocked and not s.backpressured and d.unblocked.is_set()
    d.unblocked.clear()
    d.release(s)
    assert not d.unblocked.is_set()


def test_each_release_sets_unblocked_for_the_fetch_loop_waiting_on_it() -> None:
    d = Partitions()
    assign(d, 2)
    a, b = state(0), state(1)
    for s in (a, b):
        fetch(s, MAX_PENDING_RECORDS // 2)
        d.check_backpressure(s)
    assert d.blocked == {a.tp, b.tp}
    # The fetch loop clears the event before waiting on it (Sidecar._fetch).
    d.unblocked.clear()
    finish(a, MAX_PENDING_RECORDS // 2)
    d.check_backpressure(a)
    assert d.unblocked.is_set() and d.blocked == {b.tp}
    d.unblocked.clear()
    finish(b, MAX_PENDING_RECORDS // 2)
    d.check_backpressure(b)
    assert d.unblocked.is_set() and not d.blocked


def test_a_smaller_share_after_a_rebalance_holds_back_at_the_next_check() -> None:
    d = Partitions()
    assign(d, 2)  # share 512
    s = state()
    fetch(s, 300)
    d.check_backpressure(s)
    assert not d.blocked
    assign(d, 4)  # share 256: 300 pending is over it
    d.check_backpressure(s)
    assert d.blocked == {s.tp}
    assign(d, 1)  # share 1024, quarter 256: 300 pending is still above the quarter
    d.check_backpressure(s)
    assert d.blocked == {s.tp}
    finish(s, 44)
    d.check_backpressure(s)
    assert not d.blocked


def test_room_is_what_is_left_of_the_budget_but_never_less_than_one_share() -> None:
    d = Partitions()
    assert d.room() == MAX_PENDING_RECORDS  # nothing assigned
    states = held(d, 4)
    share = MAX_PENDING_RECORDS // 4
    assert d.room() == MAX_PENDING_RECORDS

    fetch(states[0], 100)
    fetch(states[1], 200)
    assert d.room() == MAX_PENDING_RECORDS - 300
    # Records of every partition count, whether or not it is held back.
    fetch(states[2], MAX_PENDING_RECORDS - 300 - share + 1)
    assert d.room() == share
    fetch(states[3], 1)
    assert d.room() == share
    fetch(states[3], 5 * MAX_PENDING_RECORDS)  # far over the budget
    assert d.room() == share

    # Done records give the room back.
    finish(states[3], 5 * MAX_PENDING_RECORDS + 1)
    finish(states[2], MAX_PENDING_RECORDS - 300 - share + 1)
    assert d.room() == MAX_PENDING_RECORDS - 300


def test_room_floor_follows_the_minimum_share() -> None:
    d = Partitions()
    (s, *_) = held(d, 10 * MAX_PENDING_RECORDS // MIN_PARTITION_SHARE)
    fetch(s, 2 * MAX_PENDING_RECORDS)
    assert d.room() == MIN_PARTITION_SHARE


def test_done_releases_a_drained_partition() -> None:
    d = Partitions()
    (s,) = held(d, 1)
    fetch(s, MAX_PENDING_RECORDS)
    d.check_backpressure(s)
    assert d.blocked == {s.tp}
    for offset in _undone[id(s)][: MAX_PENDING_RECORDS - MAX_PENDING_RECORDS // 4 - 1]:
        d.done(s, offset)
    assert d.blocked == {s.tp}  # one above the quarter
    d.done(s, _undone[id(s)][MAX_PENDING_RECORDS - MAX_PENDING_RECORDS // 4 - 1])
    assert not d.blocked and d.unblocked.is_set()


def test_commit_positions_and_revoke() -> None:
    d = Partitions()
    a, b = held(d, 2)
    fetch(a, 3)
    a.offsets.done(0)
    assert d.commit_positions() == {a.tp: 1}
    d.mark_committed({a.tp: 1, TopicPartition("gone", 0): 5})
    assert d.commit_positions() == {}
    b.offsets.fetched_through(9)
    assert d.commit_positions(frozenset({a.tp})) == {}
    assert d.commit_positions() == {b.tp: 10}
    d.remove([b])
    assert b.tp not in d and len(d) == 1 and d.commit_positions() == {}
