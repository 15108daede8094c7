"""HTTP headers of a delivery request, built from a Kafka record. Pure logic, no I/O.

Only an allowlist of record headers is copied (trace context, baggage, content-type, and B3 when
``OTEL_PROPAGATORS`` names it), plus our ``kafka-*`` metadata. Every copied value is checked
against RFC 9110's field-value grammar restricted to visible ASCII, space and tab: a value with
CR, LF, NUL, other controls or non-ASCII bytes is not copied (so nothing from a topic can inject
a header or split a request) and the caller counts it. Names we send are fixed strings, so no
record can add a header name, and none can override ``authorization`` or framing headers.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Sequence
from urllib.parse import quote

MAX_HEADER_VALUE = 8192
DEFAULT_CONTENT_TYPE = "application/octet-stream"

CONTEXT_HEADERS = ("traceparent", "tracestate", "baggage")
B3_SINGLE = ("b3",)
B3_MULTI = ("x-b3-traceid", "x-b3-spanid", "x-b3-parentspanid", "x-b3-sampled", "x-b3-flags")

_FIELD_VALUE = re.compile(rb"^[\x20-\x7e\t]*$")
# content-type must look like a media type, not just any field value.
_MEDIA_TYPE = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+/[!#$%&'*+.^_`|~0-9A-Za-z-]+(\s*;[\x20-\x7e\t]*)?$")


def forwarded_header_names(propagators: str | None = None) -> frozenset[str]:
    """Record headers copied to the app, by ``OTEL_PROPAGATORS`` (default: tracecontext,baggage)."""
    value = propagators if propagators is not None else os.environ.get("OTEL_PROPAGATORS", "")
    names = set(CONTEXT_HEADERS)
    chosen = {p.strip().lower() for p in value.split(",")}
    if "b3" in chosen:
        names.update(B3_SINGLE)
    if "b3multi" in chosen:
        names.update(B3_MULTI)
    return frozenset(names)


def valid_field_value(raw: bytes) -> bool:
    """RFC 9110 field-value limited to visible ASCII, SP and HTAB, at most 8 KiB, no edge spaces."""
    return (
        len(raw) <= MAX_HEADER_VALUE
        and _FIELD_VALUE.fullmatch(raw) is not None
        and raw == raw.strip(b" \t")
    )


def encode_key(key: bytes) -> str:
    """``kafka-key`` value: the key bytes percent-encoded (RFC 3986 unreserved kept)."""
    return quote(key, safe="")


def build_headers(
    *,
    topic: str,
    partition: int,
    offset: int,
    timestamp: int,
    key: bytes | None,
    record_headers: Sequence[tuple[str, bytes]],
    forwarded: Iterable[str] | frozenset[str],
) -> tuple[dict[str, str], list[str]]:
    """Return ``(headers, rejected)``: the request's headers and the names of record headers
    that were on the allowlist but not copied because their value was not a safe field value."""
    headers = {
        "content-type": DEFAULT_CONTENT_TYPE,
        "kafka-topic": topic,
        "kafka-partition": str(partition),
        "kafka-offset": str(offset),
        "kafka-timestamp": str(timestamp),
    }
    if key is not None:
        headers["kafka-key"] = encode_key(key)
    rejected: list[str] = []
    seen: set[str] = set()
    for name, value in record_headers:
        lowered = name.lower()
        if lowered in seen:
            continue  # first occurrence wins, as for the propagators
        if lowered == "content-type":
            seen.add(lowered)
            text = value.decode("ascii", "replace") if value is not None else ""
            if value is not None and valid_field_value(value) and _MEDIA_TYPE.fullmatch(text):
                headers["content-type"] = text
            else:
                rejected.append(lowered)
        elif lowered in forwarded:
            seen.add(lowered)
            if value is not None and valid_field_value(value):
                headers[lowered] = value.decode("ascii")
            else:
                rejected.append(lowered)
    return headers, rejected
