"""HTTP headers of a delivery request, built from a Kafka record. Pure logic, no I/O.

Only an allowlist of record headers is copied (trace context, baggage, content-type, and B3 when
``OTEL_PROPAGATORS`` names it), plus our ``kafka-*`` metadata.

``baggage`` is never dropped for not being a safe field value: the app must see the tenant the
record was routed by, or its next hop would route as baseline. A record's ``baggage`` headers
(all of them, one baggage-string) are forwarded byte for byte when valid, else as the
equivalent header :func:`proxy.routing.baggage.for_delivery` writes (invalid members left out,
the tenant always kept); the caller counts a header that had invalid members and logs what was
re-serialized. Every other copied value is checked
against RFC 9110's field-value grammar restricted to visible ASCII, space and tab: a value with
CR, LF, NUL, other controls or non-ASCII bytes is not copied (so nothing from a topic can inject
a header or split a request) and the caller counts it. Names we send are fixed strings, so no
record can add a header name, and none can override ``authorization`` or framing headers.

More record headers may be forwarded by name (``--forward-headers``), but never the ones in
:data:`NEVER_FORWARDED` (hop-by-hop and framing headers of RFC 9110/9112, ``host``, credentials)
nor names under our own ``kafka-``/``ktp-`` prefixes, even if a user asks: a record must not be able
to change how the request is framed, where it goes, or who it claims to be. A record header name
matches only if it is an RFC 9110 token in ASCII (so ``str.lower()`` cannot fold a look-alike
such as KELVIN SIGN into an allowed name).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Sequence
from urllib.parse import quote

from proxy.routing import baggage
from proxy.routing.baggage import Forwarded

MAX_HEADER_VALUE = 8192
DEFAULT_CONTENT_TYPE = "application/octet-stream"

CONTEXT_HEADERS = ("traceparent", "tracestate", "baggage")
B3_SINGLE = ("b3",)
B3_MULTI = ("x-b3-traceid", "x-b3-spanid", "x-b3-parentspanid", "x-b3-sampled", "x-b3-flags")

# RFC 9110 §5.6.2 token: the only characters a field name may have.
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
# Never copied from a record, whatever the allowlist says: hop-by-hop and framing headers (RFC
# 9110 §7.6.1, RFC 9112 §6-7), routing (host), and credentials, so nothing can replace the
# sidecar's own ``authorization``.
NEVER_FORWARDED = frozenset(
    {
        "connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer",
        "upgrade", "content-length", "host", "expect", "authorization", "proxy-authorization",
        "proxy-authenticate", "cookie", "forwarded", "x-forwarded-for", "x-forwarded-host",
        "x-forwarded-proto",
    }
)
RESERVED_PREFIXES = ("kafka-", "ktp-", "proxy-")

# Visible ASCII, SP and HTAB, without SP or HTAB at either end (or empty): one regex pass.
_FIELD_VALUE = re.compile(rb"(?:[\x21-\x7e](?:[\x20-\x7e\t]*[\x21-\x7e])?)?")
# What quote(key, safe="") leaves as it is: such a key is its own encoding.
_UNRESERVED = re.compile(rb"[A-Za-z0-9_.~-]*")
#: ``key_is_plain(key)`` is not None when ``key`` is its own ``kafka-key`` encoding (ASCII unreserved).
key_is_plain = _UNRESERVED.fullmatch
# content-type must look like a media type, not just any field value.
_MEDIA_TYPE = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+/[!#$%&'*+.^_`|~0-9A-Za-z-]+(\s*;[\x20-\x7e\t]*)?$")


def valid_field_name(name: str) -> bool:
    """An RFC 9110 token in ASCII: what a header name may be."""
    return _TOKEN.fullmatch(name) is not None


def never_forwarded(name: str) -> bool:
    """True for a (lower-case) name no record may set, whatever the allowlist says."""
    return name in NEVER_FORWARDED or name.startswith(RESERVED_PREFIXES)


def check_forward_headers(names: Iterable[str]) -> frozenset[str]:
    """Validate ``--forward-headers``: lower-cased tokens, none of :data:`NEVER_FORWARDED` or our
    prefixes. Raises ``ValueError`` naming every refused name."""
    checked: set[str] = set()
    problems: list[str] = []
    for name in names:
        lowered = name.strip().lower()
        if not valid_field_name(lowered):
            problems.append(f"{name[:64]!r} is not an HTTP header name (RFC 9110 token)")
        elif never_forwarded(lowered):
            problems.append(
                f"{lowered!r} is never forwarded from a record (hop-by-hop, framing, credentials "
                f"or a reserved prefix {', '.join(RESERVED_PREFIXES)})"
            )
        else:
            checked.add(lowered)
    if problems:
        raise ValueError("; ".join(problems))
    return frozenset(checked)


def forwarded_header_names(propagators: str | None = None, extra: Iterable[str] = ()) -> frozenset[str]:
    """Record headers copied to the app, by ``OTEL_PROPAGATORS`` (default: tracecontext,baggage),
    plus ``extra`` names (``--forward-headers``, see :func:`check_forward_headers`)."""
    value = propagators if propagators is not None else os.environ.get("OTEL_PROPAGATORS", "")
    names = set(CONTEXT_HEADERS) | check_forward_headers(extra)
    chosen = {p.strip().lower() for p in value.split(",")}
    if "b3" in chosen:
        names.update(B3_SINGLE)
    if "b3multi" in chosen:
        names.update(B3_MULTI)
    return frozenset(names)


def valid_field_value(raw: bytes) -> bool:
    """RFC 9110 field-value limited to visible ASCII, SP and HTAB, at most 8 KiB, no edge spaces."""
    return len(raw) <= MAX_HEADER_VALUE and _FIELD_VALUE.fullmatch(raw) is not None


def encode_key(key: bytes) -> str:
    """``kafka-key`` value: the key bytes percent-encoded (RFC 3986 unreserved kept)."""
    if _UNRESERVED.fullmatch(key) is not None:
        return key.decode("ascii")
    return quote(key, safe="")


# Record header name -> its lower-case form if a header of that name may be copied at all, else
# None (not ASCII, or never forwarded). Producers use a handful of names: each is checked once.
# Bounded, so records with ever new names cannot grow it.
_COPYABLE: dict[str, str | None] = {}
_COPYABLE_MAX = 1024
_UNKNOWN = ""  # no real name is empty


def copyable_name(name: str) -> str | None:
    """The lower-case name a record header of this name may be copied under, or None (not ASCII,
    or never forwarded). Cached."""
    lowered = _COPYABLE.get(name, _UNKNOWN)
    return _copyable(name) if lowered == _UNKNOWN else lowered


def _copyable(name: str) -> str | None:
    # allowlisted names are ASCII tokens; lower() could fold a look-alike (KELVIN SIGN) into one
    lowered = name.lower() if name.isascii() else None
    if lowered is not None and never_forwarded(lowered):
        lowered = None
    if len(_COPYABLE) < _COPYABLE_MAX:
        _COPYABLE[name] = lowered
    return lowered


# Forwarded baggage by record baggage-string, with the tenant key it was made for: records of one
# tenant carry the same bytes, so a header is read once; keyed by the bytes alone (their hash is
# kept by the object), not a (bytes, key) tuple hashed anew per record. Bounded: started over
# when full.
_BAGGAGE: dict[bytes, tuple[str, Forwarded]] = {}
_BAGGAGE_MAX = 1024


# Record content-type value -> the content-type sent for it, or None when it is not a safe media
# type. Producers use a handful of values: each is checked once. Bounded, as _COPYABLE is.
_CONTENT_TYPES: dict[bytes, str | None] = {}


def _content_type(value: bytes) -> str | None:
    text = value.decode("ascii", "replace")
    sent = text if valid_field_value(value) and _MEDIA_TYPE.fullmatch(text) else None
    if len(_CONTENT_TYPES) < _COPYABLE_MAX:
        _CONTENT_TYPES[bytes(value)] = sent
    return sent


def content_type_sent(value: bytes) -> str | None:
    """The ``content-type`` sent for a record's ``content-type`` header, None when it is not a
    safe media type (cached)."""
    sent = _CONTENT_TYPES.get(value, _UNKNOWN)
    return _content_type(value) if sent == _UNKNOWN else sent


def forwarded_baggage(raw: bytes, tenant_key: str) -> Forwarded:
    """:func:`proxy.routing.baggage.for_delivery`, cached."""
    entry = _BAGGAGE.get(raw)
    if entry is not None and entry[0] == tenant_key:
        return entry[1]
    if len(_BAGGAGE) >= _BAGGAGE_MAX:
        _BAGGAGE.clear()
    sent = baggage.for_delivery(raw, tenant_key)
    _BAGGAGE[bytes(raw)] = (tenant_key, sent)
    return sent


# Per (topic, partition): the headers every delivery of it starts with (content-type's default,
# kafka-topic, kafka-partition), copied per record rather than built. Bounded as _COPYABLE is.
_BASES: dict[tuple[str, int], dict[str, str]] = {}


def _base(topic: str, partition: int) -> dict[str, str]:
    base = {"content-type": DEFAULT_CONTENT_TYPE, "kafka-topic": topic, "kafka-partition": str(partition)}
    if len(_BASES) >= _COPYABLE_MAX:
        _BASES.clear()
    _BASES[(topic, partition)] = base
    return base


def build_headers(
    *,
    topic: str,
    partition: int,
    offset: int,
    timestamp: int,
    key: bytes | None,
    record_headers: Sequence[tuple[str, bytes]],
    forwarded: Iterable[str] | frozenset[str],
    tenant_key: str = "tenant",
    notes: list[str] | None = None,
) -> tuple[dict[str, str], list[str]]:
    """Return ``(headers, rejected)``: the request's headers and the names of record headers
    that were on the allowlist but not copied as they were because their value was not safe
    (for ``baggage``: had invalid members or was over the W3C limits). When the baggage was
    re-serialized, why is appended to ``notes``."""
    # Per record: written out, since it runs for every delivery (and every bulk entry).
    base = _BASES.get((topic, partition))
    headers = (base if base is not None else _base(topic, partition)).copy()
    headers["kafka-offset"] = str(offset)
    headers["kafka-timestamp"] = str(timestamp)
    if key is not None:
        # encode_key, without the call for the usual key, which is its own encoding
        headers["kafka-key"] = key.decode("ascii") if _UNRESERVED.fullmatch(key) is not None else quote(key, safe="")
    rejected: list[str] = []
    baggage_raw: bytes | None = None
    baggage_more: list[bytes] | None = None
    content_type_seen = False
    copyable = _COPYABLE
    for name, value in record_headers:
        lowered = copyable.get(name, _UNKNOWN)
        if lowered == _UNKNOWN:
            lowered = _copyable(name)
        if lowered is None:
            continue
        if lowered == "baggage" and lowered in forwarded:
            if value:
                if baggage_raw is None:
                    baggage_raw = value
                elif baggage_more is None:
                    baggage_more = [baggage_raw, value]
                else:
                    baggage_more.append(value)
            continue
        if lowered == "content-type":
            if content_type_seen:
                continue  # first occurrence wins, as for the propagators
            content_type_seen = True
            media_type = None if value is None else _CONTENT_TYPES.get(value, _UNKNOWN)
            if media_type == _UNKNOWN:
                media_type = _content_type(value)
            if media_type is not None:
                headers["content-type"] = media_type
            else:
                rejected.append(lowered)
        elif lowered in forwarded:
            # Seen before when copied (our own names are never forwarded, so only a record's
            # header can be there) or refused: first occurrence wins, as for the propagators.
            if lowered in headers or (rejected and lowered in rejected):
                continue
            if value is not None and len(value) <= MAX_HEADER_VALUE and _FIELD_VALUE.fullmatch(value) is not None:
                headers[lowered] = value.decode("ascii")
            else:
                rejected.append(lowered)
    if baggage_raw is not None:
        raw = baggage_raw if baggage_more is None else b",".join(baggage_more)
        entry = _BAGGAGE.get(raw)
        sent = entry[1] if entry is not None and entry[0] == tenant_key else forwarded_baggage(raw, tenant_key)
        if sent.header is not None:
            headers["baggage"] = sent.header
        if sent.invalid:
            rejected.append("baggage")
        if sent.note is not None and notes is not None:
            notes.append(sent.note)
    return headers, rejected
