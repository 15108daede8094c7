"""Route sources fill a sidecar's :class:`~proxy.routing.table.RouteTable`.

A source has ``async start()`` / ``async stop()`` and owns one table. ``table.synced`` becomes
True once the source has read its backing store completely at least once.

- ``file:<path>``      a YAML file (e.g. a mounted ConfigMap), re-read when it changes
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from proxy.routing.table import RouteTable


class RouteSource(Protocol):
    """What the sidecar needs from a route source."""

    table: RouteTable

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    def describe(self) -> str:
        """Where the routes come from, for ``/routes`` and logs (no secrets)."""
        ...


def create_route_source(spec: str, *, on_error: Callable[[str], None] | None = None) -> RouteSource:
    """Build the route source named by ``--routes``."""
    from proxy.errors import ConfigError

    if spec.startswith("file:"):
        from proxy.routing.sources.file import FileRouteSource

        path = spec[len("file:") :]
        if not path:
            raise ConfigError("--routes file:<path> needs a path")
        return FileRouteSource(path, on_error=on_error)
    raise ConfigError(f"--routes {spec!r}: unknown route source (use file:<path>)")
