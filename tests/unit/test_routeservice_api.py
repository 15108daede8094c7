"""Route service API validation (pure): tenants, bodies, query parameters, tokens; and the
coalesced catch-up the route sources share."""

from __future__ import annotations

import asyncio
import json
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.errors import ConfigError
from proxy.routeservice.api import (
    MAX_WATCH_WAIT,
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
from proxy.routeservice.tenant_command import parse_route_args
from proxy.routes.records import MAX_SERVICES_PER_TENANT
from proxy.routes.catchup import CatchUp

NAME = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
TENANT = re.compile(r"^[\x21-\x7e]{1,256}$")
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)


@given(st.text(max_size=300))
def test_tenant_accepted_iff_visible_ascii_1_to_256(raw: str) -> None:
    if TENANT.match(raw):
        assert parse_tenant(raw) == raw
    else:
        with pytest.raises(RequestError) as info:
            parse_tenant(raw)
        assert info.value.status == 400


@given(st.dictionaries(st.text(max_size=70), st.text(max_size=70), max_size=4))
def test_put_body_accepted_iff_every_name_is_a_dns_label(routes: dict[str, str]) -> None:
    raw = json.dumps({"routes": routes}).encode()
    valid = bool(routes) and all(NAME.match(s) and NAME.match(x) for s, x in routes.items())
    if valid:
        assert parse_put_body(raw) == routes
    else:
        with pytest.raises(RequestError):
            parse_put_body(raw)


@given(json_values)
def test_any_json_body_is_parsed_or_refused_with_400(body: object) -> None:
    try:
        routes = parse_put_body(json.dumps(body).encode())
    except RequestError as exc:
        assert exc.status == 400 and str(exc)
    else:
        assert isinstance(body, dict) and body == {"routes": routes}


@given(st.binary(max_size=200))
def test_any_bytes_are_parsed_or_refused_with_400(raw: bytes) -> None:
    try:
        parse_put_body(raw)
    except RequestError as exc:
        assert exc.status == 400


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        (b"", "not valid JSON"),
        (b"\xff\xfe", "not UTF-8"),
        (b'{"routes": {}}', "empty"),
        (b'{"route": {"a": "b"}}', "unknown field"),
        (b"{}", 'no "routes"'),
        (b'{"routes": {"a": "b"}, "tenant": "x"}', "unknown field"),
        (b'{"routes": {"a": null}}', "must be a string"),
        (b'{"routes": "a=b"}', "must be an object"),
        (b'{"routes": {"orders": "PR-42"}}', "sandbox name 'PR-42' is invalid"),
        (json.dumps({"routes": {f"s{i}": "x" for i in range(MAX_SERVICES_PER_TENANT + 1)}}).encode(), "at most"),
    ],
)
def test_put_body_errors_say_what_is_wrong(raw: bytes, problem: str) -> None:
    with pytest.raises(RequestError, match=problem):
        parse_put_body(raw)


def test_content_type() -> None:
    for ok in ("", "application/json", "application/json; charset=utf-8", "application/merge-patch+json"):
        check_content_type(ok)
    with pytest.raises(RequestError) as info:
        check_content_type("text/plain")
    assert info.value.status == 415


def test_query_parameters() -> None:
    assert parse_since(None) == -1 and parse_since("12") == 12 and parse_since("-1") == -1
    assert parse_wait(None) == 0 and parse_wait("2.5") == 2.5 and parse_wait(str(MAX_WATCH_WAIT)) == MAX_WATCH_WAIT
    assert parse_flag("sync", "true") and not parse_flag("sync", None) and not parse_flag("sync", "0")
    for call in (
        lambda: parse_since("x"),
        lambda: parse_since("-2"),
        lambda: parse_wait("nan"),
        lambda: parse_wait("-1"),
        lambda: parse_wait("61"),
        lambda: parse_wait("inf"),
        lambda: parse_flag("sync", "maybe"),
    ):
        with pytest.raises(RequestError):
            call()


@given(st.text(max_size=30), st.text(min_size=1, max_size=30).filter(lambda t: t.strip() == t))
def test_bearer_token_and_constant_time_match(junk: str, token: str) -> None:
    assert bearer_token(f"Bearer {token}") == token and bearer_token(f"bearer  {token}") == token
    assert bearer_token(None) is None and bearer_token(f"Basic {token}") is None
    assert token_matches(token, token)
    assert not token_matches(None, token) and not token_matches(token + "x", token)
    assert token_matches(junk, token) == (junk == token)


def test_route_arguments_of_the_cli() -> None:
    assert parse_route_args(["orders-worker=pr-42", "billing = pr-7"]) == {"orders-worker": "pr-42", "billing": "pr-7"}
    for bad in (["orders-worker"], ["a=b", "a=c"], ["Orders=pr-1"], ["a="]):
        with pytest.raises(ConfigError):
            parse_route_args(bad)


async def test_catch_up_coalesces_and_never_answers_with_an_older_sync() -> None:
    started: list[float] = []
    gate = asyncio.Event()
    clock = iter(range(1, 100))

    async def sync() -> int:
        started.append(asyncio.get_running_loop().time())
        await gate.wait()
        return next(clock)

    catch_up = CatchUp(sync)
    first = asyncio.create_task(catch_up())
    for _ in range(3):
        await asyncio.sleep(0)
    assert len(started) == 1
    # Ten callers arrive while the first sync is in flight: they share one *new* sync.
    later = [asyncio.create_task(catch_up()) for _ in range(10)]
    for _ in range(3):
        await asyncio.sleep(0)
    assert len(started) == 1
    gate.set()
    await asyncio.gather(first, *later)
    assert len(started) == 2 and catch_up.synced_at_ms == 2
    # Covered times answer at once, without a sync.
    await catch_up(at_ms=2)
    assert len(started) == 2


async def test_catch_up_failure_reaches_every_waiter_and_the_next_call_retries() -> None:
    calls = 0

    async def sync() -> int:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.01)
        if calls == 1:
            raise ConfigError("boom")
        return 5

    catch_up = CatchUp(sync)
    results = await asyncio.gather(catch_up(), catch_up(), return_exceptions=True)
    assert calls >= 1 and any(isinstance(r, ConfigError) for r in results)
    await catch_up()
    assert catch_up.synced_at_ms == 5
