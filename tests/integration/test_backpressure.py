"""Backpressure against the real broker and a real, slow app: the sidecar holds its undone records
to a budget by leaving partitions out of fetches (not by pausing them), delivers everything once
and in order, and a long wait for room is not taken by aiokafka for a stuck consumer.

Records are produced to explicit partitions (record ``seq`` to partition ``seq % 4``) so every
partition gets the same load and the exact order the app must see is known.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from aiokafka import AIOKafkaProducer, TopicPartition

from proxy import compat
from proxy.listener.partitions import MAX_PENDING_RECORDS, PartitionState
from proxy.listener.kafka import Batch
from proxy.sidecar.runtime import FETCH_MAX_RECORDS, Sidecar
from proxy.testing.app import Received, RecordingApp
from tests.conftest import eventually, sidecar_config

ROUTES = 'tenants:\n  "123": {orders-worker: pr-42}\n'
PARTITIONS = 4  # the topic fixture's


def routes_file(tmp_path: Path) -> str:
    path = tmp_path / "routes.yaml"
    path.write_text(ROUTES)
    return str(path)


async def produce_spread(bootstrap_servers: str, topic: str, n: int) -> None:
    """Records 0..n-1, record ``seq`` (value ``str(seq)``) to partition ``seq % PARTITIONS``."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap_servers, acks="all", linger_ms=5)
    await producer.start()
    try:
        futures = [
            await producer.send(topic, str(seq).encode(), key=f"k{seq}".encode(), partition=seq % PARTITIONS)
            for seq in range(n)
        ]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


def assert_each_once_in_partition_order(received: list[Received], n: int) -> None:
    """Every record delivered exactly once, each partition's in offset order: the app saw exactly
    ``p, p+4, p+8, ...`` on partition ``p``, nothing more, nothing less."""
    by_partition: dict[int, list[int]] = {p: [] for p in range(PARTITIONS)}
    for r in received:
        by_partition[r.partition].append(int(r.body))
    for p in range(PARTITIONS):
        expected = list(range(p, n, PARTITIONS))
        got = by_partition[p]
        differs = next((i for i, (a, b) in enumerate(zip(got, expected)) if a != b), min(len(got), len(expected)))
        assert got == expected, (
            f"partition {p}: {len(got)} deliveries of {len(expected)}, {len(set(got))} distinct, "
            f"first difference at position {differs}"
        )
    assert len(received) == n


async def until(check: Callable[[], bool], timeout: float, what: str) -> None:
    async def holds() -> bool:
        return check()

    await eventually(holds, timeout=timeout, what=what)


