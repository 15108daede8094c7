"""The interop options: flags, KTP_* variables and YAML keys, validated at start-up."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from proxy.config import add_options, resolve
from proxy.errors import ConfigError
from proxy.sidecar.config import SIDECAR_OPTIONS, SidecarConfig

REQUIRED = {
    "KTP_BOOTSTRAP_SERVERS": "b:1", "KTP_SERVICE": "orders-worker", "KTP_GROUP": "orders",
    "KTP_TOPICS": "t", "KTP_APP_URL": "http://127.0.0.1:8080/events",
}


def parse(argv: list[str], env: dict[str, str] | None = None) -> SidecarConfig:
    parser = argparse.ArgumentParser()
    add_options(parser, SIDECAR_OPTIONS)
    return SidecarConfig.from_options(resolve(SIDECAR_OPTIONS, parser.parse_args(argv), {**REQUIRED, **(env or {})}))


def test_defaults() -> None:
    config = parse([])
    assert (config.format, config.publish_headers, config.default_tenant) == ("raw", (), None)
    assert config.publish_addr == ("127.0.0.1", 14001)
    assert (config.publish_max_bytes, config.publish_timeout, config.delivery_context_grace) == (1024 * 1024, 5.0, 30.0)


def test_flags_env_and_yaml(tmp_path: Path) -> None:
    yaml = tmp_path / "c.yaml"
    yaml.write_text("publish-headers: [X-Source, x-batch]\ndelivery-context-grace: 120\n")
    config = parse(
        ["--config", str(yaml), "--format", "cloudevents", "--sandbox", "pr-42"],
        {"KTP_DEFAULT_TENANT": "batch-42", "KTP_PUBLISH_TIMEOUT": "2.5", "KTP_PUBLISH_ADDR": "0.0.0.0:16001"},
    )
    assert config.format == "cloudevents" and config.default_tenant == "batch-42"
    assert config.publish_headers == ("x-batch", "x-source") and config.delivery_context_grace == 120.0
    assert config.publish_timeout == 2.5 and config.publish_addr == ("0.0.0.0", 16001)


def test_refused_values() -> None:
    with pytest.raises(ConfigError, match="--default-tenant is for sandbox pods"):
        parse(["--default-tenant", "123"])
    with pytest.raises(ConfigError, match="--default-tenant"):
        parse(["--sandbox", "pr-1", "--default-tenant", "has space"])
    with pytest.raises(ConfigError, match="KTP_PUBLISH_HEADERS: .baggage. is set by the publish endpoint"):
        parse([], {"KTP_PUBLISH_HEADERS": "baggage"})
    with pytest.raises(ConfigError, match="KTP_FORMAT: .json. is not one of raw, cloudevents"):
        parse([], {"KTP_FORMAT": "json"})
    with pytest.raises(ConfigError, match="publish-timeout"):
        parse(["--publish-timeout", "0"])
