"""KafkaListener: our downstream. One aiokafka consumer with manual commits, rebalance callbacks
and partition pauses that several parts may ask for at once.

A partition is paused while any reason holds (``app_unhealthy``, ``retrying``,
``routes_behind``, ``membership_unconfirmed``); pausing rather than not polling keeps heartbeats
and rebalances going. Backpressure is not a pause: a partition whose records pile up is left out
of :meth:`KafkaListener.fetch` instead, which keeps its already-fetched records (see there).

Commits are refused once this member has lost its membership (the broker expired it, e.g.
after a network cut): its partitions are *lost*, not revoked (KIP-429), and their new owner may
have moved past what this member did. Committing then could move the group's offsets back.

Fetching is fenced while the membership is in doubt. Fetches are not tied to the group, so a
member cut off from the broker for longer than its session timeout would, the moment the
connection returns, fetch and deliver from its old position records that the partitions' new
owner has already handled, until its next heartbeat tells it it was expired. So once the group
coordinator has been unreachable for half the session timeout (before the broker can have
expired us) every partition is paused (``membership_unconfirmed``) until a heartbeat confirms the
membership or a new assignment arrives.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import CommitFailedError, KafkaError, KafkaTimeoutError
from aiokafka.structs import ConsumerRecord

from proxy import compat
from proxy.kafka import KafkaConnection
from proxy.listener.partitions import Partitions

log = logging.getLogger(__name__)

PartitionsCallback = Callable[[frozenset[TopicPartition]], Awaitable[None]]
# A commit waits this long for the group coordinator, then fails (and is retried by the next
# round): one that sat out a broker outage could go out for a generation that ended meanwhile.
DEFAULT_COMMIT_TIMEOUT = 10.0
DEFAULT_SESSION_TIMEOUT_MS = 10000  # aiokafka's
WATCH_INTERVAL = 0.1
LEAVE_TIMEOUT = 5.0
UNCONFIRMED = "membership_unconfirmed"
Batch = dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]
FETCH_TIMEOUT_MS = 500
FETCH_MAX_RECORDS = 2000
# How long a fetch waits for records while some partition is held back by backpressure: a held
# partition drains its last quarter share in tens of ms at the app's pace, so this lets it be
# fetched again before its lane runs dry.
BLOCKED_FETCH_TIMEOUT_MS = 5


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, listener: KafkaListener) -> None:
        self._listener = listener

    async def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        await self._listener._revoked(frozenset(revoked))

    async def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        await self._listener._assigned(frozenset(assigned))


class KafkaListener:
    """Consumes ``topics`` in consumer group ``group``; nothing is committed automatically."""

    def __init__(
        self,
        connection: KafkaConnection,
        *,
        group: str,
        topics: tuple[str, ...],
        on_assigned: PartitionsCallback,
        on_revoked: PartitionsCallback,
        auto_offset_reset: str = "latest",
        client_id: str = "ktp-sidecar",
        group_instance_id: str | None = None,
        consumer_options: dict[str, Any] | None = None,
        commit_timeout: float = DEFAULT_COMMIT_TIMEOUT,
    ) -> None:
        self.connection = connection
        self.commit_timeout = commit_timeout
        self.group = group
        self.topics = topics
        self.joined = False
        self._on_assigned = on_assigned
        self._on_revoked = on_revoked
        self._pauses: dict[TopicPartition, set[str]] = defaultdict(set)
        self.group_instance_id = group_instance_id
        self._consumer_kwargs: dict[str, Any] = dict(
            group_id=group,
            # Static membership (KIP-345): a member that comes back under the same instance id
            # within the session timeout gets its partitions back without a rebalance, and a
            # stopping member does not leave the group (aiokafka sends no LeaveGroup then).
            group_instance_id=group_instance_id,
            client_id=client_id,
            enable_auto_commit=False,
            auto_offset_reset=auto_offset_reset,
            **(consumer_options or {}),
        )
        self._consumer: AIOKafkaConsumer | None = None
        self._session_timeout = self._consumer_kwargs.get("session_timeout_ms", DEFAULT_SESSION_TIMEOUT_MS) / 1000
        self.fenced = False
        self._watch_task: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return (
            f"KafkaListener(group={self.group!r}, group_instance_id={self.group_instance_id!r}, "
            f"topics={self.topics!r}, joined={self.joined})"
        )

    @property
    def consumer(self) -> AIOKafkaConsumer:
        """The underlying consumer (for the listener's own use and tests; the runtime uses the
        methods below)."""
        assert self._consumer is not None, "KafkaListener.start() was not called"
        return self._consumer

    @property
    def started(self) -> bool:
        """Whether :meth:`start` has connected (the group may not be joined yet)."""
        return self._consumer is not None and self._watch_task is not None

    async def start(self) -> None:
        """Connect and join the group. A failed start leaves nothing open, so it can be retried."""
        consumer = AIOKafkaConsumer(**self.connection.client_kwargs(), **self._consumer_kwargs)
        consumer.subscribe(list(self.topics), listener=_Rebalance(self))
        # Set before start(): the group may be joined, and the rebalance callbacks run, before
        # start() returns.
        self._consumer = consumer
        try:
            await consumer.start()
        except BaseException:
            # Stop before letting go of it: the consumer's stop lets a rebalance callback that is
            # already running finish, and that callback reaches the consumer through this listener.
            await consumer.stop()
            self._consumer = None
            raise
        self._watch_task = asyncio.create_task(self._watch_membership(), name="ktp-membership")

    async def stop(self) -> None:
        """Leave the group and close. Commit before calling this."""
        if self._watch_task is not None:
            self._watch_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch_task
            self._watch_task = None
        if self._consumer is not None:
            member = self._first_generation_member()
            await self._consumer.stop()
            self._consumer = None
            if member is not None:
                await self._leave_group(member)

    def _first_generation_member(self) -> str | None:
        """This member's id when aiokafka will not send LeaveGroup for it on stop.

        aiokafka leaves only from a generation above 0 (Kafka numbers the first one 1), but the
        protocol lets a broker start at 0 (the embedded test broker does). A member that does not
        leave stays in the group until the broker expires it, and a sandbox group with a member
        is never deleted (the route service deletes groups only when seen empty)."""
        if self.group_instance_id is not None or self._consumer is None:
            return None  # static members keep their place on purpose (KIP-345)
        return compat.first_generation_member(self._consumer)

    async def _leave_group(self, member: str) -> None:
        """Send LeaveGroup for ``member`` (best effort, like aiokafka's own)."""
        from aiokafka.admin import AIOKafkaAdminClient
        from aiokafka.protocol.group import LeaveGroupRequest

        admin = AIOKafkaAdminClient(**self.connection.client_kwargs(), client_id="ktp-leave-group")
        try:
            async with asyncio.timeout(LEAVE_TIMEOUT):
                await admin.start()
                node = await admin.find_coordinator(self.group)
                await compat.send_admin_request(admin, LeaveGroupRequest(self.group, member), node)
        except (KafkaError, OSError, TimeoutError) as exc:
            log.warning("leaving group %s failed (the broker expires the member): %r", self.group, exc)
        finally:
            await admin.close()

    async def fetch(self, timeout_ms: int, max_records: int, partitions: Iterable[TopicPartition] = ()) -> Batch:
        """Records of ``partitions`` (all assigned ones when empty). Partitions left out keep
        what the Kafka client has already fetched for them, undecoded, and it fetches nothing
        more for them until that is taken: unlike a pause, which drops it to be fetched again."""
        result: Batch = await self.consumer.getmany(*partitions, timeout_ms=timeout_ms, max_records=max_records)
        return result

    async def fetch_with_room(self, partitions: Partitions, most: int) -> Batch:
        """The next records (at most ``most``) of the partitions with room for more (backpressure).

        A partition whose undone records reached its share (Partitions.check_backpressure) is
        left out of the fetch, its next records kept by the Kafka client, so memory stays bounded
        without the client dropping and fetching them again (what a pause would do). While some
        partition is left out, fetches wait briefly, so one that drains is fetched again soon;
        a wait in aiokafka's ``getmany`` cannot be cut short without leaving its bookkeeping off.
        """
        blocked = partitions.blocked
        most = min(most, partitions.room())
        if not blocked:
            return await self.fetch(FETCH_TIMEOUT_MS, most)
        fetchable = [tp for tp in self.assignment() if tp not in blocked]
        if fetchable:
            return await self.fetch(BLOCKED_FETCH_TIMEOUT_MS, most, fetchable)
        unblocked = partitions.unblocked
        unblocked.clear()
        await self.wait_for_room(unblocked.wait(), FETCH_TIMEOUT_MS / 1000)
        return {}

    async def wait_for_room(self, waiter: Awaitable[object], timeout: float) -> None:
        """Await ``waiter`` (at most ``timeout`` seconds) while every partition's records wait
        for the app, so there is nothing to fetch.

        aiokafka leaves the group when nothing asks it for records for ``max.poll.interval.ms``
        (it takes that as a consumer stuck in its processing). A sidecar whose app is slow is not
        stuck: it is waiting for room, and fetches again the moment there is some. So the wait
        counts as asking, as aiokafka counts its own waits inside ``getmany`` (its bookkeeping is
        a private context manager, reached through :mod:`proxy.compat`). The wait does not raise
        on timeout, which would leave that bookkeeping off."""
        context = compat.fetch_context(self.consumer)
        waiting = asyncio.ensure_future(waiter)
        try:
            with context:
                await asyncio.wait((waiting,), timeout=timeout)
        finally:
            waiting.cancel()

    @property
    def membership_lost(self) -> bool:
        """True once the broker no longer knows this member (aiokafka then resets the member id
        and generation, and rejoins). Before the first join there is nothing to commit anyway."""
        return compat.membership_lost(self.consumer)

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        """Commit ``offsets`` for the current generation. Raises ``CommitFailedError`` if the
        membership was lost, ``KafkaTimeoutError`` if the coordinator stays unreachable for
        ``commit_timeout`` seconds (both are retried by the caller's next round, if any)."""
        consumer = self.consumer
        try:
            async with asyncio.timeout(self.commit_timeout):
                await compat.ensure_coordinator_known(consumer)
                # No await between this check and aiokafka building the request with the
                # member's generation: the check holds for the commit sent.
                if self.membership_lost:
                    raise CommitFailedError(
                        "membership lost (the broker expired this member); the partitions' new "
                        "owner commits them"
                    )
                await consumer.commit(offsets)
        except TimeoutError as exc:
            raise KafkaTimeoutError(
                f"group coordinator not reachable within {self.commit_timeout}s"
            ) from exc

    async def committed(self, tp: TopicPartition) -> int | None:
        result: int | None = await self.consumer.committed(tp)
        return result

    async def committed_many(self, tps: Iterable[TopicPartition]) -> dict[TopicPartition, int | None]:
        """The group's committed offset of each of ``tps`` (None: nothing committed)."""
        return {tp: await self.committed(tp) for tp in tps}

    def seek(self, positions: Mapping[TopicPartition, int]) -> None:
        """Fetch each partition from the given offset next."""
        consumer = self.consumer
        for tp, offset in positions.items():
            consumer.seek(tp, offset)

    def rewind(self, batch: Batch) -> None:
        """Put a fetched batch back: each partition still assigned is fetched again from the
        batch's first record (nothing of it was tracked, so nothing of it is committed)."""
        assigned = self.assignment()
        self.seek({tp: records[0].offset for tp, records in batch.items() if records and tp in assigned})

    async def offsets_at(self, at_ms: int, tps: Iterable[TopicPartition]) -> dict[TopicPartition, int]:
        """Each partition's first offset with a timestamp at or after ``at_ms`` (its end offset
        when there is none: every record is older)."""
        tps = list(tps)
        found = await self.consumer.offsets_for_times({tp: at_ms for tp in tps})
        past_end = [tp for tp in tps if found.get(tp) is None]
        ends = await self.consumer.end_offsets(past_end) if past_end else {}
        positions: dict[TopicPartition, int] = {}
        for tp in tps:
            hit = found.get(tp)
            positions[tp] = hit.offset if hit is not None else ends[tp]
        return positions

    def assignment(self) -> frozenset[TopicPartition]:
        if self._consumer is None:
            return frozenset()
        return frozenset(self._consumer.assignment())

    def unpositioned(self) -> frozenset[TopicPartition]:
        """Assigned partitions whose fetch position is not known yet.

        The assignment callback runs before the Kafka client looks up where a partition starts
        (its committed offset, or ``auto_offset_reset``'s end of the log); a record produced
        before that look-up returns is never fetched under ``latest``. So readiness waits for
        this to be empty. aiokafka keeps the positions in its private subscription state; if that
        changes shape, :mod:`proxy.compat` fails loudly."""
        if self._consumer is None:
            return frozenset()
        return compat.unpositioned_partitions(self._consumer)

    def highwater(self, tp: TopicPartition) -> int | None:
        if self._consumer is None:
            return None
        result: int | None = self._consumer.highwater(tp)
        return result

    def pause(self, tps: Iterable[TopicPartition], reason: str) -> None:
        assigned = self.assignment()
        newly = []
        for tp in tps:
            reasons = self._pauses[tp]
            if not reasons and tp in assigned:
                newly.append(tp)
            reasons.add(reason)
        if newly:
            self.consumer.pause(*newly)

    def resume(self, tps: Iterable[TopicPartition], reason: str) -> None:
        assigned = self.assignment()
        freed = []
        for tp in tps:
            reasons = self._pauses.get(tp)
            if not reasons or reason not in reasons:
                continue
            reasons.discard(reason)
            if not reasons and tp in assigned:
                freed.append(tp)
        if freed:
            self.consumer.resume(*freed)

    def paused(self, tp: TopicPartition) -> frozenset[str]:
        return frozenset(self._pauses.get(tp, ()))

    async def _revoked(self, revoked: frozenset[TopicPartition]) -> None:
        log.info("partitions revoked: %s", _fmt(revoked))
        try:
            await self._on_revoked(revoked)
        finally:
            for tp in revoked:
                self._pauses.pop(tp, None)

    async def _watch_membership(self) -> None:
        """Fence fetching while the coordinator is unreachable; lift the fence on proof."""
        consumer = self.consumer
        unreachable_since: float | None = None
        while True:
            await asyncio.sleep(WATCH_INTERVAL)
            now = time.monotonic()
            if not compat.coordinator_known(consumer):
                unreachable_since = unreachable_since or now
                if not self.fenced and now - unreachable_since >= self._session_timeout / 2:
                    self._fence()
                continue
            unreachable_since = None
            if self.fenced and not self.membership_lost:
                # An extra heartbeat: success proves the membership; an expired member learns it
                # here (aiokafka then resets the generation and rejoins, see _assigned).
                try:
                    confirmed = await compat.heartbeat(consumer)
                except KafkaError as exc:
                    log.warning("membership check failed: %r", exc)
                    continue
                if confirmed and not self.membership_lost:
                    self._unfence("a heartbeat confirmed the membership")

    def _fence(self) -> None:
        log.warning(
            "group coordinator unreachable for %.1fs: fetching paused until the membership is confirmed",
            self._session_timeout / 2,
        )
        self.fenced = True
        self.pause(self.assignment(), UNCONFIRMED)

    def _unfence(self, why: str) -> None:
        log.info("fetching resumed: %s", why)
        self.fenced = False
        self.resume(self.assignment(), UNCONFIRMED)

    async def _assigned(self, assigned: frozenset[TopicPartition]) -> None:
        log.info("partitions assigned: %s", _fmt(assigned))
        self.joined = True
        if self.fenced:
            self._unfence("the group was joined again")
        await self._on_assigned(assigned)
        if self._consumer is None:
            return  # stopped while the assignment was being handled
        # Pauses asked for before the assignment (e.g. app unhealthy) take effect now.
        held = [tp for tp in assigned if self._pauses.get(tp)]
        if held:
            self.consumer.pause(*held)


def _fmt(tps: Iterable[TopicPartition]) -> str:
    return ", ".join(sorted(f"{tp.topic}[{tp.partition}]" for tp in tps)) or "none"
