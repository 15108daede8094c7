"""Errors raised by kafka-tenant-proxy.

Every error carries ``retriable``: whether trying the same thing again later may succeed.

    KtpError
    ├── ConfigError            bad option, file or annotation; fix the input (not retriable)
    │   └── ListenError        a listener's address is taken or not ours to bind
    ├── RouteError             a route or route source is unusable
    │   └── RouteSourceError   the source could not be read now (retriable)
    ├── UpstreamError          the app did not take a delivery
    │   ├── AppUnavailable     connection refused/reset, timeout (retriable)
    │   └── AppRejected        the app answered with a status we do not retry (not retriable)
    ├── PublishError           a publish request was refused; carries its HTTP status
    └── BrokerError            Kafka could not be reached or refused us (retriable)
"""

from __future__ import annotations

import errno
import os


class KtpError(Exception):
    """Base of every error this package raises on purpose."""

    retriable: bool = False


class ConfigError(KtpError):
    """An option, config file or annotation is invalid. The message names it and says why."""


class ListenError(ConfigError):
    """A listener could not bind its address (in use by another process, or not allowed).

    The message names the listener, the address and the option that moves it: two sidecars on
    one host with the same ports is the usual cause, and the fix is an option, not a retry."""

    def __init__(self, what: str, flag: str, host: str, port: int, exc: OSError) -> None:
        self.what, self.flag, self.host, self.port = what, flag, host, port
        # asyncio's bind error repeats the address in strerror; the errno's own words are enough.
        reason = os.strerror(exc.errno) if exc.errno else (exc.strerror or type(exc).__name__)
        if exc.errno == errno.EADDRINUSE:
            hint = f"another process listens there; stop it or give this one another {flag}"
            if flag.endswith("-addr"):
                hint += " (each sidecar sharing a host or pod network needs its own ports)"
        elif exc.errno in (errno.EACCES, errno.EPERM):
            hint = f"ports below 1024 need privileges; choose another {flag}"
        elif exc.errno in (errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT):
            hint = f"{host} is not an address of this host; fix {flag}"
        else:
            hint = f"check {flag}"
        super().__init__(f"cannot listen on {host}:{port} for the {what} ({flag}): {reason.lower()}; {hint}")


class RouteError(KtpError):
    """A route, route table or route source is invalid."""


class RouteSourceError(RouteError):
    """A route source could not be read right now; the last good table stays in force."""

    retriable = True


class UpstreamError(KtpError):
    """The app (our upstream) did not take a delivery."""


class AppUnavailable(UpstreamError):
    """Connection error or timeout talking to the app."""

    retriable = True


class AppRejected(UpstreamError):
    """The app answered with a status that is not retried."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class PublishError(KtpError):
    """A publish request (``POST /v1/publish/<topic>``) was refused. ``status`` is the HTTP
    status it is answered with; ``reason`` a short fixed word for metrics and logs;
    ``retriable`` tells the app whether sending it again may work (the broker was unreachable)
    or the request must change."""

    def __init__(self, status: int, reason: str, message: str, *, retriable: bool = False) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason
        self.retriable = retriable


class BrokerError(KtpError):
    """Kafka could not be reached or refused an operation."""

    retriable = True


def connect_error_reason(exc: BaseException) -> str:
    """Why a connection failed, without aiohttp's ``ssl:default`` noise on plain-HTTP URLs."""
    if isinstance(exc, TimeoutError):
        return "timed out"
    os_error = getattr(exc, "os_error", None)
    for error in (os_error, exc):
        # asyncio's connect errors repeat the address in strerror; the errno's words suffice.
        if isinstance(error, OSError) and error.errno:
            return os.strerror(error.errno).lower()
    return str(exc) or type(exc).__name__
