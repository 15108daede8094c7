"""JSON nested deeper than Python's parser goes is bad input wherever we read JSON: a record in
the routes or groups topic, a PUT body. Each is refused with the error the caller handles, never
a RecursionError that would stop a reader or turn into a 500."""

from __future__ import annotations

import pytest

from proxy.errors import RouteError
from proxy.routeservice.api import RequestError, parse_put_body
from proxy.routeservice.groups import SandboxGroup
from proxy.routes.records import decode_record

DEEP = b"[" * 100_000 + b"]" * 100_000


def test_routes_record() -> None:
    with pytest.raises(RouteError, match="offset 7: value is not JSON"):
        decode_record(b"t", DEEP, 7, 0)


def test_group_registration() -> None:
    with pytest.raises(RouteError, match="malformed"):
        SandboxGroup.decode(b"g", DEEP)


def test_put_body() -> None:
    with pytest.raises(RequestError, match="nested too deeply"):
        parse_put_body(b'{"routes": ' + DEEP + b"}")
