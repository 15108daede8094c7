"""Hostile sizes on a topic: a 2 MB value and a record with 1,000 headers, end to end.

Each is decided, counted and committed, and the app never sees more than the limits allow: the big
value is dead-lettered with reason ``value_too_large`` (the app is not called), the record with
1,000 headers is delivered with only allowlisted headers.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from proxy.sidecar.runtime import Sidecar
from proxy.testing.app import RecordingApp
from tests.conftest import eventually, sidecar_config

BIG = 2 * 1024 * 1024
# Our producer must be allowed to send what a hostile (or careless) one would.
PRODUCER_MAX_REQUEST = 4 * 1024 * 1024


async def produce_big(bootstrap_servers: str, topic: str, records: list[tuple[bytes, bytes, list[tuple[str, bytes]]]]) -> None:
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap_servers, acks="all", max_request_size=PRODUCER_MAX_REQUEST
    )
    await producer.start()
    try:
        for key, value, headers in records:
            await producer.send_and_wait(topic, value, key=key, headers=headers, partition=0)
    finally:
        await producer.stop()


async def test_a_2mb_value_and_1000_headers_are_each_decided_and_counted(
    bootstrap_servers: str, topic: str, tmp_path: Path
) -> None:
    routes = tmp_path / "routes.yaml"
    routes.write_text('tenants:\n  "123": {orders-worker: pr-42}\n')
    many_headers = [(f"x-h{i}", b"v" * 20) for i in range(1000)]
    # Among the 1,000: hop-by-hop and credential headers, and baggage naming a routed tenant.
    many_headers[10] = ("authorization", b"Bearer from-the-record")
    many_headers[11] = ("transfer-encoding", b"chunked")
    many_headers[12] = ("host", b"evil.example")
    many_headers[500] = ("baggage", b"tenant=123")
    baseline_headers = [*many_headers[:500], ("traceparent", b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")]
    await produce_big(
        bootstrap_servers,
        topic,
        [
            (b"big", b"x" * BIG, [("baggage", b"tenant=9")]),
            (b"many-sandbox", b"routed to pr-42", many_headers),
            (b"many-baseline", b"baseline's", baseline_headers),
            (b"after", b"after", []),
        ],
    )
    async with RecordingApp() as app:
        config = sidecar_config(bootstrap_servers, topic, app.url, str(routes), max_record_bytes=1024 * 1024)
        async with Sidecar(config) as sidecar:
            await app.wait_for(2)

            async def committed_all() -> bool:
                await sidecar.commit()
                return sum(s.offsets.position or 0 for s in sidecar.partitions) == 4

            await eventually(committed_all, timeout=30, what="all four records done and committed")
            metrics = sidecar.metrics.render().decode()
            decisions = {(d["offset"], d["decision"], d["reason"]) for d in sidecar.decisions()}
        dlq = AIOKafkaConsumer(
            f"{topic}.dlq", bootstrap_servers=bootstrap_servers, auto_offset_reset="earliest",
            max_partition_fetch_bytes=PRODUCER_MAX_REQUEST,
        )
        await dlq.start()
        try:
            dead = await asyncio.wait_for(dlq.getone(), 20)
        finally:
            await dlq.stop()

    # The app got exactly the two small baseline records, never the 2 MB one.
    assert sorted(r.headers["kafka-key"] for r in app.received) == ["after", "many-baseline"]
    delivered = next(r for r in app.received if r.headers["kafka-key"] == "many-baseline")
    names = {name.decode().lower() for name, _ in delivered.raw_headers}
    assert not any(name.startswith("x-h") for name in names)
    assert "authorization" not in names and "transfer-encoding" not in names
    assert delivered.headers["host"].startswith("127.0.0.1:")
    assert delivered.headers["traceparent"].startswith("00-0af765")
    # Decided: the sandbox's tenant is skipped by this baseline pod, the big one dead-lettered.
    assert (1, "skip", "routed_to_sandbox") in decisions
    assert f'ktp_records_skipped_total{{reason="routed_to_sandbox",topic="{topic}"}} 1.0' in metrics
    assert f'ktp_records_consumed_total{{topic="{topic}"}} 4.0' in metrics
    assert f'ktp_dead_letters_total{{reason="value_too_large",topic="{topic}"}} 1.0' in metrics
    assert f'ktp_records_delivered_total{{topic="{topic}"}} 2.0' in metrics
    # The dead letter is the record, intact, with the reason.
    assert dead.key == b"big" and dead.value is not None and len(dead.value) == BIG
    assert dict(dead.headers)["ktp-dead-letter-reason"] == b"value_too_large"


async def test_a_dead_letter_too_large_for_its_topic_is_written_without_the_value(
    bootstrap_servers: str, topic: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The dead-letter topic may take less than the origin topic. The size error is the one a
    broker answers with (MessageSizeTooLargeError); here the client's own cap raises it, lowered to
    1 MiB, since Tansu does not enforce max.message.bytes."""
    monkeypatch.setattr("proxy.delivery.dead_letter.MAX_REQUEST_BYTES", 1024 * 1024)
    routes = tmp_path / "routes.yaml"
    routes.write_text("tenants: {}\n")
    await produce_big(bootstrap_servers, topic, [(b"big", b"x" * BIG, []), (b"after", b"after", [])])
    async with RecordingApp() as app:
        config = sidecar_config(bootstrap_servers, topic, app.url, str(routes), max_record_bytes=1024 * 1024)
        async with Sidecar(config):
            await app.wait_for(1)
        dlq = AIOKafkaConsumer(f"{topic}.dlq", bootstrap_servers=bootstrap_servers, auto_offset_reset="earliest")
        await dlq.start()
        try:
            dead = await asyncio.wait_for(dlq.getone(), 20)
        finally:
            await dlq.stop()
    headers = dict(dead.headers)
    assert dead.key == b"big" and dead.value is None
    assert headers["ktp-dead-letter-value-dropped"] == str(BIG).encode()
    assert headers["ktp-dead-letter-reason"] == b"value_too_large"
    assert headers["ktp-dead-letter-offset"] == b"0"  # where the full record still is
