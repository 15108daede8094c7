"""The file: route source: fails at start when there is no table; after that keeps the table it
read, says when it was read, and does not flood the log."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from proxy.errors import ConfigError, RouteError
from proxy.routing.sources.file import FileRouteSource, parse_routes_yaml


async def test_missing_file_at_start_is_a_config_error(tmp_path: Path) -> None:
    source = FileRouteSource(tmp_path / "nonexistent.yaml")
    with pytest.raises(ConfigError, match=r"--routes file:.*nonexistent\.yaml: cannot read .*No such file"):
        await source.start()
    assert not source.table.synced


async def test_malformed_file_at_start_names_line_and_claims_no_table(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "routes.yaml"
    path.write_text("tenants:\n  a: [unclosed\n")
    with pytest.raises(ConfigError) as raised:
        await FileRouteSource(path).start()
    message = str(raised.value)
    assert "\n" not in message and "line 3" in message and "last good" not in message
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]  # start() says it, once


async def test_a_file_that_breaks_later_keeps_the_table_and_logs_rarely(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "routes.yaml"
    path.write_text('tenants:\n  "123": {orders-worker: pr-42}\n')
    errors: list[str] = []
    source = FileRouteSource(path, poll_interval=3600, on_error=errors.append)
    await source.start()
    try:
        path.unlink()
        for _ in range(20):  # twenty polls of a missing file
            source.reload()
        assert len(errors) == 20  # every failure is counted
        logged = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
        assert len(logged) == 1, logged
        assert "keeping the table read at" in logged[0]
        assert source.problem is not None and source.table.sandbox_for("123", "orders-worker", 1) == "pr-42"
        path.write_text('tenants:\n  "123": {orders-worker: pr-7}\n')
        assert source.reload()
        assert source.problem is None
    finally:
        await source.stop()


def test_yaml_errors_are_one_line() -> None:
    with pytest.raises(RouteError) as raised:
        parse_routes_yaml("tenants: {a: [b\n")
    assert "\n" not in str(raised.value)
