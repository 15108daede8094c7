"""BulkDelivery: how a lane sends its records when ``--bulk-max-records`` is set.

The request and answer shapes are :mod:`proxy.delivery.bulk`'s. A lane with fewer than
``max_records`` queued waits up to ``max_wait`` for more (the dispatcher wakes it as soon as the
queue is full), then sends the records at the head of its queue in one POST, while it holds one
of the dispatcher's delivery slots. The rules are those of single deliveries, per entry:

- a 2xx answer says per entry: ``SUCCESS`` is done, ``DROP`` is done and counted as dropped,
  anything else (``RETRY``, an unknown status, an entry left out, an unreadable answer) is
  retried with the single deliveries' backoff;
- 408, 429, 5xx, timeouts and connection errors retry every entry still undone; 404 and other
  4xx dead-letter them at once; an entry whose attempts ran out is dead-lettered (each entry is
  its own dead letter, with the reason of its last attempt);
- only the entries still undone are sent again, and nothing after them in the lane is sent
  until they are done: in ``partition`` order a retried entry holds back the lane behind it,
  and the commit watermark stops at the first entry not done;
- each entry is its own delivery: a ``ktp-delivery`` id and context for the publish endpoint,
  a span when tracing is on, one attempt counted per entry per POST.
"""

from __future__ import annotations

import asyncio
import logging
import operator
import time
from collections import deque
from itertools import repeat
from collections.abc import Hashable
from typing import TYPE_CHECKING, Any, Protocol, TypeAlias

from proxy.delivery import bulk, cloudevents
from proxy.delivery.bulk_entry import EntryWriter
from proxy.delivery.headers import DEFAULT_CONTENT_TYPE
from proxy.delivery.envelope import DeliveryEnvelope, DeliveryScope
from proxy.delivery.policy import Outcome, RetryPolicy, classify, parse_retry_after
from proxy.errors import AppUnavailable
from proxy.metrics import BufferedCounter, Metrics
from proxy.delivery.ports import Health, Upstream
from proxy.upstream.http import AppConnectError, AppTimeout

if TYPE_CHECKING:
    from aiokafka.structs import ConsumerRecord

    from proxy.delivery.request_headers import RequestHeaders

    from proxy.listener.partitions import PartitionState

log = logging.getLogger(__name__)

Record: TypeAlias = "ConsumerRecord[bytes, bytes]"
_value = operator.attrgetter("value")
_offset = operator.attrgetter("offset")


class BulkLane(Protocol):
    """The lane a bulk is taken from: its queue, and how the dispatcher wakes it when records
    arrive (``filled`` is resolved once the queue holds ``fill_to`` records)."""

    key: Hashable
    state: PartitionState
    queue: deque[Record]
    filled: asyncio.Future[None] | None
    fill_to: int


class LaneHost(Protocol):
    """What a bulk lane needs from the dispatcher that runs it."""

    #: The headers a single delivery of a record carries (unsafe ones counted and logged), by
    #: the forwarding rules bulk entries are written by too.
    headers: RequestHeaders

    async def acquire_slot(self, deliveries: int) -> None:
        """Wait for a delivery slot; ``deliveries`` records go in flight with it."""

    def release_slot(self, deliveries: int) -> None:
        """Give the slot back; ``deliveries`` records leave flight."""

    def record_done(self, state: PartitionState, offset: int) -> None:
        """A record is done: its partition's watermark may move past it."""

    def records_done(self, state: PartitionState, offsets: list[int]) -> None:
        """:meth:`record_done` for each of ``offsets``."""

    def retry_started(self, state: PartitionState) -> None:
        """A lane of ``state`` waits to retry (fetching it more only fills memory)."""

    def retry_ended(self, state: PartitionState) -> None:
        """The lane no longer waits to retry."""

    async def finish_undelivered(
        self, state: PartitionState, record: Record, reason: str, attempts: int, status: int | None
    ) -> bool:
        """Dead-letter a record (or drop it when dead letters are off)."""


