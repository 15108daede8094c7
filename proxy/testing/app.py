"""RecordingApp: a small real HTTP app that takes deliveries and remembers them.

Used by the demo, the integration tests and the benchmarks as "the app next to the sidecar".
Its answers can be scripted (``answer``) to exercise retries and dead letters.
"""

from __future__ import annotations

import argparse
import asyncio
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field

from aiohttp import web

from proxy.testing.broker import free_port


@dataclass(frozen=True, slots=True)
class Received:
    """One delivery as the app saw it."""

    body: bytes
    headers: dict[str, str]
    raw_headers: tuple[tuple[bytes, bytes], ...]

    @property
    def topic(self) -> str:
        return self.headers["kafka-topic"]

    @property
    def partition(self) -> int:
        return int(self.headers["kafka-partition"])

    @property
    def offset(self) -> int:
        return int(self.headers["kafka-offset"])


# An answer: (status, extra headers, body) for a delivery, given it and the call number.
Answer = Callable[[Received, int], tuple[int, dict[str, str], bytes]]


def always_ok(_: Received, __: int) -> tuple[int, dict[str, str], bytes]:
    return 200, {}, b""


@dataclass(eq=False)
class RecordingApp:
    """An aiohttp app on 127.0.0.1 that records every delivery it answers 2xx to."""

    name: str = "app"
    answer: Answer = always_ok
    port: int = field(default_factory=free_port)
    # Seconds each delivery takes, to keep records queued (restarts, drains, backpressure).
    delay: float = 0.0
    received: list[Received] = field(default_factory=list)
    calls: int = 0
    # Serve HTTPS with this context (tests of the sidecar's --app-cafile).
    ssl_context: ssl.SSLContext | None = None
    _runner: web.AppRunner | None = None
    _changed: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def url(self) -> str:
        scheme = "https" if self.ssl_context is not None else "http"
        return f"{scheme}://127.0.0.1:{self.port}/events"

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.calls += 1
        if self.delay:
            await asyncio.sleep(self.delay)
        seen = Received(
            body,
            {k.lower(): v for k, v in request.headers.items()},
            tuple(request.raw_headers),
        )
        status, headers, answer = self.answer(seen, self.calls)
        if 200 <= status < 300:
            self.received.append(seen)
            self._changed.set()
        return web.Response(status=status, headers=headers, body=answer)

    async def _healthz(self, _: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def start(self) -> None:
        app = web.Application(client_max_size=16 * 1024 * 1024)
        app.router.add_post("/events", self._handle)
        app.router.add_get("/healthz", self._healthz)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        await web.TCPSite(
            self._runner, "127.0.0.1", self.port, reuse_address=True, ssl_context=self.ssl_context
        ).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> RecordingApp:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def wait_for(self, count: int, timeout: float = 20.0) -> list[Received]:
        """Wait until at least ``count`` deliveries were taken; fail with what arrived if not."""
        deadline = asyncio.get_running_loop().time() + timeout
        while len(self.received) < count:
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                raise AssertionError(f"{self.name}: {len(self.received)} of {count} deliveries within {timeout}s")
            self._changed.clear()
            try:
                async with asyncio.timeout(remaining):
                    await self._changed.wait()
            except TimeoutError:
                pass
        return self.received


def build_parser() -> argparse.ArgumentParser:
    """``python -m proxy.testing.app``: an app that prints each delivery, for trying by hand."""
    parser = argparse.ArgumentParser(
        prog="python -m proxy.testing.app",
        description="Take deliveries on http://127.0.0.1:PORT/events, answer 200 and print each one.",
    )
    parser.add_argument("--port", type=int, default=8081, help="loopback port to listen on")
    parser.add_argument("--name", default="app", help="printed before each delivery")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def show(seen: Received, _: int) -> tuple[int, dict[str, str], bytes]:
        where = f"{seen.topic}[{seen.partition}]@{seen.offset}"
        print(f"{args.name}: {where} baggage={seen.headers.get('baggage', '')!r} body={seen.body[:200]!r}", flush=True)
        return 200, {}, b""

    async def serve() -> None:
        async with RecordingApp(args.name, answer=show, port=args.port) as app:
            print(f"{args.name} listening on {app.url}", flush=True)
            await asyncio.Event().wait()

    try:
        asyncio.run(serve())
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
