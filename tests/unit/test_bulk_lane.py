"""The bulk lane (proxy.delivery.bulk_lane) in the Dispatcher against stand-ins of its ports:
filling a bulk, the watermark under per-entry retries, the retry pause, revokes, oversized
values, 4xx answers. The real path (Tansu, a real app) is tests/integration/test_bulk.py."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Mapping

from proxy.delivery.bulk_lane import BulkDelivery
from proxy.delivery.dispatcher import Dispatcher
from proxy.delivery.policy import RetryPolicy
from proxy.listener.partitions import Partitions, PartitionState
from proxy.metrics import Metrics
from proxy.upstream.http import AppAnswer
from tests.unit.test_dispatcher import TP, AlwaysHealthy, RecordingPauser, record, submit


class BulkApp:
    """Answers each bulk; ``statuses`` maps an offset to the statuses of its successive sends
    (SUCCESS once the list is used up); ``status`` answers whole requests instead."""

    def __init__(self, statuses: dict[int, list[str]] | None = None, status: list[int] | None = None) -> None:
        self.statuses = statuses or {}
        self.status = status or []
        self.bulks: list[list[int]] = []
        self.sent_at: list[float] = []

    async def post(self, body: bytes, headers: Mapping[str, str]) -> AppAnswer:
        entries = json.loads(body)["entries"]
        offsets = [int(e["entryId"]) for e in entries]
        self.bulks.append(offsets)
        self.sent_at.append(time.monotonic())
        if self.status:
            return AppAnswer(self.status.pop(0), b"", "", None, 0.001)
        answer = []
        for offset in offsets:
            script = self.statuses.get(offset)
            answer.append({"entryId": str(offset), "status": script.pop(0) if script else "SUCCESS"})
        return AppAnswer(200, json.dumps({"statuses": answer}).encode(), "application/json", None, 0.001)


def build(
    app: BulkApp, *, max_records: int = 4, max_wait: float = 0.0, max_record_bytes: int = 1024
) -> tuple[Dispatcher, PartitionState, RecordingPauser, Metrics]:
    partitions = Partitions()
    partitions.add([TP])
    state = partitions.get(TP)
    assert state is not None
    pauser = RecordingPauser()
    metrics = Metrics()
    health = AlwaysHealthy()
    policy = RetryPolicy(max_attempts=5, initial=0.001, maximum=0.002)
    bulk = BulkDelivery(
        max_records=max_records, max_wait=max_wait, upstream=app, health=health, policy=policy, metrics=metrics,
        max_record_bytes=max_record_bytes,
    )
    dispatcher = Dispatcher(
        upstream=app, health=health, listener=pauser, policy=policy, dead_letters=None, metrics=metrics,
        forwarded_headers=frozenset(), max_in_flight=8, partitions=partitions, bulk=bulk,
    )
    return dispatcher, state, pauser, metrics


async def test_a_bulk_that_fills_goes_out_at_once_not_after_the_wait() -> None:
    app = BulkApp()
    dispatcher, state, _, _ = build(app, max_records=4, max_wait=1.0)
    started = time.monotonic()
    submit(dispatcher, state, record(0), record(1))
    await asyncio.sleep(0.05)
    assert app.bulks == []  # waiting for more
    submit(dispatcher, state, record(2), record(3), record(4))
    assert await dispatcher.drain(10)
    # The first bulk left when the queue reached 4, the rest (one record) after the full wait.
    assert app.bulks == [[0, 1, 2, 3], [4]]
    assert app.sent_at[0] - started < 0.5 and app.sent_at[1] - started >= 1.0
    assert state.offsets.position == 5


async def test_a_retried_entry_holds_the_watermark_and_the_lane_behind_it() -> None:
    app = BulkApp({1: ["RETRY", "RETRY"]})
    dispatcher, state, pauser, metrics = build(app, max_records=3)
    submit(dispatcher, state, *(record(i) for i in range(6)))
    assert await dispatcher.drain(5)
    # 0 and 2 are done with the first answer; 1 alone is sent again, twice; 3.. only after.
    assert app.bulks == [[0, 1, 2], [1], [1], [3, 4, 5]]
    assert pauser.events == [("pause", "retrying"), ("resume", "retrying")]
    assert state.offsets.position == 6 and state.offsets.pending == 0
    text = metrics.render().decode()
    assert 'ktp_delivery_attempts_total{outcome="app_retry",topic="t"} 2.0' in text
    assert 'ktp_records_delivered_total{topic="t"} 6.0' in text


async def test_the_watermark_stops_at_the_first_entry_not_done() -> None:
    app = BulkApp({1: ["RETRY"] * 3})
    dispatcher, state, _, _ = build(app, max_records=3)
    submit(dispatcher, state, *(record(i) for i in range(3)))
    for _ in range(200):
        if len(app.bulks) >= 2:
            break
        await asyncio.sleep(0.001)
    assert state.offsets.position == 1  # 0 done, 1 retrying, 2 done but behind it
    assert await dispatcher.drain(5)
    assert state.offsets.position == 3


async def test_a_revoke_ends_the_wait_for_a_full_bulk_and_sends_nothing() -> None:
    app = BulkApp()
    dispatcher, state, _, _ = build(app, max_records=64, max_wait=30.0)
    submit(dispatcher, state, record(0))
    await asyncio.sleep(0.02)
    started = time.monotonic()
    await dispatcher.settle([state], timeout=5)
    assert time.monotonic() - started < 1.0
    assert app.bulks == [] and state.offsets.position == 0


async def test_oversized_values_are_not_sent_and_a_4xx_ends_every_entry() -> None:
    app = BulkApp(status=[422, 422])
    dispatcher, state, _, metrics = build(app, max_records=4, max_record_bytes=10)
    submit(dispatcher, state, record(0), record(1, value=b"x" * 11), record(2), record(3))
    assert await dispatcher.drain(5)
    # The bulk before the oversized record ends there; that record is never sent.
    assert app.bulks == [[0], [2, 3]]
    assert state.offsets.position == 4
    text = metrics.render().decode()
    assert 'ktp_records_dropped_total{reason="value_too_large",topic="t"} 1.0' in text
    assert 'ktp_records_dropped_total{reason="http_422",topic="t"} 3.0' in text


async def test_a_bulk_carries_no_more_record_bytes_than_one_delivery_may() -> None:
    app = BulkApp()
    dispatcher, state, _, _ = build(app, max_records=8, max_record_bytes=10)
    submit(dispatcher, state, *(record(i, value=b"x" * 4) for i in range(5)))
    assert await dispatcher.drain(5)
    assert app.bulks == [[0, 1], [2, 3], [4]]
