"""The sidecar runtime: wires listener → route filter → dispatcher → app, plus admin and metrics.

Lifecycle (uvicorn's shape): :meth:`Sidecar.start` brings the parts up (servers first, so probes
answer while the rest starts), :meth:`Sidecar.run` is the fetch loop, :meth:`Sidecar.stop`
drains: stop fetching, let queued deliveries finish within ``drain_timeout``, abandon the rest,
commit what is done, leave the group. :meth:`Sidecar.serve` does all three and handles signals.
"""

from __future__ import annotations

import asyncio
import collections
import gc
import logging
import operator
import signal
import time
from typing import Any

from aiokafka import TopicPartition
from aiokafka.errors import KafkaError
from aiokafka.structs import ConsumerRecord
from opentelemetry.trace import TracerProvider

from proxy.admin.decisions import RecentDecisions
from proxy.admin.server import HttpServer, admin_routes, metrics_routes
from proxy.backoff import Backoff, retry_connect
from proxy.delivery.bulk import answer_bytes as bulk_answer_bytes
from proxy.delivery.bulk_lane import BulkDelivery
from proxy.delivery.dead_letter import DeadLetterWriter
from proxy.delivery.dispatcher import Dispatcher
from proxy.delivery.envelope import DeliveryEnvelope
from proxy.delivery.headers import forwarded_header_names
from proxy.delivery.policy import RetryPolicy
from proxy.kafka import client_ssl_context
from proxy.errors import BrokerError, ConfigError
from proxy.listener.kafka import FETCH_MAX_RECORDS, Batch, KafkaListener, PartitionsCallback
from proxy.listener.partitions import Partitions, PartitionState
from proxy.listener.start_position import committed_offsets, position_new_sandbox_group
from proxy.logthrottle import LogThrottle, held_back
from proxy.metrics import Metrics
from proxy.routeservice.groups import SandboxGroup, register_sandbox_group
from proxy.routing.filter import Decided, RouteFilter
from proxy.routing.sources import CatchUpRouteSource, RouteSource, create_route_source
from proxy.routes.catchup import now_ms
from proxy.routes.table import RouteHistory
from proxy.routing.tenant import BAGGAGE_HEADER, TenantExtractor
from proxy.sidecar.config import SidecarConfig
from proxy.sidecar.readiness import Readiness
from proxy.sidecar.gauges import PartitionGauges
from proxy.sidecar.context_parts import ContextParts, build_context_parts
from proxy.sidecar.routes_gate import ROUTES_BEHIND, RoutesGate
from proxy.upstream.health import AppHealth
from proxy.upstream.http import HttpUpstream

log = logging.getLogger(__name__)

# Seconds between two log lines about unreadable baggage on one topic (the metric counts each).
BAD_BAGGAGE_LOG_INTERVAL = 10.0

# One fetch response's bytes (aiokafka's default is 50 MiB). The records of a response sit in the
# sidecar's memory until delivered, so this bounds its footprint; 1 MiB is ~3,000 records of
# 200 bytes, more than a fetch round trip's worth at the rates one app takes. Brokers that ignore
# the per-partition limit (Tansu) honour this one.
FETCH_MAX_BYTES = 1024 * 1024
REVOKE_TIMEOUT = 5.0
KAFKA_RETRY_INITIAL = 0.5
KAFKA_RETRY_MAX = 10.0
# Route history older than what the partitions may still bring is dropped this often.
ROUTE_PRUNE_INTERVAL = 60.0
_OFFSET = operator.attrgetter("offset")


def freeze_startup_objects() -> None:
    """Move everything start-up made (modules, config, clients, tables) out of the garbage
    collector's sight. A process runs for days on these objects, and every full collection
    would scan them again: 20-48 ms pauses every few seconds on the deliver path, 0.4 ms after
    (benchmarks, latency section). Once per process, by :meth:`Sidecar.serve`.

    The young generation keeps CPython's threshold: at 20,000 a bulk run counted 2.8% fewer
    instructions per record, but every 10 s latency run then had a collection of 4-15 ms."""
    gc.collect()
    gc.freeze()


__all__ = ["FETCH_MAX_RECORDS", "Sidecar", "committed_offsets", "freeze_startup_objects"]


