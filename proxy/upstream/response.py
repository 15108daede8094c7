"""The app's HTTP/1.1 answers, read from a byte stream. Pure logic, no I/O.

:class:`ResponseParser` reads the responses of one connection, one request at a time (the sidecar
never pipelines): feed it the bytes as they arrive, and it returns the :class:`Response` once the
whole answer is in. What it follows (RFC 9112):

- status line ``HTTP/1.x NNN reason``; interim ``1xx`` answers are skipped (``101`` is an error:
  we never ask to switch protocols);
- header fields ``name: value``, names as RFC 9110 tokens, values without controls other than
  HTAB; obsolete line folding is an error;
- the body: none for ``204`` and ``304``; ``Transfer-Encoding`` ending in ``chunked`` (trailers
  read and ignored), or any other ``Transfer-Encoding`` read until the server closes;
  ``Content-Length`` (repeated or listed values must agree), else until the server closes;
- whether the connection may carry another request: not after ``Connection: close``, an HTTP/1.0
  answer without ``Connection: keep-alive``, a body read until close, a message with both
  ``Transfer-Encoding`` and ``Content-Length`` (a smuggling pattern, RFC 9112 section 6.3), bytes
  beyond the answer, or a body too large to be worth draining.

Only the first :data:`MAX_KEPT_BYTES` of a body are kept (enough for a Dapr-style ``{"status":
...}``); up to :data:`MAX_DRAIN_BYTES` more are read and dropped so that the connection can be
reused, and past that the answer is complete with what was kept and the connection is not reused.
Anything malformed raises :class:`ProtocolError` and the connection is not used again.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import NamedTuple

from proxy.http1 import BAD_HEAD_BYTES, MAX_CHUNK_LINE, MAX_HEAD_BYTES, NO_BODY_STATUSES, TOKEN

MAX_KEPT_BYTES = 4096
MAX_DRAIN_BYTES = 1024 * 1024
_CHUNK_SIZE = re.compile(rb"([0-9A-Fa-f]{1,16})[ \t]*(?:;[^\r\n]*)?")
_DIGITS = re.compile(rb"[0-9]{1,18}")

# Header names seen before, raw bytes -> lower-case text: an app answers with the same few names,
# so each is checked against the token grammar once. Bounded: a hostile app cannot grow it.
_KNOWN_NAMES: dict[bytes, str] = {}
_KNOWN_NAMES_MAX = 512

# Parser states.
_HEAD, _LENGTH, _CHUNK_SIZE_LINE, _CHUNK_DATA, _CHUNK_END, _TRAILERS, _UNTIL_CLOSE = range(7)


class ProtocolError(ValueError):
    """The bytes are not a valid HTTP/1.1 response; the connection cannot be used again."""


class Response(NamedTuple):
    """One complete answer (a named tuple: one is made per delivery, and a frozen dataclass's
    ``__init__`` costs several times as much).

    ``headers`` has lower-case names; a repeated field's values are joined with ``", "``.
    ``body`` is at most the first :data:`MAX_KEPT_BYTES` of the body. ``keep_alive`` says whether
    the connection may carry another request.
    """

    status: int
    headers: Mapping[str, str]
    body: bytes
    keep_alive: bool


def _name(raw: bytes) -> str:
    known = _KNOWN_NAMES.get(raw)
    if known is not None:
        return known
    if TOKEN.fullmatch(raw) is None:
        raise ProtocolError(f"invalid header name {raw[:40]!r}")
    name = raw.decode("ascii").lower()
    if len(_KNOWN_NAMES) < _KNOWN_NAMES_MAX:
        _KNOWN_NAMES[raw] = name
    return name


def _tokens(value: str) -> list[str]:
    return [item.strip(" \t").lower() for item in value.split(",")]


@dataclass(frozen=True, slots=True)
class _Head:
    """What a response head says: its status and fields, how its body is framed (the parser
    state to read it with, and its length for ``_LENGTH``), and whether the connection may be
    reused after it. ``interim`` for a 1xx."""

    status: int
    headers: Mapping[str, str]
    state: int
    length: int
    keep_alive: bool
    interim: bool = False


# Parsed heads by their bytes: an app answers most deliveries with the same head (or one that
# changes once a second, with a Date field), so it is parsed once. Bounded in entries, and only
# short heads are kept; the header mappings are shared between answers, read-only.
_HEADS: dict[bytes, _Head] = {}
_HEADS_MAX = 256
_HEAD_CACHED_BYTES = 512
_INTERIM = _Head(100, {}, _HEAD, 0, True, interim=True)


def _parse_head(head: bytes) -> _Head:
    """Parse a status line and header fields (RFC 9112, as the module doc says)."""
    if BAD_HEAD_BYTES.search(head) is not None:
        raise ProtocolError("control characters or a bare CR/LF in the response head")
    lines = head.split(b"\r\n")
    line = lines[0]
    if len(line) < 12 or line[:7] != b"HTTP/1." or line[7] not in b"01" or line[8:9] != b" ":
        raise ProtocolError(f"invalid status line {line[:40]!r}")
    code = line[9:12]
    if not code.isdigit() or (len(line) > 12 and line[12:13] != b" "):
        raise ProtocolError(f"invalid status line {line[:40]!r}")
    status = int(code)
    if not 100 <= status <= 599:
        raise ProtocolError(f"invalid status code {status}")
    headers: dict[str, str] = {}
    for field in lines[1:]:
        raw_name, colon, raw_value = field.partition(b":")
        if not colon:
            raise ProtocolError(f"invalid header field {field[:40]!r}")
        name = _name(raw_name)  # a folded line starts with SP/HTAB: not a token, refused
        value = raw_value.strip(b" \t").decode("latin-1")
        previous = headers.get(name)
        headers[name] = value if previous is None else f"{previous}, {value}"
    if 100 <= status < 200:
        if status == 101:
            raise ProtocolError("101 Switching Protocols, which was not asked for")
        return _INTERIM
    connection = headers.get("connection")
    tokens = _tokens(connection) if connection is not None else []
    keep_alive = not ("close" in tokens or (line[7] == 0x30 and "keep-alive" not in tokens))  # 0x30: HTTP/1.0
    encoding = headers.get("transfer-encoding")
    length = headers.get("content-length")
    if status in NO_BODY_STATUSES:
        return _Head(status, headers, _HEAD, 0, keep_alive)
    if encoding is not None:
        codings = _tokens(encoding)
        if codings.count("chunked") > 1 or ("chunked" in codings and codings[-1] != "chunked"):
            raise ProtocolError(f"invalid transfer-encoding {encoding[:40]!r}")
        if codings[-1] == "chunked":
            # With a content-length too, the framing is in doubt: not reused after.
            return _Head(status, headers, _CHUNK_SIZE_LINE, 0, keep_alive and length is None)
        return _Head(status, headers, _UNTIL_CLOSE, 0, False)
    if length is not None:
        values = {item.strip(" \t") for item in length.split(",")}
        if len(values) != 1:
            raise ProtocolError(f"conflicting content-length {length[:40]!r}")
        (text,) = values
        if _DIGITS.fullmatch(text.encode("latin-1")) is None:
            raise ProtocolError(f"invalid content-length {length[:40]!r}")
        size = int(text)
        return _Head(status, headers, _LENGTH if size else _HEAD, size, keep_alive)
    return _Head(status, headers, _UNTIL_CLOSE, 0, False)


class ResponseParser:
    """Reads the responses of one connection; see the module doc."""

    __slots__ = (
        "_buffer",
        "_drained",
        "_head_bytes",
        "_headers",
        "_keep_alive",
        "_kept",
        "_remaining",
        "_state",
        "_status",
        "started",
    )

    def __init__(self) -> None:
        self._buffer = b""
        self._reset()

    def _reset(self) -> None:
        self._state = _HEAD
        self._remaining = 0
        self._status = 0
        self._headers: Mapping[str, str] = {}
        self._kept = b""
        self._drained = 0
        self._keep_alive = True
        self._head_bytes = 0
        # Whether any byte of the current answer arrived: a connection closed before that never
        # answered at all.
        self.started = False

    def feed(self, data: bytes) -> Response | None:
        """Take the next bytes; return the answer once it is complete, else None."""
        if data:
            self.started = True
        buffer = self._buffer + data if self._buffer else data
        self._buffer = b""
        while True:
            state = self._state
            if state == _HEAD:
                end = buffer.find(b"\r\n\r\n")
                if end < 0:
                    if len(buffer) > MAX_HEAD_BYTES:
                        raise ProtocolError(f"response head larger than {MAX_HEAD_BYTES} bytes")
                    self._buffer = buffer
                    return None
                if end > MAX_HEAD_BYTES:
                    raise ProtocolError(f"response head larger than {MAX_HEAD_BYTES} bytes")
                head, buffer = buffer[:end], buffer[end + 4 :]
                if self._head(head):
                    continue  # an interim 1xx answer: the real one follows
                if self._state == _HEAD:
                    return self._complete(buffer)  # no body
            elif state == _LENGTH:
                take = buffer[: self._remaining]
                buffer = buffer[len(take) :]
                self._remaining -= len(take)
                if self._take(take):
                    return self._complete(b"", keep_alive=False)
                if self._remaining:
                    return None
                return self._complete(buffer)
            elif state == _CHUNK_SIZE_LINE:
                end = buffer.find(b"\r\n")
                if end < 0:
                    if len(buffer) > MAX_CHUNK_LINE:
                        raise ProtocolError("chunk size line too long")
                    self._buffer = buffer
                    return None
                match = _CHUNK_SIZE.fullmatch(buffer, 0, end)
                if match is None:
                    raise ProtocolError(f"invalid chunk size line {buffer[:min(end, 40)]!r}")
                size = int(match.group(1), 16)
                buffer = buffer[end + 2 :]
                if size:
                    self._state, self._remaining = _CHUNK_DATA, size
                else:
                    self._state = _TRAILERS
            elif state == _CHUNK_DATA:
                take = buffer[: self._remaining]
                buffer = buffer[len(take) :]
                self._remaining -= len(take)
                if self._take(take):
                    return self._complete(b"", keep_alive=False)
                if self._remaining:
                    return None
                self._state = _CHUNK_END
            elif state == _CHUNK_END:
                if len(buffer) < 2:
                    self._buffer = buffer
                    return None
                if buffer[:2] != b"\r\n":
                    raise ProtocolError("chunk data not followed by CRLF")
                buffer = buffer[2:]
                self._state = _CHUNK_SIZE_LINE
            elif state == _TRAILERS:
                end = buffer.find(b"\r\n")
                if end < 0:
                    self._head_bytes += len(buffer)
                    if self._head_bytes > MAX_HEAD_BYTES:
                        raise ProtocolError(f"trailers larger than {MAX_HEAD_BYTES} bytes")
                    self._buffer = buffer
                    return None
                line, buffer = buffer[:end], buffer[end + 2 :]
                if not line:
                    return self._complete(buffer)
                self._head_bytes += end + 2
                if self._head_bytes > MAX_HEAD_BYTES:
                    raise ProtocolError(f"trailers larger than {MAX_HEAD_BYTES} bytes")
                if BAD_HEAD_BYTES.search(line) or b":" not in line:
                    raise ProtocolError(f"invalid trailer field {line[:40]!r}")
            else:  # _UNTIL_CLOSE
                if self._take(buffer):
                    return self._complete(b"", keep_alive=False)
                return None

    def feed_eof(self) -> Response:
        """The server closed the connection: the answer it completes (a body read until close),
        else :class:`ProtocolError` saying what was missing."""
        if self._state == _UNTIL_CLOSE:
            return self._complete(b"", keep_alive=False)
        if not self.started:
            raise ProtocolError("the connection was closed before any answer")
        raise ProtocolError("the connection was closed in the middle of the answer")

    def _head(self, head: bytes) -> bool:
        """Take a status line and header fields; set the body state. True for a 1xx."""
        parsed = _HEADS.get(head)
        if parsed is None:
            parsed = _parse_head(head)
            if len(head) <= _HEAD_CACHED_BYTES:
                if len(_HEADS) >= _HEADS_MAX:
                    _HEADS.clear()
                _HEADS[head] = parsed
        if parsed.interim:
            return True
        self._status = parsed.status
        self._headers = parsed.headers
        self._state = parsed.state
        self._remaining = parsed.length
        if not parsed.keep_alive:
            self._keep_alive = False
        return False

    def _take(self, data: bytes) -> bool:
        """Account for body bytes; True when the body is too large to drain."""
        if data:
            room = MAX_KEPT_BYTES - len(self._kept)
            if room > 0:
                self._kept += data[:room]
            self._drained += len(data)
        return self._drained > MAX_DRAIN_BYTES

    def _complete(self, rest: bytes, keep_alive: bool = True) -> Response:
        response = Response(
            self._status, self._headers, self._kept, self._keep_alive and keep_alive and not rest
        )
        self._reset()
        return response
