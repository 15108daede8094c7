"""Delivery formats (``--format``), by name: how a record is laid out in the delivery request.

A format adds headers to a delivery (the body is always the record's value). ``raw`` adds
nothing: the record as it is, with its ``kafka-*`` headers. ``cloudevents`` adds the ``ce-*``
headers of CloudEvents HTTP binary mode (:mod:`proxy.delivery.cloudevents`). A new format is one
function and one entry in :data:`FORMATS`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, TypeAlias

from proxy.delivery import cloudevents

if TYPE_CHECKING:
    from aiokafka.structs import ConsumerRecord

FormatHeaders: TypeAlias = "Callable[[ConsumerRecord[bytes, bytes], dict[str, str], str], tuple[dict[str, str], list[str]]]"
"""``(record, headers so far, service) -> (headers to add, names of record headers dropped)``."""


def cloudevents_headers(
    record: ConsumerRecord[bytes, bytes], headers: dict[str, str], service: str
) -> tuple[dict[str, str], list[str]]:
    """The ``ce-*`` headers of ``record`` in CloudEvents HTTP binary mode."""
    return cloudevents.http_headers(
        source=cloudevents.event_source(service, record.topic),
        topic=record.topic,
        partition=record.partition,
        offset=record.offset,
        timestamp=record.timestamp,
        key=record.key,
        record_headers=record.headers,
        content_type=headers.get("content-type"),
    )


FORMATS: dict[str, FormatHeaders | None] = {
    "raw": None,
    "cloudevents": cloudevents_headers,
}
"""Format name -> what it adds to a delivery's headers (None: nothing)."""
