"""HttpUpstream (the sidecar's HTTP client) against real servers: aiohttp's server, the
RecordingApp, and raw asyncio servers scripted to answer the way real apps sometimes do."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from aiohttp import web

from proxy.errors import AppUnavailable, ConfigError
from proxy.testing.app import Received, RecordingApp
from proxy.testing.broker import free_port
from proxy.testing.tls import Pki, make_pki
from proxy.upstream.http import AppConnectError, AppTimeout, HttpUpstream

HEADERS = {"content-type": "application/json", "kafka-topic": "t", "kafka-offset": "7"}


class AiohttpApp:
    """An aiohttp server whose handler the test picks; counts requests and connections."""

    def __init__(self, handler: Callable[[web.Request], Awaitable[web.StreamResponse]], **server: object) -> None:
        self.handler = handler
        self.port = free_port()
        self.requests = 0
        self.peers: set[object] = set()
        self.server_options = server
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/events"

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.requests += 1
        self.peers.add(request.transport.get_extra_info("peername") if request.transport else None)
        await request.read()
        return await self.handler(request)

    async def __aenter__(self) -> AiohttpApp:
        app = web.Application()
        app.router.add_post("/events", self._handle)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False, **self.server_options)  # type: ignore[arg-type]
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._runner is not None
        await self._runner.cleanup()


async def ok(_: web.Request) -> web.Response:
    return web.Response(status=200)


class RawServer:
    """A raw asyncio server: ``script(reader, writer, n)`` answers the n-th request head (the
    body of a request is read by the script if it wants to)."""

    def __init__(self, script: Callable[[asyncio.StreamReader, asyncio.StreamWriter, int], Awaitable[bool]]) -> None:
        self.script = script
        self.port = free_port()
        self.requests = 0
        self.connections = 0
        self._server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/events"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                length = int(next(
                    line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")
                ))
                await reader.readexactly(length)
                self.requests += 1
                if not await self.script(reader, writer, self.requests):
                    return
        finally:
            writer.close()

    async def __aenter__(self) -> RawServer:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()


def answering(*answers: bytes, keep: bool = True) -> Callable[[asyncio.StreamReader, asyncio.StreamWriter, int], Awaitable[bool]]:
    """A script that writes ``answers[n-1]`` (the last one from then on) as it is."""

    async def script(_: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> bool:
        writer.write(answers[min(n, len(answers)) - 1])
        await writer.drain()
        return keep

    return script


@pytest.fixture
async def recording_app() -> AsyncIterator[RecordingApp]:
    async with RecordingApp() as app:
        yield app


async def test_a_delivery_arrives_as_sent_and_the_connection_is_reused(recording_app: RecordingApp) -> None:
    async with HttpUpstream(recording_app.url, token="s3cret") as upstream:
        for offset in range(5):
            answer = await upstream.post(b"value-%d" % offset, {**HEADERS, "kafka-offset": str(offset)})
            assert answer.status == 200 and answer.seconds > 0
        assert len(upstream._connections) == 1
    seen: list[Received] = recording_app.received
    assert [r.body for r in seen] == [b"value-%d" % i for i in range(5)]
    sent = [(n.decode().lower(), v.decode()) for n, v in seen[0].raw_headers]
    assert dict(sent)["host"] == f"127.0.0.1:{recording_app.port}"
    assert dict(sent)["authorization"] == "Bearer s3cret"
    assert dict(sent)["content-length"] == "7"
    assert dict(sent)["kafka-topic"] == "t"
    assert [n for n, _ in sent].count("content-length") == 1


async def test_json_answers_retry_after_and_other_bodies() -> None:
    async def handler(request: web.Request) -> web.Response:
        kind = request.headers["kafka-topic"]
        if kind == "json":
            return web.json_response({"status": "RETRY"})
        if kind == "busy":
            return web.Response(status=503, headers={"Retry-After": "3"}, text="busy, come back")
        return web.Response(status=404, text="x" * 100_000)

    async with AiohttpApp(handler) as app, HttpUpstream(app.url) as upstream:
        json_answer = await upstream.post(b"", {"kafka-topic": "json"})
        assert (json_answer.status, json_answer.content_type) == (200, "application/json; charset=utf-8")
        assert json_answer.body == b'{"status": "RETRY"}'
        busy = await upstream.post(b"", {"kafka-topic": "busy"})
        assert (busy.status, busy.retry_after, busy.body) == (503, "3", b"")
        large = await upstream.post(b"", {"kafka-topic": "big"})
        assert large.status == 404 and large.body == b""
        # The 100 kB body was drained: the same connection took all three.
        assert len(app.peers) == 1


async def test_chunked_answers_keep_the_connection() -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(status=200, headers={"content-type": "application/json"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        for piece in (b'{"status"', b': "DROP"', b"}"):
            await response.write(piece)
        await response.write_eof()
        return response

    async with AiohttpApp(handler) as app, HttpUpstream(app.url) as upstream:
        for _ in range(3):
            answer = await upstream.post(b"{}", HEADERS)
            assert answer.body == b'{"status": "DROP"}'
        assert app.requests == 3 and len(app.peers) == 1


async def test_a_server_that_closes_idle_connections_costs_no_failed_delivery() -> None:
    async with AiohttpApp(ok, keepalive_timeout=0.2) as app, HttpUpstream(app.url) as upstream:
        assert (await upstream.post(b"a", HEADERS)).status == 200
        await asyncio.sleep(0.5)  # the server has closed the idle connection meanwhile
        assert (await upstream.post(b"b", HEADERS)).status == 200
        assert app.requests == 2 and len(app.peers) == 2


async def test_connection_close_answers_and_http_1_0() -> None:
    async with RawServer(answering(
        b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 0\r\n\r\n", keep=False
    )) as server, HttpUpstream(server.url) as upstream:
        for _ in range(3):
            assert (await upstream.post(b"x", HEADERS)).status == 200
        assert server.connections == 3
    async with RawServer(answering(b"HTTP/1.0 200 OK\r\n\r\nbody until close", keep=False)) as server, \
            HttpUpstream(server.url) as upstream:
        assert (await upstream.post(b"x", HEADERS)).status == 200
        assert (await upstream.post(b"x", HEADERS)).status == 200
        assert server.connections == 2


async def test_interim_answers_are_skipped_on_the_wire() -> None:
    async with RawServer(answering(
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\ncontent-length: 0\r\n\r\n"
    )) as server, HttpUpstream(server.url) as upstream:
        assert (await upstream.post(b"x", HEADERS)).status == 201
        assert (await upstream.post(b"x", HEADERS)).status == 201
        assert server.connections == 1


async def test_a_slow_app_times_out_and_the_next_delivery_gets_a_fresh_connection() -> None:
    async def slow(request: web.Request) -> web.Response:
        if request.headers["kafka-topic"] == "slow":
            await asyncio.sleep(2)
        return web.Response(status=200)

    async with AiohttpApp(slow) as app, HttpUpstream(app.url, timeout=0.3) as upstream:
        assert (await upstream.post(b"", {"kafka-topic": "fast"})).status == 200
        started = asyncio.get_running_loop().time()
        with pytest.raises(AppTimeout, match="did not answer within 0.3s"):
            await upstream.post(b"", {"kafka-topic": "slow"})
        assert 0.25 < asyncio.get_running_loop().time() - started < 1.0
        assert (await upstream.post(b"", {"kafka-topic": "fast"})).status == 200
        assert len(app.peers) == 2


async def test_many_timeouts_in_a_row_each_take_the_timeout() -> None:
    async def never(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> bool:
        return True

    async with RawServer(never) as server, HttpUpstream(server.url, timeout=0.1) as upstream:
        loop = asyncio.get_running_loop()
        for _ in range(3):
            started = loop.time()
            with pytest.raises(AppTimeout):
                await upstream.post(b"", HEADERS)
            assert 0.09 < loop.time() - started < 0.5


async def test_an_app_that_is_not_listening_is_a_connect_error() -> None:
    async with HttpUpstream(f"http://127.0.0.1:{free_port()}/events") as upstream:
        with pytest.raises(AppConnectError, match="cannot connect"):
            await upstream.post(b"x", HEADERS)


@pytest.mark.parametrize(
    "script",
    [
        answering(b"", keep=False),  # reads the request, closes without a word
        answering(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc", keep=False),  # cut mid-body
        answering(b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\nab"),  # smuggling-shaped
        answering(b"garbage\r\n\r\n"),
    ],
    ids=["closed-without-answer", "cut-mid-body", "conflicting-length", "garbage"],
)
async def test_a_broken_answer_is_a_failed_attempt_and_the_connection_is_not_reused(
    script: Callable[[asyncio.StreamReader, asyncio.StreamWriter, int], Awaitable[bool]],
) -> None:
    async with RawServer(script) as server, HttpUpstream(server.url) as upstream:
        for attempt in (1, 2):
            with pytest.raises(AppUnavailable) as raised:
                await upstream.post(b"x", HEADERS)
            assert not isinstance(raised.value, (AppConnectError, AppTimeout))
            assert server.requests == attempt  # the POST reached the app: it is not silently resent
        assert server.connections == 2


async def test_a_dead_pooled_connection_is_replaced_before_anything_is_written() -> None:
    async def answer_then_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
        await writer.drain()
        return False  # closes right after answering, without saying so

    async with RawServer(answer_then_close) as server, HttpUpstream(server.url) as upstream:
        assert (await upstream.post(b"a", HEADERS)).status == 200
        await asyncio.sleep(0.1)  # the end of the connection is read while it sits in the pool
        assert (await upstream.post(b"b", HEADERS)).status == 200
        assert (server.requests, server.connections) == (2, 2)


async def test_connections_are_bounded_and_shared() -> None:
    open_now = 0
    most = 0

    async def slow(request: web.Request) -> web.Response:
        nonlocal open_now, most
        open_now += 1
        most = max(most, open_now)
        await asyncio.sleep(0.05)
        open_now -= 1
        return web.Response(status=200)

    async with AiohttpApp(slow) as app, HttpUpstream(app.url, max_connections=3) as upstream:
        answers = await asyncio.gather(*(upstream.post(b"x", HEADERS) for _ in range(12)))
        assert all(a.status == 200 for a in answers)
        assert most <= 3 and len(app.peers) <= 3 and app.requests == 12


async def test_a_cancelled_delivery_leaves_no_answer_behind() -> None:
    async def slow_once(request: web.Request) -> web.Response:
        if request.headers["kafka-topic"] == "slow":
            await asyncio.sleep(0.3)
            return web.Response(status=500)
        return web.Response(status=200)

    async with AiohttpApp(slow_once) as app, HttpUpstream(app.url, max_connections=1) as upstream:
        task = asyncio.create_task(upstream.post(b"", {"kafka-topic": "slow"}))
        await asyncio.sleep(0.1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        # The slow 500 must not be read as this delivery's answer.
        assert (await upstream.post(b"", {"kafka-topic": "fast"})).status == 200
        await asyncio.sleep(0.4)
        assert (await upstream.post(b"", {"kafka-topic": "fast"})).status == 200


@pytest.mark.parametrize(
    "headers",
    [
        {"x-evil": "a\r\nhost: evil"},
        {"x-evil": "a\nb"},
        {"x-evil": "a\rb"},
        {"x-evil": "a\x00b"},
        {"x-evil\r\nhost": "v"},
        {"x evil": "v"},
        {"content-length": "0"},
        {"Transfer-Encoding": "chunked"},
        {"host": "evil.example"},
        {"authorization": "Bearer stolen"},
        {"x-accent": "caf\u00e9"},
    ],
)
async def test_nothing_unsafe_is_ever_written(headers: dict[str, str]) -> None:
    async with RawServer(answering(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")) as server, \
            HttpUpstream(server.url) as upstream:
        with pytest.raises(ValueError):
            await upstream.post(b"x", headers)
        assert server.connections == 0
        assert (await upstream.post(b"x", HEADERS)).status == 200


def test_a_token_that_would_split_the_request_is_refused() -> None:
    with pytest.raises(ConfigError, match="token"):
        HttpUpstream("http://127.0.0.1:1/e", token="abc\r\nx-injected: 1")


async def test_https_with_our_ca_and_refusal_of_another(tmp_path: Path) -> None:
    pki: Pki = make_pki(tmp_path)
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(pki.server.cert, pki.server.key)
    async with RecordingApp(ssl_context=server) as app:
        async with HttpUpstream(app.url, ssl_context=ssl.create_default_context(cafile=pki.ca)) as upstream:
            assert (await upstream.post(b"secret", HEADERS)).status == 200
            assert (await upstream.post(b"secret", HEADERS)).status == 200
        other = ssl.create_default_context(cafile=pki.other_ca)
        async with HttpUpstream(app.url, ssl_context=other) as upstream:
            with pytest.raises(AppConnectError, match="certificate verify failed"):
                await upstream.post(b"secret", HEADERS)
    assert [r.body for r in app.received] == [b"secret", b"secret"]


async def test_stop_fails_what_is_in_flight_and_closes_everything() -> None:
    async def never(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> bool:
        await asyncio.sleep(10)
        return False

    async with RawServer(never) as server:
        upstream = HttpUpstream(server.url)
        await upstream.start()
        task = asyncio.create_task(upstream.post(b"x", HEADERS))
        await asyncio.sleep(0.1)
        await upstream.stop()
        with pytest.raises(AppUnavailable):
            await task
        assert not upstream._connections
