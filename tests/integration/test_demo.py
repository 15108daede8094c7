"""``ktp demo`` runs the shared-environment scenario (A → B'' → Kafka → C'' → D) end to end and every request is handled exactly once."""

from __future__ import annotations

import pytest

from proxy.demo.scenario import run_demo


async def test_demo_scenario(capsys: pytest.CaptureFixture[str]) -> None:
    assert await run_demo(records=3) == 0
    out = capsys.readouterr().out
    assert "every request handled exactly once" in out
    # The banner counts the table's columns, and a legend says what each one is.
    assert "the route service and 6 service versions (A, B, B'', C, C'', D)" in out
    legend = {line.split()[0] for line in out.splitlines() if line.startswith("  ")}
    assert {"A", "B", "B''", "C", "C''", "D"} <= legend
    # Tenant 123 went through B'' and C'' while routed, through B and C after its deletion.
    rows = {tuple(line.split()[:3]): line.split()[3:] for line in out.splitlines() if line[:1].isdigit()}
    assert rows[("1", "routed", "123")] == ["3", "0", "3", "0", "3", "3"]
    assert rows[("2", "deleted", "123")] == ["3", "3", "0", "3", "0", "3"]
    assert rows[("1", "routed", "456")] == ["3", "3", "0", "3", "0", "3"]
