"""``file:<path>`` route source: a YAML file, typically a mounted ConfigMap.

Format::

    tenants:
      "123": {orders-worker: pr-42, billing: pr-42}
      "456": {orders-worker: pr-7}

The file is polled (stat, then content) and re-read when it changes; Kubernetes swaps ConfigMap
contents through a symlink, which a stat of the path follows.

A file that cannot be read or parsed at start stops the sidecar with a :class:`ConfigError`
naming the file and the problem: with no table at all the sidecar could never become ready, and
a crash-looping container says so more plainly than a pod that is silently never ready. Once a
table was read, a file that breaks later leaves that table in force; the failure is counted
every time and logged at most once per :data:`FAILURE_LOG_INTERVAL` (the file is polled every
second).

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

from proxy.errors import ConfigError, RouteError
from proxy.logthrottle import LogThrottle, held_back
from proxy.routes.table import Route, RouteTable

log = logging.getLogger(__name__)

DEFAULT_POLL_INTERVAL = 1.0
FAILURE_LOG_INTERVAL = 60.0


def parse_routes_yaml(text: str) -> list[Route]:
    """Parse the file's text into routes (effective time filled in by the caller).

    Raises :class:`RouteError` naming the first offending tenant, service or sandbox.
    """
    try:
        data: Any = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        # One line: PyYAML's own message spans several, with a caret drawing of the text.
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or type(exc).__name__
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise RouteError(f"routes file is not valid YAML: {problem}{where}") from exc
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
        self._throttle = LogThrottle(FAILURE_LOG_INTERVAL)
        self._loaded_at: float | None = None
        # The last failure, for /readyz and /routes; None once the file reads well again.
        self.problem: str | None = None

    def __repr__(self) -> str:
        return f"FileRouteSource(path={str(self.path)!r}, table={self.table!r})"

    def describe(self) -> str:
        return f"file:{self.path}"

    async def start(self) -> None:
        """Read the file; raises :class:`ConfigError` when it cannot be used (see the module doc)."""
        self.reload()
        if not self.table.synced:
            assert self.problem is not None
            raise ConfigError(f"--routes file:{self.path}: {self.problem}")
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
            self._fail(f"cannot read routes file {str(self.path)!r}: {exc.strerror}")
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
            reason = "not UTF-8" if isinstance(exc, UnicodeDecodeError) else str(exc)
            self._fail(f"routes file {str(self.path)!r} rejected: {reason}")
            return False
        at_ms = 0 if not self.table.synced else int(time.time() * 1000)
        self.table.replace_all(
            (Route(r.tenant, MappingProxyType(dict(r.services)), at_ms) for r in routes), at_ms
        )
        self._digest = digest
        self.table.synced = True
        self._loaded_at = time.time()
        if self.problem is not None:
            log.info("routes file %s is readable again", self.path)
            self.problem = None
            self._throttle.forget()
        log.info("routes loaded from %s: %d tenants, table version %d", self.path, len(routes), self.table.version)
        return True

    def _fail(self, message: str) -> None:
        self.problem = message
        if self._on_error is not None:
            self._on_error(message)
        if self._loaded_at is None:
            return  # at start: start() raises it, once
        held = self._throttle.allow()
        if held is not None:
            kept = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self._loaded_at))
            log.error("%s; keeping the table read at %s%s", message, kept, held_back(held))
