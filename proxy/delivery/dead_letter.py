"""DeadLetterWriter: records the app would not take go to a dead-letter topic, intact.

The dead-letter record keeps the original value, key and every header (routing headers
included, so a replay is routed the same way) and adds ``ktp-dead-letter-*`` headers: reason,
attempts, last HTTP status, the origin topic/partition/offset/timestamp and the pod's
service/sandbox. A record counts as done only once the broker has acknowledged its dead letter.

A record the broker accepted on the origin topic may still be too large for the dead-letter topic
(a smaller ``max.message.bytes``, or a hostile producer's oversized value, which is exactly what
``--max-record-bytes`` dead-letters). Retrying that forever would stall the partition, so such a
dead letter is written once more without its value, with ``ktp-dead-letter-value-dropped: <bytes>``;
the origin headers still say where the full record is.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError, MessageSizeTooLargeError, RecordTooLargeError
from aiokafka.structs import ConsumerRecord

from proxy.backoff import Backoff
from proxy.kafka import KafkaConnection

log = logging.getLogger(__name__)

RETRY_DELAY = 0.5
RETRY_DELAY_MAX = 5.0
# Client-side cap on one dead letter: high, so that the broker's own limit for the dead-letter
# topic decides (the consumer fetched the record, so it fit the origin topic's limit).
MAX_REQUEST_BYTES = 64 * 1024 * 1024


def dead_letter_headers(
    record: ConsumerRecord[bytes, bytes],
    *,
    reason: str,
    attempts: int,
    status: int | None,
    service: str,
    sandbox: str | None,
) -> list[tuple[str, bytes]]:
    """Original headers first, in order, then ours."""
    added = [
        ("ktp-dead-letter-reason", reason),
        ("ktp-dead-letter-attempts", str(attempts)),
        ("ktp-dead-letter-status", "" if status is None else str(status)),
        ("ktp-dead-letter-topic", record.topic),
        ("ktp-dead-letter-partition", str(record.partition)),
        ("ktp-dead-letter-offset", str(record.offset)),
        ("ktp-dead-letter-timestamp", str(record.timestamp)),
        ("ktp-dead-letter-service", service),
        ("ktp-dead-letter-sandbox", sandbox or ""),
    ]
    return [*record.headers, *((name, value.encode()) for name, value in added)]


class DeadLetterWriter:
    """Writes dead letters; ``topic_for(origin_topic)`` names the dead-letter topic."""

    def __init__(
        self,
        connection: KafkaConnection,
        *,
        topic_for: Callable[[str], str | None],
        service: str,
        sandbox: str | None,
    ) -> None:
        self.connection = connection
        self.topic_for = topic_for
        self.service = service
        self.sandbox = sandbox
        self._producer: AIOKafkaProducer | None = None

    def __repr__(self) -> str:
        return f"DeadLetterWriter(service={self.service!r}, sandbox={self.sandbox!r})"

    async def start(self) -> None:
        """Connect. A failed start leaves nothing open, so it can be retried."""
        producer = AIOKafkaProducer(
            **self.connection.client_kwargs(),
            acks="all",
            client_id=f"ktp-dlq-{self.service}",
            max_request_size=MAX_REQUEST_BYTES,
        )
        try:
            await producer.start()
        except BaseException:
            await producer.stop()
            raise
        self._producer = producer

    async def stop(self) -> None:
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None

    async def write(
        self, record: ConsumerRecord[bytes, bytes], *, reason: str, attempts: int, status: int | None
    ) -> str:
        """Write ``record``'s dead letter and wait for the broker's ack; retry until it is
        written (cancel to give up). Returns the dead-letter topic."""
        topic = self.topic_for(record.topic)
        assert topic is not None and self._producer is not None
        headers = dead_letter_headers(
            record, reason=reason, attempts=attempts, status=status, service=self.service, sandbox=self.sandbox
        )
        backoff = Backoff(RETRY_DELAY, RETRY_DELAY_MAX)
        value = record.value
        while True:
            try:
                await self._producer.send_and_wait(topic, value, key=record.key, headers=headers)
                return topic
            except (MessageSizeTooLargeError, RecordTooLargeError) as exc:
                if value is None:
                    # Even without the value: nothing smaller to send. Retry (the partition shows
                    # as stalled) until the topic's limit is raised.
                    log.warning("dead letter to %s failed, retrying in %.1fs: %r", topic, backoff.delay, exc)
                    await backoff.wait()
                    continue
                log.error(
                    "dead letter of %s[%d]@%d (%d bytes) is too large for %s (%s); writing it "
                    "without its value", record.topic, record.partition, record.offset, len(value), topic, exc,
                )
                headers = [*headers, ("ktp-dead-letter-value-dropped", str(len(value)).encode())]
                value = None
            except KafkaError as exc:
                log.warning("dead letter to %s failed, retrying in %.1fs: %r", topic, backoff.delay, exc)
                await backoff.wait()
