"""The otel extra's set-up: an SDK tracer provider as OTEL_* asks, or none."""

from __future__ import annotations

import pytest
from opentelemetry.sdk.trace import TracerProvider

from proxy.errors import ConfigError
from proxy.telemetry.setup import build_tracer_provider
from proxy.telemetry.tracing import is_sdk_provider


def test_off_when_disabled_or_no_exporter() -> None:
    assert build_tracer_provider({"OTEL_SDK_DISABLED": "true"}) is None
    assert build_tracer_provider({"OTEL_TRACES_EXPORTER": "none"}) is None


def test_off_unless_asked_for() -> None:
    # A sidecar in every pod must not export to a collector nobody configured.
    assert build_tracer_provider({}) is None


def test_otlp_when_an_endpoint_is_set_with_a_service_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OTEL_SERVICE_NAME", raising=False)
    monkeypatch.delenv("OTEL_RESOURCE_ATTRIBUTES", raising=False)
    provider = build_tracer_provider({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"})
    assert isinstance(provider, TracerProvider) and is_sdk_provider(provider)
    assert provider.resource.attributes["service.name"] == "ktp-sidecar"
    provider.shutdown()


def test_service_name_from_the_environment_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_SERVICE_NAME", "orders-sidecar")
    provider = build_tracer_provider({"OTEL_TRACES_EXPORTER": "console"})
    assert provider is not None and provider.resource.attributes["service.name"] == "orders-sidecar"
    provider.shutdown()
    monkeypatch.delenv("OTEL_SERVICE_NAME")
    provider = build_tracer_provider({"OTEL_TRACES_EXPORTER": "console"})
    assert provider is not None and provider.resource.attributes["service.name"] == "ktp-sidecar"
    provider.shutdown()


def test_unknown_exporter_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="'zipkinx' is not supported"):
        build_tracer_provider({"OTEL_TRACES_EXPORTER": "zipkinx"})
