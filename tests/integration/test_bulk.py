"""Bulk delivery (``--bulk-max-records``) against the real broker and a real bulk app: exact
accounts under per-entry RETRY and DROP, app errors, dead letters, CloudEvents, contexts."""

from __future__ import annotations

import asyncio
import collections
import json
from collections.abc import Sequence
from pathlib import Path

import aiohttp
from aiokafka import TopicPartition
from cloudevents.core.formats.json import JSONFormat

from proxy.kafka import KafkaConnection
from proxy.sidecar.runtime import Sidecar, committed_offsets
from proxy.testing.app import Received
from proxy.testing.bulk_app import BulkRecordingApp
from tests.conftest import create_topic, group_for, produce, sidecar_config
from tests.faults.harness import Account, account, read_topic

ROUTES = 'tenants:\n  "123": {orders-worker: pr-42}\n'
PARTITIONS = 4


def routes_file(tmp_path: Path) -> str:
    path = tmp_path / "routes.yaml"
    path.write_text(ROUTES)
    return str(path)


def records(n: int) -> list[tuple[bytes | None, bytes | None, list[tuple[str, bytes]]]]:
    """Value = sequence number, 11 keys, a tenant without a route on every third (delivered by
    baseline like the rest, and its baggage must reach the app)."""
    return [
        (f"k{i % 11}".encode(), str(i).encode(), [("baggage", b"tenant=9")] if i % 3 == 0 else [])
        for i in range(n)
    ]


def seq(r: Received) -> int:
    return int(r.body)


def overtaken(bulks: Sequence[Sequence[Received]]) -> int:
    """Records first sent while an older record of their partition, sent in an earlier request,
    was not done yet: what ``partition`` order forbids (a retried entry holds back its lane).
    An older record is not done until its last request."""
    first: dict[tuple[int, int], int] = {}
    last: dict[tuple[int, int], int] = {}
    for i, bulk in enumerate(bulks):
        for r in bulk:
            first.setdefault((r.partition, r.offset), i)
            last[(r.partition, r.offset)] = i
    count = 0
    by_partition: dict[int, list[int]] = collections.defaultdict(list)
    for partition, offset in first:
        by_partition[partition].append(offset)
    for partition, offsets in by_partition.items():
        offsets.sort()
        for j, newer in enumerate(offsets):
            sent_at = first[(partition, newer)]
            if any(
                first[(partition, older)] < sent_at <= last[(partition, older)] for older in offsets[:j]
            ):
                count += 1
    return count


async def fully_committed(sidecar: Sidecar, bootstrap_servers: str, topic: str, n_by_partition: dict[int, int]) -> dict[int, int]:
    tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
    deadline = asyncio.get_running_loop().time() + 10
    while True:
        found = await committed_offsets(KafkaConnection(bootstrap_servers=bootstrap_servers), group_for(topic), tps)
        # Partitions no record went to have no commit.
        got = {tp.partition: offset for tp, offset in found.items() if offset is not None}
        if got == n_by_partition or asyncio.get_running_loop().time() > deadline:
            return got
        await asyncio.sleep(0.2)


def ends(app: BulkRecordingApp) -> dict[int, int]:
    """One past the highest offset sent per partition."""
    out: dict[int, int] = {}
    for r in app.sent:
        out[r.partition] = max(out.get(r.partition, 0), r.offset + 1)
    return out


def settled_account(
    name: str, app: BulkRecordingApp, expected: set[int], note: str = "", dead_lettered: int = 0
) -> Account:
    """The account of what the app took (answered SUCCESS), order judged on first sends (a
    resent entry is not out of order), printed like the fault tests' accounts."""
    took = account(name, app.received, expected, order=None, report=False)
    first_sends = account(name, app.sent, {seq(r) for r in app.sent}, report=False)
    result = Account(
        took.scenario, took.expected, took.deliveries, took.lost, took.duplicated,
        first_sends.out_of_order, took.unexpected, dead_lettered, note,
    )
    print(f"\nACCOUNT {result.line()}")
    return result


