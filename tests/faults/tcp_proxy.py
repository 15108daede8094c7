"""A TCP proxy on 127.0.0.1 in front of a Kafka broker that can cut some clients off.

``cut(clients)`` resets every open connection of those clients (both ends see a reset, as when a
network path goes away) and resets their new ones at once until ``heal()``; other clients go on.
A connection belongs to the client named by the ``client_id`` of its first request (every
Kafka request header carries it). Clients learn of the cut at once instead of after a request
timeout, so the test spends its time in the cut, not in timeouts.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
from collections.abc import Callable, Collection

from proxy.testing.broker import free_port

CHUNK = 65536


class TcpProxy:
    """Forwards ``127.0.0.1:port`` to ``127.0.0.1:target_port``."""

    def __init__(self, target_port: int, port: int | None = None) -> None:
        self.target_port = target_port
        self.port = port or free_port()
        self.cut_off: frozenset[str] = frozenset()
        self.accepted = 0
        self.reset_during_cut = 0
        self._server: asyncio.Server | None = None
        # (downstream, upstream) -> client_id
        self._connections: dict[tuple[asyncio.StreamWriter, asyncio.StreamWriter], str] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def __repr__(self) -> str:
        return f"TcpProxy(127.0.0.1:{self.port} -> 127.0.0.1:{self.target_port}, cut_off={sorted(self.cut_off)})"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        self._reset(lambda _: True)
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    async def __aenter__(self) -> TcpProxy:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def cut(self, clients: Collection[str]) -> None:
        """Cut off the clients with these ``client_id`` values."""
        self.cut_off = frozenset(clients)
        self._reset(lambda client: client in self.cut_off)

    def heal(self) -> None:
        self.cut_off = frozenset()

    def clients(self) -> set[str]:
        """client_id of every open connection."""
        return set(self._connections.values())

    def _reset(self, which: Callable[[str], bool]) -> None:
        for pair, client in list(self._connections.items()):
            if which(client):
                del self._connections[pair]
                for end in pair:
                    end.transport.abort()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            first = await reader.readexactly(4)
            first += await reader.readexactly(struct.unpack(">i", first)[0])
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.transport.abort()
            return
        client = client_id(first)
        if client in self.cut_off:
            self.reset_during_cut += 1
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.transport.abort()
            return
        if client in self.cut_off:  # cut while connecting
            up_writer.transport.abort()
            writer.transport.abort()
            return
        self.accepted += 1
        pair = (writer, up_writer)
        self._connections[pair] = client
        up_writer.write(first)
        for source, sink in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.create_task(self._pipe(source, sink, pair))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pipe(
        self,
        source: asyncio.StreamReader,
        sink: asyncio.StreamWriter,
        pair: tuple[asyncio.StreamWriter, asyncio.StreamWriter],
    ) -> None:
        try:
            while data := await source.read(CHUNK):
                sink.write(data)
                await sink.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            # Kafka never half-closes: when one side goes, the connection is over.
            self._connections.pop(pair, None)
            for end in pair:
                with contextlib.suppress(Exception):
                    end.close()


def client_id(frame: bytes) -> str:
    """The client_id of a Kafka request: size, api_key, api_version, correlation_id, then the
    client_id as a nullable int16-length string in every request header version."""
    (length,) = struct.unpack_from(">h", frame, 12)
    return "" if length < 0 else frame[14 : 14 + length].decode("utf-8", "replace")
