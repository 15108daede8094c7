"""HttpUpstream: POSTs deliveries to the app over a pool of keep-alive HTTP/1.1 connections.

The client is our own, on asyncio Protocols (:mod:`proxy.upstream.connection`, with the
response parser :mod:`proxy.upstream.response`), because the HTTP client decides the sidecar's
throughput and CPU. Measured here against aiohttp's client, which it replaced: the
deliver path spent two thirds of its CPU inside ``ClientSession._request`` (request objects,
header preparation, timeout handles, stream readers, pool bookkeeping). A delivery is now one
encoded head, one write, one future and one parse.

- The request line, ``host`` and the sidecar's ``authorization`` are encoded once. Header names
  are checked once each (RFC 9110 tokens, never framing, routing or credential names); values
  come from :func:`proxy.delivery.headers.build_headers`, already checked, and every request is
  checked again for CR, LF and NUL before it is written, so nothing can split a request.
- Connections are kept alive and reused last-in first-out, at most ``max_connections`` (the
  sidecar's ``--max-in-flight``); one idle for :data:`KEEPALIVE_IDLE` seconds is closed before
  a server's own idle timeout (often 5 s) can race a request on it.
- A request is retried on another connection only when nothing was written: a pooled connection
  whose end the server announced while it sat idle. Once a POST was written it may have reached
  the app, so any failure after that is the attempt's failure, retried (or not) by the
  dispatcher's policy.
- ``timeout`` bounds a whole attempt, connecting included.
"""

from __future__ import annotations

import asyncio
import re
import ssl
import time
from collections import deque
from collections.abc import Mapping
from typing import NamedTuple
from urllib.parse import quote, urlsplit

from proxy.errors import AppUnavailable, ConfigError
from proxy.upstream.connection import AppConnection, ConnectionClosed
from proxy.upstream.response import MAX_KEPT_BYTES, ProtocolError

DEFAULT_TIMEOUT = 10.0
KEEPALIVE_IDLE = 4.0
STOP_TIMEOUT = 1.0
# Header names the caller may not set: the client's own framing and routing, hop-by-hop
# fields, and credentials (the sidecar's ``authorization`` is the only one sent).
RESERVED_NAMES = frozenset({
    "host", "content-length", "transfer-encoding", "connection", "keep-alive", "proxy-connection",
    "te", "trailer", "upgrade", "expect", "authorization", "proxy-authorization",
})
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_FIELD_VALUE = re.compile(r"[\x20-\x7e\t]*")
_CHECKED_NAMES_MAX = 1024


class AppAnswer(NamedTuple):
    """The app's answer to one delivery (a named tuple: one is made per delivery)."""

    status: int
    body: bytes
    content_type: str
    retry_after: str | None
    seconds: float


class AppConnectError(AppUnavailable):
    """No connection could be made: the app is not listening. Costs the record no attempt."""


class AppTimeout(AppUnavailable):
    """The app took longer than the delivery timeout."""


