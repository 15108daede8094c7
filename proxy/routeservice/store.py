"""The route service's store: the routes topic, and a cache rebuilt by reading it.

The service keeps no state of its own. Every replica reads the routes topic from the beginning
(:class:`~proxy.routes.topic.RoutesTopicReader`) into a cache of each tenant's latest
record plus a bounded changelog for watchers, and writes by producing to the topic. So any number
of replicas serve one table, and a restart loses nothing the broker acknowledged.

Consistency, replica by replica:

- a write is answered only once the broker acknowledged it (``acks=all``), with the record's
  offset as its version; the replica then waits (bounded) until it has read that offset itself;
- every read first catches up with the topic (one ListOffsets round trip when nothing is new), so
  a read on *any* replica sees every write answered before it began;
- before a write the replica catches up too, so it stamps ``effective_from`` after the tenant's
  previous change (:class:`~proxy.routes.records.EffectiveTimes`) and answers DELETE of an
  absent tenant with 404 from current data;
- a write takes effect ``route_lead_ms`` after it is stamped (or later, to honour a larger lead
  other writers stated, :mod:`proxy.routes.lead`); the record states that lead and its write
  time, so readers learn what they may rely on from the data itself.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from proxy.errors import BrokerError
from proxy.kafka import KafkaConnection
from proxy.routes.records import RouteRecord, encode_value
from proxy.routes.catchup import now_ms
from proxy.routes.lead import DEFAULT_LEAD_MARGIN_MS, DEFAULT_ROUTE_LEAD_MS
from proxy.routes.topic import (
    DEFAULT_FETCH_MAX_WAIT_MS,
    DEFAULT_ROUTES_TOPIC,
    RoutesTopicReader,
)

log = logging.getLogger(__name__)

# Records kept for watchers asking "what changed since version N". A watcher further behind gets
# the latest record of each tenant changed since N instead (``snapshot``), which loses only
# intermediate history it could not have read from the compacted topic either.
DEFAULT_CHANGELOG_SIZE = 10_000
DEFAULT_WRITE_TIMEOUT = 10.0


@dataclass(frozen=True, slots=True)
class Changes:
    """Answer to a watch: records with a version above ``since``, in version order.

    ``version``: every record up to it is included (the cursor for the next watch).
    ``synced_at_ms``: route writes acknowledged before this time are included.
    ``snapshot``: the changelog no longer reached back to ``since``; ``records`` holds the latest
    record of each changed tenant, not every intermediate change.
    """

    records: list[RouteRecord]
    version: int
    synced_at_ms: int
    snapshot: bool


class RouteStore:
    """Tenants' routes, stored in the routes topic, served from a cache that follows it."""

    def __init__(
        self,
        connection: KafkaConnection,
        topic: str = DEFAULT_ROUTES_TOPIC,
        *,
        create_topic: bool = True,
        replication_factor: int | None = None,
        changelog_size: int = DEFAULT_CHANGELOG_SIZE,
        write_timeout: float = DEFAULT_WRITE_TIMEOUT,
        fetch_max_wait_ms: int = DEFAULT_FETCH_MAX_WAIT_MS,
        on_error: Callable[[str], None] | None = None,
        route_lead_ms: int = DEFAULT_ROUTE_LEAD_MS,
    ) -> None:
        self.connection = connection
        self.topic = topic
        self.route_lead_ms = route_lead_ms
        self.changelog_size = changelog_size
        self.write_timeout = write_timeout
        self.reader = RoutesTopicReader(
            connection,
            topic,
            on_records=self._take,
            on_error=on_error,
            create_topic=create_topic,
            replication_factor=replication_factor,
            fetch_max_wait_ms=fetch_max_wait_ms,
            client_id="ktp-route-service",
        )
        self._latest: dict[str, RouteRecord] = {}
        self._log: list[RouteRecord] = []
        self._log_versions: list[int] = []
        # Highest version dropped from the changelog; watchers at or above it get exact changes.
        self._log_floor = -1
        self._changed = asyncio.Event()
        self._producer: AIOKafkaProducer | None = None
        self._closing = False

    def __repr__(self) -> str:
        return f"RouteStore(topic={self.topic!r}, tenants={len(self)}, version={self.version}, ready={self.ready})"

    def __len__(self) -> int:
        """Live (not deleted) tenants in the cache."""
        return sum(1 for record in self._latest.values() if not record.deleted)

    @property
    def ready(self) -> bool:
        """The cache has read the whole topic once and writes can be sent."""
        return self.reader.synced and self._producer is not None

    @property
    def version(self) -> int:
        """Every record up to this version (offset) is in the cache; -1 for an empty topic."""
        return self.reader.position - 1

    async def start(self) -> None:
        """Read the routes topic up to its end (creating it if missing), then accept writes."""
        await self.reader.start()
        producer = AIOKafkaProducer(
            **self.connection.client_kwargs(),
            acks="all",
            client_id="ktp-route-service",
            request_timeout_ms=int(self.write_timeout * 1000),
        )
        await producer.start()
        self._producer = producer
        log.info("route store ready: %r", self)

    def release_watchers(self) -> None:
        """Make waiting and future watches answer at once (the service is stopping)."""
        self._closing = True
        self._changed.set()

    async def stop(self) -> None:
        self.release_watchers()
        producer, self._producer = self._producer, None
        if producer is not None:
            with contextlib.suppress(Exception):
                await producer.stop()
        await self.reader.stop()

    async def __aenter__(self) -> RouteStore:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- reads ----------------------------------------------------------------------------------

    async def catch_up(self) -> None:
        """Read every write acknowledged before this call (see the module doc)."""
        await self.reader.catch_up()

    async def get(self, tenant: str) -> RouteRecord | None:
        """The tenant's current record, or None if it was never written or is deleted."""
        await self.catch_up()
        record = self._latest.get(tenant)
        return None if record is None or record.deleted else record

    def tenant_count(self) -> int:
        """Live tenants as read so far, without catching up (cheap enough for every scrape)."""
        return sum(1 for r in self._latest.values() if not r.deleted)

    async def list_tenants(self) -> list[RouteRecord]:
        """Every live tenant's record, ordered by tenant."""
        await self.catch_up()
        return sorted((r for r in self._latest.values() if not r.deleted), key=lambda r: r.tenant)

    def changes_since(self, since: int) -> Changes:
        """Records above version ``since`` (``-1``: everything), from the cache as it is now."""
        if since >= self._log_floor:
            start = bisect.bisect_right(self._log_versions, since)
            records, snapshot = self._log[start:], False
        else:
            records = sorted((r for r in self._latest.values() if r.version > since), key=lambda r: r.version)
            snapshot = True
        return Changes(records, self.version, self.reader.synced_at_ms, snapshot)

    async def watch(self, since: int, *, wait: float = 0.0, sync: bool = False) -> Changes:
        """Changes above ``since``; with none, wait up to ``wait`` seconds for some.

        ``sync`` first catches up with the topic, so the answer holds every write acknowledged
        before the call. A ``since`` beyond the topic's end after a sync (the topic was
        recreated) gets everything, as a snapshot.
        """
        if sync:
            await self.catch_up()
            if since > self.version:
                changes = self.changes_since(-1)
                return Changes(changes.records, changes.version, changes.synced_at_ms, True)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        while True:
            changes = self.changes_since(since)
            remaining = deadline - loop.time()
            if changes.records or remaining <= 0 or self._closing:
                return changes
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(remaining):
                    await self._changed.wait()

    # -- writes ---------------------------------------------------------------------------------

    async def put(self, tenant: str, routes: Mapping[str, str]) -> RouteRecord:
        """Write ``tenant``'s routes (validated by the caller); the stored record."""
        await self.catch_up()
        return await self._write(tenant, routes, deleted=False)

    async def delete(self, tenant: str) -> RouteRecord | None:
        """Write a deletion of ``tenant``; None (nothing written) if it is absent."""
        await self.catch_up()
        current = self._latest.get(tenant)
        if current is None or current.deleted:
            return None
        return await self._write(tenant, {}, deleted=True)

    async def _write(self, tenant: str, routes: Mapping[str, str], *, deleted: bool) -> RouteRecord:
        producer = self._producer
        if producer is None:
            raise BrokerError("the route store is not started")
        written_at_ms = now_ms()
        # The global floor inside covers the tenant's own previous change too.
        effective_from_ms = max(
            self.reader.lead.effective_from_ms(self.route_lead_ms, written_at_ms),
            self.reader.effective_times.next_for(tenant, written_at_ms),
        )
        value = encode_value(
            tenant, routes, effective_from_ms, deleted=deleted, written_at_ms=written_at_ms, lead_ms=self.route_lead_ms
        )
        try:
            async with asyncio.timeout(self.write_timeout):
                metadata = await producer.send_and_wait(self.topic, value, key=tenant.encode(), partition=0)
        except (KafkaError, TimeoutError) as exc:
            # The broker may still have taken it; a PUT or DELETE is safe to repeat.
            raise BrokerError(
                f"write of tenant {tenant!r} was not acknowledged by Kafka ({exc!r}); it may or may "
                "not be stored: retry it"
            ) from exc
        offset = int(metadata.offset)
        took_ms = now_ms() - written_at_ms
        if self.route_lead_ms and took_ms > DEFAULT_LEAD_MARGIN_MS:
            # Readers rely on the lead less this margin; a slower write ate into it.
            log.warning(
                "tenant %s: write took %d ms to be acknowledged, more than the %d ms margin readers "
                "keep from the route lead", tenant, took_ms, DEFAULT_LEAD_MARGIN_MS,
            )
        if not await self.reader.wait_for(offset, self.write_timeout):
            log.warning("tenant %s written at version %d but not read back within %.0fs", tenant, offset, self.write_timeout)
        stored = self._record_at(offset)
        if stored is None:
            stored = RouteRecord(
                tenant, MappingProxyType(dict(routes)), offset, effective_from_ms, deleted, written_at_ms, self.route_lead_ms
            )
        log.info(
            "tenant %s %s at version %d, effective from %d",
            tenant,
            "deleted" if deleted else f"routed {dict(routes)}",
            offset,
            stored.effective_from_ms,
        )
        return stored

    # -- cache ----------------------------------------------------------------------------------

    def _record_at(self, version: int) -> RouteRecord | None:
        index = bisect.bisect_left(self._log_versions, version)
        if index < len(self._log_versions) and self._log_versions[index] == version:
            return self._log[index]
        return None

    def _take(self, records: list[RouteRecord]) -> None:
        for record in records:
            self._latest[record.tenant] = record
            self._log.append(record)
            self._log_versions.append(record.version)
        # Trim in chunks so that a busy topic does not shift the list on every record.
        excess = len(self._log) - self.changelog_size
        if excess > self.changelog_size // 4:
            self._log_floor = self._log_versions[excess - 1]
            del self._log[:excess]
            del self._log_versions[:excess]
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()
