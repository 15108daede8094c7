"""The Dispatcher against small stand-ins of its interfaces (proxy.delivery.ports): retries and
the retry pause, ordering lanes, done watermarks, dead letters off, the health gate.

No broker and no HTTP: the app is a scripted ``Upstream``; the real path is covered by the
integration and fault tests.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping

import pytest
from aiokafka import TopicPartition
from aiokafka.structs import ConsumerRecord

from proxy.delivery.dispatcher import Dispatcher
from proxy.delivery.headers import forwarded_header_names
from proxy.delivery.policy import RetryPolicy
from proxy.listener.partitions import Partitions, PartitionState
from proxy.metrics import Metrics
from proxy.upstream.http import AppAnswer, AppConnectError

TP = TopicPartition("t", 0)


def record(offset: int, key: bytes | None = None, value: bytes = b"v") -> ConsumerRecord[bytes, bytes]:
    return ConsumerRecord(
        topic=TP.topic, partition=TP.partition, offset=offset, timestamp=1_700_000_000_000 + offset,
        timestamp_type=0, key=key, value=value, checksum=None, serialized_key_size=0,
        serialized_value_size=len(value), headers=[],
    )


def answer(status: int) -> AppAnswer:
    return AppAnswer(status=status, body=b"", content_type="", retry_after=None, seconds=0.001)


class ScriptedApp:
    """Answers each delivery (by offset) with the next status of its script; 200 when done.
    ``gate`` holds every answer until set, so concurrency can be observed."""

    def __init__(self, script: dict[int, list[int | Exception]] | None = None) -> None:
        self.script = script or {}
        self.calls: list[int] = []
        self.active = 0
        self.most_active = 0
        self.gate = asyncio.Event()
        self.gate.set()

    async def post(self, body: bytes, headers: Mapping[str, str]) -> AppAnswer:
        offset = int(headers["kafka-offset"])
        self.calls.append(offset)
        self.active += 1
        self.most_active = max(self.most_active, self.active)
        try:
            await self.gate.wait()
            steps = self.script.get(offset)
            step = steps.pop(0) if steps else 200
            if isinstance(step, Exception):
                raise step
            return answer(step)
        finally:
            self.active -= 1


class AlwaysHealthy:
    def __init__(self) -> None:
        self.marked: list[str] = []
        self._healthy = asyncio.Event()
        self._healthy.set()

    @property
    def healthy(self) -> bool:
        return self._healthy.is_set()

    async def wait_healthy(self) -> None:
        await self._healthy.wait()

    def mark_unhealthy(self, why: str) -> None:
        self.marked.append(why)
        self._healthy.clear()

    def recover(self) -> None:
        self._healthy.set()


class RecordingPauser:
    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []

    def pause(self, tps: Iterable[TopicPartition], reason: str) -> None:
        self.events.extend(("pause", reason) for _ in tps)

    def resume(self, tps: Iterable[TopicPartition], reason: str) -> None:
        self.events.extend(("resume", reason) for _ in tps)


def build(
    app: ScriptedApp,
    *,
    ordering: str = "partition",
    max_attempts: int = 5,
    health: AlwaysHealthy | None = None,
    forwarded: frozenset[str] = frozenset(),
) -> tuple[Dispatcher, PartitionState, RecordingPauser, Metrics]:
    partitions = Partitions()
    partitions.add([TP])
    state = partitions.get(TP)
    assert state is not None
    pauser = RecordingPauser()
    metrics = Metrics()
    dispatcher = Dispatcher(
        upstream=app,
        health=health or AlwaysHealthy(),
        listener=pauser,
        policy=RetryPolicy(max_attempts=max_attempts, initial=0.001, maximum=0.002),
        dead_letters=None,
        metrics=metrics,
        forwarded_headers=forwarded,
        ordering=ordering,
        max_in_flight=8,
        partitions=partitions,
    )
    return dispatcher, state, pauser, metrics


def submit(dispatcher: Dispatcher, state: PartitionState, *records: ConsumerRecord[bytes, bytes]) -> None:
    for r in records:
        state.offsets.begin(r.offset)
        dispatcher.submit(state, r)
    state.offsets.fetched_through(records[-1].offset)


async def test_retried_until_the_app_takes_it_pausing_the_partition_meanwhile() -> None:
    app = ScriptedApp({0: [503, 500]})
    dispatcher, state, pauser, _ = build(app)
    submit(dispatcher, state, record(0), record(1))
    assert await dispatcher.drain(5)
    assert app.calls == [0, 0, 0, 1]  # partition order: 1 waits for 0's retries
    assert pauser.events == [("pause", "retrying"), ("resume", "retrying")]
    assert state.offsets.position == 2 and state.offsets.pending == 0


async def test_exhausted_retries_without_dead_letters_are_dropped_and_done() -> None:
    app = ScriptedApp({0: [503, 503, 503]})
    dispatcher, state, _, metrics = build(app, max_attempts=3)
    submit(dispatcher, state, record(0))
    assert await dispatcher.drain(5)
    assert app.calls == [0, 0, 0]
    assert state.offsets.position == 1
    assert b'ktp_records_dropped_total{reason="http_503",topic="t"} 1.0' in metrics.render()


async def test_a_4xx_is_not_retried() -> None:
    app = ScriptedApp({0: [400]})
    dispatcher, state, pauser, _ = build(app)
    submit(dispatcher, state, record(0))
    assert await dispatcher.drain(5)
    assert app.calls == [0] and pauser.events == []


@pytest.mark.parametrize(
    ("ordering", "concurrent"),
    [("partition", 1), ("key", 2), ("none", 4)],
)
async def test_ordering_modes_set_how_many_of_a_partition_run_at_once(ordering: str, concurrent: int) -> None:
    app = ScriptedApp()
    app.gate.clear()
    dispatcher, state, _, _ = build(app, ordering=ordering)
    submit(dispatcher, state, record(0, b"a"), record(1, b"b"), record(2, b"a"), record(3, b"b"))
    for _ in range(20):
        await asyncio.sleep(0)
    assert app.active == concurrent
    app.gate.set()
    assert await dispatcher.drain(5)
    assert state.offsets.position == 4


async def test_key_order_is_kept_within_a_key() -> None:
    app = ScriptedApp({0: [503]})
    dispatcher, state, _, _ = build(app, ordering="key")
    submit(dispatcher, state, record(0, b"a"), record(1, b"b"), record(2, b"a"))
    assert await dispatcher.drain(5)
    assert app.calls.index(2) > len(app.calls) - 1 - app.calls[::-1].index(0)  # 2 after 0's last try
    assert state.offsets.position == 3


async def test_watermark_waits_for_the_slowest_record() -> None:
    app = ScriptedApp({0: [503, 503]})
    dispatcher, state, _, _ = build(app, ordering="none")
    submit(dispatcher, state, record(0), record(1), record(2))
    while 1 not in app.calls or 2 not in app.calls:
        await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert state.offsets.position == 0  # 1 and 2 done, 0 still retrying
    assert await dispatcher.drain(5)
    assert state.offsets.position == 3


async def test_a_refused_connection_costs_no_attempt_and_waits_for_health() -> None:
    health = AlwaysHealthy()
    app = ScriptedApp({0: [AppConnectError("refused"), 200]})
    dispatcher, state, _, _ = build(app, max_attempts=1, health=health)
    submit(dispatcher, state, record(0))
    while not health.marked:
        await asyncio.sleep(0)
    for _ in range(10):
        await asyncio.sleep(0)
    assert app.calls == [0]  # held by the health gate
    health.recover()
    assert await dispatcher.drain(5)
    assert app.calls == [0, 0] and state.offsets.position == 1


async def test_settle_stops_a_revoked_partitions_lanes() -> None:
    app = ScriptedApp({0: [503] * 1000})
    dispatcher, state, pauser, _ = build(app, max_attempts=10_000)
    submit(dispatcher, state, record(0), record(1))
    while len(app.calls) < 2:
        await asyncio.sleep(0.001)
    await dispatcher.settle([state], 1.0)
    assert 1 not in app.calls and state.offsets.position == 0
    assert pauser.events[-1] == ("resume", "retrying")
    assert await dispatcher.drain(1)


async def test_bad_headers_are_counted_per_record_and_logged_once_per_interval(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A producer that puts an unsafe header (and re-serializable baggage) on every record: each
    one is counted, delivered with the tenant, and logged once per topic and kind per interval,
    not once per record."""
    app = ScriptedApp()
    dispatcher, state, _, metrics = build(app, forwarded=forwarded_header_names())
    headers = [("baggage", b"tenant=t1 "), ("traceparent", b"00-bad\r\nx: y")]
    records = [
        ConsumerRecord(
            topic=TP.topic, partition=TP.partition, offset=n, timestamp=1_700_000_000_000 + n,
            timestamp_type=0, key=None, value=b"v", checksum=None, serialized_key_size=0,
            serialized_value_size=1, headers=headers,
        )
        for n in range(50)
    ]
    with caplog.at_level("WARNING", logger="proxy.delivery.request_headers"):
        submit(dispatcher, state, *records)
        await dispatcher.drain(5.0)
    assert len(app.calls) == 50 and state.offsets.position == 50
    text = metrics.render().decode()
    assert 'ktp_bad_input_total{kind="header_traceparent",topic="t"} 50.0' in text
    lines = [r.getMessage() for r in caplog.records if r.name == "proxy.delivery.request_headers"]
    assert sum("baggage" in line and "re-serialized" in line for line in lines) == 1, lines
    assert sum("'traceparent' not forwarded" in line for line in lines) == 1, lines


@pytest.mark.parametrize("ordering", ["partition", "key", "none"])
async def test_a_batch_handed_over_at_once_is_delivered_as_record_by_record(ordering: str) -> None:
    # Sidecar._handle hands a fetched batch over with begin_many + submit_many; a batch that
    # arrives while the lane is still busy with the first joins its queue.
    app = ScriptedApp({1: [503]})
    dispatcher, state, _, _ = build(app, ordering=ordering)
    first = [record(n, key=b"k%d" % (n % 2)) for n in range(3)]
    second = [record(n, key=b"k%d" % (n % 2)) for n in range(3, 6)]
    for batch in (first, second):
        state.offsets.begin_many([r.offset for r in batch])
        dispatcher.submit_many(state, batch)
        state.offsets.fetched_through(batch[-1].offset)
    assert await dispatcher.drain(5)
    assert sorted(app.calls) == [0, 1, 1, 2, 3, 4, 5] and state.offsets.position == 6
    if ordering == "partition":
        assert app.calls == [0, 1, 1, 2, 3, 4, 5]
