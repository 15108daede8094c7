"""Bad input on the publish endpoint: a clear JSON error, and nothing written to Kafka."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

from proxy.metrics import Metrics
from proxy.sidecar.context_parts import build_context_parts
from proxy.testing.broker import EmbeddedBroker, free_port
from tests.conftest import create_topic, sidecar_config
from tests.interop.conftest import publish, raw_request, read_all, routes_file


def publish_server(bootstrap_servers: str, topic: str, tmp_path: Path, **overrides: object):  # type: ignore[no-untyped-def]
    """A sidecar's publish endpoint on its own (its listener is not needed here)."""
    config = sidecar_config(bootstrap_servers, topic, "http://127.0.0.1:9/events", routes_file(tmp_path), **overrides)
    return build_context_parts(config, Metrics()).publish


async def wait_connected(server) -> None:  # type: ignore[no-untyped-def]
    async with asyncio.timeout(20):
        while not server.publisher.connected:
            await asyncio.sleep(0.02)


async def test_bad_requests_get_json_errors_and_write_nothing(bootstrap_servers: str, topic: str, tmp_path: Path) -> None:
    server = publish_server(bootstrap_servers, topic, tmp_path, publish_max_bytes=1000, publish_headers=("x-source",))
    async with server:
        await wait_connected(server)
        url = f"{server.url}/{topic}"
        answers = {
            "oversized": await publish(url, b"x" * 1001),
            "bad topic": await publish(f"{server.url}/bad%2Ftopic", b"v"),
            "internal topic": await publish(f"{server.url}/__consumer_offsets", b"v"),
            "bad key": await publish(url, b"v", {"kafka-key": "50%"}),
            "bad content-type": await publish(url, b"v", {"content-type": "nope"}),
            "unknown delivery": await publish(url, b"v", {"ktp-delivery": "abc-1"}),
            "wrong path": await publish(f"http://127.0.0.1:{server.port}/v1/other", b"v"),
        }
        # What no HTTP client library would send: raw CR inside a header, NUL, non-ASCII, and
        # a chunked body over the limit (no content-length to refuse it by).
        def request(extra: bytes, body: bytes = b"v") -> bytes:
            return (
                f"POST /v1/publish/{topic} HTTP/1.1\r\nHost: x\r\n".encode() + extra
                + b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
            )

        raw = {
            "CR in baggage": await raw_request(server.port, request(b"baggage: tenant=1\rx-injected: yes\r\n")),
            "LF in header": await raw_request(server.port, request(b"x-source: a\nx-injected: yes\r\n")),
            "NUL in header": await raw_request(server.port, request(b"x-source: a\x00b\r\n")),
            "non-ASCII value": await raw_request(server.port, request(b"x-source: caf\xc3\xa9\r\n")),
            "chunked oversized": await raw_request(
                server.port,
                f"POST /v1/publish/{topic} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n".encode()
                + b"".join(b"%x\r\n%s\r\n" % (300, b"y" * 300) for _ in range(4)) + b"0\r\n\r\n",
            ),
            "GET": await raw_request(server.port, f"GET /v1/publish/{topic} HTTP/1.1\r\nHost: x\r\n\r\n".encode()),
        }
        written_before = await read_all(bootstrap_servers, topic)
        ok = await publish(url, b"fine", {"x-source": "batch", "kafka-key": "k"})
        metrics = server.metrics.render().decode()
    for what, answer in answers.items():
        print(f"{what}: {answer.status} {answer.body}")
    for what, (status, headers, body) in raw.items():
        print(f"{what}: {status} {body!r}")
    expected = {
        "oversized": 413, "bad topic": 400, "internal topic": 403, "bad key": 400, "bad content-type": 400,
        "unknown delivery": 422, "wrong path": 404,
    }
    for what, status in expected.items():
        assert answers[what].status == status, what
        assert isinstance(answers[what].body, dict) and answers[what].body["error"], what
    assert "over the limit of 1000" in answers["oversized"].body["error"]
    assert "Kafka topic name" in answers["bad topic"].body["error"]
    expected_raw = {
        "CR in baggage": 400, "LF in header": 400, "NUL in header": 400, "non-ASCII value": 400,
        "chunked oversized": 413, "GET": 405,
    }
    for what, status in expected_raw.items():
        got, headers, body = raw[what]
        assert got == status, what
        assert headers["content-type"].startswith("application/json"), what
        assert json.loads(body)["error"], what
    assert "CR, LF, NUL" in json.loads(raw["CR in baggage"][2])["error"]
    assert "'x-source' is not a valid value" in json.loads(raw["non-ASCII value"][2])["error"]
    assert raw["GET"][1]["allow"] == "POST"
    # Nothing was written by any refused request; the good one is written whole.
    assert written_before == []
    assert ok.status == 204
    (record,) = await read_all(bootstrap_servers, topic)
    # aiohttp's client labels a bytes body application/octet-stream; the record keeps it.
    assert (record.key, record.value) == (b"k", b"fine")
    assert record.headers == (("content-type", b"application/octet-stream"), ("x-source", b"batch"))
    assert 'ktp_publish_requests_total{outcome="too_large"} 2.0' in metrics
    assert 'ktp_publish_requests_total{outcome="malformed_request"} 3.0' in metrics


async def test_broker_down_gives_503_quickly_and_the_record_is_never_written(tmp_path: Path) -> None:
    port = free_port()
    topic = "orders"
    broker = EmbeddedBroker(port=port)
    server = publish_server(broker.bootstrap_servers, topic, tmp_path, publish_timeout=1.0)
    async with server:
        # Not connected yet: refused at once.
        started = time.monotonic()
        early = await publish(f"{server.url}/{topic}", b"early")
        early_seconds = time.monotonic() - started
        await broker.start()
        try:
            await wait_connected(server)
            first = await publish(f"{server.url}/{topic}", b"first")
        finally:
            await broker.stop()
        started = time.monotonic()
        down = await publish(f"{server.url}/{topic}", b"lost")
        down_seconds = time.monotonic() - started
        # A new, empty broker on the same address: the refused record must not turn up there.
        async with EmbeddedBroker(port=port) as again:
            # Created at once (Tansu acks records for a topic it does not list), so that the
            # refused record, were it sent late, would be found.
            await create_topic(again.bootstrap_servers, topic, 4)
            await asyncio.sleep(2.0)
            after = await publish(f"{server.url}/{topic}", b"after")
            records = await read_all(again.bootstrap_servers, topic)
    print(f"early: {early.status} in {early_seconds:.2f}s {early.body}; down: {down.status} in {down_seconds:.2f}s {down.body}")
    assert early.status == 503 and early_seconds < 1.0
    assert "not connected to Kafka" in early.body["error"] and early.headers["retry-after"] == "1"
    assert first.status == 204
    assert down.status == 503 and down_seconds < 2.5, down.body
    assert down.headers["retry-after"] == "1"
    assert after.status == 204, after.body
    assert [r.value for r in records] == [b"after"]
