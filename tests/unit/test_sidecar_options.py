"""Delivery options of ``ktp sidecar``: static membership and stall reporting."""

from __future__ import annotations

import argparse

import pytest

from proxy.config import add_options, resolve
from proxy.errors import ConfigError
from proxy.listener.progress import DEFAULT_STALL_TIMEOUT
from proxy.sidecar.config import SIDECAR_OPTIONS, SidecarConfig

REQUIRED = ["--bootstrap-servers", "b:9092", "--service", "orders-worker", "--group", "orders", "--topics", "t", "--app-url", "http://127.0.0.1:8080/e"]


def parse(argv: list[str], env: dict[str, str] | None = None) -> SidecarConfig:
    parser = argparse.ArgumentParser()
    add_options(parser, SIDECAR_OPTIONS)
    env = env or {}
    return SidecarConfig.from_options(resolve(SIDECAR_OPTIONS, parser.parse_args(argv), env), env)


def test_dynamic_membership_unless_asked() -> None:
    assert parse(REQUIRED).instance_id is None


def test_instance_id_defaults_to_the_pod_name() -> None:
    assert parse(REQUIRED, {"POD_NAME": "orders-worker-0"}).instance_id == "orders-worker-0"


def test_instance_id_given_beats_the_pod_name() -> None:
    config = parse([*REQUIRED, "--instance-id", "orders-a"], {"POD_NAME": "orders-worker-0"})
    assert config.instance_id == "orders-a"
    assert parse(REQUIRED, {"KTP_INSTANCE_ID": "orders-b", "POD_NAME": "p"}).instance_id == "orders-b"


def test_instance_id_none_turns_static_membership_off() -> None:
    assert parse([*REQUIRED, "--instance-id", "none"], {"POD_NAME": "orders-worker-0"}).instance_id is None


@pytest.mark.parametrize("bad", ["has space", "x" * 250, "tab\there", "ünïcode"])
def test_instance_id_must_be_a_kafka_name(bad: str) -> None:
    with pytest.raises(ConfigError, match="--instance-id"):
        parse([*REQUIRED, "--instance-id", bad])


def test_stall_timeout() -> None:
    assert parse(REQUIRED).stall_timeout == DEFAULT_STALL_TIMEOUT
    assert parse([*REQUIRED, "--stall-timeout", "2.5"]).stall_timeout == 2.5
    with pytest.raises(ConfigError, match="--stall-timeout"):
        parse([*REQUIRED, "--stall-timeout", "0"])


def test_app_max_concurrency_caps_deliveries_and_connections() -> None:
    assert parse(REQUIRED).app_concurrency == parse(REQUIRED).max_in_flight
    assert parse([*REQUIRED, "--app-max-concurrency", "1"]).app_concurrency == 1
    assert parse(REQUIRED, {"KTP_APP_MAX_CONCURRENCY": "4"}).app_concurrency == 4
    assert parse([*REQUIRED, "--max-in-flight", "2", "--app-max-concurrency", "8"]).app_concurrency == 2
    with pytest.raises(ConfigError, match="app-max-concurrency"):
        parse([*REQUIRED, "--app-max-concurrency", "0"])
