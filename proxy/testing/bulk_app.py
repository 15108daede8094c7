"""BulkRecordingApp: a small real HTTP app that takes bulk deliveries (``--bulk-max-records``)
and answers them per entry, as a Dapr bulk-subscribe app does.

Each entry becomes a :class:`~proxy.testing.app.Received` (its decoded value as the body, its
metadata as the headers), so the same accounts work for bulk and single deliveries. The answers
can be scripted per entry (``status``) or for a whole request (``whole``).
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from proxy.testing.app import Received
from proxy.testing.broker import free_port

# An entry's status in the answer given the entry and how often it was sent before (0 the first
# time): "SUCCESS", "RETRY", "DROP", any other string, or None to leave it out of the answer.
EntryStatus = Callable[[Received, int], str | None]
# A whole answer instead of the per-entry one: (status, headers, body), or None for per entry.
WholeAnswer = Callable[[int, list[Received]], tuple[int, dict[str, str], bytes] | None]


def always_success(_: Received, __: int) -> str | None:
    return "SUCCESS"


def per_entry(_: int, __: list[Received]) -> tuple[int, dict[str, str], bytes] | None:
    return None


def _pretty(value: Any) -> str:
    return json.dumps(value, indent=4)


def entry_value(entry: dict[str, Any]) -> bytes:
    """The record value an entry carries: base64 in the raw format, or the CloudEvent's data."""
    event = entry.get("event")
    if entry.get("contentType") == "application/cloudevents+json" and isinstance(event, dict):
        if "data_base64" in event:
            return base64.b64decode(event["data_base64"])
        data = event.get("data")
        if data is None:
            return b""
        return data.encode() if isinstance(data, str) else json.dumps(data).encode()
    return base64.b64decode(event) if isinstance(event, str) else b""


@dataclass(eq=False)
class BulkRecordingApp:
    """An aiohttp app on 127.0.0.1 that answers bulk deliveries and records their entries."""

    name: str = "bulk-app"
    status: EntryStatus = always_success
    whole: WholeAnswer = per_entry
    port: int = field(default_factory=free_port)
    delay: float = 0.0
    # Answers pretty-printed (indent 4), as many JSON libraries write them: about 75 bytes an entry.
    pretty: bool = False
    # Seconds a given call (1, 2, ...) takes before it is answered, on top of ``delay``.
    delay_of: Callable[[int], float] = lambda _: 0.0
    # Entries answered SUCCESS, in the order of the answers (the deliveries, for accounts).
    received: list[Received] = field(default_factory=list)
    # Every entry of every request, resent ones included, in arrival order.
    sent: list[Received] = field(default_factory=list)
    # Each request's entries, and its raw JSON body.
    bulks: list[list[Received]] = field(default_factory=list)
    bodies: list[dict[str, Any]] = field(default_factory=list)
    dropped: list[Received] = field(default_factory=list)
    calls: int = 0
    _times_sent: Counter[tuple[int, int]] = field(default_factory=Counter)
    _runner: web.AppRunner | None = None
    _changed: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/events"

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.calls += 1
        call = self.calls
        parsed = json.loads(body)
        self.bodies.append(parsed)
        entries = [
            (e["entryId"], Received(entry_value(e), dict(e["metadata"]), ())) for e in parsed["entries"]
        ]
        seen = [r for _, r in entries]
        # Recorded as it arrives: a slow answer must not make a request look later than it was.
        self.bulks.append(seen)
        self.sent.extend(seen)
        pause = self.delay + self.delay_of(call)
        if pause:
            await asyncio.sleep(pause)
        whole = self.whole(call, seen)
        if whole is not None:
            status, headers, answer = whole
            for r in seen:
                self._times_sent[(r.partition, r.offset)] += 1
            self._changed.set()
            return web.Response(status=status, headers=headers, body=answer)
        statuses = []
        for entry_id, r in entries:
            where = (r.partition, r.offset)
            said = self.status(r, self._times_sent[where])
            self._times_sent[where] += 1
            if said is None:
                continue
            statuses.append({"entryId": entry_id, "status": said})
            # Read as the sidecar reads it: case-insensitively.
            if said.upper() == "SUCCESS":
                self.received.append(r)
            elif said.upper() == "DROP":
                self.dropped.append(r)
        self._changed.set()
        return web.json_response({"statuses": statuses}, dumps=_pretty if self.pretty else json.dumps)

    async def _healthz(self, _: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def start(self) -> None:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/events", self._handle)
        app.router.add_get("/healthz", self._healthz)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port, reuse_address=True).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> BulkRecordingApp:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def wait_until(self, done: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
        """Wait until ``done()``; fail saying ``what`` did not happen."""
        deadline = asyncio.get_running_loop().time() + timeout
        while not done():
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                raise AssertionError(
                    f"{self.name}: {what} not within {timeout}s ({len(self.received)} taken, "
                    f"{len(self.sent)} entries in {self.calls} requests)"
                )
            self._changed.clear()
            try:
                async with asyncio.timeout(min(remaining, 0.2)):
                    await self._changed.wait()
            except TimeoutError:
                pass
