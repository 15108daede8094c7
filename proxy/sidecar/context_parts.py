"""The sidecar's context parts, built together from its config: propagation by
``OTEL_PROPAGATORS``, spans, ``ktp-delivery`` contexts, the delivery format and the publish
endpoint. They share the contexts map (deliveries write it, publish requests read it) and the
tracing hooks, so they are made in one place."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from opentelemetry.trace import TracerProvider

from proxy.delivery.contexts import DeliveryContexts
from proxy.delivery.envelope import DeliveryEnvelope
from proxy.metrics import Metrics
from proxy.publish.request import PublishRules
from proxy.publish.server import KafkaPublisher, PublishServer
from proxy.sidecar.config import SidecarConfig
from proxy.telemetry.propagation import Propagation
from proxy.telemetry.tracing import SidecarTracing


@dataclass(frozen=True, slots=True)
class ContextParts:
    """What :func:`build_context_parts` makes for one sidecar."""

    propagation: Propagation
    tracing: SidecarTracing
    contexts: DeliveryContexts
    delivery: DeliveryEnvelope
    publish: PublishServer


def build_context_parts(
    config: SidecarConfig,
    metrics: Metrics,
    *,
    tracer_provider: TracerProvider | None = None,
    environ: Mapping[str, str] | None = None,
) -> ContextParts:
    """Build the context parts. ``tracer_provider`` defaults to the global one (spans only when
    an SDK provider is set); ``environ`` (default ``os.environ``) gives ``OTEL_PROPAGATORS``."""
    propagation = Propagation.from_environ(environ)
    tracing = SidecarTracing(
        propagation,
        provider=tracer_provider,
        service=config.service,
        sandbox=config.sandbox,
        group=config.consumer_group,
    )
    contexts = DeliveryContexts(config.delivery_context_grace)
    delivery = DeliveryEnvelope(contexts=contexts, tracing=tracing, format=config.format, service=config.service)
    publish = PublishServer(
        config.publish_addr,
        rules=PublishRules(
            propagation=propagation,
            tenant_key=config.tenant_key,
            default_tenant=config.default_tenant,
            copied_headers=frozenset(config.publish_headers),
        ),
        publisher=KafkaPublisher(
            config.kafka,
            timeout=config.publish_timeout,
            max_bytes=config.publish_max_bytes,
            client_id=f"ktp-publish-{config.service}" + (f"-{config.sandbox}" if config.sandbox else ""),
        ),
        contexts=contexts,
        tracing=tracing,
        metrics=metrics,
    )
    return ContextParts(propagation, tracing, contexts, delivery, publish)
