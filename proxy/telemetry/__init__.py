"""OpenTelemetry for the sidecar: propagation by ``OTEL_PROPAGATORS`` (:mod:`.propagation`),
spans for consume, decide, deliver and publish (:mod:`.tracing`), and the optional SDK set-up
for ``ktp sidecar`` (:mod:`.setup`). Only opentelemetry-api is required; with no SDK installed
every tracing hook is skipped."""