async def test_bulks_deliver_every_record_once_in_partition_order(
    bootstrap_servers: str, topic: str, tmp_path: Path
) -> None:
    n = 600
    await produce(bootstrap_servers, topic, records(n))
    async with BulkRecordingApp() as app:
        config = sidecar_config(bootstrap_servers, topic, app.url, routes_file(tmp_path), bulk_max_records=32)
        async with Sidecar(config) as sidecar:
            await app.wait_until(lambda: len(app.received) >= n, "every record taken")
            await asyncio.sleep(0.3)  # a duplicate would show now
            committed = await fully_committed(sidecar, bootstrap_servers, topic, ends(app))
            metrics = sidecar.metrics.render().decode()
    got = settled_account("bulk, all SUCCESS", app, set(range(n)), note=f"{app.calls} requests")
    assert (got.lost, got.duplicated, got.out_of_order, got.unexpected) == (0, 0, 0, 0)
    assert overtaken(app.bulks) == 0
    sizes = [len(b) for b in app.bulks]
    assert max(sizes) == 32 and app.calls < n / 4, sizes
    # Each entry carries what a single delivery would: kafka-* metadata, baggage, a delivery id.
    by_seq = {seq(r): r for r in app.received}
    sample = by_seq[3]
    assert sample.headers["baggage"] == "tenant=9" and sample.headers["kafka-key"] == "k3"
    assert sample.headers["kafka-topic"] == topic and sample.headers["ktp-delivery"]
    assert "baggage" not in by_seq[4].headers
    assert len({r.headers["ktp-delivery"] for r in app.received}) == n
    body = app.bodies[0]
    assert body["topic"] == topic and set(body["metadata"]) == {"kafka-topic", "kafka-partition"}
    entry = body["entries"][0]
    assert entry["entryId"] == entry["metadata"]["kafka-offset"]
    assert entry["contentType"] == "application/octet-stream"
    assert committed == ends(app)
    assert f'ktp_bulk_requests_total{{outcome="ok",topic="{topic}"}} {float(app.calls)}' in metrics
    assert f'ktp_records_delivered_total{{topic="{topic}"}} {float(n)}' in metrics


async def test_bulks_of_daprs_default_size_with_answers_past_4_kib(
    bootstrap_servers: str, topic: str, tmp_path: Path
) -> None:
    # Dapr's default maxMessagesCount is 100; a pretty-printed answer to 100 entries is ~7.5 KB,
    # past the 4 KiB single deliveries keep: it must be read whole, not retried as cut.
    n = 400
    await produce(bootstrap_servers, topic, records(n))
    async with BulkRecordingApp(pretty=True) as app:
        config = sidecar_config(
            bootstrap_servers, topic, app.url, routes_file(tmp_path), bulk_max_records=100, bulk_max_wait=0.5
        )
        async with Sidecar(config) as sidecar:
            await app.wait_until(lambda: len(app.received) >= n, "every record taken")
            await asyncio.sleep(0.3)
            metrics = sidecar.metrics.render().decode()
    got = settled_account("bulk of 100, pretty answers", app, set(range(n)), note=f"{app.calls} requests")
    assert (got.lost, got.duplicated, got.out_of_order, got.unexpected) == (0, 0, 0, 0)
    assert len(app.sent) == n, "an entry was sent again"
    biggest = max(app.bulks, key=len)
    assert len(biggest) == 100
    answer = json.dumps({"statuses": [{"entryId": str(r.offset), "status": "SUCCESS"} for r in biggest]}, indent=4)
    assert len(answer) > 4096
    assert f'ktp_bulk_requests_total{{outcome="ok",topic="{topic}"}} {float(app.calls)}' in metrics


async def test_per_entry_retry_drop_and_left_out_entries(bootstrap_servers: str, topic: str, tmp_path: Path) -> None:
    n = 800

    def status(r: Received, times: int) -> str | None:
        s = seq(r)
        if s % 7 == 3 and times < 2:
            return "RETRY"
        if s % 13 == 4 and times < 1:
            return None  # left out of the answer: retried
        if s % 17 == 5 and times < 1:
            return "LATER"  # not a status: retried
        if s % 11 == 5:
            return "DROP"
        return "success" if s % 2 else "SUCCESS"

    await produce(bootstrap_servers, topic, records(n))
    async with BulkRecordingApp(status=status) as app:
        config = sidecar_config(bootstrap_servers, topic, app.url, routes_file(tmp_path), bulk_max_records=16)
        async with Sidecar(config) as sidecar:
            dropped = {s for s in range(n) if s % 11 == 5}
            await app.wait_until(lambda: len(app.received) + len(app.dropped) >= n, "every record answered")
            await asyncio.sleep(0.3)
            committed = await fully_committed(sidecar, bootstrap_servers, topic, ends(app))
            metrics = sidecar.metrics.render().decode()
    got = settled_account(
        "bulk, per-entry RETRY/DROP/left out", app, set(range(n)) - dropped,
        note=f"{app.calls} requests, {len(app.sent)} entries sent",
    )
    assert (got.lost, got.duplicated, got.out_of_order, got.unexpected) == (0, 0, 0, 0)
    assert sorted(seq(r) for r in app.dropped) == sorted(dropped)
    assert overtaken(app.bulks) == 0
    # Resent exactly as often as the app asked: twice for RETRY ones, once for the others.
    sends = collections.Counter(seq(r) for r in app.sent)
    for s in range(n):
        want = 1 + (2 if s % 7 == 3 else 1 if (s % 13 == 4 or s % 17 == 5) else 0)
        assert sends[s] == want, (s, sends[s], want)
    assert committed == ends(app)
    for reason in ("app_retry", "bulk_missing_entry", "bulk_unknown_status", "app_drop", "ok"):
        assert f'ktp_delivery_attempts_total{{outcome="{reason}",topic="{topic}"}}' in metrics
    assert f'ktp_records_dropped_total{{reason="app_drop",topic="{topic}"}} {float(len(dropped))}' in metrics
    assert f'ktp_bulk_requests_total{{outcome="partial",topic="{topic}"}}' in metrics


