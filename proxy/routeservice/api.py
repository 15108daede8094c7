"""The route service's HTTP API: request parsing and validation, no I/O.

    PUT    /v1/tenants/{tenant}   body {"routes": {"<service>": "<sandbox>", ...}}  → 200 record
    GET    /v1/tenants/{tenant}   → 200 record, 404
    DELETE /v1/tenants/{tenant}   → 204, 404
    GET    /v1/tenants            → 200 {"tenants": [record, ...], "version": N}
    GET    /v1/routes?since=N&wait=S&sync=true
                                  → 200 {"routes": [record + "deleted", ...], "version": N,
                                         "synced_at": RFC 3339, "snapshot": bool}

A record is ``{"tenant", "routes", "version", "effective_from"}``. Writes (PUT, DELETE) need
``authorization: Bearer <token>``. Errors are ``{"error": "..."}`` with a 4xx/5xx status.

``GET /v1/routes`` is the watch the ``http://`` route source long-polls: every record (deletions
included) with a version above ``since``, waiting up to ``wait`` seconds for one when there is
none. ``version`` in the answer is the cursor for the next call. ``sync=true`` makes the replica
catch up with the routes topic first, so the answer holds every write acknowledged before the
request (the source's ``catch_up()``; the first answer is its sync marker).
"""

from __future__ import annotations

import hmac
import json
from typing import Any

from proxy.errors import RouteError
from proxy.routes.records import check_routes, check_tenant_value

DEFAULT_MAX_BODY_BYTES = 64 * 1024
MAX_WATCH_WAIT = 60.0
_PUT_FIELDS = frozenset({"routes"})
_JSON_TYPES = ("application/json",)


class RequestError(RouteError):
    """A request the API refuses; ``status`` is the HTTP status to answer with."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def parse_tenant(raw: str) -> str:
    """The ``{tenant}`` path segment (already percent-decoded)."""
    try:
        return check_tenant_value(raw)
    except RouteError as exc:
        raise RequestError(str(exc)) from exc


def check_content_type(content_type: str) -> None:
    """A body must be JSON; an absent content type is taken as JSON (``curl -d`` users)."""
    media = content_type.split(";", 1)[0].strip().lower()
    if media and media not in _JSON_TYPES and not media.endswith("+json"):
        raise RequestError(f"content-type {media!r} is not supported: send application/json", 415)


def parse_put_body(raw: bytes) -> dict[str, str]:
    """Validate a PUT body ``{"routes": {"<service>": "<sandbox>", ...}}``; the routes."""
    try:
        body: Any = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise RequestError("body is not UTF-8") from exc
    except json.JSONDecodeError as exc:
        raise RequestError(f"body is not valid JSON: {exc.msg} at position {exc.pos}") from exc
    except RecursionError as exc:
        # Deeper than the parser goes: bad input, not our failure.
        raise RequestError("body is JSON nested too deeply") from exc
    if not isinstance(body, dict):
        raise RequestError('body must be a JSON object: {"routes": {"<service>": "<sandbox>"}}')
    unknown = sorted(str(key) for key in body if key not in _PUT_FIELDS)
    if unknown:
        raise RequestError(
            f"unknown field(s) {', '.join(repr(k[:64]) for k in unknown[:5])}: "
            'the body is {"routes": {"<service>": "<sandbox>"}}'
        )
    if "routes" not in body:
        raise RequestError('body has no "routes": send {"routes": {"<service>": "<sandbox>"}}')
    try:
        routes = check_routes(body["routes"])
    except RouteError as exc:
        raise RequestError(str(exc)) from exc
    if not routes:
        # A tenant with no routes is what a deletion looks like to every sidecar: say so.
        raise RequestError('"routes" is empty: name at least one service, or DELETE the tenant')
    return routes


def parse_since(raw: str | None) -> int:
    """``since`` query parameter: a version, or -1 (the default) for everything."""
    if raw is None or raw == "":
        return -1
    try:
        value = int(raw)
    except ValueError:
        raise RequestError(f"since={raw[:32]!r} is not an integer version") from None
    if value < -1:
        raise RequestError(f"since={value} must be a version >= -1")
    return value


def parse_wait(raw: str | None) -> float:
    """``wait`` query parameter: seconds to long-poll, 0 (the default) to MAX_WATCH_WAIT."""
    if raw is None or raw == "":
        return 0.0
    try:
        value = float(raw)
    except ValueError:
        raise RequestError(f"wait={raw[:32]!r} is not a number of seconds") from None
    if not 0 <= value <= MAX_WATCH_WAIT:  # also refuses NaN
        raise RequestError(f"wait={raw[:32]} must be between 0 and {MAX_WATCH_WAIT:.0f} seconds")
    return value


def parse_flag(name: str, raw: str | None) -> bool:
    """A boolean query parameter: true/false/1/0 (absent: false)."""
    if raw is None or raw == "":
        return False
    lowered = raw.lower()
    if lowered in ("1", "true", "yes"):
        return True
    if lowered in ("0", "false", "no"):
        return False
    raise RequestError(f"{name}={raw[:32]!r} must be true or false")


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``authorization: Bearer <token>`` header (scheme case-insensitive)."""
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip() or None


def token_matches(given: str | None, expected: str) -> bool:
    """Compare in constant time, so response timing does not reveal a token's prefix."""
    if given is None:
        return False
    return hmac.compare_digest(given.encode("utf-8", "surrogateescape"), expected.encode("utf-8"))
