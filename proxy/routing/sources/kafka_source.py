"""``kafka:`` / ``kafka:<topic>`` route source: the sidecar's table, kept by reading the routes
topic directly (the default) with :class:`~proxy.routes.topic.RoutesTopicReader`."""

from __future__ import annotations

import collections
from collections.abc import Callable

from proxy.kafka import KafkaConnection
from proxy.routes.records import RouteRecord
from proxy.routes.table import RouteTable
from proxy.routes.topic import (
    DEFAULT_CATCH_UP_TIMEOUT,
    DEFAULT_FETCH_MAX_WAIT_MS,
    DEFAULT_ROUTES_TOPIC,
    DEFAULT_SYNC_INTERVAL,
    RoutesTopicReader,
)


class KafkaRouteSource:
    """The sidecar's table, kept by reading the routes topic (``--routes kafka:[<topic>]``).

    Every record becomes a :class:`~proxy.routes.table.Route` at its effective time (a deletion
    is a route with no services), so the table keeps each tenant's history and decides records
    at their own time. ``start()`` returns once the table is synced.
    """

    def __init__(
        self,
        connection: KafkaConnection,
        topic: str = DEFAULT_ROUTES_TOPIC,
        *,
        table: RouteTable | None = None,
        on_error: Callable[[str], None] | None = None,
        create_topic: bool = True,
        fetch_max_wait_ms: int = DEFAULT_FETCH_MAX_WAIT_MS,
        sync_interval: float = DEFAULT_SYNC_INTERVAL,
        catch_up_timeout: float = DEFAULT_CATCH_UP_TIMEOUT,
        client_id: str = "ktp-sidecar-routes",
    ) -> None:
        self.table = table if table is not None else RouteTable()
        self.reader = RoutesTopicReader(
            connection,
            topic,
            on_records=self._apply,
            on_error=on_error,
            create_topic=create_topic,
            fetch_max_wait_ms=fetch_max_wait_ms,
            sync_interval=sync_interval,
            catch_up_timeout=catch_up_timeout,
            client_id=client_id,
        )

    def __repr__(self) -> str:
        return f"KafkaRouteSource(topic={self.reader.topic!r}, table={self.table!r})"

    def describe(self) -> str:
        return f"kafka:{self.reader.topic}"

    @property
    def synced_at_ms(self) -> int:
        """Wall-clock time (ms) before which every acknowledged route write is in the table."""
        return self.reader.synced_at_ms

    @property
    def covered_until_ms(self) -> int:
        """Time through which no route missing from the table can take effect (sync time plus
        the writers' lead, less a margin): records up to it are decided without a round trip."""
        return self.reader.covered_until_ms

    @property
    def catch_ups(self) -> collections.Counter[str]:
        """Catch-ups asked for by records the table did not cover, by reason."""
        return self.reader.catch_ups

    async def start(self) -> None:
        await self.reader.start()
        self.table.synced = True

    async def stop(self) -> None:
        await self.reader.stop()

    async def __aenter__(self) -> KafkaRouteSource:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def catch_up(self, at_ms: int | None = None) -> None:
        """Return once the table includes every route written to the topic before this call.

        Cheap when nothing was written since the last sync (one ListOffsets round trip), and
        shared by concurrent callers. With ``at_ms`` (a record's timestamp), return at once when
        the table already covers it (:attr:`covered_until_ms`). Raises :class:`RouteSourceError` when the topic
        cannot be reached in time; the table keeps what it has.
        """
        await self.reader.catch_up(at_ms)

    def _apply(self, records: list[RouteRecord]) -> None:
        for record in records:
            self.table.apply(record.to_route())
