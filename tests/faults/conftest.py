"""Fault tests print one account line each; the run ends with all of them as a table."""

from __future__ import annotations

import pytest

from tests.faults.harness import ACCOUNTS


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if ACCOUNTS:
        terminalreporter.section("fault accounts")
        for entry in ACCOUNTS:
            terminalreporter.write_line(entry.line())