class HttpUpstream:
    """One app URL, a pool of keep-alive connections, bounded concurrency."""

    def __init__(
        self,
        url: str,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        max_connections: int = 64,
        token: str | None = None,
        ssl_context: ssl.SSLContext | None = None,
        max_answer_bytes: int = MAX_KEPT_BYTES,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(f"app URL {url!r} must be http://host[:port]/path or https://...")
        self.url = url
        self.timeout = timeout
        # How much of an answer's body is kept (what the app's answer to a bulk must fit in).
        self.max_answer_bytes = max_answer_bytes
        self.max_connections = max_connections
        self.host = parts.hostname
        self.tls = parts.scheme == "https"
        default_port = 443 if self.tls else 80
        self.port = parts.port or default_port
        # https:// app URLs: verified against this context (None: the system's CAs, at start()).
        self._ssl_context = ssl_context
        authority = f"[{self.host}]" if ":" in self.host else self.host
        if self.port != default_port:
            authority += f":{self.port}"
        # Percent-encode what a request target may not carry (spaces, controls, non-ASCII).
        target = quote(parts.path or "/", safe="/%:@!$&'()*+,;=~") + (
            "?" + quote(parts.query, safe="/%:@!$&'()*+,;=~?") if parts.query else ""
        )
        head = f"POST {target} HTTP/1.1\r\nhost: {authority}\r\n"
        if token:
            if _FIELD_VALUE.fullmatch(token) is None:
                raise ConfigError("the app token (--app-token-file) has characters an HTTP header cannot carry")
            head += f"authorization: Bearer {token}\r\n"
        self._head = head
        self._checked_names: set[str] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._idle: deque[AppConnection] = deque()
        self._connections: set[AppConnection] = set()
        self._opening = 0
        self._waiters: deque[asyncio.Future[AppConnection | None]] = deque()

    def __repr__(self) -> str:
        return (
            f"HttpUpstream(url={self.url!r}, timeout={self.timeout}, max_connections={self.max_connections}, "
            f"open={len(self._connections)}, idle={len(self._idle)})"
        )

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        if self.tls and self._ssl_context is None:
            self._ssl_context = ssl.create_default_context()

    async def stop(self) -> None:
        """Close every connection (an answer still awaited fails)."""
        self._loop = None
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)
        self._waiters.clear()
        connections = list(self._connections)
        self._connections.clear()
        self._idle.clear()
        for connection in connections:
            connection.close()
        if connections:
            await asyncio.wait([c.lost for c in connections], timeout=STOP_TIMEOUT)

    async def __aenter__(self) -> HttpUpstream:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def post(self, body: bytes, headers: Mapping[str, str]) -> AppAnswer:
        """POST one delivery. Raises :class:`AppConnectError` or :class:`AppTimeout`, or
        :class:`AppUnavailable` for any other transport failure; any HTTP answer is returned.
        ``ValueError`` for a header no request may carry (a bug of the caller's: values come
        checked from ``build_headers``)."""
        loop = self._loop
        if loop is None:
            raise RuntimeError("HttpUpstream.start() was not called")
        started = time.perf_counter()
        head = self._encode(headers, len(body))
        now = loop.time()
        deadline = now + self.timeout
        idle = self._idle
        # The usual case, written out: the last connection released is open, reusable and fresh.
        connection = idle.pop() if idle else None
        if connection is None or not connection.usable or now - connection.idle_since >= KEEPALIVE_IDLE:
            if connection is not None:
                self._discard(connection)
            connection = self._take_idle(now)
            if connection is None:
                connection = await self._acquire(loop, deadline)
        waiter = connection.send(head, body, deadline)
        try:
            response = await waiter
        except TimeoutError as exc:
            self._discard(connection)
            raise AppTimeout(f"the app at {self.url} did not answer within {self.timeout}s") from exc
        except (ConnectionClosed, ProtocolError, OSError) as exc:
            self._discard(connection)
            raise AppUnavailable(f"delivery to {self.url} failed: {exc}") from exc
        except BaseException:
            # Cancelled (a revoke gave the delivery up): the answer would be read as the next one's.
            connection.abort()
            self._discard(connection)
            raise
        if connection.usable and not self._waiters:
            # The usual case of _release, written out: nobody waits, back to the idle pool.
            connection.idle_since = now = loop.time()
            idle.append(connection)
            if idle[0].idle_since < now - KEEPALIVE_IDLE:
                self._release_stale(now)
        else:
            self._release(loop.time(), connection)
        headers_in = response.headers
        content_type = headers_in.get("content-type", "")
        return AppAnswer(
            response.status,
            # A JSON answer may say RETRY or DROP (policy.classify); any other body is not read.
            response.body if content_type.startswith("application/json") else b"",
            content_type,
            headers_in.get("retry-after"),
            time.perf_counter() - started,
        )

    # -- request --------------------------------------------------------------------------------

    def _encode(self, headers: Mapping[str, str], length: int) -> bytes:
        """The request head, ready to write."""
        count = len(headers)
        if not count:
            return f"{self._head}content-length: {length}\r\n\r\n".encode("ascii")
        if not self._checked_names.issuperset(headers):
            self._check_names(headers)
        block = "\r\n".join(map(": ".join, headers.items()))
        # Each CRLF is ours, one between two fields: any other CR or LF came in a value.
        if block.count("\n") != count - 1 or block.count("\r") != count - 1 or "\0" in block:
            bad = next(name for name, value in headers.items() if _FIELD_VALUE.fullmatch(value) is None)
            raise ValueError(f"header {bad!r} has CR, LF or NUL in its value: not sent")
        try:
            return f"{self._head}{block}\r\ncontent-length: {length}\r\n\r\n".encode("ascii")
        except UnicodeEncodeError as exc:
            raise ValueError(f"a header of the delivery is not ASCII: not sent ({exc})") from None

    def _check_names(self, headers: Mapping[str, str]) -> None:
        for name in headers:
            if name in self._checked_names:
                continue
            if _TOKEN.fullmatch(name) is None:
                raise ValueError(f"{name[:64]!r} is not an HTTP header name: not sent")
            if name.lower() in RESERVED_NAMES:
                raise ValueError(f"header {name!r} is the client's own: not sent")
            if len(self._checked_names) < _CHECKED_NAMES_MAX:
                self._checked_names.add(name)

    # -- pool -------------------------------------------------------------------------------------

    def _take_idle(self, now: float) -> AppConnection | None:
        """The most recently used idle connection that can take a request. Ones the server
        closed meanwhile, or idle too long, are dropped: nothing was written on them."""
        idle = self._idle
        while idle:
            connection = idle.pop()
            if connection.usable and now - connection.idle_since < KEEPALIVE_IDLE:
                return connection
            self._discard(connection)
        return None

    async def _acquire(self, loop: asyncio.AbstractEventLoop, deadline: float) -> AppConnection:
        """A new connection, or, at ``max_connections``, the next one released."""
        while len(self._connections) + self._opening >= self.max_connections:
            waiter: asyncio.Future[AppConnection | None] = loop.create_future()
            self._waiters.append(waiter)
            try:
                async with asyncio.timeout_at(deadline):
                    handed = await waiter
            except BaseException as exc:
                if waiter.done() and not waiter.cancelled():
                    passed = waiter.result()
                    if passed is not None:  # handed over just as we gave up: pass it on
                        self._release(loop.time(), passed)
                    else:
                        self._wake_one()
                elif waiter in self._waiters:
                    self._waiters.remove(waiter)
                if isinstance(exc, TimeoutError):
                    raise AppTimeout(f"no connection to the app at {self.url} within {self.timeout}s") from exc
                raise
            if self._loop is None:
                raise AppUnavailable("the upstream is stopping")
            if handed is not None:
                if handed.usable:
                    return handed
                self._discard(handed)
            connection = self._take_idle(loop.time())
            if connection is not None:
                return connection
        return await self._connect(loop, deadline)

    async def _connect(self, loop: asyncio.AbstractEventLoop, deadline: float) -> AppConnection:
        self._opening += 1
        try:
            async with asyncio.timeout_at(deadline):
                _, connection = await loop.create_connection(
                    lambda: AppConnection(loop, self.max_answer_bytes),
                    self.host,
                    self.port,
                    ssl=self._ssl_context if self.tls else None,
                    server_hostname=self.host if self.tls else None,
                )
        except TimeoutError as exc:
            raise AppTimeout(f"cannot connect to the app at {self.url} within {self.timeout}s") from exc
        except OSError as exc:
            # Refused, unreachable, or a TLS handshake that failed (ssl.SSLError is an OSError).
            raise AppConnectError(f"cannot connect to the app at {self.url}: {exc}") from exc
        finally:
            self._opening -= 1
        if self._loop is None:  # stopped while connecting
            connection.close()
            raise AppUnavailable("the upstream is stopping")
        self._connections.add(connection)
        return connection

    def _release(self, now: float, connection: AppConnection) -> None:
        if not connection.usable:
            self._discard(connection)
            return
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(connection)
                return
        connection.idle_since = now
        self._idle.append(connection)
        self._release_stale(now)

    def _release_stale(self, now: float) -> None:
        # The oldest idle connections sit at the left (reuse is LIFO): close the stale ones.
        idle = self._idle
        while idle[0].idle_since < now - KEEPALIVE_IDLE:
            self._discard(idle.popleft())

    def _discard(self, connection: AppConnection) -> None:
        connection.close()
        if connection in self._connections:
            self._connections.discard(connection)
            self._wake_one()

    def _wake_one(self) -> None:
        """A place in the pool is free: the first waiter may connect."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
