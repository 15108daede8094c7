"""The injector's HTTPS listener: ``POST /inject`` answers AdmissionReviews, ``GET /healthz``.

The API server only talks to webhooks over TLS. The certificate and key are re-read when their
files change (a Secret volume is updated in place by the kubelet, cert-manager renews before
expiry), so a renewed certificate is served without a restart; a half-written pair is ignored
until the next check. Metrics are served on their own plain-HTTP listener, like the sidecar's.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import ssl
import time
from typing import Any, Self

import aiohttp
from aiohttp import web

from proxy.admin.server import HttpServer, metrics_routes
from proxy.errors import ListenError
from proxy.injector.config import InjectorConfig
from proxy.injector.metrics import InjectorMetrics
from proxy.injector.patch import CONTAINER_NAME, Inject, Pass, Refuse
from proxy.injector.review import answer

log = logging.getLogger("proxy.injector")

# Large pods (many containers, big env) still fit: etcd's object limit is 1.5 MiB.
MAX_REVIEW_BYTES = 4 * 1024 * 1024
SHUTDOWN_TIMEOUT = 10.0


def server_tls_context(certfile: str, keyfile: str) -> ssl.SSLContext:
    """A TLS 1.2+ server context serving ``certfile``/``keyfile``."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(certfile, keyfile)
    return context


class InjectorServer:
    """``ktp injector serve``: ``start()``, ``stop()``, or ``serve()`` until a signal."""

    def __init__(self, config: InjectorConfig, *, metrics: InjectorMetrics | None = None) -> None:
        self.config = config
        self.metrics = metrics if metrics is not None else InjectorMetrics()
        self.host, self.port = config.listen
        self.metrics_server = HttpServer(
            config.metrics_addr, metrics_routes(self.metrics.render), name="metrics"
        )
        self._tls = server_tls_context(config.tls_certfile, config.tls_keyfile)
        self._tls_stamp = self._stamp()
        self._runner: web.AppRunner | None = None
        self._reloader: asyncio.Task[None] | None = None
        self._stopped = asyncio.Event()

    def __repr__(self) -> str:
        return (
            f"InjectorServer(listen={self.host}:{self.port}, image={self.config.template.image!r})"
        )

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        app = web.Application(client_max_size=MAX_REVIEW_BYTES)
        app.router.add_post("/inject", self._inject)
        app.router.add_get("/healthz", self._healthz)
        self._runner = web.AppRunner(
            app, access_log=None, handle_signals=False, shutdown_timeout=SHUTDOWN_TIMEOUT
        )
        await self._runner.setup()
        site = web.TCPSite(
            self._runner, self.host, self.port, ssl_context=self._tls, reuse_address=True
        )
        try:
            await site.start()
        except OSError as exc:
            await self._runner.cleanup()
            self._runner = None
            raise ListenError("injector webhook", "--listen", self.host, self.port, exc) from exc
        if self.port == 0:
            # Bound to an ephemeral port (tests): report the real one.
            self.port = int(self._runner.addresses[0][1])
        await self.metrics_server.start()
        self._reloader = asyncio.create_task(
            self._watch_certificate(), name="ktp-injector-tls-reload"
        )
        log.info("started %r", self)

    async def stop(self) -> None:
        """Finish the reviews in flight (aiohttp's shutdown timeout), then close."""
        if self._reloader is not None:
            self._reloader.cancel()
            await asyncio.gather(self._reloader, return_exceptions=True)
            self._reloader = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        await self.metrics_server.stop()
        log.info("stopped %r", self)

    async def serve(self) -> int:
        """Run until SIGTERM/SIGINT, then stop gracefully."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stopped.set)
        await self.start()
        try:
            await self._stopped.wait()
        finally:
            await self.stop()
        return 0

    async def _healthz(self, _: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def _inject(self, request: web.Request) -> web.Response:
        started = time.perf_counter()
        outcome = "error"
        try:
            try:
                raw = await request.read()
            except (ConnectionError, aiohttp.ClientPayloadError) as exc:
                # The API server gave up (its timeoutSeconds) or the connection broke: nobody
                # is left to answer, and it is not the injector's failure.
                outcome = "disconnected"
                log.info("client %s went away before sending its review: %s", request.remote, exc)
                return web.Response(status=400)  # never read: the peer is gone
            try:
                review = json.loads(raw)
                result = answer(review, self.config.template)
            except (ValueError, RecursionError, web.HTTPRequestEntityTooLarge) as exc:
                # json.JSONDecodeError and BadReview are ValueErrors: the caller sent garbage;
                # RecursionError: JSON nested deeper than the parser goes.
                outcome = "bad_request"
                status = 413 if isinstance(exc, web.HTTPRequestEntityTooLarge) else 400
                if status == 413:
                    reason = "body too large"
                elif isinstance(exc, RecursionError):
                    reason = "JSON nested too deeply"
                else:
                    reason = str(exc)
                log.warning("refused a request from %s: %s", request.remote, reason)
                return web.json_response(
                    {"error": f"not an AdmissionReview: {reason}"}, status=status
                )
            if isinstance(result.outcome, Inject):
                outcome = "injected"
                log.info("injected %s into pod %s", CONTAINER_NAME, result.pod)
            elif isinstance(result.outcome, Refuse):
                outcome = "refused"
                log.warning("refused pod %s: %s", result.pod, result.outcome.message)
            elif isinstance(result.outcome, Pass):
                outcome = "passed"
                log.debug("passed pod %s: %s", result.pod, result.outcome.reason)
            return web.json_response(result.body)
        except Exception:
            log.exception("failed to answer an AdmissionReview")
            return web.json_response(
                {"error": "internal error; see the injector's log"}, status=500
            )
        finally:
            self.metrics.reviews.labels(outcome).inc()
            self.metrics.review_duration.observe(time.perf_counter() - started)

    def _stamp(self) -> tuple[Any, ...]:
        """What changes when either file is replaced (a Secret update swaps a symlink)."""
        stamp: list[Any] = []
        for path in (self.config.tls_certfile, self.config.tls_keyfile):
            try:
                st = os.stat(path)
            except OSError:
                stamp.append(None)
            else:
                stamp.append((st.st_ino, st.st_mtime_ns, st.st_size))
        return tuple(stamp)

    async def _watch_certificate(self) -> None:
        while True:
            await asyncio.sleep(self.config.tls_reload_interval)
            stamp = self._stamp()
            if stamp == self._tls_stamp:
                continue
            try:
                # New handshakes use the new pair; connections already open keep theirs.
                self._tls.load_cert_chain(self.config.tls_certfile, self.config.tls_keyfile)
            except (OSError, ssl.SSLError) as exc:
                # A pair caught mid-update does not match; the old one stays until the next check.
                self.metrics.certificate_reloads.labels("error").inc()
                log.warning(
                    "could not reload the serving certificate, keeping the old one: %s", exc
                )
                continue
            self._tls_stamp = stamp
            self.metrics.certificate_reloads.labels("ok").inc()
            log.info("reloaded the serving certificate from %s", self.config.tls_certfile)