def group_listener(
    config: SidecarConfig, *, on_assigned: PartitionsCallback, on_revoked: PartitionsCallback
) -> KafkaListener:
    """The consumer group member of ``config``'s service (and sandbox)."""
    return KafkaListener(
        config.kafka,
        group=config.consumer_group,
        topics=config.topics,
        on_assigned=on_assigned,
        on_revoked=on_revoked,
        auto_offset_reset=config.auto_offset_reset,
        client_id=f"ktp-{config.service}" + (f"-{config.sandbox}" if config.sandbox else ""),
        group_instance_id=config.instance_id,
        consumer_options={
            "session_timeout_ms": int(config.session_timeout * 1000),
            # Kafka's rule of thumb: heartbeat at most a third of the session timeout.
            "heartbeat_interval_ms": int(min(3.0, config.session_timeout / 3) * 1000),
            "fetch_max_bytes": FETCH_MAX_BYTES,
        },
    )


def dead_letter_writer(config: SidecarConfig) -> DeadLetterWriter | None:
    """The dead-letter producer, or None when dead letters are off."""
    if config.dead_letter_template is None:
        return None
    return DeadLetterWriter(
        config.kafka,
        topic_for=config.dead_letter_topic_for,
        service=config.service,
        sandbox=config.sandbox,
    )


def retry_policy(config: SidecarConfig) -> RetryPolicy:
    """Delivery retries as configured (attempts, backoff bounds)."""
    return RetryPolicy(max_attempts=config.max_attempts, initial=config.backoff_initial, maximum=config.backoff_max)


def bulk_delivery(
    config: SidecarConfig,
    upstream: HttpUpstream,
    health: AppHealth,
    metrics: Metrics,
    parts: ContextParts,
) -> BulkDelivery | None:
    """The lanes' bulk delivery when ``--bulk-max-records`` is set, else None."""
    if not config.bulk_max_records:
        return None
    return BulkDelivery(
        max_records=config.bulk_max_records,
        max_wait=config.bulk_max_wait,
        upstream=upstream,
        health=health,
        policy=retry_policy(config),
        metrics=metrics,
        max_record_bytes=config.max_record_bytes,
        # Entries carry their CloudEvents attributes in the event, not in the metadata.
        envelope=DeliveryEnvelope(contexts=parts.contexts, tracing=parts.tracing, service=config.service),
        cloudevents_format=config.format == "cloudevents",
        service=config.service,
    )


def admin_server(sidecar: Sidecar) -> HttpServer:
    """The admin listener (``--admin-addr``): probes, the route table, decisions, config."""
    routes = admin_routes(
        readiness=sidecar.readiness,
        routes=sidecar.routes_view,
        decisions=sidecar.decisions,
        detail=sidecar.readiness_detail,
        reasons=lambda: sidecar.ready.reasons(),
        config=sidecar.config.redacted,
    )
    return HttpServer(sidecar.config.admin_addr, routes, name="admin")