@dataclass
class Watch:
    """What a sampler task and a few wrapped calls saw of one sidecar while it ran."""

    sidecar: Sidecar
    interval: float = 0.005
    samples: int = 0
    max_sampled_pending: int = 0
    max_batch_pending: int = 0  # right after each fetched batch was handled: pending's peaks
    ever_blocked: set[TopicPartition] = field(default_factory=set)
    backpressure_pauses: list[str] = field(default_factory=list)
    # Fetches made while some partition was held back, and those that asked for, or got
    # records of, a held-back partition.
    fetches_while_blocked: int = 0
    fetched_blocked: list[str] = field(default_factory=list)
    # Longest time every assigned partition was held back at once, as sampled.
    longest_all_blocked: float = 0.0
    _all_blocked_since: float | None = None
    generations: list[int] = field(default_factory=list)
    membership_lost: int = 0

    def install(self) -> None:
        """Wrap, on this sidecar's instances only, the calls to watch."""
        sidecar = self.sidecar
        held, listener = sidecar.partitions, sidecar.listener

        check = held.check_backpressure

        def check_backpressure(state: PartitionState) -> None:
            # Called once after every handled batch (Sidecar._handle): pending only grows there.
            self.max_batch_pending = max(self.max_batch_pending, self.total_pending())
            check(state)

        held.check_backpressure = check_backpressure  # type: ignore[method-assign]

        pause = listener.pause

        def recording_pause(tps: Iterable[TopicPartition], reason: str) -> None:
            if reason == "backpressure":
                self.backpressure_pauses.append(repr(sorted(tps)))
            pause(tps, reason)

        listener.pause = recording_pause  # type: ignore[method-assign]

        fetch = listener.fetch

        async def recording_fetch(timeout_ms: int, max_records: int, partitions: Iterable[TopicPartition] = ()) -> Batch:
            blocked = frozenset(held.blocked)
            asked = tuple(partitions)
            batch = await fetch(timeout_ms, max_records, asked)
            if blocked:
                self.fetches_while_blocked += 1
                if not asked or blocked & set(asked):
                    self.fetched_blocked.append(f"asked {sorted(asked)} while {sorted(blocked)} held back")
                if blocked & batch.keys():
                    self.fetched_blocked.append(f"got {sorted(blocked & batch.keys())} while held back")
            return batch

        listener.fetch = recording_fetch  # type: ignore[method-assign]

    def total_pending(self) -> int:
        return sum(s.offsets.pending for s in self.sidecar.partitions)

    async def run(self) -> None:
        sidecar = self.sidecar
        while True:
            now = time.monotonic()
            self.samples += 1
            self.max_sampled_pending = max(self.max_sampled_pending, self.total_pending())
            blocked = set(sidecar.partitions.blocked)
            self.ever_blocked |= blocked
            assigned = sidecar.listener.assignment()
            for tp in assigned:
                if "backpressure" in sidecar.listener.paused(tp):
                    self.backpressure_pauses.append(f"{tp} paused for backpressure")
            if assigned and assigned <= blocked:
                if self._all_blocked_since is None:
                    self._all_blocked_since = now
                self.longest_all_blocked = max(self.longest_all_blocked, now - self._all_blocked_since)
            else:
                self._all_blocked_since = None
            consumer = sidecar.listener._consumer
            coordinator = compat.group_coordinator(consumer) if consumer is not None else None
            if coordinator is not None and assigned:
                generation = coordinator.generation
                if not self.generations or self.generations[-1] != generation:
                    self.generations.append(generation)
                if sidecar.listener.membership_lost:
                    self.membership_lost += 1
            await asyncio.sleep(self.interval)


async def test_slow_app_pending_records_stay_bounded_without_pauses(
    bootstrap_servers: str, topic: str, tmp_path: Path
) -> None:
    # Well over MAX_PENDING_RECORDS + FETCH_MAX_RECORDS: without backpressure the sidecar would
    # fetch all of them long before the app takes them, and the bound below would break.
    n = 5000
    await produce_spread(bootstrap_servers, topic, n)
    async with RecordingApp(delay=0.003) as app:
        sidecar = Sidecar(sidecar_config(bootstrap_servers, topic, app.url, routes_file(tmp_path)))
        watch = Watch(sidecar)
        watch.install()
        sampler = asyncio.create_task(watch.run())
        started = time.monotonic()
        try:
            async with sidecar:
                await app.wait_for(n, timeout=60)
                took = time.monotonic() - started
                await asyncio.sleep(0.5)  # a duplicate would arrive now
        finally:
            sampler.cancel()
    print(
        f"\nbackpressure: {n} records in {took:.1f}s; pending peak {watch.max_batch_pending} after a batch, "
        f"{watch.max_sampled_pending} sampled ({watch.samples} samples); partitions held back: "
        f"{sorted(tp.partition for tp in watch.ever_blocked)}; {watch.fetches_while_blocked} fetches while "
        f"some were; all held back at once for up to {watch.longest_all_blocked:.2f}s"
    )
    assert watch.samples > 100  # the sampler really ran while the sidecar did
    assert watch.ever_blocked, "backpressure never engaged"
    # The budget is not a hard cap: a fetch's max_records counts all partitions together, so the
    # first fetch may give one partition the whole budget, and while over it every fetch may still
    # bring one more share (Dispatcher.room). Seen: 1024 + 3 * 256 = 1792. What must hold is that
    # no more than one fetch's worth ever sits on top of the budget.
    bound = MAX_PENDING_RECORDS + FETCH_MAX_RECORDS
    assert watch.max_batch_pending <= bound and watch.max_sampled_pending <= bound
    assert watch.fetches_while_blocked > 0 and watch.fetched_blocked == []
    assert watch.backpressure_pauses == []
    assert_each_once_in_partition_order(app.received, n)


