"""HTTP client of the route service, for ``ktp tenant ...`` and the ``http://`` route source.

Errors::

    KtpError
    └── RouteServiceError        the route service refused a request or could not be reached
        ├── TenantNotFound       404 for a tenant (not retriable)
        └── (status 0, 5xx)      unreachable, timed out, or failing: retriable
"""

from __future__ import annotations

import json
import ssl
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit

import aiohttp
from yarl import URL

from proxy.errors import ConfigError, KtpError, RouteError, connect_error_reason
from proxy.routes.records import RouteRecord, parse_rfc3339, record_from_api

DEFAULT_SERVER = "http://127.0.0.1:8080"
DEFAULT_TIMEOUT = 10.0


class RouteServiceError(KtpError):
    """The route service answered with an error, or could not be reached (``status`` 0)."""

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status
        self.retriable = status == 0 or status >= 500 or status in (408, 429)


class TenantNotFound(RouteServiceError):
    """The tenant does not exist (or was deleted)."""

    def __init__(self, tenant: str) -> None:
        super().__init__(f"tenant {tenant!r} not found", 404)
        self.tenant = tenant


@dataclass(frozen=True, slots=True)
class WatchResult:
    """One answer of ``GET /v1/routes`` (see :mod:`proxy.routeservice.api`)."""

    records: list[RouteRecord]
    version: int
    synced_at_ms: int
    snapshot: bool


@dataclass(frozen=True, slots=True)
class Deletion:
    """Answer to a DELETE: when it takes effect and when it was written (None from a route
    service that does not say)."""

    tenant: str
    effective_from_ms: int | None
    written_at_ms: int | None


def wait_seconds(effective_from_ms: int | None, written_at_ms: int | None, now_ms: int) -> float:
    """How long after a write's answer to wait until it is in force: its lead as the route
    service measured it (no clock of ours involved), else the effective time by our clock."""
    if effective_from_ms is None:
        return 0.0
    if written_at_ms is not None:
        return max(effective_from_ms - written_at_ms, 0) / 1000
    return max(effective_from_ms - now_ms, 0) / 1000


def check_server(server: str) -> str:
    """Validate ``--server`` (``http(s)://host:port``), without a trailing slash."""
    parts = urlsplit(server)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"route service {server!r} must be an http:// or https:// URL with a host")
    if parts.query or parts.fragment:
        raise ConfigError(f"route service {server!r} must not have a query or fragment")
    return server.rstrip("/")