class Sidecar:
    """One sidecar: a consumer group member that forwards its pod's records to the app."""

    def __init__(
        self,
        config: SidecarConfig,
        *,
        route_source: RouteSource | None = None,
        metrics: Metrics | None = None,
        tracer_provider: TracerProvider | None = None,
    ) -> None:
        self.config = config
        config.kafka.client_kwargs()  # unusable TLS/SASL files: one line now, not retried forever
        self.metrics = metrics or Metrics()
        self.route_source = route_source or create_route_source(
            config.routes,
            on_error=lambda message: self.ready.route_source_failed(message),
            connection=config.kafka,
            token_file=config.routes_token_file,
            cafile=config.routes_cafile,
        )
        self.table = self.route_source.table
        self.extractor = TenantExtractor(config.tenant_key)
        self.filter = RouteFilter(config.service, config.sandbox, self.table, self.extractor)
        app_tls = client_ssl_context(config.app_cafile, "--app-cafile") if config.app_cafile else None
        self.health = AppHealth(
            config.app_url,
            health_url=config.app_health_url,
            on_change=self._app_health_changed,
            ssl_context=app_tls,
        )
        self.upstream = HttpUpstream(
            config.app_url,
            timeout=config.app_timeout,
            max_connections=config.app_concurrency,
            token=config.app_token(),
            ssl_context=app_tls,
            max_answer_bytes=bulk_answer_bytes(config.bulk_max_records),
        )
        self.dead_letters = dead_letter_writer(config)
        self.listener = group_listener(config, on_assigned=self._assigned, on_revoked=self._revoked)
        self.partitions = Partitions()
        # kafka: and http: sources can be brought up to date on demand; file: cannot.
        source = self.route_source
        self.routes_gate = (
            RoutesGate(source, self.extractor, self.listener, self.metrics)
            if isinstance(source, CatchUpRouteSource)
            else None
        )
        if self.routes_gate is not None:
            self.metrics.track_route_catch_ups(self.routes_gate.source.catch_ups)
        # Publish endpoint, ktp-delivery contexts, CloudEvents, propagators, spans.
        self.context_parts = build_context_parts(config, self.metrics, tracer_provider=tracer_provider)
        self.bulk = bulk_delivery(config, self.upstream, self.health, self.metrics, self.context_parts)
        self.dispatcher = Dispatcher(
            upstream=self.upstream,
            health=self.health,
            listener=self.listener,
            policy=retry_policy(config),
            dead_letters=self.dead_letters,
            metrics=self.metrics,
            forwarded_headers=forwarded_header_names(extra=config.forward_headers),
            tenant_key=config.tenant_key,
            ordering=config.ordering,
            max_in_flight=config.app_concurrency,
            max_record_bytes=config.max_record_bytes,
            envelope=self.context_parts.delivery,
            partitions=self.partitions,
            bulk=self.bulk,
        )
        self.admin = admin_server(self)
        self.metrics_server = HttpServer(config.metrics_addr, metrics_routes(self._render_metrics), name="metrics")
        self.gauges = PartitionGauges(self.metrics, self.listener, self.partitions, self.table, config.stall_timeout)
        self.route_history = RouteHistory(self.table)
        self._recent = RecentDecisions()
        # Unreadable baggage is counted per record; logged once per topic and problem per this
        # throttle's interval, so a producer that sends it on every record cannot flood the log.
        self._bad_baggage_logs = LogThrottle(BAD_BAGGAGE_LOG_INTERVAL)
        self.ready = Readiness(config, self.listener, self.table, self.route_source, self.health, self.metrics)
        self.ready.routes_gate, self._stopping = self.routes_gate, self.ready.stopping
        self._commit_lock = asyncio.Lock()
        self._commit_task: asyncio.Task[None] | None = None
        self._started: list[Any] = []

    def __repr__(self) -> str:
        return (
            f"Sidecar(service={self.config.service!r}, sandbox={self.config.sandbox!r}, "
            f"group={self.config.consumer_group!r}, topics={self.config.topics!r})"
        )

    # -- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        log.info("starting %r", self)
        for part in (
            self.metrics_server, self.admin, self.context_parts.publish, self.route_source, self.health, self.upstream
        ):
            self._started.append(part)  # before start(): a half-started part is stopped too
            await part.start()
        await self._connect_kafka()
        self._commit_task = asyncio.create_task(self._commit_loop(), name="ktp-commit")

    async def _connect_kafka(self) -> None:
        """Connect to Kafka, retrying while it is unreachable (a sidecar often starts before the
        network or the broker is ready); /healthz answers meanwhile and /readyz says why not."""
        # A wrong setting (e.g. the routes topic's partitions) does not heal by retrying.
        await retry_connect(
            self._connect_kafka_once,
            backoff=Backoff(KAFKA_RETRY_INITIAL, KAFKA_RETRY_MAX),
            failed=self._connect_kafka_failed,
            fatal=(ConfigError,),
        )

    async def _connect_kafka_once(self) -> None:
        if self.config.sandbox is not None:
            # Registered before the group exists, so the route service can clean it up.
            await register_sandbox_group(
                self.config.kafka,
                self.config.groups_topic,
                SandboxGroup(self.config.consumer_group, self.config.service, self.config.sandbox),
            )
        if self.dead_letters is not None:
            await self.dead_letters.start()
            self._started.append(self.dead_letters)
        await self.listener.start()
        self.ready.kafka_connected()

    async def _connect_kafka_failed(self, exc: Exception, delay: float) -> None:
        # Not only KafkaError: aiokafka 0.14 raises KeyError on a broker's SCRAM refusal
        # it cannot parse (Tansu's). Any failed connect is retried with backoff, logged
        # (with the traceback when it is not a Kafka error), with /healthz answering and
        # /readyz saying why: a crash would only restart the container into the same
        # failure, and a retry reads a rotated password file again.
        if self.dead_letters is not None and self.dead_letters in self._started:
            self._started.remove(self.dead_letters)
            await self.dead_letters.stop()
        expected = isinstance(exc, (KafkaError, BrokerError, OSError))
        self.ready.kafka_failed(exc, delay)
        log.warning(
            "Kafka at %s not reachable (%r); retrying in %.1fs",
            self.config.kafka.bootstrap_servers, exc, delay, exc_info=not expected,
        )

    async def run(self) -> None:
        """Fetch, decide and dispatch until :meth:`request_stop`."""
        gate = self.routes_gate
        partitions = self.partitions
        listener = self.listener
        while not self._stopping.is_set():
            batch = await listener.fetch_with_room(partitions, FETCH_MAX_RECORDS)
            if gate is not None and not await gate.admit(batch):
                continue  # put back until the routes can be read
            for tp, records in batch.items():
                state = partitions.get(tp)
                if state is not None and not state.revoked:
                    self._handle(state, records)

    def request_stop(self) -> None:
        self._stopping.set()

    async def stop(self) -> None:
        """Drain, commit, leave the group, close everything. Safe to call once after start."""
        self._stopping.set()
        drained = await self.dispatcher.drain(self.config.drain_timeout)
        if not drained:
            log.warning("drain timeout (%.1fs): abandoning undelivered records", self.config.drain_timeout)
        await self.dispatcher.settle(list(self.partitions), REVOKE_TIMEOUT)
        if self._commit_task is not None:
            self._commit_task.cancel()
            try:
                await self._commit_task
            except asyncio.CancelledError:
                pass
        await self.commit()
        try:
            await self.listener.stop()
        except KafkaError as exc:
            log.warning("leaving the group failed: %r", exc)
        for part in reversed(self._started):
            await part.stop()
        self._started.clear()
        log.info("stopped %r", self)

    async def serve(self) -> int:
        """Run until SIGTERM/SIGINT, then stop gracefully. A signal during start-up abandons the
        start; a second signal abandons the graceful stop."""
        return await serve_until_signalled(self)

    async def __aenter__(self) -> Sidecar:
        await self.start()
        self._run_task = asyncio.create_task(self.run(), name="ktp-run")
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.request_stop()
        await self._run_task
        await self.stop()

    # -- the hot path ----------------------------------------------------------------------------

    def _handle(self, state: PartitionState, records: list[ConsumerRecord[bytes, bytes]]) -> None:
        """Decide one partition's fetched records: hand the ones to deliver to the dispatcher,
        and mark the batch fetched (the skipped ones are done).

        Per record this is a scan of its headers for ``baggage``, one look-up in the filter's
        memo and an append; everything else is once per batch: counting skips by reason, the
        commit position, the tail kept for ``/decisions``, the spans when tracing is on.
        """
        tp = state.tp
        topic = tp.topic
        counters = self.metrics.topic(topic)
        counters.consumed.inc(len(records))
        memo = self.filter.memo()
        decide_raw = self.filter.decide_raw
        decided: list[Decided] = []
        keep = decided.append
        delivered: list[ConsumerRecord[bytes, bytes]] = []
        deliver = delivered.append
        for record in records:
            raw = None
            for name, value in record.headers:
                # tenant.baggage_value, inlined: it runs for every record of every topic.
                if name == BAGGAGE_HEADER or (len(name) == 7 and name.lower() == BAGGAGE_HEADER):
                    # several baggage headers are one baggage-string (tenant.baggage_value)
                    raw = value if not raw else (raw + b"," + value if value else raw)
            entry = memo.get(raw)
            if entry is None or record.timestamp < entry.since_ms:
                entry = decide_raw(raw, record.timestamp)
                if entry.lookup.problem is not None:
                    self._bad_baggage(topic, record, entry)
            keep(entry)
            if entry.deliver:
                deliver(record)
        if delivered:
            # Tracked, then queued, all at once (a lane in partition order takes them in one go).
            state.offsets.begin_many(list(map(_OFFSET, delivered)))
            self.dispatcher.submit_many(state, delivered)
        state.offsets.fetched_through(records[-1].offset)
        self.route_history.fetched(tp, records[0].timestamp)
        skipped: dict[str, int] = {}
        for entry, count in collections.Counter(decided).items():
            if not entry.deliver:
                reason = entry.decision.reason
                skipped[reason] = skipped.get(reason, 0) + count
        for reason, count in skipped.items():
            counters.skipped(reason).inc(count)
        self._recent.add(topic, tp.partition, records, decided)
        if self.context_parts.tracing.enabled:
            # Once per batch, after the loop: tracing off adds nothing per record.
            self.context_parts.tracing.decided(topic, tp.partition, records, decided)
        self.partitions.check_backpressure(state)

    def _bad_baggage(self, topic: str, record: ConsumerRecord[bytes, bytes], entry: Decided) -> None:
        problem = entry.lookup.problem
        assert problem is not None
        self.metrics.bad_input.labels(topic, problem).inc()
        held = self._bad_baggage_logs.allow((topic, problem))
        if held is not None:
            log.warning(
                "record %s[%d]@%d: %s, decided %s%s",
                topic, record.partition, record.offset, problem, entry.decision, held_back(held),
            )

    # -- partitions and commits ------------------------------------------------------------------

    async def _assigned(self, assigned: frozenset[TopicPartition]) -> None:
        self.partitions.add(assigned)
        if not self.health.healthy:
            self.listener.pause(assigned, "app_unhealthy")
        if self.routes_gate is not None and self.routes_gate.behind:
            self.listener.pause(assigned, ROUTES_BEHIND)
        if self.config.sandbox is not None and assigned:
            service, sandbox = self.config.service, self.config.sandbox
            await position_new_sandbox_group(
                self.listener,
                assigned,
                routed_since=lambda: self.table.routed_since(service, sandbox),
                connection=self.config.kafka,
                baseline_group=self.config.group,
            )

    async def _revoked(self, revoked: frozenset[TopicPartition]) -> None:
        states = self.partitions.of(revoked)
        await self.dispatcher.settle(states, REVOKE_TIMEOUT)
        await self.commit(revoked)
        self.partitions.remove(states)

    async def commit(self, only: frozenset[TopicPartition] | None = None) -> None:
        """Commit the done watermark of every partition (or of ``only``) that moved."""
        async with self._commit_lock:
            offsets = self.partitions.commit_positions(only)
            if not offsets:
                return
            try:
                await self.listener.commit(offsets)
            except KafkaError as exc:
                self.metrics.commits.labels("failed").inc()
                log.warning("commit failed (the records will be redelivered): %r", exc)
                return
            self.metrics.commits.labels("ok").inc()
            self.partitions.mark_committed(offsets)

    async def _commit_loop(self) -> None:
        next_prune = time.monotonic() + ROUTE_PRUNE_INTERVAL
        while True:
            await asyncio.sleep(self.config.commit_interval)
            try:
                await self.commit()
                self.gauges.update()
                if time.monotonic() >= next_prune:
                    next_prune = time.monotonic() + ROUTE_PRUNE_INTERVAL
                    if dropped := self.route_history.prune(self.partitions.tps(), now_ms()):
                        log.info("route history: dropped %d superseded routes", dropped)
            except Exception:  # keep committing whatever one round hit
                log.exception("commit round failed")

    def _app_health_changed(self, healthy: bool) -> None:
        self.metrics.app_healthy.set(1 if healthy else 0)
        assigned = self.listener.assignment()
        if healthy:
            self.listener.resume(assigned, "app_unhealthy")
        else:
            self.listener.pause(assigned, "app_unhealthy")

    # -- admin views -------------------------------------------------------------------------------

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        """(ready, the checks): see :mod:`proxy.sidecar.readiness`."""
        return self.ready.checks()

    def readiness_detail(self) -> dict[str, Any]:
        """Stalled partitions, for ``/readyz``. They do not fail readiness: Kafka does not route by
        readiness, so an unready pod keeps its partitions anyway, and a stalled partition is most
        often the app's or a record's problem, which a rollout (held back by unready pods) may
        be fixing. It is reported here and by ``ktp_partition_stalled`` for alerting."""
        return self.gauges.stalled_detail()

    def routes_view(self) -> dict[str, Any]:
        """The route table, its version and sync state, for ``/routes``."""
        return {"source": self.route_source.describe(), **self.table.snapshot()}

    def decisions(self) -> list[dict[str, Any]]:
        """The last decisions, newest first, for ``/decisions``."""
        return self._recent.view()

    def _render_metrics(self) -> bytes:
        self.gauges.update()
        return self.metrics.render()


async def serve_until_signalled(sidecar: Sidecar) -> int:
    """:meth:`Sidecar.serve`: start, run and stop ``sidecar``, driven by SIGTERM/SIGINT."""
    loop = asyncio.get_running_loop()
    main = asyncio.current_task()
    assert main is not None
    signals = 0
    running = False

    def on_signal(signum: int) -> None:
        nonlocal signals
        signals += 1
        log.info("received %s", signal.Signals(signum).name)
        sidecar.request_stop()
        if signals > 1 or not running:
            main.cancel()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)
    try:
        await sidecar.start()
        running = True
        freeze_startup_objects()
        await sidecar.run()
    except asyncio.CancelledError:
        if not signals:
            raise
        main.uncancel()
    finally:
        await sidecar.stop()
    return 0