async def test_app_errors_are_retried_as_a_whole(bootstrap_servers: str, topic: str, tmp_path: Path) -> None:
    n = 400
    wrong = [
        (503, {"retry-after": "0"}, b"busy"),
        (200, {"content-type": "application/json"}, b'{"statuses": [{"entryId": "1'),  # cut short
        (200, {"content-type": "application/json"}, b'{"statuses": [{"entryId": "no-such", "status": "SUCCESS"}]}'),
        (200, {"content-type": "text/plain"}, b"ok"),
        (429, {}, b""),
        (200, {"content-type": "application/json"}, b"[]"),
    ]

    def whole(call: int, _: list[Received]) -> tuple[int, dict[str, str], bytes] | None:
        # The first calls each get one kind of wrong answer, then every third call gets one.
        if call <= len(wrong):
            return wrong[call - 1]
        if call % 3 == 0:
            return wrong[call % len(wrong)]
        if call == len(wrong) + 2:
            return (200, {}, b"")  # the sidecar timed out long before: this answer is never read
        return None

    await produce(bootstrap_servers, topic, records(n))
    async with BulkRecordingApp(whole=whole, delay_of=lambda call: 1.5 if call == len(wrong) + 2 else 0.0) as app:
        config = sidecar_config(
            bootstrap_servers, topic, app.url, routes_file(tmp_path), bulk_max_records=20, app_timeout=0.5
        )
        async with Sidecar(config) as sidecar:
            await app.wait_until(lambda: len(app.received) >= n, "every record taken", timeout=40)
            await asyncio.sleep(0.3)
            committed = await fully_committed(sidecar, bootstrap_servers, topic, ends(app))
            metrics = sidecar.metrics.render().decode()
    got = settled_account("bulk, 5xx/429/malformed/unknown ids/timeout", app, set(range(n)), note=f"{app.calls} requests")
    assert (got.lost, got.duplicated, got.out_of_order, got.unexpected) == (0, 0, 0, 0)
    assert overtaken(app.bulks) == 0
    assert committed == ends(app)
    for outcome in ("http_503", "http_429", "malformed_answer", "timeout", "partial"):
        assert f'ktp_bulk_requests_total{{outcome="{outcome}",topic="{topic}"}}' in metrics, outcome
    assert f'ktp_bulk_unknown_entries_total{{topic="{topic}"}}' in metrics
    assert f'ktp_delivery_attempts_total{{outcome="bulk_malformed_answer",topic="{topic}"}}' in metrics
    assert "ktp_dead_letters_total{" not in metrics


