"""LocalHttpServer: the small HTTP/1.1 server of the sidecar's own listeners (admin, metrics,
publish) and the injector's metrics.

Why not aiohttp's: these listeners answer a probe, a scrape or a publish now and then, and
aiohttp's import alone was 11.6 MB of the sidecar's 48 MB resident at group join (measured with
the benchmarks); a sidecar runs in every pod. aiohttp stays for the route service, the injector's
webhook and the demo, which are processes of their own.

What it does (RFC 9112), strictly, since the publish endpoint takes input from the app. Request
heads are parsed by llhttp (through httptools, as uvicorn does), with our limits on top:

- request line ``METHOD SP target SP HTTP/1.x``, the method one llhttp knows (else 501), the
  target visible ASCII; header names are tokens; a field value may not hold CR, LF, NUL or
  other controls (HTAB aside); obsolete line folding, a head over :data:`MAX_HEAD_BYTES`, a line
  over :data:`MAX_LINE_BYTES` or more than :data:`~proxy.http1.MAX_HEADER_FIELDS` fields is
  refused: each such request gets a 4xx or 5xx (by default plain text, or what ``on_malformed``
  makes of it) and the connection is closed;
- bodies framed by one ``Content-Length`` or ``Transfer-Encoding: chunked`` (trailers read and
  dropped); both at once, a repeated ``Content-Length``, or another transfer coding, is refused;
  a body is read only when the handler asks (:meth:`Request.read`, with a size limit), after a
  ``100 Continue`` if the client expects one; a body the handler did not read closes the
  connection after the answer. Bodies are read by our own code from the stream, exactly to the
  end of the message, so that a next request already sent stays in the buffer;
- keep-alive (HTTP/1.1 unless ``Connection: close``; HTTP/1.0 only with ``keep-alive``), one
  request at a time per connection, idle connections closed after :data:`KEEPALIVE_TIMEOUT`;
  ``Upgrade`` and ``CONNECT`` are answered as plain requests, then the connection is closed
  (we never switch protocols);
- :meth:`LocalHttpServer.stop` stops accepting, lets requests being handled finish within
  ``shutdown_timeout``, then closes everything.

The request-head parse is :func:`parse_request_head`, pure and property-tested.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from http import HTTPStatus

import httptools

from proxy.errors import ListenError
from proxy.http1 import (
    BAD_HEAD_BYTES,
    MAX_CHUNK_LINE,
    MAX_HEAD_BYTES,
    MAX_HEADER_FIELDS,
    NO_BODY_STATUSES,
    tokens,
)

log = logging.getLogger(__name__)

MAX_LINE_BYTES = 8190
KEEPALIVE_TIMEOUT = 75.0
DEFAULT_SHUTDOWN_TIMEOUT = 5.0
_TARGET = re.compile(rb"[\x21-\x7e]+")
_CHUNK_SIZE = re.compile(rb"([0-9A-Fa-f]{1,16})[ \t]*(?:;[^\r\n]*)?\r\n")


class HttpError(Exception):
    """A request that cannot be served as it is: ``status`` and a message for the client."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class BodyTooLarge(HttpError):
    """The request body is over the limit the handler gave :meth:`Request.read`."""

    def __init__(self, limit: int, length: int | None = None) -> None:
        what = f"body of {length} bytes" if length is not None else "body"
        super().__init__(413, f"{what} is over the limit of {limit} bytes")
        self.limit = limit


@dataclass(frozen=True, slots=True)
class RequestHead:
    """A parsed request line and header fields. ``headers`` maps lower-case names to the first
    value; ``fields`` keeps every field in order. Values are decoded as Latin-1 (bytes over
    0x7f are the caller's to refuse or accept)."""

    method: str
    target: str
    version: str
    fields: tuple[tuple[str, str], ...]
    headers: Mapping[str, str]
    content_length: int | None
    chunked: bool
    keep_alive: bool
    expect_continue: bool

    @property
    def path(self) -> str:
        return self.target.partition("?")[0]


