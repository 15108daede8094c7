"""Dispatcher: runs deliveries in lanes, retries them, dead-letters them, marks them done.

A *lane* is a queue delivered one record at a time, in order; the ordering mode
(:mod:`proxy.delivery.ordering`) picks a record's lane.

At most ``max_in_flight`` deliveries run at once. A record is done when the app took it, the app
said DROP, it was dead-lettered, or dead letters are off and it was logged and counted; only then
does its partition's commit watermark move past it. A revoked partition's lanes stop after the
record in flight, and nothing after the watermark is committed.

With bulk delivery on (``bulk``, :mod:`proxy.delivery.bulk_lane`) a lane sends up to
``--bulk-max-records`` of its records per POST instead; the dispatcher is its
:class:`~proxy.delivery.bulk_lane.LaneHost` (slots, watermarks, retry pauses, dead letters).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import TypeAlias

from aiokafka.structs import ConsumerRecord

from proxy.delivery.bulk_lane import BulkDelivery
from proxy.delivery.dead_letter import DeadLetterWriter
from proxy.logthrottle import LogThrottle, held_back
from proxy.delivery.envelope import DeliveryEnvelope
from proxy.delivery.ordering import ORDERINGS, by_partition
from proxy.delivery.request_headers import RequestHeaders
from proxy.delivery.policy import OK, Outcome, RetryPolicy, Verdict, classify, parse_retry_after
from proxy.delivery.ports import Health, Pauser, Upstream
from proxy.errors import AppUnavailable
from proxy.listener.partitions import PartitionState, Partitions
from proxy.metrics import Metrics, TopicCounters
from proxy.routing.tenant import DEFAULT_TENANT_KEY
from proxy.upstream.http import AppConnectError, AppTimeout

log = logging.getLogger(__name__)


Record: TypeAlias = "ConsumerRecord[bytes, bytes]"
# A delivery timeout is logged at most this often per partition (the records behind it time out too).
TIMEOUT_LOG_INTERVAL = 10.0


@dataclass(eq=False, slots=True)
class _Lane:
    key: Hashable
    state: PartitionState
    queue: deque[Record] = field(default_factory=deque)
    task: asyncio.Task[None] | None = None
    # Bulk delivery: resolved by submit() once the queue holds fill_to records.
    filled: asyncio.Future[None] | None = None
    fill_to: int = 0


class Dispatcher:
    """Delivers records handed to it by :meth:`submit`."""

    def __init__(
        self,
        *,
        upstream: Upstream,
        health: Health,
        listener: Pauser,
        policy: RetryPolicy,
        dead_letters: DeadLetterWriter | None,
        metrics: Metrics,
        forwarded_headers: frozenset[str],
        tenant_key: str = DEFAULT_TENANT_KEY,
        ordering: str = "partition",
        max_in_flight: int = 16,
        max_record_bytes: int = 1024 * 1024,
        envelope: DeliveryEnvelope | None = None,
        partitions: Partitions | None = None,
        bulk: BulkDelivery | None = None,
    ) -> None:
        self.upstream = upstream
        self.health = health
        self.listener = listener
        self.policy = policy
        self.dead_letters = dead_letters
        self.metrics = metrics
        # Also the LaneHost's: the forwarding rules bulk entries are written by.
        self.headers = RequestHeaders(forwarded=forwarded_headers, metrics=metrics, tenant_key=tenant_key)
        if ordering not in ORDERINGS:
            raise ValueError(f"ordering must be one of {', '.join(ORDERINGS)}, not {ordering!r}")
        self.ordering = ordering
        self._lane_key = ORDERINGS[ordering]
        self.max_record_bytes = max_record_bytes
        self.envelope = envelope
        self.bulk = bulk
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
        # Marks records done and lets their partitions be fetched again (backpressure).
        self.partitions = partitions if partitions is not None else Partitions()

    def __repr__(self) -> str:
        return f"Dispatcher(ordering={self.ordering!r}, lanes={len(self._lanes)}, in_flight={self._in_flight})"

    @property
    def lanes(self) -> int:
        return len(self._lanes)

    def submit(self, state: PartitionState, record: Record) -> None:
        """Queue a record whose offset is already tracked (``state.offsets.begin``)."""
        key = self._lane_key(state.tp, record)
        lane = self._lanes.get(key)
        if lane is None:
            lane = self._lanes[key] = _Lane(key, state)
            state.lanes.add(key)
            lane.queue.append(record)
            lane.task = asyncio.create_task(self._run(lane), name=f"ktp-lane-{state.tp.partition}")
            self._idle.clear()
        else:
            lane.queue.append(record)
            filled = lane.filled
            if filled is not None and len(lane.queue) >= lane.fill_to and not filled.done():
                filled.set_result(None)

    def submit_many(self, state: PartitionState, records: list[Record]) -> None:
        """:meth:`submit` for each of ``records`` (of ``state``'s partition, tracked, in order):
        in partition order they are all one lane's, queued at once."""
        if self._lane_key is not by_partition or not records:
            for record in records:
                self.submit(state, record)
            return
        lane = self._lanes.get(state.tp)
        if lane is None:
            self.submit(state, records[0])
            lane = self._lanes[state.tp]
            lane.queue.extend(records[1:])
        else:
            lane.queue.extend(records)
        filled = lane.filled
        if filled is not None and len(lane.queue) >= lane.fill_to and not filled.done():
            filled.set_result(None)

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
        done_with = self.partitions.done
        # A lane's records are of one partition, so of one topic.
        counters = self.metrics.topic(state.tp.topic)
        try:
            if self.bulk is not None:
                await self.bulk.run(self, lane)
                return
            while queue and not state.revoked:
                record = queue[0]
                if self._free:
                    self._free -= 1
                else:
                    await self._slot()
                self._in_flight += 1
                try:
                    done = await self._deliver(state, record, counters)
                finally:
                    self._in_flight -= 1
                    if self._slot_waiters:
                        self._release_slot()
                    else:
                        self._free += 1  # _release_slot when nobody waits
                if not done:
                    break
                queue.popleft()
                done_with(state, record.offset)
        finally:
            self._lanes.pop(lane.key, None)
            state.lanes.discard(lane.key)
            if not self._lanes:
                self._idle.set()

    async def _deliver(self, state: PartitionState, record: Record, counters: TopicCounters) -> bool:
        """Deliver one record until it is done (True) or its partition is revoked (False);
        ``counters`` are its topic's."""
        topic = record.topic
        value = record.value
        if value is not None and len(value) > self.max_record_bytes:
            return await self._finish_undelivered(state, record, "value_too_large", 0, None)
        headers, scope = self.headers.for_record(record, self.envelope)
        body = value or b""
        attempts = 0
        status: int | None = None
        paused_for_retry = False
        try:
            while not state.revoked:
                if not self.health.healthy and not await state.wait_unless_revoked(self.health.wait_healthy()):
                    return False
                tried = await self._attempt(body, headers, counters, record, attempts + 1)
                if tried is None:
                    continue  # the app is not listening: no attempt is spent, the health gate holds us
                verdict, retry_after, answered = tried
                if answered is not None:
                    status = answered
                attempts += 1
                if verdict is OK:  # nearly every attempt: its counters without a look-up
                    counters.attempts_ok.inc()
                    counters.delivered.inc()
                    return True
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

    async def _attempt(
        self, body: bytes, headers: dict[str, str], counters: TopicCounters, record: Record, attempt: int
    ) -> tuple[Verdict, float | None, int | None] | None:
        """One POST: its verdict, the app's ``Retry-After`` (seconds) and status (None without an
        answer). None when the app is not listening (it is then marked unhealthy)."""
        try:
            answer = await self.upstream.post(body, headers)
        except AppConnectError as exc:
            counters.attempts("connection_refused").inc()
            self.health.mark_unhealthy(str(exc))
            return None
        except AppTimeout as exc:
            self._log_timeout(record, attempt, exc)
            return Verdict(Outcome.RETRY, "timeout"), None, None
        except AppUnavailable:
            return Verdict(Outcome.RETRY, "connection_error"), None, None
        self.metrics.delivery_duration.observe(answer.seconds)
        verdict = classify(answer.status, answer.body, answer.content_type)
        retry_after = parse_retry_after(answer.retry_after, time.time()) if answer.retry_after else None
        return verdict, retry_after, answer.status

    def _log_timeout(self, record: Record, attempt: int, exc: AppTimeout) -> None:
        """A timeout is the app's trouble an operator must see (a stalled partition's usual
        cause: an app that takes one connection at a time), so it is a WARNING; throttled per
        partition, since every record behind it may time out too."""
        held = self._timeouts.allow((record.topic, record.partition))
        if held is not None:
            log.warning(
                "delivery of record %s[%d]@%d timed out (attempt %d: %s); the connection was closed. "
                "If the app serves one connection at a time, set --app-max-concurrency%s",
                record.topic, record.partition, record.offset, attempt, exc, held_back(held),
            )

    # -- LaneHost (proxy.delivery.bulk_lane) ----------------------------------------------------

    async def acquire_slot(self, deliveries: int) -> None:
        """Take a delivery slot for a bulk of ``deliveries`` records."""
        if self._free:
            self._free -= 1
        else:
            await self._slot()
        self._in_flight += deliveries

    def release_slot(self, deliveries: int) -> None:
        """Give back a bulk's slot."""
        self._in_flight -= deliveries
        self._release_slot()

    def record_done(self, state: PartitionState, offset: int) -> None:
        """A record of a bulk is done."""
        self.partitions.done(state, offset)

    def records_done(self, state: PartitionState, offsets: list[int]) -> None:
        """Records of a bulk are done."""
        self.partitions.done_many(state, offsets)

    def retry_started(self, state: PartitionState) -> None:
        """A bulk of ``state``'s waits to retry: the partition is paused, as for single deliveries."""
        state.retrying += 1
        if state.retrying == 1:
            self.listener.pause((state.tp,), "retrying")

    def retry_ended(self, state: PartitionState) -> None:
        state.retrying -= 1
        if state.retrying == 0:
            self.listener.resume((state.tp,), "retrying")

    async def finish_undelivered(
        self, state: PartitionState, record: Record, reason: str, attempts: int, status: int | None
    ) -> bool:
        """Dead-letter ``record`` (or drop it when dead letters are off); True: it is done."""
        return await self._finish_undelivered(state, record, reason, attempts, status)

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
