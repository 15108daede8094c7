"""AppConnection: one keep-alive HTTP/1.1 connection to the app, on an asyncio Protocol.

One request at a time: every request is written at once by :meth:`AppConnection.send`, which returns
a future of the answer, which :meth:`data_received` completes through the
:class:`~proxy.upstream.response.ResponseParser`. No stream reader, no task: an answer costs one
future and a parse.

The deadline of a request is watched by one timer per connection that is armed lazily: a request
only writes its deadline down, and the timer, when it fires, either times out the request it
finds overdue or re-arms itself for the current deadline. Deadlines of successive requests only
grow, so the timer fires at most about once per timeout period, not once per request.
"""

from __future__ import annotations

import asyncio

from proxy.upstream.response import MAX_KEPT_BYTES, ProtocolError, Response, ResponseParser

# Up to this size the head and the body are joined and written at once; past it, the body is
# handed to the transport as it is, rather than copied.
SINGLE_WRITE_BYTES = 64 * 1024


class ConnectionClosed(ConnectionError):
    """The connection ended before the answer was complete. The request may have reached the
    app."""


class AppConnection(asyncio.Protocol):
    """A client connection; see the module doc. Made by ``loop.create_connection``."""

    __slots__ = (
        "_deadline",
        "_loop",
        "_parser",
        "_timer",
        "_transport",
        "_waiter",
        "closed",
        "idle_since",
        "lost",
        "reusable",
    )

    def __init__(self, loop: asyncio.AbstractEventLoop, max_kept: int = MAX_KEPT_BYTES) -> None:
        self._loop = loop
        self._transport: asyncio.Transport | None = None
        self._parser = ResponseParser(max_kept)
        self._waiter: asyncio.Future[Response] | None = None
        self._deadline = 0.0
        self._timer: asyncio.TimerHandle | None = None
        # closed: the transport is gone. reusable: it may carry another request.
        self.closed = False
        self.reusable = True
        self.idle_since = 0.0
        self.lost: asyncio.Future[None] = loop.create_future()

    def __repr__(self) -> str:
        state = "closed" if self.closed else ("busy" if self._waiter is not None else "idle")
        return f"AppConnection({state}, reusable={self.reusable})"

    @property
    def usable(self) -> bool:
        """Whether a request may be written: open, reusable and not answering another one. A
        connection the server closed while it sat idle in the pool is not (its end was read)."""
        return self.reusable and not self.closed and self._waiter is None

    def send(self, head: bytes, body: bytes, deadline: float) -> asyncio.Future[Response]:
        """Write one request and return the future of its answer, failed with
        :class:`TimeoutError` at ``deadline`` (loop time), :class:`ConnectionClosed` or
        :class:`ProtocolError`. Only on a :attr:`usable` connection."""
        # usable, spelled out (a property call per delivery otherwise)
        assert self._transport is not None and self.reusable and not self.closed and self._waiter is None
        waiter: asyncio.Future[Response] = self._loop.create_future()
        self._waiter = waiter
        self._deadline = deadline
        if len(body) <= SINGLE_WRITE_BYTES:
            self._transport.write(head + body)  # one write, one segment for a small record
        else:
            self._transport.writelines((head, body))  # no copy of a large value
        if self._timer is None:
            self._timer = self._loop.call_at(deadline, self._on_timer)
        return waiter

    def close(self) -> None:
        """Close the connection; an answer still awaited fails."""
        self.reusable = False
        if self._transport is not None and not self.closed:
            self._transport.close()

    def abort(self) -> None:
        """Drop the connection at once (the request was given up: its answer is not wanted)."""
        self.reusable = False
        if self._transport is not None and not self.closed:
            self._transport.abort()

    def _on_timer(self) -> None:
        self._timer = None
        waiter = self._waiter
        if waiter is None or self.closed:
            return
        if self._loop.time() >= self._deadline:
            self._fail(TimeoutError("no answer before the deadline"))
            self.abort()
        else:
            self._timer = self._loop.call_at(self._deadline, self._on_timer)

    def _fail(self, exc: BaseException) -> None:
        waiter, self._waiter = self._waiter, None
        self.reusable = False
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)

    # -- asyncio.Protocol ------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        waiter = self._waiter
        if waiter is None:
            # Bytes nobody asked for: whatever the server thinks it is answering, the next
            # answer read here could be the wrong one.
            self.close()
            return
        try:
            response = self._parser.feed(data)
        except ProtocolError as exc:
            self._fail(exc)
            self.abort()
            return
        if response is not None:
            self._waiter = None
            if not response.keep_alive:
                self.close()
            if not waiter.done():
                waiter.set_result(response)

    def eof_received(self) -> bool:
        self.reusable = False
        if self._waiter is not None:
            try:
                response = self._parser.feed_eof()
            except ProtocolError as exc:
                self._fail(ConnectionClosed(f"the app closed the connection: {exc}"))
            else:
                waiter, self._waiter = self._waiter, None
                if not waiter.done():
                    waiter.set_result(response)
        return False  # let the transport close itself

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.reusable = False
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._waiter is not None:
            why = f": {exc}" if exc is not None else ""
            self._fail(ConnectionClosed(f"the connection to the app was lost{why}"))
        if not self.lost.done():
            self.lost.set_result(None)
