"""Readiness: what ``/readyz`` answers, its checks as booleans and, for each failing check, why
in words (the Kafka address and its last error, the route source and its last error, what the app
probe found), so an operator does not have to read the logs to learn why a pod is not ready.

Ready means nothing produced from then on is missed: the group is joined *and* every assigned
partition has its start position (the assignment callback runs before the Kafka client looks the
position up; under ``--auto-offset-reset latest`` a record produced in between is never fetched),
the routes are synced and the app answers.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from proxy.listener.kafka import KafkaListener
from proxy.metrics import Metrics
from proxy.routes.table import RouteTable
from proxy.routing.sources import RouteSource
from proxy.sidecar.config import SidecarConfig
from proxy.sidecar.routes_gate import RoutesGate
from proxy.upstream.health import AppHealth

REQUIRED = ("group_joined", "partitions_positioned", "routes_synced", "app_healthy")


def _clock(at: float) -> str:
    return time.strftime("%H:%M:%SZ", time.gmtime(at))


class Readiness:
    """The sidecar's readiness checks; the runtime reports failures to it as they happen."""

    def __init__(
        self,
        config: SidecarConfig,
        listener: KafkaListener,
        table: RouteTable,
        route_source: RouteSource,
        health: AppHealth,
        metrics: Metrics,
    ) -> None:
        self.config = config
        self.listener = listener
        self.table = table
        self.route_source = route_source
        self.health = health
        self.metrics = metrics
        self.stopping = asyncio.Event()
        self.routes_gate: RoutesGate | None = None
        self._kafka_problem: str | None = None
        self._routes_problem: tuple[str, float] | None = None

    def __repr__(self) -> str:
        return f"Readiness(ready={self.checks()[0]})"

    def kafka_failed(self, exc: BaseException, delay: float) -> None:
        """A connect to Kafka failed; retried in ``delay`` seconds."""
        self._kafka_problem = (
            f"Kafka at {self.config.kafka.bootstrap_servers} not reachable at {_clock(time.time())}: "
            f"{exc!r}; retrying in {delay:.1f}s"
        )

    def kafka_connected(self) -> None:
        self._kafka_problem = None

    def route_source_failed(self, message: str) -> None:
        """The route source reported a failure (counted, and kept for the reasons)."""
        self.metrics.route_source_errors.inc()
        self._routes_problem = (message, time.time())

    def checks(self) -> tuple[bool, dict[str, Any]]:
        """(ready, the checks by name)."""
        gate = self.routes_gate
        checks = {
            "group_joined": self.listener.joined,
            "partitions_positioned": self.listener.joined and not self.listener.unpositioned(),
            "routes_synced": self.table.synced and not (gate is not None and gate.behind),
            "app_healthy": self.health.healthy,
            "stopping": self.stopping.is_set(),
        }
        return all(checks[name] for name in REQUIRED) and not checks["stopping"], checks

    def reasons(self) -> dict[str, str]:
        """Why each failing check fails, in words."""
        _, checks = self.checks()
        reasons: dict[str, str] = {}
        if not checks["group_joined"]:
            reasons["group_joined"] = self._not_joined()
        elif not checks["partitions_positioned"]:
            waiting = ", ".join(sorted(f"{tp.topic}[{tp.partition}]" for tp in self.listener.unpositioned()))
            reasons["partitions_positioned"] = f"looking up where to start consuming {waiting}"
        if self.listener.fenced:
            reasons["group_joined"] = (
                "the group coordinator is unreachable: fetching is paused until a heartbeat "
                "confirms the membership"
            )
        if not checks["routes_synced"]:
            reasons["routes_synced"] = self._routes_not_synced()
        if not checks["app_healthy"]:
            health = self.health
            when = f" at {_clock(health.last_probe_at)}" if health.last_probe_at is not None else ""
            reasons["app_healthy"] = f"the app does not answer {health.target}; last probe{when}: {health.last_probe}"
        if checks["stopping"]:
            reasons["stopping"] = "the sidecar is shutting down"
        return reasons

    def _not_joined(self) -> str:
        servers = self.config.kafka.bootstrap_servers
        if self._kafka_problem is not None:
            return self._kafka_problem
        if not self.listener.started:
            # The sidecar brings its servers, publish endpoint, routes and app probe up first.
            return f"not connected to Kafka at {servers} yet: the other parts start first"
        return (
            f"connected to Kafka at {servers}; waiting for group {self.config.consumer_group!r} to "
            f"assign partitions of {', '.join(self.config.topics)}"
        )

    def _routes_not_synced(self) -> str:
        source = self.route_source.describe()
        gate = self.routes_gate
        if gate is not None and gate.behind_since is not None:
            behind = time.monotonic() - gate.behind_since
            return f"routes from {source} could not catch up for {behind:.0f}s, consumption paused: {gate.last_error}"
        problem = self._routes_problem
        last = f"; last error at {_clock(problem[1])}: {problem[0]}" if problem else ""
        return f"routes from {source} not read completely yet{last}"
