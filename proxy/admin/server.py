"""Admin and metrics servers: small local HTTP listeners of their own (Envoy's admin model).

Admin (default 127.0.0.1:15000): ``GET /healthz`` (the process is up), ``GET /readyz`` (200 once
the group is joined, routes are synced and the app answers, else 503, with the checks as JSON and
a ``detail`` that does not affect readiness, e.g. stalled partitions),
``GET /routes`` (the route table, its version and sync state), ``GET /decisions`` (the last
decisions with reasons), ``GET /config`` (the effective configuration with secrets redacted, like
Envoy's ``/config_dump``: paths of secret files are shown, their contents and secret values
never). Metrics (default 0.0.0.0:15090): ``GET /metrics``.

Everything here is read-only; nothing changes state on a GET. The admin listener binds to
127.0.0.1 by default: it is for the pod's own probes and an operator's port-forward, not the
network (``/decisions`` shows tenants).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

from aiohttp import web

from proxy.metrics import CONTENT_TYPE

Handler = Callable[[web.Request], Any]


def json_response(body: Any, status: int = 200) -> web.Response:
    return web.Response(
        text=json.dumps(body, indent=1, sort_keys=True, default=str),
        status=status,
        content_type="application/json",
    )


class HttpServer:
    """One aiohttp listener serving a fixed set of GET routes."""

    def __init__(self, addr: tuple[str, int], routes: Mapping[str, Handler], *, name: str) -> None:
        self.host, self.port = addr
        self.name = name
        self._app = web.Application()
        for path, handler in routes.items():
            self._app.router.add_get(path, handler)
        self._runner: web.AppRunner | None = None

    def __repr__(self) -> str:
        return f"HttpServer(name={self.name!r}, addr={self.host}:{self.port})"

    async def start(self) -> None:
        self._runner = web.AppRunner(self._app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, reuse_address=True)
        await site.start()
        if self.port == 0:
            # Bound to an ephemeral port (tests): report the real one.
            self.port = int(self._runner.addresses[0][1])

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


def admin_routes(
    *,
    readiness: Callable[[], tuple[bool, dict[str, Any]]],
    routes: Callable[[], dict[str, Any]],
    decisions: Callable[[], list[dict[str, Any]]],
    detail: Callable[[], dict[str, Any]] | None = None,
    config: Callable[[], dict[str, Any]] | None = None,
) -> dict[str, Handler]:
    """``detail`` adds what readiness does not depend on but an operator wants to see next to
    it (stalled partitions) to ``/readyz`` as ``"detail"``. ``config`` serves ``/config``; it
    must return the configuration already redacted (``SidecarConfig.redacted``)."""

    async def healthz(_: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def readyz(_: web.Request) -> web.Response:
        ready, checks = readiness()
        body: dict[str, Any] = {"ready": ready, "checks": checks}
        if detail is not None:
            body["detail"] = detail()
        return json_response(body, 200 if ready else 503)

    async def get_routes(_: web.Request) -> web.Response:
        return json_response(routes())

    async def get_decisions(_: web.Request) -> web.Response:
        return json_response({"decisions": decisions()})

    async def get_config(_: web.Request) -> web.Response:
        assert config is not None
        return json_response({"config": config()})

    handlers: dict[str, Handler] = {
        "/healthz": healthz, "/readyz": readyz, "/routes": get_routes, "/decisions": get_decisions
    }
    if config is not None:
        handlers["/config"] = get_config
    return handlers


def metrics_routes(render: Callable[[], bytes]) -> dict[str, Handler]:
    async def metrics(_: web.Request) -> web.Response:
        response = web.Response(body=render())
        response.headers["content-type"] = CONTENT_TYPE
        return response

    return {"/metrics": metrics}
