"""Every private API of a dependency the package uses, in one place.

aiokafka keeps no promise about names that start with ``_``. Each one we
rely on is reached only through a function here, and ``tests/unit/test_compat.py`` checks each
against the installed version, so an upgrade that removes or renames one fails the suite, not a
running sidecar (a silent fallback would, for example, let a sidecar waiting for a slow app
leave its group after ``max.poll.interval.ms``).

What each is for:

- the consumer's group coordinator (``AIOKafkaConsumer._coordinator``): the member's generation
  and id (is the membership still ours?), the coordinator's id (reachable?), making sure the
  coordinator is known before a commit, and one extra heartbeat to prove the membership after
  an outage. aiokafka has no public view of any of these.
- the consumer's fetch bookkeeping (``_subscription.fetch_context()``): a wait for room in the
  app counts as asking for records, as aiokafka's own waits inside ``getmany`` do.
- the consumer's assignment state (``_subscription.subscription.assignment``): whether every
  assigned partition has a fetch position yet (readiness waits for it).
- the coordinator's generation and member id on stop: aiokafka sends LeaveGroup only from
  generation 1 up; a broker that numbers the first generation 0 needs ours.
- ``AIOKafkaAdminClient._send_request``: DeleteGroups and LeaveGroup, which aiokafka's admin
  client lacks.
- the consumer's client (``AIOKafkaConsumer._client.send``): when each Fetch was sent and the high
  watermark it was answered with, which the routes reader turns into "complete through the send
  time" without a request of its own. aiokafka keeps only the answer's time.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any, cast

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient


class CompatError(RuntimeError):
    """An installed dependency no longer offers a private API this package relies on."""


def _missing(owner: str, name: str) -> CompatError:
    return CompatError(
        f"{owner} has no {name}: the installed version changed a private API kafka-tenant-proxy "
        "relies on (see proxy/compat.py)"
    )


# -- aiokafka: the consumer's group coordinator --------------------------------------------------


def group_coordinator(consumer: AIOKafkaConsumer) -> Any | None:
    """The consumer's group coordinator, or None before ``start()`` (or without a group)."""
    try:
        return consumer._coordinator
    except AttributeError:
        raise _missing("AIOKafkaConsumer", "_coordinator") from None


def membership_lost(consumer: AIOKafkaConsumer) -> bool:
    """True when the consumer holds no membership: no coordinator yet, or aiokafka reset the
    generation and member id after the broker expired this member."""
    coordinator = group_coordinator(consumer)
    if coordinator is None:
        return True
    try:
        return bool(coordinator.generation < 0 or not coordinator.member_id)
    except AttributeError as exc:
        raise _missing("aiokafka's GroupCoordinator", str(exc.name)) from None


def coordinator_known(consumer: AIOKafkaConsumer) -> bool:
    """Whether the consumer currently knows (and so can reach) its group coordinator."""
    coordinator = group_coordinator(consumer)
    if coordinator is None:
        return False
    try:
        return coordinator.coordinator_id is not None
    except AttributeError:
        raise _missing("aiokafka's GroupCoordinator", "coordinator_id") from None


async def ensure_coordinator_known(consumer: AIOKafkaConsumer) -> None:
    """Wait until the group coordinator is found (aiokafka retries the lookup itself)."""
    coordinator = group_coordinator(consumer)
    if coordinator is None:
        raise CompatError("the consumer has no group coordinator (not started, or no group_id)")
    try:
        ensure = coordinator.ensure_coordinator_known
    except AttributeError:
        raise _missing("aiokafka's GroupCoordinator", "ensure_coordinator_known") from None
    await ensure()


async def heartbeat(consumer: AIOKafkaConsumer) -> bool:
    """Send one heartbeat now; True when the broker confirmed the membership."""
    coordinator = group_coordinator(consumer)
    if coordinator is None:
        return False
    try:
        do_heartbeat = coordinator._do_heartbeat
    except AttributeError:
        raise _missing("aiokafka's GroupCoordinator", "_do_heartbeat") from None
    return bool(await do_heartbeat())


def first_generation_member(consumer: AIOKafkaConsumer) -> str | None:
    """The member id when the consumer is a member of generation 0 (aiokafka will not send
    LeaveGroup for it on stop), else None."""
    coordinator = group_coordinator(consumer)
    if coordinator is None:
        return None
    try:
        member: str = coordinator.member_id or ""
        return member if coordinator.generation == 0 and member else None
    except AttributeError as exc:
        raise _missing("aiokafka's GroupCoordinator", str(exc.name)) from None


# -- aiokafka: fetch bookkeeping -----------------------------------------------------------------


def unpositioned_partitions(consumer: AIOKafkaConsumer) -> frozenset[TopicPartition]:
    """Assigned partitions whose fetch position aiokafka has not looked up yet (empty when
    nothing is assigned)."""
    try:
        assignment = consumer._subscription.subscription
        assignment = assignment.assignment if assignment is not None else None
        if assignment is None:
            return frozenset()
        return frozenset(tp for tp in assignment.tps if not assignment.state_value(tp).has_valid_position)
    except AttributeError as exc:
        raise _missing("AIOKafkaConsumer", f"_subscription.subscription.assignment ({exc.name})") from None


def fetch_context(consumer: AIOKafkaConsumer) -> contextlib.AbstractContextManager[object]:
    """aiokafka's "the application is asking for records" context (it resets the
    ``max.poll.interval.ms`` clock while entered)."""
    try:
        subscription = consumer._subscription
        context = subscription.fetch_context
    except AttributeError as exc:
        raise _missing("AIOKafkaConsumer", f"_subscription.fetch_context ({exc.name})") from None
    return cast("contextlib.AbstractContextManager[object]", context())


# -- aiokafka: fetch answers ---------------------------------------------------------------------

_FETCH_API_KEY = 1
FetchAnswer = list[tuple[str, int, int, int]]
"""One Fetch answer's partitions: ``(topic, partition, error_code, high watermark)``."""


def observe_fetches(
    consumer: AIOKafkaConsumer, on_answer: Callable[[int, FetchAnswer], None], clock: Callable[[], int]
) -> None:
    """Call ``on_answer(sent_at, partitions)`` for every Fetch the (started) consumer sends, with
    ``clock()`` read just before it was sent. An answer of an unexpected shape is passed on
    unobserved."""
    client = getattr(consumer, "_client", None)
    send = getattr(client, "send", None)
    if client is None or send is None:
        raise _missing("AIOKafkaConsumer", "_client.send")

    async def observed(node_id: Any, request: Any, *args: Any, **kwargs: Any) -> Any:
        if getattr(request, "API_KEY", None) != _FETCH_API_KEY:
            return await send(node_id, request, *args, **kwargs)
        sent_at = clock()
        response = await send(node_id, request, *args, **kwargs)
        try:
            answer = [
                (str(topic), int(number), int(error_code), int(highwater))
                for topic, partitions in response.topics
                for number, error_code, highwater, *_ in partitions
            ]
        except (AttributeError, TypeError, ValueError):
            return response
        on_answer(sent_at, answer)
        return response

    client.send = observed


# -- aiokafka: admin requests --------------------------------------------------------------------


async def send_admin_request(admin: AIOKafkaAdminClient, request: Any, node_id: int) -> Any:
    """Send a protocol request the admin client has no method for to broker ``node_id``."""
    try:
        send = admin._send_request
    except AttributeError:
        raise _missing("AIOKafkaAdminClient", "_send_request") from None
    return await send(request, node_id)
