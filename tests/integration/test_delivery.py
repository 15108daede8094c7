"""Delivery against the real broker and a real app: order under retries, restarts, dead letters,
hostile headers, readiness and metrics."""

from __future__ import annotations

import asyncio
import collections
import json
import logging
from pathlib import Path

import aiohttp
import pytest
from aiokafka import AIOKafkaConsumer
from aiokafka.structs import ConsumerRecord

from proxy.sidecar.runtime import Sidecar
from proxy.testing.app import Received, RecordingApp
from proxy.testing.broker import free_port
from tests.conftest import baggage, eventually, produce, sidecar_config

ROUTES = 'tenants:\n  "123": {orders-worker: pr-42}\n'


def routes_file(tmp_path: Path) -> str:
    path = tmp_path / "routes.yaml"
    path.write_text(ROUTES)
    return str(path)


def account(received: list[Received], expected: set[int]) -> tuple[int, int, int]:
    """(lost, duplicated, out of order within a partition) of deliveries whose body is an int."""
    counts = collections.Counter(int(r.body) for r in received)
    lost = len(expected - set(counts))
    duplicated = sum(n - 1 for n in counts.values() if n > 1)
    last: dict[int, int] = {}
    disorder = 0
    for r in received:
        if r.offset < last.get(r.partition, -1):
            disorder += 1
        last[r.partition] = r.offset
    return lost, duplicated, disorder


async def get_json(url: str) -> tuple[int, dict]:
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        return response.status, json.loads(await response.text())


async def test_retries_on_503_keep_partition_order(bootstrap_servers: str, topic: str, tmp_path: Path) -> None:
    def flaky(_: Received, call: int) -> tuple[int, dict[str, str], bytes]:
        return (503, {}, b"busy") if call % 3 == 0 else (200, {}, b"")

    n = 300
    await produce(bootstrap_servers, topic, [(f"k{i % 11}".encode(), str(i).encode(), []) for i in range(n)])
    async with RecordingApp(answer=flaky) as app:
        async with Sidecar(sidecar_config(bootstrap_servers, topic, app.url, routes_file(tmp_path))) as sidecar:
            await app.wait_for(n)
            metrics = sidecar.metrics.render().decode()
    lost, duplicated, disorder = account(app.received, set(range(n)))
    print(f"503 every 3rd call: calls={app.calls} delivered={len(app.received)} lost={lost} dup={duplicated} disorder={disorder}")
    assert (lost, duplicated, disorder) == (0, 0, 0)
    assert app.calls > n  # retries happened
    assert f'ktp_delivery_attempts_total{{outcome="http_503",topic="{topic}"}}' in metrics


