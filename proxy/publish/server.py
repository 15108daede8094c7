"""PublishServer: ``POST /v1/publish/<topic>`` on ``--publish-addr`` (default 127.0.0.1:14001).

Lets the app produce without a Kafka client and keep the tenant without OpenTelemetry (see
:mod:`proxy.publish.request` for what a request may carry). Answers:

====  ==============================================================================
204   the broker acknowledged the record (acks=all); ``kafka-topic``, ``kafka-partition``
      and ``kafka-offset`` say where it is
400   a bad header (CR/LF/NUL, non-ASCII, bad ``kafka-key`` escape), a bad topic name, or
      a malformed HTTP request
403   an internal topic (``__*``, ``_ktp*``)
404   another path; 405 another method
413   a body over ``--publish-max-bytes`` (refused before it is read when its length is known)
422   ``ktp-delivery`` names no delivery in flight or within its grace
503   Kafka is unreachable or did not acknowledge within ``--publish-timeout``
      (with ``retry-after``); 502 when the broker refused the record for another reason
====  ==============================================================================

Errors are JSON ``{"error": "..."}``, malformed HTTP included (the listener,
:class:`proxy.httpserver.LocalHttpServer`, refuses a header with CR, LF or NUL before any
handler runs, and the answer is ours).

Nothing is acknowledged before the broker has the record, and nothing is written from a request
that was refused: every check runs before the record is handed to the producer, and a record is
only ever sent whole. On a 503 for a timeout the producer drops the record at the same deadline
(its ``request_timeout_ms`` is half the publish timeout, which bounds both the metadata wait
and the batch's life), so it is not written later behind the app's back; as with any Kafka
producer, a broker that got the record but whose answer was lost may still have it, so a retry
after a 503 is at-least-once.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time

from aiokafka import AIOKafkaProducer
from aiokafka.errors import (
    KafkaError,
    MessageSizeTooLargeError,
    TopicAuthorizationFailedError,
    UnknownTopicOrPartitionError,
)
from aiokafka.structs import RecordMetadata

from proxy.backoff import Backoff, retry_connect
from proxy.errors import PublishError
from proxy.httpserver import BodyTooLarge, HttpError, LocalHttpServer, Request, Response
from proxy.kafka import KafkaConnection
from proxy.metrics import Metrics
from proxy.delivery.contexts import DeliveryContexts
from proxy.publish.request import (
    DEFAULT_PUBLISH_MAX_BYTES,
    DEFAULT_PUBLISH_TIMEOUT,
    PublishRecord,
    PublishRules,
    topic_from_path,
)
from proxy.telemetry.tracing import SidecarTracing

log = logging.getLogger(__name__)

CONNECT_RETRY_INITIAL = 0.5
CONNECT_RETRY_MAX = 10.0
# Room for the record's key and headers on top of the value in one produce request.
RECORD_OVERHEAD = 64 * 1024


def error_response(error: PublishError) -> Response:
    """The JSON answer to a refused request."""
    response = Response(
        error.status, json.dumps({"error": str(error)}).encode(), {"content-type": "application/json; charset=utf-8"}
    )
    if error.retriable:
        response.headers["retry-after"] = "1"
    return response


class KafkaPublisher:
    """The producer behind the publish endpoint: acks=all, bounded waits, connects in the
    background (and keeps reconnecting on its own once connected)."""

    def __init__(
        self,
        connection: KafkaConnection,
        *,
        timeout: float = DEFAULT_PUBLISH_TIMEOUT,
        max_bytes: int = DEFAULT_PUBLISH_MAX_BYTES,
        client_id: str = "ktp-publish",
    ) -> None:
        self.connection = connection
        self.timeout = timeout
        self.max_bytes = max_bytes
        self.client_id = client_id
        self._producer: AIOKafkaProducer | None = None
        self._connecting: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return f"KafkaPublisher(timeout={self.timeout}, connected={self.connected})"

    @property
    def connected(self) -> bool:
        return self._producer is not None

    async def start(self) -> None:
        """Start connecting; returns at once. Requests meanwhile are answered 503."""
        self._connecting = asyncio.create_task(self._connect(), name="ktp-publish-connect")

    async def _connect(self) -> None:
        self._producer = await retry_connect(
            self._connect_once, backoff=Backoff(CONNECT_RETRY_INITIAL, CONNECT_RETRY_MAX), failed=self._connect_failed
        )

    async def _connect_once(self) -> AIOKafkaProducer:
        producer = AIOKafkaProducer(
            **self.connection.client_kwargs(),
            acks="all",
            client_id=self.client_id,
            linger_ms=0,
            # Half the publish timeout bounds the metadata wait and, separately, the life of
            # the batch: a record the endpoint gave up on is dropped, not written later.
            # (No idempotence: an idempotent producer never expires a batch.)
            request_timeout_ms=max(int(self.timeout * 1000 / 2), 1),
            max_request_size=self.max_bytes + RECORD_OVERHEAD,
        )
        try:
            await producer.start()
        except BaseException:
            await producer.stop()
            raise
        return producer

    async def _connect_failed(self, exc: Exception, delay: float) -> None:
        # Any failed connect is retried, not only a KafkaError: aiokafka 0.14 raises
        # KeyError on a SCRAM refusal it cannot parse (see Sidecar._connect_kafka).
        log.warning(
            "publish: Kafka at %s not reachable (%r); retrying in %.1fs",
            self.connection.bootstrap_servers, exc, delay,
            exc_info=not isinstance(exc, (KafkaError, OSError)),
        )

    async def stop(self) -> None:
        """Stop connecting; flush and close the producer."""
        if self._connecting is not None:
            self._connecting.cancel()
            try:
                await self._connecting
            except asyncio.CancelledError:
                pass
            self._connecting = None
        if self._producer is not None:
            producer, self._producer = self._producer, None
            await producer.stop()

    async def send(self, record: PublishRecord, headers: list[tuple[str, bytes]]) -> RecordMetadata:
        """Write one record and wait for the broker's acknowledgement, at most ``timeout``."""
        producer = self._producer
        if producer is None:
            raise PublishError(
                503, "broker_unavailable",
                f"not connected to Kafka at {self.connection.bootstrap_servers} yet; retry",
                retriable=True,
            )
        try:
            async with asyncio.timeout(self.timeout):
                acked = await producer.send(record.topic, record.value, key=record.key, headers=headers)
                return await acked
        except TimeoutError as exc:
            raise PublishError(
                503, "broker_timeout",
                f"Kafka did not acknowledge the record within {self.timeout}s; it was not "
                "written, retry",
                retriable=True,
            ) from exc
        except MessageSizeTooLargeError as exc:
            raise PublishError(413, "too_large", f"the broker refused the record as too large: {exc}") from exc
        except TopicAuthorizationFailedError as exc:
            raise PublishError(403, "forbidden_topic", f"not authorized to write to {record.topic!r}") from exc
        except UnknownTopicOrPartitionError as exc:
            # Also what the producer says when Kafka is down and it never saw the topic.
            raise PublishError(
                503, "unknown_topic",
                f"no partitions of {record.topic!r} known within {self.timeout}s: the topic does "
                "not exist (and the broker does not create topics) or Kafka is unreachable",
                retriable=True,
            ) from exc
        except KafkaError as exc:
            if exc.retriable:
                raise PublishError(
                    503, "broker_unavailable", f"Kafka did not take the record: {exc!r}; retry", retriable=True
                ) from exc
            raise PublishError(502, "broker_rejected", f"Kafka refused the record: {exc!r}") from exc


