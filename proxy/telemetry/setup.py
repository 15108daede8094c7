"""Tracing set-up for ``ktp sidecar``: the OpenTelemetry SDK when it is installed.

The package needs only opentelemetry-api. With the ``otel`` extra (``pip install
'kafka-tenant-proxy[otel]'``: opentelemetry-sdk and the OTLP/HTTP exporter) the sidecar exports
its spans, configured by the SDK's usual environment variables:

- tracing is opt-in: on when ``OTEL_TRACES_EXPORTER`` is set (``otlp`` and/or ``console``) or
  an OTLP endpoint is (``OTEL_EXPORTER_OTLP_ENDPOINT`` / ``..._TRACES_ENDPOINT``, meaning otlp);
- ``OTEL_SDK_DISABLED=true`` or ``OTEL_TRACES_EXPORTER=none``: no tracing;
- ``OTEL_SERVICE_NAME`` / ``OTEL_RESOURCE_ATTRIBUTES``: the resource (default service name
  ``ktp-sidecar``); ``OTEL_TRACES_SAMPLER``: sampling, as the SDK reads it.

A tracer provider already installed (e.g. by ``opentelemetry-instrument``) is used as it is.
Without the SDK nothing is set up and every tracing hook of the sidecar is skipped.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from opentelemetry import trace

from proxy.errors import ConfigError
from proxy.telemetry.tracing import is_sdk_provider

DEFAULT_SERVICE_NAME = "ktp-sidecar"


def configure_tracing(environ: Mapping[str, str] | None = None) -> Any | None:
    """Install and return the SDK's tracer provider, or None when tracing stays off. A provider
    already installed is returned as it is."""
    current = trace.get_tracer_provider()
    if is_sdk_provider(current):
        return current
    provider = build_tracer_provider(environ)
    if provider is not None:
        trace.set_tracer_provider(provider)
    return provider


def build_tracer_provider(environ: Mapping[str, str] | None = None) -> Any | None:
    """The SDK's tracer provider as the environment asks for it (see the module doc), or None
    when tracing is off or the SDK is not installed. Raises :class:`ConfigError` for an
    exporter that is unknown or not installed."""
    env = os.environ if environ is None else environ
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    chosen = env.get("OTEL_TRACES_EXPORTER")
    if chosen is None:
        # Opt-in: a sidecar runs in every pod, and with the SDK's default (otlp to localhost)
        # each would retry exports to a collector nobody runs and stall its shutdown on them.
        if not (env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")):
            return None
        chosen = "otlp"
    exporters = [name.strip().lower() for name in chosen.split(",") if name.strip()]
    if not exporters or exporters == ["none"]:
        return None
    try:
        from opentelemetry.sdk.resources import SERVICE_NAME, Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import (
            BatchSpanProcessor,
            ConsoleSpanExporter,
            SpanExporter,
        )
    except ImportError:
        return None  # no SDK: api only, spans are skipped
    resource = Resource.create()
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: DEFAULT_SERVICE_NAME}))
    provider = TracerProvider(resource=resource)
    for name in exporters:
        exporter: SpanExporter
        if name == "otlp":
            try:
                from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
            except ImportError as exc:
                raise ConfigError(
                    "OTEL_TRACES_EXPORTER=otlp needs the OTLP exporter: pip install "
                    "'kafka-tenant-proxy[otel]' (or set OTEL_TRACES_EXPORTER=none)"
                ) from exc
            exporter = OTLPSpanExporter()
        elif name == "console":
            exporter = ConsoleSpanExporter()
        else:
            raise ConfigError(f"OTEL_TRACES_EXPORTER: {name!r} is not supported; use otlp, console or none")
        provider.add_span_processor(BatchSpanProcessor(exporter))
    return provider