class RouteServiceClient:
    """Talks to one route service. ``token`` is sent with every request: writes always need it,
    reads unless the service runs with ``--public-reads``. ``ssl_context`` verifies an
    ``https://`` server (None: the system's CAs)."""

    def __init__(
        self,
        server: str,
        *,
        token: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.server = check_server(server)
        self.timeout = timeout
        self._token = token
        self._ssl: ssl.SSLContext | bool = ssl_context if ssl_context is not None else True
        self._session: aiohttp.ClientSession | None = None

    def __repr__(self) -> str:
        return f"RouteServiceClient(server={self.server!r}, token={'set' if self._token else None})"

    async def start(self) -> None:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                headers={"user-agent": "ktp"}, connector=aiohttp.TCPConnector(ssl=self._ssl)
            )

    async def stop(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def __aenter__(self) -> RouteServiceClient:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def put(self, tenant: str, routes: dict[str, str]) -> RouteRecord:
        """Create or replace ``tenant``'s routes; the stored record (with version and time)."""
        body = await self._request("PUT", self._tenant_path(tenant), json_body={"routes": routes}, write=True)
        return self._record(body)

    async def get(self, tenant: str) -> RouteRecord:
        """The tenant's record; raises :class:`TenantNotFound`."""
        return self._record(await self._request("GET", self._tenant_path(tenant), tenant=tenant))

    async def delete(self, tenant: str) -> Deletion:
        """Delete ``tenant``; when the deletion takes effect. Raises :class:`TenantNotFound` if
        it does not exist."""
        headers: dict[str, str] = {}
        await self._request("DELETE", self._tenant_path(tenant), write=True, tenant=tenant, headers_out=headers)
        try:
            effective = parse_rfc3339(headers["ktp-effective-from"]) if "ktp-effective-from" in headers else None
            written = parse_rfc3339(headers["ktp-written-at"]) if "ktp-written-at" in headers else None
        except RouteError as exc:
            raise RouteServiceError(f"{self.server}: unexpected answer to DELETE: {exc}", 502) from exc
        return Deletion(tenant, effective, written)

    async def list_tenants(self) -> list[RouteRecord]:
        """Every tenant's record."""
        body = await self._request("GET", "/v1/tenants")
        tenants = body.get("tenants") if isinstance(body, dict) else None
        if not isinstance(tenants, list):
            raise RouteServiceError(f"{self.server}: unexpected answer to GET /v1/tenants", 502)
        return [self._record(item) for item in tenants]

    async def watch(self, since: int, *, wait: float = 0.0, sync: bool = False) -> WatchResult:
        """Route changes above version ``since`` (deletions included), long-polling ``wait`` s."""
        query = f"?since={since}&wait={wait:g}" + ("&sync=true" if sync else "")
        body = await self._request("GET", "/v1/routes" + query, timeout=self.timeout + wait)
        try:
            if not isinstance(body, dict) or not isinstance(body.get("routes"), list):
                raise RouteError("no routes list")
            version = body.get("version")
            if not isinstance(version, int) or isinstance(version, bool):
                raise RouteError("no version")
            return WatchResult(
                [record_from_api(item) for item in body["routes"]],
                version,
                parse_rfc3339(body.get("synced_at")),
                bool(body.get("snapshot", False)),
            )
        except RouteError as exc:
            raise RouteServiceError(f"{self.server}: unexpected answer to GET /v1/routes: {exc}", 502) from exc

    # -- internals ------------------------------------------------------------------------------

    @staticmethod
    def _tenant_path(tenant: str) -> str:
        # Tenants may hold '/', '%', '?', '#': encode everything, and send the URL as encoded so
        # that nothing normalises "." or ".." away.
        return "/v1/tenants/" + quote(tenant, safe="")

    def _record(self, body: Any) -> RouteRecord:
        try:
            return record_from_api(body)
        except RouteError as exc:
            raise RouteServiceError(f"{self.server}: unexpected record in answer: {exc}", 502) from exc

    async def _request(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        write: bool = False,
        tenant: str | None = None,
        timeout: float | None = None,
        headers_out: dict[str, str] | None = None,
    ) -> Any:
        if self._session is None:
            await self.start()
        assert self._session is not None
        headers = {"accept": "application/json"}
        if self._token:
            headers["authorization"] = f"Bearer {self._token}"
        data = None
        if json_body is not None:
            data = json.dumps(json_body).encode()
            headers["content-type"] = "application/json"
        url = URL(self.server + path, encoded=True)
        try:
            async with self._session.request(
                method,
                url,
                data=data,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=timeout or self.timeout),
            ) as response:
                text = await response.text()
                status = response.status
                if headers_out is not None:
                    headers_out.update((k.lower(), v) for k, v in response.headers.items())
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            reason = connect_error_reason(exc)
            raise RouteServiceError(f"cannot reach the route service at {self.server}: {reason}") from exc
        if status == 204:
            return None
        try:
            body = json.loads(text) if text else None
        except (json.JSONDecodeError, RecursionError):
            body = None
        if status < 300:
            return body
        if status == 404 and tenant is not None:
            raise TenantNotFound(tenant)
        message = body.get("error") if isinstance(body, dict) else None
        if not isinstance(message, str):
            message = text[:200] or f"HTTP {status}"
        if status in (401, 403):
            message += f"; {auth_hint(write, given=bool(self._token))}"
        raise RouteServiceError(f"{self.server} answered {status}: {message}", status)


def auth_hint(write: bool, *, given: bool) -> str:
    """What to do about a 401/403 from the route service, in words a newcomer can act on."""
    if write:
        what = "the token given was refused" if given else "no token was given"
        return (
            f"{what}: writes need the route service's write token (its --token-file); pass a file "
            "holding it with --token-file FILE (KTP_TOKEN_FILE)"
        )
    if given:
        return (
            "the token given was refused: reads take the route service's write or read token "
            "(its --token-file or --read-token-file); check the file passed with --token-file "
            "(--routes-token-file for a sidecar)"
        )
    return (
        "reads need a token by default: pass --token-file FILE holding the route service's token "
        "(--routes-token-file for a sidecar), or run the route service with --public-reads true"
    )
