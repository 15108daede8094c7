"""AppHealth: is the app ready to take deliveries?

No record is fetched for delivery while the app is not healthy (``--app-health-url``).
The probe is a GET of ``--app-health-url`` (healthy on 2xx) or, by default, a TCP connect to the
app URL's host and port. A delivery that cannot connect marks the app unhealthy at once, so the
sidecar stops fetching instead of burning retry attempts on a restarting app.
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
import time
from collections.abc import Callable
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

if TYPE_CHECKING:
    import aiohttp

log = logging.getLogger(__name__)

DEFAULT_INTERVAL = 1.0
UNHEALTHY_INTERVAL = 0.25
PROBE_TIMEOUT = 2.0


class AppHealth:
    """Probes the app periodically; ``healthy`` and ``wait_healthy()`` tell the sidecar."""

    def __init__(
        self,
        app_url: str,
        *,
        health_url: str | None = None,
        interval: float = DEFAULT_INTERVAL,
        on_change: Callable[[bool], None] | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        parts = urlsplit(app_url)
        # An https:// health URL is verified like the deliveries (None: the system's CAs).
        self._ssl: ssl.SSLContext | bool = ssl_context if ssl_context is not None else True
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.health_url = health_url
        self.interval = interval
        self._on_change = on_change
        self._healthy = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._session: aiohttp.ClientSession | None = None
        self._wake = asyncio.Event()
        # The last probe's result in words, and when (wall clock), for /readyz.
        self.last_probe = "not probed yet"
        self.last_probe_at: float | None = None

    @property
    def target(self) -> str:
        """What is probed: the health URL, or the app's TCP address."""
        return self.health_url or f"tcp://{self.host}:{self.port}"

    def __repr__(self) -> str:
        return f"AppHealth(target={self.target!r}, healthy={self.healthy})"

    @property
    def healthy(self) -> bool:
        return self._healthy.is_set()

    async def wait_healthy(self) -> None:
        await self._healthy.wait()

    def mark_unhealthy(self, why: str) -> None:
        """A delivery could not reach the app: stop until the probe says otherwise."""
        if self.healthy:
            self._record(f"a delivery failed: {why}")
            log.warning("app marked unhealthy: %s", why)
            self._set(False)
            self._wake.set()

    async def start(self) -> None:
        if self.health_url:
            # Imported only here: a sidecar probing with a TCP connect (the default) need not
            # load an HTTP client library (proxy.httpserver says why that matters).
            import aiohttp

            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=PROBE_TIMEOUT),
                connector=aiohttp.TCPConnector(ssl=self._ssl),
            )
        self._task = asyncio.create_task(self._run(), name="ktp-app-health")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def probe(self) -> bool:
        """One probe of the app; True when it answers. :attr:`last_probe` says what it found."""
        if self._session is not None and self.health_url:
            import aiohttp

            from proxy.errors import connect_error_reason

            try:
                async with self._session.get(self.health_url) as response:
                    ok = 200 <= response.status < 300
                    self._record(f"GET {self.health_url} answered {response.status}")
                    return ok
            except (TimeoutError, aiohttp.ClientError, OSError) as exc:
                self._record(f"GET {self.health_url} failed: {connect_error_reason(exc)}")
                return False
        try:
            _, writer = await asyncio.wait_for(
                asyncio.open_connection(self.host, self.port), PROBE_TIMEOUT
            )
        except (TimeoutError, OSError) as exc:
            why = f"timed out after {PROBE_TIMEOUT}s" if isinstance(exc, TimeoutError) else (
                os.strerror(exc.errno).lower() if exc.errno else str(exc)
            )
            self._record(f"TCP connect to {self.host}:{self.port} failed: {why}")
            return False
        self._record(f"TCP connect to {self.host}:{self.port} succeeded")
        writer.close()
        try:
            await writer.wait_closed()
        except OSError:
            pass
        return True

    async def _run(self) -> None:
        while True:
            ok = await self.probe()
            if ok != self.healthy:
                if ok:
                    log.info("app is healthy (%s)", self.last_probe)
                else:
                    # Deliveries stop until it answers again: worth a WARNING, once per change.
                    log.warning("app is not healthy, deliveries wait: %s", self.last_probe)
                self._set(ok)
            self._wake.clear()
            try:
                async with asyncio.timeout(self.interval if ok else UNHEALTHY_INTERVAL):
                    await self._wake.wait()
            except TimeoutError:
                pass

    def _record(self, result: str) -> None:
        self.last_probe = result
        self.last_probe_at = time.time()

    def _set(self, healthy: bool) -> None:
        if healthy:
            self._healthy.set()
        else:
            self._healthy.clear()
        if self._on_change is not None:
            self._on_change(healthy)
