"""``ktp routes serve``: the route service's HTTP server (API in :mod:`proxy.routeservice.api`).

Lifecycle (uvicorn's shape): :meth:`RouteService.start` opens the listener first (``/healthz``
answers, everything else 503 until the store has read the routes topic), then starts the store;
:meth:`RouteService.stop` wakes watchers, drains requests within ``drain_timeout`` and closes
the store. :meth:`RouteService.serve` does both and handles SIGTERM/SIGINT.

Extra endpoints for probes: ``GET /healthz`` (the process is up), ``GET /readyz`` (200 once the
store has read the routes topic and can write, else 503).

Access: writes need the write token (``--token-file``); reads need the write token or the read
token (``--read-token-file``, for sidecars using ``--routes http(s)://``) unless
``--public-reads true``. Probes need nothing. Tokens are compared in constant time and never logged: a
refused request is logged with its method, path and peer and why (no token, wrong token). Limits:
``--max-body-bytes``, ``--max-tenants``, and the name rules of :mod:`proxy.routes.records`.
``--tls-certfile``/``--tls-keyfile`` serve HTTPS.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import ClientPayloadError, web
from prometheus_client import CONTENT_TYPE_LATEST

from proxy.config import Option, parse_bool, parse_host_port, parse_positive_float, parse_positive_int
from proxy.errors import BrokerError, ConfigError, ListenError, RouteSourceError
from proxy.kafka import KAFKA_OPTIONS, KafkaConnection, server_ssl_context
from proxy.routeservice.api import (
    DEFAULT_MAX_BODY_BYTES,
    RequestError,
    bearer_token,
    check_content_type,
    parse_flag,
    parse_put_body,
    parse_since,
    parse_tenant,
    parse_wait,
    token_matches,
)
from proxy.routeservice.metrics import RouteServiceMetrics
from proxy.routeservice.groups import DEFAULT_GROUPS_TOPIC, DEFAULT_REAP_INTERVAL, GroupReaper
from proxy.routeservice.store import RouteStore
from proxy.routes.lead import DEFAULT_ROUTE_LEAD_MS, MAX_ROUTE_LEAD_MS
from proxy.routes.records import format_rfc3339
from proxy.routes.topic import DEFAULT_ROUTES_TOPIC, check_topic_name

log = logging.getLogger(__name__)

DEFAULT_LISTEN = "0.0.0.0:8080"
DEFAULT_DRAIN_TIMEOUT = 5.0
# Every sidecar holds the whole route table; the bound keeps it (and each watch answer) small.
DEFAULT_MAX_TENANTS = 10_000
# Refused requests logged per second at most: a scan must not drown the log.
REFUSALS_LOGGED_PER_SECOND = 5


def parse_route_lead(raw: str) -> float:
    """``--route-lead``: seconds, 0 up to 600."""
    value = float(raw)
    if not 0 <= value <= MAX_ROUTE_LEAD_MS / 1000:
        raise ValueError(f"must be between 0 and {MAX_ROUTE_LEAD_MS // 1000} seconds, got {raw}")
    return value

ROUTE_SERVICE_OPTIONS = (
    *KAFKA_OPTIONS,
    Option("listen", "HOST:PORT of the HTTP API", DEFAULT_LISTEN, parse=parse_host_port),
    Option("routes-topic", "compacted topic storing the routes (created if missing)", DEFAULT_ROUTES_TOPIC),
    Option("token-file", "file holding the bearer token required for writes (re-read when it changes)", required=True),
    Option(
        "read-token-file",
        "file holding a bearer token that allows reads only (for sidecars using --routes http://); "
        "the write token allows reads too",
    ),
    Option(
        "public-reads",
        "serve GET /v1/tenants and /v1/routes without a token (tenant names become visible to "
        "anyone who can reach the service)",
        False,
        parse=parse_bool,
    ),
    Option("max-body-bytes", "largest request body accepted", DEFAULT_MAX_BODY_BYTES, parse=parse_positive_int),
    Option("max-tenants", "most tenants stored; a PUT of a new tenant beyond it is refused (409)", DEFAULT_MAX_TENANTS, parse=parse_positive_int),
    Option("tls-certfile", "serve HTTPS with this certificate (PEM, chain included)"),
    Option("tls-keyfile", "private key of --tls-certfile"),
    Option(
        "routes-topic-replication-factor",
        "replication factor when creating the routes topic (default: min(3, brokers))",
        parse=parse_positive_int,
    ),
    Option("groups-topic", "compacted topic where sandbox sidecars register their consumer groups", DEFAULT_GROUPS_TOPIC),
    Option(
        "group-reap-interval",
        "seconds between deletions of sandbox groups no route references (they must also be empty)",
        DEFAULT_REAP_INTERVAL,
        parse=parse_positive_float,
    ),
    Option(
        "route-lead",
        "seconds between storing a route (or a deletion) and its taking effect; sidecars decide "
        "records older than their last sync plus this lead without asking again (0: every batch "
        "newer than the last sync asks)",
        DEFAULT_ROUTE_LEAD_MS / 1000,
        parse=parse_route_lead,
    ),
    Option("log-level", "log level", "INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR")),
)



@dataclass(frozen=True, slots=True, kw_only=True)
class RouteServiceConfig:
    """Everything ``ktp routes serve`` needs (the token itself stays in its file)."""

    kafka: KafkaConnection
    listen: tuple[str, int] = parse_host_port(DEFAULT_LISTEN)
    routes_topic: str = DEFAULT_ROUTES_TOPIC
    token_file: str
    read_token_file: str | None = None
    public_reads: bool = False
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    max_tenants: int = DEFAULT_MAX_TENANTS
    tls_certfile: str | None = None
    tls_keyfile: str | None = None
    routes_topic_replication_factor: int | None = None
    log_level: str = "INFO"
    drain_timeout: float = DEFAULT_DRAIN_TIMEOUT
    groups_topic: str = DEFAULT_GROUPS_TOPIC
    group_reap_interval: float = DEFAULT_REAP_INTERVAL
    route_lead: float = DEFAULT_ROUTE_LEAD_MS / 1000

    def __post_init__(self) -> None:
        if bool(self.tls_certfile) != bool(self.tls_keyfile):
            raise ConfigError("--tls-certfile and --tls-keyfile go together: give both or neither")
        if self.public_reads and self.read_token_file:
            raise ConfigError("--read-token-file has no use with --public-reads: give one or the other")

    @property
    def scheme(self) -> str:
        return "https" if self.tls_certfile else "http"

    @classmethod
    def from_options(cls, values: dict[str, Any]) -> RouteServiceConfig:
        check_topic_name(values["routes_topic"])
        return cls(
            kafka=KafkaConnection.from_options(values),
            listen=values["listen"],
            routes_topic=values["routes_topic"],
            token_file=values["token_file"],
            read_token_file=values["read_token_file"],
            public_reads=values["public_reads"],
            max_body_bytes=values["max_body_bytes"],
            max_tenants=values["max_tenants"],
            tls_certfile=values["tls_certfile"],
            tls_keyfile=values["tls_keyfile"],
            routes_topic_replication_factor=values["routes_topic_replication_factor"],
            log_level=values["log_level"],
            groups_topic=check_topic_name(values["groups_topic"]),
            group_reap_interval=values["group_reap_interval"],
            route_lead=values["route_lead"],
        )


class TokenFile:
    """The write token, read from a file and re-read when the file changes (a rotated
    Kubernetes Secret is swapped in place, so rotation needs no restart)."""

    def __init__(self, path: str | os.PathLike[str], flag: str = "--token-file") -> None:
        self.path = Path(path)
        self.flag = flag
        self._stat: tuple[int, int, int] | None = None
        self._token = ""
        self.token()  # fail at start, not at the first write

    def __repr__(self) -> str:
        return f"TokenFile(path={str(self.path)!r})"

    def token(self) -> str:
        """The current token. Raises :class:`ConfigError` if the file is unreadable or empty at
        the first read; later, a broken file keeps the last good token (and is logged)."""
        try:
            st = os.stat(self.path)
            key = (st.st_mtime_ns, st.st_ino, st.st_size)
            if key != self._stat:
                token = self.path.read_text(encoding="utf-8").strip()
                if not token:
                    raise ConfigError(f"{self.flag} {str(self.path)!r} is empty")
                self._token, self._stat = token, key
        except (OSError, UnicodeDecodeError, ConfigError) as exc:
            # UnicodeDecodeError's str() quotes the bytes it choked on: name the problem only.
            reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8"
            problem = exc if isinstance(exc, ConfigError) else f"cannot read {self.flag} {str(self.path)!r}: {reason}"
            if not self._token:
                raise ConfigError(str(problem)) from exc
            log.error("%s; keeping the previous token", problem)
        return self._token


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        text=json.dumps(body, separators=(",", ":")) + "\n",
        status=status,
        content_type="application/json",
        headers=headers,
    )


def json_error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return json_response({"error": message}, status, headers)


def _json_errors(max_body_bytes: int) -> Any:
    """Middleware: every error answer is ``{"error": ...}``, aiohttp's own 404/405/413 included."""

    @web.middleware
    async def middleware(request: web.Request, handler: Any) -> web.StreamResponse:
        return await _answer_errors(request, handler, max_body_bytes)

    return middleware