async def test_waiting_for_room_longer_than_max_poll_interval_keeps_the_membership(
    bootstrap_servers: str, topic: str, tmp_path: Path
) -> None:
    """Every partition is held back for more than twice max.poll.interval while a slow app works
    through its records. aiokafka leaves the group when nothing asks it for records that long,
    unless the wait counts as asking (KafkaListener.wait_for_room): the member must stay."""
    poll_interval = 3.0
    # 300 records a partition: each is held back at its share (256) after the first fetches and
    # fetched again at a quarter (64), which at 40 ms a record takes (300-64) * 40 ms > 9 s; so
    # for all that time there is nothing to fetch. The first release, at ~9 s, is the end of the
    # long wait; the rest is delivered in ~12 s.
    per_partition, delay = 300, 0.04
    n = per_partition * PARTITIONS
    await produce_spread(bootstrap_servers, topic, n)
    async with RecordingApp(delay=delay) as app:
        sidecar = Sidecar(sidecar_config(bootstrap_servers, topic, app.url, routes_file(tmp_path)))
        # The sidecar has no max.poll.interval option: its consumer runs with aiokafka's default
        # (300 s), which no test can wait out. Setting it into this instance's consumer keyword
        # arguments before start() is the one way to run the real consumer with a short interval
        # without changing proxy/ (the listener builds its AIOKafkaConsumer from them in start()).
        sidecar.listener._consumer_kwargs["max_poll_interval_ms"] = int(poll_interval * 1000)
        events: list[tuple[str, frozenset[TopicPartition]]] = []
        on_assigned, on_revoked = sidecar.listener._on_assigned, sidecar.listener._on_revoked

        async def assigned(tps: frozenset[TopicPartition]) -> None:
            events.append(("assigned", tps))
            await on_assigned(tps)

        async def revoked(tps: frozenset[TopicPartition]) -> None:
            events.append(("revoked", tps))
            await on_revoked(tps)

        # The listener calls these (it was handed the Sidecar's _assigned/_revoked at construction).
        sidecar.listener._on_assigned = assigned
        sidecar.listener._on_revoked = revoked
        watch = Watch(sidecar, interval=0.02)
        watch.install()
        sampler = asyncio.create_task(watch.run())
        try:
            async with sidecar:
                await until(lambda: len(sidecar.listener.assignment()) == PARTITIONS, 20, "all partitions assigned")
                joined = list(events)
                await app.wait_for(n, timeout=40)
                await asyncio.sleep(0.5)  # a duplicate would arrive now
                during = events[len(joined):]
                consumer = sidecar.listener.consumer
                assert consumer._max_poll_interval_ms == poll_interval * 1000  # the patch took
        finally:
            sampler.cancel()
    print(
        f"\nmax.poll.interval {poll_interval}s: all partitions held back at once for up to "
        f"{watch.longest_all_blocked:.1f}s; generations seen {watch.generations}; "
        f"callbacks after the join: {[(kind, sorted(tp.partition for tp in tps)) for kind, tps in during]}"
    )
    # The member never left: no revoke, no new assignment, one generation, never lost.
    assert during == []
    assert [kind for kind, tps in joined if tps] == ["assigned"]
    assert len(watch.generations) == 1 and watch.generations[0] >= 0  # aiokafka resets it to -1
    assert watch.membership_lost == 0
    # And the scenario happened: nothing could be fetched for longer than twice the interval.
    # (A member that left at the interval would have been revoked, which releases every
    # partition: that cuts this short too, but the checks above say why.)
    assert watch.longest_all_blocked > 2 * poll_interval
    assert watch.backpressure_pauses == [] and watch.fetched_blocked == []
    assert_each_once_in_partition_order(app.received, n)
