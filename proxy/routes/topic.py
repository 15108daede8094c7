"""``kafka:`` / ``kafka:<topic>`` route source: read the routes topic directly (the default).

The routes topic (``_ktp_routes`` unless named) has one partition, so its offsets are one global
order of route writes, and is compacted, so it keeps the last record of every tenant forever
(deletions are JSON records, not tombstones: see :mod:`proxy.routes.records`).

:class:`RoutesTopicReader` reads it from the beginning with manual assignment (no consumer group:
nothing to join, nothing to commit, every reader sees every record) and follows it. The same
reader backs the route service's cache (:mod:`proxy.routeservice.store`) and
:class:`KafkaRouteSource`, the sidecar's table.

Completeness, the property decisions rely on: ``synced_at_ms`` is a wall-clock time T such that
every route write the broker acknowledged before T is in the table. The reader learns it from its
own fetches: a fetch sent at T answers with the partition's high watermark as of a moment after
T, so once the reader has read up to that watermark it is complete through T. Following the topic
thus keeps ``synced_at_ms`` within about one fetch wait of the clock, with no request of its own.
An explicit sync (at start, and on demand through :meth:`RoutesTopicReader.catch_up`) takes T,
asks the broker for the end offset on a connection of its own (the follower's connection is often
parked in a long-poll fetch, and a broker answers one connection's requests in order), and waits
until the follower has consumed up to it.

``covered_until_ms`` adds the route lead the writers state (:mod:`proxy.routes.lead`): no route
missing from the table takes effect before it, so a record up to then needs no round trip. A
write the route service has stamped but the broker has not yet acknowledged is invisible to every
sync; the lead's margin is what covers it (and a reader's clock ahead of the route service's).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import heapq
import itertools
import logging
import re
from collections.abc import Callable
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import KafkaError

from proxy import compat
from proxy.backoff import Backoff, retry_connect
from proxy.errors import BrokerError, ConfigError, RouteError, RouteSourceError
from proxy.kafka import KafkaConnection
from proxy.routes.records import EffectiveTimes, RouteRecord, decode_record
from proxy.routes.catchup import CatchUp, now_ms
from proxy.routes.lead import DEFAULT_LEAD_MARGIN_MS, LeadTracker

log = logging.getLogger(__name__)

DEFAULT_ROUTES_TOPIC = "_ktp_routes"
# Kafka's long-poll bound. A broker answers a parked fetch as soon as data arrives, so this only
# sets how often an idle reader polls; brokers that do not wake parked fetches (Tansu, as measured)
# answer after the full wait, which then bounds route propagation. The routes topic is tiny, so a
# short wait costs little.
DEFAULT_FETCH_MAX_WAIT_MS = 100
DEFAULT_SYNC_INTERVAL = 1.0
DEFAULT_CATCH_UP_TIMEOUT = 10.0
DEFAULT_REPLICATION_FACTOR_CAP = 3
RETRY_INITIAL = 0.2
RETRY_MAX = 5.0
_POLL_TIMEOUT_MS = 1000
# Fetch answers whose high watermark the reader has not reached yet; beyond this many the oldest
# are dropped, which only delays what the reader may claim.
_PENDING_WATERMARKS_MAX = 256
_TOPIC_NAME = re.compile(r"^[a-zA-Z0-9._-]{1,249}$")
# Kafka error codes we expect from CreateTopics.
_TOPIC_ALREADY_EXISTS = 36
_TOPIC_AUTHORIZATION_FAILED = 29
_CLUSTER_AUTHORIZATION_FAILED = 31


def check_topic_name(topic: str) -> str:
    """Validate a Kafka topic name (``[a-zA-Z0-9._-]``, 1-249 characters)."""
    if not _TOPIC_NAME.match(topic) or topic in (".", ".."):
        raise ConfigError(f"routes topic {topic!r} is not a valid Kafka topic name: use 1-249 of a-z A-Z 0-9 . _ -")
    return topic


async def ensure_routes_topic(
    connection: KafkaConnection,
    topic: str,
    *,
    create: bool = True,
    replication_factor: int | None = None,
    purpose: str = "routes topic",
) -> None:
    """Create the routes topic if it is missing (1 partition, ``cleanup.policy=compact``) and check
    an existing one.

    Creation comes first, before anything asks for the topic's metadata: brokers with topic
    auto-creation would otherwise create it on that request with their defaults (several
    partitions, ``delete`` policy). ``replication_factor`` None means ``min(3, brokers)``.

    ``purpose`` names the topic in messages (the sandbox-group registry uses the same checks).

    Raises :class:`ConfigError` for a topic that cannot serve as the routes topic (more than one
    partition, or a cleanup policy without ``compact``), :class:`BrokerError` when Kafka cannot
    be reached or refuses.
    """
    admin = AIOKafkaAdminClient(**connection.client_kwargs(), client_id="ktp-routes-admin")
    try:
        await admin.start()
        if create:
            if replication_factor is None:
                brokers = (await admin.describe_cluster()).get("brokers") or [None]
                replication_factor = min(DEFAULT_REPLICATION_FACTOR_CAP, len(brokers))
            response = await admin.create_topics(
                [NewTopic(topic, 1, replication_factor, topic_configs={"cleanup.policy": "compact"})]
            )
            for _, code, message in response.topic_errors:
                if code == 0:
                    log.info("created %s %s (1 partition, compacted, replication %d)", purpose, topic, replication_factor)
                elif code in (_TOPIC_AUTHORIZATION_FAILED, _CLUSTER_AUTHORIZATION_FAILED):
                    # Not ours to create; an operator may have created it. Checked below.
                    log.warning("not allowed to create %s %s; expecting it to exist", purpose, topic)
                elif code != _TOPIC_ALREADY_EXISTS:
                    raise BrokerError(f"cannot create {purpose} {topic!r}: error {code}: {message}")
        described = (await admin.describe_topics([topic]) or [{}])[0]
        if described.get("error_code"):
            raise BrokerError(f"cannot describe {purpose} {topic!r}: error {described['error_code']}")
        partitions = described.get("partitions") or []
        if len(partitions) != 1:
            raise ConfigError(
                f"{purpose} {topic!r} has {len(partitions)} partitions; it must have exactly 1 so that "
                "writes have one order: recreate it with 1 partition and cleanup.policy=compact"
            )
        _check_cleanup_policy(
            topic, await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)])
        )
    except KafkaError as exc:
        raise BrokerError(f"cannot set up {purpose} {topic!r} on {connection.bootstrap_servers}: {exc}") from exc
    finally:
        await admin.close()


def _check_cleanup_policy(topic: str, responses: list[Any]) -> None:
    for response in responses:
        # DescribeConfigs resource: (error_code, error_message, type, name, entries); an entry
        # starts with (name, value, ...).
        for resource in response.resources:
            if resource[0]:
                log.warning("cannot read the configs of routes topic %s: error %s", topic, resource[0])
                return
            for entry in resource[4]:
                if entry[0] == "cleanup.policy":
                    if "compact" not in str(entry[1]).split(","):
                        raise ConfigError(
                            f"routes topic {topic!r} has cleanup.policy={entry[1]}: retention would delete "
                            "routes; set cleanup.policy=compact on it"
                        )
                    return
    # Apache Kafka reports every config, defaults included; some brokers report only what was set.
    log.warning("broker did not report cleanup.policy of routes topic %s; it must be compact", topic)


class RoutesTopicReader:
    """Reads the routes topic from the beginning, then follows it, handing decoded records to
    ``on_records`` in offset order (with effective times made strictly increasing per tenant,
    :class:`~proxy.routes.records.EffectiveTimes`).

    ``start()`` returns once the first sync is done (``synced``), retrying while Kafka cannot be
    reached; it raises :class:`ConfigError` for an unusable topic.
    """

    def __init__(
        self,
        connection: KafkaConnection,
        topic: str = DEFAULT_ROUTES_TOPIC,
        *,
        on_records: Callable[[list[RouteRecord]], None],
        on_error: Callable[[str], None] | None = None,
        create_topic: bool = True,
        replication_factor: int | None = None,
        fetch_max_wait_ms: int = DEFAULT_FETCH_MAX_WAIT_MS,
        sync_interval: float = DEFAULT_SYNC_INTERVAL,
        catch_up_timeout: float = DEFAULT_CATCH_UP_TIMEOUT,
        client_id: str = "ktp-routes",
        lead_margin_ms: int = DEFAULT_LEAD_MARGIN_MS,
    ) -> None:
        self.connection = connection
        self.topic = check_topic_name(topic)
        self.create_topic = create_topic
        self.replication_factor = replication_factor
        self.fetch_max_wait_ms = fetch_max_wait_ms
        self.sync_interval = sync_interval
        self.catch_up_timeout = catch_up_timeout
        self.client_id = client_id
        self.effective_times = EffectiveTimes()
        #: The lead the topic's writers state, learnt from the records read.
        self.lead = LeadTracker()
        self.lead_margin_ms = lead_margin_ms
        #: True while completeness is learnt from the follower's own fetches.
        self.fetch_completeness = False
        #: Requests this reader sent the routes topic's leader: ``fetch``, ``list_offsets``.
        self.requests: collections.Counter[str] = collections.Counter()
        self._pending_watermarks: collections.deque[tuple[int, int]] = collections.deque(
            maxlen=_PENDING_WATERMARKS_MAX
        )
        #: Next offset to read: every record below it has been handed to ``on_records``.
        self.position = 0
        self.synced = False
        self._on_records = on_records
        self._on_error = on_error
        self._tp = TopicPartition(topic, 0)
        self._follower: AIOKafkaConsumer | None = None
        self._offsets: AIOKafkaConsumer | None = None
        self._catch_up = CatchUp(self._sync, lead_ms=self.lead.lead_ms, margin_ms=lead_margin_ms)
        #: Catch-ups asked for by :meth:`catch_up`, by reason (``ktp_route_catch_ups_total``).
        self.catch_ups = self._catch_up.catch_ups
        self._waiters: list[tuple[int, int, asyncio.Future[None]]] = []
        self._waiter_ids = itertools.count()
        self._task: asyncio.Task[None] | None = None
        self._synced_event = asyncio.Event()

    def __repr__(self) -> str:
        return (
            f"RoutesTopicReader(topic={self.topic!r}, position={self.position}, synced={self.synced}, "
            f"synced_at_ms={self.synced_at_ms})"
        )

    @property
    def synced_at_ms(self) -> int:
        """Wall-clock time (ms) before which every acknowledged route write has been read."""
        return self._catch_up.synced_at_ms

    @property
    def covered_until_ms(self) -> int:
        """Time through which no route missing from what was read can take effect."""
        return self._catch_up.covered_until_ms

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"ktp-routes-reader-{self.topic}")
        synced = asyncio.create_task(self._synced_event.wait())
        try:
            await asyncio.wait({self._task, synced}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            synced.cancel()
        if self._task.done():
            self._task.result()  # raises what stopped it (ConfigError)
            raise RouteSourceError(f"routes reader for {self.topic!r} stopped before its first sync")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._catch_up.cancel()
        for _, _, future in self._waiters:
            if not future.done():
                future.set_exception(RouteSourceError(f"routes reader for {self.topic!r} stopped"))
        self._waiters.clear()
        await self._close_clients()

    async def catch_up(self, at_ms: int | None = None) -> None:
        """Return once every route write acknowledged before this call has been read.

        With ``at_ms`` (a record's timestamp), return at once if no route missing from what was
        read can take effect by then (:attr:`covered_until_ms`); otherwise the catch-up is
        counted in :attr:`catch_ups` by reason. Concurrent calls share syncs. Raises
        :class:`RouteSourceError` when the topic cannot be reached within ``catch_up_timeout``.
        """
        if self._offsets is None:
            raise RouteSourceError(f"routes reader for {self.topic!r} is not connected")
        await self._catch_up(at_ms)

    async def wait_for(self, offset: int, timeout: float) -> bool:
        """Wait until the record at ``offset`` has been read; False if ``timeout`` passed first."""
        try:
            async with asyncio.timeout(timeout):
                await self._wait_position(offset + 1)
        except TimeoutError:
            return False
        return True

    # -- internals ------------------------------------------------------------------------------

    async def _run(self) -> None:
        await self._connect()
        follower = asyncio.create_task(self._follow(), name=f"ktp-routes-follow-{self.topic}")
        try:
            backoff = Backoff(RETRY_INITIAL, RETRY_MAX)
            while not self.synced:
                try:
                    await self._catch_up(counted=False)
                except RouteSourceError as exc:
                    self._report(
                        f"routes topic {self.topic!r}: first sync failed, retrying in {backoff.delay:.1f}s: {exc}"
                    )
                    await backoff.wait()
                    continue
                self.synced = True
                self._synced_event.set()
                log.info("routes topic %s read up to offset %d", self.topic, self.position)
            while True:
                await asyncio.sleep(self.sync_interval)
                if self.fetch_completeness:
                    continue  # the follower's fetches keep completeness fresh
                try:
                    await self._catch_up(counted=False)
                except RouteSourceError as exc:
                    self._report(str(exc))
        finally:
            follower.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await follower

    async def _connect(self) -> None:
        # A wrong setting (e.g. the routes topic's partitions) does not heal by retrying.
        await retry_connect(
            self._connect_once,
            backoff=Backoff(RETRY_INITIAL, RETRY_MAX),
            failed=self._connect_failed,
            fatal=(ConfigError,),
        )

    async def _connect_once(self) -> None:
        await ensure_routes_topic(
            self.connection,
            self.topic,
            create=self.create_topic,
            replication_factor=self.replication_factor,
        )
        kwargs = self.connection.client_kwargs()
        follower = AIOKafkaConsumer(
            **kwargs,
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            fetch_max_wait_ms=self.fetch_max_wait_ms,
            client_id=self.client_id,
        )
        offsets = AIOKafkaConsumer(**kwargs, group_id=None, enable_auto_commit=False, client_id=self.client_id)
        self._follower, self._offsets = follower, offsets
        await follower.start()
        await offsets.start()
        follower.assign([self._tp])
        await follower.seek_to_beginning(self._tp)
        self.fetch_completeness = self._watch_fetches(follower)

    async def _connect_failed(self, exc: Exception, delay: float) -> None:
        # Any failed connect is retried, not only a KafkaError: aiokafka 0.14 raises
        # KeyError on a SCRAM refusal it cannot parse (see Sidecar._connect_kafka).
        await self._close_clients()
        if not isinstance(exc, (BrokerError, KafkaError, OSError)):
            log.warning("routes topic %s: unexpected error while connecting", self.topic, exc_info=True)
        self._report(
            f"routes topic {self.topic!r} on {self.connection.bootstrap_servers} unreachable, "
            f"retrying in {delay:.1f}s: {exc!r}"
        )

    async def _close_clients(self) -> None:
        for client in (self._follower, self._offsets):
            if client is not None:
                with contextlib.suppress(Exception):
                    await client.stop()
        self._follower = self._offsets = None

    async def _follow(self) -> None:
        follower = self._follower
        assert follower is not None
        backoff = Backoff(RETRY_INITIAL, RETRY_MAX)
        while True:
            try:
                batch = await follower.getmany(self._tp, timeout_ms=_POLL_TIMEOUT_MS)
                position = await follower.position(self._tp)
                self._take(batch.get(self._tp, ()), position)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if not isinstance(exc, KafkaError):
                    log.exception("routes topic %s: unexpected error while following", self.topic)
                self._report(f"reading routes topic {self.topic!r} failed, retrying in {backoff.delay:.1f}s: {exc!r}")
                await backoff.wait()
                continue
            backoff.reset()

    def _watch_fetches(self, follower: AIOKafkaConsumer) -> bool:
        """Note each fetch's send time and the high watermark it answered with, so that reading
        up to that watermark proves completeness through the send time (module doc). aiokafka
        offers no hook for it (:func:`proxy.compat.observe_fetches`); without one, the periodic
        sync (one ListOffsets every ``sync_interval``) keeps completeness instead."""
        topic, partition = self._tp.topic, self._tp.partition

        def on_answer(sent_ms: int, answer: compat.FetchAnswer) -> None:
            self.requests["fetch"] += 1
            for name, number, error_code, highwater in answer:
                if name == topic and number == partition and error_code == 0:
                    self._fetched_watermark(highwater, sent_ms)

        try:
            compat.observe_fetches(follower, on_answer, now_ms)
        except compat.CompatError as exc:
            log.warning("routes topic %s: %s; syncing every %.1fs instead", self.topic, exc, self.sync_interval)
            return False
        return True

    def _fetched_watermark(self, highwater: int, sent_ms: int) -> None:
        if highwater <= self.position:
            self._catch_up.advance(sent_ms)
        else:
            self._pending_watermarks.append((highwater, sent_ms))

    def _take(self, messages: Any, position: int) -> None:
        records = []
        for message in messages:
            try:
                record = decode_record(message.key, message.value, message.offset, message.timestamp)
            except RouteError as exc:
                self._report(f"routes topic {self.topic!r}: skipping bad record: {exc}")
                continue
            record = self.effective_times.adjust(record)
            self.lead.observe(record.lead_ms, record.written_at_ms, record.effective_from_ms)
            records.append(record)
        if records:
            self._on_records(records)
        self.position = max(self.position, position)
        pending = self._pending_watermarks
        while pending and pending[0][0] <= self.position:
            self._catch_up.advance(pending.popleft()[1])
        self._wake_waiters()

    async def _sync(self) -> int:
        offsets = self._offsets
        if offsets is None:
            raise RouteSourceError(f"routes reader for {self.topic!r} is not connected")
        started_ms = now_ms()
        self.requests["list_offsets"] += 1
        try:
            async with asyncio.timeout(self.catch_up_timeout):
                end = (await offsets.end_offsets([self._tp]))[self._tp]
                await self._wait_position(end)
        except TimeoutError as exc:
            raise RouteSourceError(
                f"routes topic {self.topic!r}: not caught up within {self.catch_up_timeout:.0f}s"
            ) from exc
        except KafkaError as exc:
            raise RouteSourceError(f"routes topic {self.topic!r}: cannot read its end offset: {exc}") from exc
        return started_ms

    async def _wait_position(self, position: int) -> None:
        if self.position >= position:
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiters, (position, next(self._waiter_ids), future))
        await future

    def _wake_waiters(self) -> None:
        while self._waiters and self._waiters[0][0] <= self.position:
            _, _, future = heapq.heappop(self._waiters)
            if not future.done():
                future.set_result(None)

    def _report(self, message: str) -> None:
        log.warning("%s", message)
        if self._on_error is not None:
            self._on_error(message)
