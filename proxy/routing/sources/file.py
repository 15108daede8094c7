"""``file:<path>`` route source: a YAML file, typically a mounted ConfigMap.

Format::

    tenants:
      "123": {orders-worker: pr-42, billing: pr-42}
      "456": {orders-worker: pr-7}

The file is polled (stat, then content) and re-read when it changes; Kubernetes swaps ConfigMap
contents through a symlink, which a stat of the path follows. A file that cannot be read or
parsed leaves the last good table in force and is logged and counted.

Time semantics: what the first read finds is in force since the epoch (the file has no history);
a later change is in force from the moment this sidecar read it. Two pods read a changed file at
slightly different moments, so around a change a record may be handled by both or neither: the
``kafka:`` source, whose routes carry one ``effective_from`` for every pod, does not have this gap.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from types import MappingProxyType
from typing import Any

import yaml

from proxy.errors import RouteError
from proxy.routes.table import Route, RouteTable

log = logging.getLogger(__name__)

DEFAULT_POLL_INTERVAL = 1.0


def parse_routes_yaml(text: str) -> list[Route]:
    """Parse the file's text into routes (effective time filled in by the caller).

    Raises :class:`RouteError` naming the first offending tenant, service or sandbox.
    """
    try:
        data: Any = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise RouteError(f"routes file is not valid YAML: {exc}") from exc
    if data is None:
        return []
    if not isinstance(data, dict) or not isinstance(data.get("tenants", {}), dict):
        raise RouteError('routes file must look like: tenants: {"123": {"<service>": "<sandbox>"}}')
    routes = []
    for tenant, services in (data.get("tenants") or {}).items():
        if not isinstance(services, dict):
            raise RouteError(f"tenant {str(tenant)!r}: expected a mapping of service to sandbox")
        routes.append(
            Route.build(str(tenant), {str(s): str(x) for s, x in services.items()}, 0)
        )
    return routes


class FileRouteSource:
    """Keeps a :class:`RouteTable` in step with a YAML file."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        table: RouteTable | None = None,
        poll_interval: float = DEFAULT_POLL_INTERVAL,
        on_error: Callable[[str], None] | None = None,
    ) -> None:
        self.path = Path(path)
        self.table = table if table is not None else RouteTable()
        self.poll_interval = poll_interval
        self._on_error = on_error
        self._stat: tuple[int, int, int] | None = None
        self._digest: bytes | None = None
        self._task: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return f"FileRouteSource(path={str(self.path)!r}, table={self.table!r})"

    def describe(self) -> str:
        return f"file:{self.path}"

    async def start(self) -> None:
        self.reload()
        self._task = asyncio.create_task(self._watch(), name="ktp-file-routes")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None

    async def __aenter__(self) -> FileRouteSource:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.poll_interval)
            self.reload()

    def reload(self) -> bool:
        """Re-read the file if it changed. Returns True if the table changed."""
        try:
            st = os.stat(self.path)
        except OSError as exc:
            self._fail(f"cannot stat routes file {str(self.path)!r}: {exc.strerror}")
            return False
        stat_key = (st.st_mtime_ns, st.st_ino, st.st_size)
        if stat_key == self._stat:
            return False
        try:
            data = self.path.read_bytes()
        except OSError as exc:
            self._fail(f"cannot read routes file {str(self.path)!r}: {exc.strerror}")
            return False
        digest = hashlib.sha256(data).digest()
        self._stat = stat_key
        if digest == self._digest:
            return False
        try:
            routes = parse_routes_yaml(data.decode("utf-8"))
        except (RouteError, UnicodeDecodeError) as exc:
            self._fail(f"routes file {str(self.path)!r} rejected, keeping the last good table: {exc}")
            return False
        at_ms = 0 if not self.table.synced else int(time.time() * 1000)
        self.table.replace_all(
            (Route(r.tenant, MappingProxyType(dict(r.services)), at_ms) for r in routes), at_ms
        )
        self._digest = digest
        self.table.synced = True
        log.info("routes loaded from %s: %d tenants, table version %d", self.path, len(routes), self.table.version)
        return True

    def _fail(self, message: str) -> None:
        log.error("%s", message)
        if self._on_error is not None:
            self._on_error(message)