async def test_4xx_and_exhausted_entries_are_dead_lettered_one_by_one(
    bootstrap_servers: str, topic: str, tmp_path: Path
) -> None:
    n = 200
    poison = 77  # always RETRY: dead-lettered once its attempts run out

    def whole(call: int, seen: list[Received]) -> tuple[int, dict[str, str], bytes] | None:
        return (422, {}, b"no") if call == 1 else None

    def status(r: Received, _: int) -> str | None:
        return "RETRY" if seq(r) == poison else "SUCCESS"

    await produce(bootstrap_servers, topic, records(n))
    async with BulkRecordingApp(whole=whole, status=status) as app:
        config = sidecar_config(
            bootstrap_servers, topic, app.url, routes_file(tmp_path), bulk_max_records=10, max_attempts=3
        )
        async with Sidecar(config) as sidecar:
            rejected = {seq(r) for r in (await _first_bulk(app))}
            await app.wait_until(lambda: len(app.received) >= n - len(rejected) - 1, "the rest taken")
            dlq = await _read_until(bootstrap_servers, f"{topic}.dlq", len(rejected) + 1)
            await asyncio.sleep(0.3)
            committed = await fully_committed(sidecar, bootstrap_servers, topic, ends(app))
            metrics = sidecar.metrics.render().decode()
    assert poison not in rejected
    got = settled_account(
        "bulk, 422 + exhausted entry", app, set(range(n)) - rejected - {poison},
        note=f"{len(rejected)} rejected by a 422, 1 exhausted", dead_lettered=len(rejected) + 1,
    )
    assert (got.lost, got.duplicated, got.out_of_order, got.unexpected) == (0, 0, 0, 0)
    assert overtaken(app.bulks) == 0
    letters = {int(r.value or b"-1"): dict(r.headers) for r in dlq}
    assert set(letters) == rejected | {poison} and len(dlq) == len(rejected) + 1
    for s in rejected:
        assert letters[s]["ktp-dead-letter-reason"] == b"http_422"
        assert letters[s]["ktp-dead-letter-attempts"] == b"1" and letters[s]["ktp-dead-letter-status"] == b"422"
    assert letters[poison]["ktp-dead-letter-reason"] == b"app_retry"
    assert letters[poison]["ktp-dead-letter-attempts"] == b"3"
    # Dead letters keep the record's own headers (its baggage) and key.
    assert all((s % 3 == 0) == (letters[s].get("baggage") == b"tenant=9") for s in letters)
    assert sum(1 for r in app.sent if seq(r) == poison) == 3
    assert committed == ends(app)
    assert f'ktp_dead_letters_total{{reason="http_422",topic="{topic}"}} {float(len(rejected))}' in metrics


async def _first_bulk(app: BulkRecordingApp) -> list[Received]:
    await app.wait_until(lambda: bool(app.bulks), "a first request")
    return app.bulks[0]


async def _read_until(bootstrap_servers: str, topic: str, count: int) -> list:  # type: ignore[type-arg]
    deadline = asyncio.get_running_loop().time() + 20
    while True:
        got = await read_topic(bootstrap_servers, topic)
        if len(got) >= count or asyncio.get_running_loop().time() > deadline:
            return got
        await asyncio.sleep(0.3)


async def test_cloudevents_in_bulk_are_json_events_with_contexts_per_entry(
    bootstrap_servers: str, topic: str, tmp_path: Path
) -> None:
    n = 40
    await produce(bootstrap_servers, topic, [
        (b"k", str(i).encode(), [("baggage", f"tenant=t{i}".encode()), ("content-type", b"application/json")])
        for i in range(n)
    ])
    async with BulkRecordingApp() as app:
        config = sidecar_config(
            bootstrap_servers, topic, app.url, routes_file(tmp_path), bulk_max_records=8, format="cloudevents"
        )
        async with Sidecar(config) as sidecar:
            await app.wait_until(lambda: len(app.received) >= n, "every record taken")
            # An entry's ktp-delivery id gives what the app publishes that entry's tenant.
            chosen = next(r for r in app.received if seq(r) == 17)
            out = await create_topic(bootstrap_servers, f"{topic}-out", 1)
            async with aiohttp.ClientSession() as session, session.post(
                f"{sidecar.context_parts.publish.url}/{out}",
                data=b"reply", headers={"ktp-delivery": chosen.headers["ktp-delivery"]},
            ) as response:
                assert response.status == 204, await response.text()
            published = await _read_until(bootstrap_servers, out, 1)
    got = settled_account("bulk, cloudevents", app, set(range(n)))
    assert (got.lost, got.duplicated, got.out_of_order) == (0, 0, 0)
    entries = [e for body in app.bodies for e in body["entries"]]
    offset_value = {(str(r.partition), str(r.offset)): seq(r) for r in app.received}
    assert {e["contentType"] for e in entries} == {"application/cloudevents+json"}
    for e in entries:
        event = JSONFormat().read(None, json.dumps(e["event"]).encode())
        offset = e["metadata"]["kafka-offset"]
        assert event.get_id() == f"partition:{e['metadata']['kafka-partition']}/offset:{offset}"
        assert e["event"]["kafkaheaderbaggage"] == e["metadata"]["baggage"]
        assert e["event"]["datacontenttype"] == "application/json"
        assert not any(name.startswith("ce-") for name in e["metadata"])
        # JSON content is the event's data as JSON, not base64.
        assert e["event"]["data"] == int(offset_value[(e["metadata"]["kafka-partition"], offset)])
    assert dict(published[0].headers)["baggage"] == b"tenant=t17"
