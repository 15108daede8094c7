"""The app's HTTP/1.1 answers, read from a byte stream. Pure logic, no I/O.

:class:`ResponseParser` reads the responses of one connection, one request at a time (the sidecar
never pipelines): feed it the bytes as they arrive, and it returns the :class:`Response` once the
whole answer is in. The bytes are parsed by llhttp (through httptools, as uvicorn does); on top
of it we keep our own rules (RFC 9112):

- status line ``HTTP/1.x NNN reason`` with a status from 100 to 599; interim ``1xx`` answers are
  skipped (``101`` is an error: we never ask to switch protocols);
- header fields ``name: value``, names as RFC 9110 tokens, values without controls other than
  HTAB; obsolete line folding is an error; at most :data:`~proxy.http1.MAX_HEADER_FIELDS` fields
  and :data:`~proxy.http1.MAX_HEAD_BYTES` of head (and as much again of trailers);
- the body: none for ``1xx``, ``204`` and ``304``; ``Transfer-Encoding`` ending in ``chunked``
  (once: ``chunked`` applied twice is an error; trailers read and ignored), or any other
  ``Transfer-Encoding`` read until the server closes; a single ``Content-Length``, else until
  the server closes;
- whether the connection may carry another request: not after ``Connection: close``, an HTTP/1.0
  answer without ``Connection: keep-alive``, a body read until close, a message with both
  ``Transfer-Encoding`` and ``Content-Length`` (a smuggling pattern, RFC 9112 section 6.3: read
  as chunked, then the connection is dropped), bytes beyond the answer (other than empty lines,
  which RFC 9112 section 2.2 lets a reader skip), or a body too large to be worth draining.

Only the first :data:`MAX_KEPT_BYTES` of a body are kept (enough for a Dapr-style ``{"status":
...}``); up to :data:`MAX_DRAIN_BYTES` more are read and dropped so that the connection can be
reused, and past that the answer is complete with what was kept and the connection is not reused.
Anything malformed raises :class:`ProtocolError` and the connection is not used again.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

import httptools

from proxy.http1 import MAX_HEAD_BYTES, MAX_HEADER_FIELDS, NO_BODY_STATUSES, tokens

MAX_KEPT_BYTES = 4096
MAX_DRAIN_BYTES = 1024 * 1024


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


class _DrainLimit(Exception):
    """Raised from the body callback to stop llhttp once the body is past :data:`MAX_DRAIN_BYTES`."""


# How a body is framed, from its fields: the connection may be reused after the first two.
_LENGTH, _CHUNKED, _CHUNKED_AND_LENGTH, _UNTIL_CLOSE = range(4)


def _read_fields(fields: list[tuple[bytes, bytes]]) -> tuple[dict[str, str], int]:
    """A head's fields as a mapping (lower-case names, repeated values joined with ``", "``),
    and its body's framing. Raises :class:`ProtocolError` past our limits."""
    if len(fields) > MAX_HEADER_FIELDS:
        raise ProtocolError(f"more than {MAX_HEADER_FIELDS} header fields")
    headers: dict[str, str] = {}
    size = 0
    for name, value in fields:
        size += len(name) + len(value)
        key = name.decode("ascii").lower()  # llhttp let only a token through
        text = value.rstrip(b" \t").decode("latin-1")  # llhttp strips leading whitespace only
        previous = headers.get(key)
        headers[key] = text if previous is None else f"{previous}, {text}"
    if size > MAX_HEAD_BYTES:
        raise ProtocolError(f"response head larger than {MAX_HEAD_BYTES} bytes")
    encoding = headers.get("transfer-encoding")
    if encoding is None:
        return headers, _LENGTH if "content-length" in headers else _UNTIL_CLOSE
    codings = tokens(encoding)
    # llhttp takes chunked twice, or chunked before another coding as read until close.
    if codings.count("chunked") > 1 or ("chunked" in codings and codings[-1] != "chunked"):
        raise ProtocolError(f"invalid transfer-encoding {encoding[:40]!r}")
    if codings[-1] != "chunked":
        return headers, _UNTIL_CLOSE
    return headers, _CHUNKED_AND_LENGTH if "content-length" in headers else _CHUNKED


