"""Dispatcher: runs deliveries in lanes, retries them, dead-letters them, marks them done.

A *lane* is a queue delivered one record at a time, in order. The ordering mode picks the lane:

- ``partition``: one lane per partition (records of a partition in offset order);
- ``key``:       one lane per (partition, key): keys of one partition run concurrently;
- ``none``:      one lane per record.

At most ``max_in_flight`` deliveries run at once. A record is done when the app took it, the app
said DROP, it was dead-lettered, or dead letters are off and it was logged and counted; only then
does its partition's commit watermark move past it. A revoked partition's lanes stop after the
record in flight, and nothing after the watermark is committed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Hashable, Iterable
from dataclasses import dataclass, field
from typing import TypeAlias

from aiokafka import TopicPartition
from aiokafka.structs import ConsumerRecord

from proxy.delivery.dead_letter import DeadLetterWriter
from proxy.delivery.headers import build_headers
from proxy.logthrottle import LogThrottle, held_back
from proxy.delivery.interop import DeliveryInterop
from proxy.delivery.policy import Outcome, RetryPolicy, Verdict, classify, parse_retry_after
from proxy.errors import AppUnavailable
from proxy.listener.kafka import KafkaListener
from proxy.listener.offsets import PartitionOffsets
from proxy.metrics import Metrics
from proxy.upstream.health import AppHealth
from proxy.upstream.http import AppConnectError, AppTimeout, HttpUpstream

log = logging.getLogger(__name__)

Record: TypeAlias = "ConsumerRecord[bytes, bytes]"
# Records fetched but not done, the whole sidecar's, that backpressure aims at: each costs about
# 1.1 KB of memory (the record, its headers, its queue and watermark entries; 200-byte values),
# and a few hundred per partition keep its lane busy between fetches. The budget is split evenly
# among the assigned partitions (Dispatcher.assigned): a partition at its share is not fetched
# until it is down to a quarter of it, so one slow partition holds at most about its share (plus
# one fetch) and leaves the others their room. A fetch asks for the room left, but for at least
# one share (Dispatcher.room), and the broker may hand it all to one partition: the pending
# records of the whole sidecar stay under about twice the budget (1,792 at most in
# tests/integration/test_backpressure.py with 4 partitions).
MAX_PENDING_RECORDS = 1024
MIN_PARTITION_SHARE = 32
# A delivery timeout is logged at most this often per partition (the records behind it time out too).
TIMEOUT_LOG_INTERVAL = 10.0


@dataclass(eq=False, slots=True)
class PartitionState:
    """What the sidecar holds for one assigned partition."""

    tp: TopicPartition
    offsets: PartitionOffsets = field(default_factory=PartitionOffsets)
    lanes: set[Hashable] = field(default_factory=set)
    # Lanes of this partition waiting to retry; the partition is paused while any is.
    retrying: int = 0
    # Not fetched for now: too many of its records are not done yet (Dispatcher.check_backpressure).
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


@dataclass(eq=False, slots=True)
class _Lane:
    key: Hashable
    state: PartitionState
    queue: deque[Record] = field(default_factory=deque)
    task: asyncio.Task[None] | None = None


class Dispatcher:
    """Delivers records handed to it by :meth:`submit`."""

    def __init__(
        self,
        *,
        upstream: HttpUpstream,
        health: AppHealth,
        listener: KafkaListener,
        policy: RetryPolicy,
        dead_letters: DeadLetterWriter | None,
        metrics: Metrics,
        forwarded_headers: frozenset[str],
        ordering: str = "partition",
        max_in_flight: int = 16,
        max_record_bytes: int = 1024 * 1024,
        interop: DeliveryInterop | None = None,
    ) -> None:
        self.upstream = upstream
        self.health = health
        self.listener = listener
        self.policy = policy
        self.dead_letters = dead_letters
        self.metrics = metrics
        self.forwarded_headers = forwarded_headers
        self.ordering = ordering
        self.max_record_bytes = max_record_bytes
        self.interop = interop
        self.max_in_flight = max_in_flight
        # Free delivery slots, and lanes waiting for one (a semaphore's acquire is a coroutine
        # call per delivery even when a slot is free).
        self._free = max_in_flight
        self._slot_waiters: deque[asyncio.Future[None]] = deque()
        self._lanes: dict[Hashable, _Lane] = {}
        self._idle = asyncio.Event()
        self._idle.set()
        self._in_flight = 0
        self._timeouts = LogThrottle(TIMEOUT_LOG_INTERVAL)
        metrics.track_in_flight(lambda: self._in_flight)
        # Backpressure: partitions not to fetch, each partition's share of MAX_PENDING_RECORDS,
        # and an event set when a partition leaves ``blocked`` (the fetch loop waits on it).
        self.blocked: set[TopicPartition] = set()
        self.unblocked = asyncio.Event()
        self._high = MAX_PENDING_RECORDS
        self._low = MAX_PENDING_RECORDS // 4

    def __repr__(self) -> str:
        return f"Dispatcher(ordering={self.ordering!r}, lanes={len(self._lanes)}, in_flight={self._in_flight})"

    @property
    def lanes(self) -> int:
        return len(self._lanes)

    def submit(self, state: PartitionState, record: Record) -> None:
        """Queue a record whose offset is already tracked (``state.offsets.begin``)."""
        if self.ordering == "partition":
            key: Hashable = state.tp
        elif self.ordering == "key":
            key = (state.tp, record.key)
        else:
            key = (state.tp, record.offset)
        lane = self._lanes.get(key)
        if lane is None:
            lane = self._lanes[key] = _Lane(key, state)
            state.lanes.add(key)
            lane.queue.append(record)
            lane.task = asyncio.create_task(self._run(lane), name=f"ktp-lane-{state.tp.partition}")
            self._idle.clear()
        else:
            lane.queue.append(record)

    def room(self, states: Iterable[PartitionState]) -> int:
        """How many more records may be fetched now (never less than one partition's share:
        records a fetch brings that are skipped are done at once)."""
        pending = 0
        for state in states:
            pending += state.offsets.pending
        return max(self._high, MAX_PENDING_RECORDS - pending)

    def assigned(self, partitions: int) -> None:
        """Split the pending-records budget among the ``partitions`` now assigned."""
        self._high = max(MIN_PARTITION_SHARE, MAX_PENDING_RECORDS // max(partitions, 1))
        self._low = self._high // 4

    def check_backpressure(self, state: PartitionState) -> None:
        """Stop fetching a partition whose undone records pile up; fetch it again once they
        drain. Not a pause: what the Kafka client holds for it stays there (KafkaListener.fetch)."""
        pending = state.offsets.pending
        if pending >= self._high:
            if not state.backpressured:
                state.backpressured = True
                self.blocked.add(state.tp)
        elif pending <= self._low and state.backpressured:
            self.release(state)

    def release(self, state: PartitionState) -> None:
        """Fetch ``state``'s partition again (its records drained, or it was revoked)."""
        if state.backpressured:
            state.backpressured = False
            self.blocked.discard(state.tp)
            self.unblocked.set()

    async def drain(self, timeout: float) -> bool:
        """Wait until every queued record is done; False if ``timeout`` ran out first."""
        try:
            async with asyncio.timeout(timeout):
                await self._idle.wait()
            return True
        except TimeoutError:
            return False

    async def settle(self, states: list[PartitionState], timeout: float) -> None:
        """Stop the lanes of revoked partitions: let the record in flight finish within
        ``timeout``, then cancel. Queued records are abandoned (the next owner fetches them)."""
        tasks = []
        for state in states:
            state.revoke()
            for key in list(state.lanes):
                lane = self._lanes.get(key)
                if lane is not None and lane.task is not None:
                    tasks.append(lane.task)
        if not tasks:
            return
        _, pending = await asyncio.wait(tasks, timeout=timeout)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending)

    async def _slot(self) -> None:
        """Wait for a free delivery slot (there was none)."""
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._slot_waiters.append(waiter)
        try:
            await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                self._release_slot()  # handed a slot just as we were cancelled: pass it on
            elif waiter in self._slot_waiters:
                self._slot_waiters.remove(waiter)
            raise

    def _release_slot(self) -> None:
        while self._slot_waiters:
            waiter = self._slot_waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)  # the slot goes to the waiter as it is
                return
        self._free += 1

    async def _run(self, lane: _Lane) -> None:
        state = lane.state
        queue = lane.queue
        offsets = state.offsets
        try:
            while queue and not state.revoked:
                record = queue[0]
                if self._free:
                    self._free -= 1
                else:
                    await self._slot()
                self._in_flight += 1
                try:
                    done = await self._deliver(state, record)
                finally:
                    self._in_flight -= 1
                    self._release_slot()
                if not done:
                    break
                queue.popleft()
                offsets.done(record.offset)
                if state.backpressured and offsets.pending <= self._low:
                    self.release(state)
        finally:
            self._lanes.pop(lane.key, None)
            state.lanes.discard(lane.key)
            if not self._lanes:
                self._idle.set()

    async def _deliver(self, state: PartitionState, record: Record) -> bool:
        """Deliver one record until it is done (True) or its partition is revoked (False)."""
        topic = record.topic
        counters = self.metrics.topic(topic)
        value = record.value
        if value is not None and len(value) > self.max_record_bytes:
            return await self._finish_undelivered(state, record, "value_too_large", 0, None)
        headers, rejected = build_headers(
            topic=topic,
            partition=record.partition,
            offset=record.offset,
            timestamp=record.timestamp,
            key=record.key,
            record_headers=record.headers,
            forwarded=self.forwarded_headers,
        )
        if value is None:
            # A tombstone: forwarded with an empty body, marked so the app can tell it from b"".
            headers["kafka-tombstone"] = "true"
        # ce-* headers, trace context in OTEL_PROPAGATORS' formats, ktp-delivery (interop.py).
        scope = self.interop.begin(record, headers, rejected) if self.interop is not None else None
        for name in rejected:
            self.metrics.bad_input.labels(topic, f"header_{name}").inc()
            log.warning(
                "record %s[%d]@%d: header %r not forwarded (not a safe HTTP field value)",
                topic, record.partition, record.offset, name,
            )
        body = value or b""
        attempts = 0
        status: int | None = None
        paused_for_retry = False
        try:
            while not state.revoked:
                if not self.health.healthy and not await state.wait_unless_revoked(self.health.wait_healthy()):
                    return False
                try:
                    answer = await self.upstream.post(body, headers)
                except AppConnectError as exc:
                    # The app is not listening: no attempt is spent, the health gate holds us.
                    counters.attempts("connection_refused").inc()
                    self.health.mark_unhealthy(str(exc))
                    continue
                except AppTimeout as exc:
                    verdict, retry_after = Verdict(Outcome.RETRY, "timeout"), None
                    self._log_timeout(record, attempts + 1, exc)
                except AppUnavailable:
                    verdict, retry_after = Verdict(Outcome.RETRY, "connection_error"), None
                else:
                    status = answer.status
                    self.metrics.delivery_duration.observe(answer.seconds)
                    verdict = classify(answer.status, answer.body, answer.content_type)
                    retry_after = parse_retry_after(answer.retry_after, time.time()) if answer.retry_after else None
                attempts += 1
                counters.attempts(verdict.reason).inc()
                if verdict.outcome is Outcome.DONE:
                    counters.delivered.inc()
                    return True
                if verdict.outcome is Outcome.DROP:
                    self.metrics.records_dropped.labels(topic, verdict.reason).inc()
                    log.info("record %s[%d]@%d dropped by the app", topic, record.partition, record.offset)
                    return True
                if verdict.outcome is Outcome.DEAD_LETTER or self.policy.exhausted(attempts):
                    return await self._finish_undelivered(state, record, verdict.reason, attempts, status)
                if not paused_for_retry:
                    # Fetching more of a partition that is stuck retrying only fills memory. The
                    # partition is paused, not the poll loop: heartbeats and rebalances go on.
                    # Lanes are counted, since in key and none modes several retry at once.
                    paused_for_retry = True
                    state.retrying += 1
                    if state.retrying == 1:
                        self.listener.pause((state.tp,), "retrying")
                await state.sleep_unless_revoked(self.policy.delay(attempts, retry_after))
            return False
        finally:
            if scope is not None:
                scope.end(attempts, status)
            if paused_for_retry:
                state.retrying -= 1
                if state.retrying == 0:
                    self.listener.resume((state.tp,), "retrying")

    def _log_timeout(self, record: Record, attempt: int, exc: AppTimeout) -> None:
        """A timeout is the app's trouble an operator must see (a stalled partition's usual
        cause: an app that takes one connection at a time), so it is a WARNING; throttled per
        partition, since every record behind it may time out too."""
        held = self._timeouts.allow((record.topic, record.partition))
        if held is not None:
            log.warning(
                "delivery of record %s[%d]@%d to %s timed out (attempt %d: %s); the connection was "
                "closed. If the app serves one connection at a time, set --app-max-concurrency%s",
                record.topic, record.partition, record.offset, self.upstream.url, attempt, exc,
                held_back(held),
            )

    async def _finish_undelivered(
        self, state: PartitionState, record: Record, reason: str, attempts: int, status: int | None
    ) -> bool:
        topic = record.topic
        where = f"{topic}[{record.partition}]@{record.offset}"
        if self.dead_letters is None:
            self.metrics.records_dropped.labels(topic, reason).inc()
            log.error("record %s not delivered (%s after %d attempts); dead letters are off, dropped", where, reason, attempts)
            return True
        dlq = await self.dead_letters.write(record, reason=reason, attempts=attempts, status=status)
        self.metrics.dead_letters.labels(topic, reason).inc()
        log.warning("record %s dead-lettered to %s: %s after %d attempts", where, dlq, reason, attempts)
        return True
