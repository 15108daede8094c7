"""An app that serves one connection at a time (Python's http.server without ThreadingMixIn,
speaking keep-alive HTTP/1.1): with ``--app-max-concurrency 1`` it receives every record; without
it, deliveries time out and each timeout is a WARNING naming the record and the app URL."""

from __future__ import annotations

import asyncio
import http.server
import logging
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from proxy.sidecar.runtime import Sidecar
from tests.conftest import baggage, produce, sidecar_config

RECORDS = 24


class SingleThreadedApp:
    """http.server.HTTPServer (one connection at a time), HTTP/1.1 keep-alive, in a thread."""

    def __init__(self) -> None:
        received = self.received = []  # type: list[bytes]
        self.peak_connections = 0
        app = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self) -> None:
                super().setup()
                app._open += 1
                app.peak_connections = max(app.peak_connections, app._open)

            def finish(self) -> None:
                app._open -= 1
                super().finish()

            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                body = self.rfile.read(int(self.headers["content-length"]))
                received.append(body)
                self.send_response(200)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self._open = 0
        self.server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/events"
        self._thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def __enter__(self) -> SingleThreadedApp:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def single_threaded_app() -> Iterator[SingleThreadedApp]:
    with SingleThreadedApp() as app:
        yield app


@pytest.fixture
def routes(tmp_path: Path) -> str:
    path = tmp_path / "routes.yaml"
    path.write_text("tenants: {}\n")
    return str(path)


async def produce_records(bootstrap_servers: str, topic: str) -> set[bytes]:
    values = [str(i).encode() for i in range(RECORDS)]
    # Keys spread the records over the topic's four partitions: four lanes want the app at once.
    await produce(bootstrap_servers, topic, [(str(i).encode(), v, baggage(None)) for i, v in enumerate(values)])
    return set(values)


async def test_app_max_concurrency_1_delivers_everything_to_a_one_connection_app(
    bootstrap_servers: str, topic: str, routes: str, single_threaded_app: SingleThreadedApp,
    caplog: pytest.LogCaptureFixture,
) -> None:
    expected = await produce_records(bootstrap_servers, topic)
    config = sidecar_config(
        bootstrap_servers, topic, single_threaded_app.url, routes, app_max_concurrency=1, app_timeout=2.0
    )
    async with Sidecar(config):
        for _ in range(300):
            if set(single_threaded_app.received) >= expected:
                break
            await asyncio.sleep(0.05)
    assert set(single_threaded_app.received) == expected
    assert len(single_threaded_app.received) == RECORDS  # no timeout, so no retry, so no duplicate
    assert not [r for r in caplog.records if "timed out" in r.getMessage()]


async def test_a_delivery_timeout_is_a_warning_naming_the_record_and_the_app(
    bootstrap_servers: str, topic: str, routes: str, single_threaded_app: SingleThreadedApp,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="proxy")
    expected = await produce_records(bootstrap_servers, topic)
    config = sidecar_config(bootstrap_servers, topic, single_threaded_app.url, routes, app_timeout=1.0)
    async with Sidecar(config) as sidecar:
        for _ in range(400):
            if any("timed out" in r.getMessage() for r in caplog.records):
                break
            await asyncio.sleep(0.05)
        timeouts = [r for r in caplog.records if "timed out" in r.getMessage()]
        assert timeouts, "expected a delivery timeout"
        line = timeouts[0]
        assert line.levelno == logging.WARNING
        message = line.getMessage()
        assert f"{topic}[" in message and "]@" in message and single_threaded_app.url in message, message
        assert "--app-max-concurrency" in message and "TopicPartition(" not in message
        # A timed-out connection is closed, never reused: the app gets every record in the end.
        for _ in range(600):
            if set(single_threaded_app.received) >= expected:
                break
            await asyncio.sleep(0.05)
        assert set(single_threaded_app.received) == expected
        assert sidecar.upstream.max_connections == sidecar.config.max_in_flight
    # Throttled per partition: far fewer lines than attempts.
    per_partition: dict[str, int] = {}
    for record in caplog.records:
        if "timed out" in record.getMessage():
            where = record.getMessage().split("@")[0]
            per_partition[where] = per_partition.get(where, 0) + 1
    assert all(count <= 3 for count in per_partition.values()), per_partition
