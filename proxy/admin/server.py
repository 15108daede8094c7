"""Admin and metrics servers: small local HTTP listeners of their own (Envoy's admin model).

Admin (default 127.0.0.1:14000): ``GET /healthz`` (the process is up), ``GET /readyz`` (200 once
the group is joined, routes are synced and the app answers, else 503, with the checks as JSON and
a ``detail`` that does not affect readiness, e.g. stalled partitions),
``GET /routes`` (the route table, its version and sync state), ``GET /decisions`` (the last
decisions with reasons), ``GET /config`` (the effective configuration with secrets redacted, like
Envoy's ``/config_dump``: paths of secret files are shown, their contents and secret values
never). Metrics (default 0.0.0.0:14090): ``GET /metrics``.

Both are :class:`proxy.httpserver.LocalHttpServer` listeners (not aiohttp's: see that module).
Everything here is read-only; nothing changes state on a GET. The admin listener binds to
127.0.0.1 by default: it is for the pod's own probes and an operator's port-forward, not the
network (``/decisions`` shows tenants).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from proxy.httpserver import LocalHttpServer, Request, Response
from proxy.metrics import CONTENT_TYPE

Handler = Callable[[Request], Awaitable[Response]]
TEXT = "text/plain; charset=utf-8"


def json_response(body: Any, status: int = 200) -> Response:
    text = json.dumps(body, indent=1, sort_keys=True, default=str)
    return Response(status, text.encode(), {"content-type": "application/json; charset=utf-8"})


class HttpServer:
    """One local listener serving a fixed set of GET (and HEAD) routes."""

    def __init__(self, addr: tuple[str, int], routes: Mapping[str, Handler], *, name: str) -> None:
        self.name = name
        self._routes = dict(routes)
        self._listener = LocalHttpServer(addr, self._dispatch, name=name)

    def __repr__(self) -> str:
        return f"HttpServer(name={self.name!r}, addr={self.host}:{self.port})"

    @property
    def host(self) -> str:
        return self._listener.host

    @property
    def port(self) -> int:
        """The bound port (the real one once started on port 0)."""
        return self._listener.port

    async def start(self) -> None:
        await self._listener.start()

    async def stop(self) -> None:
        await self._listener.stop()

    async def _dispatch(self, request: Request) -> Response:
        handler = self._routes.get(request.path)
        if handler is None:
            return Response(404, b"404: Not Found\n", {"content-type": TEXT})
        if request.method not in ("GET", "HEAD"):
            return Response(405, b"405: Method Not Allowed\n", {"content-type": TEXT, "allow": "GET, HEAD"})
        return await handler(request)


def admin_routes(
    *,
    readiness: Callable[[], tuple[bool, dict[str, Any]]],
    routes: Callable[[], dict[str, Any]],
    decisions: Callable[[], list[dict[str, Any]]],
    detail: Callable[[], dict[str, Any]] | None = None,
    config: Callable[[], dict[str, Any]] | None = None,
    reasons: Callable[[], dict[str, str]] | None = None,
) -> dict[str, Handler]:
    """``detail`` adds what readiness does not depend on but an operator wants to see next to
    it (stalled partitions) to ``/readyz`` as ``"detail"``. ``config`` serves ``/config``; it
    must return the configuration already redacted (``SidecarConfig.redacted``). ``reasons``
    says in words why each failing check fails (``"reasons"``, empty when ready); the checks
    stay booleans, for probes and scripts that read them."""

    async def healthz(_: Request) -> Response:
        return Response(200, b"ok\n", {"content-type": TEXT})

    async def readyz(_: Request) -> Response:
        ready, checks = readiness()
        body: dict[str, Any] = {"ready": ready, "checks": checks}
        if reasons is not None:
            body["reasons"] = reasons()
        if detail is not None:
            body["detail"] = detail()
        return json_response(body, 200 if ready else 503)

    async def get_routes(_: Request) -> Response:
        return json_response(routes())

    async def get_decisions(_: Request) -> Response:
        return json_response({"decisions": decisions()})

    async def get_config(_: Request) -> Response:
        assert config is not None
        return json_response({"config": config()})

    handlers: dict[str, Handler] = {
        "/healthz": healthz, "/readyz": readyz, "/routes": get_routes, "/decisions": get_decisions
    }
    if config is not None:
        handlers["/config"] = get_config
    return handlers


def metrics_routes(render: Callable[[], bytes]) -> dict[str, Handler]:
    async def metrics(_: Request) -> Response:
        return Response(200, render(), {"content-type": CONTENT_TYPE})

    return {"/metrics": metrics}