class _Bulk:
    """The entries of one bulk not done yet, as parallel lists in offset order: one object per
    bulk, not per record. An entry's delivery context is closed by its counter in ``numbers``
    (0: none) or, for an entry of the general path, by its scope in ``scopes``."""

    __slots__ = ("bodies", "ids", "numbers", "records", "scopes")

    def __init__(
        self,
        records: list[Record],
        ids: list[str],
        bodies: list[str],
        numbers: list[int],
        scopes: list[DeliveryScope | None] | None,
    ) -> None:
        self.records = records
        self.ids = ids
        self.bodies = bodies
        self.numbers = numbers
        self.scopes = scopes  # None: no entry has one

    def __len__(self) -> int:
        return len(self.records)

    def only(self, keep: list[int]) -> _Bulk:
        """The entries at the indexes ``keep``."""
        scopes = self.scopes
        return _Bulk(
            [self.records[i] for i in keep],
            [self.ids[i] for i in keep],
            [self.bodies[i] for i in keep],
            [self.numbers[i] for i in keep],
            None if scopes is None else [scopes[i] for i in keep],
        )


_NONE = _Bulk([], [], [], [], None)


class BulkDelivery:
    """Sends a lane's records in bulks; see the module doc."""

    def __init__(
        self,
        *,
        max_records: int,
        max_wait: float,
        upstream: Upstream,
        health: Health,
        policy: RetryPolicy,
        metrics: Metrics,
        max_record_bytes: int,
        envelope: DeliveryEnvelope | None = None,
        cloudevents_format: bool = False,
        service: str = "",
    ) -> None:
        if not 1 <= max_records <= bulk.MAX_BULK_RECORDS:
            raise ValueError(f"max_records must be 1..{bulk.MAX_BULK_RECORDS}, not {max_records}")
        if max_wait < 0:
            raise ValueError(f"max_wait must be >= 0, not {max_wait}")
        self.max_records = max_records
        self.max_wait = max_wait
        self.upstream = upstream
        self.health = health
        self.policy = policy
        self.metrics = metrics
        self.max_record_bytes = max_record_bytes
        # ktp-delivery ids, trace context and spans per entry. In the raw format (the
        # CloudEvents attributes of an entry go into its event, not into its metadata).
        self.envelope = envelope
        self.cloudevents = cloudevents_format
        self.service = service
        self._requests: dict[tuple[str, str], BufferedCounter] = {}
        # Made on the first bulk, from the forwarding rules of the dispatcher that runs the lanes.
        self._writer: EntryWriter | None = None

    def __repr__(self) -> str:
        return (
            f"BulkDelivery(max_records={self.max_records}, max_wait={self.max_wait}, "
            f"format={'cloudevents' if self.cloudevents else 'raw'!r})"
        )

    async def run(self, host: LaneHost, lane: BulkLane) -> None:
        """Deliver ``lane``'s records until its queue is empty or its partition is revoked
        (what is still queued or undone then is left for the partition's next owner)."""
        state = lane.state
        queue = lane.queue
        while queue and not state.revoked:
            if len(queue) < self.max_records and self.max_wait > 0:
                await self._wait_to_fill(lane)
                if state.revoked:
                    return
            if not await self._deliver(host, state, self._take(queue)):
                return

    async def _wait_to_fill(self, lane: BulkLane) -> None:
        filled: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        lane.filled = filled
        lane.fill_to = self.max_records
        try:
            # asyncio.wait neither raises on its timeout nor cancels ``filled``.
            await lane.state.wait_unless_revoked(asyncio.wait((filled,), timeout=self.max_wait))
        finally:
            lane.filled = None

    def _take(self, queue: deque[Record]) -> list[Record]:
        """The records at the head of the queue for one bulk: at most ``max_records``, and no
        more record bytes than one delivery may carry (``--max-record-bytes``), one at least."""
        limit = self.max_record_bytes
        # Popped by C-level calls: a bulk's records leave the queue with no Python code per record.
        batch = list(map(deque.popleft, repeat(queue, min(len(queue), self.max_records))))
        if sum(map(len, filter(None, map(_value, batch)))) <= limit:
            return batch  # nearly always: a bulk's records together fit in one delivery
        queue.extendleft(reversed(batch))
        batch = []
        size = 0
        while queue and len(batch) < self.max_records:
            value = queue[0].value
            length = len(value) if value is not None else 0
            if batch and size + length > limit:
                break
            batch.append(queue.popleft())
            size += length
        return batch

    def _entries(self, host: LaneHost, records: list[Record]) -> _Bulk:
        """The bulk's entries: the writer's for the usual record, else the general path's."""
        writer = self._writer
        if writer is None:
            writer = self._writer = EntryWriter(
                forwarded=host.headers.forwarded, tenant_key=host.headers.tenant_key, envelope=self.envelope
            )
        first = records[0]
        ids, written, numbers = writer.entries(
            first.topic, first.partition, records, self._cloud_event_json if self.cloudevents else None
        )
        if None not in written:  # nearly always: the writer wrote every entry
            return _Bulk(records, ids, written, numbers, None)  # type: ignore[arg-type]
        scopes: list[DeliveryScope | None] = [None] * len(records)
        bodies: list[str] = []
        for index, body in enumerate(written):
            if body is None:
                body, scopes[index] = self._general_entry(host, records[index])
            bodies.append(body)
        return _Bulk(records, ids, bodies, numbers, scopes)

    def _general_entry(self, host: LaneHost, record: Record) -> tuple[str, DeliveryScope | None]:
        """An entry by the single delivery's headers (checked, counted and logged there), and
        its envelope scope."""
        headers, scope = host.headers.for_record(record, self.envelope)
        content_type = headers["content-type"]
        if self.cloudevents:
            event_json = self._cloud_event_json(record, content_type)
            content_type = bulk.CLOUDEVENT_CONTENT_TYPE
        else:
            event_json = bulk.raw_event_json(record.value)
        return bulk.entry_json(bulk.entry_id(record.offset), event_json, content_type, headers), scope

    def _cloud_event_json(self, record: Record, content_type: str) -> str:
        """An entry's ``event`` with ``--format cloudevents``: the record as a CloudEvent."""
        topic = record.topic
        event, left_out = bulk.cloud_event(
            source=cloudevents.event_source(self.service, topic),
            partition=record.partition,
            offset=record.offset,
            timestamp=record.timestamp,
            key=record.key,
            value=record.value,
            record_headers=record.headers,
            content_type=None if content_type == DEFAULT_CONTENT_TYPE else content_type,
        )
        if left_out:
            self.metrics.bad_input.labels(topic, f"header_{cloudevents.REJECTED}").inc(left_out)
            log.warning(
                "record %s[%d]@%d: %d CloudEvents attribute(s) left out (not UTF-8)",
                topic, record.partition, record.offset, left_out,
            )
        return bulk.event_json(event)

    async def _deliver(self, host: LaneHost, state: PartitionState, records: list[Record]) -> bool:
        """Deliver one bulk until every entry is done (True) or the partition is revoked."""
        limit = self.max_record_bytes
        sendable = [record for record in records if record.value is None or len(record.value) <= limit]
        if len(sendable) < len(records):
            for record in records:
                if record.value is not None and len(record.value) > limit:
                    await host.finish_undelivered(state, record, "value_too_large", 0, None)
                    host.record_done(state, record.offset)
            if not sendable:
                return True
        entries = self._entries(host, sendable)
        await host.acquire_slot(len(entries))
        try:
            return await self._attempts(host, state, entries)
        finally:
            host.release_slot(len(entries))

    async def _attempts(self, host: LaneHost, state: PartitionState, entries: _Bulk) -> bool:
        first = entries.records[0]
        topic, partition = first.topic, first.partition
        counters = self.metrics.topic(topic)
        request_headers = {
            "content-type": bulk.BULK_CONTENT_TYPE,
            "kafka-topic": topic,
            "kafka-partition": str(partition),
        }
        attempts = 0
        status: int | None = None
        retrying = False
        try:
            while not state.revoked:
                if not self.health.healthy and not await state.wait_unless_revoked(self.health.wait_healthy()):
                    return False
                count = len(entries)
                body = bulk.encode_body(topic, partition, entries.bodies)
                self._request(topic, "entries").inc(count)
                answer = None
                retry_after: float | None = None
                try:
                    answer = await self.upstream.post(body, request_headers)
                except AppConnectError as exc:
                    # The app is not listening: no attempt is spent, the health gate holds us.
                    counters.attempts("connection_refused").inc(count)
                    self._request(topic, "connection_refused").inc()
                    self.health.mark_unhealthy(str(exc))
                    continue
                except AppTimeout:
                    whole: str | None = "timeout"
                except AppUnavailable:
                    whole = "connection_error"
                else:
                    whole = None
                attempts += 1
                read: bulk.BulkAnswer | None = None
                dead_letter = False
                if answer is not None:
                    status = answer.status
                    self.metrics.delivery_duration.observe(answer.seconds)
                    if 200 <= status < 300:
                        read = self._read(topic, partition, answer.body, answer.content_type, entries)
                    else:
                        verdict = classify(status)
                        whole = verdict.reason
                        dead_letter = verdict.outcome is Outcome.DEAD_LETTER
                        retry_after = parse_retry_after(answer.retry_after, time.time()) if answer.retry_after else None
                if read is not None and read.all_ok:
                    # Every entry taken (nearly every bulk): counted at once, all done at once.
                    counters.attempts("ok").inc(count)
                    counters.delivered.inc(count)
                    self._request(topic, "ok").inc()
                    done, entries = entries, _NONE
                    host.records_done(state, list(map(_offset, done.records)))
                    self._close(done, attempts, status)
                    return True
                ended: list[int] = []
                undone: list[int] = []
                for index, (entry_id, record) in enumerate(zip(entries.ids, entries.records)):
                    if read is not None:
                        verdict_of = read.verdicts[entry_id]
                        reason, outcome = verdict_of.reason, verdict_of.outcome
                    else:
                        reason, outcome = whole or "connection_error", bulk.EntryOutcome.RETRY
                    counters.attempts(reason).inc()
                    if outcome is bulk.EntryOutcome.DONE:
                        counters.delivered.inc()
                    elif outcome is bulk.EntryOutcome.DROP:
                        self.metrics.records_dropped.labels(topic, reason).inc()
                        log.info("record %s[%d]@%d dropped by the app", topic, partition, record.offset)
                    elif dead_letter or self.policy.exhausted(attempts):
                        await host.finish_undelivered(state, record, reason, attempts, status)
                    else:
                        undone.append(index)
                        continue
                    ended.append(index)
                if ended:
                    done = entries.only(ended)
                    host.records_done(state, list(map(_offset, done.records)))
                    self._close(done, attempts, status)
                self._request(topic, self._outcome(whole, read, undone)).inc()
                entries = entries.only(undone)
                if not undone:
                    return True
                if not retrying:
                    retrying = True
                    host.retry_started(state)
                await state.sleep_unless_revoked(self.policy.delay(attempts, retry_after))
            return False
        finally:
            if len(entries):  # abandoned by a revoke: their contexts stay usable for the grace
                self._close(entries, attempts, status)
            if retrying:
                host.retry_ended(state)

    def _close(self, entries: _Bulk, attempts: int, status: int | None) -> None:
        """End the delivery contexts (and spans) of ``entries``, which are over."""
        if self.envelope is not None:
            self.envelope.contexts.close_numbers(list(filter(None, entries.numbers)))
        if entries.scopes is not None:
            for scope in entries.scopes:
                if scope is not None:
                    scope.end(attempts, status)

    def _read(self, topic: str, partition: int, body: bytes, content_type: str, entries: _Bulk) -> bulk.BulkAnswer:
        sent = set(entries.ids)
        if not content_type.startswith("application/json"):
            read = bulk.BulkAnswer(dict.fromkeys(sent, bulk.ENTRY_MALFORMED), 0, (
                f"the answer's content-type is {content_type[:60]!r}, not application/json"
            ))
        else:
            read = bulk.read_answer(body, sent)
        if read.problem is not None:
            log.warning(
                "bulk of %d records of %s[%d] retried: %s (answer %s)",
                len(entries), topic, partition, read.problem, '{"statuses": [{"entryId": ..., "status": "SUCCESS"}]}',
            )
        if read.unknown_ids:
            self._request(topic, "unknown_entries").inc(read.unknown_ids)
            log.warning("bulk answer for %s[%d] named %d entry ids that were not sent", topic, partition, read.unknown_ids)
        return read

    @staticmethod
    def _outcome(whole: str | None, read: bulk.BulkAnswer | None, undone: list[int]) -> str:
        if whole is not None:
            return whole
        if read is not None and read.problem is not None:
            return "malformed_answer"
        return "partial" if undone else "ok"

    def _request(self, topic: str, what: str) -> BufferedCounter:
        """``ktp_bulk_requests_total{topic, outcome}``, ``ktp_bulk_entries_total{topic}`` and
        ``ktp_bulk_unknown_entries_total{topic}`` children, looked up once each."""
        counter = self._requests.get((topic, what))
        if counter is None:
            m = self.metrics
            if what == "entries":
                child = m.bulk_entries.labels(topic)
            elif what == "unknown_entries":
                child = m.bulk_unknown_entries.labels(topic)
            else:
                child = m.bulk_requests.labels(topic, what)
            counter = self._requests[(topic, what)] = m.buffered(child)
        return counter
