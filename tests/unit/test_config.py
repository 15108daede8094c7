"""Options: flag > environment > YAML > default, every problem named at once."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from proxy.config import add_options, resolve
from proxy.errors import ConfigError
from proxy.sidecar.config import SIDECAR_OPTIONS, SidecarConfig

REQUIRED = ["--bootstrap-servers", "b:9092", "--service", "orders-worker", "--group", "orders", "--topics", "a, b", "--app-url", "http://127.0.0.1:8080/e"]


def parse(argv: list[str], env: dict[str, str] | None = None) -> SidecarConfig:
    parser = argparse.ArgumentParser()
    add_options(parser, SIDECAR_OPTIONS)
    return SidecarConfig.from_options(resolve(SIDECAR_OPTIONS, parser.parse_args(argv), env or {}))


def test_precedence(tmp_path: Path) -> None:
    config_file = tmp_path / "c.yaml"
    config_file.write_text("max-in-flight: 3\nsandbox: pr-1\nordering: key\ntopics: [x, y]\n")
    config = parse(
        ["--config", str(config_file), "--bootstrap-servers", "b:1", "--service", "s", "--group", "g", "--app-url", "http://h:1/", "--ordering", "none"],
        {"KTP_MAX_IN_FLIGHT": "7"},
    )
    assert config.ordering == "none"  # flag beats YAML
    assert config.max_in_flight == 7  # env beats YAML
    assert config.sandbox == "pr-1" and config.topics == ("x", "y")  # YAML beats default
    assert config.consumer_group == "g-pr-1"
    assert config.dead_letter_topic_for("x") == "x.pr-1.dlq"


def test_env_only() -> None:
    env = {"KTP_BOOTSTRAP_SERVERS": "b:1", "KTP_SERVICE": "s", "KTP_GROUP": "g", "KTP_TOPICS": "t", "KTP_APP_URL": "http://h:1/"}
    config = parse([], env)
    assert config.topics == ("t",) and config.consumer_group == "g" and config.dead_letter_topic_for("t") == "t.dlq"


def test_all_problems_reported_at_once() -> None:
    with pytest.raises(ConfigError) as info:
        parse(["--max-in-flight", "0"])
    message = str(info.value)
    for needle in ("--bootstrap-servers is required", "--service is required", "--max-in-flight: must be >= 1"):
        assert needle in message


def test_sandbox_dead_letter_topic_must_name_the_sandbox() -> None:
    with pytest.raises(ConfigError, match="must contain \\{sandbox\\}"):
        parse([*REQUIRED, "--sandbox", "pr-1", "--dead-letter-topic", "{topic}.dlq"])
    assert parse([*REQUIRED, "--dead-letter-topic", "none"]).dead_letter_topic_for("a") is None


@pytest.mark.parametrize("bad", [["--app-url", "ftp://x"], ["--service", "Bad_Name"], ["--sandbox", "x y"]])
def test_bad_values(bad: list[str]) -> None:
    with pytest.raises(ConfigError):
        parse([*REQUIRED, *bad])


def test_unknown_yaml_key(tmp_path: Path) -> None:
    config_file = tmp_path / "c.yaml"
    config_file.write_text("no-such-option: 1\n")
    with pytest.raises(ConfigError, match="unknown option"):
        parse([*REQUIRED, "--config", str(config_file)])