async def test_no_loss_across_a_restart(bootstrap_servers: str, topic: str, tmp_path: Path) -> None:
    routes = routes_file(tmp_path)
    first, second = 400, 200
    await produce(bootstrap_servers, topic, [(None, str(i).encode(), []) for i in range(first)])
    async with RecordingApp(delay=0.01) as app:
        # A short drain: the first sidecar stops with records fetched and not delivered, which it
        # must not commit.
        config = sidecar_config(bootstrap_servers, topic, app.url, routes, drain_timeout=0.2)
        async with Sidecar(config):
            await app.wait_for(first // 4)
        stopped_at = len(app.received)
        assert stopped_at < first, "the first sidecar was meant to stop mid-stream"
        # Records produced while no sidecar runs must arrive too.
        await produce(bootstrap_servers, topic, [(None, str(i).encode(), []) for i in range(first, first + second)])
        async with Sidecar(config):
            await app.wait_for(first + second)
            await asyncio.sleep(0.5)  # anything delivered twice would show up now
    lost, duplicated, disorder = account(app.received, set(range(first + second)))
    print(f"restart after {stopped_at}: delivered={len(app.received)} lost={lost} dup={duplicated} disorder={disorder}")
    assert (lost, duplicated) == (0, 0)


async def test_hostile_headers_are_decided_counted_and_never_injected(
    bootstrap_servers: str, topic: str, tmp_path: Path
) -> None:
    hostile = [
        ("crlf-baggage", [("baggage", b"tenant=777\r\nx-injected: yes")]),
        ("crlf-traceparent", [("traceparent", b"00-1-2-01\r\nx-injected: yes"), ("baggage", b"tenant=777")]),
        ("lf-content-type", [("content-type", b"text/plain\nx-injected: yes")]),
        ("nul", [("tracestate", b"a=\x00b")]),
        ("not-utf8", [("baggage", b"tenant=\xff\xfe\xfd")]),
        ("huge-baggage", [("baggage", b"tenant=123," + b"pad=" + b"x" * 65536)]),
        ("no-value", []),
    ]
    records: list[tuple[bytes | None, bytes | None, list[tuple[str, bytes]]]] = [
        (name.encode(), None if name == "no-value" else name.encode(), headers) for name, headers in hostile
    ]
    async with RecordingApp("baseline") as base_app, RecordingApp("sandbox") as sandbox_app:
        await produce(bootstrap_servers, topic, records)
        routes = routes_file(tmp_path)
        base = Sidecar(sidecar_config(bootstrap_servers, topic, base_app.url, routes))
        sandbox = Sidecar(sidecar_config(bootstrap_servers, topic, sandbox_app.url, routes, sandbox="pr-42"))
        async with base, sandbox:
            await base_app.wait_for(len(hostile))

            async def sandbox_decided_all() -> bool:
                return len(sandbox.decisions()) == len(hostile)

            await eventually(sandbox_decided_all, what="sandbox decided every record")
            _, decided = await get_json(f"http://127.0.0.1:{base.admin.port}/decisions")
            _, sandbox_decided = await get_json(f"http://127.0.0.1:{sandbox.admin.port}/decisions")
            base_metrics = base.metrics.render().decode()
            sandbox_metrics = sandbox.metrics.render().decode()
            await asyncio.sleep(0.5)
    # Every record has a decision in each pod; baseline owns records without a readable tenant.
    assert len(decided["decisions"]) == len(hostile) == len(sandbox_decided["decisions"])
    reasons = {d["reason"] for d in decided["decisions"]}
    assert {"tenant_invalid", "baggage_too_large"} <= reasons
    assert sandbox_app.received == []
    assert {d["decision"] for d in sandbox_decided["decisions"]} == {"skip"}
    # Never an injected header: the app saw no such name, and no value carries CR/LF/NUL.
    for delivery in base_app.received:
        names = {name.lower() for name, _ in delivery.raw_headers}
        assert b"x-injected" not in names
        for _, value in delivery.raw_headers:
            assert not set(value) & {0, 10, 13}
    by_key = {r.headers["kafka-key"]: r for r in base_app.received}
    assert "baggage" not in by_key["crlf-baggage"].headers
    assert by_key["crlf-traceparent"].headers["baggage"] == "tenant=777"
    assert by_key["lf-content-type"].headers["content-type"] == "application/octet-stream"
    assert by_key["no-value"].headers["kafka-tombstone"] == "true" and by_key["no-value"].body == b""
    # baggage is counted as invalid for the CR/LF, non-UTF-8 and oversized records; the first two
    # have no valid tenant member (tenant_invalid), so nothing of them is forwarded.
    expected = {"tenant_invalid": 2, "baggage_too_large": 1, "header_baggage": 3, "header_traceparent": 1,
                "header_content-type": 1, "header_tracestate": 1}
    for kind, count in expected.items():
        assert f'ktp_bad_input_total{{kind="{kind}",topic="{topic}"}} {count}.0' in base_metrics, kind
    assert 'reason="tenant_invalid"' in sandbox_metrics


async def test_readyz_is_503_until_the_app_answers(bootstrap_servers: str, topic: str, tmp_path: Path) -> None:
    await produce(bootstrap_servers, topic, [(None, b"1", baggage(None))])
    app = RecordingApp(port=free_port())
    async with Sidecar(sidecar_config(bootstrap_servers, topic, app.url, routes_file(tmp_path))) as sidecar:
        url = f"http://127.0.0.1:{sidecar.admin.port}/readyz"
        await asyncio.sleep(2.0)  # long enough to join the group and fetch, were it not gated
        status, body = await get_json(url)
        assert status == 503 and body["checks"]["app_healthy"] is False
        # Says why in words, with the address probed and the last probe's result.
        why = body["reasons"]["app_healthy"]
        assert f"tcp://127.0.0.1:{app.port}" in why and "connection refused" in why, why
        async with app:
            for _ in range(100):
                status, body = await get_json(url)
                if status == 200:
                    break
                await asyncio.sleep(0.1)
            assert status == 200, body
            assert body["checks"] == {
                "group_joined": True, "partitions_positioned": True, "routes_synced": True, "app_healthy": True,
                "stopping": False,
            }
            assert body["reasons"] == {}
            await app.wait_for(1)
        async with aiohttp.ClientSession() as session:
            async with session.get(f"http://127.0.0.1:{sidecar.admin.port}/healthz") as response:
                assert response.status == 200


async def test_rejected_records_are_dead_lettered_intact(bootstrap_servers: str, topic: str, tmp_path: Path) -> None:
    def reject_poison(seen: Received, _: int) -> tuple[int, dict[str, str], bytes]:
        return (422, {}, b"no") if seen.body == b"poison" else (200, {}, b"")

    headers = [("baggage", b"tenant=555"), ("x-custom", b"\x00\x01")]
    await produce(bootstrap_servers, topic, [(b"k", b"ok-1", []), (b"pk", b"poison", headers), (b"k", b"ok-2", [])])
    async with RecordingApp(answer=reject_poison) as app:
        async with Sidecar(sidecar_config(bootstrap_servers, topic, app.url, routes_file(tmp_path))):
            await app.wait_for(2)
            consumer = AIOKafkaConsumer(
                f"{topic}.dlq", bootstrap_servers=bootstrap_servers, auto_offset_reset="earliest"
            )
            await consumer.start()
            try:
                record = await asyncio.wait_for(consumer.getone(), 20)
            finally:
                await consumer.stop()
    assert record.value == b"poison" and record.key == b"pk"
    got = dict(record.headers)
    assert got["baggage"] == b"tenant=555" and got["x-custom"] == b"\x00\x01"
    assert got["ktp-dead-letter-reason"] == b"http_422" and got["ktp-dead-letter-attempts"] == b"1"
    assert got["ktp-dead-letter-topic"] == topic.encode()


async def test_metrics_endpoint_has_the_contract_names(bootstrap_servers: str, topic: str, tmp_path: Path) -> None:
    await produce(bootstrap_servers, topic, [(None, b"1", baggage("123")), (None, b"2", baggage("9"))])
    async with RecordingApp() as app:
        async with Sidecar(sidecar_config(bootstrap_servers, topic, app.url, routes_file(tmp_path))) as sidecar:
            await app.wait_for(1)
            await asyncio.sleep(0.5)
            async with aiohttp.ClientSession() as session:
                async with session.get(f"http://127.0.0.1:{sidecar.metrics_server.port}/metrics") as response:
                    assert response.status == 200
                    text = await response.text()
            _, routes = await get_json(f"http://127.0.0.1:{sidecar.admin.port}/routes")
    for name in (
        "ktp_records_consumed_total", "ktp_records_delivered_total", "ktp_records_skipped_total",
        "ktp_delivery_attempts_total", "ktp_delivery_duration_seconds_bucket", "ktp_consumer_lag",
        "ktp_route_tenants", "ktp_dead_letters",
    ):
        assert name in text, name
    assert f'ktp_records_skipped_total{{reason="routed_to_sandbox",topic="{topic}"}} 1.0' in text
    assert "ktp_route_tenants 1.0" in text
    assert routes["synced"] is True and routes["tenants"]["123"]["routes"] == {"orders-worker": "pr-42"}


async def test_dapr_style_json_answers(bootstrap_servers: str, topic: str, tmp_path: Path) -> None:
    """{"status": "RETRY"} is retried, "DROP" is done without a dead letter, "SUCCESS" is done;
    all of them are committed, so a restart brings none of them back."""
    calls: collections.Counter[bytes] = collections.Counter()

    def dapr(seen: Received, _: int) -> tuple[int, dict[str, str], bytes]:
        calls[seen.body] += 1
        kind = seen.body.split(b"-")[0]
        if kind == b"retry" and calls[seen.body] == 1:
            status = "RETRY"
        elif kind == b"drop":
            status = "drop"  # case does not matter
        else:
            status = "SUCCESS"
        return 200, {"content-type": "application/json; charset=utf-8"}, json.dumps({"status": status}).encode()

    bodies = [f"{kind}-{i}".encode() for i in range(30) for kind in ("ok", "retry", "drop")]
    await produce(bootstrap_servers, topic, [(b"k%d" % (i % 5), body, []) for i, body in enumerate(bodies)])
    async with RecordingApp(answer=dapr) as app:
        config = sidecar_config(bootstrap_servers, topic, app.url, routes_file(tmp_path))
        async with Sidecar(config) as sidecar:

            async def all_answered() -> bool:
                return sum(calls.values()) >= len(bodies) + 30

            await eventually(all_answered, what="every record answered")
            await asyncio.sleep(0.5)
            metrics = sidecar.metrics.render().decode()
        async with Sidecar(config):
            await asyncio.sleep(3.0)  # joined and fetched: anything uncommitted would come again
    assert {body: calls[body] for body in bodies} == {b: 2 if b.startswith(b"retry") else 1 for b in bodies}
    assert f'ktp_delivery_attempts_total{{outcome="app_retry",topic="{topic}"}} 30.0' in metrics
    assert f'ktp_records_dropped_total{{reason="app_drop",topic="{topic}"}} 30.0' in metrics
    assert f'ktp_records_delivered_total{{topic="{topic}"}} 60.0' in metrics
    assert "ktp_dead_letters_total{" not in metrics


async def read_all(bootstrap_servers: str, topic: str) -> list[ConsumerRecord[bytes, bytes]]:
    """Every record of ``topic`` up to its end now ([] when the topic does not exist)."""
    from tests.faults.harness import read_topic

    return await read_topic(bootstrap_servers, topic)


async def test_a_sandbox_never_writes_into_baselines_dead_letter_topic(
    bootstrap_servers: str, topic: str, tmp_path: Path
) -> None:
    def reject(seen: Received, _: int) -> tuple[int, dict[str, str], bytes]:
        return (404, {}, b"") if seen.body.startswith(b"poison") else (200, {}, b"")

    await produce(bootstrap_servers, topic, [
        (b"a", b"poison-base", baggage(None)), (b"b", b"poison-sandbox", baggage("123")),
        (b"c", b"fine-base", baggage(None)), (b"d", b"fine-sandbox", baggage("123")),
    ])
    routes = routes_file(tmp_path)
    async with RecordingApp("baseline", answer=reject) as base_app, RecordingApp("sandbox", answer=reject) as sandbox_app:
        base = Sidecar(sidecar_config(bootstrap_servers, topic, base_app.url, routes))
        sandbox = Sidecar(sidecar_config(bootstrap_servers, topic, sandbox_app.url, routes, sandbox="pr-42"))
        async with base, sandbox:
            await base_app.wait_for(1)
            await sandbox_app.wait_for(1)

            async def both_dead_lettered() -> bool:
                return all(
                    'ktp_dead_letters_total{reason="http_404"' in s.metrics.render().decode() for s in (base, sandbox)
                )

            await eventually(both_dead_lettered, what="both poison records dead-lettered")
    baseline_dlq = await read_all(bootstrap_servers, f"{topic}.dlq")
    sandbox_dlq = await read_all(bootstrap_servers, f"{topic}.pr-42.dlq")
    assert [r.value for r in baseline_dlq] == [b"poison-base"]
    assert [r.value for r in sandbox_dlq] == [b"poison-sandbox"]
    got = dict(sandbox_dlq[0].headers)
    assert got["baggage"] == b"tenant=123"  # routing headers kept: a replay is routed the same way
    assert got["ktp-dead-letter-sandbox"] == b"pr-42" and got["ktp-dead-letter-service"] == b"orders-worker"
    assert got["ktp-dead-letter-reason"] == b"http_404" and got["ktp-dead-letter-status"] == b"404"
    assert got["ktp-dead-letter-attempts"] == b"1"
    assert int(got["ktp-dead-letter-offset"]) == 1 and got["ktp-dead-letter-topic"] == topic.encode()


async def test_dead_letters_off_drops_after_a_log_line_and_a_metric(
    bootstrap_servers: str, topic: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    def reject(seen: Received, _: int) -> tuple[int, dict[str, str], bytes]:
        return (422, {}, b"") if seen.body == b"poison" else (200, {}, b"")

    await produce(bootstrap_servers, topic, [(b"p", b"poison", []), (b"p", b"after", [])])
    async with RecordingApp(answer=reject) as app:
        config = sidecar_config(bootstrap_servers, topic, app.url, routes_file(tmp_path), dead_letter_topic="none")
        async with Sidecar(config) as sidecar:
            await app.wait_for(1)
            await asyncio.sleep(0.5)
            metrics = sidecar.metrics.render().decode()
        calls = app.calls
        async with Sidecar(config):
            await asyncio.sleep(3.0)  # the dropped record was committed: it does not come back
    assert app.calls == calls == 2 and [r.body for r in app.received] == [b"after"]
    assert f'ktp_records_dropped_total{{reason="http_422",topic="{topic}"}} 1.0' in metrics
    assert "ktp_dead_letters_total{" not in metrics
    assert any(r.levelname == "ERROR" and "dead letters are off, dropped" in r.getMessage() for r in caplog.records)
    assert await read_all(bootstrap_servers, f"{topic}.dlq") == []


async def test_unreadable_baggage_on_every_record_is_counted_each_time_and_logged_once(
    bootstrap_servers: str, topic: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A producer whose every record carries a different unreadable baggage (each one a miss of
    the decision memo): all delivered to baseline, each counted, one log line per interval."""
    n = 200
    records = [(None, str(i).encode(), [("baggage", b"tenant=caf\xc3\xa9" + str(i).encode())]) for i in range(n)]
    await produce(bootstrap_servers, topic, records)
    caplog.set_level(logging.WARNING, logger="proxy.sidecar.runtime")
    async with RecordingApp() as app:
        config = sidecar_config(bootstrap_servers, topic, app.url, routes_file(tmp_path))
        async with Sidecar(config) as sidecar:
            await app.wait_for(n)
            metrics = sidecar.metrics.render().decode()
    assert f'ktp_bad_input_total{{kind="tenant_invalid",topic="{topic}"}} {float(n)}' in metrics
    lines = [r.getMessage() for r in caplog.records if "tenant_invalid" in r.getMessage()]
    assert len(lines) == 1, lines


async def test_a_stalled_partition_is_reported_not_unready(bootstrap_servers: str, topic: str, tmp_path: Path) -> None:
    def stuck(seen: Received, call: int) -> tuple[int, dict[str, str], bytes]:
        # The first call asks for a 4 s pause, the next one takes the record.
        return (503, {"retry-after": "4"}, b"") if call == 1 else (200, {}, b"")

    await produce(bootstrap_servers, topic, [(b"s", b"stuck", []), (b"s", b"behind", [])])
    async with RecordingApp(answer=stuck) as app:
        config = sidecar_config(bootstrap_servers, topic, app.url, routes_file(tmp_path), stall_timeout=1.0)
        async with Sidecar(config) as sidecar:
            url = f"http://127.0.0.1:{sidecar.admin.port}/readyz"

            async def stalled() -> bool:
                _, body = await get_json(url)
                return bool(body["detail"]["stalled_partitions"])

            await eventually(stalled, timeout=10, what="a stalled partition in /readyz")
            status, body = await get_json(url)
            metrics = sidecar.metrics.render().decode()
            await app.wait_for(2, timeout=15)
            await asyncio.sleep(0.5)
            _, after = await get_json(url)
            metrics_after = sidecar.metrics.render().decode()
    assert status == 200 and body["ready"] is True  # reported, not a reason to be unready
    ((name, stall),) = body["detail"]["stalled_partitions"].items()
    assert name.startswith(f"{topic}[") and stall["lag"] == 2 and stall["paused"] == ["retrying"]
    assert stall["seconds"] >= 1.0 and stall["position"] == 0
    partition = name[len(topic) + 1 : -1]
    assert f'ktp_partition_stalled{{partition="{partition}",topic="{topic}"}} 1.0' in metrics
    assert after["detail"]["stalled_partitions"] == {}
    assert f'ktp_partition_stalled{{partition="{partition}",topic="{topic}"}} 0.0' in metrics_after