async def _answer_errors(request: web.Request, handler: Any, max_body_bytes: int) -> web.StreamResponse:
    try:
        response: web.StreamResponse = await handler(request)
        return response
    except RequestError as exc:
        return json_error(exc.status, str(exc))
    except (BrokerError, RouteSourceError) as exc:
        log.warning("%s %s: %s", request.method, request.path, exc)
        return json_error(503, f"routes topic unavailable: {exc}", {"retry-after": "1"})
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        headers = {k: v for k, v in exc.headers.items() if k.lower() in ("allow", "www-authenticate", "retry-after")}
        if exc.status == 413:
            message = f"request body too large: at most {max_body_bytes} bytes"
        elif exc.status == 404:
            message = f"no such endpoint: {request.path[:200]}"
        elif exc.status == 405:
            message = f"method {request.method} not allowed on {request.path[:200]}"
        else:
            message = exc.text if exc.text and exc.text != f"{exc.status}: {exc.reason}" else exc.reason
        return json_error(exc.status, message, headers)
    except asyncio.CancelledError:
        raise
    except (ConnectionError, ClientPayloadError) as exc:
        # The client went away mid-request: nobody to answer, and not our failure.
        log.info("%s %s: client %s went away: %s", request.method, request.path, request.remote, exc)
        return json_error(400, "the connection was closed before the request was read")
    except Exception:
        log.exception("%s %s failed", request.method, request.path)
        return json_error(500, "internal error; see the route service's log")


