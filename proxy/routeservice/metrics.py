"""The route service's metrics, with the project's ``ktp_`` prefix and bounded labels: requests
are labelled by route template (``/v1/tenants/{tenant}``), never by path, so no tenant name
reaches Prometheus."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp.typedefs import Middleware
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from proxy.metrics import PREFIX

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class RouteServiceMetrics:
    """``ktp_routes_*`` metrics of one route service replica, in their own registry."""

    def __init__(self, tenants: Callable[[], int], registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.requests = Counter(
            PREFIX + "routes_requests",
            "HTTP requests answered, by route template, method and status code.",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.request_duration = Histogram(
            PREFIX + "routes_request_duration_seconds",
            "Time to answer one request, by route template (long-polls of /v1/routes included).",
            ["route"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 5, 30, 60),
            registry=self.registry,
        )
        self.tenants = Gauge(
            PREFIX + "routes_tenants", "Tenants with a live route in the store.", registry=self.registry
        )
        self.tenants.set_function(lambda: float(tenants()))

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def middleware(self) -> Middleware:
        """Outermost middleware: counts every answer, the JSON error answers included."""

        @web.middleware
        async def count(request: web.Request, handler: Handler) -> web.StreamResponse:
            started = time.perf_counter()
            resource = request.match_info.route.resource
            route = resource.canonical if resource is not None else "unmatched"
            status = 500
            try:
                response = await handler(request)
                status = response.status
                return response
            except web.HTTPException as exc:
                status = exc.status
                raise
            finally:
                self.requests.labels(route, request.method, str(status)).inc()
                self.request_duration.labels(route).observe(time.perf_counter() - started)

        return count