class ResponseParser:
    """Reads the responses of one connection; see the module doc.

    The ``on_*`` methods are llhttp's callbacks (httptools calls them from ``feed_data``); an
    exception raised in one stops the parse and comes back as the ``__context__`` of httptools'
    ``HttpParserCallbackError``, which :meth:`feed` unwraps.
    """

    __slots__ = (
        "_answer",
        "_beyond",
        "_drained",
        "_fields",
        "_headers",
        "_keep_alive",
        "_kept",
        "_last_fields",
        "_last_head",
        "_parser",
        "_max_kept",
        "_pending",
        "_repeat_answer",
        "_repeat_data",
        "_status",
        "_until_close",
        "started",
    )

    def __init__(self, max_kept: int = MAX_KEPT_BYTES) -> None:
        # The first max_kept bytes of a body are kept (more for an app answering bulks).
        self._max_kept = max_kept
        self._parser = httptools.HttpResponseParser(self)
        # Without this, llhttp refuses an answer with both Transfer-Encoding and Content-Length;
        # we read it as chunked (RFC 9112 section 6.3) and then drop the connection, as before.
        self._parser.set_dangerous_leniencies(lenient_chunked_length=True)
        self._last_fields: list[tuple[bytes, bytes]] = []
        self._last_head: tuple[dict[str, str], int] = ({}, _UNTIL_CLOSE)
        # The bytes of the last answer read whole in one feed from a fresh start, and that answer
        # (feed's shortcut); b"" is never a whole answer.
        self._repeat_data = b""
        self._repeat_answer: Response | None = None
        self._reset()

    def _reset(self) -> None:
        self._answer: Response | None = None
        self._beyond = False
        self._status = 0
        self._headers: dict[str, str] = {}
        self._fields: list[tuple[bytes, bytes]] = []
        # Bytes fed since the last head, chunk line or body bytes: what llhttp may be holding in
        # a field it has not finished, bounded so a head without end cannot grow without limit.
        self._pending = 0
        self._kept = b""
        self._drained = 0
        self._until_close = False
        self._keep_alive = True
        # Whether any byte of the current answer arrived: a connection closed before that never
        # answered at all.
        self.started = False

    def feed(self, data: bytes) -> Response | None:
        """Take the next bytes; return the answer once it is complete, else None."""
        if not self.started:
            # An app answers a connection's deliveries with the same bytes (an empty 200, or the
            # same Dapr-style JSON): when the last answer was exactly the bytes of one feed, from
            # a fresh start to a reusable end, the same bytes from the same fresh start parse to
            # the same answer and leave llhttp where it is now. Compared in C, not parsed again.
            if data == self._repeat_data:
                return self._repeat_answer
            fresh = True
        else:
            fresh = False
        if data:
            self.started = True
            self._pending += len(data)
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            if isinstance(exc.__context__, _DrainLimit) or self._answer is not None:
                # Too large to drain, or bytes beyond the answer that are not an answer: the
                # answer stands, the connection is not reused.
                return self._complete(keep_alive=False)
            if isinstance(exc.__context__, ProtocolError):
                raise exc.__context__ from None
            raise ProtocolError(f"invalid response: {exc}") from None
        if self._answer is not None:
            answer = self._complete(keep_alive=not self._beyond)
            if fresh and answer.keep_alive:
                self._repeat_data, self._repeat_answer = data, answer
            return answer
        if self._pending > MAX_HEAD_BYTES:
            raise ProtocolError(f"response head or trailers larger than {MAX_HEAD_BYTES} bytes")
        return None

    def feed_eof(self) -> Response:
        """The server closed the connection: the answer it completes (a body read until close),
        else :class:`ProtocolError` saying what was missing."""
        if self._until_close and self._answer is None:
            self.on_message_complete()
            return self._complete(keep_alive=False)
        if not self.started:
            raise ProtocolError("the connection was closed before any answer")
        raise ProtocolError("the connection was closed in the middle of the answer")

    def _complete(self, keep_alive: bool) -> Response:
        answer = self._answer
        if answer is None:  # stopped in the body: what was kept is the answer
            answer = Response(self._status, self._headers, self._kept, False)
        elif not keep_alive:
            answer = answer._replace(keep_alive=False)
        self._reset()
        return answer

    # -- llhttp's callbacks ---------------------------------------------------------------------

    def on_message_begin(self) -> None:
        """A new message starts: after a complete answer, that is bytes beyond it."""
        if self._answer is not None:
            self._beyond = True

    def on_header(self, name: bytes, value: bytes) -> None:
        """One header field, or after the head one trailer field (kept until the answer ends,
        then dropped). Only collected: a call per field is the hot path, the checks are done
        once per head, and :meth:`feed` bounds what an unfinished head holds."""
        self._fields.append((name, value))

    def on_headers_complete(self) -> None:
        """The head is in: check the status, read the fields, decide on keep-alive."""
        parser = self._parser
        status = parser.get_status_code()
        if status == 101:
            raise ProtocolError("101 Switching Protocols, which was not asked for")
        if not 100 <= status <= 599:
            raise ProtocolError(f"invalid status code {status}")
        self._status = status
        fields = self._fields
        self._fields = []  # from here on: trailers
        self._pending = 0
        if status < 200:
            return  # interim: llhttp ends it here, the real answer follows
        # An app answers a connection's deliveries with the same fields (or fields that change
        # once a second, with a Date): compared in C, they are read once. The mapping is shared
        # between those answers, read-only.
        if fields != self._last_fields:
            self._last_head = _read_fields(fields)
            self._last_fields = fields
        self._headers, framing = self._last_head
        if status in NO_BODY_STATUSES:
            framing = _LENGTH
        self._until_close = framing == _UNTIL_CLOSE
        # llhttp's keep-alive (Connection, HTTP/1.0) is only right while the head is current.
        # With both framings the connection is in doubt, and a body read until close ends it.
        self._keep_alive = parser.should_keep_alive() and framing <= _CHUNKED

    def on_chunk_header(self) -> None:
        """A chunk-size line was read: what llhttp held is no longer pending."""
        self._pending = 0

    def on_body(self, body: bytes) -> None:
        """Body bytes: keep the first ``max_kept`` (:data:`MAX_KEPT_BYTES`), stop past :data:`MAX_DRAIN_BYTES`."""
        # Clamped: in the feed that ends the head, the body's bytes were not counted as pending.
        self._pending = max(0, self._pending - len(body))
        room = self._max_kept - len(self._kept)
        if room > 0:
            self._kept += body[:room]
        self._drained += len(body)
        if self._drained > MAX_DRAIN_BYTES:
            raise _DrainLimit

    def on_message_complete(self) -> None:
        """The message is whole: an interim one is forgotten, a final one is the answer."""
        if self._status < 200:
            return
        self._answer = Response(self._status, self._headers, self._kept, self._keep_alive)