class _HeadReader:
    """llhttp's callbacks for one request head: collects the target and the fields. An
    exception raised here stops the parse and comes back as the ``__context__`` of httptools'
    ``HttpParserCallbackError``."""

    __slots__ = ("began", "fields", "keep_alive", "parser", "target")

    def __init__(self) -> None:
        self.began = False
        self.keep_alive = False
        self.target = b""
        self.fields: list[tuple[bytes, bytes]] = []
        self.parser = httptools.HttpRequestParser(self)

    def on_message_begin(self) -> None:
        if self.began:
            raise HttpError(400, "more than one request head")
        self.began = True

    def on_url(self, url: bytes) -> None:
        self.target += url
        if len(self.target) > MAX_LINE_BYTES:
            raise HttpError(431, f"a request line is longer than {MAX_LINE_BYTES} bytes")

    def on_header(self, name: bytes, value: bytes) -> None:
        # Only collected: a call per field is the hot path; parse_request_head reads them.
        self.fields.append((name, value))

    def on_headers_complete(self) -> None:
        # llhttp's keep-alive (Connection, HTTP/1.0) is only right while the head is current.
        self.keep_alive = self.parser.should_keep_alive()


def _refusal(head: bytes, error: httptools.HttpParserError) -> HttpError:
    """The answer to a head llhttp refused: ours when our callback refused it, else 501 for a
    method llhttp does not know (RFC 9110 section 9.1), else 400."""
    if isinstance(error.__context__, HttpError):
        return error.__context__
    if isinstance(error, httptools.HttpParserInvalidMethodError):
        return HttpError(501, f"method not implemented: {head.partition(b' ')[0][:20]!r}")
    if BAD_HEAD_BYTES.search(head) is not None:
        # llhttp says where it stopped ("Missing expected LF after header value"); the client
        # is better served by what it must not send.
        return HttpError(400, "header names and values may not contain CR, LF, NUL or other control characters")
    return HttpError(400, f"invalid request head: {error}")


def parse_request_head(head: bytes) -> RequestHead:
    """Parse a request head (everything before the blank line). Raises :class:`HttpError`
    saying what is wrong."""
    if len(head) > MAX_HEAD_BYTES:
        raise HttpError(431, f"request head larger than {MAX_HEAD_BYTES} bytes")
    reader = _HeadReader()
    parser = reader.parser
    upgrade = False
    try:
        parser.feed_data(head + b"\r\n\r\n")
    except httptools.HttpParserUpgrade:
        upgrade = True  # the head is complete; we never switch protocols (see below)
    except httptools.HttpParserError as exc:
        raise _refusal(head, exc) from None
    version = parser.get_http_version()
    if version not in ("1.1", "1.0"):
        # llhttp reads a line without a version as HTTP/0.9.
        with_version = head.partition(b"\r\n")[0].count(b" ") >= 2
        raise HttpError(505 if with_version else 400, f"unsupported version HTTP/{version}")
    target = reader.target
    if _TARGET.fullmatch(target) is None:
        raise HttpError(400, f"invalid request target {target[:80]!r}")
    if len(reader.fields) > MAX_HEADER_FIELDS:
        raise HttpError(431, f"more than {MAX_HEADER_FIELDS} header fields")
    fields: list[tuple[str, str]] = []
    headers: dict[str, str] = {}
    for raw_name, raw_value in reader.fields:
        if len(raw_name) + len(raw_value) + 2 > MAX_LINE_BYTES:
            raise HttpError(431, f"a header field is longer than {MAX_LINE_BYTES} bytes")
        # llhttp let only a token through as the name, and strips leading whitespace only.
        name = raw_name.decode("ascii").lower()
        value = raw_value.rstrip(b" \t").decode("latin-1")
        fields.append((name, value))
        headers.setdefault(name, value)
    chunked = "transfer-encoding" in headers
    if chunked:
        encodings = [coding for n, value in fields if n == "transfer-encoding" for coding in tokens(value)]
        if encodings != ["chunked"]:
            raise HttpError(501, f"unsupported transfer-encoding {', '.join(encodings)[:60]!r}")
    length = headers.get("content-length")  # llhttp refused a repeated or invalid one
    return RequestHead(
        method=parser.get_method().decode("ascii"),
        target=target.decode("ascii"),
        version=f"HTTP/{version}",
        fields=tuple(fields),
        headers=headers,
        content_length=int(length) if length is not None else None,
        chunked=chunked,
        # An Upgrade or CONNECT request is answered as a plain request, then the connection is
        # closed: what the client sends after it would be another protocol.
        keep_alive=reader.keep_alive and not upgrade,
        expect_continue=headers.get("expect", "").lower() == "100-continue",
    )