class RouteService:
    """The route service: an aiohttp listener over a :class:`RouteStore`."""

    def __init__(self, config: RouteServiceConfig, *, store: RouteStore | None = None) -> None:
        self.config = config
        self.tokens = TokenFile(config.token_file)
        self.read_tokens = TokenFile(config.read_token_file, "--read-token-file") if config.read_token_file else None
        self._tls = server_ssl_context(config.tls_certfile, config.tls_keyfile) if config.tls_certfile and config.tls_keyfile else None
        self._refusals = _RefusalLog()
        self.store = store or RouteStore(
            config.kafka,
            config.routes_topic,
            replication_factor=config.routes_topic_replication_factor,
            route_lead_ms=round(config.route_lead * 1000),
        )
        self.reaper = GroupReaper(
            config.kafka,
            topic=config.groups_topic,
            live_routes=self.store.list_tenants,
            interval=config.group_reap_interval,
        )
        self.host, self.port = config.listen
        self.metrics = RouteServiceMetrics(self.store.tenant_count)
        self.app = web.Application(
            client_max_size=config.max_body_bytes,
            middlewares=[self.metrics.middleware(), _json_errors(config.max_body_bytes)],
        )
        self.app.add_routes(
            [
                web.get("/healthz", self._healthz),
                web.get("/readyz", self._readyz),
                web.get("/metrics", self._metrics),
                web.get("/v1/tenants", self._list_tenants),
                web.get("/v1/tenants/{tenant}", self._get_tenant),
                web.put("/v1/tenants/{tenant}", self._put_tenant),
                web.delete("/v1/tenants/{tenant}", self._delete_tenant),
                web.get("/v1/routes", self._watch_routes),
            ]
        )
        self._runner: web.AppRunner | None = None
        self._store_task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()

    def __repr__(self) -> str:
        return f"RouteService(listen={self.host}:{self.port}, topic={self.config.routes_topic!r}, store={self.store!r})"

    @property
    def url(self) -> str:
        """Base URL clients use (the loopback address when listening on every interface)."""
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
        scheme = self.config.scheme
        return f"{scheme}://[{host}]:{self.port}" if ":" in host else f"{scheme}://{host}:{self.port}"

    # -- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        """Listen, then read the routes topic; returns once the store is ready."""
        self._runner = web.AppRunner(
            self.app, access_log=None, handle_signals=False, shutdown_timeout=self.config.drain_timeout
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, reuse_address=True, ssl_context=self._tls)
        try:
            await site.start()
        except OSError as exc:
            await self._runner.cleanup()
            self._runner = None
            raise ListenError("route service", "--listen", self.host, self.port, exc) from exc
        if self.port == 0:
            # Bound to an ephemeral port (tests): report the real one.
            self.port = int(self._runner.addresses[0][1])
        log.info(
            "route service listening on %s://%s:%d (reads %s)", self.config.scheme, self.host, self.port,
            "public" if self.config.public_reads else "need a token",
        )
        await self.store.start()
        await self.reaper.start()

    async def stop(self) -> None:
        """Stop accepting, answer long-polls, drain, then close the store."""
        self._stopping.set()
        # Watchers return what they have at once instead of holding the drain.
        self.store.release_watchers()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        await self.reaper.stop()
        await self.store.stop()

    async def __aenter__(self) -> RouteService:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def serve(self) -> int:
        """Run until SIGTERM or SIGINT; the exit code."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stopping.set)
        try:
            starting = asyncio.create_task(self.start())
            stop = asyncio.create_task(self._stopping.wait())
            await asyncio.wait({starting, stop}, return_when=asyncio.FIRST_COMPLETED)
            if starting.done():
                starting.result()
                await stop
            else:
                starting.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await starting
        finally:
            await self.stop()
        return 0

    # -- handlers -------------------------------------------------------------------------------

    def _require_ready(self) -> None:
        if not self.store.ready:
            raise RequestError("route service is starting: not yet synced with the routes topic", 503)

    def _authorize(self, request: web.Request, *, write: bool = True) -> None:
        """Let the request through, or answer 401. Reads accept the write or the read token (or
        nothing with ``--public-reads``); writes only the write token. Both comparisons run
        for a read, so timing does not tell which token a guess was close to."""
        if not write and self.config.public_reads:
            return
        given = bearer_token(request.headers.get("authorization"))
        allowed = token_matches(given, self.tokens.token())
        if not write and self.read_tokens is not None:
            allowed = token_matches(given, self.read_tokens.token()) or allowed
        if allowed:
            return
        self._refusals.log(request, "no bearer token" if given is None else "wrong token", write=write)
        what = "writes need" if write else "reads need"
        raise web.HTTPUnauthorized(
            text=f"{what} 'authorization: Bearer <token>' with the route service's token",
            headers={"www-authenticate": 'Bearer realm="ktp-route-service"'},
        )

    async def _healthz(self, _: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def _metrics(self, _: web.Request) -> web.Response:
        # Like the probes, open to anyone who reaches the port: labels carry no tenant names.
        body = self.metrics.render()
        return web.Response(body=body, headers={"content-type": CONTENT_TYPE_LATEST})

    async def _readyz(self, _: web.Request) -> web.Response:
        checks = {"routes_synced": self.store.reader.synced, "stopping": self._stopping.is_set()}
        ready = self.store.ready and not self._stopping.is_set()
        return json_response({"ready": ready, "checks": checks}, 200 if ready else 503)

    async def _list_tenants(self, request: web.Request) -> web.Response:
        self._authorize(request, write=False)
        self._require_ready()
        records = await self.store.list_tenants()
        return json_response({"tenants": [r.to_api() for r in records], "version": self.store.version})

    async def _get_tenant(self, request: web.Request) -> web.Response:
        self._authorize(request, write=False)
        tenant = parse_tenant(request.match_info["tenant"])
        self._require_ready()
        record = await self.store.get(tenant)
        if record is None:
            return json_error(404, f"tenant {tenant!r} not found")
        return json_response(record.to_api())

    async def _put_tenant(self, request: web.Request) -> web.Response:
        self._authorize(request)
        tenant = parse_tenant(request.match_info["tenant"])
        check_content_type(request.headers.get("content-type", ""))
        routes = parse_put_body(await request.read())
        self._require_ready()
        if await self.store.get(tenant) is None and len(self.store) >= self.config.max_tenants:
            # A soft bound: replicas writing new tenants at the same instant may pass it by a few.
            raise RequestError(
                f"tenant limit reached: {self.config.max_tenants} tenants exist (--max-tenants); "
                "delete unused tenants first",
                409,
            )
        record = await self.store.put(tenant, routes)
        self.reaper.poke()  # a changed route may leave a sandbox group unreferenced
        return json_response(record.to_api())

    async def _delete_tenant(self, request: web.Request) -> web.Response:
        self._authorize(request)
        tenant = parse_tenant(request.match_info["tenant"])
        self._require_ready()
        record = await self.store.delete(tenant)
        if record is None:
            return json_error(404, f"tenant {tenant!r} not found")
        self.reaper.poke()
        # 204 has no body: when the deletion takes effect travels in headers.
        headers = {"ktp-effective-from": format_rfc3339(record.effective_from_ms)}
        if record.written_at_ms is not None:
            headers["ktp-written-at"] = format_rfc3339(record.written_at_ms)
        return web.Response(status=204, headers=headers)

    async def _watch_routes(self, request: web.Request) -> web.Response:
        self._authorize(request, write=False)
        query = request.query
        since = parse_since(query.get("since"))
        wait = parse_wait(query.get("wait"))
        sync = parse_flag("sync", query.get("sync"))
        self._require_ready()
        changes = await self.store.watch(since, wait=wait, sync=sync)
        return json_response(
            {
                "routes": [r.to_api(include_deleted=True) for r in changes.records],
                "version": changes.version,
                "synced_at": format_rfc3339(changes.synced_at_ms),
                "snapshot": changes.snapshot,
            }
        )


class _RefusalLog:
    """Logs refused requests (method, path, peer, why; never the token), at most
    ``REFUSALS_LOGGED_PER_SECOND`` a second, then one line saying how many were not logged."""

    def __init__(self) -> None:
        self._second = 0
        self._logged = 0
        self._suppressed = 0

    def log(self, request: web.Request, why: str, *, write: bool) -> None:
        now = int(time.monotonic())
        if now != self._second:
            if self._suppressed:
                log.warning("%d more refused requests were not logged", self._suppressed)
            self._second, self._logged, self._suppressed = now, 0, 0
        if self._logged >= REFUSALS_LOGGED_PER_SECOND:
            self._suppressed += 1
            return
        self._logged += 1
        # repr() of the path: a percent-decoded CR/LF cannot forge a log line.
        log.warning(
            "refused %s %r from %s: %s (%s need the %s token)",
            request.method, request.path[:200], request.remote, why,
            "writes" if write else "reads", "write" if write else "read or write",
        )
