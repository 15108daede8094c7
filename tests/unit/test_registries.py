"""The name -> implementation registries: ordering modes, delivery formats, route sources."""

from __future__ import annotations

import pytest
from aiokafka import TopicPartition
from aiokafka.structs import ConsumerRecord

from proxy.delivery.formats import FORMATS
from proxy.delivery.ordering import ORDERINGS
from proxy.errors import ConfigError
from proxy.routing.sources import ROUTE_SOURCES, create_route_source
from proxy.routing.sources.file import FileRouteSource
from proxy.routing.sources.http import HttpRouteSource
from proxy.sidecar.config import SIDECAR_OPTIONS as OPTIONS

TP = TopicPartition("t", 3)


def record(offset: int, key: bytes | None) -> ConsumerRecord[bytes, bytes]:
    return ConsumerRecord(
        topic="t", partition=3, offset=offset, timestamp=0, timestamp_type=0, key=key, value=b"",
        checksum=None, serialized_key_size=0, serialized_value_size=0, headers=[],
    )


def choices(name: str) -> tuple[str, ...]:
    (option,) = [o for o in OPTIONS if o.name == name]
    assert option.choices is not None
    return tuple(option.choices)


def test_the_options_offer_exactly_the_registered_names() -> None:
    assert choices("ordering") == tuple(ORDERINGS) == ("partition", "key", "none")
    assert choices("format") == tuple(FORMATS) == ("raw", "cloudevents")


def test_lane_keys() -> None:
    a0, b1, a2 = record(0, b"a"), record(1, b"b"), record(2, b"a")
    lanes = {name: [key(TP, r) for r in (a0, b1, a2)] for name, key in ORDERINGS.items()}
    assert len(set(lanes["partition"])) == 1
    assert lanes["key"][0] == lanes["key"][2] != lanes["key"][1]
    assert len(set(lanes["none"])) == 3


def test_raw_adds_nothing_and_cloudevents_adds_ce_headers() -> None:
    assert FORMATS["raw"] is None
    cloudevents = FORMATS["cloudevents"]
    assert cloudevents is not None
    extra, dropped = cloudevents(record(7, b"k"), {}, "orders-worker")
    assert extra["ce-specversion"] == "1.0" and dropped == []


def test_route_sources_by_prefix(tmp_path: object) -> None:
    assert set(ROUTE_SOURCES) == {"file:", "kafka:", "http://", "https://"}
    assert isinstance(create_route_source("file:/nonexistent/routes.yaml"), FileRouteSource)
    assert isinstance(create_route_source("http://127.0.0.1:9"), HttpRouteSource)
    with pytest.raises(ConfigError, match="needs the Kafka connection"):
        create_route_source("kafka:")
    with pytest.raises(ConfigError, match="needs a path"):
        create_route_source("file:")
    with pytest.raises(ConfigError, match="unknown route source"):
        create_route_source("ftp://x")