@dataclass(slots=True)
class Response:
    """An answer: written whole, with ``content-length``; ``close`` ends the connection after."""

    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    close: bool = False

    def encode(self, *, head_only: bool = False) -> bytes:
        try:
            reason = HTTPStatus(self.status).phrase
        except ValueError:
            reason = "Unknown"
        lines = [f"HTTP/1.1 {self.status} {reason}"]
        lines += [f"{name}: {value}" for name, value in self.headers.items()]
        if self.status not in NO_BODY_STATUSES:  # RFC 9110 section 8.6: none on a 204 or 304
            lines.append(f"content-length: {len(self.body)}")
        if self.close:
            lines.append("connection: close")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        if BAD_HEAD_BYTES.search(head[:-4]) is not None:
            raise ValueError("a response header has CR, LF or a control character")
        return head if head_only else head + self.body


class Request:
    """One request being handled: its head, and its body when the handler reads it."""

    __slots__ = ("_continue_sent", "_reader", "_writer", "body_read", "head")

    def __init__(self, head: RequestHead, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.head = head
        self._reader = reader
        self._writer = writer
        self._continue_sent = False
        self.body_read = head.content_length in (None, 0) and not head.chunked

    def __repr__(self) -> str:
        return f"Request({self.head.method} {self.head.target[:80]!r})"

    @property
    def method(self) -> str:
        return self.head.method

    @property
    def path(self) -> str:
        return self.head.path

    @property
    def headers(self) -> Mapping[str, str]:
        return self.head.headers

    def get_all(self, name: str) -> list[str]:
        """Every value of a (repeated) header, in order."""
        name = name.lower()
        return [value for field_name, value in self.head.fields if field_name == name]

    async def read(self, limit: int) -> bytes:
        """The whole body, at most ``limit`` bytes (else :class:`BodyTooLarge`, refused before
        reading when its length is known)."""
        head = self.head
        if head.content_length is not None and head.content_length > limit:
            raise BodyTooLarge(limit, head.content_length)
        if self.body_read:
            return b""
        if head.expect_continue and not self._continue_sent:
            self._continue_sent = True
            self._writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        reader = self._reader
        try:
            if head.content_length is not None:
                body = await reader.readexactly(head.content_length)
            else:
                body = await self._read_chunked(limit)
        except asyncio.IncompleteReadError as exc:
            raise HttpError(400, "the connection ended in the middle of the body") from exc
        except asyncio.LimitOverrunError as exc:
            raise HttpError(400, "invalid chunked body") from exc
        self.body_read = True
        return body

    async def _read_chunked(self, limit: int) -> bytes:
        reader = self._reader
        chunks: list[bytes] = []
        size = 0
        while True:
            line = await reader.readuntil(b"\r\n")
            match = _CHUNK_SIZE.fullmatch(line) if len(line) <= MAX_CHUNK_LINE else None
            if match is None:
                raise HttpError(400, "invalid chunk size line")
            chunk_size = int(match.group(1), 16)
            if not chunk_size:
                break
            size += chunk_size
            if size > limit:
                raise BodyTooLarge(limit)
            chunk = await reader.readexactly(chunk_size + 2)
            if chunk[-2:] != b"\r\n":
                raise HttpError(400, "chunk data not followed by CRLF")
            chunks.append(chunk[:-2])
        trailers = 0
        while (line := await reader.readuntil(b"\r\n")) != b"\r\n":
            trailers += len(line)
            if trailers > MAX_HEAD_BYTES or BAD_HEAD_BYTES.search(line[:-2]) is not None:
                raise HttpError(400, "invalid trailer fields")
        return b"".join(chunks)


Handler = Callable[[Request], Awaitable[Response]]


def plain_malformed(error: HttpError) -> Response:
    return Response(error.status, f"{error}\n".encode(), {"content-type": "text/plain; charset=utf-8"}, close=True)


class LocalHttpServer:
    """An HTTP/1.1 listener handing each request to ``handler``; see the module doc."""

    def __init__(
        self,
        addr: tuple[str, int],
        handler: Handler,
        *,
        name: str,
        flag: str | None = None,
        on_malformed: Callable[[HttpError], Response] = plain_malformed,
        shutdown_timeout: float = DEFAULT_SHUTDOWN_TIMEOUT,
    ) -> None:
        self.host, self.port = addr
        self.name = name
        self.flag = flag or f"--{name}-addr"
        self.handler = handler
        self.on_malformed = on_malformed
        self.shutdown_timeout = shutdown_timeout
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()
        self._busy: set[asyncio.Task[None]] = set()

    def __repr__(self) -> str:
        return f"LocalHttpServer(name={self.name!r}, addr={self.host}:{self.port})"

    async def start(self) -> None:
        """Bind and accept. Raises :class:`ListenError` (naming the address and ``flag``) when
        the address cannot be bound."""
        try:
            self._server = await asyncio.start_server(
                self._connection, self.host, self.port, reuse_address=True, limit=MAX_HEAD_BYTES
            )
        except OSError as exc:
            raise ListenError(f"{self.name} server", self.flag, self.host, self.port, exc) from exc
        if self.port == 0:
            # Bound to an ephemeral port (tests): report the real one.
            self.port = int(self._server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        """Stop accepting; let requests being handled finish within the shutdown timeout."""
        if self._server is None:
            return
        self._server.close()
        self._server = None
        if self._busy:
            await asyncio.wait(self._busy, timeout=self.shutdown_timeout)
        for task in self._connections:
            task.cancel()
        if self._connections:
            await asyncio.wait(self._connections)

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            await self._serve(reader, writer, task)
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            self._connections.discard(task)
            self._busy.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, task: asyncio.Task[None]) -> None:
        while True:
            try:
                async with asyncio.timeout(KEEPALIVE_TIMEOUT):
                    raw = await reader.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, TimeoutError):
                return  # closed, or idle too long, between requests
            except asyncio.LimitOverrunError:
                raw = b""
                error: HttpError | None = HttpError(431, f"request head larger than {MAX_HEAD_BYTES} bytes")
            else:
                error = None
            if error is None:
                try:
                    head = parse_request_head(raw[:-4])
                except HttpError as exc:
                    error = exc
            if error is not None:
                response = self.on_malformed(error)
                response.close = True
                writer.write(response.encode())
                await writer.drain()
                return
            request = Request(head, reader, writer)
            self._busy.add(task)
            try:
                response = await self._answer(request)
            finally:
                self._busy.discard(task)
            if not request.body_read or not head.keep_alive:
                response.close = True
            writer.write(response.encode(head_only=head.method == "HEAD"))
            await writer.drain()
            if response.close:
                return

    async def _answer(self, request: Request) -> Response:
        try:
            return await self.handler(request)
        except HttpError as error:
            response = self.on_malformed(error)
            response.close = True
            return response
        except Exception:
            log.exception("%s: handler failed for %r", self.name, request)
            return Response(500, b"internal error\n", {"content-type": "text/plain; charset=utf-8"}, close=True)