class PublishServer:
    """The publish endpoint of one sidecar: HTTP listener and Kafka producer."""

    def __init__(
        self,
        addr: tuple[str, int],
        *,
        rules: PublishRules,
        publisher: KafkaPublisher,
        contexts: DeliveryContexts,
        tracing: SidecarTracing,
        metrics: Metrics,
    ) -> None:
        self.host, self.port = addr
        self.rules = rules
        self.publisher = publisher
        self.contexts = contexts
        self.tracing = tracing
        self.metrics = metrics
        # Handlers may wait up to the publish timeout for Kafka; stopping lets them finish.
        self._listener = LocalHttpServer(
            addr, self._handle, name="publish", on_malformed=self._malformed,
            shutdown_timeout=publisher.timeout + 1,
        )

    def __repr__(self) -> str:
        return f"PublishServer(addr={self.host}:{self.port}, publisher={self.publisher!r})"

    @property
    def url(self) -> str:
        """Base URL of the endpoint: ``<url>/<topic>``."""
        return f"http://{self.host}:{self.port}/v1/publish"

    async def start(self) -> None:
        await self.publisher.start()
        await self._listener.start()
        self.port = self._listener.port

    async def stop(self) -> None:
        """Stop taking requests, let those in progress finish, then flush the producer."""
        await self._listener.stop()
        await self.publisher.stop()

    async def __aenter__(self) -> PublishServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def _malformed(self, error: HttpError) -> Response:
        """The answer to a request the listener could not parse (the connection then closes)."""
        log.info("publish: malformed HTTP request refused: %s", error)
        refused = PublishError(error.status, "malformed_request", f"malformed HTTP request: {str(error)[:300]}")
        self.metrics.publish_requests.labels(refused.reason).inc()
        return error_response(refused)

    async def _handle(self, request: Request) -> Response:
        started = time.perf_counter()
        try:
            response = await self._publish(request)
            outcome = "ok"
        except PublishError as error:
            outcome = error.reason
            response = error_response(error)
            if error.status == 405:
                response.headers["allow"] = "POST"
            if error.status == 413 or not request.body_read:
                # The body was not read: the connection cannot carry another request.
                response.close = True
            log.log(
                logging.WARNING if error.status >= 500 else logging.INFO,
                "publish %s %s refused (%d %s): %s",
                request.method, request.path[:200], error.status, error.reason, error,
            )
        self.metrics.publish_requests.labels(outcome).inc()
        self.metrics.publish_duration.observe(time.perf_counter() - started)
        return response

    async def _publish(self, request: Request) -> Response:
        path = request.path
        topic = topic_from_path(path)
        if request.method != "POST":
            raise PublishError(405, "method_not_allowed", f"use POST {path[:200]}, not {request.method}")
        try:
            body = await request.read(self.publisher.max_bytes)
        except BodyTooLarge as exc:
            raise PublishError(413, "too_large", str(exc)) from exc
        except HttpError as exc:
            raise PublishError(exc.status, "malformed_request", f"malformed HTTP request: {exc}") from exc
        headers = request.headers
        record = self.rules.parse(topic, headers, body, self.contexts.get, request.get_all)
        span = None
        if self.tracing.enabled:
            span = self.tracing.start_send(topic, record.context, record.key, len(body))
        try:
            written = await self.publisher.send(record, record.kafka_headers())
        except PublishError as error:
            if span is not None:
                SidecarTracing.end_send(span, None, None, error.reason)
            raise
        if span is not None:
            SidecarTracing.end_send(span, written.partition, written.offset, None)
        return Response(
            204,
            headers={
                "kafka-topic": topic,
                "kafka-partition": str(written.partition),
                "kafka-offset": str(written.offset),
            },
        )
