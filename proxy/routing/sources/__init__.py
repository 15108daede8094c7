"""Route sources fill a sidecar's :class:`~proxy.routes.table.RouteTable`.

A source has ``async start()`` / ``async stop()`` and owns one table. ``table.synced`` becomes
True once the source has read its backing store completely at least once.

- ``kafka:`` / ``kafka:<topic>``  the routes topic (default ``_ktp_routes``) read directly; the default
- ``http://host:port``   the route service, watched by long-polling ``GET /v1/routes``
- ``file:<path>``        a YAML file (e.g. a mounted ConfigMap), re-read when it changes

The ``kafka:`` and ``http:`` sources also offer ``catch_up()`` (return once the table holds every
route written before the call), ``synced_at_ms`` (the wall-clock time up to which the table is
known complete) and ``covered_until_ms`` (that time plus the route lead the writers state, less a
margin: no route missing from the table takes effect before it, :mod:`proxy.routes.lead`). A
sidecar decides records up to ``covered_until_ms`` at once and catches up only for newer ones.
"""

from __future__ import annotations

import collections
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from proxy.routes.table import RouteTable

if TYPE_CHECKING:
    from proxy.kafka import KafkaConnection


class RouteSource(Protocol):
    """What the sidecar needs from a route source."""

    table: RouteTable

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    def describe(self) -> str:
        """Where the routes come from, for ``/routes`` and logs (no secrets)."""
        ...


@runtime_checkable
class CatchUpRouteSource(RouteSource, Protocol):
    """A route source whose table can be brought up to date on demand (``kafka:``, ``http:``)."""

    @property
    def synced_at_ms(self) -> int:
        """Wall-clock time (ms) before which every route written is in the table."""
        ...

    @property
    def covered_until_ms(self) -> int:
        """Time (ms) through which no route missing from the table can take effect."""
        ...

    @property
    def catch_ups(self) -> collections.Counter[str]:
        """Catch-ups that records not covered by the table asked for, by reason."""
        ...

    async def catch_up(self, at_ms: int | None = None) -> None:
        """Return once the table holds every route written before the call (at once when
        ``at_ms``, a record's time, is given and not after ``covered_until_ms``). Concurrent
        calls are coalesced."""
        ...


@dataclass(frozen=True, slots=True)
class SourceOptions:
    """What a route source factory may need besides its spec."""

    on_error: Callable[[str], None] | None = None
    connection: KafkaConnection | None = None
    token_file: str | None = None
    cafile: str | None = None


def _file_source(spec: str, options: SourceOptions) -> RouteSource:
    from proxy.errors import ConfigError
    from proxy.routing.sources.file import FileRouteSource

    path = spec[len("file:") :]
    if not path:
        raise ConfigError("--routes file:<path> needs a path")
    return FileRouteSource(path, on_error=options.on_error)


def _kafka_source(spec: str, options: SourceOptions) -> RouteSource:
    from proxy.errors import ConfigError
    from proxy.routes.topic import DEFAULT_ROUTES_TOPIC, check_topic_name
    from proxy.routing.sources.kafka_source import KafkaRouteSource

    if options.connection is None:
        raise ConfigError(f"--routes {spec}: the kafka: route source needs the Kafka connection options")
    topic = check_topic_name(spec[len("kafka:") :] or DEFAULT_ROUTES_TOPIC)
    return KafkaRouteSource(options.connection, topic, on_error=options.on_error)


def _http_source(spec: str, options: SourceOptions) -> RouteSource:
    from proxy.errors import ConfigError
    from proxy.kafka import client_ssl_context
    from proxy.routing.sources.http import HttpRouteSource

    token = None
    if options.token_file is not None:
        try:
            token = Path(options.token_file).read_text(encoding="utf-8").strip() or None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read --routes-token-file {options.token_file!r}: {exc}") from exc
    context = client_ssl_context(options.cafile, "--routes-cafile") if options.cafile else None
    return HttpRouteSource(spec, on_error=options.on_error, token=token, ssl_context=context)


ROUTE_SOURCES: dict[str, Callable[[str, SourceOptions], RouteSource]] = {
    "file:": _file_source,
    "kafka:": _kafka_source,
    "http://": _http_source,
    "https://": _http_source,
}
"""``--routes`` prefix -> the factory of its route source (each imports its module when used)."""


def create_route_source(
    spec: str,
    *,
    on_error: Callable[[str], None] | None = None,
    connection: KafkaConnection | None = None,
    token_file: str | None = None,
    cafile: str | None = None,
) -> RouteSource:
    """Build the route source named by ``--routes``; ``kafka:`` needs the sidecar's ``connection``,
    ``http(s)://`` may take a read token (``--routes-token-file``) and a CA (``--routes-cafile``)."""
    from proxy.errors import ConfigError

    options = SourceOptions(on_error=on_error, connection=connection, token_file=token_file, cafile=cafile)
    for prefix, factory in ROUTE_SOURCES.items():
        if spec.startswith(prefix):
            return factory(spec, options)
    raise ConfigError(
        f"--routes {spec!r}: unknown route source (use kafka:, kafka:<topic>, http://host:port or file:<path>)"
    )
