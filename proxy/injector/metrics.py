"""The injector's metrics, with the project's ``ktp_`` prefix and fixed label values."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from proxy.metrics import PREFIX

# Bounded label values: what happened to one AdmissionReview.
OUTCOMES = ("injected", "passed", "refused", "bad_request", "disconnected", "error")


class InjectorMetrics:
    """``ktp_injector_*`` metrics of one injector, in their own registry."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.reviews = Counter(
            PREFIX + "injector_reviews",
            "AdmissionReviews answered, by outcome (injected, passed, refused, bad_request, "
            "disconnected: the caller went away, error).",
            ["outcome"],
            registry=self.registry,
        )
        self.review_duration = Histogram(
            PREFIX + "injector_review_duration_seconds",
            "Time to answer one AdmissionReview, body read included.",
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1),
            registry=self.registry,
        )
        self.certificate_reloads = Counter(
            PREFIX + "injector_certificate_reloads",
            "Serving certificate reloads after the files changed, by result (ok, error).",
            ["result"],
            registry=self.registry,
        )
        for outcome in OUTCOMES:
            # Every series exists from the start, so rate() and absent() behave at zero.
            self.reviews.labels(outcome)

    def render(self) -> bytes:
        return generate_latest(self.registry)
