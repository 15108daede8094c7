"""CloudEvents HTTP binary mode for deliveries (``--format cloudevents``). Pure logic, no I/O.

Three kinds of record, three outcomes (the same as Knative's KafkaSource, so an app written for
Knative needs no change behind the sidecar):

- a record that already is a CloudEvent in Kafka *binary* mode (``ce_specversion``, ``ce_id``,
  ``ce_source``, ``ce_type`` headers, CloudEvents Kafka protocol binding): its ``ce_*`` headers
  become ``ce-*`` HTTP headers, its ``content-type`` stays the datacontenttype;
- a record in Kafka *structured* mode (``content-type: application/cloudevents+json``, or any
  ``application/cloudevents…`` type): passed through untouched, the body is the event;
- any other record: wrapped as Knative wraps a plain Kafka record: ``id``
  ``partition:<p>/offset:<o>``, ``source`` ``/ktp/services/<service>#<topic>``, ``type``
  ``dev.knative.kafka.event``, ``subject`` ``partition:<p>#<o>``, ``time`` from the record
  timestamp, ``key`` and ``partitionkey`` from the record key, and every Kafka header as an
  extension named ``kafkaheader`` + the header name lowercased with everything but ``a-z0-9``
  removed (CloudEvents attribute naming; the prefix keeps headers from overriding ``id``,
  ``source`` and the other context attributes). A record whose ``ce_*`` headers do not make a
  valid event is wrapped the same way, as Knative does, rather than passed on broken.

Values are percent-encoded as the CloudEvents HTTP binding requires (space, ``"``, ``%`` and
everything outside visible ASCII), so no record can put CR, LF or NUL into a request. A value
that is not UTF-8 cannot be a CloudEvents string: it is left out and reported.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import UTC, datetime
from urllib.parse import quote

from proxy.delivery.headers import MAX_HEADER_VALUE

SPECVERSION = "1.0"
SPECVERSIONS = frozenset({"1.0", "0.3"})
KAFKA_EVENT_TYPE = "dev.knative.kafka.event"
HEADER_EXTENSION_PREFIX = "kafkaheader"
KAFKA_BINARY_PREFIX = "ce_"
HTTP_PREFIX = "ce-"
STRUCTURED_CONTENT_TYPE = "application/cloudevents"
REQUIRED = ("specversion", "id", "source", "type")
# What a dropped value is reported as: a fixed word, so record header names never become
# metric label values.
REJECTED = "ce-attribute"

# CloudEvents HTTP binding 3.1.3.2: visible ASCII is kept except space, '"' and '%'.
_SAFE = "".join(c for c in map(chr, range(0x21, 0x7F)) if c not in ' "%')
_NOT_ATTRIBUTE_CHAR = re.compile(r"[^a-z0-9]")
_ATTRIBUTE_NAME = re.compile(r"[a-z0-9]+")

Headers = Sequence[tuple[str, bytes]]


def extension_name(kafka_header: str) -> str:
    """The extension attribute a Kafka header becomes: ``kafkaheader`` + lowercase ``a-z0-9``."""
    return HEADER_EXTENSION_PREFIX + _NOT_ATTRIBUTE_CHAR.sub("", kafka_header.lower())


def encode_value(text: str) -> str:
    """Percent-encode an attribute value for an HTTP header (HTTP binding 3.1.3.2)."""
    return quote(text, safe=_SAFE)


def event_source(service: str, topic: str) -> str:
    """``source`` of wrapped records: the consuming service and the topic, shaped like Knative's
    ``/apis/v1/namespaces/<ns>/kafkasources/<name>#<topic>`` (a URI-reference). Baseline and
    sandbox pods of one service give a record the same source and id: it is one event."""
    return f"/ktp/services/{service}#{topic}"


def event_time(timestamp_ms: int) -> str | None:
    """RFC 3339 UTC time of a Kafka timestamp in milliseconds; None when the record has none."""
    if timestamp_ms < 0:
        return None
    moment = datetime.fromtimestamp(timestamp_ms / 1000, tz=UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def is_structured(content_type: str | None) -> bool:
    """Whether a content type is CloudEvents structured mode (single or batch)."""
    return content_type is not None and content_type.lower().startswith(STRUCTURED_CONTENT_TYPE)


def _text(value: bytes | None) -> str | None:
    if value is None:
        return None
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _put(out: dict[str, str], rejected: list[str], name: str, text: str | None) -> None:
    if text is None:
        rejected.append(REJECTED)
        return
    encoded = encode_value(text)
    if len(encoded) > MAX_HEADER_VALUE:
        rejected.append(REJECTED)
        return
    out[HTTP_PREFIX + name] = encoded


def kafka_binary_attributes(record_headers: Headers) -> dict[str, str] | None:
    """The attributes of a Kafka binary-mode CloudEvent, or None if the headers are not one.

    A valid event has UTF-8 ``ce_<name>`` headers with ``<name>`` in ``a-z0-9``, a known
    ``specversion`` and non-empty ``id``, ``source`` and ``type``. First occurrence wins.
    """
    attributes: dict[str, str] = {}
    for name, value in record_headers:
        if len(name) <= 3 or name[:3].lower() != KAFKA_BINARY_PREFIX:
            continue
        attribute = name[3:]
        if not _ATTRIBUTE_NAME.fullmatch(attribute):
            return None
        text = _text(value)
        if text is None:
            return None
        attributes.setdefault(attribute, text)
    if not attributes:
        return None
    if attributes.get("specversion") not in SPECVERSIONS:
        return None
    if not all(attributes.get(required) for required in REQUIRED):
        return None
    return attributes


def http_headers(
    *,
    source: str,
    topic: str,
    partition: int,
    offset: int,
    timestamp: int,
    key: bytes | None,
    record_headers: Headers,
    content_type: str | None,
) -> tuple[dict[str, str], list[str]]:
    """``ce-*`` headers of a delivery in binary mode, and what was left out (as ``REJECTED``).

    ``content_type`` is the content type the delivery is sent with (the record's own, when it
    had a valid one): structured-mode events are passed through and get no ``ce-*`` headers.
    """
    out: dict[str, str] = {}
    rejected: list[str] = []
    if is_structured(content_type):
        return out, rejected
    existing = kafka_binary_attributes(record_headers)
    if existing is not None:
        for attribute, text in existing.items():
            if attribute != "datacontenttype":  # HTTP binary mode carries it as content-type
                _put(out, rejected, attribute, text)
        return out, rejected
    out["ce-specversion"] = SPECVERSION
    out["ce-id"] = f"partition:{partition}/offset:{offset}"
    _put(out, rejected, "source", source)
    out["ce-type"] = KAFKA_EVENT_TYPE
    out["ce-subject"] = f"partition:{partition}#{offset}"
    time = event_time(timestamp)
    if time is not None:
        out["ce-time"] = time
    if key is not None:
        key_text = _text(key)
        _put(out, rejected, "key", key_text)
        if key_text is not None:
            _put(out, rejected, "partitionkey", key_text)
    seen: set[str] = set()
    for name, value in record_headers:
        attribute = extension_name(name)
        if attribute not in seen:  # first occurrence wins, even when its value is left out
            seen.add(attribute)
            _put(out, rejected, attribute, _text(value))
    return out, rejected
